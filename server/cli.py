"""The `hotswap` command line."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from server.settings import Settings

app = typer.Typer(help="hotswap: serve one base model with hot-swappable task adapters.")


def _parse_adapters(values: list[str]) -> dict[str, Path]:
    adapters: dict[str, Path] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise typer.BadParameter(f"expected NAME=PATH, got {value!r}", param_hint="--adapter")
        if not Path(path).is_dir():
            raise typer.BadParameter(f"{path} is not a folder", param_hint="--adapter")
        adapters[name] = Path(path)
    return adapters


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="HTTP bind address.")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port.")] = None,
    base_model: Annotated[
        str | None, typer.Option(help="HF model folder or hub id (default: SmolLM2-135M).")
    ] = None,
    dtype: Annotated[str | None, typer.Option(help="auto, bfloat16, float16 or float32.")] = None,
    adapter: Annotated[
        list[str] | None, typer.Option(help="Serve a PEFT LoRA folder as NAME=PATH (repeatable).")
    ] = None,
) -> None:
    """Start the server (HTTP API and /metrics) and its engine."""
    from server.http.app import run

    overrides: dict[str, object] = {
        key: value
        for key, value in {
            "host": host,
            "port": port,
            "base_model": base_model,
            "dtype": dtype,
        }.items()
        if value is not None
    }
    if adapter:
        overrides["adapters"] = _parse_adapters(adapter)
    settings = Settings.model_validate({**Settings().model_dump(), **overrides})
    run(settings)


@app.command("prepare-model")
def prepare_model(
    base_model: Annotated[str | None, typer.Option(help="HF model folder or hub id.")] = None,
) -> None:
    """Prepare the base model once (convert the embedded default) and print its fingerprint."""
    from server.base_model import resolve_base_model

    settings = Settings()
    model = resolve_base_model(base_model or settings.base_model, settings.home)
    typer.echo(f"{model.name}\t{model.path}\t{model.fingerprint}")


@app.callback()
def _configure_logging(
    log_level: Annotated[str, typer.Option(help="Logging level.")] = "INFO",
) -> None:
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

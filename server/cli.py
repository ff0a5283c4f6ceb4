"""The `hotswap` command line."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from server.settings import Settings

if TYPE_CHECKING:
    from server.admin_client import AdminClient

DEFAULT_URL = "http://127.0.0.1:8000"

app = typer.Typer(help="hotswap: serve one base model with hot-swappable task adapters.")
BaseModelOption = Annotated[
    str | None,
    typer.Option(
        help="Short name (smollm2-135m, gemma3-270m), HF model folder or hub id "
        "(default: smollm2-135m)."
    ),
]


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
    grpc_port: Annotated[int | None, typer.Option(help="gRPC port (default 50051).")] = None,
    base_model: BaseModelOption = None,
    dtype: Annotated[str | None, typer.Option(help="auto, bfloat16, float16 or float32.")] = None,
    adapter: Annotated[
        list[str] | None, typer.Option(help="Serve a PEFT LoRA folder as NAME=PATH (repeatable).")
    ] = None,
    ray: Annotated[
        bool, typer.Option("--ray", help="Run as a Ray Serve application (RAY_ADDRESS or local).")
    ] = False,
    replicas: Annotated[
        int | None, typer.Option(min=1, help="Engine replicas with --ray (default 2).")
    ] = None,
) -> None:
    """Start the server (HTTP API, gRPC API and /metrics) and its engine; with --ray, an
    ingress and N engine replicas on Ray Serve."""
    if replicas is not None and not ray:
        raise typer.BadParameter("--replicas needs --ray", param_hint="--replicas")
    overrides: dict[str, object] = {
        key: value
        for key, value in {
            "host": host,
            "port": port,
            "grpc_port": grpc_port,
            "base_model": base_model,
            "dtype": dtype,
            "ray_replicas": replicas,
        }.items()
        if value is not None
    }
    if adapter:
        overrides["adapters"] = _parse_adapters(adapter)
    settings = Settings.model_validate({**Settings().model_dump(), **overrides})
    if ray:
        from server.ray_serve.run import run as run_on_ray

        run_on_ray(settings)
    else:
        from server.http.app import run

        run(settings)


@app.command("prepare-model")
def prepare_model(
    base_model: BaseModelOption = None,
) -> None:
    """Prepare the base model once (convert a short name's GGUF from its PyPI package under
    HOTSWAP_HOME/models) and print its name, folder and fingerprint."""
    from server.base_model import resolve_base_model

    settings = Settings()
    model = resolve_base_model(base_model or settings.base_model, settings.home)
    typer.echo(f"{model.name}\t{model.path}\t{model.fingerprint}")


RecipeArg = Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Recipe YAML.")]
PreviousReport = Annotated[
    Path | None,
    typer.Option(help="report.json of the promoted adapter: the regression gate compares."),
]


@app.command()
def train(
    recipe: RecipeArg,
    out_dir: Annotated[Path, typer.Argument(help="Run folder (checkpoints, adapter, archive).")],
    resume: Annotated[bool, typer.Option(help="Continue from the latest checkpoint.")] = False,
    previous_report: PreviousReport = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a knob, e.g. train.epochs=2.")
    ] = None,
) -> None:
    """Validate the data, train a LoRA adapter, evaluate it beside the base model, package it.
    Exits 1 when the recipe's regression gate fails (the archive is still written)."""
    from training.pipeline import run_recipe
    from training.recipe import load_recipe

    result = run_recipe(
        load_recipe(recipe, set_ or []), out_dir, resume=resume, previous_report=previous_report
    )
    typer.echo((result.train.adapter_dir / "report.md").read_text())
    typer.echo(f"archive: {result.archive}")
    for reason in result.report.gate.reasons:
        typer.echo(f"gate: {reason}", err=True)
    if not result.passed:
        raise typer.Exit(1)


@app.command()
def evaluate(
    recipe: RecipeArg,
    adapter_dir: Annotated[Path, typer.Argument(exists=True, file_okay=False)],
    previous_report: PreviousReport = None,
) -> None:
    """Score an adapter folder on its recipe's test split, through the serving engine and
    constrained decoding, beside the base model. Exits 1 when the gate fails."""
    from training.data import prepare_data
    from training.evaluate import evaluate as run_evaluation
    from training.recipe import load_recipe
    from training.train import base_model_dir

    loaded = load_recipe(recipe, [])
    test = prepare_data(loaded).splits["test"][: loaded.eval.max_examples]
    report = run_evaluation(
        adapter_dir,
        test,
        base_dir=base_model_dir(loaded),
        gate=loaded.eval.gate,
        previous_report=previous_report,
        compare_base=loaded.eval.compare_base,
        max_tokens=loaded.eval.max_tokens,
    )
    typer.echo((adapter_dir / "report.md").read_text())
    for reason in report.gate.reasons:
        typer.echo(f"gate: {reason}", err=True)
    if not report.passed:
        raise typer.Exit(1)


adapters_app = typer.Typer(help="Manage the adapters of a running server.")
app.add_typer(adapters_app, name="adapters")

UrlOption = Annotated[str, typer.Option(envvar="HOTSWAP_URL", help="The server's base URL.")]
KeyOption = Annotated[
    str | None, typer.Option(envvar="HOTSWAP_API_KEY", help="An API key with the admin role.")
]


def _admin(url: str, api_key: str | None) -> AdminClient:
    from server.admin_client import AdminClient

    return AdminClient(url, api_key)


def _print(value: object) -> None:
    typer.echo(json.dumps(value, indent=2))


def _run_admin(call: Callable[[], object]) -> None:
    from server.admin_client import AdminError

    try:
        result = call()
    except AdminError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    if result is not None:
        _print(result)


@adapters_app.command("push")
def adapters_push(
    archive: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, help=".tar.gz, .tar or .zip")
    ],
    name: Annotated[str | None, typer.Option(help="Adapter name (else the manifest's).")] = None,
    description: Annotated[str | None, typer.Option(help="Free-form description.")] = None,
    promote: Annotated[bool, typer.Option(help="Promote the uploaded version.")] = False,
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = None,
) -> None:
    """Upload an adapter archive; optionally promote the new version."""
    client = _admin(url, api_key)

    def push() -> object:
        uploaded = client.push(archive, name, description)
        if promote:
            return client.promote(uploaded["name"], uploaded["version"])
        return uploaded

    _run_admin(push)


@adapters_app.command("list")
def adapters_list(url: UrlOption = DEFAULT_URL, api_key: KeyOption = None) -> None:
    """Every adapter with its versions and the promoted one."""
    _run_admin(_admin(url, api_key).list)


@adapters_app.command("show")
def adapters_show(name: str, url: UrlOption = DEFAULT_URL, api_key: KeyOption = None) -> None:
    """All versions of one adapter, with their manifests, and its rollouts (transitions,
    reasons, figures; the active one with the server's live figures)."""
    client = _admin(url, api_key)
    _run_admin(lambda: {**client.show(name), "rollouts": client.rollouts(name)})


def _parse_gates(values: list[str]) -> dict[str, float]:
    """`--gate NAME=NUMBER` options as the rollout's gates (the server checks their ranges)."""
    gates: dict[str, float] = {}
    for value in values:
        key, sep, number = value.partition("=")
        try:
            if not (key and sep):
                raise ValueError(value)
            gates[key] = float(number)
        except ValueError:
            raise typer.BadParameter(
                f"expected GATE=NUMBER, e.g. min_requests=200, got {value!r}", param_hint="--gate"
            ) from None
    return gates


@adapters_app.command("promote")
def adapters_promote(
    name: str,
    version: int,
    canary: Annotated[
        float | None,
        typer.Option(help="Roll out as a canary: PERCENT of requests (0 < PERCENT < 100)."),
    ] = None,
    shadow: Annotated[
        bool, typer.Option("--shadow", help="Roll out in shadow: copies, never returned.")
    ] = False,
    gate: Annotated[
        list[str] | None,
        typer.Option(help="A rollout gate as NAME=NUMBER, e.g. min_requests=200 (repeatable)."),
    ] = None,
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = None,
) -> None:
    """Serve VERSION for the bare NAME (returns once it serves); with --canary or --shadow,
    start a rollout that promotes it when its gates hold (docs/rollout.md). During a
    rollout, a plain promote of its candidate promotes it at once."""
    if canary is not None and shadow:
        raise typer.BadParameter("choose --canary PERCENT or --shadow", param_hint="--shadow")
    if gate and canary is None and not shadow:
        raise typer.BadParameter("--gate needs --canary or --shadow", param_hint="--gate")
    client = _admin(url, api_key)
    if canary is None and not shadow:
        _run_admin(lambda: client.promote(name, version))
        return
    plan: dict[str, object] = {
        "version": version,
        "mode": "shadow" if shadow else "canary",
        "gates": _parse_gates(gate or []),
    }
    if canary is not None:
        plan["percent"] = canary
    _run_admin(lambda: client.start_rollout(name, plan))


@adapters_app.command("abort")
def adapters_abort(name: str, url: UrlOption = DEFAULT_URL, api_key: KeyOption = None) -> None:
    """Stop NAME's active rollout; the current version answers every request again."""
    _run_admin(lambda: _admin(url, api_key).abort_rollout(name))


@adapters_app.command("rollback")
def adapters_rollback(name: str, url: UrlOption = DEFAULT_URL, api_key: KeyOption = None) -> None:
    """Serve again the version promoted before the current one."""
    _run_admin(lambda: _admin(url, api_key).rollback(name))


@adapters_app.command("delete")
def adapters_delete(
    name: str, version: int, url: UrlOption = DEFAULT_URL, api_key: KeyOption = None
) -> None:
    """Delete a version that is not promoted."""
    _run_admin(lambda: _admin(url, api_key).delete(name, version))


@app.callback()
def _configure_logging(
    log_level: Annotated[str, typer.Option(help="Logging level.")] = "INFO",
    log_json: Annotated[
        bool, typer.Option(envvar="HOTSWAP_LOG_JSON", help="JSON log lines with request ids.")
    ] = True,
) -> None:
    from server.request_log import configure_logging

    configure_logging(log_level, json_format=log_json)

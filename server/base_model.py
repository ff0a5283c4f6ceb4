"""The base model: a catalog model by short name (the default SmolLM2-135M-Instruct, or
`gemma3-270m`; `adapters.base_models`), any local HF folder, or a hub id, prepared once under
`HOTSWAP_HOME` and identified by a content fingerprint."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from adapters.base_models import (
    BASE_MODELS,
    DEFAULT_BASE_MODEL,
    BaseModelError,
    catalog_entry,
    prepare_base_model,
)
from adapters.fingerprint import model_fingerprint

__all__ = ["BaseModel", "BaseModelError", "prepare_default_base_model", "resolve_base_model"]


@dataclass(frozen=True)
class BaseModel:
    """A base model ready for the engine: its served name, local folder and fingerprint."""

    name: str
    path: Path
    fingerprint: str


def prepare_default_base_model(home: Path) -> Path:
    """The default base model's folder (SmolLM2-135M-Instruct), converted once."""
    return prepare_base_model(DEFAULT_BASE_MODEL, home)


def resolve_base_model(spec: str | None, home: Path, served_name: str | None = None) -> BaseModel:
    """Find the base model folder for `spec` and fingerprint it: None (the default), a short
    name of the catalog (prepared under `home`), a local folder, else a hub id."""
    spec = spec or DEFAULT_BASE_MODEL
    if catalog_entry(spec) is not None:
        path = prepare_base_model(spec, home)
    elif Path(spec).expanduser().is_dir():
        path = Path(spec).expanduser().resolve()
    else:
        path = _download_from_hub(spec)
    if not (path / "config.json").is_file():
        raise BaseModelError(f"{path} is not an HF model folder: it has no config.json")
    return BaseModel(name=served_name or path.name, path=path, fingerprint=model_fingerprint(path))


def _download_from_hub(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.txt"]))
    except Exception as exc:  # the hub client raises many kinds; all mean "not available"
        raise BaseModelError(
            f"{repo_id!r} is neither a short name ({', '.join(BASE_MODELS)}), a local folder "
            f"nor reachable on the model hub: {exc}"
        ) from exc

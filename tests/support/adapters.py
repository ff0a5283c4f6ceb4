"""Real PEFT LoRA adapters of the real base model, with random non-zero weights."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import httpx


def make_random_lora(
    base_model: Path, out: Path, *, seed: int, rank: int, target_modules: list[str]
) -> Path:
    """Save a PEFT LoRA whose A and B are both random (PEFT's own non-identity init)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    if (out / "adapter_model.safetensors").is_file():
        return out
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        target_modules=target_modules,
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.mul_(0.5)
    peft_model.save_pretrained(out)
    return out


def pack_adapter(folder: Path, archive: Path, manifest: Mapping[str, object] | None = None) -> Path:
    """A tar of a PEFT folder (files at the root), with `hotswap.json` if given: gzipped
    unless `archive` is named `*.tar`."""
    import json
    import tarfile

    with tarfile.open(archive, "w" if archive.suffix == ".tar" else "w:gz") as tar:
        for path in sorted(folder.iterdir()):
            if path.name in {"adapter_config.json", "adapter_model.safetensors"}:
                tar.add(path, arcname=path.name)
        if manifest is not None:
            manifest_file = archive.with_suffix(".manifest.json")
            manifest_file.write_text(json.dumps(manifest))
            tar.add(manifest_file, arcname="hotswap.json")
    return archive


def scaled_lora(folder: Path, out: Path, factor: float) -> Path:
    """A copy of a PEFT folder whose LoRA B matrices are `factor` times larger."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(folder / "adapter_config.json", out / "adapter_config.json")
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    with torch.no_grad():
        scaled = {k: v * factor if "lora_B" in k else v for k, v in tensors.items()}
    save_file(scaled, str(out / "adapter_model.safetensors"))
    return out


def upload_adapter(
    url: str, archive: Path, form: Mapping[str, str] | None = None, timeout: float = 300
) -> httpx.Response:
    """`POST /v1/adapters` of `archive` (multipart, as `hotswap adapters push` sends it)."""
    with archive.open("rb") as fh:
        return httpx.post(
            f"{url}/v1/adapters",
            files={"file": (archive.name, fh, "application/gzip")},
            data=dict(form or {}),
            timeout=timeout,
        )

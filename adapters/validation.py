"""Checks that an unpacked PEFT LoRA folder fits the served base model, before it is stored.

Everything the engine would trip over later (wrong shapes, unknown modules, pickles, ranks
over the engine's maximum) is refused here with a message naming the problem.
"""

from __future__ import annotations

import math
import re
import reprlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from safetensors import SafetensorError, safe_open

from adapters.base_spec import BaseModelSpec
from adapters.errors import AdapterRejected
from adapters.json_input import read_json_object
from adapters.manifest import MANIFEST_FILE, AdapterManifest, LoraSpec

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS)
_FLOAT_DTYPES = frozenset({"F16", "BF16", "F32"})
_REGISTRY_FIELDS = ("version", "digest", "lora", "created_at")

SchemaCheck = Callable[[dict[str, Any]], None]
"""Hook that raises AdapterRejected if the constrained decoder cannot compile a JSON Schema."""


def validate_adapter(
    folder: Path,
    base: BaseModelSpec,
    *,
    name: str | None = None,
    description: str | None = None,
    schema_check: SchemaCheck | None = None,
) -> AdapterManifest:
    """Check the PEFT files and `hotswap.json` in `folder` against `base`.

    Returns the manifest with `name`/`description` overriding the uploaded ones when given, the
    LoRA shape from adapter_config.json and the base fingerprint filled in; `version`, `digest`
    and `created_at` are left to the registry. Raises AdapterRejected.
    """
    lora = read_lora_config(folder / ADAPTER_CONFIG, base)
    check_lora_weights(folder / ADAPTER_WEIGHTS, lora, base)
    manifest = read_manifest(folder / MANIFEST_FILE, base, lora, name=name, description=description)
    if schema_check is not None and manifest.task.output_schema is not None:
        schema_check(manifest.task.output_schema)
    return manifest


def read_lora_config(path: Path, base: BaseModelSpec) -> LoraSpec:
    """Parse adapter_config.json and check it describes a LoRA the engine can serve."""
    if not path.is_file():
        raise AdapterRejected(
            f"{ADAPTER_CONFIG} is missing: upload a PEFT LoRA folder "
            f"({ADAPTER_CONFIG} + {ADAPTER_WEIGHTS}) as .tar.gz, .tar or .zip"
        )
    config = read_json_object(path, ADAPTER_CONFIG)
    if config.get("peft_type") != "LORA":
        raise AdapterRejected(
            f"{ADAPTER_CONFIG} has peft_type {config.get('peft_type')!r}; only LORA adapters are "
            "served"
        )
    rank = config.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank <= 0:
        raise AdapterRejected(f"{ADAPTER_CONFIG} has r={rank!r}; it must be a positive integer")
    if rank > base.max_lora_rank:
        raise AdapterRejected(
            f"LoRA rank {rank} is above the served maximum of {base.max_lora_rank}; "
            f"retrain with r <= {base.max_lora_rank}"
        )
    alpha = config.get("lora_alpha", 8)  # PEFT's default
    if not _is_finite_number(alpha):
        raise AdapterRejected(
            f"{ADAPTER_CONFIG} has lora_alpha={reprlib.repr(alpha)}; it must be a finite number"
        )
    targets = config.get("target_modules")
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        raise AdapterRejected(
            f"{ADAPTER_CONFIG} target_modules must be a list of module names such as "
            "['q_proj', 'v_proj'] (regular expressions are not supported)"
        )
    unknown = sorted(set(targets) - set(base.modules))
    if unknown:
        raise AdapterRejected(
            f"target_modules {unknown} are not LoRA-targetable modules of the base model; "
            f"choose from {sorted(base.modules)}"
        )
    _check_supported_features(config)
    return LoraSpec(rank=rank, alpha=alpha, target_modules=sorted(set(targets)))


def _is_finite_number(value: object) -> bool:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False


def _check_supported_features(config: dict[str, Any]) -> None:
    if config.get("use_dora"):
        raise AdapterRejected("DoRA adapters (use_dora=true) are not supported by the engine")
    if config.get("modules_to_save"):
        raise AdapterRejected("modules_to_save is not supported: only LoRA matrices are served")
    if config.get("bias", "none") != "none":
        raise AdapterRejected(f"bias={config['bias']!r} is not supported; train with bias='none'")
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise AdapterRejected(
            "rank_pattern/alpha_pattern are not supported: use one r and lora_alpha for all modules"
        )


def check_lora_weights(path: Path, lora: LoraSpec, base: BaseModelSpec) -> None:
    """Check every tensor's name, layer, dtype and shape in adapter_model.safetensors."""
    tensors = _read_tensor_header(path)
    pattern = re.compile(rf"{re.escape(base.layer_prefix)}\.(\d+)\.(.+)\.lora_(A|B)\.weight")
    by_path = {module.path: short for short, module in base.modules.items()}
    seen: set[tuple[int, str, str]] = set()
    for name, (dtype, shape) in sorted(tensors.items()):
        match = pattern.fullmatch(name)
        if match is None or match.group(2) not in by_path:
            raise AdapterRejected(
                f"tensor {name!r} is not a LoRA weight of the base model; expected names like "
                f"'{base.layer_prefix}.0.self_attn.q_proj.lora_A.weight'"
            )
        layer, short, half = int(match.group(1)), by_path[match.group(2)], match.group(3)
        _check_tensor(name, layer, short, half, dtype, shape, lora, base)
        seen.add((layer, short, half))
    for layer, short, half in sorted(seen):
        other = "B" if half == "A" else "A"
        if (layer, short, other) not in seen:
            raise AdapterRejected(
                f"layer {layer} {short} has lora_{half} but no lora_{other} in {ADAPTER_WEIGHTS}"
            )


def _read_tensor_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Tensor name -> (dtype, shape), from the safetensors header alone."""
    if not path.is_file():
        raise AdapterRejected(
            f"{ADAPTER_WEIGHTS} is missing: only safetensors weights are accepted "
            "(save with safe_serialization=True)"
        )
    try:
        with safe_open(path, framework="numpy") as weights:
            slices = {name: weights.get_slice(name) for name in weights.keys()}  # noqa: SIM118
            tensors = {name: (s.get_dtype(), tuple(s.get_shape())) for name, s in slices.items()}
    except (SafetensorError, OSError) as exc:
        raise AdapterRejected(f"{ADAPTER_WEIGHTS} is not a valid safetensors file: {exc}") from exc
    if not tensors:
        raise AdapterRejected(f"{ADAPTER_WEIGHTS} holds no tensors")
    return tensors


def _check_tensor(
    name: str,
    layer: int,
    short: str,
    half: str,
    dtype: str,
    shape: tuple[int, ...],
    lora: LoraSpec,
    base: BaseModelSpec,
) -> None:
    if short not in lora.target_modules:
        raise AdapterRejected(
            f"tensor {name!r} targets {short!r}, which {ADAPTER_CONFIG} target_modules omits"
        )
    if layer >= base.num_layers:
        raise AdapterRejected(
            f"tensor {name!r} is for layer {layer}, but the base model has "
            f"{base.num_layers} layers (0-{base.num_layers - 1})"
        )
    if dtype not in _FLOAT_DTYPES:
        raise AdapterRejected(
            f"tensor {name!r} has dtype {dtype}; LoRA weights must be F16, BF16 or F32"
        )
    module = base.modules[short]
    expected = (lora.rank, module.in_features) if half == "A" else (module.out_features, lora.rank)
    if shape != expected:
        raise AdapterRejected(
            f"tensor {name!r} has shape {list(shape)}, expected {list(expected)} "
            f"for rank {lora.rank} on the base model's {short}"
        )


def read_manifest(
    path: Path,
    base: BaseModelSpec,
    lora: LoraSpec,
    *,
    name: str | None = None,
    description: str | None = None,
) -> AdapterManifest:
    """Parse the uploaded hotswap.json (optional) and complete it for this base model."""
    data: dict[str, Any] = {}
    if path.is_file():
        data = read_json_object(path, MANIFEST_FILE)
    data = {key: value for key, value in data.items() if key not in _REGISTRY_FIELDS}
    if name is not None:
        data["name"] = name
    if description is not None:
        data["description"] = description
    if "name" not in data:
        raise AdapterRejected(
            f"the adapter has no name: set 'name' in {MANIFEST_FILE} or give one with the upload"
        )
    declared = data.get("base_model")
    if declared is not None and declared != base.fingerprint:
        raise AdapterRejected(
            f"the adapter was trained for base model {declared}, but the served base model is "
            f"{base.fingerprint}; retrain it on the served model"
        )
    data.update(base_model=base.fingerprint, lora=lora)
    try:
        return AdapterManifest.model_validate(data)
    except ValidationError as exc:
        raise AdapterRejected(f"adapter manifest is invalid: {describe_errors(exc)}") from exc


def describe_errors(exc: ValidationError) -> str:
    """A pydantic error as one line: each problem's field path and message."""
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or 'value'}: {error['msg']}"
        for error in exc.errors()
    )

"""The vLLM general plugin that turns on hotswap's segment-grouped LoRA ops on CPU.

Declared in pyproject.toml (`vllm.general_plugins`: `hotswap_cpu_lora`), so vLLM runs
`register()` in every process it starts: the front end, the engine core and the workers.

The hook: vLLM builds its punica wrapper from the class path returned by the platform's
`get_punica_wrapper()` classmethod (`vllm/lora/punica_wrapper/punica_selector.py`). vLLM offers no
setting or plugin group for that choice short of replacing the whole platform (a
`vllm.platform_plugins` entry point), so `register()` overrides that one classmethod on the CPU
platform class to return `server.lora_cpu.punica.SegmentedPunicaWrapperCPU`. It is a class
attribute patch, done from the supported plugin entry point, and nothing else of the platform or
of vLLM's files changes. On any platform other than CPU it does nothing.

`HOTSWAP_FAST_CPU_LORA=0` (or `false`, `no`, `off`) keeps vLLM's own `PunicaWrapperCPU`.

Compilation: vLLM's CPU platform compiles the model (`torch.compile`, traced once) unless LoRA
is enabled, since its own LoRA ops cannot be traced once for every batch. hotswap's can: inside a
trace they are opaque custom ops (`server.lora_cpu.graph_ops`). So `register()` also wraps the
platform's `check_and_update_config` so that the platform chooses as it does without LoRA (its
only LoRA rule is to turn compilation off). `HOTSWAP_CPU_LORA_COMPILE=0` keeps it off; it stays
off as vLLM decides for `enforce_eager`, for fully sharded LoRA (whose shrink/expand entry
points are not custom ops), without a C++ compiler (inductor needs g++ or `$CXX`) and whenever
the fast ops are off.
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any

logger = logging.getLogger(__name__)

ENV_VAR = "HOTSWAP_FAST_CPU_LORA"
COMPILE_ENV_VAR = "HOTSWAP_CPU_LORA_COMPILE"
_FALSE_VALUES = frozenset({"0", "false", "no", "off"})
_MARKER = "_hotswap_fast_cpu_lora"
_ORIGINAL = "_hotswap_vllm_get_punica_wrapper"
_ORIGINAL_CHECK = "_hotswap_vllm_check_and_update_config"
PUNICA_WRAPPER = "server.lora_cpu.punica.SegmentedPunicaWrapperCPU"
"""The class path handed to vLLM as the CPU platform's punica wrapper."""


def _switch(name: str) -> bool:
    return os.environ.get(name, "1").strip().lower() not in _FALSE_VALUES


def fast_cpu_lora_enabled() -> bool:
    """Whether the environment asks for the fast ops (the default: yes)."""
    return _switch(ENV_VAR)


def cpu_lora_compile_enabled() -> bool:
    """Whether a LoRA engine on CPU keeps `torch.compile` (the default: yes, with the fast ops)."""
    return _switch(COMPILE_ENV_VAR)


def register() -> None:
    """Point the CPU platform at the segment-grouped punica wrapper (idempotent)."""
    if not fast_cpu_lora_enabled():
        logger.info("%s is off: vLLM's own CPU LoRA ops stay in use.", ENV_VAR)
        return
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    platform_cls = type(current_platform)
    if getattr(platform_cls, _MARKER, False):
        return

    def get_punica_wrapper(cls: Any) -> str:
        return PUNICA_WRAPPER

    dict_ = platform_cls.__dict__
    original_check = dict_.get(_ORIGINAL_CHECK, dict_["check_and_update_config"]).__func__

    def check_and_update_config(cls: Any, vllm_config: Any) -> None:
        lora = vllm_config.lora_config
        if lora is None or lora.fully_sharded_loras or not cpu_lora_compile_enabled():
            original_check(cls, vllm_config)
            return
        if shutil.which(os.environ.get("CXX", "g++")) is None:
            logger.warning("No C++ compiler (g++ or $CXX): LoRA on CPU runs uncompiled.")
            original_check(cls, vllm_config)
            return
        # The platform's choices as for a model without LoRA: its only LoRA rule is
        # "no compilation", which these ops do not need.
        vllm_config.lora_config = None
        try:
            original_check(cls, vllm_config)
        finally:
            vllm_config.lora_config = lora
        logger.info("LoRA on CPU with compilation mode %s.", vllm_config.compilation_config.mode)

    # vLLM's own methods are kept beside the patches, so a test can put them back
    setattr(platform_cls, _ORIGINAL, dict_.get(_ORIGINAL, dict_["get_punica_wrapper"]))
    setattr(platform_cls, _ORIGINAL_CHECK, classmethod(original_check))
    platform_cls.get_punica_wrapper = classmethod(get_punica_wrapper)
    platform_cls.check_and_update_config = classmethod(check_and_update_config)
    setattr(platform_cls, _MARKER, True)
    logger.info("Segment-grouped CPU LoRA ops enabled (%s).", PUNICA_WRAPPER)

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
"""

from __future__ import annotations

import logging
import os
from typing import Any

logger = logging.getLogger(__name__)

ENV_VAR = "HOTSWAP_FAST_CPU_LORA"
_FALSE_VALUES = frozenset({"0", "false", "no", "off"})
_MARKER = "_hotswap_fast_cpu_lora"
_ORIGINAL = "_hotswap_vllm_get_punica_wrapper"
PUNICA_WRAPPER = "server.lora_cpu.punica.SegmentedPunicaWrapperCPU"
"""The class path handed to vLLM as the CPU platform's punica wrapper."""


def fast_cpu_lora_enabled() -> bool:
    """Whether the environment asks for the fast ops (the default: yes)."""
    return os.environ.get(ENV_VAR, "1").strip().lower() not in _FALSE_VALUES


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

    # vLLM's own method is kept beside the patch, so a test can put it back
    setattr(platform_cls, _ORIGINAL, platform_cls.__dict__["get_punica_wrapper"])
    platform_cls.get_punica_wrapper = classmethod(get_punica_wrapper)
    setattr(platform_cls, _MARKER, True)
    logger.info("Segment-grouped CPU LoRA ops enabled (%s).", PUNICA_WRAPPER)

"""Session-wide fixtures: the real base model, real PEFT adapters, one real server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import OpenAI

from server.base_model import prepare_default_base_model
from tests.support.adapters import make_random_lora
from tests.support.ast_guard import serialize_ast_parse
from tests.support.server import RunningServer, start_server

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
HOME = Path(os.environ.get("HOTSWAP_HOME", Path.home() / ".cache" / "hotswap"))

serialize_ast_parse()  # CPython 3.11's AST converter is not thread-safe: tests/support/ast_guard.py


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Marks `model` every test that uses `base_model_path` (directly or through another
    fixture), and skips `cpu_only` tests, with the reason, off vLLM's CPU platform."""
    for item in items:
        if "base_model_path" in getattr(item, "fixturenames", ()):
            item.add_marker("model")
    cpu_only = [item for item in items if item.get_closest_marker("cpu_only")]
    if not cpu_only:
        return
    from vllm.platforms import current_platform  # imported only when such a test is collected

    if current_platform.is_cpu():
        return
    skip = pytest.mark.skip(
        reason=f"cpu_only: vLLM's platform here is {current_platform.device_name!r}, not the CPU"
    )
    for item in cpu_only:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def base_model_path() -> Path:
    return prepare_default_base_model(HOME)


@pytest.fixture(scope="session")
def lora_folders(
    base_model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Two PEFT LoRA adapters of the real base model with non-zero, different weights."""
    root = tmp_path_factory.mktemp("adapters")
    return {
        "alpha": make_random_lora(
            base_model_path, root / "alpha", seed=1, rank=8, target_modules=["q_proj", "v_proj"]
        ),
        "beta": make_random_lora(
            base_model_path,
            root / "beta",
            seed=2,
            rank=16,
            target_modules=ALL_LINEAR,
        ),
    }


@pytest.fixture(scope="session")
def server(
    base_model_path: Path, lora_folders: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """One server (float32, deterministic) for the whole session, with both adapters."""
    home = tmp_path_factory.mktemp("server")
    running = start_server(
        home / "server.log",
        home=home,
        base_model=base_model_path,
        args=["--dtype", "float32", *(f"--adapter={n}={p}" for n, p in lora_folders.items())],
    )
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="session")
def openai_client(server: RunningServer) -> OpenAI:
    """The official OpenAI SDK on the session server (no retries: a failure shows at once)."""
    return OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=600)

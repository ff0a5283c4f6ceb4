"""Session-wide fixtures: the real base model, real PEFT adapters, one real server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.base_model import prepare_default_base_model
from tests.support.adapters import make_random_lora
from tests.support.server import RunningServer, start_server

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
HOME = Path(os.environ.get("HOTSWAP_HOME", Path.home() / ".cache" / "hotswap"))


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

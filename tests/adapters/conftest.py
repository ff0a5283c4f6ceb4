"""Tiny synthetic PEFT LoRA adapters for a fake 2-layer base model (hidden 8), and packers."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from itertools import count
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
from safetensors.numpy import save_file

from adapters.archive import ArchiveLimits
from adapters.base_spec import BaseModelSpec, spec_from_hf_config
from adapters.errors import AdapterRejected
from adapters.registry import AdapterRegistry
from tests.support.postgres import RunningPostgres, postgres  # noqa: F401 (fixture)

FINGERPRINT = "sha256:" + "0" * 64
BASE_CONFIG = {
    "hidden_size": 8,
    "intermediate_size": 16,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "num_hidden_layers": 2,
}
LIMITS = ArchiveLimits(
    max_archive_bytes=64 << 10,
    max_members=8,
    max_member_bytes=256 << 10,
    max_unpacked_bytes=512 << 10,
)
PREFIX = "base_model.model.model.layers"

Snapshot = Callable[[], tuple[Any, ...]]
"""The `snapshot` fixture: takes the registry's visible state and every file under home."""


def refuse_patterns(schema: dict[str, Any]) -> None:
    """A stand-in for the server's constrained-decoder check: it cannot compile `pattern`."""
    if "pattern" in json.dumps(schema):
        raise AdapterRejected("output_schema uses 'pattern', which the decoder cannot compile")


class AdapterKit:
    """Writes adapter folders and packs them; every archive gets a fresh file name."""

    prefix = PREFIX
    fingerprint = FINGERPRINT

    def __init__(self, root: Path, spec: BaseModelSpec) -> None:
        self.root = root
        self.spec = spec
        self._ids = count()

    def fresh(self, suffix: str) -> Path:
        """An unused path under the kit's folder."""
        return self.root / f"item{next(self._ids)}{suffix}"

    def tensors(
        self, rank: int = 4, targets: tuple[str, ...] = ("q_proj", "v_proj"), seed: int = 0
    ) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        out = {}
        for layer in range(self.spec.num_layers):
            for short in targets:
                module = self.spec.modules[short]
                stem = f"{PREFIX}.{layer}.{module.path}"
                out[f"{stem}.lora_A.weight"] = rng.standard_normal(
                    (rank, module.in_features), dtype=np.float32
                )
                out[f"{stem}.lora_B.weight"] = rng.standard_normal(
                    (module.out_features, rank), dtype=np.float32
                )
        return out

    def folder(
        self,
        *,
        name: str | None = "intent",
        rank: int = 4,
        targets: tuple[str, ...] = ("q_proj", "v_proj"),
        seed: int = 0,
        config: dict[str, Any] | None = None,
        tensors: dict[str, Any] | None = None,
        manifest: dict[str, Any] | None = None,
    ) -> Path:
        """An adapter folder; `config`/`manifest` entries override the defaults (None deletes),
        `tensors` replaces the weights."""
        folder = self.fresh("")
        folder.mkdir()
        adapter_config: dict[str, Any] = {
            "peft_type": "LORA",
            "r": rank,
            "lora_alpha": 2 * rank,
            "target_modules": list(targets),
            "bias": "none",
            "base_model_name_or_path": "fake",
        }
        adapter_config.update(config or {})
        (folder / "adapter_config.json").write_text(json.dumps(adapter_config))
        weights = self.tensors(rank, targets, seed) if tensors is None else tensors
        save_file(weights, str(folder / "adapter_model.safetensors"))
        hotswap: dict[str, Any] = {
            "name": name,
            "base_model": FINGERPRINT,
            "description": "intent classifier",
            "task": {
                "system_message": "Classify the intent.",
                "input_template": "Text: {input}",
                "output_schema": {
                    "type": "object",
                    "properties": {"intent": {"enum": ["buy", "sell"]}},
                    "required": ["intent"],
                },
                "labels": ["buy", "sell"],
                "label_field": "intent",
                "reference_distribution": {"buy": 0.5, "sell": 0.5},
            },
        }
        hotswap.update(manifest or {})
        hotswap = {key: value for key, value in hotswap.items() if value is not None}
        (folder / "hotswap.json").write_text(json.dumps(hotswap))
        return folder

    def tar_gz(
        self,
        folder: Path,
        *,
        top: str | None = "adapter",
        extra: Sequence[tuple[tarfile.TarInfo, bytes | None]] = (),
    ) -> Path:
        return self._tar(folder, "w:gz", ".tar.gz", top, extra)

    def tar(
        self,
        folder: Path,
        *,
        top: str | None = "adapter",
        extra: Sequence[tuple[tarfile.TarInfo, bytes | None]] = (),
    ) -> Path:
        return self._tar(folder, "w", ".tar", top, extra)

    def _tar(
        self,
        folder: Path,
        mode: Literal["w", "w:gz"],
        suffix: str,
        top: str | None,
        extra: Sequence[tuple[tarfile.TarInfo, bytes | None]],
    ) -> Path:
        path = self.fresh(suffix)
        with tarfile.open(path, mode) as tar:
            for file in sorted(folder.iterdir()):
                tar.add(file, arcname=f"{top}/{file.name}" if top else file.name)
            for info, data in extra:
                tar.addfile(info, io.BytesIO(data) if data is not None else None)
        return path

    def zip(
        self,
        folder: Path,
        *,
        top: str | None = None,
        extra: Sequence[tuple[zipfile.ZipInfo | str, bytes]] = (),
    ) -> Path:
        path = self.fresh(".upload")  # detected by magic bytes, not by name
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            for file in sorted(folder.iterdir()):
                zf.write(file, f"{top}/{file.name}" if top else file.name)
            for info, data in extra:
                zf.writestr(info, data)
        return path


@pytest.fixture
def base_spec(tmp_path: Path) -> BaseModelSpec:
    model = tmp_path / "base"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(BASE_CONFIG))
    return spec_from_hf_config(model, fingerprint=FINGERPRINT, max_lora_rank=8)


@pytest.fixture
def kit(tmp_path: Path, base_spec: BaseModelSpec) -> AdapterKit:
    root = tmp_path / "uploads"
    root.mkdir()
    return AdapterKit(root, base_spec)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str | None:
    """Each registry test runs on both backends: the embedded SQLite file (None: the default)
    and a fresh database on a real PostgreSQL started for the session."""
    if request.param == "sqlite":
        return None
    server: RunningPostgres = request.getfixturevalue("postgres")
    return server.create_database()


@pytest.fixture
def open_registry(
    home: Path, base_spec: BaseModelSpec, database_url: str | None
) -> Iterator[Callable[[], AdapterRegistry]]:
    """Opens (or re-opens) the registry at `home`, as the server would at start."""
    opened: list[AdapterRegistry] = []

    def open_one() -> AdapterRegistry:
        opened.append(
            AdapterRegistry(
                home, base_spec, LIMITS, schema_check=refuse_patterns, database_url=database_url
            )
        )
        return opened[-1]

    yield open_one
    for registry in opened:
        registry.close()


@pytest.fixture
def registry(open_registry: Callable[[], AdapterRegistry]) -> AdapterRegistry:
    return open_registry()


@pytest.fixture
def snapshot(registry: AdapterRegistry, home: Path) -> Snapshot:
    """The registry's visible state and every file under home (SQLite's -wal/-shm aside)."""

    def take() -> tuple[Any, ...]:
        files = sorted(
            (
                str(p.relative_to(home)),
                p.read_bytes() if "blobs" in p.parts and p.is_file() else None,
            )
            for p in home.rglob("*")
            if not p.name.endswith(("-wal", "-shm"))
        )
        details = [registry.get(s.name) for s in registry.list_adapters()]
        return registry.list_adapters(), details, files

    return take

"""A register that fails or is killed half-way leaves no half version and no stray files."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from adapters import store
from adapters.registry import AdapterRegistry

if TYPE_CHECKING:
    from tests.adapters.conftest import AdapterKit, Snapshot

REPO = Path(__file__).resolve().parents[2]


def test_failure_while_copying_the_blob_leaves_nothing(
    registry: AdapterRegistry,
    kit: AdapterKit,
    snapshot: Snapshot,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry.register(kit.tar_gz(kit.folder(name="existing")))
    before = snapshot()
    copy = store._copy_synced
    calls = []

    def copy_then_fail(source: Path, target: Path) -> None:
        calls.append(target)
        copy(source, target)
        if len(calls) == 1:
            raise OSError("disk full")

    monkeypatch.setattr(store, "_copy_synced", copy_then_fail)
    with pytest.raises(OSError, match="disk full"):
        registry.register(kit.tar_gz(kit.folder(seed=5)))
    assert calls and snapshot() == before


def test_failure_after_the_blob_is_placed_leaves_nothing(
    registry: AdapterRegistry,
    kit: AdapterKit,
    snapshot: Snapshot,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry.register(kit.tar_gz(kit.folder(name="existing")))
    before = snapshot()

    def fail(*args: object) -> None:
        raise RuntimeError("crash inside the transaction")

    monkeypatch.setattr(store.AdapterStore, "_set_promoted", staticmethod(fail))
    with pytest.raises(RuntimeError, match="inside the transaction"):
        registry.register(kit.tar_gz(kit.folder(name="fresh")))
    assert snapshot() == before


_KILLED_REGISTER = """
import os, signal, sys
from pathlib import Path
from adapters import store
from adapters.base_spec import spec_from_hf_config
from adapters.registry import AdapterRegistry

home, base, archive, fingerprint, step, url = sys.argv[1:]
def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
if step == "copy":
    store._copy_synced = die
else:
    store.AdapterStore._set_promoted = staticmethod(die)
spec = spec_from_hf_config(Path(base), fingerprint=fingerprint, max_lora_rank=8)
AdapterRegistry(Path(home), spec, database_url=url or None).register(Path(archive))
"""


@pytest.mark.parametrize("step", ["copy", "transaction"])
def test_kill_9_mid_register_leaves_nothing_after_reopening(
    step: str,
    open_registry: Callable[[], AdapterRegistry],
    kit: AdapterKit,
    home: Path,
    tmp_path: Path,
    database_url: str | None,
) -> None:
    existing = open_registry()
    existing.register(kit.tar_gz(kit.folder(name="existing")))
    before = existing.list_adapters()
    archive = kit.tar_gz(kit.folder(name="fresh", seed=3))

    args = [str(home), str(tmp_path / "base"), str(archive), kit.fingerprint, step]
    args.append(database_url or "")
    run = subprocess.run([sys.executable, "-c", _KILLED_REGISTER, *args], cwd=REPO, check=False)

    assert run.returncode == -9
    adapters_dir = home / "adapters"
    assert list((adapters_dir / "tmp").iterdir())  # the killed writer left its temp folders
    blobs_left = len(list((adapters_dir / "blobs").iterdir()))
    assert blobs_left == (2 if step == "transaction" else 1)  # an orphan blob, or none yet

    reopened = open_registry()
    assert reopened.list_adapters() == before
    assert list((adapters_dir / "tmp").iterdir()) == []
    blobs = {p.name for p in (adapters_dir / "blobs").iterdir()}
    assert blobs == {v.digest for v in reopened.get("existing").versions}
    result = reopened.register(archive)  # the store still works
    assert result.created and result.manifest.name == "fresh"

"""A stored row that cannot be read is quarantined: listing, resolving and re-opening go on."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import text

from adapters.database import database_url as make_url
from adapters.database import open_database
from adapters.errors import AdapterNotFound
from adapters.registry import AdapterRegistry

if TYPE_CHECKING:
    from tests.adapters.conftest import AdapterKit


def _poison(home: Path, url: str | None, name: str, manifest: str, *, promote: bool) -> int:
    """Insert the next version of `name` straight into the database, sharing version 1's
    blob, as an older release (or a hand edit) could have stored it."""
    engine = open_database(make_url(url, home / "adapters" / "registry.db"))
    try:
        with engine.begin() as conn:
            last, digest = conn.execute(
                text(
                    "SELECT n.last_version, v.digest FROM names n JOIN versions v "
                    "ON v.name = n.name WHERE n.name = :name AND v.version = 1"
                ),
                {"name": name},
            ).one()
            version = last + 1
            conn.execute(
                text(
                    "INSERT INTO versions (name, version, digest, manifest, created_at) "
                    "VALUES (:name, :version, :digest, :manifest, '2026-01-01T00:00:00+00:00')"
                ),
                {"name": name, "version": version, "digest": digest, "manifest": manifest},
            )
            promoted = ", promoted = :version" if promote else ""
            conn.execute(
                text(f"UPDATE names SET last_version = :version{promoted} WHERE name = :name"),
                {"name": name, "version": version},
            )
    finally:
        engine.dispose()
    return version


def _nan_manifest(stored: dict) -> list[str]:
    """The manifest of a NaN-alpha upload as the previous release stored it (pydantic wrote
    NaN as null), and as a literal NaN."""
    as_null = json.loads(json.dumps(stored))
    as_null["lora"]["alpha"] = None
    literal = json.dumps(stored).replace('"alpha": 8.0', '"alpha": NaN')
    assert "NaN" in literal
    return [json.dumps(as_null), literal, '{"name": "intent", "unknown": 1}', "not json"]


@pytest.mark.parametrize("poison", range(4), ids=["null-alpha", "nan-alpha", "extra", "garbage"])
def test_a_poisoned_row_is_quarantined_and_logged_once(
    registry: AdapterRegistry,
    kit: AdapterKit,
    home: Path,
    database_url: str | None,
    open_registry: Callable[[], AdapterRegistry],
    caplog: pytest.LogCaptureFixture,
    poison: int,
) -> None:
    first = registry.register(kit.tar_gz(kit.folder()))
    registry.register(kit.tar_gz(kit.folder(name="other")))
    manifest = _nan_manifest(first.manifest.model_dump(mode="json"))[poison]
    bad = _poison(home, database_url, "intent", manifest, promote=False)

    with caplog.at_level(logging.ERROR, logger="adapters.store"):
        listing = {s.name: (s.versions, s.promoted_version) for s in registry.list_adapters()}
        assert listing == {"intent": ([1], 1), "other": ([1], 1)}
        assert [v.version for v in registry.get("intent").versions] == [1]
        assert registry.get("intent").quarantined.keys() == {bad}
        assert registry.resolve("intent").version == 1
        assert registry.resolve("other").version == 1
        with pytest.raises(AdapterNotFound, match=f"intent@{bad} is quarantined: its manifest"):
            registry.resolve(f"intent@{bad}")
    assert len([r for r in caplog.records if "Quarantined adapter intent@2" in r.message]) == 1

    reopened = open_registry()
    assert [s.name for s in reopened.list_adapters()] == ["intent", "other"]
    registry.delete("intent", bad)  # an admin can remove it
    assert registry.get("intent").quarantined == {}


def test_a_quarantined_promoted_version_is_skipped_and_named(
    registry: AdapterRegistry, kit: AdapterKit, home: Path, database_url: str | None
) -> None:
    registry.register(kit.tar_gz(kit.folder()))
    registry.register(kit.tar_gz(kit.folder(name="other")))
    bad = _poison(home, database_url, "intent", "{}", promote=True)

    summary = {s.name: s.promoted_version for s in registry.list_adapters()}
    assert summary == {"intent": None, "other": 1}
    with pytest.raises(AdapterNotFound, match="promote another version of 'intent'"):
        registry.resolve("intent")
    with pytest.raises(AdapterNotFound, match=f"intent@{bad} is quarantined"):
        registry.promote("intent", bad)
    registry.promote("intent", 1)
    assert registry.resolve("intent").version == 1


def test_a_missing_blob_folder_quarantines_its_versions(
    registry: AdapterRegistry, kit: AdapterKit
) -> None:
    registry.register(kit.tar_gz(kit.folder()))
    gone = registry.register(kit.tar_gz(kit.folder(name="other", seed=1))).adapter
    shutil.rmtree(gone.path)

    assert [s.name for s in registry.list_adapters()] == ["intent"]
    with pytest.raises(AdapterNotFound, match="other@1 is quarantined: its files are missing"):
        registry.resolve("other")
    with pytest.raises(AdapterNotFound, match="no readable version"):
        registry.get("other")
    assert registry.resolve("intent").version == 1

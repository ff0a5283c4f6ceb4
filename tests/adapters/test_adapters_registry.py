"""The registry's lifecycle: register, list, get, promote, rollback, delete, resolve, persist."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from adapters.errors import AdapterConflict, AdapterNotFound
from adapters.registry import AdapterRegistry

if TYPE_CHECKING:
    from tests.adapters.conftest import AdapterKit


def test_register_stores_a_complete_promoted_first_version(
    registry: AdapterRegistry, kit: AdapterKit, home: Path
) -> None:
    result = registry.register(kit.tar_gz(kit.folder()))

    assert result.created
    manifest = result.manifest
    assert (manifest.name, manifest.version) == ("intent", 1)
    assert manifest.base_model == kit.fingerprint
    assert manifest.lora is not None and manifest.lora.rank == 4 and manifest.lora.alpha == 8
    assert manifest.lora.target_modules == ["q_proj", "v_proj"]
    assert manifest.created_at is not None and len(manifest.digest or "") == 64
    resolved = registry.resolve("intent")
    assert resolved == result.adapter
    assert (resolved.version, resolved.lora_int_id, resolved.digest) == (1, 1, manifest.digest)
    assert sorted(p.name for p in resolved.path.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    assert resolved.path.parent == home / "adapters" / "blobs"
    assert registry.get("intent").promoted_version == 1


def test_versions_increase_and_promotion_is_explicit_after_the_first(
    registry: AdapterRegistry, kit: AdapterKit
) -> None:
    registry.register(kit.tar_gz(kit.folder(seed=1)))
    second = registry.register(kit.zip(kit.folder(seed=2)))  # zip at the archive root
    third = registry.register(kit.tar(kit.folder(seed=3)))  # uncompressed tar

    assert second.manifest.version == 2 and second.adapter.lora_int_id == 2
    assert third.manifest.version == 3 and not registry.get("intent").quarantined
    assert registry.resolve("intent").version == 1
    assert registry.resolve("intent@2").version == 2
    registry.promote("intent", 2)
    assert registry.resolve("intent").version == 2
    detail = registry.get("intent")
    assert detail.promoted_version == 2 and [v.version for v in detail.versions] == [1, 2, 3]


def test_rollback_walks_back_through_promotions(registry: AdapterRegistry, kit: AdapterKit) -> None:
    for seed in range(3):
        registry.register(kit.tar_gz(kit.folder(seed=seed)))
    registry.promote("intent", 2)
    registry.promote("intent", 3)
    registry.promote("intent", 3)  # promoting the promoted version is a no-op

    assert registry.rollback("intent").version == 2
    assert registry.rollback("intent").version == 1
    with pytest.raises(AdapterConflict, match="no earlier promoted version"):
        registry.rollback("intent")
    assert registry.resolve("intent").version == 1


def test_rollback_skips_deleted_versions(registry: AdapterRegistry, kit: AdapterKit) -> None:
    for seed in range(3):
        registry.register(kit.tar_gz(kit.folder(seed=seed)))
    registry.promote("intent", 2)
    registry.promote("intent", 3)
    registry.delete("intent", 2)

    assert registry.rollback("intent").version == 1


def test_duplicate_upload_returns_the_existing_version(
    registry: AdapterRegistry, kit: AdapterKit, home: Path
) -> None:
    folder = kit.folder()
    first = registry.register(kit.tar_gz(folder))
    again = registry.register(kit.zip(folder, top="wrapped"))

    assert not again.created
    assert again.adapter == first.adapter
    assert [s.versions for s in registry.list_adapters()] == [[1]]


def test_same_weights_with_a_new_manifest_are_a_new_version_sharing_the_blob(
    registry: AdapterRegistry, kit: AdapterKit, home: Path
) -> None:
    first = registry.register(kit.tar_gz(kit.folder()))
    renamed = registry.register(kit.tar_gz(kit.folder()), description="better prompt")

    assert renamed.created and renamed.manifest.version == 2
    assert renamed.adapter.digest == first.adapter.digest
    assert renamed.adapter.lora_int_id != first.adapter.lora_int_id
    assert len(list((home / "adapters" / "blobs").iterdir())) == 1
    registry.delete("intent", 2)
    assert first.adapter.path.is_dir()  # still used by version 1


def test_lora_ids_and_versions_are_never_reused(registry: AdapterRegistry, kit: AdapterKit) -> None:
    registry.register(kit.tar_gz(kit.folder(seed=1)))
    second = registry.register(kit.tar_gz(kit.folder(seed=2)))
    registry.delete("intent", 2)
    third = registry.register(kit.tar_gz(kit.folder(seed=2)))  # the deleted bytes, re-uploaded
    other = registry.register(kit.tar_gz(kit.folder(name="sentiment", seed=3)))

    assert third.created and third.manifest.version == 3
    assert third.adapter.lora_int_id == 3 != second.adapter.lora_int_id
    assert other.adapter.lora_int_id == 4 and other.manifest.version == 1


def test_delete(registry: AdapterRegistry, kit: AdapterKit) -> None:
    registry.register(kit.tar_gz(kit.folder(seed=1)))
    second = registry.register(kit.tar_gz(kit.folder(seed=2)))

    with pytest.raises(AdapterConflict, match="promoted version"):
        registry.delete("intent", 1)
    registry.delete("intent", 2)
    assert not second.adapter.path.exists()
    assert [v.version for v in registry.get("intent").versions] == [1]
    with pytest.raises(AdapterNotFound, match="has no version 2; it has 1"):
        registry.resolve("intent@2")
    with pytest.raises(AdapterNotFound):
        registry.delete("intent", 2)


def test_not_found_messages_list_what_exists(registry: AdapterRegistry, kit: AdapterKit) -> None:
    with pytest.raises(AdapterNotFound, match="none are registered"):
        registry.resolve("intent")
    registry.register(kit.tar_gz(kit.folder()))
    registry.register(kit.tar_gz(kit.folder(name="sentiment")))

    with pytest.raises(AdapterNotFound, match=r"registered: intent \(versions 1; promoted 1\)"):
        registry.get("nope")
    with pytest.raises(AdapterNotFound, match="sentiment"):
        registry.resolve("nope")
    with pytest.raises(AdapterNotFound, match="has no version 7"):
        registry.promote("intent", 7)
    with pytest.raises(AdapterNotFound, match="use NAME or NAME@VERSION"):
        registry.resolve("intent@latest")


def test_list_adapters(registry: AdapterRegistry, kit: AdapterKit) -> None:
    registry.register(kit.tar_gz(kit.folder(name="sentiment")))
    registry.register(kit.tar_gz(kit.folder(seed=1)), description="first")
    registry.register(kit.tar_gz(kit.folder(seed=2)), description="second")

    listing = [
        (s.name, s.promoted_version, s.versions, s.description) for s in registry.list_adapters()
    ]
    assert listing == [
        ("intent", 1, [1, 2], "first"),
        ("sentiment", 1, [1], "intent classifier"),
    ]


def test_name_argument_overrides_and_completes_the_manifest(
    registry: AdapterRegistry, kit: AdapterKit
) -> None:
    named = registry.register(kit.tar_gz(kit.folder(name=None)), name="from-arg")
    renamed = registry.register(kit.tar_gz(kit.folder(name="intent")), name="other")

    assert named.manifest.name == "from-arg" and renamed.manifest.name == "other"


def test_registry_fields_in_an_uploaded_manifest_are_reassigned(
    registry: AdapterRegistry, kit: AdapterKit
) -> None:
    folder = kit.folder(
        manifest={"version": 9, "digest": "f" * 64, "created_at": "2020-01-01T00:00:00Z"}
    )
    manifest = registry.register(kit.tar_gz(folder)).manifest

    assert manifest.version == 1 and manifest.digest != "f" * 64
    assert manifest.created_at is not None and manifest.created_at.year > 2020


def test_state_persists_across_reopening(
    open_registry: Callable[[], AdapterRegistry], kit: AdapterKit
) -> None:
    first = open_registry()
    for seed in range(3):
        first.register(kit.tar_gz(kit.folder(seed=seed)))
    first.promote("intent", 3)
    first.delete("intent", 2)
    before = (first.list_adapters(), first.get("intent"))

    reopened = open_registry()
    assert (reopened.list_adapters(), reopened.get("intent")) == before
    assert reopened.register(kit.tar_gz(kit.folder(seed=7))).adapter.lora_int_id == 4
    assert reopened.rollback("intent").version == 1


def test_concurrent_registrations_get_distinct_versions_and_ids(
    registry: AdapterRegistry, kit: AdapterKit
) -> None:
    archives = [kit.tar_gz(kit.folder(seed=seed)) for seed in range(8)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(registry.register, archives))

    assert sorted(r.adapter.version for r in results) == list(range(1, 9))
    assert len({r.adapter.lora_int_id for r in results}) == 8
    assert registry.get("intent").promoted_version is not None


def test_stored_manifest_renders_prompts_as_trained(
    registry: AdapterRegistry, kit: AdapterKit
) -> None:
    manifest = registry.register(kit.tar_gz(kit.folder())).manifest

    assert manifest.task.render_messages("I want shares") == [
        {"role": "system", "content": "Classify the intent."},
        {"role": "user", "content": "Text: I want shares"},
    ]

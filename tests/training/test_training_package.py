"""Packaging: the archive `training.package` writes is accepted by the adapter registry."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from adapters.base_spec import spec_from_hf_config
from adapters.errors import AdapterRejected
from adapters.fingerprint import model_fingerprint
from adapters.registry import AdapterRegistry
from tests.support.adapters import make_random_lora
from training.data import prepare_data
from training.package import PackageError, package, update_manifest
from training.recipe import REPO_ROOT, load_recipe
from training.train import write_manifest


def test_packaged_adapter_is_registered(base_model_path: Path, tmp_path: Path) -> None:
    recipe = load_recipe(REPO_ROOT / "training/recipes/demo.yaml")
    prepared = prepare_data(recipe)
    adapter = make_random_lora(
        base_model_path, tmp_path / "adapter", seed=3, rank=8, target_modules=["q_proj", "v_proj"]
    )
    write_manifest(adapter, recipe, prepared.spec, dataset_digest=prepared.digest)
    update_manifest(adapter, metrics={"test_accuracy": 0.9})
    (adapter / "report.md").write_text("# report\n")
    fingerprint = model_fingerprint(base_model_path)
    archive = package(adapter, tmp_path / "out" / "demo.tar.gz", base_fingerprint=fingerprint)
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    assert {
        "adapter_config.json",
        "adapter_model.safetensors",
        "hotswap.json",
        "report.md",
    } <= names

    spec = spec_from_hf_config(base_model_path, fingerprint=fingerprint, max_lora_rank=16)
    registry = AdapterRegistry(tmp_path / "home", spec)
    try:
        result = registry.register(archive)
        manifest = result.manifest
        assert result.created and manifest.name == "demo-intent" and manifest.version == 1
        assert manifest.base_model == fingerprint
        assert manifest.task == prepared.spec
        assert manifest.training is not None
        assert manifest.training.dataset_digest == prepared.digest
        assert manifest.training.metrics["test_accuracy"] == 0.9
        assert manifest.training.hyperparameters["lora"]["r"] == 8
        assert registry.resolve("demo-intent").version == 1
    finally:
        registry.close()

    other = spec_from_hf_config(base_model_path, fingerprint="sha256:other", max_lora_rank=16)
    registry = AdapterRegistry(tmp_path / "home2", other)
    try:
        with pytest.raises(AdapterRejected):
            registry.register(archive)
    finally:
        registry.close()


def test_package_needs_the_peft_files(tmp_path: Path) -> None:
    (tmp_path / "hotswap.json").write_text(json.dumps({"name": "x"}))
    with pytest.raises(PackageError, match=r"adapter_config\.json"):
        package(tmp_path, tmp_path / "x.tar.gz")

"""Packaging: the adapter folder (PEFT files, `hotswap.json`, evaluation report) as one
`.tar.gz` that `adapters.registry.AdapterRegistry.register` accepts."""

from __future__ import annotations

import tarfile
from pathlib import Path

from adapters.manifest import MANIFEST_FILE, AdapterManifest, Calibration, TrainingInfo
from adapters.validation import ADAPTER_CONFIG, ADAPTER_WEIGHTS

PACKAGED_FILES = (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    MANIFEST_FILE,
    "report.md",
    "report.json",
    "confusion.csv",
    "confusion.png",
)


class PackageError(RuntimeError):
    """The adapter folder lacks a file the registry needs."""


def update_manifest(
    adapter_dir: Path,
    *,
    metrics: dict[str, float] | None = None,
    base_fingerprint: str | None = None,
    calibration: Calibration | None = None,
) -> AdapterManifest:
    """Add evaluation metrics, the base fingerprint and/or the task's label calibration to
    `hotswap.json`."""
    path = adapter_dir / MANIFEST_FILE
    manifest = AdapterManifest.model_validate_json(path.read_text())
    training = manifest.training or TrainingInfo()
    if metrics:
        training = training.model_copy(update={"metrics": {**training.metrics, **metrics}})
    update: dict[str, object] = {"training": training}
    if base_fingerprint is not None:
        update["base_model"] = base_fingerprint
    if calibration is not None:
        update["task"] = manifest.task.model_copy(update={"calibration": calibration})
    manifest = manifest.model_copy(update=update)
    AdapterManifest.model_validate(manifest.model_dump())  # re-check the whole manifest
    path.write_text(manifest.model_dump_json(indent=2, exclude_none=True) + "\n")
    return manifest


def package(adapter_dir: Path, out_archive: Path, *, base_fingerprint: str | None = None) -> Path:
    """Write `out_archive` (.tar.gz) with the adapter's files at its top level.

    With `base_fingerprint`, the manifest is stamped with it first, so the registry refuses
    the adapter for any other base model. Returns the archive path.
    """
    for required in (ADAPTER_CONFIG, ADAPTER_WEIGHTS, MANIFEST_FILE):
        if not (adapter_dir / required).is_file():
            raise PackageError(f"{adapter_dir / required} is missing; train the adapter first")
    if base_fingerprint is not None:
        update_manifest(adapter_dir, base_fingerprint=base_fingerprint)
    out_archive.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_archive.with_name(out_archive.name + ".part")
    with tarfile.open(tmp, "w:gz") as tar:
        for name in PACKAGED_FILES:
            path = adapter_dir / name
            if path.is_file():
                tar.add(path, arcname=name, recursive=False)
    tmp.replace(out_archive)
    return out_archive

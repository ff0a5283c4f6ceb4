"""The fingerprint of a base model folder: what binds an adapter to the model it was trained
on. Shared by the server (which serves the model) and training (which stamps manifests)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

_FINGERPRINTED_SUFFIXES = (".safetensors",)
_FINGERPRINT_CACHE = "hotswap-fingerprint.json"


def model_fingerprint(folder: Path) -> str:
    """sha256 over the model's config and weights (file names and bytes, in name order).

    The digest is cached beside the weights, keyed by each file's size and mtime, so a
    restart does not re-read gigabytes of weights.
    """
    files = sorted(
        p
        for p in folder.iterdir()
        if p.name == "config.json" or p.suffix in _FINGERPRINTED_SUFFIXES
    )
    stamp = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    cache = folder / _FINGERPRINT_CACHE
    if cache.is_file():
        cached = json.loads(cache.read_text())
        if cached.get("files") == stamp:
            return str(cached["sha256"])
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    value = "sha256:" + digest.hexdigest()
    try:
        _write_atomic(cache, json.dumps({"files": stamp, "sha256": value}))
    except OSError:
        logger.debug("Could not cache the fingerprint in read-only %s", folder)
    return value


def _write_atomic(path: Path, text: str) -> None:
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False) as tmp:
        tmp.write(text)
        tmp.flush()
        os.fsync(tmp.fileno())
    os.replace(tmp.name, path)

"""The base model's fingerprint: stable, cached, and sensitive to every weight byte."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapters.fingerprint import model_fingerprint as fingerprint
from server.base_model import BaseModelError, resolve_base_model


def _model(folder: Path, weights: bytes) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "README.md").write_text("not part of the fingerprint")
    return folder


def test_fingerprint_is_stable_and_ignores_other_files(tmp_path: Path) -> None:
    folder = _model(tmp_path / "m", b"\x00" * 64)
    first = fingerprint(folder)
    (folder / "README.md").write_text("changed")
    assert fingerprint(folder) == first
    assert first.startswith("sha256:") and len(first) == len("sha256:") + 64


def test_fingerprint_changes_with_the_weights(tmp_path: Path) -> None:
    a = fingerprint(_model(tmp_path / "a", b"\x00" * 64))
    b = fingerprint(_model(tmp_path / "b", b"\x00" * 63 + b"\x01"))
    assert a != b


def test_cached_fingerprint_is_invalidated_when_a_file_changes(tmp_path: Path) -> None:
    folder = _model(tmp_path / "m", b"\x00" * 64)
    first = fingerprint(folder)
    (folder / "model.safetensors").write_bytes(b"\x01" * 65)
    assert fingerprint(folder) != first


def test_a_folder_without_config_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(BaseModelError, match=r"no config\.json"):
        resolve_base_model(str(tmp_path / "empty"), tmp_path)


def test_the_embedded_default_is_a_real_llama(base_model_path: Path) -> None:
    config = json.loads((base_model_path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["num_hidden_layers"] == 30 and config["hidden_size"] == 576
    assert "quantization_config" not in config
    assert (base_model_path / "model.safetensors").stat().st_size > 200_000_000

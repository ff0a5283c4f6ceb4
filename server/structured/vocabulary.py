"""The outlines vocabulary of a served model, built once by vLLM's own code and cached on disk.

vLLM's outlines backend turns the tokenizer into an `outlines_core.Vocabulary` with
`vllm.v1.structured_output.utils._reduced_vocabulary` (token -> bytes, special tokens and the
EOS token left out). Building it needs transformers and vLLM (about 30 s of imports here), so
it runs once per tokenizer in a separate process (`python -m server.structured.vocabulary`) and
is stored as JSON next to a digest of the tokenizer files; compile workers then load it in
well under a second, with nothing but outlines_core imported.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "generation_config.json",
    "config.json",
)
DEFAULT_BUILD_TIMEOUT_S = 600.0


class VocabularyError(RuntimeError):
    """The model's vocabulary cannot be built or read."""


def tokenizer_digest(model_path: Path) -> str:
    """sha256 over the tokenizer files, the outlines_core version and this file's format."""
    digest = hashlib.sha256(f"v{FORMAT_VERSION}:{metadata.version('outlines_core')}".encode())
    found = False
    for name in TOKENIZER_FILES:
        path = model_path / name
        if path.is_file():
            found = True
            digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    if not found:
        raise VocabularyError(f"no tokenizer files in {model_path}")
    return digest.hexdigest()


def vocabulary_file(model_path: Path, cache_dir: Path) -> Path:
    """Where the vocabulary of `model_path` is (or will be) cached."""
    return cache_dir / f"outlines-vocab-{tokenizer_digest(model_path)[:32]}.json"


def ensure_vocabulary_file(
    model_path: Path, cache_dir: Path, timeout_s: float = DEFAULT_BUILD_TIMEOUT_S
) -> Path:
    """Return the cached vocabulary file of `model_path`, building it first if needed."""
    model_path = Path(model_path).resolve()
    target = vocabulary_file(model_path, cache_dir)
    if target.is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    repo_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo_root, env.get("PYTHONPATH")) if p)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "server.structured.vocabulary", str(model_path), str(target)],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise VocabularyError(f"building the vocabulary took over {timeout_s:.0f} s") from exc
    if done.returncode != 0 or not target.is_file():
        tail = (done.stderr or "").strip().splitlines()[-5:]
        raise VocabularyError(f"building the vocabulary failed: {' | '.join(tail)}")
    return target


def read_vocabulary_file(path: Path) -> dict[str, Any]:
    """The stored vocabulary: eos id, vLLM's vocabulary hash, and (hex bytes, ids) pairs."""
    with open(path, encoding="utf-8") as handle:
        data: dict[str, Any] = json.load(handle)
    if data.get("format") != FORMAT_VERSION:
        raise VocabularyError(f"{path} has an unknown format")
    return data


def load_vocabulary(path: Path) -> Any:
    """`outlines_core.Vocabulary` built exactly as vLLM builds it (same tokens, same order)."""
    import outlines_core

    data = read_vocabulary_file(path)
    tokens = {bytes.fromhex(token): ids for token, ids in data["tokens"]}
    return outlines_core.Vocabulary(data["eos_token_id"], tokens)


def _build(model_path: Path, target: Path) -> None:
    """Run in a child process: load the tokenizer as vLLM does and store its vocabulary."""
    from vllm.tokenizers import get_tokenizer
    from vllm.v1.structured_output import utils as so_utils

    tokenizer = get_tokenizer(str(model_path))
    reduced = so_utils._reduced_vocabulary(tokenizer)
    vllm_hash = so_utils.get_outlines_vocabulary(tokenizer)._hash
    data = {
        "format": FORMAT_VERSION,
        "model_path": str(model_path),
        "eos_token_id": tokenizer.eos_token_id,
        "vllm_vocabulary_hash": str(vllm_hash),
        "tokens": [[token.hex(), ids] for token, ids in reduced.items()],
    }
    with tempfile.NamedTemporaryFile(
        "w", dir=target.parent, prefix=".vocab-", suffix=".tmp", delete=False
    ) as handle:
        json.dump(data, handle)
    os.replace(handle.name, target)


if __name__ == "__main__":
    _build(Path(sys.argv[1]), Path(sys.argv[2]))

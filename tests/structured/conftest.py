"""Fixtures for the structured-output library: the schema corpus and a compile guard."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server.structured import CompileGuard

CORPUS_DIR = Path(__file__).parent / "corpus"


def load_corpus() -> list[dict[str, Any]]:
    """Every corpus entry: name, schema, expect ("ok", "refuse", "any"), family (file stem)."""
    entries: list[dict[str, Any]] = []
    for path in sorted(CORPUS_DIR.glob("*.json")):
        for item in json.loads(path.read_text(encoding="utf-8")):
            entries.append({**item, "family": path.stem})
    return entries


CORPUS = load_corpus()


@pytest.fixture(scope="session")
def guard(base_model_path: Path) -> Iterator[CompileGuard]:
    """A compile guard on the real default model's vocabulary, shared by the session.

    Generous limits: tests that need a refusal make their own guard with tight ones.
    """
    with CompileGuard(
        base_model_path,
        timeout_s=20.0,
        wall_timeout_s=120.0,
        fallback_engines=["guidance", "xgrammar"],
    ) as shared:
        shared.start()
        yield shared

"""Bounded schemas pass vLLM's own outlines request validation (imports vLLM, starts no engine)."""

from __future__ import annotations

from typing import Any

import pytest

from server.structured import SchemaRefusedError, prepare_schema
from tests.structured.conftest import CORPUS

pytestmark = pytest.mark.vllm


def _prepared() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for entry in CORPUS:
        if entry["expect"] != "ok":
            continue
        try:
            out.append((entry["name"], prepare_schema(entry["schema"]).bounded))
        except SchemaRefusedError:
            continue
    return out


def test_vllm_accepts_every_bounded_corpus_schema() -> None:
    from vllm.sampling_params import SamplingParams, StructuredOutputsParams
    from vllm.v1.structured_output.backend_outlines import (
        validate_structured_output_request_outlines,
    )

    prepared = _prepared()
    assert len(prepared) >= 180
    for name, bounded in prepared:
        params = SamplingParams(structured_outputs=StructuredOutputsParams(json=bounded))
        try:
            validate_structured_output_request_outlines(params)
        except Exception as exc:  # pragma: no cover - the assertion message is the point
            pytest.fail(f"vLLM refuses bounded schema {name}: {exc}")

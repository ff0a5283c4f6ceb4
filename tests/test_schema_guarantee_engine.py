"""Issue 8's promise against the real server: a response under a JSON Schema is a document that
validates against that schema, or an error; refusals come before generation; hostile schemas
never take the server down. A sample of the corpus in `tests/structured/corpus/`."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from server.structured import validate_document
from tests.structured.conftest import CORPUS
from tests.support.server import RunningServer

pytestmark = pytest.mark.engine

BY_NAME = {entry["name"]: entry for entry in CORPUS}

# Varied shapes with small token budgets (the server sets max_tokens to the budget).
SERVED = [
    "sentiment",  # min/max not enforced by the grammar: validated, retried
    "yes_no",
    "bare_number",  # an unbounded number: used to be cut mid-document
    "numbers_unbounded",  # an array of unbounded numbers
    "pattern_phone_e164",  # a `pattern`
    "pattern_alternation",
    "format_date",  # a `format` the grammar does not enforce
    "format_uuid",  # a `format` it does
    "ref_chain",  # $ref to a $ref
    "ref_definitions_draft7",  # nested $ref, draft 7
    "linked_list_recursive",  # a recursive $ref
    "oneof_discriminated",
    "type_list_nullable_number",
    "draft4_exclusive_bool",
    "chain_depth_4",
    "integer_multiple",  # multipleOf is not enforced
    "tuple_point",
    "not_keyword",
    "mixed_enum",
    "anyof_scalars",
]
REFUSED = ["lookahead_pattern", "invalid_type_name"]
HOSTILE_PREPARE = ["deep_nesting_60", "huge_enum_10k"]  # refused while bounding
HOSTILE_COMPILE = "huge_max_length"  # refused by the compile sandbox


def _generate(server: RunningServer, schema: Any, **extra: Any) -> httpx.Response:
    body = {"input": "Answer with a JSON document.", "schema": schema, "seed": 7, **extra}
    return httpx.post(f"{server.url}/v1/generate", json=body, timeout=180)


def _completion_tokens(server: RunningServer) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("hotswap_completion_tokens_total{")
    )


@pytest.mark.parametrize("name", SERVED)
def test_every_answer_validates_against_the_original_schema(
    server: RunningServer, name: str
) -> None:
    schema = BY_NAME[name]["schema"]
    response = _generate(server, schema)
    if response.status_code == 422:  # only a document that kept failing an unenforced keyword
        assert response.json()["error"]["type"] == "schema_violation", response.text
        assert "does not enforce" in response.text
        return
    assert response.status_code == 200, response.text
    body = response.json()
    outcome = validate_document(schema, body["text"])
    assert outcome.valid, (name, body["text"], outcome.errors)
    assert body["valid"] is True and body["output"] == outcome.document
    assert body["finish_reason"] == "stop", body  # never cut by max_tokens


def test_max_tokens_below_the_budget_is_refused_before_generating(server: RunningServer) -> None:
    before = _completion_tokens(server)
    response = _generate(server, BY_NAME["numbers_unbounded"]["schema"], max_tokens=8)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["type"] == "schema_budget"
    assert "raise max_tokens to at least" in response.text
    assert _completion_tokens(server) == before


@pytest.mark.parametrize("name", REFUSED + HOSTILE_PREPARE)
def test_refusals_are_422s_before_generating(server: RunningServer, name: str) -> None:
    before = _completion_tokens(server)
    response = _generate(server, BY_NAME[name]["schema"])
    assert response.status_code == 422, response.text
    assert "JSON Schema is" in response.json()["error"]["message"]
    assert _completion_tokens(server) == before


def test_a_hostile_compile_is_refused_and_the_server_keeps_serving(
    server: RunningServer,
) -> None:
    before = _completion_tokens(server)
    response = _generate(server, BY_NAME[HOSTILE_COMPILE]["schema"])
    if response.status_code == 503:  # the wall-clock limit under load: to retry, not cached
        assert "machine busy" in response.text
    else:
        assert response.status_code == 422, response.text
        assert "refused (" in response.text
    assert _completion_tokens(server) == before
    after = _generate(server, BY_NAME["yes_no"]["schema"])
    assert after.status_code == 200 and after.json()["valid"] is True, after.text
    assert httpx.get(f"{server.url}/readyz", timeout=30).status_code == 200

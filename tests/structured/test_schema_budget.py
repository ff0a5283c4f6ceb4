"""The document budget is an upper bound (and exact) on what the engine's grammar can produce.

Documents are drawn from the very regex outlines decodes with (random ones, and the longest in
characters and in bytes); each must be within the budget, parse as JSON, and, when the schema
uses no keyword the grammar leaves unenforced, validate against the user's original schema.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from server.structured import (
    DocumentBudget,
    SchemaRefusedError,
    bound_schema,
    check_schema,
    document_budget,
    max_document_chars,
    regex_budget,
    regex_for_schema,
    unenforced_keywords,
    validate_document,
)
from tests.structured.conftest import CORPUS
from tests.structured.regex_sampler import RegexSampler

SAMPLES_PER_SCHEMA = 12


def _bounded_entries() -> list[dict[str, Any]]:
    entries = []
    for entry in CORPUS:
        if entry["expect"] == "refuse":  # hostile: the guard's business, and slow to sample
            continue
        try:
            check_schema(entry["schema"])
            bounded = bound_schema(entry["schema"])
        except SchemaRefusedError:
            continue
        budget = document_budget(bounded)
        if budget.max_chars is not None and budget.max_chars <= 20_000:
            entries.append({**entry, "bounded": bounded, "budget": budget})
    return entries


BOUNDED = _bounded_entries()


def test_most_of_the_corpus_is_covered() -> None:
    assert len(BOUNDED) == sum(1 for e in CORPUS if e["expect"] == "ok") >= 180


@pytest.mark.parametrize("entry", BOUNDED, ids=[e["name"] for e in BOUNDED])
def test_budget_bounds_every_generated_document(entry: dict[str, Any]) -> None:
    regex = regex_for_schema(entry["bounded"])
    budget: DocumentBudget = entry["budget"]
    assert budget.max_chars is not None and budget.max_bytes is not None
    sampler = RegexSampler(regex, seed=hash(entry["name"]) % 10_000)
    check_validity = not unenforced_keywords(entry["schema"])

    longest_chars = sampler.sample("max_chars")
    longest_bytes = sampler.sample("max_bytes")
    # Tight: the longest documents reach the budget exactly.
    assert len(longest_chars) == budget.max_chars
    assert len(longest_bytes.encode("utf-8")) == budget.max_bytes
    assert budget.max_tokens == budget.max_bytes + 1

    for text in [longest_chars, longest_bytes] + [
        sampler.sample("random") for _ in range(SAMPLES_PER_SCHEMA)
    ]:
        assert re.fullmatch(regex, text), text
        assert len(text) <= budget.max_chars
        assert len(text.encode("utf-8")) <= budget.max_bytes
        json.loads(text)  # the grammar only produces JSON
        if check_validity:
            outcome = validate_document(entry["schema"], text)
            assert outcome.valid, (text, outcome.errors)


def test_unbounded_regex_has_no_budget() -> None:
    assert regex_budget('"[a-z]*"') == DocumentBudget(None, None)
    assert max_document_chars({"type": "string"}) is None
    assert not document_budget({"type": "number"}).bounded


def test_exact_small_budgets() -> None:
    assert max_document_chars({"enum": ["a", "bb"]}) == 4
    assert max_document_chars({"type": "boolean"}) == 5
    # compact: no whitespace between the document's tokens
    schema = {
        "type": "object",
        "properties": {"a": {"type": "boolean"}, "b": {"type": "null"}},
        "required": ["a", "b"],
    }
    assert max_document_chars(schema) == len('{"a":false,"b":null}')
    assert regex_budget('"é{2}"').max_bytes == 6
    assert regex_budget('"😀"').max_chars == 3


def test_budget_counts_unicode_as_up_to_four_bytes() -> None:
    bounded = bound_schema({"type": "string", "maxLength": 10}, _unicode())
    budget = document_budget(bounded)
    assert budget.max_chars == 22  # ten 2-character escapes and the quotes
    assert budget.max_bytes == 42  # ten 4-byte characters and the quotes


def _unicode() -> Any:
    from server.structured import SchemaLimits

    return SchemaLimits(string_charset="unicode")

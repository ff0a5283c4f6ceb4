"""The shared decoding constraint: compact JSON under every backend."""

from __future__ import annotations

import json
import re

from adapters.json_grammar import schema_regex, structured_outputs_kwargs

SCHEMA = {
    "type": "object",
    "properties": {
        "intent": {"enum": ["lost_card", "top_up"]},
        "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 2},
    },
    "required": ["intent", "tags"],
}


def test_outlines_regex_accepts_only_the_compact_document() -> None:
    regex = schema_regex(SCHEMA)
    document = {"intent": "top_up", "tags": [True, False]}
    assert re.fullmatch(regex, json.dumps(document, separators=(",", ":")))
    assert not re.fullmatch(regex, json.dumps(document))  # ", " and ": " carry spaces


def test_outlines_gets_the_compact_regex_other_backends_the_schema() -> None:
    assert structured_outputs_kwargs(SCHEMA, "outlines") == {"regex": schema_regex(SCHEMA)}
    for backend in ("xgrammar", "guidance", "auto"):
        assert structured_outputs_kwargs(SCHEMA, backend) == {
            "json": SCHEMA,
            "disable_any_whitespace": True,
        }


def test_schema_given_as_text_or_object_builds_the_same_regex() -> None:
    assert schema_regex(json.dumps(SCHEMA)) == schema_regex(SCHEMA)

"""Keyword policy (what the grammar leaves unenforced) and post-decoding validation."""

from __future__ import annotations

import json
from typing import Any

import pytest

from server.structured import (
    RefusalReason,
    SchemaRefusedError,
    check_schema,
    find_unenforced,
    unenforced_keywords,
    validate_document,
)


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        ({"type": "string", "maxLength": 5}, []),
        ({"type": "integer", "minimum": 1, "maximum": 5}, []),  # sent as an enum
        ({"type": "integer", "minimum": 0, "maximum": 1000}, ["maximum", "minimum"]),
        ({"type": "number", "exclusiveMinimum": 0}, ["exclusiveMinimum"]),
        ({"type": "number", "multipleOf": 0.5}, ["multipleOf"]),
        ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, ["uniqueItems"]),
        ({"type": "array", "items": {"type": "integer"}, "uniqueItems": False}, []),
        (
            {"type": "array", "contains": {"const": 1}, "minContains": 2},
            ["contains", "minContains"],
        ),
        ({"not": {"type": "null"}}, ["not"]),
        ({"if": {"required": ["a"]}, "then": {"required": ["b"]}}, ["if", "then"]),
        ({"type": "object", "patternProperties": {"^x": {}}}, ["patternProperties"]),
        ({"type": "object", "propertyNames": {"maxLength": 3}}, ["propertyNames"]),
        ({"dependentRequired": {"a": ["b"]}}, ["dependentRequired"]),
        ({"dependencies": {"a": ["b"]}}, ["dependencies"]),
        ({"unevaluatedProperties": False}, ["unevaluatedProperties"]),
        ({"oneOf": [{"type": "integer"}, {"type": "number"}]}, ["oneOf"]),
        ({"allOf": [{"type": "integer"}, {"minimum": 3}]}, ["allOf", "minimum"]),
        ({"allOf": [{"type": "integer"}]}, []),
        ({"type": "string", "format": "uuid"}, []),
        ({"type": "string", "format": "email"}, []),
        ({"type": "string", "format": "date"}, ["format"]),  # 2023-02-31 has the shape
        ({"type": "string", "format": "duration"}, ["format"]),
        ({"type": "string", "pattern": "^a+$", "maxLength": 3}, ["maxLength"]),
        ({"type": "string", "pattern": "^[0-9-]+$", "format": "date"}, ["format"]),
        (
            {"type": "object", "properties": {"a": {}}, "minProperties": 1},
            ["minProperties"],
        ),
        ({"type": "array", "prefixItems": [{}, {}], "minItems": 3}, ["minItems"]),
        (
            {
                "type": "object",
                "properties": {
                    "deep": {"type": "array", "items": {"type": "number", "maximum": 3}},
                    "tags": {"$ref": "#/$defs/Tags"},
                },
                "$defs": {"Tags": {"type": "array", "uniqueItems": True}},
            },
            ["maximum", "uniqueItems"],
        ),
    ],
)
def test_unenforced_keywords(schema: dict[str, Any], expected: list[str]) -> None:
    assert unenforced_keywords(schema) == expected


def test_unenforced_locations_are_json_pointers() -> None:
    schema = {
        "type": "object",
        "properties": {"a/b": {"type": "number", "maximum": 3}},
        "$defs": {"T": {"not": {}}},
    }
    found = {(item.keyword, item.location) for item in find_unenforced(schema)}
    assert found == {("maximum", "#/properties/a~1b"), ("not", "#/$defs/T")}
    assert all(item.reason for item in find_unenforced(schema))


def test_validate_document_default_draft_2020_12() -> None:
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer", "minimum": 1}, "tags": {"type": "array"}},
        "required": ["n"],
        "additionalProperties": False,
    }
    good = validate_document(schema, '{"n": 2, "tags": ["a"]}')
    assert good.valid and good.errors == () and good.document == {"n": 2, "tags": ["a"]}
    bad = validate_document(schema, '{"n": 0, "x": 1}')
    assert not bad.valid
    assert any(e.startswith("n: 0 is less than the minimum") for e in bad.errors)
    assert any("Additional properties" in e for e in bad.errors)


def test_validate_document_rejects_non_json() -> None:
    for text in ('{"a": 1', "NaN", '{"a": Infinity}', "", '{"a": 1} trailing'):
        outcome = validate_document({}, text)
        assert not outcome.valid
        assert outcome.errors[0].startswith("not valid JSON")


def test_validate_document_uses_the_schemas_draft() -> None:
    draft4 = {
        "$schema": "http://json-schema.org/draft-04/schema#",
        "type": "number",
        "minimum": 5,
        "exclusiveMinimum": True,
    }
    assert not validate_document(draft4, "5").valid
    assert validate_document(draft4, "5.5").valid
    draft7_tuple = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "items": [{"type": "string"}, {"type": "integer"}],
        "additionalItems": False,
    }
    assert validate_document(draft7_tuple, '["a", 1]').valid
    assert not validate_document(draft7_tuple, '["a", 1, 2]').valid
    modern_tuple = {"prefixItems": [{"type": "string"}], "items": False}
    assert not validate_document(modern_tuple, '["a", 1]').valid


@pytest.mark.parametrize(
    ("fmt", "good", "bad"),
    [
        ("date", "2024-02-29", "2023-02-29"),
        ("date-time", "2024-02-29T23:59:59.5+01:00", "2024-02-29T24:00:00Z"),
        ("date-time", "2024-01-01T00:00:00Z", "2024-01-01T00:00:00"),
        ("time", "23:59:59Z", "23:59"),
        ("email", "a@b.co", "no-at-sign"),
        ("uuid", "123e4567-e89b-12d3-a456-426614174000", "123e4567"),
        ("ipv4", "10.0.0.1", "10.0.0.256"),
        ("hostname", "api.example.com", "-bad-.com"),
        ("uri", "https://example.com/x", "example com"),
    ],
)
def test_validate_document_checks_formats(fmt: str, good: str, bad: str) -> None:
    schema = {"type": "string", "format": fmt}
    assert validate_document(schema, json.dumps(good)).valid
    outcome = validate_document(schema, json.dumps(bad))
    assert not outcome.valid, outcome
    assert fmt in outcome.errors[0]


def test_validate_document_limits_errors() -> None:
    schema = {"type": "array", "items": {"type": "string"}}
    outcome = validate_document(schema, json.dumps(list(range(50))), max_errors=3)
    assert len(outcome.errors) == 3


def test_check_schema() -> None:
    check_schema({"type": "object", "properties": {"a": {"type": "string"}}})
    check_schema(True)
    for bad in ({"type": "strng"}, {"minLength": -1}, {"required": "a"}, "not a schema"):
        with pytest.raises(SchemaRefusedError) as caught:
            check_schema(bad)
        assert caught.value.reason is RefusalReason.INVALID_SCHEMA
    huge = {"enum": list(range(6000))}
    with pytest.raises(SchemaRefusedError) as caught:
        check_schema(huge)
    assert caught.value.reason is RefusalReason.TOO_LARGE

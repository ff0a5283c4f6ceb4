"""Writes the structured-output schema corpus: `python tests/structured/corpus_gen.py`.

Real-world shapes (API payloads, extraction and classification outputs, config files) by
family, one JSON file per family under `corpus/`, each a list of
`{"name", "schema", "expect"}` where `expect` is "ok" (served by the default server: bounded,
then compiled by outlines or by the fallback grammar engine), "refuse" (hostile: refused by the
whole schema policy, with the default limits and fallback engine: bounding, the compile guard,
the fallback's compile check or the token budget) or "any" (outlines' bounding cannot express
it: served only through the fallback grammar engine, or refused without one).
`tests/structured/test_corpus_refusals.py` holds every "refuse" to that.

    .venv/bin/python tests/structured/corpus_gen.py             # every family
    .venv/bin/python tests/structured/corpus_gen.py realworld   # only the named ones
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any

CORPUS = Path(__file__).parent / "corpus"
Schema = dict[str, Any]


def entry(name: str, schema: Schema | bool, expect: str = "ok") -> dict[str, Any]:
    return {"name": name, "schema": schema, "expect": expect}


def obj(props: dict[str, Any], required: list[str] | None = None, **extra: Any) -> Schema:
    out: Schema = {"type": "object", "properties": props}
    if required:
        out["required"] = required
    out.update(extra)
    return out


STR: Schema = {"type": "string"}
INT: Schema = {"type": "integer"}
NUM: Schema = {"type": "number"}
BOOL: Schema = {"type": "boolean"}


def s(**kw: Any) -> Schema:
    return {"type": "string", **kw}


def i(**kw: Any) -> Schema:
    return {"type": "integer", **kw}


def n(**kw: Any) -> Schema:
    return {"type": "number", **kw}


def arr(items: Any, **kw: Any) -> Schema:
    return {"type": "array", "items": items, **kw}


def basic() -> list[dict[str, Any]]:
    out = [
        entry(
            "person",
            obj({"name": s(maxLength=40), "age": i(minimum=0, maximum=130)}, ["name", "age"]),
        ),
        entry("person_unbounded", obj({"name": STR, "age": INT}, ["name"])),
        entry(
            "sentiment",
            obj(
                {
                    "label": {"enum": ["positive", "negative", "neutral"]},
                    "confidence": n(minimum=0, maximum=1),
                },
                ["label", "confidence"],
                additionalProperties=False,
            ),
        ),
        entry(
            "yes_no",
            obj({"answer": {"enum": ["yes", "no"]}}, ["answer"], additionalProperties=False),
        ),
        entry("bool_flag", obj({"is_spam": BOOL}, ["is_spam"])),
        entry(
            "rating", obj({"stars": i(minimum=1, maximum=5), "comment": s(maxLength=80)}, ["stars"])
        ),
        entry(
            "address",
            obj(
                {
                    "street": s(maxLength=60),
                    "city": s(maxLength=40),
                    "zip": s(pattern="^[0-9]{5}$"),
                    "country": s(minLength=2, maxLength=2),
                },
                ["street", "city", "country"],
                additionalProperties=False,
            ),
        ),
        entry(
            "product",
            obj(
                {
                    "sku": s(pattern="^[A-Z]{3}-[0-9]{4}$"),
                    "title": s(maxLength=60),
                    "price": n(minimum=0),
                    "in_stock": BOOL,
                },
                ["sku", "title", "price"],
            ),
        ),
        entry(
            "product_price_exclusive",
            obj(
                {
                    "price": n(exclusiveMinimum=0, maximum=10000),
                    "currency": {"enum": ["USD", "EUR", "GBP"]},
                },
                ["price", "currency"],
            ),
        ),
        entry(
            "weather",
            obj(
                {
                    "city": s(maxLength=30),
                    "temperature_c": n(minimum=-90, maximum=60),
                    "condition": {"enum": ["sunny", "cloudy", "rain", "snow", "storm"]},
                },
                ["city", "temperature_c", "condition"],
            ),
        ),
        entry(
            "login_event",
            obj(
                {"user_id": s(format="uuid"), "at": s(format="date-time"), "success": BOOL},
                ["user_id", "at", "success"],
            ),
        ),
        entry(
            "contact",
            obj(
                {
                    "email": s(format="email"),
                    "phone": s(pattern="^\\+?[0-9]{7,15}$"),
                    "website": s(format="uri"),
                },
                ["email"],
            ),
        ),
        entry(
            "birthday", obj({"name": s(maxLength=30), "born": s(format="date")}, ["name", "born"])
        ),
        entry(
            "meeting",
            obj(
                {
                    "title": s(maxLength=50),
                    "starts": s(format="date-time"),
                    "minutes": i(minimum=5, maximum=480),
                },
                ["title", "starts"],
            ),
        ),
        entry("alarm", obj({"time": s(format="time"), "label": s(maxLength=20)}, ["time"])),
        entry(
            "translation",
            obj(
                {
                    "source_lang": s(pattern="^[a-z]{2}$"),
                    "target_lang": s(pattern="^[a-z]{2}$"),
                    "text": s(maxLength=120),
                },
                ["source_lang", "target_lang", "text"],
                additionalProperties=False,
            ),
        ),
        entry(
            "intent",
            obj(
                {
                    "intent": {"enum": ["book_flight", "cancel", "refund", "greeting", "other"]},
                    "slots": obj({"city": s(maxLength=30), "date": s(format="date")}),
                },
                ["intent"],
            ),
        ),
        entry("title_only", obj({"title": STR}, ["title"])),
        entry("bare_string", STR),
        entry("bare_integer", INT),
        entry("bare_number", NUM),
        entry("bare_boolean", BOOL),
        entry("bare_enum", {"enum": ["red", "green", "blue"]}),
        entry("bare_const", {"const": "fixed"}),
        entry("mixed_enum", {"enum": ["a", 1, 2.5, True, None]}),
        entry("integer_range_small", i(minimum=0, maximum=10)),
        entry("integer_multiple", i(minimum=0, maximum=100, multipleOf=5)),
        entry("integer_negative", i(minimum=-1000, maximum=-1)),
        entry("integer_large_bounds", i(minimum=0, maximum=10**18)),
        entry("number_probability", n(minimum=0, maximum=1)),
        entry("number_exclusive", n(exclusiveMinimum=0, exclusiveMaximum=100)),
        entry("number_multiple", n(multipleOf=0.25, minimum=0, maximum=10)),
        entry("empty_object_schema", {}),
        entry("true_schema_items", arr(True, maxItems=3)),
        entry("annotation_only", {"description": "anything at all"}),
        entry(
            "optional_only", obj({"a": s(maxLength=10), "b": i(maximum=99, minimum=0), "c": BOOL})
        ),
        entry("all_optional_many", obj({f"field_{k}": s(maxLength=12) for k in range(8)})),
        entry(
            "required_undeclared",
            {"type": "object", "required": ["id"], "properties": {"name": s(maxLength=20)}},
        ),
        entry("free_form_metadata", obj({"id": INT, "metadata": {"type": "object"}}, ["id"])),
        entry("map_of_scores", {"type": "object", "additionalProperties": {"type": "integer"}}),
        entry(
            "dictionary_required_map",
            {"type": "object", "additionalProperties": STR, "minProperties": 1},
            "any",  # bounding cannot express it; the fallback grammar engine serves it
        ),
        entry(
            "min_max_properties",
            obj({"a": STR, "b": STR, "c": STR}, minProperties=1, maxProperties=2),
        ),
        entry(
            "keywords_extraction",
            obj({"keywords": arr(s(maxLength=20), minItems=1, maxItems=5)}, ["keywords"]),
        ),
        entry(
            "tags_unique",
            obj({"tags": arr(s(maxLength=15), uniqueItems=True, maxItems=6)}, ["tags"]),
        ),
        entry(
            "summary",
            obj(
                {"summary": s(maxLength=200), "bullet_points": arr(s(maxLength=60), maxItems=4)},
                ["summary"],
            ),
        ),
        entry(
            "classification_multi",
            obj(
                {
                    "labels": arr(
                        {"enum": ["billing", "tech", "sales", "other"]},
                        minItems=1,
                        maxItems=4,
                        uniqueItems=True,
                    )
                },
                ["labels"],
            ),
        ),
        entry(
            "banking77_like",
            obj(
                {"intent": {"enum": [f"intent_{k}" for k in range(77)]}},
                ["intent"],
                additionalProperties=False,
            ),
        ),
        entry(
            "coordinates",
            obj(
                {"lat": n(minimum=-90, maximum=90), "lon": n(minimum=-180, maximum=180)},
                ["lat", "lon"],
            ),
        ),
        entry("color_hex", obj({"color": s(pattern="^#[0-9a-fA-F]{6}$")}, ["color"])),
        entry("ip_address", obj({"ip": s(format="ipv4"), "v6": s(format="ipv6")}, ["ip"])),
        entry(
            "hostname",
            obj(
                {"host": s(format="hostname"), "port": i(minimum=1, maximum=65535)},
                ["host", "port"],
            ),
        ),
        entry(
            "semver",
            obj(
                {"version": s(pattern="^(0|[1-9][0-9]*)\\.(0|[1-9][0-9]*)\\.(0|[1-9][0-9]*)$")},
                ["version"],
            ),
        ),
        entry("slug", obj({"slug": s(pattern="^[a-z0-9]+(?:-[a-z0-9]+)*$")}, ["slug"])),
        entry("duration_unknown_format", obj({"d": s(format="duration")}, ["d"])),
        entry("quoted_pattern", obj({"q": s(pattern='^"[a-z]{1,5}"$')}, ["q"])),
        entry("negated_class_pattern", obj({"csv_cell": s(pattern="^[^,]{1,20}$")}, ["csv_cell"])),
        entry("dot_pattern", obj({"line": s(pattern="^.{1,30}$")}, ["line"])),
        entry("unicode_enum", {"enum": ["café", "naïve", "日本", "emoji 😀"]}),
        entry(
            "tuple_point",
            {"type": "array", "prefixItems": [NUM, NUM], "minItems": 2, "maxItems": 2},
        ),
        entry(
            "nullable_string",
            obj({"nickname": {"type": ["string", "null"], "maxLength": 20}}, ["nickname"]),
        ),
        entry(
            "nullable_int_anyof",
            obj({"age": {"anyOf": [i(minimum=0, maximum=150), {"type": "null"}]}}, ["age"]),
        ),
        entry("string_min_length", s(minLength=3)),
        entry("string_max_length_big", s(maxLength=200)),
        entry("array_exact", arr(INT, minItems=3, maxItems=3)),
        entry("array_min_items", arr(s(maxLength=10), minItems=2)),
        entry("array_no_items", {"type": "array", "maxItems": 4}),
        entry("not_keyword", obj({"x": {"type": "integer", "not": {"const": 0}}}, ["x"])),
        entry(
            "if_then_else",
            obj(
                {"country": {"enum": ["US", "CA"]}, "postal": s(maxLength=10)},
                ["country", "postal"],
                **{
                    "if": {"properties": {"country": {"const": "US"}}},
                    "then": {"properties": {"postal": {"pattern": "^[0-9]{5}$"}}},
                },
            ),
        ),
        entry(
            "dependent_required",
            obj({"card": STR, "billing": STR}, dependentRequired={"card": ["billing"]}),
        ),
        entry(
            "pattern_properties",
            {
                "type": "object",
                "properties": {"x_a": STR},
                "patternProperties": {"^x_": {"maxLength": 3}},
            },
        ),
        entry("contains_keyword", arr(INT, contains={"const": 1}, maxItems=5)),
    ]
    return out


def nested() -> list[dict[str, Any]]:
    address = obj(
        {
            "street": s(maxLength=40),
            "city": s(maxLength=30),
            "postcode": s(pattern="^[0-9A-Z -]{3,10}$"),
        },
        ["city"],
    )
    line = obj(
        {
            "sku": s(pattern="^[A-Z0-9]{6}$"),
            "qty": i(minimum=1, maximum=99),
            "unit_price": n(minimum=0),
        },
        ["sku", "qty"],
    )
    out = [
        entry(
            "order",
            obj(
                {
                    "order_id": s(format="uuid"),
                    "customer": obj(
                        {"name": s(maxLength=40), "email": s(format="email")}, ["name"]
                    ),
                    "lines": arr(line, minItems=1, maxItems=5),
                    "shipping": address,
                },
                ["order_id", "customer", "lines"],
            ),
        ),
        entry(
            "invoice",
            obj(
                {
                    "number": s(pattern="^INV-[0-9]{6}$"),
                    "issued": s(format="date"),
                    "total": n(minimum=0),
                    "items": arr(
                        obj(
                            {"description": s(maxLength=40), "amount": n()},
                            ["description", "amount"],
                        ),
                        maxItems=4,
                    ),
                },
                ["number", "issued", "total"],
            ),
        ),
        entry(
            "user_profile",
            obj(
                {
                    "id": INT,
                    "name": obj(
                        {"first": s(maxLength=20), "last": s(maxLength=20)}, ["first", "last"]
                    ),
                    "address": address,
                    "preferences": obj(
                        {"newsletter": BOOL, "language": {"enum": ["en", "fr", "de"]}}
                    ),
                },
                ["id", "name"],
            ),
        ),
        entry(
            "ner_entities",
            obj(
                {
                    "entities": arr(
                        obj(
                            {
                                "text": s(maxLength=30),
                                "type": {"enum": ["PERSON", "ORG", "LOC", "DATE", "MISC"]},
                                "start": i(minimum=0, maximum=4096),
                                "end": i(minimum=0, maximum=4096),
                            },
                            ["text", "type"],
                        ),
                        maxItems=6,
                    )
                },
                ["entities"],
            ),
        ),
        entry(
            "qa_with_citations",
            obj(
                {
                    "answer": s(maxLength=150),
                    "citations": arr(
                        obj(
                            {"doc_id": s(pattern="^doc-[0-9]{1,4}$"), "quote": s(maxLength=60)},
                            ["doc_id"],
                        ),
                        maxItems=3,
                    ),
                },
                ["answer"],
            ),
        ),
        entry(
            "recipe",
            obj(
                {
                    "name": s(maxLength=40),
                    "servings": i(minimum=1, maximum=20),
                    "ingredients": arr(
                        obj({"item": s(maxLength=30), "amount": s(maxLength=15)}, ["item"]),
                        maxItems=6,
                    ),
                    "steps": arr(s(maxLength=80), maxItems=5),
                },
                ["name", "ingredients", "steps"],
            ),
        ),
        entry(
            "calendar_week",
            obj(
                {
                    "days": arr(
                        obj(
                            {
                                "day": {"enum": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]},
                                "events": arr(
                                    obj(
                                        {"title": s(maxLength=20), "at": s(format="time")},
                                        ["title"],
                                    ),
                                    maxItems=3,
                                ),
                            },
                            ["day"],
                        ),
                        maxItems=7,
                    )
                },
                ["days"],
            ),
        ),
        entry(
            "api_error",
            obj(
                {
                    "error": obj(
                        {
                            "code": i(minimum=100, maximum=599),
                            "message": s(maxLength=80),
                            "details": arr(
                                obj({"field": s(maxLength=20), "issue": s(maxLength=40)}),
                                maxItems=3,
                            ),
                        },
                        ["code", "message"],
                    )
                },
                ["error"],
                additionalProperties=False,
            ),
        ),
        entry(
            "paginated_list",
            obj(
                {
                    "items": arr(obj({"id": INT, "name": s(maxLength=20)}, ["id"]), maxItems=5),
                    "page": i(minimum=1),
                    "total": i(minimum=0),
                },
                ["items", "page"],
            ),
        ),
        entry("matrix_2x2", arr(arr(NUM, minItems=2, maxItems=2), minItems=2, maxItems=2)),
        entry(
            "nested_3_levels",
            obj({"a": obj({"b": obj({"c": s(maxLength=10)}, ["c"])}, ["b"])}, ["a"]),
        ),
        entry(
            "nested_6_levels",
            obj(
                {
                    "l1": obj(
                        {
                            "l2": obj(
                                {
                                    "l3": obj(
                                        {"l4": obj({"l5": obj({"l6": INT}, ["l6"])}, ["l5"])},
                                        ["l4"],
                                    )
                                },
                                ["l3"],
                            )
                        },
                        ["l2"],
                    )
                },
                ["l1"],
            ),
        ),
        entry(
            "chat_turns",
            obj(
                {
                    "turns": arr(
                        obj(
                            {"role": {"enum": ["user", "assistant"]}, "content": s(maxLength=60)},
                            ["role", "content"],
                        ),
                        minItems=1,
                        maxItems=4,
                    )
                },
                ["turns"],
            ),
        ),
        entry(
            "survey",
            obj(
                {
                    "respondent": s(format="uuid"),
                    "answers": arr(
                        obj(
                            {
                                "question": i(minimum=1, maximum=20),
                                "score": i(minimum=0, maximum=10),
                            },
                            ["question", "score"],
                        ),
                        maxItems=8,
                    ),
                },
                ["respondent", "answers"],
            ),
        ),
        entry(
            "config_file",
            obj(
                {
                    "server": obj(
                        {
                            "host": s(format="hostname"),
                            "port": i(minimum=1, maximum=65535),
                            "tls": BOOL,
                        },
                        ["host", "port"],
                    ),
                    "logging": obj(
                        {
                            "level": {"enum": ["debug", "info", "warning", "error"]},
                            "file": s(maxLength=60),
                        }
                    ),
                },
                ["server"],
            ),
        ),
        entry(
            "table_extraction",
            obj(
                {
                    "columns": arr(s(maxLength=15), minItems=1, maxItems=4),
                    "rows": arr(arr(s(maxLength=15), maxItems=4), maxItems=4),
                },
                ["columns", "rows"],
            ),
        ),
        entry(
            "geojson_point",
            obj(
                {
                    "type": {"const": "Feature"},
                    "geometry": obj(
                        {
                            "type": {"const": "Point"},
                            "coordinates": {
                                "type": "array",
                                "prefixItems": [
                                    n(minimum=-180, maximum=180),
                                    n(minimum=-90, maximum=90),
                                ],
                            },
                        },
                        ["type", "coordinates"],
                    ),
                    "properties": obj({"name": s(maxLength=30)}),
                },
                ["type", "geometry"],
            ),
        ),
        entry(
            "function_call",
            obj(
                {
                    "name": {"enum": ["get_weather", "search", "send_email"]},
                    "arguments": obj(
                        {"query": s(maxLength=60), "city": s(maxLength=30), "to": s(format="email")}
                    ),
                },
                ["name", "arguments"],
            ),
        ),
        entry(
            "tool_calls",
            obj(
                {
                    "calls": arr(
                        obj(
                            {"tool": {"enum": ["calc", "lookup"]}, "input": s(maxLength=40)},
                            ["tool", "input"],
                        ),
                        minItems=1,
                        maxItems=3,
                    )
                },
                ["calls"],
            ),
        ),
        entry(
            "resume",
            obj(
                {
                    "name": s(maxLength=40),
                    "experience": arr(
                        obj(
                            {
                                "company": s(maxLength=30),
                                "from": s(format="date"),
                                "to": {"anyOf": [s(format="date"), {"type": "null"}]},
                                "role": s(maxLength=30),
                            },
                            ["company", "from"],
                        ),
                        maxItems=3,
                    ),
                    "skills": arr(s(maxLength=20), maxItems=6),
                },
                ["name"],
            ),
        ),
    ]
    # Same shapes with the caps left to the bounder.
    out += [
        entry(
            "order_unbounded",
            obj(
                {"id": STR, "lines": arr(obj({"sku": STR, "qty": INT}, ["sku", "qty"]))},
                ["id", "lines"],
            ),
        ),
        entry("profile_unbounded", obj({"name": STR, "bio": STR, "links": arr(STR)}, ["name"])),
        entry(
            "entities_unbounded",
            obj(
                {"entities": arr(obj({"text": STR, "label": STR}, ["text", "label"]))}, ["entities"]
            ),
        ),
        entry("numbers_unbounded", obj({"values": arr(NUM)}, ["values"])),
        entry("nested_arrays_unbounded", arr(arr(INT))),
    ]
    for depth in (2, 4, 8):
        inner: Schema = s(maxLength=8)
        for level in range(depth):
            inner = obj({f"k{level}": inner}, [f"k{level}"])
        out.append(entry(f"chain_depth_{depth}", inner))
    for width in (5, 10, 20):
        out.append(
            entry(
                f"wide_object_{width}",
                obj(
                    {f"f{k}": i(minimum=0, maximum=9) for k in range(width)},
                    [f"f{k}" for k in range(width)],
                ),
            )
        )
    return out


def refs() -> list[dict[str, Any]]:
    defs = {
        "Address": obj({"city": s(maxLength=30), "zip": s(pattern="^[0-9]{5}$")}, ["city"]),
        "Money": obj(
            {"amount": n(minimum=0), "currency": {"enum": ["USD", "EUR"]}}, ["amount", "currency"]
        ),
    }
    out = [
        entry(
            "ref_simple",
            {
                "$defs": defs,
                **obj(
                    {"home": {"$ref": "#/$defs/Address"}, "work": {"$ref": "#/$defs/Address"}},
                    ["home"],
                ),
            },
        ),
        entry(
            "ref_definitions_draft7",
            {
                "$schema": "http://json-schema.org/draft-07/schema#",
                "definitions": defs,
                **obj({"price": {"$ref": "#/definitions/Money"}}, ["price"]),
            },
        ),
        entry(
            "ref_chain",
            {
                "$defs": {"A": {"$ref": "#/$defs/B"}, "B": s(maxLength=5)},
                **obj({"x": {"$ref": "#/$defs/A"}}, ["x"]),
            },
        ),
        entry(
            "ref_in_array",
            {
                "$defs": defs,
                **obj({"prices": arr({"$ref": "#/$defs/Money"}, maxItems=3)}, ["prices"]),
            },
        ),
        entry(
            "ref_with_description",
            {
                "$defs": defs,
                **obj({"addr": {"$ref": "#/$defs/Address", "description": "where"}}, ["addr"]),
            },
        ),
        entry(
            "ref_with_sibling_constraint",
            {
                "$defs": {"Name": s(maxLength=30)},
                **obj({"n": {"$ref": "#/$defs/Name", "minLength": 2}}, ["n"]),
            },
        ),
        entry(
            "ref_root_pointer",
            obj({"a": s(maxLength=5), "b": {"$ref": "#/properties/a"}}, ["a", "b"]),
        ),
        entry(
            "ref_unused_defs",
            {
                "$defs": {"Unused": {"type": "string", "pattern": "(?=x)"}},
                **obj({"a": BOOL}, ["a"]),
            },
            "refuse",  # the safety check refuses every pattern RE2 cannot run, used or not
        ),
        entry(
            "ref_anchor_unsupported",
            {
                "$defs": {"A": {"$anchor": "foo", **s(maxLength=3)}},
                **obj({"a": {"$ref": "#foo"}}, ["a"]),
            },
            "any",  # bounding cannot resolve `$anchor`; the fallback grammar engine serves it
        ),
        entry(
            "ref_external_unsupported",
            obj({"a": {"$ref": "https://example.com/schema.json"}}, ["a"]),
            "refuse",
        ),
        entry(
            "tree_recursive",
            {
                "$defs": {
                    "Node": obj(
                        {
                            "value": i(minimum=0, maximum=9),
                            "children": arr({"$ref": "#/$defs/Node"}, maxItems=2),
                        },
                        ["value"],
                    )
                },
                "$ref": "#/$defs/Node",
            },
        ),
        entry(
            "linked_list_recursive",
            {
                "$defs": {
                    "Item": obj(
                        {"v": INT, "next": {"anyOf": [{"$ref": "#/$defs/Item"}, {"type": "null"}]}},
                        ["v"],
                    )
                },
                "$ref": "#/$defs/Item",
            },
        ),
        entry(
            "comment_thread",
            {
                "$defs": {
                    "Comment": obj(
                        {
                            "author": s(maxLength=15),
                            "text": s(maxLength=40),
                            "replies": arr({"$ref": "#/$defs/Comment"}, maxItems=2),
                        },
                        ["author", "text"],
                    )
                },
                **obj({"root": {"$ref": "#/$defs/Comment"}}, ["root"]),
            },
        ),
        entry("root_recursion", obj({"name": s(maxLength=10), "child": {"$ref": "#"}}, ["name"])),
        entry(
            "pydantic_style",
            {
                "$defs": {
                    "Pet": obj(
                        {
                            "name": {"title": "Name", "type": "string"},
                            "kind": {"$ref": "#/$defs/Kind"},
                        },
                        ["name", "kind"],
                        title="Pet",
                    ),
                    "Kind": {"enum": ["cat", "dog"], "title": "Kind", "type": "string"},
                },
                **obj(
                    {
                        "owner": {"title": "Owner", "type": "string"},
                        "pets": {
                            "items": {"$ref": "#/$defs/Pet"},
                            "title": "Pets",
                            "type": "array",
                        },
                    },
                    ["owner", "pets"],
                    title="Household",
                ),
            },
        ),
        entry(
            "pydantic_optional",
            {
                "$defs": {},
                **obj(
                    {
                        "a": {
                            "anyOf": [{"type": "string"}, {"type": "null"}],
                            "default": None,
                            "title": "A",
                        },
                        "b": {"default": 3, "title": "B", "type": "integer"},
                    },
                    title="Model",
                ),
            },
        ),
    ]
    for k in range(1, 6):
        d = {f"T{j}": obj({"v": i(minimum=0, maximum=j + 3)}, ["v"]) for j in range(k)}
        out.append(
            entry(
                f"ref_many_defs_{k}",
                {
                    "$defs": d,
                    **obj(
                        {f"p{j}": {"$ref": f"#/$defs/T{j}"} for j in range(k)},
                        [f"p{j}" for j in range(k)],
                    ),
                },
            )
        )
    return out


def combinators() -> list[dict[str, Any]]:
    cat = obj({"kind": {"const": "cat"}, "lives": i(minimum=0, maximum=9)}, ["kind", "lives"])
    dog = obj({"kind": {"const": "dog"}, "good": BOOL}, ["kind", "good"])
    out = [
        entry("anyof_scalars", {"anyOf": [s(maxLength=10), INT, {"type": "null"}]}),
        entry("oneof_discriminated", {"oneOf": [cat, dog]}),
        entry("anyof_objects", {"anyOf": [cat, dog]}),
        entry("oneof_overlapping", {"oneOf": [i(minimum=0, maximum=10), i(minimum=5, maximum=20)]}),
        entry("allof_merge", {"allOf": [obj({"a": STR}, ["a"]), obj({"b": INT}, ["b"])]}),
        entry(
            "allof_ref_extend",
            {
                "$defs": {
                    "Base": obj({"id": s(format="uuid"), "created": s(format="date-time")}, ["id"])
                },
                "allOf": [{"$ref": "#/$defs/Base"}, obj({"title": s(maxLength=30)}, ["title"])],
            },
        ),
        entry("allof_single", {"allOf": [obj({"x": BOOL}, ["x"])]}),
        entry("allof_bounds", {"allOf": [i(minimum=0), i(maximum=50)]}),
        entry("allof_conflicting_types", {"allOf": [STR, INT]}, "refuse"),
        entry(
            "allof_additional_false",
            {"allOf": [obj({"a": STR}, additionalProperties=False), obj({"b": STR})]},
        ),
        entry(
            "anyof_with_sibling_properties",
            {
                "type": "object",
                "properties": {"a": STR, "b": STR},
                "anyOf": [{"required": ["a"]}, {"required": ["b"]}],
            },
        ),
        entry("type_list", {"type": ["string", "integer", "boolean"]}),
        entry("type_list_nullable_number", obj({"v": {"type": ["number", "null"]}}, ["v"])),
        entry(
            "nullable_object",
            obj(
                {"meta": {"anyOf": [obj({"k": s(maxLength=5)}, ["k"]), {"type": "null"}]}}, ["meta"]
            ),
        ),
        entry("anyof_arrays", {"anyOf": [arr(INT, maxItems=3), arr(STR, maxItems=2)]}),
        entry("oneof_const_strings", {"oneOf": [{"const": "a"}, {"const": "b"}, {"const": "c"}]}),
        entry("nested_anyof", {"anyOf": [{"anyOf": [INT, BOOL]}, {"type": "null"}]}),
        entry("enum_and_type", {"type": "string", "enum": ["x", "y"]}),
        entry("enum_and_const", {"enum": ["x", "y"], "const": "y"}),
        # Bounding cannot express object values; the fallback grammar engine serves them.
        entry("enum_object_values", {"enum": [{"a": 1}, {"b": 2}]}, "any"),
        entry("const_object", {"const": {"a": 1}}, "any"),
        entry("false_property", obj({"a": STR, "b": False}, ["a"])),
        entry("false_required_property", obj({"a": STR, "b": False}, ["a", "b"]), "refuse"),
        entry("anyof_with_false_branch", {"anyOf": [False, INT]}),
        entry("all_false", False, "refuse"),
    ]
    return out


def strings() -> list[dict[str, Any]]:
    out = []
    patterns = {
        "zip5": "^[0-9]{5}$",
        "uk_postcode": "^[A-Z]{1,2}[0-9][A-Z0-9]? ?[0-9][A-Z]{2}$",
        "iso_country": "^[A-Z]{2}$",
        "phone_e164": "^\\+[1-9][0-9]{1,14}$",
        "time_hhmm": "^([01][0-9]|2[0-3]):[0-5][0-9]$",
        "word_chars": "^\\w+$",
        "digits_plus": "^\\d+$",
        "not_space": "^\\S{3,12}$",
        "alternation": "^(cat|dog|bird)$",
        "unanchored": "[a-z]{3}",
        "iban_like": "^[A-Z]{2}[0-9]{2}[A-Z0-9]{11,30}$",
        "lazy_quant": "^a+?b*?$",
        "escaped_specials": "^\\$[0-9]+\\.[0-9]{2}$",
        "tab_newline": "^a\\tb\\nc$",
        "backslash_literal": "^C:\\\\[a-z]+$",
        "ticket": "^[A-Z]{2,5}-[1-9][0-9]{0,5}$",
        "hex_color_short": "^#([0-9a-f]{3}|[0-9a-f]{6})$",
        "mac_address": "^([0-9A-F]{2}:){5}[0-9A-F]{2}$",
        "sha256": "^[a-f0-9]{64}$",
        "domain_label": "^[a-z0-9-]{1,63}$",
    }
    for name, pattern in patterns.items():
        out.append(entry(f"pattern_{name}", obj({"v": s(pattern=pattern)}, ["v"])))
    for fmt in (
        "date",
        "date-time",
        "time",
        "email",
        "uuid",
        "uri",
        "hostname",
        "ipv4",
        "ipv6",
        "idn-email",
        "uri-reference",
    ):
        out.append(entry(f"format_{fmt}", obj({"v": s(format=fmt)}, ["v"])))
    out += [
        entry("pattern_and_length", obj({"v": s(pattern="^[a-z]+$", maxLength=6)}, ["v"])),
        entry("format_and_length", obj({"v": s(format="email", maxLength=40)}, ["v"])),
        entry(
            "pattern_and_format",
            obj({"v": s(pattern="^[0-9]{4}-[0-9]{2}-[0-9]{2}$", format="date")}, ["v"]),
        ),
        entry(
            "lookahead_pattern", obj({"v": s(pattern="^(?=.*[0-9])[a-z0-9]{8}$")}, ["v"]), "refuse"
        ),
        entry("backreference_pattern", obj({"v": s(pattern="^(a)\\1$")}, ["v"]), "refuse"),
        entry("word_boundary_pattern", obj({"v": s(pattern="\\bfoo\\b")}, ["v"]), "refuse"),
        entry("invalid_regex", obj({"v": s(pattern="([a-z]")}, ["v"]), "refuse"),
        entry("unicode_property_pattern", obj({"v": s(pattern="^\\p{L}+$")}, ["v"]), "refuse"),
        entry(  # bounding refuses the flag; the fallback grammar engine ignores it, validation not
            "case_insensitive_flag", obj({"v": s(pattern="(?i)^abc$")}, ["v"]), "any"
        ),
        entry("min_gt_max_length", s(minLength=5, maxLength=2), "refuse"),
        entry("length_zero", s(maxLength=0)),
        entry("length_exact", s(minLength=4, maxLength=4)),
    ]
    return out


def drafts() -> list[dict[str, Any]]:
    base = obj(
        {"id": i(minimum=1), "name": s(maxLength=20), "score": n(minimum=0, maximum=100)},
        ["id", "name"],
    )
    out = []
    for tag, draft in (
        ("04", "http://json-schema.org/draft-04/schema#"),
        ("06", "http://json-schema.org/draft-06/schema#"),
        ("07", "http://json-schema.org/draft-07/schema#"),
        ("2019_09", "https://json-schema.org/draft/2019-09/schema"),
        ("2020_12", "https://json-schema.org/draft/2020-12/schema"),
    ):
        out.append(entry(f"draft_{tag}_object", {"$schema": draft, **base}))
    out += [
        entry(
            "draft4_exclusive_bool",
            {
                "$schema": "http://json-schema.org/draft-04/schema#",
                **n(minimum=0, exclusiveMinimum=True, maximum=10),
            },
        ),
        entry(
            "draft4_tuple_items",
            {
                "$schema": "http://json-schema.org/draft-04/schema#",
                "type": "array",
                "items": [STR, INT],
                "additionalItems": False,
            },
        ),
        entry(
            "draft7_dependencies",
            {
                "$schema": "http://json-schema.org/draft-07/schema#",
                **obj({"a": STR, "b": STR}, dependencies={"a": ["b"]}),
            },
        ),
        entry(
            "openapi_nullable",
            obj({"v": {"type": "string", "nullable": True, "maxLength": 5}}, ["v"]),
        ),
        entry("invalid_type_name", {"type": "strng"}, "refuse"),
        entry("invalid_min_length", {"type": "string", "minLength": -1}, "refuse"),
        entry("invalid_required", {"type": "object", "required": "a"}, "refuse"),
    ]
    return out


def hostile() -> list[dict[str, Any]]:
    deep: Schema = INT
    for _ in range(60):
        deep = obj({"n": deep}, ["n"])
    deep_arrays: Schema = INT
    for _ in range(40):
        deep_arrays = arr(deep_arrays, maxItems=2)
    fan: dict[str, Any] = {"L0": s(maxLength=16)}
    for level in range(1, 6):
        fan[f"L{level}"] = obj(
            {f"c{k}": {"$ref": f"#/$defs/L{level - 1}"} for k in range(6)},
            [f"c{k}" for k in range(6)],
        )
    return [
        entry("deep_nesting_60", deep, "refuse"),
        entry("deep_arrays_40", deep_arrays, "refuse"),
        entry(
            "huge_enum_10k",
            {"enum": [f"v{k:05d}-{'x' * (k % 16)}" for k in range(10000)]},
            "refuse",
        ),
        entry("huge_min_items", arr(s(maxLength=20), minItems=5000), "refuse"),
        # Over outlines' compile limits; the fallback engine serves it within the context.
        entry("huge_max_length", s(maxLength=100000), "any"),
        entry("pathological_nested_quantifiers", s(pattern="^(a{1,200}){1,200}$"), "refuse"),
        entry(
            "pathological_many_alternatives",
            s(pattern="^(" + "|".join(f"[a-z]{{{k}}}x" for k in range(1, 120)) + ")+$"),
            "refuse",
        ),
        entry("ref_fanout_6x5", {"$defs": fan, "$ref": "#/$defs/L5"}, "refuse"),
        entry(
            "wide_object_2000",
            obj({f"p{k}": s(maxLength=30) for k in range(2000)}, [f"p{k}" for k in range(2000)]),
            "refuse",
        ),
        entry(
            "long_tuple_3000",
            {"type": "array", "prefixItems": [s(maxLength=8) for _ in range(3000)]},
            "refuse",
        ),
        entry(  # the same; its shortest document (40 empty strings) fits the context
            "array_of_long_strings", arr(s(maxLength=400), minItems=40, maxItems=60), "any"
        ),
        # Over outlines' compile limits; the fallback grammar engine serves it (83 tokens at most).
        entry("escaped_quote_pattern_repeat", s(pattern='^(\\"|[a-z]){0,40}$')),
    ]


# -- realworld: seeded shapes of public schema collections ----------------------------------
# Function-calling parameters, Kubernetes objects, SchemaStore configs, GitHub API payloads and
# extraction outputs, drawn with a fixed seed: the same file every run.

REALWORLD_SEED = 20
DNS_LABEL = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
QUANTITY = "^[0-9]+(\\.[0-9]+)?(m|Ki|Mi|Gi)?$"
SEMVER = "^[0-9]+\\.[0-9]+\\.[0-9]+(-[0-9A-Za-z.-]+)?$"
HEX_COLOR = "^[0-9a-fA-F]{6}$"
SHA = "^[0-9a-f]{40}$"
FORMATS = ("date", "date-time", "email", "uri", "uuid", "ipv4", "time")
NOUNS = (
    "order", "invoice", "ticket", "user", "flight", "hotel", "meeting", "product", "payment",
    "shipment", "song", "recipe", "repository", "issue", "calendar_event", "document",
    "customer", "account", "reservation", "device", "alert", "report", "task", "contact",
)  # fmt: skip
VERBS = ("get", "create", "update", "search", "cancel", "list", "book", "send", "delete", "find")
TEXT_FIELDS = (
    "query", "title", "description", "city", "name", "note", "reason", "subject", "location",
    "comment", "summary", "keyword", "message", "country", "language", "category",
)  # fmt: skip
UNITS = ("celsius", "fahrenheit", "kelvin")


def _text(rng: random.Random) -> Schema:
    """A string as public schemas write one: often unbounded, sometimes a length, a format or
    a pattern, with a description."""
    roll = rng.random()
    if roll < 0.4:
        out: Schema = dict(STR)
    elif roll < 0.65:
        out = s(maxLength=rng.choice((16, 32, 64, 100, 140)))
    elif roll < 0.85:
        out = s(format=rng.choice(FORMATS))
    else:
        out = s(pattern=rng.choice(("^[A-Z]{2}$", "^[0-9]{3,6}$", "^[a-z_]{1,20}$", SEMVER)))
    if rng.random() < 0.5:
        out["description"] = rng.choice(("Free text.", "As the user wrote it.", "ISO value."))
    return out


def _leaf(rng: random.Random, name: str) -> Schema:
    roll = rng.random()
    if roll < 0.45:
        return _text(rng)
    if roll < 0.6:
        low = rng.choice((0, 1))
        return i(minimum=low, maximum=rng.choice((10, 100, 1000))) if rng.random() < 0.7 else INT
    if roll < 0.7:
        return n(minimum=0) if rng.random() < 0.5 else NUM
    if roll < 0.8:
        return BOOL
    if roll < 0.9:
        values = rng.sample(("low", "medium", "high", "urgent", "none", "auto", "manual"), 3)
        return {"type": "string", "enum": values}
    nullable = rng.choice(({"type": ["string", "null"]}, {"anyOf": [s(maxLength=40), NULL]}))
    return {**nullable, "description": f"The {name}, or null when unknown."}


NULL: Schema = {"type": "null"}


def _fields(rng: random.Random, count: int) -> dict[str, Schema]:
    names = rng.sample(TEXT_FIELDS, count)
    return {name: _leaf(rng, name) for name in names}


def _tool(rng: random.Random, k: int) -> dict[str, Any]:
    """An OpenAI/Anthropic function's `parameters`: flat, nested filters, or a list of items."""
    verb, noun = rng.choice(VERBS), rng.choice(NOUNS)
    props = _fields(rng, rng.randint(2, 5))
    shape = k % 4
    if shape == 1:
        props["filters"] = obj(
            {
                "status": {"enum": ["open", "closed", "pending"]},
                "from": s(format="date"),
                "to": s(format="date"),
                "limit": i(minimum=1, maximum=50),
            }
        )
    elif shape == 2:
        props["items"] = arr(
            obj({"sku": s(pattern="^[A-Z0-9-]{4,12}$"), "quantity": i(minimum=1)}, ["sku"]),
            minItems=1,
            maxItems=rng.choice((3, 5, 10)),
        )
    elif shape == 3:
        props["unit"] = {"type": "string", "enum": list(UNITS)}
    required = sorted(rng.sample(sorted(props), rng.randint(1, len(props))))
    schema = obj(props, required, additionalProperties=False)
    if k % 5 == 0:
        schema = {"$schema": "http://json-schema.org/draft-07/schema#", **schema}
    return entry(f"tool_{verb}_{noun}_{k}", schema)


def _k8s(rng: random.Random, k: int) -> dict[str, Any]:
    """Fragments of Kubernetes objects as their OpenAPI schemas write them."""
    name = s(pattern=DNS_LABEL, maxLength=63)
    int_or_string = {"anyOf": [INT, STR], "x-kubernetes-int-or-string": True}
    port = obj(
        {
            "name": name,
            "containerPort": i(minimum=1, maximum=65535),
            "protocol": {"type": "string", "enum": ["TCP", "UDP", "SCTP"]},
        },
        ["containerPort"],
    )
    env = obj({"name": s(maxLength=40), "value": STR}, ["name"])
    resources = obj(
        {
            "limits": obj({"cpu": s(pattern=QUANTITY), "memory": s(pattern=QUANTITY)}),
            "requests": obj({"cpu": s(pattern=QUANTITY), "memory": s(pattern=QUANTITY)}),
        }
    )
    probe = obj(
        {
            "httpGet": obj({"path": s(maxLength=64), "port": int_or_string}, ["port"]),
            "initialDelaySeconds": i(minimum=0),
            "periodSeconds": i(minimum=1),
            "failureThreshold": i(minimum=1),
        }
    )
    labels = {"type": "object", "additionalProperties": s(maxLength=63)}
    shape = k % 6
    if shape == 0:
        props: dict[str, Any] = {"name": name, "image": STR, "ports": arr(port, maxItems=3)}
        if rng.random() < 0.6:
            props["env"] = arr(env, maxItems=rng.choice((2, 4)))
        if rng.random() < 0.5:
            props["resources"] = resources
        return entry(f"k8s_container_{k}", obj(props, ["name", "image"]))
    if shape == 1:
        service_port = obj(
            {
                "port": i(minimum=1, maximum=65535),
                "targetPort": int_or_string,
                "protocol": {"enum": ["TCP", "UDP"]},
            },
            ["port"],
        )
        spec = obj(
            {
                "type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
                "ports": arr(service_port, minItems=1, maxItems=rng.choice((2, 4))),
                "selector": labels,
            },
            ["ports"],
        )
        return entry(f"k8s_service_spec_{k}", spec)
    if shape == 2:
        return entry(f"k8s_probe_{k}", probe)
    if shape == 3:
        meta = obj(
            {"name": name, "namespace": name, "labels": labels, "annotations": labels}, ["name"]
        )
        return entry(
            f"k8s_configmap_{k}",
            obj(
                {
                    "apiVersion": {"const": "v1"},
                    "kind": {"const": "ConfigMap"},
                    "metadata": meta,
                    "data": {"type": "object", "additionalProperties": STR},
                },
                ["apiVersion", "kind", "metadata"],
            ),
        )
    if shape == 4:
        return entry(
            f"k8s_deployment_strategy_{k}",
            obj(
                {
                    "replicas": i(minimum=0, maximum=rng.choice((10, 100))),
                    "strategy": obj(
                        {
                            "type": {"enum": ["RollingUpdate", "Recreate"]},
                            "rollingUpdate": obj(
                                {"maxSurge": int_or_string, "maxUnavailable": int_or_string}
                            ),
                        }
                    ),
                    "revisionHistoryLimit": i(minimum=0),
                },
                ["replicas"],
            ),
        )
    return entry(f"k8s_resources_{k}", resources)


def _schemastore(rng: random.Random, k: int) -> dict[str, Any]:
    """SchemaStore-like config fragments (draft-07 `definitions` with `$ref`)."""
    shape = k % 5
    if shape == 0:
        deps = {"type": "object", "additionalProperties": s(maxLength=20)}
        return entry(
            f"package_json_{k}",
            obj(
                {
                    "name": s(pattern="^(@[a-z0-9-]+/)?[a-z0-9-._]+$", maxLength=214),
                    "version": s(pattern=SEMVER),
                    "private": BOOL,
                    "license": {"enum": ["MIT", "Apache-2.0", "ISC", "BSD-3-Clause"]},
                    "scripts": {"type": "object", "additionalProperties": STR},
                    "dependencies": deps,
                    "engines": obj({"node": s(maxLength=20)}),
                },
                ["name", "version"],
            ),
        )
    if shape == 1:
        options = {
            "target": {"enum": ["es5", "es2015", "es2020", "esnext"]},
            "module": {"enum": ["commonjs", "esnext", "node16", "nodenext"]},
            "strict": BOOL,
            "outDir": s(maxLength=40),
            "paths": {"type": "object", "additionalProperties": arr(STR, maxItems=2)},
            "lib": arr({"enum": ["dom", "es2020", "esnext"]}, uniqueItems=True, maxItems=3),
        }
        picked = dict(rng.sample(sorted(options.items()), rng.randint(3, len(options))))
        return entry(f"tsconfig_{k}", obj({"compilerOptions": obj(picked)}))
    if shape == 2:
        rule = {
            "oneOf": [
                {"enum": ["off", "warn", "error"]},
                i(minimum=0, maximum=2),
                arr({}, maxItems=2),
            ]
        }
        return entry(
            f"eslintrc_{k}",
            {
                "$schema": "http://json-schema.org/draft-07/schema#",
                "definitions": {"rule": rule},
                **obj(
                    {
                        "root": BOOL,
                        "extends": {"anyOf": [STR, arr(STR, maxItems=3)]},
                        "rules": obj(
                            {
                                name: {"$ref": "#/definitions/rule"}
                                for name in rng.sample(
                                    ["no-unused-vars", "eqeqeq", "semi", "quotes", "curly"], 3
                                )
                            }
                        ),
                    }
                ),
            },
        )
    if shape == 3:
        step = {
            "anyOf": [
                obj({"uses": s(maxLength=60), "with": {"type": "object"}}, ["uses"]),
                obj({"run": s(maxLength=120), "name": s(maxLength=40)}, ["run"]),
            ]
        }
        return entry(
            f"github_workflow_job_{k}",
            {
                "definitions": {"step": step},
                **obj(
                    {
                        "runs-on": {"anyOf": [STR, arr(STR, maxItems=2)]},
                        "timeout-minutes": i(minimum=1, maximum=360),
                        "steps": arr({"$ref": "#/definitions/step"}, minItems=1, maxItems=3),
                    },
                    ["runs-on", "steps"],
                ),
            },
        )
    return entry(
        f"compose_service_{k}",
        obj(
            {
                "image": s(maxLength=80),
                "restart": {"enum": ["no", "always", "on-failure", "unless-stopped"]},
                "ports": arr(s(pattern="^[0-9]{1,5}(:[0-9]{1,5})?$"), maxItems=3),
                "environment": {
                    "oneOf": [
                        {"type": "object", "additionalProperties": {"type": ["string", "null"]}},
                        arr(STR, maxItems=3),
                    ]
                },
                "depends_on": arr(s(pattern=DNS_LABEL), maxItems=rng.choice((2, 3))),
            },
            ["image"],
        ),
    )


def _github(rng: random.Random, k: int) -> dict[str, Any]:
    """GitHub REST payloads: `$defs` shared by `$ref`, nullable fields, date-times."""
    defs = {
        "user": obj(
            {"login": s(maxLength=39), "id": i(minimum=1), "type": {"enum": ["User", "Bot"]}},
            ["login", "id"],
        ),
        "label": obj(
            {"name": s(maxLength=50), "color": s(pattern=HEX_COLOR), "default": BOOL},
            ["name", "color"],
        ),
    }
    nullable_user = {"anyOf": [{"$ref": "#/$defs/user"}, NULL]}
    shape = k % 4
    if shape == 0:
        props: dict[str, Any] = {
            "number": i(minimum=1),
            "title": s(maxLength=rng.choice((80, 120, 256))),
            "state": {"enum": ["open", "closed"]},
            "user": {"$ref": "#/$defs/user"},
            "labels": arr({"$ref": "#/$defs/label"}, maxItems=rng.choice((2, 3))),
            "assignee": nullable_user,
            "created_at": s(format="date-time"),
            "body": {"type": ["string", "null"], "maxLength": 200},
        }
        return entry(f"github_issue_{k}", {"$defs": defs, **obj(props, ["number", "title"])})
    if shape == 1:
        commit = obj(
            {
                "sha": s(pattern=SHA),
                "message": s(maxLength=rng.choice((72, 200))),
                "author": obj({"name": s(maxLength=40), "email": s(format="email")}),
                "parents": arr(obj({"sha": s(pattern=SHA)}, ["sha"]), maxItems=2),
            },
            ["sha", "message"],
        )
        return entry(f"github_commit_{k}", commit)
    if shape == 2:
        event = {
            "oneOf": [
                obj(
                    {"action": {"const": action}, "sender": {"$ref": "#/$defs/user"}},
                    ["action", "sender"],
                )
                for action in rng.sample(["opened", "closed", "reopened", "edited", "labeled"], 3)
            ]
        }
        return entry(f"github_webhook_{k}", {"$defs": defs, **event})
    release = obj(
        {
            "tag_name": s(pattern="^v" + SEMVER[1:]),
            "name": {"type": ["string", "null"], "maxLength": 60},
            "draft": BOOL,
            "prerelease": BOOL,
            "published_at": {"anyOf": [s(format="date-time"), NULL]},
            "assets": arr(
                obj(
                    {
                        "name": s(maxLength=60),
                        "size": i(minimum=0),
                        "content_type": s(maxLength=40),
                    },
                    ["name", "size"],
                ),
                maxItems=rng.choice((2, 3)),
            ),
        },
        ["tag_name", "draft"],
    )
    return entry(f"github_release_{k}", release)


def _extraction(rng: random.Random, k: int) -> dict[str, Any]:
    """LLM extraction and classification outputs: unions, enums, lists of records."""
    shape = k % 4
    if shape == 0:
        labels = rng.sample(
            ["billing", "bug", "feature", "question", "account", "spam", "praise", "refund"],
            rng.randint(3, 6),
        )
        return entry(
            f"classify_{k}",
            obj(
                {
                    "label": {"enum": labels},
                    "confidence": n(minimum=0, maximum=1),
                    "rationale": s(maxLength=rng.choice((60, 120))),
                },
                ["label"],
                additionalProperties=False,
            ),
        )
    if shape == 1:
        email = obj({"kind": {"const": "email"}, "address": s(format="email")}, ["kind", "address"])
        phone = obj(
            {"kind": {"const": "phone"}, "number": s(pattern="^\\+?[0-9]{7,15}$")},
            ["kind", "number"],
        )
        union = "oneOf" if rng.random() < 0.5 else "anyOf"
        return entry(
            f"extract_contacts_{k}",
            obj({"contacts": arr({union: [email, phone]}, maxItems=rng.choice((2, 4)))}),
        )
    if shape == 2:
        return entry(
            f"extract_events_{k}",
            obj(
                {
                    "events": arr(
                        obj(
                            {
                                "what": s(maxLength=60),
                                "when": s(format=rng.choice(("date", "date-time"))),
                                "where": {"type": ["string", "null"]},
                                "attendees": arr(s(maxLength=30), maxItems=3),
                            },
                            ["what", "when"],
                        ),
                        maxItems=rng.choice((2, 3)),
                    )
                },
                ["events"],
            ),
        )
    return entry(
        f"extract_table_{k}",
        obj(
            {
                "columns": arr(s(maxLength=20), minItems=1, maxItems=4),
                "rows": arr(arr({"type": ["string", "number", "null"]}, maxItems=4), maxItems=3),
            },
            ["columns", "rows"],
        ),
    )


def _beyond_bounding(k: int) -> dict[str, Any]:
    """Shapes public collections hold that outlines' bounding cannot express: served (if at
    all) by the fallback grammar engine, so `any`."""
    shapes: list[Schema] = [
        {"enum": [{"op": "add"}, {"op": "remove"}, {"op": "replace"}]},
        {
            "allOf": [
                {"oneOf": [obj({"a": STR}, ["a"]), obj({"b": STR}, ["b"])]},
                {"oneOf": [obj({"c": INT}, ["c"]), obj({"d": INT}, ["d"])]},
            ]
        },
        {"const": {"version": 1, "kind": "config"}},
        obj({"default": {"enum": [[1, 2], [3, 4]]}}),
    ]
    return entry(f"beyond_bounding_{k}", shapes[k % len(shapes)], "any")


def _hostile_realworld(k: int) -> dict[str, Any]:
    """What public schemas hold that the server must refuse: remote `$ref`s (SchemaStore's
    cross-file links), lookaround and backreferences (password rules), invalid schemas."""
    shapes = [
        obj({"extends": {"$ref": "https://json.schemastore.org/tsconfig.json"}}),
        obj({"password": s(pattern="^(?=.*[A-Z])(?=.*[0-9]).{8,64}$")}, ["password"]),
        obj({"tag": s(pattern="^<([a-z]+)>.*</\\1>$")}, ["tag"]),
        obj({"spec": {"$ref": "#/definitions/missing"}}),
        {"type": "object", "properties": {"n": {"type": "integer", "minimum": "zero"}}},
        obj({"word": s(pattern="\\bword\\b")}),
    ]
    return entry(f"hostile_realworld_{k}", shapes[k % len(shapes)], "refuse")


REALWORLD_SHAPES = (
    (_tool, 90),
    (_k8s, 60),
    (_schemastore, 60),
    (_github, 60),
    (_extraction, 40),
)


def realworld() -> list[dict[str, Any]]:
    rng = random.Random(REALWORLD_SEED)
    out = [build(rng, k) for build, count in REALWORLD_SHAPES for k in range(count)]
    out += [_beyond_bounding(k) for k in range(4)]
    out += [_hostile_realworld(k) for k in range(6)]
    return out


FAMILIES = {
    "basic": basic,
    "nested": nested,
    "refs": refs,
    "combinators": combinators,
    "strings": strings,
    "drafts": drafts,
    "hostile": hostile,
    "realworld": realworld,
}


def main(families: list[str]) -> None:
    CORPUS.mkdir(exist_ok=True)
    total = 0
    for family, build in FAMILIES.items():
        if families and family not in families:
            continue
        entries = build()
        names = [e["name"] for e in entries]
        assert len(names) == len(set(names)), f"duplicate names in {family}"
        with open(CORPUS / f"{family}.json", "w", encoding="utf-8") as handle:
            indent = None if family == "hostile" else 1  # hostile schemas are huge on purpose
            json.dump(entries, handle, indent=indent, ensure_ascii=False)
            handle.write("\n")
        total += len(entries)
        print(f"{family}: {len(entries)}")
    print(f"total: {total}")


if __name__ == "__main__":
    main(sys.argv[1:])

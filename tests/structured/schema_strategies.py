"""Hypothesis strategies for JSON Schemas of the shapes clients send, and hostile variants.

Shared by the property tests (`test_schema_properties*.py`) and the memory benchmark
(`loadtests/bench_schema_memory.py`, through `sample_schemas`). Every generated schema is a
valid Draft 2020-12 schema; some are unsatisfiable or too large on purpose (the server must
answer those with a 422, never an invalid 200).
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as fixed_seed
from hypothesis import strategies as st

Schema = dict[str, Any]

PROPERTY_NAMES = ("id", "name", "age", "tags", "score", "kind", "note", "when", "items", "ok")
PATTERNS = ("^[a-z]{1,8}$", "^[0-9]{3}-[0-9]{4}$", "^[A-Z][a-z]{0,10}$", "^(yes|no|maybe)$")
FORMATS = ("date", "date-time", "time", "email", "uuid", "uri")

_small = st.integers(min_value=-1000, max_value=1000)
_words = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=8)


@st.composite
def _bounded_pair(draw: st.DrawFn, key_low: str, key_high: str, low: int, span: int) -> Schema:
    """Optional lower and upper bounds with lower <= upper."""
    out: Schema = {}
    start = draw(st.integers(min_value=low, max_value=low + span))
    if draw(st.booleans()):
        out[key_low] = start
    if draw(st.booleans()):
        out[key_high] = start + draw(st.integers(min_value=0, max_value=span))
    return out


def strings() -> st.SearchStrategy[Schema]:
    lengths = _bounded_pair("minLength", "maxLength", 0, 12).map(
        lambda bounds: {"type": "string", **bounds}
    )
    patterns = st.sampled_from(PATTERNS).map(lambda p: {"type": "string", "pattern": p})
    formats = st.sampled_from(FORMATS).map(lambda f: {"type": "string", "format": f})
    return st.one_of(lengths, patterns, formats)


def integers() -> st.SearchStrategy[Schema]:
    return _bounded_pair("minimum", "maximum", -500, 1000).map(
        lambda bounds: {"type": "integer", **bounds}
    )


@st.composite
def numbers(draw: st.DrawFn) -> Schema:
    out: Schema = {"type": "number"}
    low = draw(st.one_of(st.none(), _small))
    if low is not None:
        out["exclusiveMinimum" if draw(st.booleans()) else "minimum"] = low
    if draw(st.booleans()):
        out["maximum"] = (low if low is not None else 0) + draw(st.integers(1, 1000))
    return out


def constants() -> st.SearchStrategy[Schema]:
    values = st.one_of(_words, _small, st.booleans())
    enums = st.lists(st.one_of(_words, _small), min_size=1, max_size=5, unique=True).map(
        lambda values: {"enum": values}
    )
    return st.one_of(enums, values.map(lambda value: {"const": value}))


def leaves() -> st.SearchStrategy[Schema]:
    return st.one_of(
        strings(),
        integers(),
        numbers(),
        constants(),
        st.just({"type": "boolean"}),
        st.just({"type": "null"}),
    )


@st.composite
def objects(draw: st.DrawFn, children: st.SearchStrategy[Schema]) -> Schema:
    props = draw(st.dictionaries(st.sampled_from(PROPERTY_NAMES), children, min_size=1, max_size=4))
    out: Schema = {"type": "object", "properties": props}
    required = draw(st.lists(st.sampled_from(sorted(props)), unique=True, max_size=len(props)))
    if required:
        out["required"] = required
    if draw(st.booleans()):
        out["additionalProperties"] = False
    return out


@st.composite
def arrays(draw: st.DrawFn, children: st.SearchStrategy[Schema]) -> Schema:
    out: Schema = {"type": "array", "items": draw(children)}
    out.update(draw(_bounded_pair("minItems", "maxItems", 0, 4)))
    return out


def nullable(children: st.SearchStrategy[Schema]) -> st.SearchStrategy[Schema]:
    """`anyOf` with null, or a type list with null when the child is a plain typed schema."""

    def wrap(child: Schema) -> Schema:
        if isinstance(child.get("type"), str) and child["type"] != "null":
            return {**child, "type": [child["type"], "null"]}
        return {"anyOf": [child, {"type": "null"}]}

    return children.map(wrap)


def any_of(children: st.SearchStrategy[Schema]) -> st.SearchStrategy[Schema]:
    return st.lists(children, min_size=2, max_size=3).map(lambda branches: {"anyOf": branches})


def schemas(max_leaves: int = 5) -> st.SearchStrategy[Schema]:
    """Nested JSON Schemas: mostly an object at the top, as structured-output clients send."""

    def extend(children: st.SearchStrategy[Schema]) -> st.SearchStrategy[Schema]:
        return st.one_of(objects(children), arrays(children), nullable(children), any_of(children))

    tree = st.recursive(leaves(), extend, max_leaves=max_leaves)
    return st.one_of(objects(tree), tree)


def max_tokens() -> st.SearchStrategy[int | None]:
    """Unset (the server picks the schema's budget), too small for most schemas, or roomy."""
    return st.one_of(st.none(), st.integers(1, 24), st.integers(25, 600))


def hostile_schemas() -> st.SearchStrategy[Schema]:
    """Schemas built to cost: huge bounds, deep nesting, wide objects, huge enums, patterns
    whose finite expansion is enormous. The server must refuse them (422) or serve them."""
    huge_string = st.integers(2_000, 200_000).map(lambda n: {"type": "string", "maxLength": n})
    huge_array = st.integers(500, 20_000).map(
        lambda n: {"type": "array", "items": {"type": "string", "maxLength": 20}, "minItems": n}
    )
    deep = st.integers(30, 80).map(_nested_objects)
    wide = st.integers(300, 3_000).map(
        lambda n: {
            "type": "object",
            "properties": {f"p{k}": {"type": "string", "maxLength": 30} for k in range(n)},
            "required": [f"p{k}" for k in range(n)],
        }
    )
    big_enum = st.integers(2_000, 20_000).map(lambda n: {"enum": [f"v{k:06d}" for k in range(n)]})
    blow_up = st.tuples(st.integers(50, 400), st.integers(50, 400)).map(
        lambda ab: {"type": "string", "pattern": f"^(a{{1,{ab[0]}}}){{1,{ab[1]}}}$"}
    )
    return st.one_of(huge_string, huge_array, deep, wide, big_enum, blow_up)


def _nested_objects(depth: int) -> Schema:
    schema: Schema = {"type": "integer"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"n": schema}, "required": ["n"]}
    return schema


class _Enough(Exception):
    """Stops `sample_schemas` once it has drawn enough."""


def sample_schemas(strategy: st.SearchStrategy[Schema], count: int, seed: int) -> list[Schema]:
    """`count` distinct schemas drawn from `strategy`, the same ones for the same seed."""
    drawn: dict[str, Schema] = {}

    @fixed_seed(seed)
    @settings(
        max_examples=count * 5,
        database=None,
        phases=[Phase.generate],
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(schema: Schema) -> None:
        drawn.setdefault(_canonical(schema), schema)
        if len(drawn) >= count:
            raise _Enough

    with contextlib.suppress(_Enough):
        collect()
    return list(drawn.values())[:count]


def _canonical(schema: Schema) -> str:
    return json.dumps(schema, sort_keys=True)

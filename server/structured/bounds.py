"""Make a schema's language finite, in the dialect outlines_core 0.2.14 actually enforces.

What outlines does with each keyword (read in its source, checked by experiment):

- strings: `minLength`/`maxLength` become a counted repetition of any character, and then
  `pattern` and `format` are silently dropped; `pattern` is pasted between the quotes as is;
  `format` knows only date, time, date-time, uuid, uri, email (three of them unbounded).
- integers/numbers: `minimum`, `maximum`, `exclusive*`, `multipleOf` are ignored; the digit
  counts are bounded only by the non-standard keywords `maxDigits` (integer) and
  `maxDigitsInteger`/`maxDigitsFraction`/`maxDigitsExponent` (number, which also need their
  `min*` at 1: the fraction and exponent would otherwise accept no digits, i.e. `1.` or `1e+`,
  and a capped integer part cannot be a single non-zero digit, so integers get their own branch).
- arrays: `minItems`/`maxItems` are enforced; `items` missing means any JSON value.
- objects: declared `properties` are emitted in order, required ones always; `minProperties`,
  `maxProperties`, `patternProperties`, `dependent*` are ignored; an object without
  `properties` has free (unbounded) keys.
- dispatch: the first of properties, allOf, anyOf, oneOf, prefixItems, enum, const, $ref, type
  wins and the other keywords of that subschema are ignored; `allOf` is concatenated, not
  intersected; boolean subschemas and subschemas without one of these keys are errors.

`bound_schema` rewrites the schema into that dialect: every string, array, integer and number
gets an enforced finite bound, allOf and sibling constraints are merged, formats and patterns
become finite JSON-safe regexes. The result is for the engine only; documents are validated
against the user's original schema (see `keywords.py`).
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterable
from fractions import Fraction
from typing import Any

from server.structured.errors import RefusalReason, SchemaRefusedError
from server.structured.limits import SchemaLimits
from server.structured.patterns import FORMAT_PATTERNS, string_body, transpile_pattern
from server.structured.validation import value_is_valid

# Keywords that judge one scalar value: an `enum`/`const` beside them keeps only the values
# they allow, so the grammar (which emits the values verbatim) enforces them too.
_VALUE_KEYWORDS = (
    "pattern",
    "format",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
)
_DRAFT4 = "http://json-schema.org/draft-04/schema#"

__all__ = ["SchemaLimits", "bound_schema", "resolve_pointer"]

Schema = dict[str, Any]

_ANNOTATIONS = frozenset(
    {
        "title",
        "description",
        "examples",
        "default",
        "$comment",
        "deprecated",
        "readOnly",
        "writeOnly",
        "$id",
        "$schema",
        "$anchor",
        "$vocabulary",
        "contentMediaType",
        "contentEncoding",
    }
)
_DEF_KEYS = ("$defs", "definitions")
_TYPES = ("string", "integer", "number", "boolean", "null", "array", "object")
_OBJECT_HINTS = ("properties", "required", "additionalProperties", "minProperties")
_ARRAY_HINTS = ("items", "prefixItems", "minItems", "maxItems", "contains", "uniqueItems")
_STRING_HINTS = ("pattern", "format", "minLength", "maxLength")
_NUMBER_HINTS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")
_MIN_KEYS = ("minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties")
_MAX_KEYS = ("maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties")
_EXACT_INTEGER = 2**53
_JSON_UNSAFE_NAME_CHARS = frozenset('"\\') | frozenset(chr(c) for c in range(0x20))


def bound_schema(schema: Schema | bool, limits: SchemaLimits | None = None) -> Schema:
    """Return a copy of `schema` whose outlines grammar accepts only finitely many documents.

    Bounds the user set are kept (a user `maxLength: 1000` stays 1000); only open ones get
    the caps in `limits`. Raises `SchemaRefusedError` when the schema cannot be bounded or
    cannot be expressed for outlines.
    """
    limits = limits or SchemaLimits()
    if schema is True:
        schema = {}
    if not isinstance(schema, dict):
        raise SchemaRefusedError(
            RefusalReason.UNSATISFIABLE if schema is False else RefusalReason.INVALID_SCHEMA,
            "the schema must be a JSON object (or `true`)",
        )
    return _Bounder(schema, limits).root()


def resolve_pointer(root: Schema, ref: str) -> Any:
    """Resolve a local `$ref` (`#` or `#/a/b`) the way outlines does; refuse anything else."""
    if ref == "#" or ref == "":
        return root
    if not ref.startswith("#/"):
        raise SchemaRefusedError(
            RefusalReason.UNSUPPORTED,
            f"$ref {ref!r}: only local references such as '#/$defs/Name' are supported",
        )
    node: Any = root
    for part in ref[2:].split("/"):
        if "~" in part or "%" in part:
            raise SchemaRefusedError(
                RefusalReason.UNSUPPORTED, f"$ref {ref!r}: escaped JSON pointers are not supported"
            )
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise SchemaRefusedError(
                RefusalReason.INVALID_SCHEMA, f"$ref {ref!r} points to nothing"
            )
    return node


class _Bounder:
    def __init__(self, root: Schema, limits: SchemaLimits) -> None:
        self.source = root
        self.limits = limits
        self.visited = 0
        self.ref_stack: list[str] = []

    def root(self) -> Schema:
        try:
            return self.node(self.source, 0)
        except _RecursionCut as exc:
            raise SchemaRefusedError(
                RefusalReason.UNSUPPORTED,
                f"$ref {exc.ref!r} must recurse more than {self.limits.max_ref_recursion} times "
                "(a required property or item); make the recursion optional",
            ) from exc

    # -- dispatch -----------------------------------------------------------------------
    def node(self, schema: Any, depth: int) -> Schema:
        if depth > self.limits.max_depth:
            raise SchemaRefusedError(
                RefusalReason.TOO_DEEP,
                f"the schema nests deeper than {self.limits.max_depth} levels",
            )
        self.visited += 1
        if self.visited > self.limits.max_subschemas:
            raise SchemaRefusedError(
                RefusalReason.TOO_LARGE,
                f"the schema has more than {self.limits.max_subschemas} subschemas",
            )
        if schema is True or schema == {}:
            return self.any_value()
        if schema is False:
            raise SchemaRefusedError(
                RefusalReason.UNSATISFIABLE, "a `false` subschema is required here"
            )
        if not isinstance(schema, dict):
            raise SchemaRefusedError(
                RefusalReason.INVALID_SCHEMA, f"a subschema must be an object, not {schema!r}"
            )
        schema = {k: v for k, v in schema.items() if k not in _DEF_KEYS}
        if "allOf" in schema:
            schema = self.merge_all_of(schema)
        if "$ref" in schema:
            return _keep_annotations(schema, self.reference(schema, depth))
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return self.alternatives(schema, key, depth)
        if "enum" in schema or "const" in schema:
            return self.literal(schema)
        schema_type = schema.get("type", _infer_type(schema))
        if schema_type is None:
            return _keep_annotations(schema, self.any_value())
        if isinstance(schema_type, list):
            if not schema_type:
                raise SchemaRefusedError(RefusalReason.UNSATISFIABLE, "`type` is an empty list")
            if len(schema_type) > 1:
                branches = [{**schema, "type": t} for t in dict.fromkeys(schema_type)]
                return self.alternatives({"anyOf": branches}, "anyOf", depth)
            schema_type = schema_type[0]
        handlers = {
            "string": self.string,
            "integer": self.integer,
            "number": self.number,
            "array": lambda s: self.array(s, depth),
            "object": lambda s: self.object(s, depth),
            "boolean": lambda s: {"type": "boolean"},
            "null": lambda s: {"type": "null"},
        }
        if schema_type not in handlers:
            raise SchemaRefusedError(RefusalReason.INVALID_SCHEMA, f"unknown type {schema_type!r}")
        return _keep_annotations(schema, handlers[schema_type](schema))

    def reference(self, schema: Schema, depth: int) -> Schema:
        """Inline the target of a `$ref` (bounded), cutting recursion at `max_ref_recursion`.

        outlines follows at most 3 nested `$ref`s, recursive or not, and silently drops what lies
        deeper, required properties included; inlined, the grammar is exactly what is written.
        """
        ref = schema["$ref"]
        if not isinstance(ref, str):
            raise SchemaRefusedError(RefusalReason.INVALID_SCHEMA, "$ref must be a string")
        target = resolve_pointer(self.source, ref)
        if self.ref_stack.count(ref) >= self.limits.max_ref_recursion:
            raise _RecursionCut(ref)
        if _constraints(schema, ignore=("$ref",)):
            target = _merge(_without(schema, "$ref"), self.deref(target))
        self.ref_stack.append(ref)
        try:
            return self.node(target, depth + 1)
        finally:
            self.ref_stack.pop()

    def deref(self, schema: Any) -> Any:
        """Follow `$ref`s at the top of a subschema (for merging), at most 16 deep."""
        for _ in range(16):
            if not (isinstance(schema, dict) and "$ref" in schema):
                return schema
            target = resolve_pointer(self.source, schema["$ref"])
            schema = _merge(_without(schema, "$ref"), target) if len(schema) > 1 else target
        raise SchemaRefusedError(RefusalReason.UNSUPPORTED, "$ref chain too long or circular")

    # -- combinators ----------------------------------------------------------------------
    def merge_all_of(self, schema: Schema) -> Schema:
        branches = schema["allOf"]
        if not isinstance(branches, list) or not branches:
            raise SchemaRefusedError(RefusalReason.INVALID_SCHEMA, "allOf must be a non-empty list")
        merged: Any = _without(schema, "allOf")
        for branch in branches:
            branch = self.deref(branch)
            if isinstance(branch, dict) and "allOf" in branch:
                branch = self.merge_all_of(branch)
            merged = _merge(merged, branch)
        if not isinstance(merged, dict):
            raise SchemaRefusedError(RefusalReason.UNSATISFIABLE, "an allOf branch is false")
        return merged

    def alternatives(self, schema: Schema, key: str, depth: int) -> Schema:
        branches = schema[key]
        if not isinstance(branches, list) or not branches:
            raise SchemaRefusedError(
                RefusalReason.INVALID_SCHEMA, f"{key} must be a non-empty list"
            )
        siblings = _constraints(schema, ignore=(key, "anyOf", "oneOf"))
        bounded: list[Schema] = []
        cut: _RecursionCut | None = None
        for branch in branches:
            if branch is False:
                continue
            if siblings:
                branch = _merge(siblings, self.deref(branch))
            try:
                bounded.append(self.node(branch, depth + 1))
            except _RecursionCut as exc:
                cut = exc
            except SchemaRefusedError as exc:
                if exc.reason is not RefusalReason.UNSATISFIABLE:
                    raise
        if not bounded:
            if cut is not None:
                raise cut
            raise SchemaRefusedError(RefusalReason.UNSATISFIABLE, f"no {key} branch can be met")
        return _keep_annotations(schema, {key: bounded})

    def literal(self, schema: Schema) -> Schema:
        values = schema["enum"] if "enum" in schema else [schema["const"]]
        if not isinstance(values, list) or not values:
            raise SchemaRefusedError(RefusalReason.INVALID_SCHEMA, "enum must be a non-empty list")
        if "enum" in schema and "const" in schema:
            values = [v for v in values if _json_equal(v, schema["const"])]
        declared = schema.get("type")
        if declared is not None:
            types = {declared} if isinstance(declared, str) else set(declared)
            values = [
                v
                for v in values
                if _json_type(v) in types or ("number" in types and _json_type(v) == "integer")
            ]
        checks = {key: schema[key] for key in _VALUE_KEYWORDS if key in schema}
        if any(isinstance(checks.get(k), bool) for k in ("exclusiveMinimum", "exclusiveMaximum")):
            checks["$schema"] = _DRAFT4  # boolean exclusive* flags exist in draft 4 alone
        if checks:  # the grammar emits the values as they are: keep those the keywords allow
            values = [v for v in values if value_is_valid(checks, v)]
        if not values:
            raise SchemaRefusedError(
                RefusalReason.UNSATISFIABLE, "no enum/const value fits the other keywords"
            )
        if len(values) > self.limits.max_enum_values:
            raise SchemaRefusedError(
                RefusalReason.TOO_LARGE,
                f"an enum has more than {self.limits.max_enum_values} values",
            )
        if any(isinstance(v, (dict, list)) for v in values):
            raise SchemaRefusedError(
                RefusalReason.UNSUPPORTED,
                "enum/const with object or array values cannot be enforced by outlines",
            )
        return _keep_annotations(schema, {"enum": values})

    def any_value(self) -> Schema:
        """Any JSON scalar, bounded: what an open `{}` or missing `items` becomes."""
        number = self.number({})
        return {"anyOf": [self.string({}), *number["anyOf"], {"type": "boolean"}, {"type": "null"}]}

    # -- scalars --------------------------------------------------------------------------
    def string(self, schema: Schema) -> Schema:
        min_length = _nonneg_int(schema.get("minLength"), 0, "minLength")
        max_length = _nonneg_int(schema.get("maxLength"), None, "maxLength")
        if max_length is not None and max_length < min_length:
            raise SchemaRefusedError(RefusalReason.UNSATISFIABLE, "minLength exceeds maxLength")
        pattern = schema.get("pattern")
        fmt = schema.get("format")
        if isinstance(pattern, str):
            body = transpile_pattern(pattern, self.limits.max_pattern_repeat)
        elif isinstance(fmt, str) and fmt in FORMAT_PATTERNS:
            body = FORMAT_PATTERNS[fmt]
        else:
            if max_length is None:
                max_length = max(min_length, self.limits.max_string_length)
            body = string_body(min_length, max_length, self.limits.string_charset)
        return {"type": "string", "pattern": body}

    def integer(self, schema: Schema) -> Schema:
        low, high = _numeric_range(schema)
        low_int = None if low is None else math.ceil(low)
        high_int = None if high is None else math.floor(high)
        if low_int is not None and high_int is not None:
            if high_int < low_int:
                raise SchemaRefusedError(RefusalReason.UNSATISFIABLE, "no integer fits the bounds")
            # beyond 2**53 outlines writes enum integers as floats: use digits there
            exact = max(abs(low_int), abs(high_int)) <= _EXACT_INTEGER
            if exact and high_int - low_int < self.limits.max_integer_enum:
                values = [v for v in range(low_int, high_int + 1) if _multiple_ok(v, schema)]
                if not values:
                    raise SchemaRefusedError(
                        RefusalReason.UNSATISFIABLE, "no integer fits the bounds and multipleOf"
                    )
                return {"enum": values}
        # outlines writes maxDigits n as [1-9][0-9]{0,n-1}; n = 1 would leave it open
        return {"type": "integer", "maxDigits": max(self.digits(low, high), 2)}

    def number(self, schema: Schema) -> Schema:
        low, high = _numeric_range(schema)
        if low is not None and high is not None and high < low:
            raise SchemaRefusedError(RefusalReason.UNSATISFIABLE, "minimum exceeds maximum")
        digits = self.digits(low, high)
        return {
            "anyOf": [
                {"type": "integer", "maxDigits": max(digits, 2)},
                {
                    "type": "number",
                    # outlines writes the integer part as [1-9][0-9]{1,n-1}: n >= 2 or it is open
                    "maxDigitsInteger": max(digits, 2),
                    "minDigitsFraction": 1,
                    "maxDigitsFraction": self.limits.max_fraction_digits,
                    "minDigitsExponent": 1,
                    "maxDigitsExponent": self.limits.max_exponent_digits,
                },
            ]
        }

    def digits(self, low: float | None, high: float | None) -> int:
        """Integer digits that cover the user's bounds; the cap where a side is open."""
        needed = [_int_digits(b) for b in (low, high) if b is not None]
        if low is not None and high is not None:
            return max(needed)
        return max([self.limits.max_integer_digits, *needed])

    # -- containers -----------------------------------------------------------------------
    def array(self, schema: Schema, depth: int) -> Schema:
        min_items = _nonneg_int(schema.get("minItems"), 0, "minItems")
        max_items = _nonneg_int(schema.get("maxItems"), None, "maxItems")
        if max_items is not None and max_items < min_items:
            raise SchemaRefusedError(RefusalReason.UNSATISFIABLE, "minItems exceeds maxItems")
        items = schema.get("items", True)
        prefix = schema.get("prefixItems")
        if isinstance(items, list):  # draft 4-2019 tuple form
            prefix, items = items, schema.get("additionalItems", True)
        if isinstance(prefix, list) and prefix:
            return {"prefixItems": [self.node(p, depth + 1) for p in prefix]}
        if items is False:
            if min_items > 0:
                raise SchemaRefusedError(
                    RefusalReason.UNSATISFIABLE, "items is false but minItems > 0"
                )
            return {"type": "array", "maxItems": 0}
        if max_items is None:
            max_items = max(min_items, self.limits.max_array_items)
        out: Schema = {"type": "array", "minItems": min_items, "maxItems": max_items}
        if max_items > 0:
            try:
                out["items"] = self.node(items, depth + 1)
            except _RecursionCut:
                if min_items > 0:
                    raise
                return {"type": "array", "maxItems": 0}  # recursion cut: the empty array
        return out

    def object(self, schema: Schema, depth: int) -> Schema:
        properties = schema.get("properties", {})
        if not isinstance(properties, dict):
            raise SchemaRefusedError(RefusalReason.INVALID_SCHEMA, "properties must be an object")
        required = [r for r in schema.get("required", []) if isinstance(r, str)]
        additional = schema.get("additionalProperties", True)
        properties = dict(properties)
        for name in required:
            if name not in properties:
                if additional is False:
                    raise SchemaRefusedError(
                        RefusalReason.UNSATISFIABLE,
                        f"property {name!r} is required but additionalProperties is false",
                    )
                properties[name] = additional
        bounded: dict[str, Any] = {}
        for name, sub in properties.items():
            if any(c in _JSON_UNSAFE_NAME_CHARS for c in name):
                raise SchemaRefusedError(
                    RefusalReason.UNSUPPORTED,
                    f"property name {name!r} needs JSON escaping, which outlines does not do",
                )
            if sub is False:
                if name in required:
                    raise SchemaRefusedError(
                        RefusalReason.UNSATISFIABLE, f"property {name!r} is required but false"
                    )
                continue
            try:
                bounded[name] = self.node(sub, depth + 1)
            except _RecursionCut:
                if name in required:
                    raise
        if bounded:
            out: Schema = {"type": "object", "properties": bounded}
            kept_required = [name for name in required if name in bounded]
            if kept_required:
                out["required"] = list(dict.fromkeys(kept_required))
            return out
        min_properties = _nonneg_int(schema.get("minProperties"), 0, "minProperties")
        if self.limits.free_form_objects == "empty" and min_properties == 0:
            return {"type": "object", "maxProperties": 0}
        raise SchemaRefusedError(
            RefusalReason.UNBOUNDED,
            "an object without declared `properties` has unbounded keys in the outlines grammar; "
            "declare its properties",
        )


# -- helpers ------------------------------------------------------------------------------
class _RecursionCut(SchemaRefusedError):
    """A `$ref` recursed too often here; the nearest optional container drops this part."""

    def __init__(self, ref: str) -> None:
        super().__init__(RefusalReason.UNSUPPORTED, f"recursion through {ref!r} cut")
        self.ref = ref

    def __reduce__(self) -> Any:
        return (type(self), (self.ref,))


def _without(schema: Schema, key: str) -> Schema:
    return {k: v for k, v in schema.items() if k != key}


def _constraints(schema: Schema, ignore: Iterable[str]) -> Schema:
    skip = set(ignore) | _ANNOTATIONS | set(_DEF_KEYS)
    return {k: v for k, v in schema.items() if k not in skip}


def _keep_annotations(source: Schema, out: Schema) -> Schema:
    for key in ("title", "description"):
        if key in source and key not in out:
            out[key] = source[key]
    return out


def _infer_type(schema: Schema) -> str | None:
    for hints, name in (
        (_OBJECT_HINTS, "object"),
        (_ARRAY_HINTS, "array"),
        (_STRING_HINTS, "string"),
        (_NUMBER_HINTS, "number"),
    ):
        if any(h in schema for h in hints):
            return name
    return None


def _nonneg_int(value: Any, default: int | None, name: str) -> Any:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise SchemaRefusedError(
            RefusalReason.INVALID_SCHEMA, f"{name} must be a non-negative integer"
        )
    return int(value)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _numeric_range(schema: Schema) -> tuple[float | None, float | None]:
    """Inclusive lower/upper bounds (draft 4's boolean exclusive* included)."""
    low, high = _number(schema.get("minimum")), _number(schema.get("maximum"))
    ex_low, ex_high = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    strict_low, strict_high = _number(ex_low), _number(ex_high)
    if ex_low is True and low is not None:
        low = _next_above(low)
    elif strict_low is not None:
        candidate = _next_above(strict_low)
        low = candidate if low is None else max(low, candidate)
    if ex_high is True and high is not None:
        high = _next_below(high)
    elif strict_high is not None:
        candidate = _next_below(strict_high)
        high = candidate if high is None else min(high, candidate)
    return low, high


def _next_above(value: float) -> float:
    return value + 1 if isinstance(value, int) else math.nextafter(value, math.inf)


def _next_below(value: float) -> float:
    return value - 1 if isinstance(value, int) else math.nextafter(value, -math.inf)


def _int_digits(value: float) -> int:
    magnitude = abs(value)
    if magnitude < 1:
        return 1
    return len(str(math.floor(magnitude)))


def _multiple_ok(value: int, schema: Schema) -> bool:
    """Whether `value` is a multiple of `multipleOf`, decided as jsonschema decides it."""
    step = _number(schema.get("multipleOf"))
    if step is None or step <= 0:
        return True
    if isinstance(step, int):
        return value % step == 0
    quotient = value / step
    try:
        return int(quotient) == quotient
    except OverflowError:  # a tiny step: the exact quotient decides
        return (Fraction(value) / Fraction(step)).denominator == 1


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _json_equal(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True) and type(a) is type(b)


def _merge(a: Any, b: Any) -> Any:
    """Intersection of two subschemas as one subschema, for allOf and sibling keywords."""
    if a is True or a == {}:
        return copy.deepcopy(b) if isinstance(b, dict) else b
    if b is True or b == {}:
        return a
    if a is False or b is False:
        return False
    if not isinstance(a, dict) or not isinstance(b, dict):
        raise SchemaRefusedError(RefusalReason.INVALID_SCHEMA, "allOf branches must be schemas")
    out = dict(a)
    for key, value in b.items():
        if key not in out:
            out[key] = value
            continue
        mine = out[key]
        if _json_equal(mine, value) or key in _ANNOTATIONS:
            continue
        if key == "properties" and isinstance(mine, dict) and isinstance(value, dict):
            props = dict(mine)
            for name, sub in value.items():
                props[name] = _merge(props[name], sub) if name in props else sub
            out[key] = props
        elif key == "required":
            out[key] = list(dict.fromkeys([*mine, *value]))
        elif key == "type":
            out[key] = _merge_types(mine, value)
        elif key in _MIN_KEYS and _number(mine) is not None and _number(value) is not None:
            out[key] = max(mine, value)
        elif key in _MAX_KEYS and _number(mine) is not None and _number(value) is not None:
            out[key] = min(mine, value)
        elif key == "enum" and isinstance(mine, list) and isinstance(value, list):
            out[key] = [v for v in mine if any(_json_equal(v, w) for w in value)]
        elif key in ("items", "additionalProperties", "not", "contains"):
            out[key] = _merge(mine, value)
        else:
            raise SchemaRefusedError(
                RefusalReason.UNSUPPORTED,
                f"cannot combine two different {key!r} constraints (allOf or sibling keywords)",
            )
    if "additionalProperties" in b and b["additionalProperties"] is False:
        allowed = set(b.get("properties", {}))
        out["properties"] = {k: v for k, v in out.get("properties", {}).items() if k in allowed}
    if "additionalProperties" in a and a["additionalProperties"] is False:
        allowed = set(a.get("properties", {}))
        out["properties"] = {k: v for k, v in out.get("properties", {}).items() if k in allowed}
    return out


def _merge_types(a: Any, b: Any) -> Any:
    first = {a} if isinstance(a, str) else set(a)
    second = {b} if isinstance(b, str) else set(b)
    if "number" in first and "integer" in second:
        first.add("integer")
    if "number" in second and "integer" in first:
        second.add("integer")
    both = [t for t in _TYPES if t in first and t in second]
    if not both:
        raise SchemaRefusedError(
            RefusalReason.UNSATISFIABLE, f"types {a!r} and {b!r} never overlap"
        )
    return both[0] if len(both) == 1 else both

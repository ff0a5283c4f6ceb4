"""Which schema keywords the grammar cannot enforce, and the schema's own validity.

A document decoded under the bounded grammar is always well-formed JSON of the right shape,
but some keywords have no regex counterpart in outlines (numeric bounds, uniqueness,
conditionals, ...): for schemas that use them the server validates the document (see
`validation.py`) and retries or answers 422 naming them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import jsonschema
from jsonschema.protocols import Validator

from server.structured.errors import RefusalReason, SchemaRefusedError
from server.structured.limits import SchemaLimits
from server.structured.numbers import check_numbers

# Keyword -> why the grammar cannot enforce it. Reported as found, with where.
NEVER_ENFORCED: dict[str, str] = {
    "minimum": "outlines ignores numeric bounds",
    "maximum": "outlines ignores numeric bounds",
    "exclusiveMinimum": "outlines ignores numeric bounds",
    "exclusiveMaximum": "outlines ignores numeric bounds",
    "multipleOf": "outlines ignores multipleOf",
    "uniqueItems": "a regex cannot compare array items",
    "contains": "outlines ignores contains",
    "minContains": "outlines ignores contains",
    "maxContains": "outlines ignores contains",
    "not": "a regex cannot express negation of a subschema here",
    "if": "outlines ignores conditionals",
    "then": "outlines ignores conditionals",
    "else": "outlines ignores conditionals",
    "patternProperties": "outlines ignores patternProperties",
    "propertyNames": "outlines ignores propertyNames",
    "dependentRequired": "outlines ignores dependencies",
    "dependentSchemas": "outlines ignores dependencies",
    "dependencies": "outlines ignores dependencies",
    "unevaluatedProperties": "outlines ignores unevaluated*",
    "unevaluatedItems": "outlines ignores unevaluated*",
    "oneOf": "outlines treats oneOf as anyOf (exclusivity unchecked)",
    "allOf": "allOf is merged into one subschema, approximately for additionalProperties",
    "$dynamicRef": "dynamic references are not followed",
    "$recursiveRef": "dynamic references are not followed",
}
# Formats whose bounded regex accepts only valid values (others: shape only, or nothing).
EXACT_FORMATS = frozenset(
    {"uuid", "email", "idn-email", "hostname", "idn-hostname", "ipv4", "ipv6"}
    | {"uri", "iri", "uri-reference", "iri-reference", "url"}
)
DEFAULT_MAX_NODES = 5000
_NUMERIC = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")
SUBSCHEMA_MAPS = (
    "properties",
    "patternProperties",
    "$defs",
    "definitions",
    "dependentSchemas",
    "dependencies",  # draft 7 and before; its list values are not subschemas
)
SUBSCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")
SUBSCHEMA_SINGLE = (
    "items",
    "additionalItems",
    "additionalProperties",
    "contains",
    "not",
    "if",
    "then",
    "else",
    "propertyNames",
    "unevaluatedItems",
    "unevaluatedProperties",
)


@dataclass(frozen=True)
class UnenforcedKeyword:
    """A keyword the grammar does not enforce, where it is (JSON pointer) and why."""

    keyword: str
    location: str
    reason: str


def find_unenforced(
    schema: dict[str, Any] | bool, limits: SchemaLimits | None = None
) -> list[UnenforcedKeyword]:
    """Every use of a keyword the bounded grammar does not enforce, in document order."""
    if not isinstance(schema, dict):
        return []
    limits = limits or SchemaLimits()
    return list(_walk(schema, "#", limits))


def unenforced_keywords(
    schema: dict[str, Any] | bool, limits: SchemaLimits | None = None
) -> list[str]:
    """Sorted names of the keywords `schema` uses that the grammar does not enforce."""
    return sorted({item.keyword for item in find_unenforced(schema, limits)})


def validator_for(schema: dict[str, Any] | bool) -> type[Validator]:
    """The validator class for the schema's `$schema` draft (Draft 2020-12 when absent)."""
    cls: type[Validator] = jsonschema.validators.validator_for(
        schema, default=jsonschema.Draft202012Validator
    )
    return cls


def check_schema(schema: Any, max_nodes: int = DEFAULT_MAX_NODES) -> None:
    """Refuse a schema that is not valid under its own draft's meta-schema (INVALID_SCHEMA).

    A schema of more than `max_nodes` JSON values is refused (TOO_LARGE) before the meta-schema
    validation, whose cost grows with the schema, and so is one holding a number that
    overflows (`check_numbers`).
    """
    if not isinstance(schema, (dict, bool)):
        raise SchemaRefusedError(RefusalReason.INVALID_SCHEMA, "the schema must be a JSON object")
    if _count_nodes(schema, max_nodes) > max_nodes:
        raise SchemaRefusedError(
            RefusalReason.TOO_LARGE, f"the schema has more than {max_nodes} JSON values"
        )
    check_numbers(schema)
    try:
        validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
        raise SchemaRefusedError(
            RefusalReason.INVALID_SCHEMA, f"invalid JSON Schema at {where}: {exc.message}"
        ) from exc
    except RecursionError as exc:
        raise SchemaRefusedError(RefusalReason.TOO_DEEP, "the schema nests too deeply") from exc


def _count_nodes(root: Any, stop_after: int) -> int:
    """JSON values in `root`, counted without recursion; stops early past `stop_after`."""
    count, stack = 0, [root]
    while stack and count <= stop_after:
        node = stack.pop()
        count += 1
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return count


# -- unenforced keywords ------------------------------------------------------------------
def _walk(node: Any, where: str, limits: SchemaLimits) -> Iterator[UnenforcedKeyword]:
    if not isinstance(node, dict):
        return
    small_integer_enum = _small_integer_range(node, limits)
    for keyword, reason in NEVER_ENFORCED.items():
        if keyword not in node:
            continue
        if keyword in _NUMERIC and (small_integer_enum or "enum" in node or "const" in node):
            continue
        if keyword == "uniqueItems" and node[keyword] is not True:
            continue
        if keyword == "allOf" and isinstance(node[keyword], list) and len(node[keyword]) <= 1:
            continue
        yield UnenforcedKeyword(keyword, where, reason)
    yield from _string_rules(node, where)
    yield from _container_rules(node, where)
    for key in SUBSCHEMA_MAPS:
        value = node.get(key)
        if isinstance(value, dict):
            for name, sub in value.items():
                yield from _walk(sub, f"{where}/{key}/{pointer_escape(name)}", limits)
    for key in SUBSCHEMA_LISTS:
        value = node.get(key)
        if isinstance(value, list):
            for index, sub in enumerate(value):
                yield from _walk(sub, f"{where}/{key}/{index}", limits)
    for key in SUBSCHEMA_SINGLE:
        if key in node:
            value = node[key]
            if isinstance(value, list):  # draft-4 tuple `items`
                for index, sub in enumerate(value):
                    yield from _walk(sub, f"{where}/{key}/{index}", limits)
            else:
                yield from _walk(value, f"{where}/{key}", limits)


def _string_rules(node: dict[str, Any], where: str) -> Iterator[UnenforcedKeyword]:
    fmt = node.get("format")
    has_pattern = isinstance(node.get("pattern"), str)
    if isinstance(fmt, str) and (has_pattern or fmt not in EXACT_FORMATS):
        yield UnenforcedKeyword(
            "format", where, "pattern takes precedence" if has_pattern else f"{fmt!r} shape only"
        )
    if has_pattern or isinstance(fmt, str):
        for keyword in ("minLength", "maxLength"):
            if keyword in node:
                yield UnenforcedKeyword(keyword, where, "lengths are not combined with a pattern")


def _container_rules(node: dict[str, Any], where: str) -> Iterator[UnenforcedKeyword]:
    prefix = node.get("prefixItems")
    if not isinstance(prefix, list):
        prefix = node.get("items") if isinstance(node.get("items"), list) else None
    if prefix is not None:
        if isinstance(node.get("minItems"), int) and node["minItems"] > len(prefix):
            yield UnenforcedKeyword("minItems", where, "tuples are generated at their exact length")
        if isinstance(node.get("maxItems"), int) and node["maxItems"] < len(prefix):
            yield UnenforcedKeyword("maxItems", where, "tuples are generated at their exact length")
    if isinstance(node.get("properties"), dict) and node["properties"]:
        for keyword in ("minProperties", "maxProperties"):
            if keyword in node:
                yield UnenforcedKeyword(keyword, where, "outlines ignores it beside properties")


def _small_integer_range(node: dict[str, Any], limits: SchemaLimits) -> bool:
    if node.get("type") != "integer":
        return False
    low = node.get("minimum", node.get("exclusiveMinimum"))
    high = node.get("maximum", node.get("exclusiveMaximum"))
    if low is None or high is None or not (_is_number(low) and _is_number(high)):
        return False
    return bool(high - low < limits.max_integer_enum)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def pointer_escape(name: str) -> str:
    """`name` as one JSON-pointer token (RFC 6901)."""
    return name.replace("~", "~0").replace("/", "~1")

"""Refuse, at admission, schemas whose validation could fetch, hang or overflow.

A generated document is validated against the user's own schema (see `validation.py`). Before
any work, `check_safety` refuses (422 via `SchemaRefusedError`, naming the place):

- a `$ref`, `$dynamicRef` or `$recursiveRef` that does not resolve inside the schema itself
  (by JSON pointer, or through the schema's own `$id`/`$anchor`): `http:`, `file:` or
  relative-to-another-document references are never retrieved;
- a `pattern` or `patternProperties` key that RE2 (linear-time matching) cannot compile, or
  longer than `SchemaLimits.max_pattern_length`;
- a schema whose size with every reference inlined (memoised per target, a cycle counted
  once) exceeds `SchemaLimits.max_expanded_size`: validation cost grows with that size;
- a number that is not finite or outside the 64-bit float range (`check_numbers`, also run
  by `check_schema` before the meta-schema), or a length or count keyword above
  `SchemaLimits.max_count_value`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import re2
import referencing
import referencing.jsonschema
from jsonschema_specifications import REGISTRY as SPECIFICATIONS
from referencing._core import Resolver

from server.structured.errors import RefusalReason, SchemaRefusedError
from server.structured.keywords import (
    SUBSCHEMA_LISTS,
    SUBSCHEMA_MAPS,
    SUBSCHEMA_SINGLE,
    pointer_escape,
    validator_for,
)
from server.structured.limits import SchemaLimits
from server.structured.numbers import check_numbers

REFERENCE_KEYWORDS = ("$ref", "$dynamicRef", "$recursiveRef")
COUNT_KEYWORDS = (
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "minContains",
    "maxContains",
)
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.max_mem = 8 << 20  # RE2's default; a larger program is refused, not built
_RE2_OPTIONS.log_errors = False  # a refused pattern is reported to the client, not logged


def local_registry() -> referencing.Registry[Any]:
    """The JSON Schema meta-schemas and nothing else: a reference outside them and the
    schema's own resources is unresolvable, never retrieved."""
    return SPECIFICATIONS.combine(referencing.Registry())


def compile_pattern(pattern: str) -> Any:
    """`pattern` compiled by RE2; raises `re2.error` for what RE2 cannot run in linear time."""
    return re2.compile(pattern, _RE2_OPTIONS)


def pattern_error(exc: Exception) -> str:
    """RE2's reason for refusing a pattern, as text."""
    reason = exc.args[0] if exc.args else exc
    return reason.decode("utf-8", "replace") if isinstance(reason, bytes) else str(reason)


def check_safety(schema: Any, limits: SchemaLimits | None = None) -> None:
    """Raise `SchemaRefusedError` when validating against `schema` could fetch, hang or
    overflow (see the module's docstring)."""
    limits = limits or SchemaLimits()
    check_numbers(schema)
    if not isinstance(schema, dict):
        return
    specification = _specification(schema)
    resource = specification.create_resource(schema)
    resolver = local_registry().resolver_with_root(resource)
    try:
        size = _Walker(specification, limits).size(schema, resolver, "#")
    except RecursionError as exc:
        raise SchemaRefusedError(
            RefusalReason.TOO_DEEP, "the schema (its references followed) nests too deeply"
        ) from exc
    if size > limits.max_expanded_size:
        raise SchemaRefusedError(
            RefusalReason.TOO_LARGE,
            f"the schema has more than {limits.max_expanded_size} subschemas once its $refs "
            "are inlined (validating a document against it could take exponential time)",
        )


class _Walker:
    """Visits every subschema once (references followed), checking it and summing the size."""

    def __init__(self, specification: referencing.Specification[Any], limits: SchemaLimits):
        self.specification = specification
        self.limits = limits
        self.cap = limits.max_expanded_size + 1
        self.sizes: dict[int, int] = {}
        self.active: set[int] = set()

    def size(self, node: Any, resolver: Resolver[Any], where: str) -> int:
        """Subschemas in `node` with its references inlined, at most `cap`."""
        if not isinstance(node, dict):
            return 1
        key = id(node)
        if key in self.active:  # a cycle: counted once
            return 1
        known = self.sizes.get(key)
        if known is not None:
            return known
        self.active.add(key)
        try:
            resolver = resolver.in_subresource(self.specification.create_resource(node))
            self.check_node(node, where)
            total = 1
            for target, target_resolver, target_where in self.references(node, resolver, where):
                total += self.size(target, target_resolver, target_where)
                if total >= self.cap:
                    break
            for child, child_where in _children(node, where):
                if total >= self.cap:
                    break
                total += self.size(child, resolver, child_where)
        finally:
            self.active.discard(key)
        self.sizes[key] = total = min(total, self.cap)
        return total

    def references(
        self, node: dict[str, Any], resolver: Resolver[Any], where: str
    ) -> Iterator[tuple[Any, Resolver[Any], str]]:
        for keyword in REFERENCE_KEYWORDS:
            ref = node.get(keyword)
            if not isinstance(ref, str):
                continue
            try:
                resolved = resolver.lookup(ref)
            # hostile input: whatever fails to resolve (bad pointer, unknown anchor, odd
            # URI) is a refusal, never a 500
            except Exception as exc:
                raise SchemaRefusedError(
                    RefusalReason.UNSUPPORTED,
                    f"{keyword} {ref!r} at {where} does not resolve inside the schema; only "
                    "local references ('#/$defs/Name', or through the schema's own $id or "
                    "$anchor) are allowed: remote and file references are never fetched",
                ) from exc
            yield resolved.contents, resolved.resolver, f"{where}/{keyword}"

    def check_node(self, node: dict[str, Any], where: str) -> None:
        pattern = node.get("pattern")
        if isinstance(pattern, str):
            self.check_pattern(pattern, f"{where}/pattern")
        properties = node.get("patternProperties")
        if isinstance(properties, dict):
            for key in properties:
                self.check_pattern(key, f"{where}/patternProperties")
        for keyword in COUNT_KEYWORDS:
            value = node.get(keyword)
            if isinstance(value, (int, float)) and value > self.limits.max_count_value:
                raise SchemaRefusedError(
                    RefusalReason.TOO_LARGE,
                    f"{keyword} at {where} is {value:g}; "
                    f"the limit is {self.limits.max_count_value}",
                )

    def check_pattern(self, pattern: str, where: str) -> None:
        limit = self.limits.max_pattern_length
        if len(pattern) > limit:
            raise SchemaRefusedError(
                RefusalReason.TOO_LARGE,
                f"the pattern at {where} has {len(pattern)} characters; the limit is {limit}",
            )
        try:
            compile_pattern(pattern)
        except re2.error as exc:
            raise SchemaRefusedError(
                RefusalReason.UNSUPPORTED,
                f"the pattern {pattern!r} at {where} is not supported: patterns run on RE2 "
                f"(linear time; no backreferences or lookaround): {pattern_error(exc)}",
            ) from exc


def _children(node: dict[str, Any], where: str) -> Iterator[tuple[Any, str]]:
    for key in SUBSCHEMA_MAPS:
        value = node.get(key)
        if isinstance(value, dict):
            for name, sub in value.items():
                if key != "dependencies" or isinstance(sub, dict):
                    yield sub, f"{where}/{key}/{pointer_escape(name)}"
    for key in (*SUBSCHEMA_LISTS, *SUBSCHEMA_SINGLE):
        value = node.get(key)
        if isinstance(value, list):
            for index, sub in enumerate(value):
                yield sub, f"{where}/{key}/{index}"
        elif isinstance(value, dict):
            yield value, f"{where}/{key}"


def _specification(schema: dict[str, Any]) -> referencing.Specification[Any]:
    meta = validator_for(schema).META_SCHEMA
    return referencing.jsonschema.specification_with(
        meta.get("$id") or meta.get("id") or "", default=referencing.jsonschema.DRAFT202012
    )


__all__ = ["check_safety", "compile_pattern", "local_registry", "pattern_error"]

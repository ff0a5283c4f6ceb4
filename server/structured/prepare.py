"""One call for the server's first two steps: validate the schema, bound it, list what to check."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from server.structured.bounds import bound_schema
from server.structured.errors import SchemaRefusedError, UnboundableSchema
from server.structured.keywords import (
    DEFAULT_MAX_NODES,
    UnenforcedKeyword,
    check_schema,
    find_unenforced,
)
from server.structured.limits import SchemaLimits
from server.structured.safety import check_safety


@dataclass(frozen=True)
class PreparedSchema:
    """A user's schema made ready for the engine."""

    original: dict[str, Any] | bool
    """What the user sent: documents are validated against this one."""
    bounded: dict[str, Any]
    """What the engine gets (and the compile guard checks): a finite outlines grammar; for a
    schema only a fallback engine decodes, unbounded (`unbounded`), the original itself."""
    unenforced: tuple[UnenforcedKeyword, ...]
    """Keywords of `original` the grammar does not enforce."""

    @classmethod
    def unbounded(cls, schema: dict[str, Any]) -> PreparedSchema:
        """A schema bounding refused, as a fallback engine decodes it: unchanged."""
        return cls(schema, schema, ())

    @property
    def needs_validation(self) -> bool:
        """Whether a decoded document can violate `original` (validate it anyway: it is cheap)."""
        return bool(self.unenforced)

    @property
    def unenforced_names(self) -> list[str]:
        return sorted({item.keyword for item in self.unenforced})


def prepare_schema(
    schema: Any, limits: SchemaLimits | None = None, max_nodes: int = DEFAULT_MAX_NODES
) -> PreparedSchema:
    """Check, bound and inspect a schema; raises `SchemaRefusedError` (answer 422 with it).

    A schema whose validation could fetch, hang or overflow is refused (`check_safety`); one
    that is valid and safe but cannot be bounded raises `UnboundableSchema`."""
    check_schema(schema, max_nodes=max_nodes)
    limits = limits or SchemaLimits()
    check_safety(schema, limits)
    try:
        bounded = bound_schema(schema, limits)
    except SchemaRefusedError as exc:
        raise UnboundableSchema(exc.reason, exc.message) from exc
    return PreparedSchema(schema, bounded, tuple(find_unenforced(schema, limits)))

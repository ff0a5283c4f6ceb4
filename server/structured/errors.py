"""Why a schema is refused before it reaches the engine: one exception, one reason code."""

from __future__ import annotations

from enum import StrEnum


class RefusalReason(StrEnum):
    """Machine-readable cause of a refusal, stable enough for metrics labels and API bodies."""

    INVALID_SCHEMA = "invalid_schema"
    """Not a JSON Schema the validator or outlines can read (bad `$ref`, bad regex, ...)."""
    UNSUPPORTED = "unsupported"
    """A construct the outlines grammar cannot express (lookaround, `allOf` it cannot merge...)."""
    UNSATISFIABLE = "unsatisfiable"
    """No document can satisfy the schema (minLength > maxLength, required but forbidden...)."""
    UNBOUNDED = "unbounded"
    """The language stays infinite after bounding (free-form object keys, by policy)."""
    TOO_LARGE = "too_large"
    """More subschemas or enum values than `SchemaLimits` allows."""
    TOO_DEEP = "too_deep"
    """Nesting deeper than `SchemaLimits.max_depth`."""
    TIMEOUT = "timeout"
    """Compiling the grammar took longer than the guard's time limit."""
    MEMORY = "memory"
    """Compiling the grammar needed more memory than the guard's limit."""
    CRASHED = "crashed"
    """The compile worker died for another reason."""


class SchemaRefusedError(ValueError):
    """A schema the server will not send to the engine; `str(exc)` is safe to show to a client."""

    def __init__(self, reason: RefusalReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __reduce__(self) -> tuple[type[SchemaRefusedError], tuple[RefusalReason, str]]:
        return (type(self), (self.reason, self.message))


class UnboundableSchema(SchemaRefusedError):
    """A valid, safe schema that bounding cannot turn into a finite outlines grammar; a fallback
    grammar engine may still decode it (reasons `UNSUPPORTED`, `UNBOUNDED`)."""

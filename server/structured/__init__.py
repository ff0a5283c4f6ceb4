"""Structured outputs made safe before they reach vLLM: bound, budget, police, compile-guard.

The server's path for a request with a JSON Schema:

1-2. `prepare_schema(schema, limits)` (= `check_schema`, `bound_schema`, `find_unenforced`):
   refuse invalid or unboundable schemas (422); `.bounded` is what the engine gets.
3. `await guard.check(bounded)`: compile it in a sandboxed worker (timeout, memory limit);
   refused -> 422 with `verdict.reason`; accepted -> `verdict.budget.max_tokens` is what a
   complete document can need: `max_tokens` below it -> 422 stating the budget.
   Use the verdict's budget, computed in the sandbox: `document_budget` in-process parses the
   whole regex, which for a large schema is itself slow.
4. Generate with the bounded schema; then `validate_document(schema, text)` against the user's
   original schema (always cheap; required when `.needs_validation`), retrying a bounded
   number of times or answering 422 listing `.unenforced_names`.

Imports are lazy so the compile worker process starts without pydantic or jsonschema.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from server.structured.bounds import bound_schema
    from server.structured.budget import (
        DocumentBudget,
        document_budget,
        max_document_chars,
        regex_budget,
        regex_for_schema,
    )
    from server.structured.compile_guard import CompileGuard, CompileVerdict, schema_digest
    from server.structured.errors import RefusalReason, SchemaRefusedError
    from server.structured.keywords import (
        UnenforcedKeyword,
        ValidationOutcome,
        check_schema,
        find_unenforced,
        unenforced_keywords,
        validate_document,
    )
    from server.structured.limits import SchemaLimits
    from server.structured.prepare import PreparedSchema, prepare_schema

_EXPORTS = {
    "bound_schema": "bounds",
    "DocumentBudget": "budget",
    "document_budget": "budget",
    "max_document_chars": "budget",
    "regex_budget": "budget",
    "regex_for_schema": "budget",
    "CompileGuard": "compile_guard",
    "CompileVerdict": "compile_guard",
    "schema_digest": "compile_guard",
    "RefusalReason": "errors",
    "SchemaRefusedError": "errors",
    "UnenforcedKeyword": "keywords",
    "ValidationOutcome": "keywords",
    "check_schema": "keywords",
    "find_unenforced": "keywords",
    "unenforced_keywords": "keywords",
    "validate_document": "keywords",
    "SchemaLimits": "limits",
    "PreparedSchema": "prepare",
    "prepare_schema": "prepare",
}
__all__ = [
    "CompileGuard",
    "CompileVerdict",
    "DocumentBudget",
    "PreparedSchema",
    "RefusalReason",
    "SchemaLimits",
    "SchemaRefusedError",
    "UnenforcedKeyword",
    "ValidationOutcome",
    "bound_schema",
    "check_schema",
    "document_budget",
    "find_unenforced",
    "max_document_chars",
    "prepare_schema",
    "regex_budget",
    "regex_for_schema",
    "schema_digest",
    "unenforced_keywords",
    "validate_document",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value

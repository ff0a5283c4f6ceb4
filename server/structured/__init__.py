"""Structured outputs made safe before they reach vLLM: bound, budget, police, compile-guard.

The server's path for a request with a JSON Schema:

1-2. `prepare_schema(schema, limits)` (= `check_schema`, `bound_schema`, `find_unenforced`):
   refuse invalid or unboundable schemas (422), and those whose validation could fetch, hang
   or overflow (`check_safety`: non-local `$ref`s, non-RE2 patterns, exponential `$ref`
   fan-out, out-of-range numbers); `.bounded` is what the engine gets.
3. `await guard.check(bounded)`: compile it in a sandboxed worker (timeout, memory limit);
   refused -> `guard.check(schema, fallback)` asks whether the fallback grammar engine
   compiles it (`engine_extension`), else 422 with `verdict.reason`; accepted ->
   `verdict.budget.max_tokens` is what a complete document can need: `max_tokens` below it
   is served budget-aware down to `guard.min_tokens(bounded)` (`completions`), 422 below.
   Use the verdict's budget, computed in the sandbox: `document_budget` in-process parses the
   whole regex, which for a large schema is itself slow.
4. Generate with the bounded schema; then `await validation_guard.validate(schema, text)`
   against the user's original schema (`validate_document` in a killable worker: RE2, no
   retrieval, deadline; required when `.needs_validation`), retrying a bounded number of
   times or answering 422 listing `.unenforced_names`.

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
    from server.structured.errors import RefusalReason, SchemaRefusedError, UnboundableSchema
    from server.structured.keywords import (
        UnenforcedKeyword,
        check_schema,
        find_unenforced,
        unenforced_keywords,
    )
    from server.structured.limits import SchemaLimits
    from server.structured.prepare import PreparedSchema, prepare_schema
    from server.structured.safety import check_safety
    from server.structured.validation import (
        ValidationGuard,
        ValidationOutcome,
        validate_document,
    )
    from server.structured.workers import WorkersBusy

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
    "UnboundableSchema": "errors",
    "UnenforcedKeyword": "keywords",
    "check_schema": "keywords",
    "find_unenforced": "keywords",
    "unenforced_keywords": "keywords",
    "SchemaLimits": "limits",
    "PreparedSchema": "prepare",
    "prepare_schema": "prepare",
    "check_safety": "safety",
    "ValidationGuard": "validation",
    "ValidationOutcome": "validation",
    "validate_document": "validation",
    "WorkersBusy": "workers",
}
__all__ = [
    "CompileGuard",
    "CompileVerdict",
    "DocumentBudget",
    "PreparedSchema",
    "RefusalReason",
    "SchemaLimits",
    "SchemaRefusedError",
    "UnboundableSchema",
    "UnenforcedKeyword",
    "ValidationGuard",
    "ValidationOutcome",
    "WorkersBusy",
    "bound_schema",
    "check_safety",
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

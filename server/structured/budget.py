"""The document budget (`adapters.document_budget`) with the server's refusals.

A grammar that cannot be measured is a schema the server refuses: `BudgetError` becomes
`SchemaRefusedError` with the same reason and message.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, ParamSpec, TypeVar

from adapters import document_budget as _budget
from adapters.document_budget import BudgetError, DocumentBudget
from server.structured.errors import RefusalReason, SchemaRefusedError

__all__ = [
    "DocumentBudget",
    "document_budget",
    "max_document_chars",
    "regex_budget",
    "regex_for_schema",
]

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _refusing(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    @wraps(fn)
    def call(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return fn(*args, **kwargs)
        except BudgetError as exc:
            raise SchemaRefusedError(RefusalReason(exc.problem), exc.message) from exc

    return call


regex_for_schema: Callable[[dict[str, Any]], str] = _refusing(_budget.regex_for_schema)
regex_budget: Callable[[str], DocumentBudget] = _refusing(_budget.regex_budget)
document_budget: Callable[[dict[str, Any]], DocumentBudget] = _refusing(_budget.document_budget)
max_document_chars: Callable[[dict[str, Any]], int | None] = _refusing(_budget.max_document_chars)

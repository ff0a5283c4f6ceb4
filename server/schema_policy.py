"""The structured-output promise on the request path: every schema is bounded and compiled in
the sandbox before the engine sees it, every document fits its token budget, and every answer
validates against the user's own schema or is an error.

`SchemaPolicy.admit` runs before generation (refusals and budget problems are 422s);
`SchemaPolicy.judge` runs after it, against the ORIGINAL schema (the engine got the bounded one),
in the validation guard's killable workers: a validation over its deadline is a 422, never a
stalled server. Either sandbox with too many calls waiting answers 429 (`QueueFull`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Protocol

from server.errors import EngineUnavailable, InvalidRequest, PromptTooLong, QueueFull
from server.structured import (
    CompileVerdict,
    PreparedSchema,
    RefusalReason,
    SchemaLimits,
    SchemaRefusedError,
    ValidationOutcome,
    WorkersBusy,
    prepare_schema,
    validate_document,
)

DEFAULT_MAX_RETRIES = 2
RETRY_MIN_TEMPERATURE = 0.7
"""Temperature of a retry when the request asked for less (a greedy retry repeats itself)."""


class SchemaRefused(InvalidRequest):
    """The schema cannot be served safely (invalid, unsupported, too large, too slow to compile)."""

    code = "schema_refused"


class SchemaBudgetTooSmall(InvalidRequest):
    """`max_tokens` is below the longest document the schema allows: it could be cut short."""

    code = "schema_budget"


class SchemaViolation(InvalidRequest):
    """The document still failed the schema after the retries (unenforced keywords)."""

    code = "schema_violation"


class SchemaValidationRefused(InvalidRequest):
    """Validating the document exceeded the validation sandbox's time or memory limit."""

    code = "schema_validation_limit"


class CompileChecker(Protocol):
    """What the policy needs of `server.structured.CompileGuard`."""

    async def check(self, schema: Any) -> CompileVerdict: ...


class DocumentValidator(Protocol):
    """What the policy needs of `server.structured.ValidationGuard`."""

    async def validate(self, schema: dict[str, Any] | bool, text: str) -> ValidationOutcome: ...


@dataclass(frozen=True)
class AdmittedSchema:
    """A schema that passed every check: what the engine gets and what a document may cost."""

    prepared: PreparedSchema
    max_tokens: int | None
    """Tokens the longest valid document can need (end-of-sequence included); None: unknown."""

    @property
    def original(self) -> dict[str, Any] | bool:
        return self.prepared.original

    @property
    def bounded(self) -> dict[str, Any]:
        return self.prepared.bounded


class SchemaPolicy:
    """Bounds, compile-checks, budgets and validates the JSON Schemas of requests."""

    def __init__(
        self,
        guard: CompileChecker | None,
        limits: SchemaLimits | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        validator: DocumentValidator | None = None,
    ) -> None:
        """`guard=None` bounds and validates but neither compiles nor budgets;
        `validator=None` validates in a thread without a deadline (both: tests only)."""
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self._guard = guard
        self._validator = validator
        self.limits = limits or SchemaLimits()
        self.max_retries = max_retries

    async def admit(self, schema: Any) -> AdmittedSchema:
        """Bound and compile `schema`; raises `SchemaRefused` (422) naming the reason, or
        `EngineUnavailable` (503) when the compile sandbox cannot answer now."""
        try:
            prepared = prepare_schema(schema, self.limits)
        except SchemaRefusedError as exc:
            raise SchemaRefused(_refusal_message(exc.reason, exc.message)) from exc
        if self._guard is None:
            return AdmittedSchema(prepared, None)
        try:
            verdict = await self._guard.check(prepared.bounded)
        except WorkersBusy as exc:
            raise QueueFull(f"Too many schemas are being checked: {exc}.") from exc
        except RuntimeError as exc:  # the guard is closed or cannot start a worker
            raise EngineUnavailable(f"Schemas cannot be checked right now: {exc}") from exc
        if not verdict.ok:
            reason = verdict.reason or RefusalReason.CRASHED
            message = _refusal_message(reason, verdict.message)
            if verdict.transient:  # the machine was busy, not the schema too costly
                raise EngineUnavailable(f"{message}; retry shortly.")
            raise SchemaRefused(message)
        budget = verdict.budget.max_tokens if verdict.budget is not None else None
        return AdmittedSchema(prepared, budget)

    @staticmethod
    def max_tokens(
        admitted: AdmittedSchema, requested: int | None, room: int, context: int
    ) -> int | None:
        """The max_tokens a request with this schema runs with, so that no valid document is
        cut: the budget when the request leaves it unset, the request's own when it is enough.
        None: no budget is known (decide as for any request)."""
        budget = admitted.max_tokens
        if budget is None:
            return None
        if requested is not None:
            if requested < budget:
                raise SchemaBudgetTooSmall(
                    f"max_tokens={requested} is below the {budget} tokens the longest document "
                    "the JSON Schema allows can need; raise max_tokens to at least "
                    f"{budget}, leave it unset, or tighten the schema (maxLength, maxItems)."
                )
            return requested
        if budget > room:
            raise PromptTooLong(
                f"The longest document the JSON Schema allows can need {budget} tokens, but the "
                f"prompt leaves {room} of the context of {context}; shorten the prompt or "
                "tighten the schema (maxLength, maxItems)."
            )
        return budget

    async def judge(self, admitted: AdmittedSchema, text: str) -> ValidationOutcome:
        """Validate a generated document against the user's original schema, off the event
        loop; raises `SchemaValidationRefused` (422) when validation exceeds the sandbox's
        limits, `QueueFull` (429) when too many validations wait, `EngineUnavailable` (503)
        when the sandbox cannot run."""
        if self._validator is None:
            return await asyncio.to_thread(validate_document, admitted.original, text)
        try:
            return await self._validator.validate(admitted.original, text)
        except SchemaRefusedError as exc:
            raise SchemaValidationRefused(
                f"The generated document could not be checked against the JSON Schema: "
                f"{exc.message}; simplify the schema."
            ) from exc
        except WorkersBusy as exc:
            raise QueueFull(f"Too many documents are being validated: {exc}.") from exc
        except RuntimeError as exc:  # the validation guard is closed or cannot start a worker
            raise EngineUnavailable(f"Documents cannot be validated right now: {exc}") from exc

    @staticmethod
    def violation(
        admitted: AdmittedSchema, outcome: ValidationOutcome, attempts: int
    ) -> SchemaViolation:
        """The error answered when the last attempt still fails the schema."""
        names = admitted.prepared.unenforced_names
        enforced = (
            f"the decoder does not enforce {', '.join(names)}"
            if names
            else "the decoder enforces every keyword of it"
        )
        return SchemaViolation(
            f"The generated document does not validate against the JSON Schema after "
            f"{attempts} attempt(s) ({enforced}): {'; '.join(outcome.errors)}"
        )


def _refusal_message(reason: RefusalReason, message: str) -> str:
    if reason is RefusalReason.INVALID_SCHEMA:
        return f"The JSON Schema is invalid: {message}"
    return f"The JSON Schema is refused ({reason.value}): {message}"

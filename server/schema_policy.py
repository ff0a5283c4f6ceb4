"""The structured-output promise on the request path: every schema is bounded and compiled in
the sandbox before the engine sees it, every document fits its token budget (the longest
document's, or a client's smaller max_tokens that the engine then closes the document within),
and every answer validates against the user's own schema or is an error.

`SchemaPolicy.admit` runs before generation (refusals and budget problems are 422s);
`SchemaPolicy.judge` runs after it, against the ORIGINAL schema (the engine got the bounded one),
in the validation guard's killable workers: a validation over its deadline is a 422, never a
stalled server. Either sandbox with too many calls waiting answers 429 (`QueueFull`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from adapters.errors import AdapterRejected
from adapters.validation import SchemaCheck
from server.errors import EngineUnavailable, HotswapError, InvalidRequest, PromptTooLong, QueueFull
from server.structured import (
    CompileVerdict,
    PreparedSchema,
    RefusalReason,
    SchemaLimits,
    SchemaRefusedError,
    UnboundableSchema,
    ValidationOutcome,
    WorkersBusy,
    prepare_schema,
    validate_document,
)
from server.structured.engine_extension import FallbackEngine

DEFAULT_MAX_RETRIES = 2
DEFAULT_BUDGET_MAX_GRAMMAR_MB = 64
RETRY_MIN_TEMPERATURE = 0.7
FALLBACK_REASONS = frozenset(
    {
        RefusalReason.UNSUPPORTED,
        RefusalReason.UNBOUNDED,
        RefusalReason.TIMEOUT,
        RefusalReason.MEMORY,
    }
)
"""Refusals of outlines (by bounding or compilation) that a fallback grammar engine may serve."""
"""Temperature of a retry when the request asked for less (a greedy retry repeats itself)."""


class SchemaRefused(InvalidRequest):
    """The schema cannot be served safely (invalid, unsupported, too large, too slow to compile)."""

    code = "schema_refused"


class SchemaBudgetTooSmall(InvalidRequest):
    """`max_tokens` is below what a document of the schema needs (the shortest one, or the
    longest one when the engine cannot decode budget-aware)."""

    code = "schema_budget"


class SchemaViolation(InvalidRequest):
    """The document still failed the schema after the retries (unenforced keywords)."""

    code = "schema_violation"


class SchemaValidationRefused(InvalidRequest):
    """Validating the document exceeded the validation sandbox's time or memory limit."""

    code = "schema_validation_limit"


class CompileChecker(Protocol):
    """What the policy needs of `server.structured.CompileGuard`."""

    async def check(
        self, schema: Any, fallback: FallbackEngine | None = None
    ) -> CompileVerdict: ...

    async def min_tokens(self, schema: Any) -> int | None: ...


@dataclass(frozen=True)
class TokenPlan:
    """How many tokens a request with a schema may generate, and how."""

    max_tokens: int
    budget_aware: bool
    """The engine closes the document within `max_tokens` (`structured.engine_extension`)."""


class DocumentValidator(Protocol):
    """What the policy needs of `server.structured.ValidationGuard`."""

    async def validate(self, schema: dict[str, Any] | bool, text: str) -> ValidationOutcome: ...


@dataclass(frozen=True)
class AdmittedSchema:
    """A schema that passed every check: what the engine gets and what a document may cost."""

    prepared: PreparedSchema
    max_tokens: int | None
    """Tokens the longest valid document can need (end-of-sequence included); None: unknown."""
    grammar_bytes: int | None = None
    """Size of the compiled token index (serialized); None: not compiled."""
    fallback: FallbackEngine | None = None
    """The grammar engine that decodes it when outlines cannot (None: outlines)."""

    @property
    def grammar_engine(self) -> str:
        """The grammar engine that decodes it, as metrics and responses name it."""
        return self.fallback or "outlines"

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
        budget_decoding: bool = True,
        budget_max_grammar_mb: int = DEFAULT_BUDGET_MAX_GRAMMAR_MB,
        fallback: FallbackEngine | None = None,
    ) -> None:
        """`guard=None` bounds and validates but neither compiles nor budgets;
        `validator=None` validates in a thread without a deadline (both: tests only).
        `budget_decoding`: the engine can close documents within a smaller max_tokens (the
        outlines backend), for grammars up to `budget_max_grammar_mb` of index.
        `fallback`: the grammar engine for schemas outlines cannot compile within the limits or
        express (None: those are refused)."""
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self._guard = guard
        self._validator = validator
        self.limits = limits or SchemaLimits()
        self.max_retries = max_retries
        self.budget_decoding = budget_decoding
        self.budget_max_grammar_mb = budget_max_grammar_mb
        self.fallback = fallback

    async def admit(self, schema: Any) -> AdmittedSchema:
        """Bound and compile `schema`; raises `SchemaRefused` (422) naming the reason, or
        `EngineUnavailable` (503) when the compile sandbox cannot answer now."""
        try:
            prepared = prepare_schema(schema, self.limits)
        except UnboundableSchema as exc:
            refusal = _refusal_message(exc.reason, exc.message)
            if exc.reason not in FALLBACK_REASONS or self._guard is None:
                raise SchemaRefused(refusal) from exc
            return await self._admit_fallback(PreparedSchema.unbounded(schema), refusal)
        except SchemaRefusedError as exc:
            raise SchemaRefused(_refusal_message(exc.reason, exc.message)) from exc
        if self._guard is None:
            return AdmittedSchema(prepared, None)
        verdict = await self._check(prepared.bounded, None)
        if verdict.ok:
            budget = verdict.budget.max_tokens if verdict.budget is not None else None
            return AdmittedSchema(prepared, budget, verdict.grammar_bytes)
        if verdict.reason in FALLBACK_REASONS:
            return await self._admit_fallback(prepared, self._refusal(verdict))
        raise SchemaRefused(self._refusal(verdict))

    async def _admit_fallback(self, prepared: PreparedSchema, refusal: str) -> AdmittedSchema:
        """Admit a schema outlines cannot serve for the fallback engine, or refuse it with both
        reasons."""
        if self.fallback is None:
            raise SchemaRefused(refusal)
        verdict = await self._check(prepared.bounded, self.fallback)
        if not verdict.ok:
            raise SchemaRefused(f"{refusal}; and {verdict.message}")
        budget = verdict.budget.max_tokens if verdict.budget is not None else None
        return AdmittedSchema(prepared, budget, None, self.fallback)

    async def _check(self, schema: Any, fallback: FallbackEngine | None) -> CompileVerdict:
        """The compile guard's verdict; a busy or broken sandbox is a 429 or a 503."""
        assert self._guard is not None
        with _sandbox_errors():
            verdict = await self._guard.check(schema, fallback)
        if not verdict.ok and verdict.transient:  # the machine was busy, not the schema
            raise EngineUnavailable(f"{self._refusal(verdict)}; retry shortly.")
        return verdict

    @staticmethod
    def _refusal(verdict: CompileVerdict) -> str:
        return _refusal_message(verdict.reason or RefusalReason.CRASHED, verdict.message)

    async def token_plan(
        self, admitted: AdmittedSchema, requested: int | None, room: int, context: int
    ) -> TokenPlan | None:
        """The max_tokens a request with this schema runs with, and whether the engine must
        close the document within it (budget-aware decoding). None: no budget is known
        (decide as for any request).

        At or above the longest document's need, nothing can be cut. Below it (a client's own
        max_tokens, or a context too short for the longest document), the request is served
        budget-aware when the shortest complete document fits, else refused stating the
        minimum. A fallback engine cannot close a document early: it runs with what there is,
        and a document cut short is refused at once (`violation`'s `cut_at`)."""
        longest = admitted.max_tokens
        if longest is None:
            return None
        if requested is None and longest <= room:
            return TokenPlan(longest, budget_aware=False)
        if requested is not None and requested >= longest:
            return TokenPlan(requested, budget_aware=False)
        limit = requested if requested is not None else room
        if admitted.fallback is not None:
            return TokenPlan(limit, budget_aware=False)
        shortest, why_not = await self._shortest(admitted)
        if shortest is None:
            raise self._too_small(longest, requested, room, context, why_not)
        if limit < shortest:
            where = (
                f"max_tokens={requested} is"
                if requested is not None
                else f"the {room} tokens the prompt leaves of the context of {context} are"
            )
            raise SchemaBudgetTooSmall(
                f"{where} below the {shortest} tokens the shortest document the JSON Schema "
                f"allows needs (end-of-sequence included); raise max_tokens to at least "
                f"{shortest}."
            )
        return TokenPlan(limit, budget_aware=True)

    async def _shortest(self, admitted: AdmittedSchema) -> tuple[int | None, str]:
        """Fewest tokens of a complete document when the engine can decode the schema
        budget-aware; else None and why not."""
        if self._guard is None or not self.budget_decoding:
            return None, "budget-aware decoding needs the outlines backend"
        grammar_bytes = admitted.grammar_bytes
        if grammar_bytes is None or grammar_bytes > self.budget_max_grammar_mb << 20:
            return None, (
                f"its grammar is over the {self.budget_max_grammar_mb} MB that budget-aware "
                "decoding takes"
            )
        with _sandbox_errors():
            shortest = await self._guard.min_tokens(admitted.bounded)
        return shortest, "its shortest document cannot be measured within the compile limits"

    @staticmethod
    def _too_small(
        longest: int, requested: int | None, room: int, context: int, why: str
    ) -> HotswapError:
        """Refusal of a budget below the longest document when the engine cannot close the
        document within it."""
        if requested is None:
            return PromptTooLong(
                f"The longest document the JSON Schema allows can need {longest} tokens, but "
                f"the prompt leaves {room} of the context of {context} ({why}); shorten the "
                "prompt or tighten the schema (maxLength, maxItems)."
            )
        return SchemaBudgetTooSmall(
            f"max_tokens={requested} is below the {longest} tokens the longest document the "
            f"JSON Schema allows can need ({why}); raise max_tokens to at least {longest}, "
            "leave it unset, or tighten the schema (maxLength, maxItems)."
        )

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
        admitted: AdmittedSchema,
        outcome: ValidationOutcome,
        attempts: int = 1,
        cut_at: int | None = None,
    ) -> SchemaViolation:
        """The error answered when the last attempt still fails the schema, or when the
        document was cut at `cut_at` tokens (a grammar that cannot close it early: not
        retried)."""
        if cut_at is not None:
            return SchemaViolation(
                f"The document did not fit in max_tokens={cut_at} ({admitted.grammar_engine} "
                "decodes this schema and cannot close a document early): raise max_tokens or "
                f"tighten the schema (maxLength, maxItems). {'; '.join(outcome.errors)}"
            )
        names = admitted.prepared.unenforced_names
        if admitted.fallback is not None:
            enforced = f"{admitted.fallback} decodes it and may not enforce every keyword"
        elif names:
            enforced = f"the decoder does not enforce {', '.join(names)}"
        else:
            enforced = "the decoder enforces every keyword of it"
        return SchemaViolation(
            f"The generated document does not validate against the JSON Schema after "
            f"{attempts} attempt(s) ({enforced}): {'; '.join(outcome.errors)}"
        )


@contextmanager
def _sandbox_errors() -> Iterator[None]:
    """The compile sandbox busy (429) or unable to run (503), as the request's error."""
    try:
        yield
    except WorkersBusy as exc:
        raise QueueFull(f"Too many schemas are being checked: {exc}.") from exc
    except RuntimeError as exc:  # the guard is closed or cannot start a worker
        raise EngineUnavailable(f"Schemas cannot be checked right now: {exc}") from exc


def _refusal_message(reason: RefusalReason, message: str) -> str:
    if reason is RefusalReason.INVALID_SCHEMA:
        return f"The JSON Schema is invalid: {message}"
    return f"The JSON Schema is refused ({reason.value}): {message}"


def upload_schema_check(policy: SchemaPolicy, loop: asyncio.AbstractEventLoop) -> SchemaCheck:
    """The registry's check of an uploaded adapter's task schema: the policy's own admission
    (bounding, sandboxed compilation, the fallback engine), so an adapter whose every task
    call would be refused is refused at upload instead (`AdapterRejected`, 422, with the
    reason). Runs in the registry's worker thread and waits for the admission on `loop`; a busy
    machine is a 429 or 503 to retry, not a refusal."""

    def check(schema: dict[str, Any]) -> None:
        try:
            asyncio.run_coroutine_threadsafe(policy.admit(schema), loop).result()
        except SchemaRefused as exc:
            raise AdapterRejected(f"task.output_schema: {exc.message}") from exc

    return check

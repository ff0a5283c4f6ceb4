"""The domain call behind every inference route: resolve the model, frame the prompt,
admit its JSON Schema, check the token budget, run it on the engine, validate the answer.
HTTP and gRPC both call this module."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import OrderedDict
from collections.abc import AsyncGenerator, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from server.catalog import ModelCatalog, ServedModel
from server.engine import MAX_SEED, Chunk, Engine, Sampling
from server.errors import HotswapError, InvalidRequest, PromptTooLong, QueueFull
from server.metrics.instruments import SCHEMA_OUTCOMES, UNKNOWN_ADAPTER
from server.metrics.labels import LabelTracker
from server.metrics.requests import RequestRecorder, record_refusal
from server.schema_policy import RETRY_MIN_TEMPERATURE, AdmittedSchema, SchemaPolicy
from server.structured import ValidationOutcome


@dataclass(frozen=True)
class GenerationRequest:
    """One inference request in hotswap's terms. Exactly one input is given: `messages` (chat,
    framed by the chat template), `prompt` (raw text, sent as is) or `task_input` (text framed
    by the adapter's task: its system message and template, and its output schema unless
    `json_schema` is given)."""

    model: str | None
    messages: Sequence[Mapping[str, object]] | None = None
    prompt: str | None = None
    task_input: str | None = None
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: Sequence[str] = field(default_factory=tuple)
    json_schema: dict[str, Any] | None = None
    protocol: str = "http"
    route: str = "generate"


@dataclass(frozen=True)
class PreparedRequest:
    """A request that passed every check and is ready for the engine. Under a schema,
    `sampling.json_schema` is the bounded schema and `schema` holds the user's original."""

    model: ServedModel
    prompt_token_ids: list[int]
    sampling: Sampling
    protocol: str
    route: str
    schema: AdmittedSchema | None = None


@dataclass
class GenerationResult:
    """What a request produced; filled in as its stream runs."""

    model: ServedModel
    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    output: Any = None
    valid: bool | None = None


class GenerationService:
    """Turns `GenerationRequest`s into engine runs."""

    # A prompt longer than this many characters per token of the context is refused before it
    # is tokenized. Tokens of English text average about 4 characters; 16 leaves room for
    # long ones (runs of spaces, code indentation) and still bounds tokenizing to milliseconds.
    PROMPT_CHARS_PER_TOKEN = 16
    # Model references remembered for the adapter label of their refusals (least recent out).
    REMEMBERED_REFS = 1024

    def __init__(
        self,
        engine: Engine,
        catalog: ModelCatalog,
        max_model_len: int,
        default_max_tokens: int,
        max_in_flight: int,
        labels: LabelTracker,
        schemas: SchemaPolicy | None = None,
        max_prompt_chars: int | None = None,
    ) -> None:
        """`schemas` admits and judges JSON Schemas; the default bounds and validates them but
        runs no compile guard (the server always passes one built on its guard).
        `max_prompt_chars` unset: `PROMPT_CHARS_PER_TOKEN` per token of `max_model_len`."""
        self._engine = engine
        self._schemas = schemas if schemas is not None else SchemaPolicy(None)
        self._catalog = catalog
        self._max_model_len = max_model_len
        self._max_prompt_chars = max_prompt_chars or self.PROMPT_CHARS_PER_TOKEN * max_model_len
        self._default_max_tokens = default_max_tokens
        self._max_in_flight = max_in_flight
        self._in_flight = 0
        self._labels = labels
        # model references that resolved -> the adapter label their metrics carry
        self._metric_names: OrderedDict[str | None, str] = OrderedDict({None: catalog.base.name})

    async def prepare(self, request: GenerationRequest) -> PreparedRequest:
        """Resolve, frame, admit the schema of and budget a request; raises a `HotswapError`
        naming the problem (and counts the refusal). A schema is bounded and compiled in the
        sandbox here, before the engine sees it; with one, `max_tokens` is at least what its
        longest document needs (unset: exactly that), so a document is never cut."""
        try:
            if self._in_flight >= self._max_in_flight:
                raise QueueFull(
                    f"{self._in_flight} requests are in flight, the limit is "
                    f"{self._max_in_flight}; retry later."
                )
            self._in_flight += 1  # a request being prepared (in worker threads) counts too
            try:
                return await self._prepare(request)
            finally:
                self._in_flight -= 1
        except HotswapError as exc:
            adapter = self._metric_names.get(request.model, UNKNOWN_ADAPTER)
            record_refusal(adapter, request.protocol, request.route, exc.code)
            raise

    async def _prepare(self, request: GenerationRequest) -> PreparedRequest:
        self._check_length(request)
        # The registry is a database and tokenizing takes CPU time: both run off the loop.
        model = await asyncio.to_thread(self._catalog.resolve, request.model)
        self._remember(request.model, model.name)
        schema = request.json_schema
        messages = request.messages
        if request.task_input is not None:
            task = model.task
            messages = (
                task.render_messages(request.task_input)
                if task is not None
                else [{"role": "user", "content": request.task_input}]
            )
            if schema is None and task is not None:
                schema = task.output_schema
        if messages is not None:
            prompt_ids = await asyncio.to_thread(self._engine.render_chat, messages)
        elif request.prompt is not None:
            prompt_ids = await asyncio.to_thread(self._engine.tokenize, request.prompt)
        else:
            raise InvalidRequest("The request has no input.")
        if not prompt_ids:
            raise InvalidRequest("The prompt is empty.")
        admitted: AdmittedSchema | None = None
        if schema is not None:
            try:
                admitted = await self._schemas.admit(schema)
            except InvalidRequest:
                SCHEMA_OUTCOMES.labels(model.name, "refused").inc()
                raise
        max_tokens = self._budget(len(prompt_ids), request.max_tokens, admitted, model.name)
        sampling = Sampling(
            max_tokens=max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            seed=request.seed,
            stop=tuple(request.stop),
            json_schema=admitted.bounded if admitted is not None else None,
        )
        return PreparedRequest(
            model=model,
            prompt_token_ids=prompt_ids,
            sampling=sampling,
            protocol=request.protocol,
            route=request.route,
            schema=admitted,
        )

    def _check_length(self, request: GenerationRequest) -> None:
        """Refuse a prompt over `max_prompt_chars` characters, before any work on it."""
        if request.messages is not None:
            field, chars = "messages", sum(len(str(m.get("content", ""))) for m in request.messages)
        elif request.prompt is not None:
            field, chars = "prompt", len(request.prompt)
        elif request.task_input is not None:
            field, chars = "input", len(request.task_input)
        else:
            return
        if chars > self._max_prompt_chars:
            raise PromptTooLong(
                f"`{field}` is {chars} characters long, over the limit of "
                f"{self._max_prompt_chars} characters."
            )

    def _remember(self, ref: str | None, name: str) -> None:
        """Remember that `ref` names the adapter `name`, forgetting the least recent ref past
        `REMEMBERED_REFS` (a caller can spell one adapter in many ways)."""
        self._metric_names[ref] = name
        self._metric_names.move_to_end(ref)
        if len(self._metric_names) > self.REMEMBERED_REFS:
            self._metric_names.popitem(last=False)

    def _budget(
        self,
        prompt_tokens: int,
        max_tokens: int | None,
        admitted: AdmittedSchema | None = None,
        adapter: str = "",
    ) -> int:
        limit = self._max_model_len
        if max_tokens is not None and max_tokens > limit:
            raise InvalidRequest(
                f"max_tokens={max_tokens} exceeds the context length of {limit} tokens."
            )
        room = limit - prompt_tokens
        if room <= 0:
            raise PromptTooLong(
                f"The prompt is {prompt_tokens} tokens, {prompt_tokens - limit + 1} more than "
                f"the context of {limit} tokens leaves room for (at least 1 token to generate)."
            )
        if admitted is not None:
            try:
                needed = self._schemas.max_tokens(admitted, max_tokens, room, limit)
            except HotswapError:
                SCHEMA_OUTCOMES.labels(adapter, "refused").inc()
                raise
            if needed is not None and max_tokens is None:
                return needed
        if max_tokens is None:
            return min(self._default_max_tokens, room)
        if max_tokens > room:
            raise PromptTooLong(
                f"The prompt ({prompt_tokens} tokens) plus max_tokens ({max_tokens}) is "
                f"{prompt_tokens + max_tokens - limit} tokens over the context of {limit}."
            )
        return max_tokens

    async def stream(
        self, prepared: PreparedRequest, request_id: str, result: GenerationResult | None = None
    ) -> AsyncGenerator[Chunk, None]:
        """The engine's chunks as they come; closing the iterator aborts the request. When the
        stream ends, `result` (if given) holds the whole text, parsed and validated; under a
        schema, a document that fails it raises `SchemaViolation` after the last chunk (text
        already sent cannot be retried: `complete` retries)."""
        result = result if result is not None else GenerationResult(model=prepared.model)
        async with aclosing(self._attempt(prepared, request_id, result)) as chunks:
            async for chunk in chunks:
                yield chunk
        outcome = await self._judge(prepared, result, retrying=False)
        if outcome is not None and not outcome.valid and prepared.schema is not None:
            raise self._schemas.violation(prepared.schema, outcome, attempts=1)

    async def complete(self, prepared: PreparedRequest, request_id: str) -> GenerationResult:
        """Run to the end and return the whole text. Under a schema the document validates
        against the user's schema: one that does not is generated again (up to the policy's
        `max_retries`, another seed, temperature > 0, counted `retried`); the last failure
        raises `SchemaViolation`. Usage counts the returned attempt only."""
        retries = self._schemas.max_retries if prepared.schema is not None else 0
        for attempt in range(retries + 1):
            run = prepared if attempt == 0 else _retry(prepared, attempt)
            result = GenerationResult(model=prepared.model)
            run_id = request_id if attempt == 0 else f"{request_id}-retry{attempt}"
            async with aclosing(self._attempt(run, run_id, result)) as chunks:
                async for _ in chunks:
                    pass
            outcome = await self._judge(prepared, result, retrying=attempt < retries)
            if outcome is None or outcome.valid:
                return result
        assert prepared.schema is not None and outcome is not None
        raise self._schemas.violation(prepared.schema, outcome, attempts=retries + 1)

    async def _attempt(
        self, prepared: PreparedRequest, request_id: str, result: GenerationResult
    ) -> AsyncGenerator[Chunk, None]:
        """One engine run; fills in `result` (text, counts) as it goes."""
        result.prompt_tokens = len(prepared.prompt_token_ids)
        model = prepared.model
        recorder = RequestRecorder(
            model.name, str(model.version or ""), prepared.protocol, prepared.route
        )
        parts: list[str] = []
        status = "aborted"
        self._in_flight += 1
        try:
            async for chunk in self._engine.generate(
                prepared.prompt_token_ids, prepared.sampling, request_id, model.lora
            ):
                recorder.token(chunk.completion_tokens)
                parts.append(chunk.text)
                result.completion_tokens = chunk.completion_tokens
                result.finish_reason = chunk.finish_reason
                yield chunk
            status = "ok"
        except HotswapError as exc:
            status = exc.code
            raise
        finally:
            self._in_flight -= 1
            recorder.finish(status, result.prompt_tokens, result.completion_tokens)
        result.text = "".join(parts)

    async def _judge(
        self, prepared: PreparedRequest, result: GenerationResult, retrying: bool
    ) -> ValidationOutcome | None:
        """Validate the output against the user's original schema; count its outcome (an
        invalid one about to be retried counts as `retried`) and its labels. It runs in the
        policy's validation sandbox, off the event loop."""
        admitted = prepared.schema
        if admitted is None:
            return None
        outcome = await self._schemas.judge(admitted, result.text)
        result.output, result.valid = outcome.document, outcome.valid
        name = prepared.model.name
        if outcome.valid:
            SCHEMA_OUTCOMES.labels(name, "valid").inc()
            self._labels.observe(name, prepared.model.task, result.output)
        else:
            SCHEMA_OUTCOMES.labels(name, "retried" if retrying else "invalid").inc()
        return outcome


def _retry(prepared: PreparedRequest, attempt: int) -> PreparedRequest:
    """The same request with another seed and a temperature that lets it differ."""
    sampling = prepared.sampling
    retry = dataclasses.replace(
        sampling,
        seed=((sampling.seed or 0) + attempt) % (MAX_SEED + 1),
        temperature=max(sampling.temperature, RETRY_MIN_TEMPERATURE),
    )
    return dataclasses.replace(prepared, sampling=retry)

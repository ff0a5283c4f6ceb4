"""The domain call behind every inference route: resolve the model, frame the prompt,
check the token budget, run it on the engine. HTTP and gRPC both call this module."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from server.catalog import ModelCatalog, ServedModel
from server.engine import Chunk, Engine, Sampling
from server.errors import HotswapError, InvalidRequest, PromptTooLong, QueueFull
from server.metrics.instruments import SCHEMA_OUTCOMES, UNKNOWN_ADAPTER
from server.metrics.labels import LabelTracker
from server.metrics.requests import RequestRecorder, record_refusal


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
    """A request that passed every check and is ready for the engine."""

    model: ServedModel
    prompt_token_ids: list[int]
    sampling: Sampling
    protocol: str
    route: str


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

    def __init__(
        self,
        engine: Engine,
        catalog: ModelCatalog,
        max_model_len: int,
        default_max_tokens: int,
        max_in_flight: int,
        labels: LabelTracker,
    ) -> None:
        self._engine = engine
        self._catalog = catalog
        self._max_model_len = max_model_len
        self._default_max_tokens = default_max_tokens
        self._max_in_flight = max_in_flight
        self._in_flight = 0
        self._labels = labels
        # model references that resolved once -> the adapter label their metrics carry
        self._metric_names: dict[str | None, str] = {None: catalog.base.name}

    def prepare(self, request: GenerationRequest) -> PreparedRequest:
        """Resolve, frame and budget a request; raises a `HotswapError` naming the problem
        (and counts the refusal)."""
        try:
            return self._prepare(request)
        except HotswapError as exc:
            adapter = self._metric_names.get(request.model, UNKNOWN_ADAPTER)
            record_refusal(adapter, request.protocol, request.route, exc.code)
            raise

    def _prepare(self, request: GenerationRequest) -> PreparedRequest:
        if self._in_flight >= self._max_in_flight:
            raise QueueFull(
                f"{self._in_flight} requests are in flight, the limit is {self._max_in_flight}; "
                "retry later."
            )
        model = self._catalog.resolve(request.model)
        self._metric_names[request.model] = model.name
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
        if schema is not None:
            try:
                _check_schema(schema)
            except InvalidRequest:
                SCHEMA_OUTCOMES.labels(model.name, "refused").inc()
                raise
        if messages is not None:
            prompt_ids = self._engine.render_chat(messages)
        elif request.prompt is not None:
            prompt_ids = self._engine.tokenize(request.prompt)
        else:
            raise InvalidRequest("The request has no input.")
        if not prompt_ids:
            raise InvalidRequest("The prompt is empty.")
        max_tokens = self._budget(len(prompt_ids), request.max_tokens)
        sampling = Sampling(
            max_tokens=max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            seed=request.seed,
            stop=tuple(request.stop),
            json_schema=schema,
        )
        return PreparedRequest(
            model=model,
            prompt_token_ids=prompt_ids,
            sampling=sampling,
            protocol=request.protocol,
            route=request.route,
        )

    def _budget(self, prompt_tokens: int, max_tokens: int | None) -> int:
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
        stream ends, `result` (if given) holds the whole text, parsed and validated."""
        result = result if result is not None else GenerationResult(model=prepared.model)
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
        self._judge(prepared, result)

    def _judge(self, prepared: PreparedRequest, result: GenerationResult) -> None:
        """Parse and validate the output under a schema; count its outcome and labels."""
        schema = prepared.sampling.json_schema
        if schema is None:
            return
        result.output, result.valid = _parse_output(result.text, schema)
        outcome = "valid" if result.valid else "invalid"
        SCHEMA_OUTCOMES.labels(prepared.model.name, outcome).inc()
        if result.valid:
            self._labels.observe(prepared.model.name, prepared.model.task, result.output)

    async def complete(self, prepared: PreparedRequest, request_id: str) -> GenerationResult:
        """Run to the end and return the whole text (parsed and validated under a schema)."""
        result = GenerationResult(model=prepared.model)
        async for _ in self.stream(prepared, request_id, result):
            pass
        return result


def _check_schema(schema: dict[str, Any]) -> None:
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise InvalidRequest(f"The JSON Schema is invalid: {exc.message}") from exc


def _parse_output(text: str, schema: dict[str, Any]) -> tuple[Any, bool]:
    """(parsed document or None, whether it validates against `schema`)."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        return None, False
    validator = jsonschema.validators.validator_for(schema)(schema)
    return document, validator.is_valid(document)

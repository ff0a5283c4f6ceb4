"""The domain call behind every inference route: resolve the model, frame the prompt,
check the token budget, run it on the engine. HTTP and gRPC both call this module."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from server.catalog import ModelCatalog, ServedModel
from server.engine import Chunk, Engine, Sampling
from server.errors import InvalidRequest, PromptTooLong


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


@dataclass(frozen=True)
class PreparedRequest:
    """A request that passed every check and is ready for the engine."""

    model: ServedModel
    prompt_token_ids: list[int]
    sampling: Sampling


@dataclass(frozen=True)
class GenerationResult:
    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    model: ServedModel
    output: Any = None
    valid: bool | None = None


class GenerationService:
    """Turns `GenerationRequest`s into engine runs."""

    def __init__(
        self, engine: Engine, catalog: ModelCatalog, max_model_len: int, default_max_tokens: int
    ) -> None:
        self._engine = engine
        self._catalog = catalog
        self._max_model_len = max_model_len
        self._default_max_tokens = default_max_tokens

    def prepare(self, request: GenerationRequest) -> PreparedRequest:
        """Resolve, frame and budget a request; raises a `HotswapError` naming the problem."""
        model = self._catalog.resolve(request.model)
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
            _check_schema(schema)
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
        return PreparedRequest(model=model, prompt_token_ids=prompt_ids, sampling=sampling)

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

    def stream(self, prepared: PreparedRequest, request_id: str) -> AsyncIterator[Chunk]:
        """The engine's chunks as they come; closing the iterator aborts the request."""
        return self._engine.generate(
            prepared.prompt_token_ids, prepared.sampling, request_id, prepared.model.lora
        )

    async def complete(self, prepared: PreparedRequest, request_id: str) -> GenerationResult:
        """Run to the end and return the whole text (parsed and validated under a schema)."""
        parts: list[str] = []
        last: Chunk | None = None
        async for chunk in self.stream(prepared, request_id):
            parts.append(chunk.text)
            last = chunk
        text = "".join(parts)
        output, valid = _parse_output(text, prepared.sampling.json_schema)
        return GenerationResult(
            text=text,
            finish_reason=last.finish_reason if last else None,
            prompt_tokens=len(prepared.prompt_token_ids),
            completion_tokens=last.completion_tokens if last else 0,
            model=prepared.model,
            output=output,
            valid=valid,
        )


def _check_schema(schema: dict[str, Any]) -> None:
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise InvalidRequest(f"The JSON Schema is invalid: {exc.message}") from exc


def _parse_output(text: str, schema: dict[str, Any] | None) -> tuple[Any, bool | None]:
    """(parsed document, valid) under a schema; (None, None) without one."""
    if schema is None:
        return None, None
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        return None, False
    validator = jsonschema.validators.validator_for(schema)(schema)
    return document, validator.is_valid(document)

"""GenerationService's checks with a fake engine (fast; the real engine is in test_http_*)."""

from __future__ import annotations

import pytest

from server.errors import InvalidRequest, ModelNotFound, PromptTooLong, QueueFull
from server.generation import GenerationRequest
from server.schema_policy import SchemaViolation
from tests.support.fakes import LORA, TASK, service


async def test_default_max_tokens_is_capped_by_the_room_left() -> None:
    gen, _ = service(max_model_len=100)
    assert (
        await gen.prepare(GenerationRequest(model=None, prompt="x" * 10))
    ).sampling.max_tokens == 16
    assert (
        await gen.prepare(GenerationRequest(model=None, prompt="x" * 90))
    ).sampling.max_tokens == 10


async def test_prompt_over_the_context_says_by_how_much() -> None:
    gen, _ = service(max_model_len=100)
    with pytest.raises(PromptTooLong, match="is 120 tokens, 21 more than"):
        await gen.prepare(GenerationRequest(model=None, prompt="x" * 120))


async def test_prompt_plus_max_tokens_over_the_context() -> None:
    gen, _ = service(max_model_len=100)
    with pytest.raises(PromptTooLong, match="20 tokens over the context of 100"):
        await gen.prepare(GenerationRequest(model=None, prompt="x" * 50, max_tokens=70))


async def test_absurd_max_tokens_is_invalid() -> None:
    gen, _ = service(max_model_len=100)
    with pytest.raises(InvalidRequest, match="exceeds the context length of 100"):
        await gen.prepare(GenerationRequest(model=None, prompt="x", max_tokens=101))


async def test_unknown_model_names_the_available_ones() -> None:
    gen, _ = service()
    with pytest.raises(ModelNotFound, match="Available: base, a"):
        await gen.prepare(GenerationRequest(model="zzz", prompt="x"))


async def test_invalid_schema_is_refused_before_the_engine() -> None:
    gen, engine = service()
    with pytest.raises(InvalidRequest, match="JSON Schema is invalid"):
        await gen.prepare(GenerationRequest(model=None, prompt="x", json_schema={"type": 3}))
    assert engine.seen == []


async def test_adapter_requests_carry_their_lora_and_results_are_validated() -> None:
    gen, engine = service(reply='{"n": 1}')
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    prepared = await gen.prepare(GenerationRequest(model="a", prompt="hi", json_schema=schema))
    (result,) = await gen.complete(prepared, "r1")
    assert result.output == {"n": 1} and result.valid is True
    assert result.finish_reason == "stop" and result.completion_tokens == len('{"n": 1}')
    assert engine.seen[0][2] == LORA


async def test_task_input_is_framed_by_the_adapter_task_and_gets_its_schema() -> None:
    gen, _ = service()
    prepared = await gen.prepare(GenerationRequest(model="a", task_input="hi"))
    assert prepared.prompt_token_ids == [ord(c) for c in "Classify.Text: hi"]
    assert prepared.schema is not None and prepared.schema.original == TASK.output_schema
    assert prepared.sampling.json_schema == prepared.schema.bounded
    explicit = {"type": "string"}
    prepared = await gen.prepare(
        GenerationRequest(model="a", task_input="hi", json_schema=explicit)
    )
    assert prepared.schema is not None and prepared.schema.original == explicit


async def test_task_input_to_the_base_is_a_plain_user_message() -> None:
    gen, _ = service()
    prepared = await gen.prepare(GenerationRequest(model=None, task_input="hi"))
    assert prepared.prompt_token_ids == [ord(c) for c in "hi"]
    assert prepared.sampling.json_schema is None


async def test_text_that_fails_the_schema_is_an_error_not_a_200() -> None:
    gen, engine = service(reply='{"n": "one"}', max_retries=0)
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    prepared = await gen.prepare(GenerationRequest(model=None, prompt="hi", json_schema=schema))
    with pytest.raises(SchemaViolation, match="is not of type 'integer'"):
        await gen.complete(prepared, "r2")
    assert len(engine.seen) == 1


async def test_requests_over_the_in_flight_limit_are_refused() -> None:
    gen, _ = service(max_in_flight=1)
    running = gen.stream(await gen.prepare(GenerationRequest(model=None, prompt="a")), "r1")
    await running.__anext__()
    with pytest.raises(QueueFull, match="limit is 1"):
        await gen.prepare(GenerationRequest(model=None, prompt="b"))
    async for _ in running:
        pass
    await gen.prepare(GenerationRequest(model=None, prompt="c"))

"""n, logprobs, penalties, logit_bias, token-id prompts and json_object through the domain
(`GenerationService`) with a fake engine, and their OpenAI response shapes (fast)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Sequence

import pytest

from server.engine import Chunk, LoraTarget, Sampling, TokenLogprob, TopLogprob
from server.errors import InvalidRequest, PromptTooLong, QueueFull
from server.generation import JSON_OBJECT_SCHEMA, GenerationRequest, GenerationService
from server.http.logprobs import chat_logprobs, completion_logprobs
from server.metrics.labels import LabelTracker
from server.schema_policy import SchemaPolicy, SchemaViolation
from server.stream_merge import merge
from tests.support.fakes import FakeCatalog, FakeEngine, FakeGuard

TOKEN = TokenLogprob(5, "ab", -0.5, (TopLogprob(5, "ab", -0.5), TopLogprob(6, "c", -1.5)))


class FanOutEngine(FakeEngine):
    """Each call takes the next `n` replies (the last repeats), one choice each, every choice
    in two chunks; a vocabulary of 1000 ids."""

    vocab_size = 1000

    def __init__(self, replies: Sequence[str]) -> None:
        super().__init__(replies)
        self.taken = 0

    async def generate(
        self, ids: list[int], sampling: Sampling, request_id: str, lora: LoraTarget | None = None
    ) -> AsyncIterator[Chunk]:
        self.seen.append((ids, sampling, lora))
        replies = []
        for _ in range(sampling.n):
            replies.append(self.replies[min(self.taken, len(self.replies) - 1)])
            self.taken += 1
        logprobs = (TOKEN,) if sampling.logprobs is not None else ()
        for index, reply in enumerate(replies):
            half = len(reply) // 2
            yield Chunk(reply[:half], len(ids), half, None, index, logprobs)
        for index, reply in enumerate(replies):
            yield Chunk(reply[len(reply) // 2 :], len(ids), len(reply), "stop", index, logprobs)


def service(
    replies: Sequence[str], max_n: int = 8, max_in_flight: int = 16
) -> tuple[GenerationService, FanOutEngine]:
    engine = FanOutEngine(replies)
    gen = GenerationService(
        engine,  # type: ignore[arg-type]
        FakeCatalog(),  # type: ignore[arg-type]
        100,
        16,
        max_in_flight,
        LabelTracker(),
        SchemaPolicy(FakeGuard(), max_retries=2),
        max_n=max_n,
    )
    return gen, engine


async def test_n_choices_come_back_in_order_with_their_own_counts() -> None:
    gen, engine = service(["one", "three"])
    prepared = await gen.prepare(GenerationRequest(model=None, prompt="hi", n=2, logprobs=1))
    results = await gen.complete(prepared, "r")
    assert [(r.index, r.text, r.completion_tokens) for r in results] == [
        (0, "one", 3),
        (1, "three", 5),
    ]
    assert results[1].logprobs == [TOKEN, TOKEN]
    assert engine.seen[0][1].n == 2 and engine.seen[0][1].logprobs == 1


async def test_sampling_carries_penalties_and_bias() -> None:
    gen, _ = service(["x"])
    request = GenerationRequest(
        model=None,
        prompt="hi",
        presence_penalty=1.5,
        frequency_penalty=-0.5,
        logit_bias={7: -100.0},
    )
    sampling = (await gen.prepare(request)).sampling
    assert (sampling.presence_penalty, sampling.frequency_penalty) == (1.5, -0.5)
    assert sampling.logit_bias == {7: -100.0}


async def test_a_failing_choice_is_retried_on_its_own() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    gen, engine = service(['{"n": 1}', "bad", '{"n": 2}'])
    prepared = await gen.prepare(
        GenerationRequest(model=None, prompt="hi", n=2, seed=10, json_schema=schema)
    )
    results = await gen.complete(prepared, "r")
    assert [r.output for r in results] == [{"n": 1}, {"n": 2}]
    assert [s.n for _, s, _ in engine.seen] == [2, 1]
    assert engine.seen[1][1].seed == 10 + 1 + 2  # seed + index + attempt * n


async def test_a_choice_failing_every_retry_is_a_violation() -> None:
    gen, engine = service(['{"n": 1}', "bad"])
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    prepared = await gen.prepare(
        GenerationRequest(model=None, prompt="hi", n=2, json_schema=schema)
    )
    with pytest.raises(SchemaViolation):
        await gen.complete(prepared, "r")
    assert len(engine.seen) == 3  # the first run, then choice 1 alone twice


async def test_stream_tags_chunks_and_fills_every_result() -> None:
    gen, _ = service(["ab", "cd"])
    prepared = await gen.prepare(GenerationRequest(model=None, prompt="hi", n=2))
    results: list = []
    seen = [(c.index, c.text) async for c in gen.stream(prepared, "r", results)]
    assert sorted(seen) == [(0, "a"), (0, "b"), (1, "c"), (1, "d")]
    assert [r.text for r in results] == ["ab", "cd"]


async def test_n_over_the_limit_is_refused_naming_n() -> None:
    gen, engine = service(["x"], max_n=4)
    with pytest.raises(InvalidRequest, match="`n` is 5: 5 choices, the limit is 4"):
        await gen.prepare(GenerationRequest(model=None, prompt="hi", n=5))
    prompts = [GenerationRequest(model=None, prompt=p, n=2) for p in "abc"]
    with pytest.raises(InvalidRequest, match="`n` is 2 for 3 prompts: 6 choices"):
        await gen.prepare_all(prompts)
    with pytest.raises(InvalidRequest, match="`n` > 1 needs a `temperature` above 0"):
        await gen.prepare(GenerationRequest(model=None, prompt="hi", n=2, temperature=0))
    assert engine.seen == []


async def test_choices_count_against_the_in_flight_limit() -> None:
    gen, _ = service(["x"], max_in_flight=3)
    with pytest.raises(QueueFull):
        await gen.prepare(GenerationRequest(model=None, prompt="hi", n=4))


async def test_token_id_prompts_are_checked_against_the_vocabulary_and_context() -> None:
    gen, _ = service(["x"])
    prepared = await gen.prepare(GenerationRequest(model=None, prompt_token_ids=[1, 999]))
    assert prepared.prompt_token_ids == [1, 999]
    with pytest.raises(InvalidRequest, match="`prompt` holds token id 1000"):
        await gen.prepare(GenerationRequest(model=None, prompt_token_ids=[1, 1000]))
    with pytest.raises(PromptTooLong, match="101 token ids"):
        await gen.prepare(GenerationRequest(model=None, prompt_token_ids=[1] * 101))
    with pytest.raises(InvalidRequest, match="`logit_bias` holds token id 5000"):
        await gen.prepare(GenerationRequest(model=None, prompt="x", logit_bias={5000: 1.0}))


async def test_json_object_decodes_any_object_and_validates_one() -> None:
    gen, _ = service(['{"a": [1, {"b": null}]}', "[1]", "[2]", "[3]"])
    prepared = await gen.prepare(GenerationRequest(model=None, prompt="hi", json_object=True))
    assert prepared.sampling.json_schema == JSON_OBJECT_SCHEMA
    assert prepared.sampling.max_tokens == 16  # no schema budget: the default
    (result,) = await gen.complete(prepared, "r")
    assert result.output == {"a": [1, {"b": None}]}
    with pytest.raises(SchemaViolation):
        await gen.complete(prepared, "r2")  # arrays, three times
    with pytest.raises(InvalidRequest, match="not both"):
        await gen.prepare(
            GenerationRequest(model=None, prompt="x", json_object=True, json_schema={})
        )


def test_logprobs_in_openai_shapes() -> None:
    (chat,) = chat_logprobs([TOKEN])
    assert (chat.token, chat.bytes, chat.logprob) == ("ab", [97, 98], -0.5)
    assert [(t.token, t.logprob) for t in chat.top_logprobs] == [("ab", -0.5), ("c", -1.5)]
    completion = completion_logprobs([TOKEN, TOKEN], text_offset=3)
    assert completion.tokens == ["ab", "ab"] and completion.text_offset == [3, 5]
    assert completion.top_logprobs == [{"ab": -0.5, "c": -1.5}] * 2


async def test_merge_interleaves_and_raises_the_first_error() -> None:
    async def count(name: str, items: int, fail: bool = False) -> AsyncGenerator[str, None]:
        for i in range(items):
            await asyncio.sleep(0)
            yield f"{name}{i}"
        if fail:
            raise ValueError("broken")

    got = [item async for item in merge([count("a", 2), count("b", 3)])]
    assert sorted(got) == [(0, "a0"), (0, "a1"), (1, "b0"), (1, "b1"), (1, "b2")]
    with pytest.raises(ValueError, match="broken"):
        async for _ in merge([count("a", 1, fail=True), count("b", 100)]):
            pass

"""The schema policy on the request path, with a fake engine and a fake compile guard (fast)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client import REGISTRY

from adapters.errors import AdapterRejected
from adapters.validation import SchemaCheck
from server.errors import EngineUnavailable, PromptTooLong
from server.generation import GenerationRequest
from server.schema_policy import (
    SchemaBudgetTooSmall,
    SchemaPolicy,
    SchemaRefused,
    SchemaViolation,
    upload_schema_check,
)
from server.structured import CompileVerdict, RefusalReason
from tests.support.fakes import FakeGuard, service

# `minimum` is not enforced by the grammar: a document can break it and must be caught.
SCORE = {
    "type": "object",
    "properties": {"score": {"type": "integer", "minimum": 10}},
    "required": ["score"],
}


def outcomes(outcome: str, adapter: str = "base") -> float:
    labels = {"adapter": adapter, "outcome": outcome}
    return REGISTRY.get_sample_value("hotswap_schema_outcomes_total", labels) or 0.0


def request(schema: object, max_tokens: int | None = None, prompt: str = "hi") -> GenerationRequest:
    return GenerationRequest(
        model=None,
        prompt=prompt,
        json_schema=schema,  # type: ignore[arg-type]
        max_tokens=max_tokens,
        temperature=0.0,
    )


async def test_a_refused_compilation_is_a_422_before_the_engine_and_counted() -> None:
    gen, engine = service(guard=FakeGuard(refuse=RefusalReason.TIMEOUT))
    before = outcomes("refused")
    with pytest.raises(SchemaRefused, match=r"refused \(timeout\): too slow") as caught:
        await gen.prepare(request({"type": "string"}))
    assert caught.value.status == 422
    assert engine.seen == [] and outcomes("refused") == before + 1


async def test_an_unsupported_schema_never_reaches_the_guard() -> None:
    guard = FakeGuard()
    gen, _ = service(guard=guard)
    lookahead = {"type": "string", "pattern": "^(?=.*[0-9])[a-z0-9]{8}$"}
    with pytest.raises(SchemaRefused, match="refused"):
        await gen.prepare(request(lookahead))
    assert guard.checked == []


async def test_a_transient_refusal_is_a_503_to_retry() -> None:
    class BusyGuard(FakeGuard):
        async def check(self, schema: object, fallback: str | None = None) -> CompileVerdict:
            return CompileVerdict(
                ok=False, digest="d", reason=RefusalReason.TIMEOUT, message="busy", transient=True
            )

    gen, _ = service(guard=BusyGuard())
    with pytest.raises(EngineUnavailable, match="retry shortly"):
        await gen.prepare(request({"type": "string"}))


async def test_the_engine_gets_the_bounded_schema_the_guard_compiled() -> None:
    guard = FakeGuard(budget=30)
    gen, _ = service(guard=guard)
    prepared = await gen.prepare(request({"type": "string"}))
    assert prepared.sampling.json_schema == guard.checked[0]
    assert prepared.sampling.json_schema != {"type": "string"}  # bounded: a maxLength pattern


async def test_max_tokens_below_the_longest_document_is_decoded_budget_aware() -> None:
    gen, engine = service(guard=FakeGuard(budget=40, shortest=12))
    prepared = await gen.prepare(request(SCORE, max_tokens=20))
    assert prepared.sampling.max_tokens == 20 and prepared.sampling.budget_aware
    prepared = await gen.prepare(request(SCORE, max_tokens=45))
    assert prepared.sampling.max_tokens == 45 and not prepared.sampling.budget_aware
    assert engine.seen == []


async def test_max_tokens_below_the_shortest_document_is_a_422_stating_it() -> None:
    gen, engine = service(guard=FakeGuard(budget=40, shortest=12))
    before = outcomes("refused")
    with pytest.raises(SchemaBudgetTooSmall, match="below the 12 tokens the shortest") as caught:
        await gen.prepare(request(SCORE, max_tokens=11))
    assert caught.value.status == 422 and engine.seen == []
    assert outcomes("refused") == before + 1
    prepared = await gen.prepare(request(SCORE, max_tokens=12))
    assert prepared.sampling.max_tokens == 12 and prepared.sampling.budget_aware


async def test_an_unmeasurable_shortest_document_needs_the_longest_budget() -> None:
    gen, _ = service(guard=FakeGuard(budget=40, shortest=None))
    with pytest.raises(SchemaBudgetTooSmall, match="below the 40 tokens the longest"):
        await gen.prepare(request(SCORE, max_tokens=39))


async def test_unset_max_tokens_is_the_budget_even_above_the_default() -> None:
    gen, _ = service(guard=FakeGuard(budget=40), max_model_len=100)  # default max_tokens 16
    prepared = await gen.prepare(request(SCORE))
    assert prepared.sampling.max_tokens == 40


async def test_a_context_short_of_the_longest_document_is_decoded_budget_aware() -> None:
    gen, _ = service(guard=FakeGuard(budget=40, shortest=12), max_model_len=100)
    prepared = await gen.prepare(request(SCORE, prompt="x" * 70))
    assert prepared.sampling.max_tokens == 30 and prepared.sampling.budget_aware
    with pytest.raises(SchemaBudgetTooSmall, match="the 10 tokens the prompt leaves"):
        await gen.prepare(request(SCORE, prompt="x" * 90))


async def test_a_budget_the_context_cannot_hold_is_refused_when_unmeasurable() -> None:
    gen, _ = service(guard=FakeGuard(budget=40), max_model_len=100)
    with pytest.raises(PromptTooLong, match="can need 40 tokens, but the prompt leaves 30"):
        await gen.prepare(request(SCORE, prompt="x" * 70))


async def test_an_invalid_document_is_retried_with_another_seed_then_succeeds() -> None:
    gen, engine = service(reply=['{"score":3}', '{"score":12}'], guard=FakeGuard())
    retried, valid = outcomes("retried"), outcomes("valid")
    (result,) = await gen.complete(await gen.prepare(request(SCORE)), "p1")
    assert result.valid is True and result.output == {"score": 12}
    assert outcomes("retried") == retried + 1 and outcomes("valid") == valid + 1
    first, second = engine.seen[0][1], engine.seen[1][1]
    assert second.seed != first.seed and second.temperature > 0


async def test_retries_exhausted_is_an_error_naming_the_unenforced_keywords() -> None:
    gen, engine = service(reply='{"score":3}', guard=FakeGuard(), max_retries=2)
    retried, invalid = outcomes("retried"), outcomes("invalid")
    prepared = await gen.prepare(request(SCORE))
    with pytest.raises(
        SchemaViolation, match=r"after 3 attempt.*does not enforce minimum"
    ) as caught:
        await gen.complete(prepared, "p2")
    assert caught.value.status == 422 and "less than the minimum of 10" in caught.value.message
    assert len(engine.seen) == 3
    assert outcomes("retried") == retried + 2 and outcomes("invalid") == invalid + 1


async def test_a_streamed_document_that_fails_ends_in_an_error_after_its_chunks() -> None:
    gen, engine = service(reply='{"score":3}', guard=FakeGuard())
    texts: list[str] = []
    with pytest.raises(SchemaViolation):
        async for chunk in gen.stream(await gen.prepare(request(SCORE)), "p3"):
            texts.append(chunk.text)
    assert "".join(texts) == '{"score":3}' and len(engine.seen) == 1


async def test_validation_uses_the_schema_own_draft() -> None:
    draft4 = {
        "$schema": "http://json-schema.org/draft-04/schema#",
        "type": "number",
        "minimum": 0,
        "exclusiveMinimum": True,
    }
    gen, _ = service(reply=["0", "1"], guard=FakeGuard())
    (result,) = await gen.complete(await gen.prepare(request(draft4)), "p4")
    assert result.output == 1 and result.valid is True


async def upload_check(guard: FakeGuard, fallback: Any = None) -> SchemaCheck:
    policy = SchemaPolicy(guard, fallback=fallback)
    return upload_schema_check(policy, asyncio.get_running_loop())


async def test_an_upload_whose_task_schema_the_guard_refuses_is_rejected_with_its_reason() -> None:
    guard = FakeGuard(refuse=RefusalReason.TIMEOUT, fallback_ok=False)
    check = await upload_check(guard, fallback="guidance")
    with pytest.raises(AdapterRejected, match=r"task\.output_schema: .*refused \(timeout\)"):
        await asyncio.to_thread(check, SCORE)  # as the registry calls it, from a thread
    assert guard.checked and guard.checked[0] != SCORE  # the bounded schema, as served
    assert guard.engines == [None, "guidance"]


async def test_an_upload_the_fallback_engine_serves_is_accepted() -> None:
    check = await upload_check(FakeGuard(refuse=RefusalReason.TIMEOUT), fallback="guidance")
    await asyncio.to_thread(check, SCORE)  # returns: the upload goes on


async def test_an_upload_whose_task_schema_is_unsafe_never_reaches_the_guard() -> None:
    guard = FakeGuard()
    check = await upload_check(guard)
    with pytest.raises(AdapterRejected, match=r"task\.output_schema"):
        await asyncio.to_thread(check, {"type": "string", "pattern": "^(?=a)a$"})
    assert guard.checked == []


async def test_a_busy_machine_at_upload_is_a_503_not_a_rejection() -> None:
    class BusyGuard(FakeGuard):
        async def check(self, schema: object, fallback: str | None = None) -> CompileVerdict:
            return CompileVerdict(
                ok=False, digest="d", reason=RefusalReason.TIMEOUT, message="busy", transient=True
            )

    check = await upload_check(BusyGuard())
    with pytest.raises(EngineUnavailable, match="retry shortly"):
        await asyncio.to_thread(check, SCORE)


TWO_IFS = {
    "type": "object",
    "allOf": [
        {"if": {"properties": {"a": {"const": 1}}}, "then": {"required": ["b"]}},
        {"if": {"properties": {"c": {"const": 1}}}, "then": {"required": ["d"]}},
    ],
}


async def test_a_schema_outlines_cannot_compile_in_time_falls_back_per_request() -> None:
    guard = FakeGuard(budget=40, refuse=RefusalReason.TIMEOUT)
    gen, _ = service(guard=guard, fallback="guidance")
    prepared = await gen.prepare(request(SCORE))
    assert guard.engines == [None, "guidance"]
    assert prepared.sampling.grammar_engine == "guidance"
    assert prepared.sampling.max_tokens == 40 and not prepared.sampling.budget_aware
    assert prepared.schema is not None and prepared.schema.grammar_engine == "guidance"


async def test_a_schema_bounding_cannot_express_goes_to_the_fallback_unchanged() -> None:
    guard = FakeGuard()
    gen, _ = service(guard=guard, fallback="xgrammar")
    prepared = await gen.prepare(request(TWO_IFS))
    assert guard.engines == ["xgrammar"] and guard.checked == [TWO_IFS]
    assert prepared.sampling.json_schema == TWO_IFS
    assert prepared.sampling.grammar_engine == "xgrammar"


async def test_without_a_fallback_or_when_it_fails_too_the_422_gives_the_reasons() -> None:
    gen, _ = service(guard=FakeGuard(refuse=RefusalReason.MEMORY))
    with pytest.raises(SchemaRefused, match=r"refused \(memory\)"):
        await gen.prepare(request(SCORE))
    guard = FakeGuard(refuse=RefusalReason.MEMORY, fallback_ok=False)
    gen, _ = service(guard=guard, fallback="guidance")
    with pytest.raises(SchemaRefused, match=r"refused \(memory\): too slow; and no way"):
        await gen.prepare(request(SCORE))


async def test_a_refusal_for_another_reason_never_falls_back() -> None:
    guard = FakeGuard(refuse=RefusalReason.CRASHED)
    gen, _ = service(guard=guard, fallback="guidance")
    with pytest.raises(SchemaRefused, match="crashed"):
        await gen.prepare(request(SCORE))
    assert guard.engines == [None]


async def test_a_fallback_engine_runs_with_the_tokens_there_are() -> None:
    """It cannot close a document early: a client's smaller max_tokens, or the room the prompt
    leaves, is what it gets (a cut document fails validation, is retried, then refused)."""
    guard = FakeGuard(budget=40, refuse=RefusalReason.TIMEOUT, shortest=5)
    gen, _ = service(guard=guard, fallback="guidance", max_model_len=100)
    prepared = await gen.prepare(request(SCORE, max_tokens=20))
    assert prepared.sampling.max_tokens == 20 and not prepared.sampling.budget_aware
    prepared = await gen.prepare(request(SCORE, prompt="x" * 70))
    assert prepared.sampling.max_tokens == 30 and not prepared.sampling.budget_aware


async def test_a_document_cut_by_max_tokens_is_not_retried_and_says_so() -> None:
    """A fallback engine cannot close a document early: a document cut at max_tokens would be
    cut again, so it is refused after one attempt, naming the limit."""
    guard = FakeGuard(budget=40, refuse=RefusalReason.TIMEOUT)
    gen, engine = service(reply='{"score":12345678901234}', guard=guard, fallback="guidance")
    prepared = await gen.prepare(request(SCORE, max_tokens=10))
    with pytest.raises(SchemaViolation, match=r"did not fit in max_tokens=10 \(guidance"):
        await gen.complete(prepared, "cut")
    assert len(engine.seen) == 1

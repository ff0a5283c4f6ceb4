"""Scored classification task calls in GenerationService, with a fake engine that reports
fixed next-token log-probabilities (fast; the real engine is in test_label_scores_engine)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

import pytest

from adapters.manifest import Calibration, TaskSpec
from server.catalog import ServedModel
from server.engine import Chunk, LoraTarget, Sampling
from server.generation import GenerationRequest, GenerationResult, GenerationService
from server.grpc_api.inference import response
from server.metrics.labels import LabelTracker
from server.schema_policy import SchemaPolicy
from tests.support.fakes import LORA, FakeEngine, FakeGuard
from tests.support.label_sets import SET_MODEL, SET_SCHEMA

LABELS = ["xa", "xb", "y"]
SCHEMA = {
    "type": "object",
    "properties": {"label": {"enum": LABELS}},
    "required": ["label"],
}
# Next-token probabilities of the made-up model: "x" 0.6 then "a" 0.5 / "b" 0.5, "y" 0.4.
# The greedy path's first choice is "x", yet the most probable label is "y" (0.4 > 0.3).
PROBABILITIES = {ord("x"): 0.6, ord("y"): 0.4, ord("a"): 0.5, ord("b"): 0.5}


class ScoringEngine(FakeEngine):
    """A fake engine whose scored positions report `PROBABILITIES` (one token per char)."""

    async def generate(
        self, ids: list[int], sampling: Sampling, request_id: str, lora: LoraTarget | None = None
    ) -> AsyncIterator[Chunk]:
        if not sampling.scored_token_ids:
            async for chunk in super().generate(ids, sampling, request_id, lora):
                yield chunk
            return
        self.seen.append((ids, sampling, lora))
        scores = {t: math.log(PROBABILITIES[t]) for t in sampling.scored_token_ids}
        yield Chunk("", len(ids), 1, "length", scores=(scores,))


class Catalog:
    base = ServedModel("base", None, None)

    def __init__(self, task: TaskSpec) -> None:
        self.task = task

    def resolve(self, ref: str | None) -> ServedModel:
        return ServedModel("a", 1, LORA, self.task)


def scored_service(
    reply: str = '{"label":"xa"}', calibration: Calibration | None = None
) -> tuple[GenerationService, ScoringEngine]:
    task = TaskSpec(
        output_schema=SCHEMA, labels=LABELS, label_field="label", calibration=calibration
    )
    engine = ScoringEngine(reply)
    return service(task, engine), engine


def service(task: TaskSpec, engine: FakeEngine) -> GenerationService:
    """A generation service over `engine` whose every model serves `task`."""
    return GenerationService(
        engine,  # type: ignore[arg-type]
        Catalog(task),  # type: ignore[arg-type]
        200,
        16,
        8,
        LabelTracker(),
        SchemaPolicy(FakeGuard(budget=40)),
    )


async def test_a_greedy_call_answers_the_most_probable_label_without_generating() -> None:
    gen, engine = scored_service()
    prepared = await gen.prepare(GenerationRequest(model="a", task_input="hi", temperature=0.0))
    (result,) = await gen.complete(prepared, "r1")
    assert result.text == '{"label":"y"}' and result.output == {"label": "y"}
    assert result.valid is True and result.finish_reason == "stop"
    assert result.label is not None and result.label.confidence == pytest.approx(0.4)
    assert [label for label, _ in result.label.top_labels] == ["y", "xa", "xb"]
    assert [p for _, p in result.label.top_labels] == pytest.approx([0.4, 0.3, 0.3])
    assert all(sampling.scored_token_ids for _, sampling, _ in engine.seen)  # no generation


async def test_the_manifest_temperature_and_abstain_threshold_apply() -> None:
    gen, _ = scored_service(calibration=Calibration(temperature=2.0, abstain_below=0.5))
    prepared = await gen.prepare(GenerationRequest(model="a", task_input="hi", temperature=0.0))
    (result,) = await gen.complete(prepared, "r1")
    assert result.label is not None and result.label.abstained
    assert result.output is None and result.text == ""
    # sqrt-tempered: x, y = 0.6**.5, 0.4**.5 normalised; a, b stay even.
    x, y = math.sqrt(0.6), math.sqrt(0.4)
    assert result.label.top_labels[0] == ("y", pytest.approx(y / (x + y)))
    own = await gen.prepare(
        GenerationRequest(model="a", task_input="hi", temperature=0.0, abstain_below=0.1)
    )
    (answered,) = await gen.complete(own, "r2")
    assert answered.label is not None and not answered.label.abstained
    assert answered.output == {"label": "y"}


async def test_sampled_choices_are_generated_and_each_gets_its_probability() -> None:
    gen, engine = scored_service(reply='{"label":"xb"}')
    prepared = await gen.prepare(
        GenerationRequest(model="a", task_input="hi", temperature=1.0, n=2)
    )
    results = await gen.complete(prepared, "r1")
    assert [r.output for r in results] == [{"label": "xb"}] * 2
    assert all(r.label is not None and r.label.confidence == pytest.approx(0.3) for r in results)
    assert any(not sampling.scored_token_ids for _, sampling, _ in engine.seen)


async def test_a_stream_of_a_scored_call_sends_the_answer_whole() -> None:
    gen, _ = scored_service()
    prepared = await gen.prepare(GenerationRequest(model="a", task_input="hi", temperature=0.0))
    chunks = [chunk async for chunk in gen.stream(prepared, "r1")]
    assert [c.text for c in chunks] == ['{"label":"y"}']


async def test_an_explicit_schema_or_chat_input_is_not_scored() -> None:
    gen, _ = scored_service()
    explicit = await gen.prepare(
        GenerationRequest(model="a", task_input="hi", json_schema={"type": "object"})
    )
    chat = await gen.prepare(
        GenerationRequest(model="a", messages=[{"role": "user", "content": "hi"}])
    )
    assert explicit.labels is None and chat.labels is None


class SetScoringEngine(FakeEngine):
    """A fake engine whose scored positions report `SET_MODEL` for the answer so far."""

    async def generate(
        self, ids: list[int], sampling: Sampling, request_id: str, lora: LoraTarget | None = None
    ) -> AsyncIterator[Chunk]:
        if not sampling.scored_token_ids:
            async for chunk in super().generate(ids, sampling, request_id, lora):
                yield chunk
            return
        self.seen.append((ids, sampling, lora))
        text = "".join(map(chr, ids))
        probabilities = SET_MODEL[text[text.index("{") :]]
        scores = {t: math.log(probabilities[chr(t)]) for t in sampling.scored_token_ids}
        yield Chunk("", len(ids), 1, "length", scores=(scores,))


def set_service(reply: str) -> tuple[GenerationService, SetScoringEngine]:
    task = TaskSpec(output_schema=SET_SCHEMA, labels=["a", "b"], label_field="f")
    engine = SetScoringEngine(reply)
    return service(task, engine), engine


async def test_a_multi_label_answer_is_generated_with_each_labels_probability() -> None:
    gen, engine = set_service('{"f":["b"]}')
    prepared = await gen.prepare(GenerationRequest(model="a", task_input="hi", temperature=0.0))
    assert prepared.labels is None and prepared.label_sets is not None
    (result,) = await gen.complete(prepared, "r1")
    assert result.output == {"f": ["b"]} and result.valid is True
    assert result.label is None  # no confidence, no abstention
    assert result.label_set is not None
    assert result.label_set.probabilities == (
        ("a", pytest.approx(0.672)),
        ("b", pytest.approx(0.41)),
    )
    assert result.label_set.empty == pytest.approx(0.2)
    scored = [s for _, s, _ in engine.seen if s.scored_token_ids]
    assert len(scored) == 6 and len(engine.seen) == 7  # six reads beside one generation
    streamed = await gen.prepare(
        GenerationRequest(model="a", task_input="hi", temperature=0.0, top_labels=1)
    )
    results: list[GenerationResult] = []
    chunks = [chunk async for chunk in gen.stream(streamed, "r2", results)]
    assert "".join(c.text for c in chunks) == '{"f":["b"]}'
    assert results[0].label_set is not None
    assert results[0].label_set.probabilities == (("a", pytest.approx(0.672)),)
    reply = response(results)
    assert [(e.label, e.probability) for e in reply.label_probabilities] == [
        ("a", pytest.approx(0.672))
    ]
    assert reply.empty_set_probability == pytest.approx(0.2)
    assert reply.choices[0].empty_set_probability == pytest.approx(0.2)
    assert not reply.HasField("confidence") and not reply.HasField("abstained")

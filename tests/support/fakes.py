"""Fakes of the engine and catalog for fast tests of the domain layer."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

from adapters.manifest import TaskSpec
from server.catalog import ServedModel
from server.engine import Chunk, LoraTarget, Sampling
from server.errors import ModelNotFound
from server.generation import GenerationService
from server.metrics.labels import LabelTracker


class FakeEngine:
    """One token per character; replies with a fixed text in two chunks."""

    def __init__(self, reply: str) -> None:
        self.reply = reply
        self.seen: list[tuple[list[int], Sampling, LoraTarget | None]] = []

    def render_chat(self, messages: Sequence[Mapping[str, object]]) -> list[int]:
        return [ord(c) for m in messages for c in str(m["content"])]

    def tokenize(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    async def generate(
        self, ids: list[int], sampling: Sampling, request_id: str, lora: LoraTarget | None = None
    ) -> AsyncIterator[Chunk]:
        self.seen.append((ids, sampling, lora))
        half = len(self.reply) // 2
        yield Chunk(self.reply[:half], len(ids), half, None)
        yield Chunk(self.reply[half:], len(ids), len(self.reply), "stop")


LORA = LoraTarget("a@1", 7, Path("/tmp/a"))
TASK = TaskSpec(
    system_message="Classify.",
    input_template="Text: {input}",
    output_schema={"type": "object", "properties": {"label": {"enum": ["x", "y"]}}},
)


class FakeCatalog:
    """The base, and one adapter `a` with a task."""

    base = ServedModel("base", None, None)

    def resolve(self, ref: str | None) -> ServedModel:
        if ref in (None, "base"):
            return ServedModel("base", None, None)
        if ref == "a":
            return ServedModel("a", 1, LORA, TASK)
        raise ModelNotFound(f"Unknown model {ref!r}. Available: base, a.")


def service(
    reply: str = "hello", max_model_len: int = 100, max_in_flight: int = 8
) -> tuple[GenerationService, FakeEngine]:
    engine = FakeEngine(reply)
    gen = GenerationService(
        engine,  # type: ignore[arg-type]
        FakeCatalog(),  # type: ignore[arg-type]
        max_model_len,
        16,
        max_in_flight,
        LabelTracker(),
    )
    return gen, engine

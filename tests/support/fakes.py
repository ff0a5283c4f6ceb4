"""Fakes of the engine and catalog for fast tests of the domain layer."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from adapters.manifest import TaskSpec
from server.catalog import ServedModel
from server.engine import Chunk, LoraTarget, Sampling
from server.errors import ModelNotFound
from server.generation import GenerationService
from server.metrics.labels import LabelTracker
from server.schema_policy import SchemaPolicy
from server.structured import CompileVerdict, DocumentBudget, RefusalReason


class FakeEngine:
    """One token per character; replies with a fixed text in two chunks, cut at `max_tokens`
    (`finish_reason` `length`). Given several replies, each request gets the next one (the
    last one repeats)."""

    def __init__(self, reply: str | Sequence[str]) -> None:
        self.replies = [reply] if isinstance(reply, str) else list(reply)
        self.seen: list[tuple[list[int], Sampling, LoraTarget | None]] = []

    @property
    def reply(self) -> str:
        return self.replies[min(len(self.seen), len(self.replies) - 1)]

    def render_chat(self, messages: Sequence[Mapping[str, object]]) -> list[int]:
        return [ord(c) for m in messages for c in str(m["content"])]

    def tokenize(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        return [ord(c) for c in text]

    async def generate(
        self, ids: list[int], sampling: Sampling, request_id: str, lora: LoraTarget | None = None
    ) -> AsyncIterator[Chunk]:
        reply = self.reply[: sampling.max_tokens]
        finish = "length" if len(self.reply) > sampling.max_tokens else "stop"
        self.seen.append((ids, sampling, lora))
        half = len(reply) // 2
        yield Chunk(reply[:half], len(ids), half, None)
        yield Chunk(reply[half:], len(ids), len(reply), finish)


class FakeGuard:
    """A compile guard that accepts every schema with a fixed token budget (None: unknown)
    and shortest document (`shortest`; None: not measurable), or refuses every one with
    `refuse`; a fallback engine's check accepts (`fallback_ok`) or refuses. Records what it
    was asked to compile, and for which engine."""

    def __init__(
        self,
        budget: int | None = None,
        refuse: RefusalReason | None = None,
        shortest: int | None = None,
        fallback_ok: bool = True,
    ) -> None:
        self.budget = budget
        self.refuse = refuse
        self.shortest = shortest
        self.fallback_ok = fallback_ok
        self.checked: list[Any] = []
        self.engines: list[str | None] = []

    async def check(self, schema: Any, fallback: str | None = None) -> CompileVerdict:
        self.checked.append(schema)
        self.engines.append(fallback)
        size = None if self.budget is None else self.budget - 1
        budget = DocumentBudget(size, size)
        if fallback is not None:
            if not self.fallback_ok:
                return CompileVerdict(
                    ok=False, digest="d", reason=RefusalReason.UNSUPPORTED, message="no way"
                )
            return CompileVerdict(ok=True, digest="d", budget=budget)
        if self.refuse is not None:
            return CompileVerdict(ok=False, digest="d", reason=self.refuse, message="too slow")
        return CompileVerdict(ok=True, digest="d", budget=budget, grammar_bytes=1024)

    async def min_tokens(self, schema: Any) -> int | None:
        return self.shortest


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
    reply: str | Sequence[str] = "hello",
    max_model_len: int = 100,
    max_in_flight: int = 8,
    guard: FakeGuard | None = None,
    max_retries: int = 2,
    fallback: Literal["guidance", "xgrammar"] | None = None,
) -> tuple[GenerationService, FakeEngine]:
    engine = FakeEngine(reply)
    gen = GenerationService(
        engine,  # type: ignore[arg-type]
        FakeCatalog(),  # type: ignore[arg-type]
        max_model_len,
        16,
        max_in_flight,
        LabelTracker(),
        SchemaPolicy(
            guard if guard is not None else FakeGuard(),
            max_retries=max_retries,
            fallback=fallback,
        ),
    )
    return gen, engine

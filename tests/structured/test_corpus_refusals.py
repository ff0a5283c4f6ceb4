"""Every corpus entry marked `refuse` is refused by the whole schema policy, without the engine.

The policy is the server's: bounding, then the compile guard with the server's default limits
(CPU time, memory, grammar size) on the real model's vocabulary, then the fallback grammar
engine (llguidance, the default) for what outlines cannot compile or express, then the token
budget in the default context (a schema whose documents cannot fit is refused before
generating). An entry the fallback serves is not a refusal: the corpus marks those `ok` or
`any`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server.errors import HotswapError, PromptTooLong
from server.schema_policy import SchemaPolicy, SchemaRefused
from server.settings import Settings
from server.structured import CompileGuard
from tests.structured.conftest import CORPUS

REFUSE = [entry for entry in CORPUS if entry["expect"] == "refuse"]
NOT_YET_REFUSED = {
    "huge_min_items": "the fallback engine admits it and runs with the context's room, though "
    "its shortest document (5,000 items) cannot fit: generated once (cut at max_tokens, not "
    "retried), then a 422 schema_violation, instead of a refusal before generating",
}
"""Known gaps of the policy (strict: the test fails once the policy refuses them)."""
REASONS = ("The JSON Schema is refused (", "The JSON Schema is invalid:", "The longest document")
PROMPT_TOKENS = 32
"""Tokens a short prompt takes of the context (the budget's room is the rest)."""


@pytest.fixture(scope="module")
def policy(base_model_path: Path) -> Iterator[SchemaPolicy]:
    """The server's policy with its default limits and fallback engine."""
    settings = Settings()
    with CompileGuard(
        base_model_path,
        timeout_s=settings.schema_compile_timeout_s,
        wall_timeout_s=120.0,  # CPU time decides; a busy test machine must not
        memory_limit_mb=settings.schema_compile_memory_mb,
        max_grammar_mb=settings.schema_max_grammar_mb,
    ) as guard:
        guard.start()
        yield SchemaPolicy(
            guard,
            settings.schema_limits,
            budget_max_grammar_mb=settings.schema_budget_max_grammar_mb,
            fallback=settings.schema_fallback(),
        )


def test_the_policy_under_test_has_the_fallback(policy: SchemaPolicy) -> None:
    assert policy.fallback == "guidance"
    assert len(REFUSE) >= 25


async def _refusal(policy: SchemaPolicy, schema: Any) -> HotswapError | None:
    """What the policy refuses `schema` with, before generating (None: it would be served)."""
    context = Settings().max_model_len
    try:
        admitted = await policy.admit(schema)
        await policy.token_plan(admitted, None, context - PROMPT_TOKENS, context)
    except (SchemaRefused, PromptTooLong) as exc:
        return exc
    return None


@pytest.mark.parametrize(
    "entry",
    [
        pytest.param(
            entry,
            id=entry["name"],
            marks=[pytest.mark.xfail(strict=True, reason=NOT_YET_REFUSED[entry["name"]])]
            if entry["name"] in NOT_YET_REFUSED
            else [],
        )
        for entry in REFUSE
    ],
)
def test_every_refuse_entry_is_refused_with_a_reason(
    policy: SchemaPolicy, entry: dict[str, Any]
) -> None:
    refusal = asyncio.run(_refusal(policy, entry["schema"]))
    assert refusal is not None, f"{entry['name']} is served"
    assert refusal.message.startswith(REASONS), refusal.message

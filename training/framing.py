"""Prompt framing shared by training and evaluation, identical to the server's.

The server renders `TaskSpec.render_messages(text)` with the tokenizer's chat template
(`add_generation_prompt=True`, as text) and encodes that text without special tokens; the
assistant's answer is the compact JSON target followed by the end-of-turn token.
"""

from __future__ import annotations

from typing import Any

from adapters.json_grammar import compact_json
from adapters.manifest import TaskSpec

IGNORE_INDEX = -100
"""The label of a token that carries no loss (the prompt's; the causal-LM losses' ignore index)."""


def prompt_text(tokenizer: Any, spec: TaskSpec, text: str) -> str:
    """The chat-templated prompt, ending with the assistant header."""
    rendered = tokenizer.apply_chat_template(
        list(spec.render_messages(text)), add_generation_prompt=True, tokenize=False
    )
    return str(rendered)


def prompt_ids(tokenizer: Any, spec: TaskSpec, text: str) -> list[int]:
    """Token ids of the prompt exactly as the server computes them."""
    return list(tokenizer.encode(prompt_text(tokenizer, spec, text), add_special_tokens=False))


def completion_ids(tokenizer: Any, target: dict[str, Any]) -> list[int]:
    """Token ids the adapter learns to produce: compact JSON, then end of turn."""
    ids = list(tokenizer.encode(compact_json(target), add_special_tokens=False))
    return [*ids, int(tokenizer.eos_token_id)]

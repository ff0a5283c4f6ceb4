"""The official OpenAI SDK through the real server: every field docs/openai-compat.md says is
honoured, combined in as few calls as they combine, each shown in the answer; and the fields
it refuses get a 422 naming them."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from openai import OpenAI, UnprocessableEntityError
from transformers import AutoTokenizer

from tests.clients.extraction import (
    MESSAGES,
    WEATHER_QUESTION,
    WEATHER_TOOL,
    Person,
    assert_person,
    token_limit,
)

pytestmark = pytest.mark.engine

PERSON_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "Person", "schema": Person.model_json_schema()},
}
SAMPLED: dict[str, Any] = {"temperature": 0.7, "top_p": 0.9, "seed": 11}
PENALTIES: dict[str, Any] = {"presence_penalty": 0.4, "frequency_penalty": 0.4}
WEATHER_CALL = {
    "id": "call_rome",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Rome", "unit": "celsius"}'},
}
TOOL_HISTORY: list[dict[str, Any]] = [
    {"role": "user", "content": "What is the weather in Rome, in celsius?"},
    {"role": "assistant", "content": None, "tool_calls": [WEATHER_CALL]},
    {"role": "tool", "tool_call_id": "call_rome", "content": "21 degrees, clear"},
    {"role": "assistant", "content": "It is 21 degrees and clear in Rome."},
    {"role": "user", "content": WEATHER_QUESTION},
]


@pytest.fixture(scope="module")
def token_id(base_model_path: Path) -> Callable[[str], int]:
    """The id of a text the base model's tokenizer writes as one token."""
    tokenizer = AutoTokenizer.from_pretrained(base_model_path)

    def one(text: str) -> int:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert len(ids) == 1, (text, ids)
        return int(ids[0])

    return one


def _person_chat_fields(base_model: str, banned: int, max_tokens: int | None) -> dict[str, Any]:
    return {
        "model": base_model,
        "messages": [
            {"role": "system", "content": "You extract people from sentences, as JSON."},
            {"role": "developer", "content": "Keep the names as written."},
            *MESSAGES,
        ],
        "response_format": PERSON_FORMAT,
        "n": 2,
        **SAMPLED,
        **PENALTIES,
        "stop": ["\n\n"],
        "logit_bias": {str(banned): -100},
        "logprobs": True,
        "top_logprobs": 3,
        "user": "client-suite",
        **token_limit(max_tokens, "max_completion_tokens"),
    }


def test_every_honoured_chat_field_in_one_call_streamed_or_not(
    openai_client: OpenAI,
    base_model: str,
    token_id: Callable[[str], int],
    max_tokens: int | None,
) -> None:
    """n, sampling with a seed, penalties, logit_bias, stop, logprobs and a JSON Schema in one
    request: two parsed answers with their logprobs, and the same answers streamed."""
    fields = _person_chat_fields(base_model, token_id("London"), max_tokens)
    whole = openai_client.chat.completions.create(**fields)
    assert [choice.index for choice in whole.choices] == [0, 1]
    tokens = 0
    for choice in whole.choices:
        assert_person(Person.model_validate_json(choice.message.content or ""))
        assert choice.finish_reason == "stop"
        assert choice.logprobs is not None and choice.logprobs.content
        content = choice.logprobs.content
        assert "".join(item.token for item in content).startswith(choice.message.content or "")
        assert all(len(item.top_logprobs) == 3 for item in content)
        assert "London" not in {item.token for item in content}, "logit_bias was not applied"
        assert max_tokens is None or len(content) <= max_tokens
        tokens += len(content)
    assert whole.usage is not None and whole.usage.completion_tokens == tokens

    stream = openai_client.chat.completions.create(
        **fields, stream=True, stream_options={"include_usage": True}
    )
    texts: dict[int, str] = {0: "", 1: ""}
    streamed_tokens, usage = 0, None
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.logprobs is not None and choice.logprobs.content:
                streamed_tokens += len(choice.logprobs.content)
    assert texts == {c.index: c.message.content for c in whole.choices}, "the seed gave others"
    assert usage is not None and usage.completion_tokens == streamed_tokens == tokens


@pytest.mark.parametrize(
    "tool_choice",
    ["required", {"type": "function", "function": {"name": "get_weather"}}],
    ids=["required", "named"],
)
def test_tools_with_a_tool_history_in_one_call(
    openai_client: OpenAI, base_model: str, tool_choice: Any, max_tokens: int | None
) -> None:
    """tools, tool_choice, parallel_tool_calls, sampling with a seed and a history of tool
    calls and results (`n` does not combine with tools: refused): one call whose arguments
    are valid against the function's parameters."""
    reply = openai_client.chat.completions.create(
        model=base_model,
        messages=TOOL_HISTORY,  # type: ignore[arg-type]
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice=tool_choice,
        parallel_tool_calls=False,
        **SAMPLED,
        **token_limit(max_tokens),
    )
    [choice] = reply.choices
    calls = choice.message.tool_calls
    assert calls is not None and len(calls) == 1, choice.message
    call = calls[0]
    assert call.type == "function" and call.function.name == "get_weather" and call.id
    jsonschema.validate(json.loads(call.function.arguments), WEATHER_TOOL["function"]["parameters"])
    assert reply.usage is not None and reply.usage.completion_tokens > 0
    assert max_tokens is None or reply.usage.completion_tokens <= max_tokens


@pytest.mark.parametrize("as_token_ids", [False, True], ids=["strings", "token-ids"])
def test_every_honoured_completion_field_in_one_call(
    openai_client: OpenAI,
    base_model: str,
    base_model_path: Path,
    token_id: Callable[[str], int],
    as_token_ids: bool,
    max_tokens: int | None,
) -> None:
    """A list of prompts, n, sampling with a seed, penalties, logit_bias, stop and logprobs."""
    prompts = ["The capital of France is", "The capital of Italy is"]
    prompt: list[str] | list[list[int]] = prompts
    if as_token_ids:
        tokenizer = AutoTokenizer.from_pretrained(base_model_path)
        prompt = [tokenizer.encode(text, add_special_tokens=False) for text in prompts]
    reply = openai_client.completions.create(
        model=base_model,
        prompt=prompt,
        n=2,
        **SAMPLED,
        **PENALTIES,
        stop=["\n"],
        logit_bias={str(token_id(" Paris")): -100},
        logprobs=2,
        echo=False,
        user="client-suite",
        **token_limit(max_tokens),
    )
    assert sorted(choice.index for choice in reply.choices) == [0, 1, 2, 3]
    tokens = 0
    for choice in reply.choices:
        logprobs = choice.logprobs
        assert logprobs is not None and logprobs.tokens is not None
        assert "".join(logprobs.tokens).startswith(choice.text)  # and the stop's token
        assert logprobs.token_logprobs is not None and logprobs.top_logprobs is not None
        assert len(logprobs.token_logprobs) == len(logprobs.top_logprobs) == len(logprobs.tokens)
        assert all(1 <= len(top) <= 3 for top in logprobs.top_logprobs)
        assert " Paris" not in logprobs.tokens, "logit_bias was not applied"
        assert max_tokens is None or len(logprobs.tokens) <= max_tokens
        tokens += len(logprobs.tokens)
    assert reply.usage is not None and reply.usage.completion_tokens == tokens


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("functions", [{"name": "get_weather", "parameters": {"type": "object"}}]),
        ("function_call", "auto"),
    ],
)
def test_refused_chat_fields_get_a_422_naming_them(
    openai_client: OpenAI, base_model: str, field: str, value: Any
) -> None:
    with pytest.raises(UnprocessableEntityError, match=f"`{field}`"):
        openai_client.chat.completions.create(
            model=base_model,
            messages=MESSAGES,  # type: ignore[arg-type]
            max_tokens=4,
            extra_body={field: value},
        )

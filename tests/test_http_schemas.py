"""Request bodies: what the OpenAI routes and /v1/generate accept and refuse."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from server.http.schemas import ChatCompletionRequest, CompletionRequest
from server.task_request import GenerateRequest

MESSAGES = [{"role": "user", "content": "hi"}]


def test_chat_request_reads_the_openai_shapes() -> None:
    body = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [
                {"role": "developer", "content": "be brief"},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                },
            ],
            "max_completion_tokens": 5,
            "stop": "\n",
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "object"}},
            },
            "user": "ignored-extra-field",
        }
    )
    assert [m.as_dict() for m in body.messages] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "ab"},
    ]
    assert body.token_limit() == 5
    assert body.stop_list() == ["\n"]
    assert body.output_schema() == {"type": "object"}


@pytest.mark.parametrize(
    "patch",
    [
        {"n": 0},
        {"top_logprobs": 3},
        {"logprobs": True, "top_logprobs": 21},
        {"presence_penalty": 2.5},
        {"logit_bias": {"the": 1}},
        {"logit_bias": {"5": 101}},
        {"logit_bias": {str(i): 1 for i in range(301)}},
        {"max_tokens": 0},
        {"temperature": 5},
        {"messages": []},
        {"response_format": {"type": "json_schema"}},
    ],
)
def test_chat_request_refusals(patch: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ChatCompletionRequest.model_validate({"model": "m", "messages": MESSAGES, **patch})


@pytest.mark.parametrize(
    ("prompt", "prompts"),
    [("x", ["x"]), (["x", "y"], ["x", "y"]), ([1, 2], [[1, 2]]), ([[1], [2, 3]], [[1], [2, 3]])],
)
def test_completion_prompts_are_text_or_token_ids(prompt: object, prompts: object) -> None:
    assert CompletionRequest.model_validate({"model": "m", "prompt": prompt}).prompts() == prompts


@pytest.mark.parametrize("prompt", [[], [[]], [-1], ["x"] * 17, [[1]] * 17])
def test_completion_prompts_are_refused_past_their_limits(prompt: object) -> None:
    with pytest.raises(ValidationError, match="prompt"):
        CompletionRequest.model_validate({"model": "m", "prompt": prompt})


def test_generate_request_is_strict_and_greedy_by_default() -> None:
    body = GenerateRequest.model_validate({"input": "x", "schema": {"type": "string"}})
    assert body.temperature == 0.0 and body.json_schema == {"type": "string"}
    with pytest.raises(ValidationError, match="extra"):
        GenerateRequest.model_validate({"input": "x", "shema": {}})


@pytest.mark.parametrize(
    "extra",
    [
        {"user": "u-1", "metadata": {"k": "v"}, "store": False, "service_tier": "auto"},
        {"frequency_penalty": 0, "presence_penalty": 0.0, "logit_bias": {}},
        {"logprobs": False, "top_logprobs": 0},
        {"tools": [], "tool_choice": "none", "parallel_tool_calls": True},
    ],
)
def test_fields_that_ask_for_nothing_are_accepted(extra: dict[str, object]) -> None:
    ChatCompletionRequest.model_validate({"model": "m", "messages": MESSAGES, **extra})


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"functions": [{"name": "f"}]}, "`functions`"),
        ({"tool_choice": "required"}, "`tool_choice`"),
        ({"made_up_field": 1}, "`made_up_field`"),
    ],
)
def test_fields_not_honoured_are_refused_by_name(extra: dict[str, object], named: str) -> None:
    """Never silently ignored: a client asking for what hotswap does not honour learns it."""
    with pytest.raises(ValidationError, match=named):
        ChatCompletionRequest.model_validate({"model": "m", "messages": MESSAGES, **extra})


def test_completions_refuse_echo_by_name() -> None:
    with pytest.raises(ValidationError, match="`echo`"):
        CompletionRequest.model_validate({"model": "m", "prompt": "x", "logprobs": 2, "echo": True})
    CompletionRequest.model_validate({"model": "m", "prompt": "x", "logprobs": None, "echo": False})
    with pytest.raises(ValidationError, match="logprobs"):
        CompletionRequest.model_validate({"model": "m", "prompt": "x", "logprobs": 21})


def test_honoured_fields_map_to_the_domain() -> None:
    body = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": MESSAGES,
            "n": 2,
            "logprobs": True,
            "top_logprobs": 3,
            "logit_bias": {"42": -100, "7": 5.5},
            "presence_penalty": -2,
            "response_format": {"type": "json_object"},
        }
    )
    assert body.logprobs_count() == 3 and body.bias() == {42: -100.0, 7: 5.5}
    assert body.json_object() and body.output_schema() is None and body.n == 2
    assert GenerateRequest.model_validate({"input": "x", "logprobs": True}).top_logprobs is None

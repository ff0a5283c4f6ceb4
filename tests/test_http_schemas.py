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
        {"n": 3},
        {"max_tokens": 0},
        {"temperature": 5},
        {"messages": []},
        {"response_format": {"type": "json_schema"}},
    ],
)
def test_chat_request_refusals(patch: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ChatCompletionRequest.model_validate({"model": "m", "messages": MESSAGES, **patch})


def test_completion_takes_exactly_one_prompt() -> None:
    assert CompletionRequest.model_validate({"model": "m", "prompt": ["x"]}).prompt_text() == "x"
    with pytest.raises(ValidationError, match="exactly one prompt"):
        CompletionRequest.model_validate({"model": "m", "prompt": ["x", "y"]})


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
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "`tools`"),
        ({"tool_choice": "required"}, "`tool_choice`"),
        ({"logprobs": True, "top_logprobs": 3}, "`logprobs`, `top_logprobs`"),
        ({"frequency_penalty": 0.5}, "`frequency_penalty`"),
        ({"logit_bias": {"42": 5}}, "`logit_bias`"),
        ({"made_up_field": 1}, "`made_up_field`"),
    ],
)
def test_fields_not_honoured_are_refused_by_name(extra: dict[str, object], named: str) -> None:
    """Never silently ignored: a client asking for tools or logprobs learns it at once."""
    with pytest.raises(ValidationError, match=named):
        ChatCompletionRequest.model_validate({"model": "m", "messages": MESSAGES, **extra})


def test_completions_refuse_logprobs_and_echo_by_name() -> None:
    with pytest.raises(ValidationError, match="`echo`, `logprobs`"):
        CompletionRequest.model_validate({"model": "m", "prompt": "x", "logprobs": 2, "echo": True})
    CompletionRequest.model_validate({"model": "m", "prompt": "x", "logprobs": None, "echo": False})

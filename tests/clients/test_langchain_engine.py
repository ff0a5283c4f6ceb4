"""langchain-openai 1.8 through the real server: structured output by each method, tools,
`invoke` and `stream` (nothing here counts tokens: that would need tiktoken's files)."""

from __future__ import annotations

import jsonschema
import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langchain_openai import ChatOpenAI

from tests.clients.extraction import (
    MESSAGES,
    WEATHER_QUESTION,
    WEATHER_TOOL,
    Person,
    assert_person,
)
from tests.support.server import RunningServer

pytestmark = pytest.mark.engine

CAPITAL = "What is the capital of France? Answer in one sentence."


@pytest.fixture
def chat(server: RunningServer, base_model: str, max_tokens: int | None) -> ChatOpenAI:
    return ChatOpenAI(
        base_url=f"{server.url}/v1",
        api_key="unused",  # type: ignore[arg-type]
        model=base_model,
        temperature=0,
        max_tokens=max_tokens,  # type: ignore[call-arg]
        max_retries=0,
        timeout=600,
    )


def _within(message: AIMessage, max_tokens: int | None) -> None:
    usage = message.usage_metadata
    assert usage is not None and usage["output_tokens"] > 0
    assert max_tokens is None or usage["output_tokens"] <= max_tokens


@pytest.mark.parametrize("method", ["json_schema", "function_calling", "json_mode"])
def test_with_structured_output_returns_the_parsed_model(
    chat: ChatOpenAI, method: str, max_tokens: int | None
) -> None:
    structured = chat.with_structured_output(Person, method=method, include_raw=True)  # type: ignore[arg-type]
    result = structured.invoke(MESSAGES)
    raw = result["raw"]
    assert result["parsing_error"] is None, raw
    assert_person(result["parsed"])
    assert isinstance(raw, AIMessage)
    _within(raw, max_tokens)
    if method == "function_calling":
        assert [call["name"] for call in raw.tool_calls] == ["Person"]


def test_bind_tools_gives_valid_tool_calls_and_takes_their_results_back(
    chat: ChatOpenAI, max_tokens: int | None
) -> None:
    question = HumanMessage(WEATHER_QUESTION)
    called = chat.bind_tools([WEATHER_TOOL], tool_choice="required").invoke([question])
    assert isinstance(called, AIMessage)
    assert not called.invalid_tool_calls, called.invalid_tool_calls
    assert called.tool_calls, called
    for call in called.tool_calls:
        assert call["name"] == "get_weather" and call["id"]
        jsonschema.validate(call["args"], WEATHER_TOOL["function"]["parameters"])
    _within(called, max_tokens)
    results = [
        ToolMessage("18 degrees, sunny", tool_call_id=str(c["id"])) for c in called.tool_calls
    ]
    answer = chat.invoke([question, called, *results])
    assert isinstance(answer, AIMessage) and isinstance(answer.content, str) and answer.content
    assert not answer.tool_calls


def test_invoke_answers_in_text(chat: ChatOpenAI, max_tokens: int | None) -> None:
    answer = chat.invoke(CAPITAL)
    assert isinstance(answer, AIMessage)
    assert isinstance(answer.content, str) and answer.content.strip()
    assert answer.response_metadata["finish_reason"] in {"stop", "length"}
    _within(answer, max_tokens)


def test_stream_yields_the_text_invoke_gives(chat: ChatOpenAI, max_tokens: int | None) -> None:
    chunks = list(chat.stream(CAPITAL, stream_usage=True))
    assert chunks and all(isinstance(chunk, AIMessageChunk) for chunk in chunks)
    whole = chunks[0]
    for chunk in chunks[1:]:
        whole += chunk
    assert isinstance(whole.content, str) and whole.content.strip()
    assert whole.content == chat.invoke(CAPITAL).content
    _within(whole, max_tokens)

"""End to end through the real server, engine and base model (float32, greedy)."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from openai import OpenAI, UnprocessableEntityError
from openai.types.chat import ChatCompletionMessageParam

from tests.support.server import RunningServer

pytestmark = pytest.mark.engine

BASE = "SmolLM2-135M-Instruct"
QUESTION: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "What is the capital of France?"}
]


def _chat(openai_client: OpenAI, model: str, content: str, max_tokens: int = 24) -> str:
    response = openai_client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": content}],
        max_tokens=max_tokens,
        temperature=0,
    )
    return response.choices[0].message.content or ""


def test_openai_sdk_chat_answers_from_the_base_model(openai_client: OpenAI) -> None:
    response = openai_client.chat.completions.create(
        model=BASE, messages=QUESTION, max_tokens=24, temperature=0
    )
    answer = response.choices[0].message.content or ""
    assert "Paris" in answer
    assert response.model == BASE
    assert response.usage is not None and response.usage.completion_tokens > 0
    assert response.choices[0].finish_reason in {"stop", "length"}


def test_openai_sdk_fields_not_honoured_are_refused_by_name(openai_client: OpenAI) -> None:
    """Fields hotswap does not honour (the deprecated `functions`, `echo` with logprobs...)
    asked of the SDK get a 422 naming them; their no-op values and the harmless fields
    (`user`) are accepted."""
    for fields, named in (
        ({"functions": [{"name": "lookup"}]}, "`functions`"),
        ({"function_call": "auto"}, "`function_call`"),
    ):
        with pytest.raises(UnprocessableEntityError, match=named):
            openai_client.chat.completions.create(
                model=BASE, messages=QUESTION, max_tokens=4, extra_body=fields
            )
    reply = openai_client.chat.completions.create(
        model=BASE, messages=QUESTION, max_tokens=4, functions=[], user="app-user-1"
    )
    assert reply.choices[0].message.content


def test_streaming_chat_yields_the_same_text_as_non_streaming(openai_client: OpenAI) -> None:
    whole = _chat(openai_client, BASE, "Name three colours.", max_tokens=32)
    stream = openai_client.chat.completions.create(
        model=BASE,
        messages=[{"role": "user", "content": "Name three colours."}],
        max_tokens=32,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    parts, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            parts.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(parts) == whole and whole
    assert finish in {"stop", "length"}
    assert usage is not None and usage.completion_tokens > 0


def test_streaming_completion_yields_the_same_text_as_non_streaming(openai_client: OpenAI) -> None:
    prompt = "The three primary colours are"
    whole = openai_client.completions.create(
        model=BASE, prompt=prompt, max_tokens=20, temperature=0
    )
    streamed = "".join(
        chunk.choices[0].text
        for chunk in openai_client.completions.create(
            model=BASE, prompt=prompt, max_tokens=20, temperature=0, stream=True
        )
        if chunk.choices
    )
    assert streamed == whole.choices[0].text
    assert whole.choices[0].text.strip()


def test_models_lists_the_base_and_every_adapter(openai_client: OpenAI) -> None:
    models = [m.id for m in openai_client.models.list()]
    assert models[0] == BASE and {"alpha", "beta"} <= set(models)


def test_adapters_change_the_output(openai_client: OpenAI) -> None:
    prompt = "Write one sentence about the sea."
    outputs = {model: _chat(openai_client, model, prompt) for model in (BASE, "alpha", "beta")}
    assert len(set(outputs.values())) == 3, outputs


async def test_concurrent_mixed_batch_equals_each_request_alone(server: RunningServer) -> None:
    """24 greedy requests over base + 2 adapters sent at once give what each gives alone."""
    topics = ["rain", "bread", "trains", "music", "maps", "cats", "snow", "glass"]
    jobs = [
        (model, f"Say something short about {topic}.")
        for model, topic in zip([BASE, "alpha", "beta"] * 8, topics * 3, strict=True)
    ]

    async def ask(http: httpx.AsyncClient, model: str, content: str) -> str:
        response = await http.post(
            "/v1/chat/completions",
            json={
                "model": model,
                "messages": [{"role": "user", "content": content}],
                "max_tokens": 24,
                "temperature": 0,
            },
        )
        response.raise_for_status()
        return str(response.json()["choices"][0]["message"]["content"])

    async with httpx.AsyncClient(base_url=server.url, timeout=600) as http:
        alone = [await ask(http, model, content) for model, content in jobs]
        together = await asyncio.gather(*(ask(http, model, content) for model, content in jobs))
    mismatches = [(job, a, b) for job, a, b in zip(jobs, alone, together, strict=True) if a != b]
    assert not mismatches


def test_generate_with_schema_returns_a_parsed_valid_document(server: RunningServer) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 40}},
        "required": ["city"],
        "additionalProperties": False,
    }
    response = httpx.post(
        f"{server.url}/v1/generate",
        json={"input": "What is the capital of France?", "schema": schema},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["valid"] is True and body["finish_reason"] == "stop"
    assert body["output"] == json.loads(body["text"])
    assert set(body["output"]) == {"city"}
    compact = json.dumps(body["output"], ensure_ascii=False, separators=(",", ":"))
    assert body["text"] == compact, "the document has whitespace between its tokens"
    assert body["adapter"] == {"name": BASE, "version": None}
    assert body["usage"]["total_tokens"] == (
        body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    )


def test_generate_through_an_adapter_reports_it(server: RunningServer) -> None:
    response = httpx.post(
        f"{server.url}/v1/generate",
        json={"adapter": "alpha", "input": "Hello", "max_tokens": 8},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["adapter"] == {"name": "alpha", "version": 1}
    assert body["output"] is None and body["valid"] is None


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"model": "nope", "messages": QUESTION}, 404, "alpha"),
        ({"model": BASE}, 422, "messages"),
        ({"model": BASE, "messages": QUESTION, "max_tokens": 0}, 422, "max_tokens"),
        ({"model": BASE, "messages": QUESTION, "max_tokens": 100_000}, 422, "context length"),
        ({"model": BASE, "messages": QUESTION, "max_tokens": 10**9}, 422, "1000000"),
        ({"model": BASE, "messages": QUESTION, "n": 9}, 422, "n"),
        ({"model": BASE, "messages": [{"role": "wizard", "content": "x"}]}, 422, "role"),
        (
            {"model": BASE, "messages": [{"role": "user", "content": "word " * 3000}]},
            400,
            "more than the context",
        ),
        (
            {"model": BASE, "messages": QUESTION, "max_tokens": 2040},
            400,
            "over the context",
        ),
        (
            {
                "model": BASE,
                "messages": QUESTION,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "nonsense"}},
                },
            },
            422,
            "JSON Schema is invalid",
        ),
    ],
)
def test_bad_chat_requests_get_a_clear_4xx(
    server: RunningServer, body: dict[str, object], status: int, needle: str
) -> None:
    response = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == status, response.text
    assert needle in response.text


def test_malformed_json_body_is_a_422(server: RunningServer) -> None:
    response = httpx.post(
        f"{server.url}/v1/chat/completions",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 422
    assert "JSON" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/generate", {"input": "hi", "schema": False}, "schema: "),
        ("/v1/generate", {"input": "hi", "max_tokens": "many"}, "max_tokens: "),
        ("/v1/chat/completions", {"model": BASE}, "messages: "),
    ],
)
def test_invalid_body_is_a_422_in_the_error_envelope(
    server: RunningServer, path: str, body: dict[str, object], field: str
) -> None:
    response = httpx.post(f"{server.url}{path}", json=body, timeout=60)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["type"] == "invalid_request" and error["code"] == 422
    assert error["message"].startswith(field), error["message"]


def test_probes(server: RunningServer) -> None:
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{server.url}/readyz")
    assert ready.status_code == 200 and ready.json()["base_model"] == BASE

"""Property tests of issue 8's promise through the real server: never an invalid 200.

Generated JSON Schemas (`schema_strategies.schemas()`) with small or absent `max_tokens` go
to `/v1/generate` and, streamed, to `/v1/chat/completions`. Every answer is either a 200
whose document parses and validates (Draft 2020-12) against the schema sent, with
`valid: true`, or a 422 naming the reason: refused or over budget before generating, or a
document that kept failing a keyword the grammar does not enforce. A stream that is admitted
is the valid document, or ends with the `schema_violation` error event: never silently
invalid. A 503 "retry shortly" (the compile sandbox's wall-clock limit on a busy
machine) is retried, as a client is told to. Derandomized and without shrinking, so CI
draws the same examples every run. Each property counts the examples answered with a document
that validated and asserts a minimum share, so it cannot pass by refusing every schema.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings

from server.structured import validate_document
from tests.structured.schema_strategies import max_tokens, schemas
from tests.support.server import RunningServer

pytestmark = pytest.mark.engine

PROMPT = "Answer with a JSON document."
REFUSALS = {"schema_refused", "schema_budget", "schema_violation"}
MIN_VALIDATED_SHARE = 0.7
"""Share of the examples that must be answered with a document that validated (measured
2026-12-05: 26 of 33 on /v1/generate, the rest 422 schema_budget or schema_violation; 11 of
11 streamed): a property that held because schemas were refused proves nothing."""
BUSY_RETRIES = 3
"""A compile cut by the sandbox's wall-clock limit on a loaded machine is a 503 "retry
shortly" (not cached, not the schema's fault): the client retries, as it is told to."""
ENGINE_SETTINGS = settings(
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],  # shrinking would cost an engine run a step
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _check_refusal(error: dict[str, Any], limit: int | None) -> None:
    """A 422 (or an error event) names a reason the promise allows."""
    kind, message = error.get("type"), error.get("message", "")
    assert kind in REFUSALS, error
    if kind == "schema_budget":
        assert limit is not None and "raise max_tokens to at least" in message, error
    if kind == "schema_violation":  # only keywords the grammar leaves to validation may fail
        assert "does not enforce" in message, error


def _busy(response: httpx.Response) -> bool:
    return response.status_code == 503 and "retry shortly" in response.text


def _post(url: str, body: dict[str, Any]) -> httpx.Response:
    for _ in range(BUSY_RETRIES):
        response = httpx.post(url, json=body, timeout=600)
        if not _busy(response):
            break
        time.sleep(5)
    return response


def _check_document(schema: dict[str, Any], text: str) -> Any:
    outcome = validate_document(schema, text)
    assert outcome.valid, (json.dumps(schema), text, outcome.errors)
    return outcome.document


def test_generate_is_never_an_invalid_200(server: RunningServer) -> None:
    counts: Counter[str] = Counter()

    @settings(ENGINE_SETTINGS, max_examples=30)
    @example(schema={"type": "number"}, limit=None)  # used to be cut mid-number
    @example(schema={"type": "number"}, limit=3)
    @example(schema={"type": "object", "properties": {"a": {"type": "string"}}}, limit=1)
    @given(schema=schemas(), limit=max_tokens())
    def check(schema: dict[str, Any], limit: int | None) -> None:
        counts["examples"] += 1
        body: dict[str, Any] = {"input": PROMPT, "schema": schema, "seed": 7}
        if limit is not None:
            body["max_tokens"] = limit
        response = _post(f"{server.url}/v1/generate", body)
        if response.status_code == 422:
            _check_refusal(response.json()["error"], limit)
            counts[response.json()["error"]["type"]] += 1
            return
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["valid"] is True, answer
        assert answer["output"] == _check_document(schema, answer["text"])
        assert answer["finish_reason"] == "stop", answer  # never cut by max_tokens
        counts["validated"] += 1

    check()
    print(dict(counts))
    assert counts["validated"] >= MIN_VALIDATED_SHARE * counts["examples"], counts


@pytest.fixture(scope="module")
def model_name(server: RunningServer) -> str:
    return str(httpx.get(f"{server.url}/v1/models", timeout=30).json()["data"][0]["id"])


def test_stream_is_the_valid_document_or_an_error(server: RunningServer, model_name: str) -> None:
    counts: Counter[str] = Counter()

    @settings(ENGINE_SETTINGS, max_examples=10)
    @example(schema={"type": "array", "items": {"type": "number"}}, limit=None)
    @given(schema=schemas(), limit=max_tokens())
    def check(schema: dict[str, Any], limit: int | None) -> None:
        counts["examples"] += 1
        counts[_stream_once(server.url, model_name, schema, limit)] += 1

    check()
    print(dict(counts))
    assert counts["validated"] >= MIN_VALIDATED_SHARE * counts["examples"], counts


def _stream_once(url: str, model_name: str, schema: dict[str, Any], limit: int | None) -> str:
    """One streamed chat request under `schema`, checked; what it ended as ("validated", or
    the refusal's type)."""
    body: dict[str, Any] = {
        "model": model_name,
        "messages": [{"role": "user", "content": PROMPT}],
        "temperature": 0,
        "seed": 7,
        "stream": True,
        "response_format": {"type": "json_schema", "json_schema": {"schema": schema}},
    }
    if limit is not None:
        body["max_tokens"] = limit
    for _ in range(BUSY_RETRIES):
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=600) as response:
            response.read()
        if not _busy(response):
            break
        time.sleep(5)
    if response.status_code == 422:
        _check_refusal(response.json()["error"], limit)
        return str(response.json()["error"]["type"])
    assert response.status_code == 200, response.text
    events = [
        json.loads(line.removeprefix("data: "))
        for line in response.text.splitlines()
        if line.startswith("data: ") and line != "data: [DONE]"
    ]
    errors = [event["error"] for event in events if "error" in event]
    if errors:
        assert len(errors) == 1 and "error" in events[-1], events
        _check_refusal(errors[0], limit)
        return str(errors[0]["type"])
    text = "".join(
        choice["delta"].get("content") or "" for event in events for choice in event["choices"]
    )
    _check_document(schema, text)
    finish = [c["finish_reason"] for e in events for c in e["choices"] if c["finish_reason"]]
    assert finish == ["stop"], events
    return "validated"

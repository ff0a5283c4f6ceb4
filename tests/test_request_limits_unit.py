"""Every value of a request has its limit checked before the work it causes: the fields'
limits (shared by the OpenAI routes, /v1/generate and gRPC), the prompt's length before it
is tokenized, tokenizing and resolving off the event loop, and chat template errors."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import jinja2
import pytest
from pydantic import BaseModel, ValidationError

from server.auth import KeyRing
from server.catalog import ServedModel
from server.engine import MAX_SEED, Engine
from server.errors import InvalidRequest, PromptTooLong
from server.generation import GenerationRequest, GenerationService
from server.http.app import create_app
from server.http.schemas import ChatCompletionRequest, CompletionRequest
from server.metrics.labels import LabelTracker
from server.requests import parse_generate, validation_message
from server.schema_policy import SchemaPolicy
from server.settings import Settings
from server.state import ServerState
from server.task_request import GenerateRequest
from tests.support.fakes import FakeCatalog, FakeEngine, FakeGuard

CHAT: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
COMPLETION: dict[str, Any] = {"model": "m", "prompt": "hi"}
GENERATE: dict[str, Any] = {"input": "hi"}
BODIES: list[tuple[type[BaseModel], dict[str, Any]]] = [
    (ChatCompletionRequest, CHAT),
    (CompletionRequest, COMPLETION),
    (GenerateRequest, GENERATE),
]
SAMPLING = [(ChatCompletionRequest, CHAT), (CompletionRequest, COMPLETION)]


def _refusal(model: type[BaseModel], body: Mapping[str, Any]) -> str:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(body)
    return validation_message(caught.value.errors())


@pytest.mark.parametrize(("model", "base"), BODIES)
@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ({"seed": 2**64}, "seed: Input should be less than or equal to 9223372036854775807"),
        ({"seed": 2**63}, "seed: Input should be less than or equal to 9223372036854775807"),
        ({"seed": -1}, "seed: Input should be greater than or equal to 0"),
        ({"max_tokens": 1_000_001}, "max_tokens: Input should be less than or equal to 1000000"),
        ({"top_p": float("nan")}, "top_p: Input should be a finite number"),
        ({"temperature": float("inf")}, "temperature: Input should be a finite number"),
    ],
)
def test_numbers_are_range_checked_on_every_route(
    model: type[BaseModel], base: dict[str, Any], patch: dict[str, Any], expected: str
) -> None:
    assert _refusal(model, {**base, **patch}) == expected


@pytest.mark.parametrize(("model", "base"), BODIES)
def test_nan_in_the_json_text_is_refused(model: type[BaseModel], base: dict[str, Any]) -> None:
    """FastAPI reads bodies with `json.loads`, which takes NaN and Infinity literals."""
    body = json.loads(json.dumps(base)[:-1] + ', "temperature": NaN}')
    assert _refusal(model, body) == "temperature: Input should be a finite number"


@pytest.mark.parametrize(("model", "base"), BODIES)
def test_seed_bounds_are_accepted(model: type[BaseModel], base: dict[str, Any]) -> None:
    for seed in (0, MAX_SEED):
        assert model.model_validate({**base, "seed": seed}).seed == seed  # type: ignore[attr-defined]


@pytest.mark.vllm
def test_seed_bounds_are_what_vllm_takes() -> None:
    """vLLM takes any int in SamplingParams; the seed then crosses msgpack to the engine core
    and seeds a torch generator. 0 and MAX_SEED pass both; 2**64 (the reported 500) fails."""
    pytest.importorskip("vllm")
    import torch
    from vllm.exceptions import VLLMValidationError
    from vllm.sampling_params import SamplingParams
    from vllm.v1.serial_utils import MsgpackEncoder

    encoder = MsgpackEncoder()
    for seed in (0, MAX_SEED):
        params = SamplingParams(seed=seed)
        assert params.seed == seed
        encoder.encode(params)
        torch.Generator().manual_seed(seed)
    with pytest.raises(OverflowError):
        encoder.encode(SamplingParams(seed=2**64))
    assert SamplingParams(seed=-1).seed is None  # -1 means "no seed" to vLLM: refused here
    with pytest.raises(VLLMValidationError, match="empty string"):
        SamplingParams(stop=[""])  # refused here as `stop.0`


@pytest.mark.parametrize(("model", "base"), SAMPLING)
@pytest.mark.parametrize(
    ("stop", "expected"),
    [
        ([""], "stop.0: String should have at least 1 character"),
        ("", "stop.0: String should have at least 1 character"),
        (["a"] * 5, "stop: List should have at most 4 items after validation, not 5"),
        (["a" * 257], "stop.0: String should have at most 256 characters"),
        (5, "stop: Input should be a valid list"),
    ],
)
def test_stop_is_a_few_short_non_empty_strings(
    model: type[BaseModel], base: dict[str, Any], stop: Any, expected: str
) -> None:
    assert _refusal(model, {**base, "stop": stop}) == expected


def test_stop_takes_one_string_or_up_to_four() -> None:
    one = ChatCompletionRequest.model_validate({**CHAT, "stop": "\n"})
    four = ChatCompletionRequest.model_validate({**CHAT, "stop": ["x" * 256] * 4})
    assert one.stop_list() == ["\n"] and four.stop_list() == ["x" * 256] * 4
    assert ChatCompletionRequest.model_validate(CHAT).stop_list() == []


def test_a_million_stop_strings_are_refused_at_once() -> None:
    body = {**CHAT, "stop": ["x"] * 1_000_000}
    started = time.perf_counter()
    message = _refusal(ChatCompletionRequest, body)
    assert time.perf_counter() - started < 0.1
    assert message == "stop: List should have at most 4 items after validation, not 1000000"


def test_the_stop_field_is_documented_as_a_string_or_a_list() -> None:
    stop = ChatCompletionRequest.model_json_schema()["properties"]["stop"]
    kinds = [option.get("type") for option in stop["anyOf"]]
    assert kinds == ["string", "array", "null"]
    assert stop["anyOf"][1]["maxItems"] == 4


@pytest.mark.parametrize(
    ("model", "body", "expected"),
    [
        (ChatCompletionRequest, {**CHAT, "model": "m" * 201}, "model: String should have at most"),
        (GenerateRequest, {"input": "x", "adapter": "a" * 201}, "adapter: String should have at"),
        (
            ChatCompletionRequest,
            {**CHAT, "messages": CHAT["messages"] * 257},
            "messages: List should have at most 256 items",
        ),
        (
            GenerateRequest,
            {"input": CHAT["messages"] * 257},
            "input.list[...]: List should have at most 256 items",
        ),
        (GenerateRequest, {"input": []}, "input.list[...]: List should have at least 1 item"),
        (
            ChatCompletionRequest,
            {
                **CHAT,
                "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}] * 257}],
            },
            "List should have at most 256 items",
        ),
        (CompletionRequest, {"model": "m", "prompt": ["x"] * 100_000}, "at most 16 items"),
    ],
)
def test_references_and_lists_are_capped(
    model: type[BaseModel], body: dict[str, Any], expected: str
) -> None:
    message = _refusal(model, body).replace("list[ChatMessage]", "list[...]")
    assert expected in message


def test_grpc_and_http_share_the_task_call_rules() -> None:
    with pytest.raises(InvalidRequest, match="seed: Input should be less than or equal"):
        parse_generate({"input": "x", "seed": 2**64})


# --- the domain: the prompt's length before tokenizing, and nothing long on the loop ---


class CountingEngine(FakeEngine):
    """Counts tokenizer calls and records the thread each ran on."""

    ready = True

    def __init__(self) -> None:
        super().__init__("ok")
        self.calls = 0
        self.threads: list[threading.Thread] = []

    def render_chat(self, messages: Sequence[Mapping[str, object]]) -> list[int]:
        self.calls += 1
        self.threads.append(threading.current_thread())
        return super().render_chat(messages)

    def tokenize(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        self.calls += 1
        self.threads.append(threading.current_thread())
        return super().tokenize(text)


class ThreadCatalog(FakeCatalog):
    """Records the thread each resolve (a database read) ran on."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []

    def resolve(self, ref: str | None) -> ServedModel:
        self.threads.append(threading.current_thread())
        return super().resolve(ref)


def _service(
    max_model_len: int = 100, max_prompt_chars: int | None = None
) -> tuple[GenerationService, CountingEngine, ThreadCatalog]:
    engine, catalog = CountingEngine(), ThreadCatalog()
    service = GenerationService(
        engine,  # type: ignore[arg-type]
        catalog,  # type: ignore[arg-type]
        max_model_len,
        16,
        8,
        LabelTracker(),
        SchemaPolicy(FakeGuard()),
        max_prompt_chars=max_prompt_chars,
    )
    return service, engine, catalog


async def test_a_32_mb_prompt_is_refused_in_milliseconds_without_tokenizing() -> None:
    service, engine, catalog = _service(max_model_len=2048)
    request = GenerationRequest(model=None, prompt="x" * (32 << 20))
    started = time.perf_counter()
    with pytest.raises(PromptTooLong, match="`prompt` is 33554432 characters long, over the "):
        await service.prepare(request)
    assert time.perf_counter() - started < 0.05
    assert engine.calls == 0 and catalog.threads == []


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (GenerationRequest(model=None, prompt="x" * 1601), "prompt"),
        (GenerationRequest(model="a", task_input="x" * 1601), "input"),
        (
            GenerationRequest(model=None, messages=[{"role": "user", "content": "x" * 800}] * 3),
            "messages",
        ),
    ],
)
async def test_the_default_limit_is_16_characters_per_token(
    request_: GenerationRequest, field: str
) -> None:
    service, engine, _ = _service(max_model_len=100)  # 1,600 characters
    with pytest.raises(PromptTooLong, match=f"`{field}` is .* over the limit of 1600 characters"):
        await service.prepare(request_)
    assert engine.calls == 0


async def test_the_limit_is_a_setting() -> None:
    service, engine, _ = _service(max_model_len=100, max_prompt_chars=10)
    with pytest.raises(PromptTooLong, match="over the limit of 10 characters"):
        await service.prepare(GenerationRequest(model=None, prompt="x" * 11))
    prepared = await service.prepare(GenerationRequest(model=None, prompt="x" * 10))
    assert len(prepared.prompt_token_ids) == 10 and engine.calls == 1


async def test_resolving_and_tokenizing_run_in_worker_threads() -> None:
    service, engine, catalog = _service()
    loop_thread = threading.current_thread()
    await service.prepare(GenerationRequest(model=None, prompt="hi"))
    await service.prepare(
        GenerationRequest(model="a", messages=[{"role": "user", "content": "hi"}])
    )
    await service.prepare(GenerationRequest(model="a", task_input="hi"))
    assert len(engine.threads) == 3 and len(catalog.threads) == 3
    assert all(t is not loop_thread for t in engine.threads + catalog.threads)


async def test_remembered_model_references_are_bounded() -> None:
    service, _, _ = _service()
    service.REMEMBERED_REFS = 2
    for ref in ("a", "base", None):
        await service.prepare(GenerationRequest(model=ref, prompt="hi"))
    assert list(service._metric_names) == ["base", None]


# --- the chat template ---


class _Tokenizer:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def apply_chat_template(self, *_: Any, **__: Any) -> str:
        raise self.error


class _Llm:
    errored = False


def _engine(error: Exception) -> Engine:
    engine = Engine(Settings(), base=None)  # type: ignore[arg-type]
    engine._llm, engine._tokenizer = _Llm(), _Tokenizer(error)
    return engine


def test_a_template_error_is_a_422_that_echoes_nothing() -> None:
    engine = _engine(jinja2.TemplateError("secret: roles must alternate"))
    with pytest.raises(InvalidRequest) as caught:
        engine.render_chat([{"role": "assistant", "content": "x"}])
    assert "secret" not in caught.value.message and "chat template" in caught.value.message


def test_other_errors_of_the_template_propagate() -> None:
    with pytest.raises(RuntimeError, match="boom"):
        _engine(RuntimeError("boom")).render_chat([{"role": "user", "content": "x"}])


# --- routes ---


def _app(tmp_path: Path, catalog: Any, engine: Any, generation: Any = None) -> httpx.AsyncClient:
    app = create_app(Settings(home=tmp_path), KeyRing({}))
    app.state.hotswap = ServerState(
        engine=engine,
        catalog=catalog,
        generation=generation,
        adapters=None,  # type: ignore[arg-type]
        labels=LabelTracker(),
    )
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1")


@pytest.mark.parametrize(
    ("route", "body", "status", "message"),
    [
        ("/v1/chat/completions", {**CHAT, "seed": 2**64}, 422, "seed: Input should be less"),
        ("/v1/completions", {**COMPLETION, "stop": [""]}, 422, "stop.0: String should have at"),
        ("/v1/generate", {"input": "x", "seed": 2**64}, 422, "seed: Input should be less"),
        ("/v1/completions", {**COMPLETION, "prompt": "x" * 2000}, 400, "over the limit of 1600"),
        ("/v1/generate", {"input": "x" * 2000}, 400, "`input` is 2000 characters long"),
    ],
)
async def test_the_routes_answer_4xx_naming_the_field(
    tmp_path: Path, route: str, body: dict[str, Any], status: int, message: str
) -> None:
    service, engine, catalog = _service(max_model_len=100)
    async with _app(tmp_path, catalog, engine, service) as client:
        answer = await client.post(route, json=body)
    assert answer.status_code == status, answer.text
    assert message in answer.json()["error"]["message"]
    assert engine.calls == 0


async def test_nan_in_a_body_is_a_422(tmp_path: Path) -> None:
    service, engine, catalog = _service()
    text = json.dumps(CHAT)[:-1] + ', "temperature": NaN}'
    async with _app(tmp_path, catalog, engine, service) as client:
        answer = await client.post(
            "/v1/chat/completions", content=text, headers={"content-type": "application/json"}
        )
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["message"] == "temperature: Input should be a finite number"


async def test_listing_models_reads_the_registry_off_the_loop(tmp_path: Path) -> None:
    threads: list[threading.Thread] = []

    class Catalog:
        def list_models(self) -> list[ServedModel]:
            threads.append(threading.current_thread())
            return [ServedModel("base", None, None)]

    async with _app(tmp_path, Catalog(), CountingEngine()) as client:
        answer = await client.get("/v1/models")
    assert answer.status_code == 200, answer.text
    assert [m["id"] for m in answer.json()["data"]] == ["base"]
    assert threads and threads[0] is not threading.current_thread()

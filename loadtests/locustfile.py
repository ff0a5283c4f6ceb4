"""Locust load test of a running hotswap server, over HTTP and gRPC.

Closed loop (each user sends its next request when the previous one returns):

    locust -f loadtests/locustfile.py --headless -u 8 -r 8 -t 2m \
        --host http://127.0.0.1:8000 --grpc-target 127.0.0.1:50051 \
        ClosedLoopHttpUser ClosedLoopGrpcUser

Open loop (Poisson arrivals at `--arrival-rate` requests/s in all, whatever the response
times: each arrival is sent from its own greenlet, nobody waits for an answer before the next
arrival is scheduled):

    locust -f loadtests/locustfile.py --headless -u 1 -r 1 -t 2m \
        --host http://127.0.0.1:8000 --grpc-target 127.0.0.1:50051 \
        --arrival-rate 2 OpenLoopUser

The mix: adapters weighted by `--adapters "alpha:3,beta:2,base:1"` (default: every model the
server lists, the base model once, each adapter twice), `--schema-share` of requests with a
JSON Schema, prompts from BANKING77 / NLU++ (see `workload.load_prompts`). `make loadtest`
starts a server with two adapters and runs this file headless (`loadtests/run_locust.py`).
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent
import gevent.pool
import grpc
import grpc.experimental.gevent as grpc_gevent
import httpx
from locust import HttpUser, User, constant, events, task
from locust.clients import HttpSession
from locust.env import Environment

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loadtests.workload import INTENT_INSTRUCTION, INTENT_SCHEMA, load_prompts
from server.grpc_api.gen.hotswap.v1 import inference_pb2, inference_pb2_grpc

grpc_gevent.init_gevent()  # after gevent's monkey patching (importing locust), before channels

PROMPTS = load_prompts()
BASE = "base"


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument("--grpc-target", default="127.0.0.1:50051", help="gRPC host:port")
    parser.add_argument(
        "--adapters", default="", help='weighted models, "name:weight,..."; "base" = no adapter'
    )
    parser.add_argument("--schema-share", type=float, default=0.5, help="share with a schema")
    parser.add_argument("--grpc-share", type=float, default=0.5, help="open loop: gRPC share")
    parser.add_argument("--max-tokens", type=int, default=32, help="free requests")
    parser.add_argument(
        "--arrival-rate", type=float, default=1.0, help="open loop: requests/s over all users"
    )


class Mix:
    """Draws what the next request is: adapter (weighted), prompt, with or without schema."""

    def __init__(self, environment: Environment) -> None:
        options = environment.parsed_options
        self.schema_share = options.schema_share if options else 0.5
        self.grpc_share = options.grpc_share if options else 0.5
        self.max_tokens = options.max_tokens if options else 32
        served = _served_models(environment.host or "")
        self.base_name = served[0]
        spec = options.adapters if options else ""
        weights = _parse_weights(spec) if spec else {BASE: 1.0, **dict.fromkeys(served[1:], 2.0)}
        self.models = list(weights)
        self.weights = list(weights.values())

    def adapter(self) -> str | None:
        name = random.choices(self.models, self.weights)[0]
        return None if name == BASE else name

    def prompt(self) -> str:
        return random.choice(PROMPTS)

    def with_schema(self) -> bool:
        return random.random() < self.schema_share


def _parse_weights(spec: str) -> dict[str, float]:
    weights = {}
    for item in spec.split(","):
        name, _, weight = item.strip().partition(":")
        weights[name] = float(weight or 1)
    return weights


def _served_models(host: str) -> list[str]:
    """The served model names, the base model first (as `/v1/models` lists them)."""
    listed = httpx.get(f"{host}/v1/models", timeout=30)
    listed.raise_for_status()
    return [model["id"] for model in listed.json()["data"]]


_mixes: dict[int, Mix] = {}


def mix_of(environment: Environment) -> Mix:
    """One mix per environment, built on first use (the host is known by then)."""
    if id(environment) not in _mixes:
        _mixes[id(environment)] = Mix(environment)
    return _mixes[id(environment)]


def http_chat(client: HttpSession, mix: Mix) -> None:
    """OpenAI chat completion; with a schema as `response_format` (and the answer checked)."""
    adapter = mix.adapter()
    body: dict[str, Any] = {
        "model": adapter or mix.base_name,
        "messages": [{"role": "user", "content": INTENT_INSTRUCTION + mix.prompt()}],
        "temperature": 0.0,
    }
    schema = mix.with_schema()
    if schema:  # no max_tokens: the schema bounds the answer, the server sizes it
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "intent", "schema": INTENT_SCHEMA},
        }
    else:
        body["max_tokens"] = mix.max_tokens
    name = f"chat {'schema' if schema else 'free'}"
    with client.post("/v1/chat/completions", json=body, name=name, catch_response=True) as r:
        if r.status_code != 200:
            r.failure(f"HTTP {r.status_code}: {r.text[:200]}")
        elif schema and not _valid_intent(r.json()["choices"][0]["message"]["content"]):
            r.failure(f"not valid for the schema: {r.text[:200]}")
        else:
            r.success()


def http_generate(client: HttpSession, mix: Mix) -> None:
    """The task call; with a schema the server reports whether the answer is valid."""
    body: dict[str, Any] = {"input": mix.prompt()}
    adapter = mix.adapter()
    if adapter:
        body["adapter"] = adapter
    schema = mix.with_schema()
    if schema:
        body["schema"] = INTENT_SCHEMA
    else:
        body["max_tokens"] = mix.max_tokens
    name = f"generate {'schema' if schema else 'free'}"
    with client.post("/v1/generate", json=body, name=name, catch_response=True) as r:
        if r.status_code != 200:
            r.failure(f"HTTP {r.status_code}: {r.text[:200]}")
        elif schema and not (r.json()["valid"] is True and _valid_intent(r.json()["text"])):
            r.failure(f"not valid for the schema: {r.text[:200]}")
        else:
            r.success()


def _valid_intent(text: str) -> bool:
    """Whether `text` is a JSON object naming one of the schema's intents."""
    try:
        document = json.loads(text)
    except ValueError:
        return False
    enum = INTENT_SCHEMA["properties"]["intent"]["enum"]
    return isinstance(document, dict) and document.get("intent") in enum


class GrpcClient:
    """`Inference` stub calls reported to Locust as request events (Locust's documented way
    to load-test a protocol other than HTTP)."""

    def __init__(self, environment: Environment) -> None:
        options = environment.parsed_options
        target = options.grpc_target if options else "127.0.0.1:50051"
        self.environment = environment
        self.channel = grpc.insecure_channel(target)
        self.stub = inference_pb2_grpc.InferenceStub(self.channel)

    def generate(self, mix: Mix) -> None:
        adapter = mix.adapter()
        request = inference_pb2.GenerateRequest(text=mix.prompt())
        if adapter:
            request.adapter = adapter
        schema = mix.with_schema()
        if schema:
            request.schema_json = json.dumps(INTENT_SCHEMA)
        else:
            request.max_tokens = mix.max_tokens
        self._timed(f"Generate {'schema' if schema else 'free'}", self.stub.Generate, request)

    def _timed(self, name: str, call: Callable[..., Any], request: Any) -> None:
        started = time.perf_counter()
        exception: Exception | None = None
        length = 0
        try:
            response = call(request, timeout=600)
            length = response.ByteSize()
            if request.HasField("schema_json") and not (
                response.valid and _valid_intent(response.text)
            ):
                exception = ValueError(f"schema output not valid: {response.text[:200]}")
        except grpc.RpcError as error:
            exception = error
        self.environment.events.request.fire(
            request_type="grpc",
            name=name,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=length,
            response=None,
            context={},
            exception=exception,
        )

    def close(self) -> None:
        self.channel.close()


class ClosedLoopHttpUser(HttpUser):
    """HTTP, closed loop: the OpenAI chat route and `/v1/generate`, equally often."""

    wait_time = constant(0)

    @task
    def chat(self) -> None:
        http_chat(self.client, mix_of(self.environment))

    @task
    def generate(self) -> None:
        http_generate(self.client, mix_of(self.environment))


class ClosedLoopGrpcUser(User):
    """gRPC, closed loop: `Inference.Generate`."""

    wait_time = constant(0)

    def on_start(self) -> None:
        self.grpc = GrpcClient(self.environment)

    def on_stop(self) -> None:
        self.grpc.close()

    @task
    def generate(self) -> None:
        self.grpc.generate(mix_of(self.environment))


class OpenLoopUser(User):
    """Poisson arrivals at `--arrival-rate` per second: one user (`fixed_count`) draws
    exponential gaps on an absolute clock and sends each request from a greenlet of its own,
    so arrivals never wait for responses. HTTP (chat or generate) or gRPC by `--grpc-share`."""

    fixed_count = 1

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.rate = options.arrival_rate if options else 1.0
        self.http = HttpSession(
            base_url=self.host or "",
            request_event=self.environment.events.request,
            user=self,
        )
        self.grpc = GrpcClient(self.environment)
        self.in_flight = gevent.pool.Group()
        self.next_arrival = time.monotonic() + random.expovariate(self.rate)

    def on_stop(self) -> None:
        self.in_flight.join(timeout=60)
        self.grpc.close()

    @task
    def arrive(self) -> None:
        gevent.sleep(max(0.0, self.next_arrival - time.monotonic()))
        self.next_arrival += random.expovariate(self.rate)
        self.in_flight.spawn(self._one, mix_of(self.environment))

    def wait_time(self) -> float:
        return 0.0

    def _one(self, mix: Mix) -> None:
        if random.random() < mix.grpc_share:
            self.grpc.generate(mix)
        elif random.random() < 0.5:
            http_chat(self.http, mix)
        else:
            http_generate(self.http, mix)

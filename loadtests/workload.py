"""What the load tests and side-by-side benchmarks send, and how they time one streamed call.

Prompts are real customer queries: BANKING77 and NLU++ texts from the shared datasets folder
(`../shared/datasets/`, or `HOTSWAP_DATASETS`) when present, the project's demo set under
`training/demo/` otherwise. Light on purpose: the Locust file imports it under gevent, so
nothing here imports torch or vLLM.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("HOTSWAP_DATASETS", ROOT.parent / "shared" / "datasets"))
DEMO_INTENTS = ROOT / "training" / "demo" / "intents.csv"


def load_intents() -> list[str]:
    """The intent labels schema requests choose from: BANKING77's 77, else the demo set's."""
    categories = DATASETS / "banking77" / "categories.json"
    if categories.is_file():
        return list(json.loads(categories.read_text()))
    with DEMO_INTENTS.open(newline="") as fh:
        return sorted({row["label"] for row in csv.DictReader(fh)})


# The schema of schema requests: one intent out of the label set, as a real task adapter has.
INTENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"intent": {"enum": load_intents()}},
    "required": ["intent"],
    "additionalProperties": False,
}
INTENT_INSTRUCTION = "Name the customer's intent in a few words: "
# Benchmarks ask for a long answer, so that greedy outputs rarely stop before max_tokens.
REPLY_INSTRUCTION = "Write a detailed, friendly reply to this customer message: "


def _csv_texts(path: Path) -> list[str]:
    with path.open(newline="") as fh:
        return [row["text"] for row in csv.DictReader(fh) if row.get("text")]


def _nlupp_texts(folder: Path) -> list[str]:
    return [
        row["text"]
        for fold in sorted(folder.glob("*/fold*.json"))
        for row in json.loads(fold.read_text())
        if row.get("text")
    ]


def load_prompts(limit: int = 2000, seed: int = 0) -> list[str]:
    """Up to `limit` distinct customer queries, shuffled with `seed`; BANKING77 test split and
    NLU++ (banking and hotels) if the shared datasets are there, else the demo set."""
    texts: list[str] = []
    if (DATASETS / "banking77" / "test.csv").is_file():
        texts += _csv_texts(DATASETS / "banking77" / "test.csv")
    if (DATASETS / "nlupp").is_dir():
        texts += _nlupp_texts(DATASETS / "nlupp")
    if not texts:
        texts = _csv_texts(DEMO_INTENTS)
    unique = sorted(set(texts))
    random.Random(seed).shuffle(unique)
    return unique[:limit]


@dataclass(frozen=True)
class Call:
    """One request of a benchmark: which model (adapter name or base) and which prompt."""

    model: str
    prompt: str


def request_mix(models: Sequence[str], prompts: Sequence[str], count: int) -> list[Call]:
    """`count` calls spread round-robin over `models`, prompts taken in order: the same list
    for every system a benchmark compares."""
    return [Call(models[i % len(models)], prompts[i % len(prompts)]) for i in range(count)]


@dataclass(frozen=True)
class Streamed:
    """Client-side timings of one streamed chat completion."""

    ttft_s: float
    latency_s: float
    completion_tokens: int


async def stream_chat(http: httpx.AsyncClient, call: Call, max_tokens: int) -> Streamed:
    """POST /v1/chat/completions with `stream=True` (greedy, usage in the last chunk): the time
    to the first content delta and the completion tokens the server reports. Works against
    any OpenAI-compatible server (hotswap's and `vllm serve`)."""
    body = {
        "model": call.model,
        "messages": [{"role": "user", "content": REPLY_INSTRUCTION + call.prompt}],
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    ttft: float | None = None
    tokens = 0
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            raise RuntimeError(f"{call.model}: HTTP {response.status_code} {response.text[:300]}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: ") :])
            if ttft is None and any(c["delta"].get("content") for c in chunk.get("choices", [])):
                ttft = time.perf_counter() - started
            if chunk.get("usage"):
                tokens = int(chunk["usage"]["completion_tokens"])
    latency = time.perf_counter() - started
    return Streamed(ttft if ttft is not None else latency, latency, tokens)


@dataclass(frozen=True)
class RunResult:
    """One closed-loop run: completion tokens/s over the wall time and per-request timings."""

    tokens_per_s: float
    requests: list[Streamed]

    @property
    def ttfts(self) -> list[float]:
        return [r.ttft_s for r in self.requests]


async def closed_loop(
    calls: Sequence[Call], concurrency: int, send: Callable[[Call], Awaitable[Streamed]]
) -> RunResult:
    """`calls` sent through `send` by `concurrency` closed-loop clients (each sends its next
    call when the last one ended); wall-clock completion tokens/s."""
    queue = list(reversed(calls))
    done: list[Streamed] = []

    async def client() -> None:
        while queue:
            done.append(await send(queue.pop()))

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return RunResult(sum(r.completion_tokens for r in done) / elapsed, done)


async def run_calls(
    url: str, calls: Sequence[Call], concurrency: int, max_tokens: int
) -> RunResult:
    """Send `calls` to `url` as streamed chat completions with `concurrency` closed-loop
    clients."""
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=900, limits=limits) as http:
        return await closed_loop(
            calls, concurrency, lambda call: stream_chat(http, call, max_tokens)
        )


def wait_ready(url: str, path: str, timeout_s: float, alive: Callable[[], bool]) -> None:
    """Poll `url + path` until HTTP 200; `alive()` False (the process died) raises at once."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"server for {url} exited before it was ready")
        try:
            if httpx.get(url + path, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(1)
    raise RuntimeError(f"{url}{path} not ready in {timeout_s:.0f} s")

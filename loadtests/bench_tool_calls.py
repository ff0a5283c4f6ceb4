"""Tool calls under load: every call's arguments parsed and validated against its function.

Sends `--requests` chat requests (default 200), `--concurrency` at a time (default 4), to a
real `hotswap serve` (started here on loopback, or the one at `--url`). Every request offers
the same four functions (nested objects, enums, arrays, a pattern, number bounds) with
`tool_choice: "required"` and `parallel_tool_calls: false`, and asks a question meant for one
of them; sampling is on (temperature 1, a seed per request) so the answers differ. Each
answer's `tool_calls` are parsed (JSON) and validated with jsonschema (Draft 2020-12) against
the called function's `parameters`. One request per question goes first, untimed (the
grammar's first compile).

Prints the count of requests, answers, tool calls, valid calls, requests/s and the latency
p50/p99, then the same as one JSON line.

    .venv/bin/python loadtests/bench_tool_calls.py                  # starts its own server
    .venv/bin/python loadtests/bench_tool_calls.py --url http://127.0.0.1:8000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jsonschema

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from server.base_model import prepare_default_base_model  # noqa: E402
from server.settings import Settings  # noqa: E402
from tests.support.server import start_server  # noqa: E402

NAME = {"type": "string", "minLength": 1, "maxLength": 30}
FUNCTIONS: dict[str, dict[str, Any]] = {
    "get_weather": {
        "description": "The weather forecast for a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": NAME,
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
    "book_flight": {
        "description": "Book a flight for one or more passengers.",
        "parameters": {
            "type": "object",
            "properties": {
                "origin": {"type": "string", "pattern": "^[A-Z]{3}$"},
                "destination": {"type": "string", "pattern": "^[A-Z]{3}$"},
                "cabin": {"type": "string", "enum": ["economy", "premium", "business"]},
                "passengers": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 3,
                    "items": {
                        "type": "object",
                        "properties": {
                            "name": NAME,
                            "age": {"type": "integer", "minimum": 0, "maximum": 120},
                        },
                        "required": ["name", "age"],
                        "additionalProperties": False,
                    },
                },
            },
            "required": ["origin", "destination", "cabin", "passengers"],
            "additionalProperties": False,
        },
    },
    "create_event": {
        "description": "Put an event in the calendar.",
        "parameters": {
            "type": "object",
            "properties": {
                "title": {"type": "string", "minLength": 1, "maxLength": 40},
                "when": {
                    "type": "object",
                    "properties": {
                        "date": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"},
                        "hour": {"type": "integer", "minimum": 0, "maximum": 23},
                    },
                    "required": ["date", "hour"],
                    "additionalProperties": False,
                },
                "attendees": {"type": "array", "items": NAME, "maxItems": 4},
                "reminder": {"type": "boolean"},
            },
            "required": ["title", "when", "attendees"],
            "additionalProperties": False,
        },
    },
    "search_products": {
        "description": "Search the shop's catalogue.",
        "parameters": {
            "type": "object",
            "properties": {
                "query": {"type": "string", "minLength": 1, "maxLength": 40},
                "filters": {
                    "type": "object",
                    "properties": {
                        "category": {"type": "string", "enum": ["books", "music", "garden"]},
                        "max_price": {"type": "number", "minimum": 0, "maximum": 10000},
                        "in_stock": {"type": "boolean"},
                    },
                    "required": ["category"],
                    "additionalProperties": False,
                },
                "sort": {"type": "string", "enum": ["relevance", "price", "newest"]},
            },
            "required": ["query", "filters"],
            "additionalProperties": False,
        },
    },
}
TOOLS = [{"type": "function", "function": {"name": n, **f}} for n, f in FUNCTIONS.items()]
QUESTIONS = [
    "What will the weather be in Lisbon for the next three days, in celsius?",
    "Book an economy flight from LHR to JFK for Ana, 34, and Ben, 36.",
    "Add a team lunch on 2027-03-14 at 12 with Ana and Ben to my calendar.",
    "Find garden books under 30 dollars that are in stock, cheapest first.",
    "Is it going to rain in Oslo tomorrow? Fahrenheit please.",
    "I need a business class seat from CDG to NRT for Kenji, 52.",
    "Schedule a dentist appointment on 2027-01-09 at 9, remind me.",
    "Search for jazz vinyl records in the music section.",
]
VALIDATORS = {
    name: jsonschema.Draft202012Validator(f["parameters"]) for name, f in FUNCTIONS.items()
}


@dataclass
class Tally:
    """What the answers held, over the timed requests."""

    requests: int = 0
    answered: int = 0
    calls: int = 0
    valid: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    called: Counter[str] = field(default_factory=Counter)
    invalid: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)

    def check(self, answer: dict[str, Any]) -> None:
        """Parse and validate every tool call of every choice of one answer."""
        for choice in answer["choices"]:
            for call in choice["message"].get("tool_calls") or []:
                self.calls += 1
                name = call["function"]["name"]
                self.called[name] += 1
                try:
                    arguments = json.loads(call["function"]["arguments"])
                except json.JSONDecodeError as exc:
                    self.invalid.append(f"{name}: not JSON ({exc})")
                    continue
                validator = VALIDATORS.get(name)
                errors = list(validator.iter_errors(arguments)) if validator else ["unknown"]
                if errors:
                    self.invalid.append(f"{name}: {errors[0]} in {arguments}")
                else:
                    self.valid += 1


def request_body(model: str, index: int, max_tokens: int | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": QUESTIONS[index % len(QUESTIONS)]}],
        "tools": TOOLS,
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "temperature": 1.0,
        "seed": index,
    }
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return body


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values) or [0.0]
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def run(url: str, requests: int, concurrency: int, max_tokens: int | None) -> Tally:
    tally = Tally(requests=requests)
    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        model = (await http.get("/v1/models")).json()["data"][0]["id"]
        for index in range(len(QUESTIONS)):  # untimed: the first compile of the tool grammar
            body = request_body(model, index, max_tokens)
            warm = await http.post("/v1/chat/completions", json=body)
            print(f"warm-up {index}: HTTP {warm.status_code} {warm.text[:300]}", flush=True)
        queue: asyncio.Queue[int] = asyncio.Queue()
        for index in range(requests):
            queue.put_nowait(index)

        async def worker() -> None:
            while not queue.empty():
                index = queue.get_nowait()
                started = time.perf_counter()
                response = await http.post(
                    "/v1/chat/completions", json=request_body(model, index, max_tokens)
                )
                tally.latencies.append(time.perf_counter() - started)
                tally.statuses[str(response.status_code)] += 1
                if response.status_code == 200:
                    tally.answered += 1
                    tally.check(response.json())
                else:
                    tally.invalid.append(f"HTTP {response.status_code}: {response.text[:200]}")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    print_report(tally, wall, concurrency)
    return tally


def print_report(tally: Tally, wall: float, concurrency: int) -> None:
    p50, p99 = percentile(tally.latencies, 50), percentile(tally.latencies, 99)
    print(
        f"\n{tally.requests} requests, concurrency {concurrency}: {tally.answered} answered "
        f"(HTTP {dict(tally.statuses)}), {tally.calls} tool calls, {tally.valid} valid"
    )
    print(f"calls per function: {dict(tally.called)}")
    print(
        f"{tally.requests / wall:.2f} requests/s over {wall:.1f} s; latency p50 "
        f"{p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms"
    )
    for problem in tally.invalid[:10]:
        print(f"  {problem}")
    summary = {
        "requests": tally.requests,
        "answered": tally.answered,
        "tool_calls": tally.calls,
        "valid": tally.valid,
        "requests_per_s": round(tally.requests / wall, 3),
        "p50_ms": round(p50 * 1000),
        "p99_ms": round(p99 * 1000),
        "calls_per_function": dict(tally.called),
    }
    print(json.dumps(summary))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running server; otherwise one is started here")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, help="sent with every request (default: none)")
    args = parser.parse_args()
    if args.url:
        asyncio.run(run(args.url, args.requests, args.concurrency, args.max_tokens))
        return
    base = prepare_default_base_model(Settings().home)
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        server = start_server(home / "server.log", home=home, base_model=base, args=[])
        try:
            asyncio.run(run(server.url, args.requests, args.concurrency, args.max_tokens))
        finally:
            server.stop()


if __name__ == "__main__":
    main()

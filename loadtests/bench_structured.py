"""Structured outputs per vLLM backend (outlines, xgrammar, guidance), side by side.

For each backend a real `hotswap serve` (one at a time, `HOTSWAP_STRUCTURED_OUTPUTS_BACKEND`)
gets the same sample of the schema corpus (`tests/structured/corpus/`) through the streamed
chat route (`response_format` json_schema, greedy), and reports:

- coverage: share of the sample admitted (streamed) rather than refused with a 422;
- validity: share of the admitted whose streamed document validates (jsonschema, Draft
  2020-12) against the user's schema; `flagged` = the stream ended with hotswap's
  `schema_violation` error event, `silent` = invalid text with no error (must be 0);
- first-token latency of the schema's first use (cold: hotswap's compile guard and the
  engine's own grammar compile) and of a repeat (cached), p50/p99, and their difference;
- decode rate constrained vs free: the same prompt generated again without a schema and with
  `max_tokens` = the constrained answer's tokens; tokens after the first / time after the
  first token, summed over the sample, and the ratio constrained / free.

Before the servers, hotswap's compile guard alone (in this process, the same for every
backend) compiles the sample twice: cold and cached wall time p50/p99.

    .venv/bin/python loadtests/bench_structured.py              # a sample of 20 schemas
    .venv/bin/python loadtests/bench_structured.py --full       # the whole corpus
    .venv/bin/python loadtests/bench_structured.py --backends outlines xgrammar
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from server.base_model import prepare_default_base_model  # noqa: E402
from server.settings import Settings  # noqa: E402
from server.structured import (  # noqa: E402
    CompileGuard,
    SchemaRefusedError,
    prepare_schema,
    validate_document,
)
from tests.structured.conftest import CORPUS  # noqa: E402
from tests.support.server import RunningServer, start_server  # noqa: E402

BACKENDS = ("outlines", "xgrammar", "guidance")
PROMPT = "Answer with a JSON document that fits the requested format."
SEED = 7


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def fmt_ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.2f}" if value < 0.01 else f"{value * 1000:.0f}"


def p50_p99(values: list[float]) -> str:
    return f"{fmt_ms(percentile(values, 50))}/{fmt_ms(percentile(values, 99))}"


def sample_corpus(size: int | None) -> list[dict[str, Any]]:
    """Every k-th corpus entry (all families, hostile ones included), or all of them."""
    if size is None or size >= len(CORPUS):
        return list(CORPUS)
    step = len(CORPUS) / size
    return [CORPUS[int(k * step)] for k in range(size)]


@dataclass
class StreamRun:
    """One streamed chat request: status, text, timings, and how it ended."""

    status: int
    text: str = ""
    error: str | None = None
    completion_tokens: int = 0
    first_token_s: float | None = None
    last_token_s: float | None = None

    @property
    def decode_s(self) -> float | None:
        if self.first_token_s is None or self.last_token_s is None:
            return None
        return self.last_token_s - self.first_token_s


def stream_chat(
    http: httpx.Client,
    model: str,
    schema: Any | None,
    max_tokens: int | None = None,
    first_token_only: bool = False,
) -> StreamRun:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "temperature": 0,
        "seed": SEED,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if schema is not None:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": schema},
        }
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    started = time.perf_counter()
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            response.read()
            error = response.json().get("error", {}).get("type", "?")
            return StreamRun(response.status_code, error=error)
        run = StreamRun(200)
        parts: list[str] = []
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[len("data: ") :])
            if "error" in event:
                run.error = event["error"].get("type", "?")
                continue
            if event.get("usage"):
                run.completion_tokens = event["usage"]["completion_tokens"]
            for choice in event.get("choices", []):
                content = choice["delta"].get("content")
                if content:
                    now = time.perf_counter() - started
                    run.first_token_s = run.first_token_s or now
                    run.last_token_s = now
                    parts.append(content)
            if first_token_only and run.first_token_s is not None:
                break
        run.text = "".join(parts)
        return run


@dataclass
class BackendResult:
    backend: str
    sampled: int = 0
    admitted: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    valid: int = 0
    flagged: int = 0
    silent_invalid: int = 0
    server_errors: int = 0
    cold_ttft: list[float] = field(default_factory=list)
    cached_ttft: list[float] = field(default_factory=list)
    compile_delta: list[float] = field(default_factory=list)
    constrained_tokens: int = 0
    constrained_decode_s: float = 0.0
    free_tokens: int = 0
    free_decode_s: float = 0.0

    def rate(self, tokens: int, seconds: float) -> float | None:
        return tokens / seconds if seconds > 0 else None


def bench_backend(
    server: RunningServer, backend: str, entries: list[dict[str, Any]]
) -> BackendResult:
    result = BackendResult(backend, sampled=len(entries))
    with httpx.Client(base_url=server.url, timeout=600) as http:
        model = http.get("/v1/models").json()["data"][0]["id"]
        stream_chat(http, model, None, max_tokens=4)  # warm the engine outside the figures
        for entry in entries:
            schema = entry["schema"]
            cold = stream_chat(http, model, schema)
            if cold.status != 200:
                key = f"{cold.status} {cold.error}"
                result.refused[key] = result.refused.get(key, 0) + 1
                result.server_errors += cold.status >= 500
                print(f"  {entry['name']:36s} {key}", flush=True)
                continue
            result.admitted += 1
            outcome = validate_document(schema, cold.text)
            if outcome.valid:
                result.valid += 1
            elif cold.error is not None:
                result.flagged += 1
            else:
                result.silent_invalid += 1
            cached = stream_chat(http, model, schema, first_token_only=True)
            if cold.first_token_s is not None and cached.first_token_s is not None:
                result.cold_ttft.append(cold.first_token_s)
                result.cached_ttft.append(cached.first_token_s)
                result.compile_delta.append(cold.first_token_s - cached.first_token_s)
            free = stream_chat(http, model, None, max_tokens=max(1, cold.completion_tokens))
            if cold.decode_s and free.decode_s and free.completion_tokens > 1:
                result.constrained_tokens += cold.completion_tokens - 1
                result.constrained_decode_s += cold.decode_s
                result.free_tokens += free.completion_tokens - 1
                result.free_decode_s += free.decode_s
            verdict = "valid" if outcome.valid else f"INVALID ({cold.error or 'silent'})"
            print(
                f"  {entry['name']:36s} {verdict:24s} tokens {cold.completion_tokens:4d} "
                f"ttft cold {fmt_ms(cold.first_token_s)} ms cached "
                f"{fmt_ms(cached.first_token_s)} ms",
                flush=True,
            )
    return result


def bench_guard(model_path: Path, entries: list[dict[str, Any]]) -> tuple[list[float], ...]:
    """hotswap's compile guard alone: wall seconds per schema, first use and repeat."""
    settings = Settings()
    bounded = []
    for entry in entries:
        try:
            bounded.append(prepare_schema(entry["schema"], settings.schema_limits).bounded)
        except SchemaRefusedError:
            continue
    cold: list[float] = []
    cached: list[float] = []
    with CompileGuard(
        model_path,
        timeout_s=settings.schema_compile_timeout_s,
        memory_limit_mb=settings.schema_compile_memory_mb,
    ) as guard:
        guard.start()
        for runs in (cold, cached):
            for schema in bounded:
                started = time.perf_counter()
                guard.check_sync(schema)
                runs.append(time.perf_counter() - started)
    return cold, cached


def print_table(
    results: list[BackendResult], guard_cold: list[float], guard_cached: list[float]
) -> None:
    print(
        f"\nhotswap compile guard alone ({len(guard_cold)} bounded schemas), p50/p99 ms: "
        f"cold {p50_p99(guard_cold)}, cached {p50_p99(guard_cached)}"
    )
    header = (
        f"{'backend':9s} {'coverage':>9s} {'validity':>9s} {'flagged':>7s} {'silent':>6s} "
        f"{'5xx':>4s} {'ttft cold p50/p99 ms':>21s} {'cached p50/p99 ms':>18s} "
        f"{'cold-cached p50/p99':>20s} {'tok/s constr':>12s} {'tok/s free':>10s} {'ratio':>6s}"
    )
    print(header)
    rows = []
    for r in results:
        coverage = r.admitted / r.sampled if r.sampled else 0.0
        validity = r.valid / r.admitted if r.admitted else 0.0
        constrained = r.rate(r.constrained_tokens, r.constrained_decode_s)
        free = r.rate(r.free_tokens, r.free_decode_s)
        ratio = constrained / free if constrained and free else None
        print(
            f"{r.backend:9s} {coverage:9.1%} {validity:9.1%} {r.flagged:7d} "
            f"{r.silent_invalid:6d} {r.server_errors:4d} "
            f"{p50_p99(r.cold_ttft):>21s} {p50_p99(r.cached_ttft):>18s} "
            f"{p50_p99(r.compile_delta):>20s}"
            f"{constrained or 0:12.1f} {free or 0:10.1f} {ratio or 0:6.2f}"
        )
        rows.append(
            {
                "backend": r.backend,
                "sampled": r.sampled,
                "admitted": r.admitted,
                "refused": r.refused,
                "valid": r.valid,
                "flagged": r.flagged,
                "silent_invalid": r.silent_invalid,
                "constrained_tok_s": constrained,
                "free_tok_s": free,
                "ratio": ratio,
            }
        )
    for r in results:
        print(f"{r.backend}: refused {r.refused}")
    print(json.dumps(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=int, default=20, help="corpus schemas (default 20)")
    parser.add_argument("--full", action="store_true", help="the whole corpus")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument(
        "--ready-timeout", type=float, default=1800.0, help="engine start-up wait, seconds"
    )
    args = parser.parse_args()
    entries = sample_corpus(None if args.full else args.sample)
    base = prepare_default_base_model(Settings().home)
    print(f"compile guard on {len(entries)} schemas", flush=True)
    guard_cold, guard_cached = bench_guard(base, entries)
    results = []
    for backend in args.backends:
        print(f"\n{backend}: starting a server", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            home = Path(tmp)
            try:
                server = start_server(
                    home / "server.log",
                    home=home,
                    base_model=base,
                    args=[],
                    env={"HOTSWAP_STRUCTURED_OUTPUTS_BACKEND": backend},
                    ready_timeout_s=args.ready_timeout,  # start-up takes minutes under load
                )
            except RuntimeError as exc:  # reported, and the other backends still run
                print(f"{backend}: the server did not start: {str(exc)[-400:]}", flush=True)
                continue
            try:
                results.append(bench_backend(server, backend, entries))
            finally:
                server.stop()
        print_table(results, guard_cold, guard_cached)  # so far: a later failure loses nothing


if __name__ == "__main__":
    main()

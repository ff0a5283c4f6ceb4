"""Structured outputs per grammar-engine mode, side by side.

Modes (each a real `hotswap serve`, one at a time):
- `outlines`: outlines alone (`HOTSWAP_SCHEMA_FALLBACK_ENGINE=none`);
- `guidance`, `xgrammar`: that vLLM backend for every request
  (`HOTSWAP_STRUCTURED_OUTPUTS_BACKEND`; hotswap's bounding and compile guard still admit);
- `hybrid`: outlines, and llguidance per request for what outlines cannot compile within the
  limits or express (the default).

Each gets the same sample of the schema corpus (`tests/structured/corpus/`) through the
streamed chat route (`response_format` json_schema, greedy), and reports:

- coverage: the exact counts answered (streamed) and refused (by status and error type);
- validity: share of the admitted whose streamed document validates (jsonschema, Draft
  2020-12) against the user's schema; `flagged` = the stream ended with hotswap's
  `schema_violation` error event, `silent` = invalid text with no error (must be 0);
- first-token latency of the schema's first use (cold: hotswap's compile guard and the
  engine's own grammar compile) and of a repeat (cached), p50/p99, and their difference (the
  compile time as a client sees it);
- decode rate constrained vs free: the same prompt generated again without a schema and with
  `max_tokens` = the constrained answer's tokens; tokens after the first / time after the
  first token, summed over the sample, and the ratio constrained / free;
- the engine's resident memory at the end: RSS of the EngineCore and worker processes.

Before the servers, the schema policy alone (in this process, fresh compile guard, default
limits) admits the WHOLE corpus once per fallback setting: counts by grammar engine and by
refusal reason, and admission time p50/p99 (bounding + sandboxed compilation); the engine
modes then run on `--sample` (each schema costs a few seconds of decoding per mode).

    .venv/bin/python loadtests/bench_structured.py              # a sample of 20 schemas
    .venv/bin/python loadtests/bench_structured.py --full       # the whole corpus
    .venv/bin/python loadtests/bench_structured.py --modes outlines hybrid
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from server.base_model import prepare_default_base_model  # noqa: E402
from server.errors import HotswapError  # noqa: E402
from server.schema_policy import SchemaPolicy  # noqa: E402
from server.settings import Settings  # noqa: E402
from server.structured import CompileGuard, validate_document  # noqa: E402
from server.structured.engine_extension import FallbackEngine  # noqa: E402
from tests.structured.conftest import CORPUS  # noqa: E402
from tests.support.server import RunningServer, start_server  # noqa: E402

ADMISSION: dict[str, FallbackEngine | None] = {
    "outlines": None,
    "guidance": None,
    "xgrammar": None,
    "hybrid": "guidance",
}
"""The fallback each mode's policy admits with: the guidance and xgrammar backends are gated by
the same bounding and outlines compile guard as outlines alone (no fallback beside them)."""
MODES: dict[str, dict[str, str]] = {
    "outlines": {
        "HOTSWAP_STRUCTURED_OUTPUTS_BACKEND": "outlines",
        "HOTSWAP_SCHEMA_FALLBACK_ENGINE": "none",
    },
    "guidance": {"HOTSWAP_STRUCTURED_OUTPUTS_BACKEND": "guidance"},
    "xgrammar": {"HOTSWAP_STRUCTURED_OUTPUTS_BACKEND": "xgrammar"},
    "hybrid": {
        "HOTSWAP_STRUCTURED_OUTPUTS_BACKEND": "outlines",
        "HOTSWAP_SCHEMA_FALLBACK_ENGINE": "guidance",
    },
}
ENGINE_PROCESS = "VLLM::"
"""How vLLM titles its engine-core and worker processes."""
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


def engine_rss_mb(server: RunningServer) -> float:
    """Resident memory of the server's vLLM engine-core and worker processes, MB."""
    total = 0
    for child in psutil.Process(server.process.pid).children(recursive=True):
        try:
            if ENGINE_PROCESS in " ".join(child.cmdline()) or ENGINE_PROCESS in child.name():
                total += child.memory_info().rss
        except psutil.Error:
            continue
    return total / 2**20


def sample_corpus(size: int | None) -> list[dict[str, Any]]:
    """Every k-th corpus entry (all families, hostile ones included), or all of them."""
    if size is None or size >= len(CORPUS):
        return list(CORPUS)
    step = len(CORPUS) / size
    return [CORPUS[int(k * step)] for k in range(size)]


@dataclass
class Admission:
    """The schema policy's verdicts on the corpus for one fallback setting."""

    fallback: FallbackEngine | None
    engines: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    admit_s: list[float] = field(default_factory=list)


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
class ModeResult:
    mode: str
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
    engine_rss_mb: float | None = None

    def rate(self, tokens: int, seconds: float) -> float | None:
        return tokens / seconds if seconds > 0 else None


def bench_mode(server: RunningServer, mode: str, entries: list[dict[str, Any]]) -> ModeResult:
    result = ModeResult(mode, sampled=len(entries))
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
    result.engine_rss_mb = engine_rss_mb(server)
    return result


def admission_pass(
    model_path: Path, entries: list[dict[str, Any]], fallback: FallbackEngine | None
) -> Admission:
    """The server's whole schema policy alone (bounding, the compile guard with the default
    limits, the fallback's compile check, the token budget for a short prompt), fresh, on
    every entry: which grammar engine would decode it or why it is refused, and how long
    admitting it took."""
    settings = Settings()
    result = Admission(fallback)
    with CompileGuard(
        model_path,
        timeout_s=settings.schema_compile_timeout_s,
        memory_limit_mb=settings.schema_compile_memory_mb,
        max_grammar_mb=settings.schema_max_grammar_mb,
    ) as guard:
        guard.start()
        policy = SchemaPolicy(guard, settings.schema_limits, fallback=fallback)
        context = settings.max_model_len
        for entry in entries:
            started = time.perf_counter()
            try:
                admitted = asyncio.run(policy.admit(entry["schema"]))
                asyncio.run(policy.token_plan(admitted, None, context - 32, context))
            except HotswapError as exc:
                reason = re.search(r"refused \((\w+)\)", exc.message)
                why = (
                    reason.group(1) if reason else "invalid" if " is invalid" in exc.message else ""
                )
                key = f"{exc.status} {exc.code} {why}".strip()
                result.refused[key] += 1
                continue
            result.admit_s.append(time.perf_counter() - started)
            result.engines[admitted.grammar_engine] += 1
    return result


def print_admissions(admissions: dict[FallbackEngine | None, Admission], total: int) -> None:
    print(f"\nadmission by the schema policy alone, {total} corpus schemas:")
    for mode, fallback in ADMISSION.items():
        a = admissions[fallback]
        admitted = sum(a.engines.values())
        print(
            f"  {mode:9s} admitted {admitted}/{total} ({admitted / total:.1%}) "
            f"by {dict(a.engines)}; admit p50/p99 ms {p50_p99(a.admit_s)}; "
            f"refused {dict(a.refused)}"
        )


def print_table(results: list[ModeResult]) -> None:
    header = (
        f"{'mode':9s} {'answered':>12s} {'valid':>12s} {'flagged':>7s} {'silent':>6s} "
        f"{'5xx':>4s} {'ttft cold p50/p99 ms':>21s} {'cached p50/p99 ms':>18s} "
        f"{'cold-cached p50/p99':>20s} {'tok/s constr':>12s} {'tok/s free':>10s} {'ratio':>6s} "
        f"{'engine RSS MB':>13s}"
    )
    print(header)
    rows = []
    for r in results:
        coverage = r.admitted / r.sampled if r.sampled else 0.0
        validity = r.valid / r.admitted if r.admitted else 0.0
        constrained = r.rate(r.constrained_tokens, r.constrained_decode_s)
        free = r.rate(r.free_tokens, r.free_decode_s)
        ratio = constrained / free if constrained and free else None
        rss = f"{r.engine_rss_mb:.0f}" if r.engine_rss_mb is not None else "-"
        print(
            f"{r.mode:9s} {f'{r.admitted}/{r.sampled}':>7s} {coverage:4.0%} "
            f"{f'{r.valid}/{r.admitted}':>7s} {validity:4.0%} {r.flagged:7d} "
            f"{r.silent_invalid:6d} {r.server_errors:4d} "
            f"{p50_p99(r.cold_ttft):>21s} {p50_p99(r.cached_ttft):>18s} "
            f"{p50_p99(r.compile_delta):>20s}"
            f"{constrained or 0:12.1f} {free or 0:10.1f} {ratio or 0:6.2f} {rss:>13s}"
        )
        rows.append(
            {
                "mode": r.mode,
                "sampled": r.sampled,
                "admitted": r.admitted,
                "refused": r.refused,
                "valid": r.valid,
                "flagged": r.flagged,
                "silent_invalid": r.silent_invalid,
                "constrained_tok_s": constrained,
                "free_tok_s": free,
                "ratio": ratio,
                "compile_p50_s": percentile(r.compile_delta, 50),
                "compile_p99_s": percentile(r.compile_delta, 99),
                "engine_rss_mb": r.engine_rss_mb,
            }
        )
    for r in results:
        print(f"{r.mode}: refused {r.refused}")
    print(json.dumps(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=int, default=20, help="corpus schemas (default 20)")
    parser.add_argument("--full", action="store_true", help="the whole corpus")
    parser.add_argument("--names", nargs="+", help="these corpus schemas instead of a sample")
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument(
        "--skip-admission", action="store_true", help="no policy pass over the whole corpus"
    )
    parser.add_argument(
        "--admission-only", action="store_true", help="only the policy pass (no engine)"
    )
    parser.add_argument(
        "--ready-timeout", type=float, default=1800.0, help="engine start-up wait, seconds"
    )
    args = parser.parse_args()
    entries = (
        [e for e in CORPUS if e["name"] in set(args.names)]
        if args.names
        else sample_corpus(None if args.full else args.sample)
    )
    base = prepare_default_base_model(Settings().home)
    admissions: dict[FallbackEngine | None, Admission] = {}
    if not args.skip_admission:
        for fallback in dict.fromkeys(ADMISSION[mode] for mode in args.modes):
            print(f"admission pass, fallback {fallback}, {len(CORPUS)} schemas", flush=True)
            admissions[fallback] = admission_pass(base, CORPUS, fallback)
        print_admissions(admissions, len(CORPUS))
    if args.admission_only:
        return
    results = []
    for mode in args.modes:
        print(f"\n{mode}: starting a server", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            home = Path(tmp)
            try:
                server = start_server(
                    home / "server.log",
                    home=home,
                    base_model=base,
                    args=[],
                    env=MODES[mode],
                    ready_timeout_s=args.ready_timeout,  # start-up takes minutes under load
                )
            except RuntimeError as exc:  # reported, and the other modes still run
                print(f"{mode}: the server did not start: {str(exc)[-400:]}", flush=True)
                continue
            try:
                results.append(bench_mode(server, mode, entries))
            finally:
                server.stop()
        print_table(results)  # so far: a later failure loses nothing
    if admissions:
        print_admissions(admissions, len(CORPUS))


if __name__ == "__main__":
    main()

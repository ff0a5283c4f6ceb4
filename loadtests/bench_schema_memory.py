"""Memory under a stream of diverse and hostile JSON Schemas, against a real `hotswap serve`.

Sends N schemas one after another to `/v1/generate` (the corpus in
`tests/structured/corpus/`, then schemas drawn from the hypothesis strategies in
`tests/structured/schema_strategies.py`, hostile ones included) while a thread samples the
resident memory of every process of the server's tree (the API server, vLLM's engine core,
the compile-guard workers) with psutil. Reports peak RSS per process, the answers by status,
and whether the server survived: every request answered 200 or 422, the engine core the same
process at the end, `/readyz` 200, a last request served valid.

    .venv/bin/python loadtests/bench_schema_memory.py               # 500 schemas
    .venv/bin/python loadtests/bench_schema_memory.py --count 100
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from server.base_model import prepare_default_base_model  # noqa: E402
from server.settings import Settings  # noqa: E402
from tests.structured.conftest import CORPUS  # noqa: E402
from tests.structured.schema_strategies import (  # noqa: E402
    hostile_schemas,
    sample_schemas,
    schemas,
)
from tests.support.server import RunningServer, start_server  # noqa: E402

DEFAULT_COUNT = 500
HOSTILE_SHARE = 0.1
PROMPT = "Answer with a JSON document."
OK_PROBE = {"type": "object", "properties": {"answer": {"enum": ["yes", "no"]}}}


def schema_stream(count: int, seed: int) -> list[tuple[str, Any]]:
    """The corpus and generated schemas (one in ten of those hostile) making 500 at least,
    shuffled; the first `count`."""
    items: list[tuple[str, Any]] = [(f"corpus/{e['name']}", e["schema"]) for e in CORPUS]
    missing = max(count, DEFAULT_COUNT) - len(items)
    hostile = round(missing * HOSTILE_SHARE)
    generated = sample_schemas(schemas(), missing - hostile, seed)
    harsh = sample_schemas(hostile_schemas(), hostile, seed + 1)
    items += [(f"generated/{k}", s) for k, s in enumerate(generated)]
    items += [(f"hostile/{k}", s) for k, s in enumerate(harsh)]
    random.Random(seed).shuffle(items)  # a shorter run still mixes every kind
    return items[:count]


def role(process: psutil.Process) -> str:
    """What a process of the server tree is, from its command line."""
    try:
        cmdline = " ".join(process.cmdline())
        name = process.name()
    except psutil.Error:
        return "gone"
    if "server.structured._worker" in cmdline:
        return "compile worker"
    if "EngineCore" in name or "EngineCore" in cmdline:
        return "engine core"
    if " serve " in f"{cmdline} ":
        return "api server"
    return name or "other"


@dataclass
class RssSampler:
    """Samples the RSS of a process and all its descendants until stopped."""

    root_pid: int
    interval_s: float = 0.25
    peaks: dict[int, tuple[str, int]] = field(default_factory=dict)
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def tree(self) -> list[psutil.Process]:
        root = psutil.Process(self.root_pid)
        return [root, *root.children(recursive=True)]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                processes = self.tree()
            except psutil.Error:
                return
            for process in processes:
                try:
                    rss = process.memory_info().rss
                except psutil.Error:
                    continue
                label, peak = self.peaks.get(process.pid, (role(process), 0))
                self.peaks[process.pid] = (label, max(peak, rss))
            self.samples += 1
            self._stop.wait(self.interval_s)


def engine_core_pids(sampler: RssSampler) -> set[int]:
    return {p.pid for p in sampler.tree() if role(p) == "engine core"}


def run(server: RunningServer, items: list[tuple[str, Any]], timeout_s: float) -> dict[str, Any]:
    sampler = RssSampler(server.process.pid)
    engine_before = engine_core_pids(sampler)
    sampler.start()
    statuses: collections.Counter[str] = collections.Counter()
    reasons: collections.Counter[str] = collections.Counter()
    invalid_200 = 0
    started = time.perf_counter()
    with httpx.Client(base_url=server.url, timeout=timeout_s) as http:
        for k, (name, schema) in enumerate(items):
            try:
                response = http.post("/v1/generate", json={"input": PROMPT, "schema": schema})
            except httpx.HTTPError as exc:
                statuses[f"no answer ({type(exc).__name__})"] += 1
                print(f"{k:4d} {name:40s} NO ANSWER {exc}", flush=True)
                continue
            statuses[str(response.status_code)] += 1
            kind = ""
            if response.status_code == 200:
                invalid_200 += response.json().get("valid") is not True
            else:
                kind = response.json().get("error", {}).get("type", "?")
                reasons[f"{response.status_code} {kind}"] += 1
            if k % 25 == 0 or response.status_code >= 500:
                rss = {label: peak >> 20 for label, peak in sampler.peaks.values()}
                print(
                    f"{k:4d} {name:40s} {response.status_code} {kind:16s} "
                    f"{time.perf_counter() - started:7.0f}s peak MiB so far {rss}",
                    flush=True,
                )
        ready = http.get("/readyz").status_code
        last = http.post("/v1/generate", json={"input": PROMPT, "schema": OK_PROBE})
    engine_after = engine_core_pids(sampler)
    sampler.stop()
    return {
        "requests": len(items),
        "seconds": round(time.perf_counter() - started, 1),
        "statuses": dict(statuses),
        "errors": dict(reasons),
        "invalid_200": invalid_200,
        "readyz_at_end": ready,
        "last_request": [last.status_code, last.json().get("valid")],
        "engine_core_same_process": bool(engine_before) and engine_before == engine_after,
        "rss_samples": sampler.samples,
        "peaks": sampler.peaks,
    }


def print_report(report: dict[str, Any]) -> None:
    print(f"\n{report['requests']} schemas in {report['seconds']} s")
    print(f"answers: {report['statuses']}   errors: {report['errors']}")
    print(f"invalid 200s: {report['invalid_200']}")
    print(
        f"survived: readyz {report['readyz_at_end']}, last request {report['last_request']}, "
        f"engine core same process: {report['engine_core_same_process']}"
    )
    by_role: dict[str, list[int]] = collections.defaultdict(list)
    for label, peak in report["peaks"].values():
        by_role[label].append(peak)
    print(f"\n{'process':16s} {'count':>5s} {'peak RSS MiB (max)':>19s} {'(each)':s}")
    for label, peaks in sorted(by_role.items()):
        each = ", ".join(str(p >> 20) for p in sorted(peaks, reverse=True)[:6])
        print(f"{label:16s} {len(peaks):5d} {max(peaks) >> 20:19d}  {each}")
    summary = {k: v for k, v in report.items() if k != "peaks"}
    summary["peak_rss_mib"] = {label: max(p) >> 20 for label, p in by_role.items()}
    print(json.dumps(summary))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT)
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=600.0, help="per request, seconds")
    parser.add_argument(
        "--ready-timeout", type=float, default=1800.0, help="engine start-up wait, seconds"
    )
    args = parser.parse_args()
    items = schema_stream(args.count, args.seed)
    settings = Settings()
    base = prepare_default_base_model(settings.home)
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        server = start_server(
            home / "server.log",
            home=home,
            base_model=base,
            args=[],
            ready_timeout_s=args.ready_timeout,  # start-up takes minutes under load
        )
        try:
            report = run(server, items, args.timeout)
        finally:
            server.stop()
    print_report(report)


if __name__ == "__main__":
    main()

"""Scored labels against generated answers, side by side on one server: accuracy and speed.

    .venv/bin/python loadtests/bench_label_scores.py ADAPTER.tar.gz [--texts 200] [--rounds 3]
        [--base-model gemma3-270m]

A trained BANKING77 adapter archive is pushed to a fresh `hotswap serve` on loopback. Each
round sends the same test texts twice through `/v1/generate`, in alternating order: once as a
plain task call (the labels are scored: the most probable label is the answer, with its
confidence), once with the task's own schema given explicitly, which takes the generation
path (greedy, constrained decoding). Printed per round and as the median and spread of the
rounds: requests per second, p50 latency and accuracy of each, their ratio, and how often
the two answers agree.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT.parent / "shared" / "datasets" / "banking77"
CONCURRENCY = 4
READY_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class Pass:
    mode: str
    seconds: float
    latencies: list[float]
    labels: list[str]

    @property
    def rps(self) -> float:
        return len(self.labels) / self.seconds


def test_rows(count: int) -> list[tuple[str, str]]:
    """`count` test rows spread over the labels (every k-th row of the official test set)."""
    with (DATA_DIR / "test.csv").open(newline="") as handle:
        rows = [(row["text"], row["category"]) for row in csv.DictReader(handle)]
    step = max(1, len(rows) // count)
    return rows[::step][:count]


async def run_pass(
    http: httpx.AsyncClient, adapter: str, texts: list[str], schema: dict[str, Any] | None
) -> Pass:
    label_field = "intent"
    queue = list(enumerate(texts))
    labels = [""] * len(texts)
    latencies: list[float] = []

    async def worker() -> None:
        while queue:
            index, text = queue.pop(0)
            body: dict[str, Any] = {"adapter": adapter, "input": text}
            if schema is not None:
                body["schema"] = schema
            started = time.perf_counter()
            response = await http.post("/v1/generate", json=body)
            latencies.append(time.perf_counter() - started)
            response.raise_for_status()
            output = response.json().get("output") or {}
            labels[index] = str(output.get(label_field))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    mode = "generated" if schema is not None else "scored"
    return Pass(mode, time.perf_counter() - started, latencies, labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archive", type=Path)
    parser.add_argument("--texts", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--base-model", default=None, help="Short name of the base the adapter was trained on."
    )
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from adapters.archive import ArchiveLimits, extract_archive
    from adapters.base_models import DEFAULT_BASE_MODEL, prepare_base_model
    from adapters.manifest import MANIFEST_FILE, AdapterManifest
    from server.settings import Settings
    from tests.support import server as server_support

    rows = test_rows(args.texts)
    texts, truth = [t for t, _ in rows], [c for _, c in rows]
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        (tmp / "unpacked").mkdir()
        folder = extract_archive(args.archive, tmp / "unpacked", ArchiveLimits())
        manifest = AdapterManifest.model_validate_json((folder / MANIFEST_FILE).read_text())
        schema = manifest.task.output_schema if manifest.task else None
        if schema is None:
            sys.exit(f"{args.archive}: the manifest has no output schema")
        (tmp / "home").mkdir()
        server = server_support.start_server(
            tmp / "server.log",
            home=tmp / "home",
            base_model=prepare_base_model(args.base_model or DEFAULT_BASE_MODEL, Settings().home),
            args=[],
            ready_timeout_s=READY_TIMEOUT_S,
        )
        try:
            with args.archive.open("rb") as fh:
                pushed = httpx.post(
                    f"{server.url}/v1/adapters",
                    files={"file": (args.archive.name, fh)},
                    data={"name": "bench-labels"},
                    timeout=600,
                )
            pushed.raise_for_status()
            passes = asyncio.run(rounds(server.url, texts, schema, args.rounds))
        except Exception:
            print(f"server log (tail):\n{server.log_tail()}", file=sys.stderr)
            raise
        finally:
            server.stop()
    report(passes, truth, args)


async def rounds(url: str, texts: list[str], schema: dict[str, Any], count: int) -> list[Pass]:
    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        await run_pass(http, "bench-labels", texts[:8], schema)  # compile the grammar first
        passes = []
        for number in range(count):
            order = [None, schema] if number % 2 == 0 else [schema, None]
            for given in order:
                passes.append(await run_pass(http, "bench-labels", texts, given))
        return passes


def report(passes: list[Pass], truth: list[str], args: argparse.Namespace) -> None:
    base = args.base_model or "the default base"
    print(
        f"{args.archive.name} on {base}: {len(truth)} BANKING77 test texts, "
        f"concurrency {CONCURRENCY}"
    )
    print("| round | mode | req/s | p50 s | accuracy |")
    print("|---:|---|---:|---:|---:|")
    ratios, agreements = [], []
    for number in range(args.rounds):
        pair = {p.mode: p for p in passes[2 * number : 2 * number + 2]}
        for mode in ("scored", "generated"):
            p = pair[mode]
            accuracy = sum(a == b for a, b in zip(p.labels, truth, strict=True)) / len(truth)
            print(
                f"| {number + 1} | {mode} | {p.rps:.2f} | "
                f"{statistics.median(p.latencies):.2f} | {accuracy:.3f} |"
            )
        ratios.append(pair["scored"].rps / pair["generated"].rps)
        agree = zip(pair["scored"].labels, pair["generated"].labels, strict=True)
        agreements.append(sum(a == b for a, b in agree) / len(truth))
    print(
        f"\nscored / generated requests per second: median {statistics.median(ratios):.2f} "
        f"(rounds {min(ratios):.2f}-{max(ratios):.2f}); answers agree on "
        f"{statistics.median(agreements):.1%} of texts (median of rounds)"
    )


if __name__ == "__main__":
    main()

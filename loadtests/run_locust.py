"""`make loadtest`: start `hotswap serve` on loopback with two adapters, run the Locust file
headless against it (closed loop, then open loop), write CSV and HTML reports.

    .venv/bin/python loadtests/run_locust.py                  # 2 x 60 s
    .venv/bin/python loadtests/run_locust.py --seconds 300 --users 16 --arrival-rate 4

Reports: `loadtests/results/{closed,open}_stats.csv` (and Locust's other CSVs) and
`loadtests/results/{closed,open}.html`.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loadtests.bench_engine import make_adapters  # noqa: E402
from server.base_model import prepare_default_base_model  # noqa: E402
from server.settings import Settings  # noqa: E402
from tests.support.server import start_server  # noqa: E402

LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"
RESULTS = ROOT / "loadtests" / "results"
CLOSED_LOOP = ["ClosedLoopHttpUser", "ClosedLoopGrpcUser"]
OPEN_LOOP = ["OpenLoopUser"]


@dataclass(frozen=True)
class Row:
    """One line of Locust's `_stats.csv`."""

    type: str
    name: str
    requests: int
    failures: int
    median_ms: float
    p99_ms: float
    rps: float


def run_locust(
    *,
    url: str,
    grpc_target: str,
    user_classes: list[str],
    seconds: int,
    users: int,
    out: Path,
    options: list[str] | None = None,
) -> tuple[int, list[Row]]:
    """Run the Locust file headless; (exit code, the rows of its stats CSV). `out` is the
    report prefix: `out_stats.csv`, `out.html`, ..."""
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [
        str(Path(sys.executable).parent / "locust"),
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--only-summary",
        "--users",
        str(users),
        "--spawn-rate",
        str(users),
        "--run-time",
        f"{seconds}s",
        "--stop-timeout",
        "120",
        "--host",
        url,
        "--grpc-target",
        grpc_target,
        "--csv",
        str(out),
        "--html",
        str(out.with_suffix(".html")),
        *(options or []),
        *user_classes,
    ]
    code = subprocess.run(command, check=False).returncode
    with Path(f"{out}_stats.csv").open(newline="") as fh:
        rows = [
            Row(
                type=r["Type"],
                name=r["Name"],
                requests=int(r["Request Count"]),
                failures=int(r["Failure Count"]),
                median_ms=float(r["Median Response Time"] or 0),
                p99_ms=float(r["99%"] or 0) if r["99%"] != "N/A" else 0.0,
                rps=float(r["Requests/s"]),
            )
            for r in csv.DictReader(fh)
        ]
    return code, rows


def print_rows(title: str, rows: list[Row]) -> None:
    print(f"\n{title}")
    header = ("requests", "failed", "p50 ms", "p99 ms", "req/s")
    print(f"{'type':>6} {'name':<24} " + " ".join(f"{h:>8}" for h in header))
    for r in rows:
        print(
            f"{r.type:>6} {r.name:<24} {r.requests:8d} {r.failures:8d} {r.median_ms:8.0f} "
            f"{r.p99_ms:8.0f} {r.rps:8.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=60, help="per phase (closed, open)")
    parser.add_argument("--users", type=int, default=4, help="closed-loop users")
    parser.add_argument("--arrival-rate", type=float, default=1.0, help="open loop, requests/s")
    parser.add_argument("--mode", choices=["closed", "open", "both"], default="both")
    args = parser.parse_args()
    base = prepare_default_base_model(Settings().home)
    exit_code = 0
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        adapters = make_adapters(base, tmp, 2, 8, ["q_proj", "v_proj"])
        (tmp / "home").mkdir()
        server = start_server(
            tmp / "server.log",
            home=tmp / "home",
            base_model=base,
            args=[f"--adapter={p.name}={p}" for p in adapters],
        )
        try:
            for mode in ["closed", "open"] if args.mode == "both" else [args.mode]:
                code, rows = run_locust(
                    url=server.url,
                    grpc_target=server.grpc_target,
                    user_classes=CLOSED_LOOP if mode == "closed" else OPEN_LOOP,
                    seconds=args.seconds,
                    users=args.users if mode == "closed" else 1,
                    out=RESULTS / mode,
                    options=["--arrival-rate", str(args.arrival_rate)],
                )
                print_rows(f"{mode} loop, {args.seconds} s", rows)
                exit_code = exit_code or code
        finally:
            server.stop()
    print(f"\nreports in {RESULTS}")
    sys.exit(exit_code)


if __name__ == "__main__":
    main()

"""Quality of the drift alarm on BANKING77 labels: false alarms without shift, delay with shift.

    .venv/bin/python loadtests/bench_drift.py           # defaults, about a minute
    .venv/bin/python loadtests/bench_drift.py --long    # more seeds, and other window sizes
    .venv/bin/python loadtests/bench_drift.py --served ADAPTER.tar.gz   # end to end, ~10-30 min

The reference is the label distribution of BANKING77's training split. Label streams are test-split
rows resampled so that their labels follow (a) the training distribution (no shift), or (b) a
shift: a share s of the mass moved onto 5 intents drawn at random per seed,
q = (1 - s) * p_train + s * uniform(5 intents).

- False-alarm rate: each stream is warmed up with N labels, then cut into non-overlapping blocks of
  N labels; drift is evaluated after every label, and a block counts as a false alarm if the alarm
  fired at any point in it. The 95 % upper bound is Clopper–Pearson.
- Detection delay: N unshifted labels fill the window, then shifted labels follow; the delay is the
  number of shifted labels until the first alarm (evaluated after every label), or a miss after
  `MAX_DELAY_WINDOWS * N`.

Window counts for all evaluation points are computed at once from cumulative counts and fed to the
statistics of `server.metrics.drift`; one stream is also replayed through `DriftMonitor` itself to
check that both paths raise the same alarms.

`--served ARCHIVE` is the end-to-end run: a trained BANKING77
adapter archive is pushed to a real `hotswap serve` on loopback and test texts stream through
`/v1/generate`; the server's own drift gauges are read from `/v1/adapters/{name}/stats` and
`/metrics`. There the window holds the adapter's *predicted* intents, and the reference is the
one in the adapter's manifest: its own predictions on the test split when training recorded
them (`calibration.predicted_distribution`; the streams then follow the test split's label mix),
else the training labels' distribution.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import special

from server.metrics.drift import (
    DEFAULT_THRESHOLDS,
    DEFAULT_WINDOW_SIZE,
    MIN_EXPECTED,
    OTHER_LABEL,
    DriftMonitor,
    ReferenceDistribution,
    chi2_pvalue,
    js_distance,
    psi,
    smoothed,
)

DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "banking77"
SHIFTS = (0.2, 0.5, 0.8)
SHIFTED_INTENTS = 5
MAX_DELAY_WINDOWS = 5
BLOCKS_PER_STREAM = 50
PSI_RULE_OF_THUMB = 0.25
DEFAULT_RUN = {"false_alarm_streams": 200, "detection_seeds": 200, "null_windows": 200_000}
LONG_RUN = {"false_alarm_streams": 1000, "detection_seeds": 1000, "null_windows": 2_000_000}
LONG_WINDOWS = (100, 150, 200, 300, 500)
UNKNOWN_COUNTS = (1, 2, 3, 4, 5, 10, 20)
UNKNOWN_TRIALS = 200

Bins = npt.NDArray[np.int64]
"""A label stream, as reference bin indices."""
Counts = npt.NDArray[np.int32]
"""Window counts, one row per window, one column per reference bin."""
Alarm = Callable[[Counts], npt.NDArray[np.bool_]]
"""Alarm rule: window counts (rows of full windows) -> whether each row raises the alarm."""


@dataclass(frozen=True)
class Banking77:
    """Reference from the training split, and the test split's labels as bin indices."""

    reference: ReferenceDistribution
    test_bins: Bins


def load_banking77(folder: Path) -> Banking77:
    """Read categories.json, train.csv and test.csv; exit with a message if they are absent."""
    paths = [folder / name for name in ("categories.json", "train.csv", "test.csv")]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        sys.exit(f"BANKING77 not found: missing {', '.join(missing)} (expected in {folder})")
    categories: list[str] = json.loads(paths[0].read_text())
    train = Counter(_categories(paths[1]))
    unknown = set(train) - set(categories)
    if unknown:
        sys.exit(f"train.csv has categories outside categories.json: {sorted(unknown)}")
    total = sum(train.values())
    reference = ReferenceDistribution({label: train[label] / total for label in categories})
    test_bins = np.array([reference.index(label) for label in _categories(paths[2])])
    return Banking77(reference=reference, test_bins=test_bins)


def _categories(path: Path) -> list[str]:
    with path.open(newline="") as handle:
        return [row["category"] for row in csv.DictReader(handle)]


def sample_stream(
    data: Banking77, target: npt.NDArray[np.float64], size: int, rng: np.random.Generator
) -> Bins:
    """Test rows drawn so that their labels follow `target` (over the reference bins)."""
    per_bin = np.bincount(data.test_bins, minlength=len(target))
    weights = target[data.test_bins] / per_bin[data.test_bins]
    rows = rng.choice(len(data.test_bins), size=size, p=weights / weights.sum())
    return data.test_bins[rows]


def shifted(
    reference: npt.NDArray[np.float64], share: float, rng: np.random.Generator
) -> npt.NDArray[np.float64]:
    """`share` of the mass moved onto `SHIFTED_INTENTS` named labels drawn at random."""
    targets = rng.choice(len(reference) - 1, size=SHIFTED_INTENTS, replace=False)
    moved = np.zeros_like(reference)
    moved[targets] = share / SHIFTED_INTENTS
    return (1.0 - share) * reference + moved


def full_windows(stream: Bins, bins: int, window: int) -> Counts:
    """Counts of every full window of the stream: row j covers labels j .. j + window - 1."""
    cumulative = np.zeros((len(stream) + 1, bins), dtype=np.int32)
    np.cumsum(np.eye(bins, dtype=np.int32)[stream], axis=0, out=cumulative[1:])
    return cumulative[window:] - cumulative[:-window]


def chi2_rule(reference: npt.NDArray[np.float64], window: int, min_expected: float) -> Alarm:
    """The default alarm (pooled chi-square below the Bonferroni level); min_expected=0: plain."""
    level = DEFAULT_THRESHOLDS.test_level(window)
    return lambda counts: chi2_pvalue(counts, reference, min_expected) < level


def psi_rule(reference: npt.NDArray[np.float64], threshold: float) -> Alarm:
    """The industry rule of thumb: PSI of the smoothed window above a fixed threshold."""
    return lambda counts: psi(reference, smoothed(counts)) > threshold


@dataclass(frozen=True)
class Row:
    """One line of the result table: one alarm rule at one window size."""

    rule: str
    window: int
    false_alarms: int
    blocks: int
    delays: dict[float, npt.NDArray[np.float64]]


def false_alarms(
    data: Banking77, alarms: list[Alarm], window: int, streams: int, seed: int
) -> list[int]:
    """Blocks with an alarm, per rule, over `streams` unshifted streams of `BLOCKS_PER_STREAM`."""
    rng = np.random.default_rng(seed)
    p = data.reference.probabilities
    fired = [0] * len(alarms)
    for _ in range(streams):
        stream = sample_stream(data, p, window * (BLOCKS_PER_STREAM + 1), rng)
        counts = full_windows(stream, len(p), window)[1:]
        for i, alarm in enumerate(alarms):
            blocks = alarm(counts).reshape(BLOCKS_PER_STREAM, window)
            fired[i] += int(blocks.any(axis=1).sum())
    return fired


def detection_delays(
    data: Banking77, alarms: list[Alarm], window: int, share: float, seeds: int, seed: int
) -> npt.NDArray[np.float64]:
    """Shifted labels until the first alarm, per rule and seed (inf when missed)."""
    rng = np.random.default_rng(seed)
    p = data.reference.probabilities
    delays = np.full((len(alarms), seeds), np.inf)
    for seed_index in range(seeds):
        before = sample_stream(data, p, window, rng)
        after = sample_stream(data, shifted(p, share, rng), MAX_DELAY_WINDOWS * window, rng)
        counts = full_windows(np.concatenate([before, after]), len(p), window)[1:]
        for i, alarm in enumerate(alarms):
            fired = alarm(counts)
            if fired.any():
                delays[i, seed_index] = float(np.argmax(fired) + 1)
    return delays


def measure(
    data: Banking77, rules: dict[str, Alarm], window: int, run: dict[str, int], seed: int
) -> list[Row]:
    """False alarms and detection delays of alarm rules at one window size, on shared streams."""
    alarms = list(rules.values())
    streams = run["false_alarm_streams"]
    fired = false_alarms(data, alarms, window, streams, seed)
    delays = {
        share: detection_delays(data, alarms, window, share, run["detection_seeds"], seed + 1)
        for share in SHIFTS
    }
    return [
        Row(
            rule=name,
            window=window,
            false_alarms=fired[i],
            blocks=streams * BLOCKS_PER_STREAM,
            delays={share: delays[share][i] for share in SHIFTS},
        )
        for i, name in enumerate(rules)
    ]


def null_check(data: Banking77, window: int, samples: int, seed: int) -> str:
    """On independent unshifted windows: how often p falls below a level, and PSI / JS spread."""
    rng = np.random.default_rng(seed)
    p = data.reference.probabilities
    levels = (1e-2, 1e-3, DEFAULT_THRESHOLDS.test_level(window))
    below = np.zeros((2, len(levels)))
    psis, distances = [], []
    for chunk in np.array_split(np.arange(samples), max(1, samples // 100_000)):
        counts = rng.multinomial(window, p, size=len(chunk))
        for row, min_expected in enumerate((MIN_EXPECTED, 0.0)):
            pvalues = chi2_pvalue(counts, p, min_expected)
            below[row] += [np.sum(pvalues < level) for level in levels]
        psis.append(psi(p, smoothed(counts)))
        distances.append(js_distance(p, counts / window))
    lines = [
        "| chi-square p-value | " + " | ".join(f"P(p < {level:.0e})" for level in levels) + " |",
        "|---|" + "---|" * len(levels),
    ]
    for row, name in enumerate((f"pooled, expected >= {MIN_EXPECTED:g}", "plain, 78 bins")):
        cells = [f"{count / samples:.2e}" for count in below[row]]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    for name, values in (("PSI", psis), ("JS distance", distances)):
        median, p99 = np.quantile(np.concatenate(values), [0.5, 0.99])
        lines.append(f"{name} without shift, N = {window}: median {median:.3f}, p99 {p99:.3f}")
    return "\n".join(lines)


def unknown_label_sensitivity(data: Banking77, window: int, trials: int, seed: int) -> str:
    """How often one full window raises the default alarm when k of its labels are unknown to
    the reference (the `__other__` bin) and the rest follow the reference."""
    rng = np.random.default_rng(seed)
    p = data.reference.probabilities
    alarm = chi2_rule(p, window, MIN_EXPECTED)
    cells = []
    for unknown in UNKNOWN_COUNTS:
        counts = np.array(
            [
                np.bincount(sample_stream(data, p, window - unknown, rng), minlength=len(p))
                for _ in range(trials)
            ],
            dtype=np.int32,
        )
        counts[:, -1] += unknown
        cells.append(f"{unknown} ({unknown / window:.1%}): {alarm(counts).mean():.1%}")
    return (
        f"Unknown labels in one full window of {window} ({trials} windows each), share of "
        "windows that raise the alarm: " + ", ".join(cells)
    )


def check_monitor_agrees(data: Banking77, window: int, seed: int) -> None:
    """Replay one shifted stream through `DriftMonitor`; its alarms must match the batch path."""
    rng = np.random.default_rng(seed)
    p = data.reference.probabilities
    stream = np.concatenate(
        [
            sample_stream(data, p, window, rng),
            sample_stream(data, shifted(p, 0.5, rng), window, rng),
        ]
    )
    monitor = DriftMonitor(data.reference, window_size=window)
    replayed = []
    for bin_index in stream:
        monitor.observe(data.reference.labels[bin_index])
        replayed.append(monitor.status().drifted)
    batch = chi2_rule(p, window, MIN_EXPECTED)(full_windows(stream, len(p), window))
    if replayed[window - 1 :] != batch.tolist() or any(replayed[: window - 1]):
        sys.exit("DriftMonitor and the batch computation disagree: the benchmark is invalid")


def format_table(rows: list[Row]) -> str:
    """Markdown table of the rows."""
    shift_headers = [f"{share:.0%} shift: median / p90 / missed" for share in SHIFTS]
    header = ["rule", "N", "false-alarm windows", "rate (95 % upper)", *shift_headers]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        upper = special.betaincinv(row.false_alarms + 1, row.blocks - row.false_alarms, 0.95)
        cells = [
            row.rule,
            str(row.window),
            f"{row.false_alarms} / {row.blocks}",
            f"{row.false_alarms / row.blocks:.2%} ({upper:.2%})",
            *(_delay_cell(row.delays[share]) for share in SHIFTS),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _delay_cell(delays: npt.NDArray[np.float64]) -> str:
    median, p90 = np.quantile(delays, [0.5, 0.9], method="inverted_cdf")
    missed = float(np.isinf(delays).mean())
    return f"{_count(median)} / {_count(p90)} / {missed:.0%}"


def _count(value: float) -> str:
    return "miss" if np.isinf(value) else str(int(value))


# --------------------------------------------------------------------------------------------
# End to end: a trained adapter served by a real `hotswap serve`

SERVED_CONCURRENCY = 8
"""Requests in flight per stream; the drift status is read after every batch of this many."""
SERVED_SHIFT = 0.5
SERVED_READY_TIMEOUT_S = 1800.0
SERVED_RETRIES = 20


@dataclass(frozen=True)
class ServedStream:
    """One adapter name fed one label stream; what its drift status said after each batch."""

    name: str
    texts: list[str]
    true_labels: list[str]
    shift_starts: int | None
    """Index of the first shifted request (None: no shift)."""


@dataclass
class ServedResult:
    stream: ServedStream
    polls: list[tuple[int, bool, float, int]]
    """(requests answered, drifted, chi-square p-value, window count) after each batch."""
    predicted: list[str]
    metrics_lines: list[str]


def served_streams(
    data: Banking77,
    texts: list[str],
    traffic: ReferenceDistribution,
    windows: int,
    window: int,
    seed: int,
) -> tuple[ServedStream, ServedStream]:
    """(a) test texts whose true labels follow `traffic` (the traffic the adapter's reference
    describes), `1 + windows` windows long; (b) one window of that, then a `SERVED_SHIFT`
    shift onto 5 intents for `MAX_DELAY_WINDOWS` windows."""
    rng = np.random.default_rng(seed)
    # The traffic's label mix, over this data's bins (same labels, maybe another order).
    p = np.array([traffic.probabilities[traffic.index(label)] for label in data.reference.labels])
    by_bin = {b: np.flatnonzero(data.test_bins == b) for b in range(len(p))}

    def rows_for(bins: Bins) -> list[int]:
        return [int(rng.choice(by_bin[int(b)])) for b in bins]

    def stream(name: str, bins: Bins, shift_starts: int | None) -> ServedStream:
        rows = rows_for(bins)
        labels = [data.reference.labels[data.test_bins[r]] for r in rows]
        return ServedStream(name, [texts[r] for r in rows], labels, shift_starts)

    unshifted = sample_stream(data, p, (1 + windows) * window, rng)
    before = sample_stream(data, p, window, rng)
    after = sample_stream(data, shifted(p, SERVED_SHIFT, rng), MAX_DELAY_WINDOWS * window, rng)
    return (
        stream("drift-noshift", unshifted, None),
        stream("drift-shift50", np.concatenate([before, after]), window),
    )


async def feed(http: Any, stream: ServedStream, label_field: str) -> ServedResult:
    """Send the stream's texts in batches; read the adapter's drift status after each batch.
    A shifted stream stops at the first alarm after the shift started."""
    polls: list[tuple[int, bool, float, int]] = []
    predicted: list[str] = []

    async def ask(text: str) -> str:
        # no max_tokens: the server sizes it to the schema's longest answer
        body = {"adapter": stream.name, "input": text}
        for _ in range(SERVED_RETRIES):
            response = await http.post("/v1/generate", json=body)
            if response.status_code != 503:
                break
            # 503 + Retry-After: e.g. the schema's compile check timed out on a loaded machine.
            await asyncio.sleep(float(response.headers.get("retry-after", 5)))
        response.raise_for_status()
        output = response.json().get("output")
        return str(output.get(label_field)) if isinstance(output, dict) else "<invalid>"

    for start in range(0, len(stream.texts), SERVED_CONCURRENCY):
        batch = stream.texts[start : start + SERVED_CONCURRENCY]
        predicted += await asyncio.gather(*(ask(text) for text in batch))
        stats = (await http.get(f"/v1/adapters/{stream.name}/stats")).json()["drift"]
        polls.append(
            (len(predicted), stats["drifted"], stats["chi2_pvalue"], stats["window_count"])
        )
        if (
            stream.shift_starts is not None
            and len(predicted) > stream.shift_starts
            and polls[-1][1]
        ):
            break
    metrics = (await http.get("/metrics")).text
    lines = [
        line
        for line in metrics.splitlines()
        if line.startswith("hotswap_drift_") and f'adapter="{stream.name}"' in line
    ]
    return ServedResult(stream, polls, predicted, lines)


def run_served(archive: Path, data_dir: Path, windows: int, seed: int) -> None:
    """Push `archive` twice (one name per stream) to a fresh `hotswap serve`, stream both
    scenarios at once, and print false alarms (a) and requests until detection (b)."""
    import tempfile

    import httpx

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))
    from adapters.archive import ArchiveLimits, extract_archive
    from adapters.manifest import MANIFEST_FILE, AdapterManifest
    from server.base_model import prepare_default_base_model
    from server.settings import Settings
    from tests.support import server as server_support

    started = time.perf_counter()
    data = load_banking77(data_dir)
    with (data_dir / "test.csv").open(newline="") as handle:
        texts = [row["text"] for row in csv.DictReader(handle)]
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        (tmp / "unpacked").mkdir()
        folder = extract_archive(archive, tmp / "unpacked", ArchiveLimits())
        manifest = AdapterManifest.model_validate_json((folder / MANIFEST_FILE).read_text())
        task = manifest.task
        if task is None or task.drift_reference is None:
            sys.exit(f"{archive}: the manifest carries no reference label distribution")
        label_field = task.label_field
        if label_field is None:
            sys.exit(f"{archive}: the manifest names no label field")
        # A reference of the adapter's own predictions on the test split describes traffic
        # like the test split; the training labels' describes traffic like them.
        predicted = task.calibration is not None and task.calibration.predicted_distribution
        test_mix = Counter(data.reference.labels[b] for b in data.test_bins)
        traffic = ReferenceDistribution(
            {
                label: test_mix[label] / len(data.test_bins)
                for label in data.reference.labels
                if label != OTHER_LABEL
            }
            if predicted
            else task.drift_reference
        )
        settings = Settings()
        window = settings.drift_window_size
        streams = served_streams(data, texts, traffic, windows, window, seed)
        (tmp / "home").mkdir()
        # An engine takes 30 s to start on an idle machine and over 10 min on a loaded one.
        server = server_support.start_server(
            tmp / "server.log",
            home=tmp / "home",
            base_model=prepare_default_base_model(settings.home),
            args=[],
            ready_timeout_s=SERVED_READY_TIMEOUT_S,
        )
        try:
            with httpx.Client(base_url=server.url, timeout=600) as admin:
                for stream in streams:
                    with archive.open("rb") as fh:
                        pushed = admin.post(
                            "/v1/adapters",
                            files={"file": (archive.name, fh)},
                            data={"name": stream.name},
                        )
                    pushed.raise_for_status()
                    version = int(pushed.json()["version"])
                    admin.post(
                        f"/v1/adapters/{stream.name}/promote", json={"version": version}
                    ).raise_for_status()
            ready = time.perf_counter()

            async def both() -> list[ServedResult]:
                async with httpx.AsyncClient(base_url=server.url, timeout=600) as http:
                    return list(
                        await asyncio.gather(*(feed(http, s, label_field) for s in streams))
                    )

            results = asyncio.run(both())
            streamed = time.perf_counter() - ready
        except Exception:
            print(f"server log (tail):\n{server.log_tail()}", file=sys.stderr)
            raise
        finally:
            server.stop()
    print(format_served(results, window, archive))
    total = sum(len(r.predicted) for r in results)
    print(
        f"\n{total} requests in {streamed:.0f} s ({total / streamed:.1f} req/s); "
        f"N = {window}, status read every {SERVED_CONCURRENCY} requests; seed {seed}; "
        f"{time.perf_counter() - started:.0f} s in all"
    )


def format_served(results: list[ServedResult], window: int, archive: Path) -> str:
    """Markdown lines: accuracy on the stream, alarms under (a), delay under (b), gauges."""
    lines = [f"adapter archive: {archive}", ""]
    for result in results:
        stream = result.stream
        n = len(result.predicted)
        correct = sum(p == t for p, t in zip(result.predicted, stream.true_labels, strict=False))
        lines.append(f"## {stream.name}: {n} requests, accuracy on them {correct / n:.1%}")
        full = [poll for poll in result.polls if poll[3] >= window]
        if stream.shift_starts is None:
            alarms = sum(poll[1] for poll in full)
            first = next((poll[0] for poll in full if poll[1]), None)
            lines.append(
                f"(a) no shift: alarm in {alarms} of {len(full)} status reads with a full "
                f"window (first at request {first})"
            )
        else:
            before = [poll for poll in full if poll[0] <= stream.shift_starts]
            after = [poll for poll in result.polls if poll[0] > stream.shift_starts]
            detected = next((poll[0] for poll in after if poll[1]), None)
            delay = "missed" if detected is None else str(detected - stream.shift_starts)
            lines.append(
                f"(b) {SERVED_SHIFT:.0%} shift: alarms before the shift {sum(p[1] for p in before)}"
                f" of {len(before)} reads; requests until detection {delay}"
            )
        predicted = Counter(result.predicted)
        lines.append(f"most predicted: {predicted.most_common(5)}")
        lines += [
            "gauges at the end (/metrics):",
            *(f"    {line}" for line in result.metrics_lines),
        ]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--long", action="store_true", help="more seeds and other window sizes")
    parser.add_argument("--data", type=Path, default=DATA_DIR, help="BANKING77 folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--served", type=Path, metavar="ARCHIVE", help="end-to-end run with this adapter archive"
    )
    parser.add_argument(
        "--served-windows",
        type=int,
        default=3,
        help="--served: windows of unshifted requests after the first (false-alarm stream)",
    )
    args = parser.parse_args()
    if args.served:
        run_served(args.served, args.data, args.served_windows, args.seed)
        return
    started = time.perf_counter()
    data = load_banking77(args.data)
    p = data.reference.probabilities
    run = LONG_RUN if args.long else DEFAULT_RUN
    check_monitor_agrees(data, DEFAULT_WINDOW_SIZE, args.seed)
    rows: list[Row] = []
    for window in LONG_WINDOWS if args.long else (DEFAULT_WINDOW_SIZE,):
        rules = {"chi2 pooled (default)": chi2_rule(p, window, MIN_EXPECTED)}
        if window == DEFAULT_WINDOW_SIZE:
            rules["chi2 plain, 78 bins"] = chi2_rule(p, window, 0.0)
            rules[f"PSI > {PSI_RULE_OF_THUMB}"] = psi_rule(p, PSI_RULE_OF_THUMB)
        rows += measure(data, rules, window, run, args.seed)
    print(format_table(rows))
    print()
    print(null_check(data, DEFAULT_WINDOW_SIZE, run["null_windows"], args.seed + 2))
    print()
    print(unknown_label_sensitivity(data, DEFAULT_WINDOW_SIZE, UNKNOWN_TRIALS, args.seed + 3))
    print(
        f"\nreference: BANKING77 train ({len(p) - 1} intents + {data.reference.labels[-1]}); "
        f"{run['false_alarm_streams'] * BLOCKS_PER_STREAM} windows without shift, "
        f"{run['detection_seeds']} seeds per shift, chi-square level "
        f"{DEFAULT_THRESHOLDS.false_alarm_per_window:.0%} / N per evaluation; seed {args.seed}; "
        f"{time.perf_counter() - started:.0f} s"
    )


if __name__ == "__main__":
    main()

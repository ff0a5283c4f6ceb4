"""Labels produced per adapter and their drift against the manifest's reference distribution
(the adapter's own predictions on held-out data when training recorded them, else the training
labels'); for classification tasks, the answers' confidence and its drift from the mean
confidence on held-out data.

Drift gauges are computed when Prometheus scrapes (a custom collector), not per request."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from adapters.manifest import TaskSpec
from server.metrics import instruments as m
from server.metrics.drift import (
    DEFAULT_WINDOW_SIZE,
    OTHER_LABEL,
    DriftMonitor,
    DriftStatus,
    ReferenceDistribution,
)

if TYPE_CHECKING:
    from server.catalog import ServedModel
    from server.label_scores import LabelVerdict


def labels_of(task: TaskSpec, output: Any) -> list[str]:
    """The labels in an output document: its `label_field`, a string or a list of strings."""
    if task.labels is None or task.label_field is None or not isinstance(output, dict):
        return []
    value = output.get(task.label_field)
    values = value if isinstance(value, list) else [value]
    return [v if isinstance(v, str) else OTHER_LABEL for v in values if v is not None]


class LabelTracker(Collector):
    """Counts labels per adapter and keeps one drift window per adapter name.

    A window is reset when the promoted version's reference distribution changes."""

    def __init__(self, window_size: int = DEFAULT_WINDOW_SIZE) -> None:
        self._window_size = window_size
        self._monitors: dict[str, tuple[TaskSpec, DriftMonitor]] = {}
        # adapter -> (mean confidence on held-out data, the last answers' confidences)
        self._confidences: dict[str, tuple[float | None, deque[float]]] = {}
        self._lock = threading.Lock()

    def observe_verdict(self, model: ServedModel, verdict: LabelVerdict) -> None:
        """A classification answer's confidence and whether it abstained."""
        version = str(model.version or "")
        outcome = "abstained" if verdict.abstained else "answered"
        m.LABEL_VERDICTS.labels(model.name, version, outcome).inc()
        if verdict.confidence is None:
            return
        m.LABEL_CONFIDENCE.labels(model.name, version).observe(verdict.confidence)
        calibration = model.task.calibration if model.task is not None else None
        reference = calibration.mean_confidence if calibration is not None else None
        with self._lock:
            current = self._confidences.get(model.name)
            if current is None or current[0] != reference:
                current = (reference, deque(maxlen=self._window_size))
                self._confidences[model.name] = current
            current[1].append(verdict.confidence)

    def observe(self, adapter: str, task: TaskSpec | None, output: Any) -> None:
        if task is None:
            return
        labels = labels_of(task, output)
        if not labels:
            return
        known = set(task.labels or ())
        monitor = self._monitor(adapter, task)
        for label in labels:
            m.LABELS.labels(adapter, label if label in known else OTHER_LABEL).inc()
            if monitor is not None:
                monitor.observe(label)

    def _monitor(self, adapter: str, task: TaskSpec) -> DriftMonitor | None:
        reference = task.drift_reference
        if not reference:
            return None
        with self._lock:
            current = self._monitors.get(adapter)
            if current is None or current[0].drift_reference != reference:
                positive = {label: p for label, p in reference.items() if p > 0}
                monitor = DriftMonitor(ReferenceDistribution(positive), self._window_size)
                self._monitors[adapter] = (task, monitor)
                return monitor
            return current[1]

    def status(self, adapter: str) -> DriftStatus | None:
        with self._lock:
            current = self._monitors.get(adapter)
        return None if current is None else current[1].status()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families = {
            "psi": GaugeMetricFamily(
                "hotswap_drift_psi", "Population stability index of the window.", labels=["adapter"]
            ),
            "js_distance": GaugeMetricFamily(
                "hotswap_drift_js_distance",
                "Jensen-Shannon distance (base 2) of the window from the reference.",
                labels=["adapter"],
            ),
            "chi2_pvalue": GaugeMetricFamily(
                "hotswap_drift_chi2_pvalue",
                "p-value of the chi-square goodness-of-fit test of the window.",
                labels=["adapter"],
            ),
            "window_fill": GaugeMetricFamily(
                "hotswap_drift_window_fill",
                "Labels in the window / window size.",
                labels=["adapter"],
            ),
            "drifted": GaugeMetricFamily(
                "hotswap_drift_detected",
                "1 when the window is full enough and the test rejects the reference.",
                labels=["adapter"],
            ),
        }
        with self._lock:
            monitors = {name: monitor for name, (_, monitor) in self._monitors.items()}
            confidences = {
                name: (reference, sum(window) / len(window))
                for name, (reference, window) in self._confidences.items()
                if window
            }
        for name, monitor in monitors.items():
            status = monitor.status()
            for key, family in families.items():
                family.add_metric([name], float(getattr(status, key)))
        yield from families.values()
        yield from _confidence_families(confidences)


def _confidence_families(
    confidences: dict[str, tuple[float | None, float]],
) -> Iterator[GaugeMetricFamily]:
    mean = GaugeMetricFamily(
        "hotswap_label_confidence_mean",
        "Mean confidence of the adapter's last classification answers (the drift window).",
        labels=["adapter"],
    )
    drift = GaugeMetricFamily(
        "hotswap_label_confidence_drift",
        "Mean confidence on held-out data (the manifest's) minus the window's: above 0, the "
        "adapter is less sure of live traffic than of its test set.",
        labels=["adapter"],
    )
    for name, (reference, live) in confidences.items():
        mean.add_metric([name], live)
        if reference is not None:
            drift.add_metric([name], reference - live)
    yield mean
    yield drift

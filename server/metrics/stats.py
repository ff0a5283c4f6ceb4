"""The figures of one adapter as JSON, read from the same metrics Prometheus scrapes."""

from __future__ import annotations

from prometheus_client import REGISTRY
from pydantic import BaseModel, Field

from server.metrics.labels import LabelTracker


class DriftView(BaseModel):
    psi: float
    js_distance: float
    chi2_pvalue: float
    drifted: bool
    window_fill: float
    window_count: int


class AdapterStats(BaseModel):
    adapter: str
    valid: int = Field(description="Responses under a schema that validated.")
    invalid: int = Field(description="Responses under a schema that did not.")
    refused: int = Field(description="Requests refused before generation (bad schema).")
    validity_rate: float | None = Field(description="valid / (valid + invalid); null if none.")
    labels: dict[str, int] = Field(description="Labels produced so far, by label.")
    drift: DriftView | None = Field(description="Null without a reference distribution.")


def _sample(name: str, labels: dict[str, str]) -> int:
    return int(REGISTRY.get_sample_value(name, labels) or 0)


def adapter_stats(adapter: str, tracker: LabelTracker) -> AdapterStats:
    outcomes = {
        outcome: _sample("hotswap_schema_outcomes_total", {"adapter": adapter, "outcome": outcome})
        for outcome in ("valid", "invalid", "refused")
    }
    judged = outcomes["valid"] + outcomes["invalid"]
    label_counts = {
        sample.labels["label"]: int(sample.value)
        for family in REGISTRY.collect()
        if family.name == "hotswap_labels"
        for sample in family.samples
        if sample.name == "hotswap_labels_total" and sample.labels["adapter"] == adapter
    }
    status = tracker.status(adapter)
    return AdapterStats(
        adapter=adapter,
        valid=outcomes["valid"],
        invalid=outcomes["invalid"],
        refused=outcomes["refused"],
        validity_rate=outcomes["valid"] / judged if judged else None,
        labels=label_counts,
        drift=None
        if status is None
        else DriftView(
            psi=status.psi,
            js_distance=status.js_distance,
            chi2_pvalue=status.chi2_pvalue,
            drifted=status.drifted,
            window_fill=status.window_fill,
            window_count=status.count,
        ),
    )

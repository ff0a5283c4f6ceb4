"""The gates a candidate version must hold to be promoted, and the verdict on its figures.

Defaults are documented in docs/rollout.md; every value from the API is range-checked here
(pydantic) before it is used or stored.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

MAX_MIN_REQUESTS = 1_000_000


class Gates(BaseModel):
    """When a candidate is promoted (every gate holds) or rolled back (any gate fails). Nothing
    is decided before both versions have answered `min_requests` requests of the rollout."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    min_requests: int = Field(
        default=100, ge=1, le=MAX_MIN_REQUESTS, description="Requests each version answers first."
    )
    max_validity_drop: float = Field(
        default=0.02, ge=0, le=1, description="Schema validity of current minus candidate, at most."
    )
    max_label_js: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="Jensen-Shannon distance (base 2) of the label distributions beyond what "
        "chance gives for samples of their sizes, at most.",
    )
    min_shadow_agreement: float = Field(
        default=0.9,
        ge=0,
        le=1,
        description="Shadow: share of answers equal to the current's, at least.",
    )
    max_p95_latency_ratio: float = Field(
        default=1.5,
        ge=1,
        le=100,
        description="Candidate p95 latency / current p95 latency, at most.",
    )
    max_error_rate: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="Candidate requests that failed in the engine, at most.",
    )


@dataclass(frozen=True)
class Figures:
    """The comparison of candidate and current over the rollout so far (None: no data)."""

    candidate_requests: int
    current_requests: int
    candidate_validity: float | None
    current_validity: float | None
    label_js_distance: float | None
    """Observed; biased up by chance for small samples of many labels."""
    shadow_agreement: float | None
    candidate_p95_s: float | None
    current_p95_s: float | None
    candidate_error_rate: float
    shadow_dropped: int = 0
    label_js_chance: float | None = None
    """The 95th percentile of the distance between random splits of the pooled labels."""

    @property
    def validity_drop(self) -> float | None:
        if self.candidate_validity is None or self.current_validity is None:
            return None
        return self.current_validity - self.candidate_validity

    @property
    def label_js_excess(self) -> float | None:
        """The label distance beyond chance: what the gate judges."""
        if self.label_js_distance is None or self.label_js_chance is None:
            return None
        return self.label_js_distance - self.label_js_chance

    @property
    def p95_latency_ratio(self) -> float | None:
        if not self.candidate_p95_s or not self.current_p95_s:
            return None
        return self.candidate_p95_s / self.current_p95_s

    def as_dict(self) -> dict[str, Any]:
        """The figures with the derived ones, as recorded with a transition."""
        return {
            **asdict(self),
            "validity_drop": self.validity_drop,
            "label_js_excess": self.label_js_excess,
            "p95_latency_ratio": self.p95_latency_ratio,
        }


@dataclass(frozen=True)
class Verdict:
    """A decision: promote the candidate, or roll it back, and why."""

    promote: bool
    reason: str


def judge(gates: Gates, figures: Figures, shadow: bool) -> Verdict | None:
    """The decision the figures call for; None while either version is under the minimum.
    A gate whose figure has no data (no schema, no labels) holds."""
    if min(figures.candidate_requests, figures.current_requests) < gates.min_requests:
        return None
    failed = [
        f"{name} {value:.4g} {sign} {limit:g}"
        for name, value, sign, limit, fails in _checks(gates, figures, shadow)
        if fails
    ]
    if failed:
        return Verdict(promote=False, reason="gates failed: " + "; ".join(failed))
    return Verdict(
        promote=True,
        reason=f"every gate held after {figures.candidate_requests} candidate requests",
    )


def _checks(
    gates: Gates, figures: Figures, shadow: bool
) -> list[tuple[str, float, str, float, bool]]:
    """(figure, value, comparison, limit, failed) for every gate that has data."""
    checks = [("error rate", figures.candidate_error_rate, ">", gates.max_error_rate)]
    if figures.validity_drop is not None:
        checks.append(("validity drop", figures.validity_drop, ">", gates.max_validity_drop))
    if figures.label_js_excess is not None:
        checks.append(("label JS beyond chance", figures.label_js_excess, ">", gates.max_label_js))
    if figures.p95_latency_ratio is not None:
        checks.append(
            ("p95 latency ratio", figures.p95_latency_ratio, ">", gates.max_p95_latency_ratio)
        )
    if shadow and figures.shadow_agreement is not None:
        checks.append(
            ("shadow agreement", figures.shadow_agreement, "<", gates.min_shadow_agreement)
        )
    return [
        (name, value, sign, limit, value > limit if sign == ">" else value < limit)
        for name, value, sign, limit in checks
    ]

"""Scores of predicted JSON outputs against targets: validity, classification and extraction.

Pure Python, no engine: `evaluate` feeds it the engine's outputs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import jsonschema
from pydantic import BaseModel, Field


class ClassScore(BaseModel):
    precision: float
    recall: float
    f1: float
    support: int


class Scores(BaseModel):
    """Metrics of one model on one test set."""

    examples: int
    validity: float = Field(description="Share of outputs that parse and satisfy the schema.")
    accuracy: float = Field(description="Exact match of the label (set, for multi-label).")
    macro_f1: float
    micro_f1: float
    per_class: dict[str, ClassScore]
    field_exact_match: dict[str, float] = Field(default_factory=dict)
    confusion: list[list[int]] | None = Field(
        default=None, description="Rows: true label, columns: predicted (labels + '<invalid>')."
    )
    labels: list[str]

    def metric(self, name: str) -> float:
        value = getattr(self, name, None)
        if not isinstance(value, float):
            raise ValueError(f"unknown metric {name!r}: use accuracy, macro_f1 or micro_f1")
        return value


INVALID = "<invalid>"


def parse_output(text: str, validator: Any) -> dict[str, Any] | None:
    """The output object if `text` is JSON satisfying the schema, else None."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or (validator is not None and not validator.is_valid(obj)):
        return None
    return obj


def _label_set(obj: dict[str, Any] | None, field: str) -> set[str]:
    if obj is None:
        return set()
    value = obj.get(field)
    if isinstance(value, str):
        return {value}
    if isinstance(value, list):
        return {str(v) for v in value}
    return set()


def _f1(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def score(
    outputs: Sequence[str],
    targets: Sequence[dict[str, Any]],
    *,
    schema: dict[str, Any] | None,
    labels: Sequence[str],
    label_field: str,
    single_label: bool,
) -> Scores:
    """Compare raw model outputs with the target objects."""
    validator = jsonschema.validators.validator_for(schema)(schema) if schema else None
    parsed = [parse_output(text, validator) for text in outputs]
    n = len(targets)
    counts = {label: [0, 0, 0] for label in labels}  # tp, fp, fn
    exact = 0
    index = {label: i for i, label in enumerate(labels)}
    confusion = [[0] * (len(labels) + 1) for _ in labels] if single_label else None
    for obj, target in zip(parsed, targets, strict=True):
        predicted = _label_set(obj, label_field)
        truth = _label_set(target, label_field)
        exact += predicted == truth
        for label in predicted | truth:
            if label not in counts:
                continue
            if label in predicted and label in truth:
                counts[label][0] += 1
            elif label in predicted:
                counts[label][1] += 1
            else:
                counts[label][2] += 1
        if confusion is not None and len(truth) == 1:
            (true_label,) = truth
            column = (
                index.get(next(iter(predicted)), len(labels))
                if len(predicted) == 1
                else len(labels)
            )
            if true_label in index:
                confusion[index[true_label]][column] += 1
    per_class = {}
    for label, (tp, fp, fn) in counts.items():
        p, r, f = _f1(tp, fp, fn)
        per_class[label] = ClassScore(precision=p, recall=r, f1=f, support=tp + fn)
    supported = [s for s in per_class.values() if s.support > 0]
    totals = [sum(c[i] for c in counts.values()) for i in range(3)]
    fields = sorted({k for t in targets for k in t})
    field_exact = (
        {
            f: sum(
                obj is not None and _canonical(obj.get(f)) == _canonical(t.get(f))
                for obj, t in zip(parsed, targets, strict=True)
            )
            / n
            for f in fields
        }
        if n
        else {}
    )
    return Scores(
        examples=n,
        validity=sum(p is not None for p in parsed) / n if n else 0.0,
        accuracy=exact / n if n else 0.0,
        macro_f1=sum(s.f1 for s in supported) / len(supported) if supported else 0.0,
        micro_f1=_f1(*totals)[2],
        per_class=per_class,
        field_exact_match=field_exact,
        confusion=confusion,
        labels=list(labels),
    )


def _canonical(value: Any) -> Any:
    """Lists compare as sets (label order carries no meaning)."""
    if isinstance(value, list):
        return sorted(json.dumps(v, sort_keys=True) for v in value)
    return value


class GateResult(BaseModel):
    """The regression gate's verdict; the CLI exits non-zero when `passed` is False."""

    passed: bool
    reasons: list[str]


def regression_gate(
    new: Scores,
    previous: Scores | None,
    *,
    metric: str,
    min_validity: float,
    min_metric: float,
    max_metric_drop: float,
    max_class_drop: float,
) -> GateResult:
    """Check the thresholds, and against `previous` (same test set) when given."""
    reasons = []
    if new.validity < min_validity:
        reasons.append(f"validity {new.validity:.3f} is below the minimum {min_validity:.3f}")
    value = new.metric(metric)
    if value < min_metric:
        reasons.append(f"{metric} {value:.3f} is below the minimum {min_metric:.3f}")
    if previous is not None:
        before = previous.metric(metric)
        if value < before - max_metric_drop:
            reasons.append(
                f"{metric} fell from {before:.3f} to {value:.3f} "
                f"(more than the allowed {max_metric_drop:.3f})"
            )
        for label, old in previous.per_class.items():
            now = new.per_class.get(label)
            if now is not None and old.support and now.f1 < old.f1 - max_class_drop:
                reasons.append(
                    f"F1 of {label!r} fell from {old.f1:.3f} to {now.f1:.3f} "
                    f"(more than the allowed {max_class_drop:.3f})"
                )
    return GateResult(passed=not reasons, reasons=reasons)

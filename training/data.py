"""Labelled data: reading, the task spec, validation before training, and splits.

Every example is an input text and a target JSON object (`{"intent": "card_arrival"}`);
the assistant turn the adapter learns is that object as compact JSON. Prompt framing lives in
`adapters.manifest.TaskSpec.render_messages`, shared with the server.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import jsonschema
from pydantic import BaseModel, ConfigDict, Field

from adapters.json_grammar import compact_json
from adapters.manifest import INPUT_PLACEHOLDER, TaskSpec
from training.recipe import DataConfig, Recipe, TaskConfig

SplitName = Literal["train", "validation", "test"]
SPLITS: tuple[SplitName, ...] = ("train", "validation", "test")
_LABEL_COLUMNS = ("label", "labels", "category", "intent", "intents")
_MULTI_SEPARATOR = re.compile(r"[|;]")


class DataError(ValueError):
    """The data cannot be read, or failed validation; the message says where and why."""


@dataclass(frozen=True)
class Example:
    """One labelled input: `text` and the `target` object the model must answer."""

    text: str
    target: dict[str, Any]
    source: str = ""


# --------------------------------------------------------------------------------------------
# Reading


def read_examples(paths: Sequence[Path], data: DataConfig, task: TaskConfig) -> list[Example]:
    """Read every file in `paths` into examples (format from `data.format` or the suffix)."""
    examples: list[Example] = []
    for path in paths:
        fmt = data.format if data.format != "auto" else _detect_format(path)
        if fmt == "csv":
            with path.open(newline="", encoding="utf-8") as fh:
                rows: Iterable[tuple[str, dict[str, Any]]] = [
                    (f"{path.name}:{i + 2}", row) for i, row in enumerate(csv.DictReader(fh))
                ]
                examples.extend(_from_rows(rows, data, task))
        elif fmt in ("jsonl", "chat"):
            rows = [
                (f"{path.name}:{i + 1}", _json_line(path, i, line))
                for i, line in enumerate(path.read_text(encoding="utf-8").splitlines())
                if line.strip()
            ]
            examples.extend(_from_rows(rows, data, task))
        elif fmt in ("json", "nlupp"):
            records = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(records, list):
                raise DataError(f"{path}: expected a JSON array of records")
            rows = [(f"{path.name}[{i}]", r) for i, r in enumerate(records)]
            if fmt == "nlupp":
                examples.extend(_from_nlupp(rows, task))
            else:
                examples.extend(_from_rows(rows, data, task))
        else:
            raise DataError(f"{path}: unknown data format {fmt!r}")
    return examples


def _detect_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix == ".json":
        return "json"
    if suffix == ".jsonl":
        return "jsonl"
    raise DataError(f"{path}: cannot tell the format from the suffix; set data.format")


def _json_line(path: Path, index: int, line: str) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path.name}:{index + 1}: not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise DataError(f"{path.name}:{index + 1}: each line must be a JSON object")
    return obj


def _from_rows(
    rows: Iterable[tuple[str, dict[str, Any]]], data: DataConfig, task: TaskConfig
) -> list[Example]:
    out: list[Example] = []
    for where, row in rows:
        if "messages" in row:
            out.append(_from_chat(where, row["messages"], task))
            continue
        text = row.get(data.text_field)
        if not isinstance(text, str):
            raise DataError(f"{where}: no text in field {data.text_field!r}")
        out.append(Example(text=text, target=_target_of(where, row, data, task), source=where))
    return out


def _target_of(
    where: str, row: dict[str, Any], data: DataConfig, task: TaskConfig
) -> dict[str, Any]:
    if isinstance(row.get("target"), dict):
        return dict(row["target"])
    if isinstance(row.get("target"), str):
        try:
            target = json.loads(row["target"])
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: 'target' is not a JSON object: {exc}") from exc
        if not isinstance(target, dict):
            raise DataError(f"{where}: 'target' must be a JSON object")
        return target
    columns = [data.label_field] if data.label_field else list(_LABEL_COLUMNS)
    for column in columns:
        if column in row and row[column] is not None:
            value = row[column]
            break
    else:
        raise DataError(f"{where}: no label; expected one of the fields {columns} or 'target'")
    if task.kind == "classification":
        if not isinstance(value, str):
            raise DataError(f"{where}: the label must be a string, got {value!r}")
        return {task.output_field: value.strip()}
    if isinstance(value, str):
        value = [v.strip() for v in _MULTI_SEPARATOR.split(value) if v.strip()]
    if not isinstance(value, list):
        raise DataError(f"{where}: labels must be a list or a '|'-separated string")
    return {task.output_field: [str(v) for v in value]}


def _from_chat(where: str, messages: Any, task: TaskConfig) -> Example:
    """A chat record: the last user turn is the input, the assistant turn the JSON target."""
    if not isinstance(messages, list):
        raise DataError(f"{where}: 'messages' must be a list")
    user = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    assistant = [
        m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "assistant"
    ]
    if not user or not assistant or not isinstance(user[-1], str):
        raise DataError(f"{where}: a chat example needs a user and an assistant message")
    try:
        target = json.loads(str(assistant[-1]))
    except (TypeError, json.JSONDecodeError) as exc:
        raise DataError(f"{where}: the assistant message is not a JSON object: {exc}") from exc
    if not isinstance(target, dict):
        raise DataError(f"{where}: the assistant message must be a JSON object")
    prefix, _, suffix = task.input_template.partition(INPUT_PLACEHOLDER)
    text = user[-1]
    if prefix and text.startswith(prefix):
        text = text[len(prefix) :]
    if suffix and text.endswith(suffix):
        text = text[: -len(suffix)]
    return Example(text=text, target=target, source=where)


def _from_nlupp(rows: Iterable[tuple[str, dict[str, Any]]], task: TaskConfig) -> list[Example]:
    """NLU++ records: `intents` (list) and `slots` ({name: {text, span, value}}) -> target
    `{"intents": [...], "slots": {name: text}}` (slot values as the span text)."""
    out = []
    for where, row in rows:
        slots = row.get("slots") or {}
        target = {
            task.output_field: sorted(row.get("intents") or []),
            "slots": {name: str(slot.get("text", "")) for name, slot in sorted(slots.items())},
        }
        out.append(Example(text=str(row.get("text", "")), target=target, source=where))
    return out


# --------------------------------------------------------------------------------------------
# The task spec


def labels_of(example: Example, task: TaskConfig) -> list[str]:
    """The label(s) an example carries in `task.output_field` (empty if none)."""
    value = example.target.get(task.output_field)
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [str(v) for v in value]
    return []


def resolve_labels(recipe: Recipe, examples: Sequence[Example]) -> list[str]:
    """The closed label set: `task.labels`, else `task.labels_file`, else seen in the data."""
    task = recipe.task
    if task.labels is not None:
        return list(task.labels)
    if task.labels_file is not None:
        raw = json.loads(recipe.resolve(task.labels_file).read_text())
        if task.labels_key is not None:
            raw = raw[task.labels_key]
        labels = list(raw) if isinstance(raw, dict | list) else []
        if not labels or not all(isinstance(label, str) for label in labels):
            raise DataError(f"{task.labels_file}: no list of label strings found")
        return labels
    return sorted({label for ex in examples for label in labels_of(ex, task)})


def build_output_schema(
    task: TaskConfig, labels: Sequence[str], slots: Sequence[str]
) -> dict[str, Any]:
    """The JSON Schema of the output, built from the labels (unless the recipe gives one)."""
    if task.output_schema is not None:
        return task.output_schema
    field_schema: dict[str, Any] = {"type": "string", "enum": list(labels)}
    if task.kind != "classification":
        field_schema = {"type": "array", "items": field_schema, "maxItems": task.max_labels}
    properties: dict[str, Any] = {task.output_field: field_schema}
    if task.kind == "extraction":
        properties["slots"] = {
            "type": "object",
            "properties": {s: dict(task.slot_value_schema) for s in slots},
            "additionalProperties": False,
        }
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def slot_names(task: TaskConfig, examples: Sequence[Example]) -> list[str]:
    if task.kind != "extraction":
        return []
    if task.slot_names is not None:
        return list(task.slot_names)
    return sorted({s for ex in examples for s in (ex.target.get("slots") or {})})


def reference_distribution(
    examples: Sequence[Example], task: TaskConfig, labels: Sequence[str]
) -> dict[str, float]:
    """Label frequencies in `examples` (one entry per label, summing to 1)."""
    counts = Counter(label for ex in examples for label in labels_of(ex, task))
    total = sum(counts[label] for label in labels)
    if total == 0:
        return {label: 1.0 / len(labels) for label in labels}
    dist = {label: counts[label] / total for label in labels}
    # Absorb rounding so the sum is 1 within TaskSpec's tolerance.
    last = labels[-1]
    dist[last] = max(0.0, 1.0 - sum(v for k, v in dist.items() if k != last))
    return dist


def build_task_spec(
    task: TaskConfig,
    labels: Sequence[str],
    slots: Sequence[str] = (),
    distribution: dict[str, float] | None = None,
) -> TaskSpec:
    """The `TaskSpec` written into the manifest and used to frame every prompt."""
    return TaskSpec(
        system_message=task.system_message,
        input_template=task.input_template,
        output_schema=build_output_schema(task, labels, slots),
        labels=list(labels),
        label_field=task.output_field,
        reference_distribution=distribution,
    )


def order_like_schema(obj: Any, schema: dict[str, Any]) -> Any:
    """Reorder object keys as the schema lists its properties: constrained decoding emits
    properties in that order, so training targets must use it too."""
    if isinstance(obj, dict) and isinstance(schema.get("properties"), dict):
        props: dict[str, Any] = schema["properties"]
        ordered = {k: order_like_schema(obj[k], props[k]) for k in props if k in obj}
        ordered.update({k: v for k, v in obj.items() if k not in props})
        return ordered
    if isinstance(obj, list) and isinstance(schema.get("items"), dict):
        return [order_like_schema(v, schema["items"]) for v in obj]
    return obj


# --------------------------------------------------------------------------------------------
# Validation


class Issue(BaseModel):
    """One kind of defect: how many examples have it and where the first few are."""

    model_config = ConfigDict(frozen=True)

    code: str
    severity: Literal["error", "warning"]
    message: str
    count: int
    where: list[str] = Field(default_factory=list)


class ValidationReport(BaseModel):
    """What the data looks like before training; `ok` is False when any error was found."""

    counts: dict[str, int]
    label_counts: dict[str, dict[str, int]]
    issues: list[Issue]

    @property
    def ok(self) -> bool:
        return not any(issue.severity == "error" for issue in self.issues)

    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "error"]

    def codes(self) -> set[str]:
        return {i.code for i in self.issues}

    def format(self) -> str:
        """A human-readable summary, errors first."""
        lines = ["examples: " + ", ".join(f"{k} {v}" for k, v in self.counts.items())]
        for split, counts in self.label_counts.items():
            if counts:
                lo, hi = min(counts.values()), max(counts.values())
                lines.append(f"{split}: {len(counts)} labels, {lo}-{hi} examples per label")
        for issue in sorted(self.issues, key=lambda i: i.severity != "error"):
            where = ", ".join(issue.where[:5])
            lines.append(f"{issue.severity.upper()} [{issue.code}] {issue.message} ({where})")
        if not self.issues:
            lines.append("no problems found")
        return "\n".join(lines)


def normalise_text(text: str) -> str:
    """Text compared for near duplicates: lower case, no punctuation, single spaces."""
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", " ", text.lower())).strip()


@dataclass
class _Collector:
    issues: dict[str, tuple[Literal["error", "warning"], str, list[str]]] = field(
        default_factory=dict
    )

    def add(
        self, code: str, severity: Literal["error", "warning"], message: str, where: str
    ) -> None:
        if code not in self.issues:
            self.issues[code] = (severity, message, [])
        self.issues[code][2].append(where)

    def report(self) -> list[Issue]:
        return [
            Issue(code=code, severity=sev, message=msg, count=len(where), where=where[:10])
            for code, (sev, msg, where) in self.issues.items()
        ]


def validate_splits(
    splits: dict[SplitName, list[Example]],
    spec: TaskSpec,
    *,
    max_chars: int,
    near_duplicates: Literal["warn", "error"] = "warn",
) -> ValidationReport:
    """Check every split for the defects that spoil a training run or its evaluation."""
    found = _Collector()
    label_field = spec.label_field
    label_set = set(spec.labels or [])
    validator = (
        jsonschema.validators.validator_for(spec.output_schema)(spec.output_schema)
        if spec.output_schema
        else None
    )
    seen_where: dict[str, dict[str, str]] = {}  # exact text -> split -> first location
    seen_norm: dict[str, dict[str, str]] = {}
    for split, examples in splits.items():
        exact: dict[str, Example] = {}
        norm: dict[str, Example] = {}
        for ex in examples:
            where = f"{split} {ex.source}".strip()
            if not ex.text.strip():
                found.add("empty_text", "error", "empty input text", where)
                continue
            if len(ex.text) > max_chars:
                found.add("too_long", "error", f"input text over {max_chars} characters", where)
            if label_field is not None and spec.labels is not None:
                value = ex.target.get(label_field)
                values = value if isinstance(value, list) else [value]
                if any(v not in label_set for v in values):
                    found.add("unknown_label", "error", "label outside the label set", where)
            if validator is not None:
                error = next(iter(validator.iter_errors(ex.target)), None)
                if error is not None:
                    found.add(
                        "schema", "error", f"target fails the output schema: {error.message}", where
                    )
            previous = exact.get(ex.text)
            if previous is not None:
                if previous.target != ex.target:
                    found.add(
                        "conflicting_labels",
                        "error",
                        "same text with different targets",
                        f"{where} vs {previous.source}",
                    )
                else:
                    found.add("duplicate", "warning", "exact duplicate (dropped)", where)
            else:
                key = normalise_text(ex.text)
                other = norm.get(key)
                if other is not None:
                    severity: Literal["error", "warning"] = (
                        "error" if near_duplicates == "error" else "warning"
                    )
                    found.add(
                        "near_duplicate",
                        severity,
                        "near duplicate after normalising case, punctuation and spaces",
                        f"{where} ~ {other.source}",
                    )
                exact[ex.text] = ex
                norm.setdefault(key, ex)
            for other_split, loc in seen_where.get(ex.text, {}).items():
                if other_split != split:
                    found.add(
                        "leakage",
                        "error",
                        "the same text is in two splits",
                        f"{where} = {other_split} {loc}",
                    )
            for other_split, loc in seen_norm.get(normalise_text(ex.text), {}).items():
                if other_split != split and ex.text not in seen_where:
                    found.add(
                        "near_leakage",
                        "warning",
                        "near-duplicate texts in two splits",
                        f"{where} ~ {other_split} {loc}",
                    )
        for text, ex in exact.items():
            seen_where.setdefault(text, {}).setdefault(split, ex.source)
        for key, ex in norm.items():
            seen_norm.setdefault(key, {}).setdefault(split, ex.source)
    return ValidationReport(
        counts={split: len(exs) for split, exs in splits.items()},
        label_counts={
            split: dict(Counter(_labels_in(ex, label_field) for ex in exs).most_common())
            for split, exs in splits.items()
        }
        if label_field
        else {},
        issues=found.report(),
    )


def _labels_in(ex: Example, field: str) -> str:
    value = ex.target.get(field)
    return "|".join(value) if isinstance(value, list) else str(value)


def drop_duplicates(examples: Sequence[Example]) -> list[Example]:
    """Keep the first of exact duplicates (same text and target)."""
    seen: set[tuple[str, str]] = set()
    out = []
    for ex in examples:
        key = (ex.text, compact_json(ex.target))
        if key not in seen:
            seen.add(key)
            out.append(ex)
    return out


# --------------------------------------------------------------------------------------------
# Splits


def stratified_split(
    examples: Sequence[Example],
    key: Any,
    fractions: dict[SplitName, float],
    seed: int,
) -> dict[SplitName, list[Example]]:
    """Split by label so each split has each label in proportion; deterministic in `seed`.

    `key(example)` is the stratum (the label, or the first label of a multi-label example).
    Every stratum keeps at least one training example.
    """
    rng = random.Random(seed)
    by_key: dict[str, list[Example]] = defaultdict(list)
    for ex in examples:
        by_key[str(key(ex))].append(ex)
    out: dict[SplitName, list[Example]] = {"train": [], "validation": [], "test": []}
    for stratum in sorted(by_key):
        group = list(by_key[stratum])
        rng.shuffle(group)
        n = len(group)
        n_test = round(n * fractions.get("test", 0.0)) if n > 2 else 0
        n_val = round(n * fractions.get("validation", 0.0)) if n > 2 else 0
        if n_test + n_val >= n:
            n_test, n_val = max(0, n - 1 - n_val), min(n_val, n - 1)
        out["test"].extend(group[:n_test])
        out["validation"].extend(group[n_test : n_test + n_val])
        out["train"].extend(group[n_test + n_val :])
    for split in out.values():
        rng.shuffle(split)
    return out


def cap_per_label(examples: Sequence[Example], key: Any, cap: int, seed: int) -> list[Example]:
    """At most `cap` examples per stratum, chosen with `seed`, order kept."""
    rng = random.Random(seed)
    indices_by_key: dict[str, list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        indices_by_key[str(key(ex))].append(i)
    keep: set[int] = set()
    for stratum in sorted(indices_by_key):
        indices = indices_by_key[stratum]
        keep.update(rng.sample(indices, min(cap, len(indices))))
    return [ex for i, ex in enumerate(examples) if i in keep]


def dataset_digest(splits: dict[SplitName, list[Example]]) -> str:
    """sha256 over the examples of every split (text and target, in order)."""
    digest = hashlib.sha256()
    for split in SPLITS:
        for ex in splits.get(split, []):
            digest.update(f"{split}\0{ex.text}\0{compact_json(ex.target)}\n".encode())
    return "sha256:" + digest.hexdigest()


# --------------------------------------------------------------------------------------------
# Putting it together


@dataclass(frozen=True)
class PreparedData:
    """Validated splits and the task spec built from them."""

    splits: dict[SplitName, list[Example]]
    spec: TaskSpec
    report: ValidationReport
    digest: str


def prepare_data(recipe: Recipe, *, strict: bool = True) -> PreparedData:
    """Read, split, validate and frame the recipe's data.

    With `strict`, raises DataError carrying the validation report when it has errors.
    Exact duplicates are dropped (reported as warnings).
    """
    data, task = recipe.data, recipe.task
    train_all = read_examples(recipe.resolve_all(data.train), data, task)
    given: dict[SplitName, list[Example]] = {"train": train_all}
    if data.validation:
        given["validation"] = read_examples(recipe.resolve_all(data.validation), data, task)
    if data.test:
        given["test"] = read_examples(recipe.resolve_all(data.test), data, task)
    labels = resolve_labels(recipe, [ex for exs in given.values() for ex in exs])
    slots = slot_names(task, train_all)
    schema = build_output_schema(task, labels, slots)
    given = {
        split: [Example(ex.text, order_like_schema(ex.target, schema), ex.source) for ex in exs]
        for split, exs in given.items()
    }
    subset = data.split.labels_subset
    if subset is not None:
        keep = set(subset)
        labels = [label for label in labels if label in keep]
        given = {
            split: [ex for ex in exs if set(labels_of(ex, task)) <= keep and labels_of(ex, task)]
            for split, exs in given.items()
        }

    def stratum(ex: Example) -> str:
        found = labels_of(ex, task)
        return found[0] if found else ""

    # Defects within the files (conflicts, duplicates) are checked before splitting: a text
    # given twice would otherwise land in two splits and read as leakage.
    pool_spec = build_task_spec(task, labels, slots)
    pool_report = validate_splits(
        given, pool_spec, max_chars=data.max_chars, near_duplicates=data.near_duplicate_policy
    )
    given = {split: drop_duplicates(exs) for split, exs in given.items()}
    if data.conflict_policy == "drop" and "conflicting_labels" in pool_report.codes():
        given, pool_report = _drop_conflicts(given, pool_report)
    fractions: dict[SplitName, float] = {}
    if "validation" not in given:
        fractions["validation"] = data.split.validation_fraction
    if "test" not in given:
        fractions["test"] = data.split.test_fraction
    cut = stratified_split(given["train"], stratum, fractions, data.split.seed)
    splits: dict[SplitName, list[Example]] = {
        "train": cut["train"],
        "validation": given.get("validation", cut["validation"]),
        "test": given.get("test", cut["test"]),
    }
    caps = {
        "train": data.split.train_per_label,
        "validation": data.split.validation_per_label,
        "test": data.split.test_per_label,
    }
    for split, cap in caps.items():
        if cap is not None:
            splits[split] = cap_per_label(splits[split], stratum, cap, data.split.seed)  # type: ignore[index]
    distribution = reference_distribution(splits["train"], task, labels)
    spec = build_task_spec(task, labels, slots, distribution)
    split_report = validate_splits(
        splits, spec, max_chars=data.max_chars, near_duplicates=data.near_duplicate_policy
    )
    known = pool_report.codes()
    report = split_report.model_copy(
        update={
            "issues": pool_report.issues + [i for i in split_report.issues if i.code not in known]
        }
    )
    if data.leakage_policy == "drop" and "leakage" in report.codes():
        splits, report = _drop_leaks(splits, report)
    if strict and not report.ok:
        raise DataError("the data failed validation:\n" + report.format())
    splits = {split: drop_duplicates(exs) for split, exs in splits.items()}
    return PreparedData(splits=splits, spec=spec, report=report, digest=dataset_digest(splits))


def _drop_conflicts(
    given: dict[SplitName, list[Example]], report: ValidationReport
) -> tuple[dict[SplitName, list[Example]], ValidationReport]:
    """Remove every example whose text appears with different targets; report as warning."""
    targets: dict[str, set[str]] = defaultdict(set)
    for exs in given.values():
        for ex in exs:
            targets[ex.text].add(compact_json(ex.target))
    bad = {text for text, found in targets.items() if len(found) > 1}
    kept = {split: [ex for ex in exs if ex.text not in bad] for split, exs in given.items()}
    return kept, _downgraded(report, "conflicting_labels", f"{len(bad)} texts dropped")


def _drop_leaks(
    splits: dict[SplitName, list[Example]], report: ValidationReport
) -> tuple[dict[SplitName, list[Example]], ValidationReport]:
    """Remove from validation and test every text an earlier split holds (train, then
    validation): the training copy stays. The leakage is reported as a warning."""
    seen: set[str] = set()
    kept: dict[SplitName, list[Example]] = {}
    for split in ("train", "validation", "test"):
        exs = splits[split]
        kept[split] = exs if split == "train" else [ex for ex in exs if ex.text not in seen]
        seen.update(ex.text for ex in exs)
    dropped = sum(len(splits[split]) - len(kept[split]) for split in kept)
    report = _downgraded(report, "leakage", f"{dropped} held-out texts dropped")
    return kept, report.model_copy(
        update={"counts": {split: len(exs) for split, exs in kept.items()}}
    )


def _downgraded(report: ValidationReport, code: str, note: str) -> ValidationReport:
    """`report` with its `code` issue made a warning, `note` added to its message."""
    issues = [
        i.model_copy(update={"severity": "warning", "message": f"{i.message} ({note})"})
        if i.code == code
        else i
        for i in report.issues
    ]
    return report.model_copy(update={"issues": issues})


def load_jsonl_examples(path: Path) -> list[Example]:
    """Read examples written by `write_jsonl_examples` (text + target per line)."""
    out = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if line.strip():
            obj = json.loads(line)
            out.append(
                Example(text=obj["text"], target=obj["target"], source=f"{path.name}:{i + 1}")
            )
    return out


def write_jsonl_examples(path: Path, examples: Sequence[Example]) -> None:
    """Write examples as JSONL (`{"text": ..., "target": {...}}`), e.g. the held-out test set."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for ex in examples:
            fh.write(json.dumps({"text": ex.text, "target": ex.target}, ensure_ascii=False) + "\n")

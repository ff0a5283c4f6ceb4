"""Evaluation through the serving engine: vLLM, the same prompt framing, the same answers.
Scores the adapter beside the base model zero-shot and applies the regression gate. Writes
`report.json`, `report.md`, `confusion.csv` and `confusion.png`.

A single-label classification task (`adapters.label_trie.classification_field`) is scored:
each label's probability is read from the model's next-token log-probabilities over the trie
of the labels' answers (`LabelSearch`, as the server computes it), the answer is the most
probable label's, and its probability is the example's confidence (calibration error in the
report). With a validation split, the temperature of those probabilities is fitted on it first
(`training.calibration`). Other tasks (NLU++) are decoded greedily under the same JSON
constraint as the server's. A multi-label task (`adapters.label_sets`: NLU++ intents) also has
its label probabilities read, as the server reads them beside its answers: with a validation
split, their temperature is fitted on it and their calibration error reported, label by label.

vLLM spawns its engine process: call `evaluate` from a function run under
`if __name__ == "__main__":` (or a pytest fixture), never at import time.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from adapters.cpu_compile_cache import export_cpu_compile_cache
from adapters.cpu_dtype import engine_dtype
from adapters.cpu_reserved_cores import export_reserved_cores
from adapters.document_budget import BudgetError, document_budget
from adapters.json_grammar import structured_outputs_kwargs
from adapters.label_sets import LabelSetGrammar, LabelSetSearch, RoundSearch, label_set_field
from adapters.label_trie import (
    LabelPrefix,
    LabelSearch,
    LabelTrie,
    classification_field,
    label_answer,
)
from adapters.manifest import MANIFEST_FILE, AdapterManifest, TaskSpec
from training.calibration import (
    SetExample,
    expected_calibration_error,
    fit_set_temperature,
    fit_temperature,
    label_set_ece,
    predicted_distribution,
    run_label_searches,
    thresholded_micro_f1,
)
from training.data import Example
from training.framing import prompt_ids
from training.metrics import GateResult, Scores, regression_gate, score
from training.recipe import GateConfig

logger = logging.getLogger(__name__)
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
EVAL_CONTEXT = 2048
"""The evaluation engine's context: the server's default `max_model_len`, so that what serving
fits (prompt plus the schema's token budget), evaluation fits."""


class EvalError(RuntimeError):
    """Evaluation cannot run: missing manifest, schema, or test data."""


class ModelRun(BaseModel):
    """One model's outputs and scores on the test set."""

    model: str
    scores: Scores
    wall_s: float
    outputs: list[str]
    confidences: list[float] | None = Field(
        default=None, description="Scored labels: the answered label's probability, per example."
    )
    ece: float | None = Field(default=None, description="Expected calibration error (15 bins).")
    temperature: float | None = Field(default=None, description="Of the label probabilities.")
    forward_passes: int | None = Field(
        default=None, description="Scored labels: the branching points the answers were read from."
    )


class FittedTemperature(BaseModel):
    """A temperature fitted on the validation split, and the calibration error (15 bins) at
    temperature 1 and at the fitted one on both splits."""

    temperature: float
    validation_examples: int
    val_ece_uncalibrated: float
    val_ece_calibrated: float
    test_ece_uncalibrated: float
    test_ece_calibrated: float


class CalibrationReport(FittedTemperature):
    """A classification task's: fitted by the log-likelihood of the true labels."""

    validation_passes: int = Field(description="Forward passes: every branching point, each.")
    fit_wall_s: float = Field(description="Scoring the validation split and fitting.")
    test_accuracy_uncalibrated: float
    uncalibrated_wall_s: float
    uncalibrated_passes: int
    predicted_distribution: dict[str, float] = Field(
        description="Calibrated predictions' label frequencies on the test split, smoothed."
    )
    mean_confidence: float = Field(description="Calibrated, on the test split.")


class SetCalibrationReport(FittedTemperature):
    """A multi-label task's label probabilities (each label's probability of being in the
    answer's set): fitted by the binary log-loss of every label; the calibration error is over
    every (text, label) pair."""

    test_examples: int = Field(description="Scored: the first `eval.label_set_examples`.")
    forward_passes: int = Field(description="Validation and test together.")
    wall_s: float = Field(description="Reading the probabilities and fitting.")
    test_micro_f1_thresholded: float = Field(
        description="The labels of calibrated probability >= 1/2 as the set, against the "
        "references, on the scored test texts."
    )


class EvalReport(BaseModel):
    """The adapter's scores, the base model's zero-shot scores, and the gate's verdict."""

    adapter: str
    test_examples: int
    adapter_run: ModelRun
    base_run: ModelRun | None
    gate: GateResult
    previous: Scores | None = None
    calibration: CalibrationReport | None = None
    set_calibration: SetCalibrationReport | None = None

    @property
    def passed(self) -> bool:
        return self.gate.passed


class Engine:
    """A `vllm.LLM` configured like the server (its default dtype, LoRA rank <= 16, `outlines`)."""

    def __init__(
        self, base_dir: Path, *, max_lora_rank: int = 16, backend: str = "outlines", seed: int = 0
    ) -> None:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        # vLLM's default is 5 s of wall time: on a loaded machine the 77-label BANKING77 schema
        # (3.5 CPU s) times out. The server gives its engine 60 s (its setting
        # `engine_schema_compile_timeout_s`); evaluation must not refuse what serving accepts.
        os.environ.setdefault("VLLM_REGEX_COMPILATION_TIMEOUT_S", "60")
        from transformers import AutoTokenizer
        from vllm import LLM
        from vllm.platforms import current_platform

        export_cpu_compile_cache(on_cpu=current_platform.is_cpu())
        export_reserved_cores(None)
        self.base_dir = base_dir
        self.backend = backend
        self.tokenizer = AutoTokenizer.from_pretrained(base_dir)
        self.llm = LLM(
            model=str(base_dir),
            enable_lora=True,
            max_lora_rank=max_lora_rank,
            max_loras=2,
            dtype=engine_dtype("auto", on_cpu=current_platform.is_cpu()),
            structured_outputs_config={"backend": backend},
            max_model_len=EVAL_CONTEXT,
            seed=seed,
        )
        self._next_lora_id = 1

    def generate(
        self,
        spec: TaskSpec,
        texts: Sequence[str],
        *,
        adapter_dir: Path | None,
        max_tokens: int,
    ) -> list[str]:
        """Greedy, schema-constrained answers for `texts` (adapter or base model)."""
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import SamplingParams, StructuredOutputsParams

        params = SamplingParams(
            temperature=0.0,
            max_tokens=max_tokens,
            structured_outputs=StructuredOutputsParams(
                **structured_outputs_kwargs(spec.output_schema, self.backend)
            )
            if spec.output_schema
            else None,
        )
        prompts = [
            TokensPrompt(prompt_token_ids=prompt_ids(self.tokenizer, spec, t)) for t in texts
        ]
        results = self.llm.generate(
            prompts, params, lora_request=self._lora(adapter_dir), use_tqdm=False
        )
        return [r.outputs[0].text for r in results]

    def label_searches(
        self,
        spec: TaskSpec,
        texts: Sequence[str],
        searches: Sequence[RoundSearch],
        *,
        adapter_dir: Path | None,
        full: bool = False,
    ) -> int:
        """Run `searches` (one per text) to the end, or expand every branching point of
        `LabelSearch`es (`full`).
        Each round is one `generate` call with one request per pending (text, branching
        point): the prompt then the point's tokens, one token, the log-probabilities of the
        point's children. Returns the number of forward passes."""
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import SamplingParams

        prompts = [prompt_ids(self.tokenizer, spec, t) for t in texts]
        lora = self._lora(adapter_dir)

        def forward(batch: Sequence[tuple[int, LabelPrefix]]) -> list[dict[int, float]]:
            children = [searches[i].children(node) for i, node in batch]
            results = self.llm.generate(
                [TokensPrompt(prompt_token_ids=[*prompts[i], *node]) for i, node in batch],
                [
                    SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=list(ids))
                    for ids in children
                ],
                lora_request=lora,
                use_tqdm=False,
            )
            return [
                _children_logprobs(r.outputs[0].logprobs, ids)
                for r, ids in zip(results, children, strict=True)
            ]

        return run_label_searches(searches, forward, full=full)

    def _lora(self, adapter_dir: Path | None) -> Any:
        """A fresh LoRARequest for `adapter_dir` (None: the base model). A new id per call, so
        an adapter folder rewritten between calls is loaded again."""
        from vllm.lora.request import LoRARequest

        if adapter_dir is None:
            return None
        lora = LoRARequest(f"eval-{self._next_lora_id}", self._next_lora_id, str(adapter_dir))
        self._next_lora_id += 1
        return lora

    def close(self) -> None:
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        del self.llm
        cleanup_dist_env_and_memory()


def _children_logprobs(logprobs: Any, ids: Sequence[int]) -> dict[int, float]:
    """The log-probabilities vLLM reported for `ids` at the one generated position."""
    position: Mapping[int, Any] = logprobs[0] if logprobs else {}
    return {i: position[i].logprob for i in ids if i in position}


def _scored(
    name: str, spec: TaskSpec, examples: Sequence[Example], outputs: list[str], wall: float
) -> ModelRun:
    labels = spec.labels or []
    field = spec.label_field or ""
    single = bool(spec.output_schema) and (
        (spec.output_schema or {}).get("properties", {}).get(field, {}).get("type") == "string"
    )
    scores = score(
        outputs,
        [ex.target for ex in examples],
        schema=spec.output_schema,
        labels=labels,
        label_field=field,
        single_label=single,
    )
    return ModelRun(model=name, scores=scores, wall_s=wall, outputs=outputs)


def _generated_run(
    engine: Engine,
    name: str,
    spec: TaskSpec,
    examples: Sequence[Example],
    adapter_dir: Path | None,
    max_tokens: int,
) -> ModelRun:
    started = time.monotonic()
    outputs = engine.generate(
        spec, [ex.text for ex in examples], adapter_dir=adapter_dir, max_tokens=max_tokens
    )
    return _scored(name, spec, examples, outputs, time.monotonic() - started)


def _confidences(
    field: str, examples: Sequence[Example], searches: Sequence[LabelSearch]
) -> tuple[list[str], list[float], float]:
    """Each search's best label and its probability, and their calibration error."""
    best = [s.distribution().best for s in searches]
    correct = [label == ex.target.get(field) for (label, _), ex in zip(best, examples, strict=True)]
    confidences = [p for _, p in best]
    return (
        [label for label, _ in best],
        confidences,
        expected_calibration_error(confidences, correct),
    )


def _search_run(
    engine: Engine,
    name: str,
    spec: TaskSpec,
    field: str,
    searches: Sequence[LabelSearch],
    examples: Sequence[Example],
    adapter_dir: Path | None,
) -> ModelRun:
    """Score `examples` by running `searches` (one each) to the end."""
    started = time.monotonic()
    engine.label_searches(spec, [ex.text for ex in examples], searches, adapter_dir=adapter_dir)
    wall = time.monotonic() - started
    predicted, confidences, ece = _confidences(field, examples, searches)
    run = _scored(name, spec, examples, [label_answer(field, p) for p in predicted], wall)
    return run.model_copy(
        update={
            "confidences": confidences,
            "ece": ece,
            "temperature": searches[0].temperature if searches else None,
            "forward_passes": sum(len(s.known) for s in searches),
        }
    )


def _calibrated_run(
    engine: Engine,
    name: str,
    spec: TaskSpec,
    field: str,
    trie: LabelTrie,
    test: Sequence[Example],
    validation: Sequence[Example],
    adapter_dir: Path,
) -> tuple[ModelRun, CalibrationReport]:
    """Fit the temperature on `validation` (every branching point scored), then search `test`
    at temperature 1 and at the fitted one. The second search starts from the branching points
    the first expanded; its wall time and forward passes include the first's."""
    started = time.monotonic()
    fitted = [LabelSearch(trie) for _ in validation]
    texts = [ex.text for ex in validation]
    passes = engine.label_searches(spec, texts, fitted, adapter_dir=adapter_dir, full=True)
    truths = [trie.labels.index(str(ex.target.get(field))) for ex in validation]
    temperature = fit_temperature(trie, [(s.known, t) for s, t in zip(fitted, truths, strict=True)])
    fit_wall = time.monotonic() - started

    def val_ece(t: float) -> float:
        return _confidences(
            field, validation, [LabelSearch(trie, t, known=s.known) for s in fitted]
        )[2]

    raw_searches = [LabelSearch(trie) for _ in test]
    raw = _search_run(engine, name, spec, field, raw_searches, test, adapter_dir)
    searches = [LabelSearch(trie, temperature, known=dict(s.known)) for s in raw_searches]
    run = _search_run(engine, name, spec, field, searches, test, adapter_dir)
    run = run.model_copy(update={"wall_s": run.wall_s + raw.wall_s})
    assert raw.ece is not None and run.ece is not None and run.confidences is not None
    predicted = [s.distribution().best[0] for s in searches]
    report = CalibrationReport(
        temperature=temperature,
        validation_examples=len(validation),
        validation_passes=passes,
        fit_wall_s=fit_wall,
        val_ece_uncalibrated=val_ece(1.0),
        val_ece_calibrated=val_ece(temperature),
        test_ece_uncalibrated=raw.ece,
        test_ece_calibrated=run.ece,
        test_accuracy_uncalibrated=raw.scores.accuracy,
        uncalibrated_wall_s=raw.wall_s,
        uncalibrated_passes=raw.forward_passes or 0,
        predicted_distribution=predicted_distribution(predicted, trie.labels),
        mean_confidence=sum(run.confidences) / len(run.confidences),
    )
    return run, report


def _set_calibration(
    engine: Engine,
    manifest: AdapterManifest,
    adapter_dir: Path,
    test: Sequence[Example],
    validation: Sequence[Example],
    limit: int,
) -> SetCalibrationReport | None:
    """Read the label-set probabilities of `validation` and of the first `limit` test texts
    at temperature 1, fit the temperature on the validation ones, and measure both splits.
    None for a task that is not multi-label, or whose answers the tokenizer does not write as
    their pieces (the server does not score those either)."""
    spec = manifest.task
    set_field = label_set_field(spec.output_schema, spec.labels)
    if set_field is None or not validation or limit == 0:
        return None
    try:
        grammar = LabelSetGrammar.build(engine.tokenizer, set_field, spec.labels or [])
    except ValueError as exc:
        logger.warning("label-set probabilities not calibrated: %s", exc)
        return None
    started = time.monotonic()
    scored = [*validation, *test[:limit]]
    searches = [LabelSetSearch(grammar) for _ in scored]
    passes = engine.label_searches(
        spec, [ex.text for ex in scored], searches, adapter_dir=adapter_dir
    )
    examples: list[SetExample] = [
        (s.known, frozenset(str(label) for label in ex.target.get(set_field.name) or []))
        for s, ex in zip(searches, scored, strict=True)
    ]
    fitting, testing = examples[: len(validation)], examples[len(validation) :]
    temperature = fit_set_temperature(grammar, fitting)
    return SetCalibrationReport(
        temperature=temperature,
        validation_examples=len(fitting),
        test_examples=len(testing),
        forward_passes=passes,
        wall_s=time.monotonic() - started,
        val_ece_uncalibrated=label_set_ece(grammar, fitting, 1.0),
        val_ece_calibrated=label_set_ece(grammar, fitting, temperature),
        test_ece_uncalibrated=label_set_ece(grammar, testing, 1.0),
        test_ece_calibrated=label_set_ece(grammar, testing, temperature),
        test_micro_f1_thresholded=thresholded_micro_f1(grammar, testing, temperature),
    )


def schema_max_tokens(spec: TaskSpec) -> int:
    """The max_tokens the server gives a request that leaves it unset: the token budget of the
    longest document the task's output schema allows, so that no valid answer is cut."""
    if not spec.output_schema:
        raise EvalError("the task has no output schema: set eval.max_tokens")
    try:
        budget = document_budget(spec.output_schema).max_tokens
    except BudgetError as exc:
        raise EvalError(f"the output schema cannot be served: {exc.message}") from exc
    if budget is None:
        raise EvalError(
            "the output schema allows documents of any length: bound it (maxLength, maxItems) "
            "or set eval.max_tokens"
        )
    return budget


def read_manifest(adapter_dir: Path) -> AdapterManifest:
    path = adapter_dir / MANIFEST_FILE
    if not path.is_file():
        raise EvalError(f"{path} is missing: evaluate a folder written by `train`")
    return AdapterManifest.model_validate_json(path.read_text())


BASE_RUN = "base (zero-shot)"


def _runs(
    engine: Engine,
    manifest: AdapterManifest,
    adapter_dir: Path,
    test: Sequence[Example],
    validation: Sequence[Example],
    compare_base: bool,
    max_tokens: int,
) -> tuple[ModelRun, ModelRun | None, CalibrationReport | None]:
    """The adapter's run, the base model's, and the calibration (fitted when `validation`)."""
    spec = manifest.task
    field = classification_field(spec.output_schema, spec.labels)
    if field is None:
        adapter_run = _generated_run(engine, manifest.name, spec, test, adapter_dir, max_tokens)
        base_run = (
            _generated_run(engine, BASE_RUN, spec, test, None, max_tokens) if compare_base else None
        )
        return adapter_run, base_run, None
    try:
        trie = LabelTrie.build(engine.tokenizer, field, spec.labels or [])
    except ValueError as exc:
        raise EvalError(f"the task's labels cannot be scored: {exc}") from exc
    calibration = None
    if validation:
        adapter_run, calibration = _calibrated_run(
            engine, manifest.name, spec, field, trie, test, validation, adapter_dir
        )
    else:
        searches = [LabelSearch(trie, spec.label_temperature) for _ in test]
        adapter_run = _search_run(engine, manifest.name, spec, field, searches, test, adapter_dir)
    base_run = None
    if compare_base:
        searches = [LabelSearch(trie) for _ in test]
        base_run = _search_run(engine, BASE_RUN, spec, field, searches, test, None)
    return adapter_run, base_run, calibration


def evaluate(
    adapter_dir: Path,
    test_data: Sequence[Example],
    *,
    base_dir: Path,
    gate: GateConfig | None = None,
    previous_report: Path | None = None,
    compare_base: bool = True,
    max_tokens: int | None = None,
    engine: Engine | None = None,
    write: bool = True,
    validation: Sequence[Example] | None = None,
    label_set_examples: int = 200,
) -> EvalReport:
    """Score the adapter in `adapter_dir` (with its `hotswap.json`) on `test_data`.

    `previous_report` is the `report.json` of an earlier adapter on the same test set; the
    gate compares against it. An `engine` may be shared between calls (tests, benchmarks);
    otherwise one is started and stopped here. Writes the reports into `adapter_dir`.
    For a classification task, `validation` (examples the adapter was not trained on) is what
    the temperature of its label probabilities is fitted on (`report.calibration`); without
    it the manifest's calibration temperature, else 1, is used. A multi-label task's label
    probabilities are calibrated on `validation` and measured on the first
    `label_set_examples` test texts (`report.set_calibration`; 0: not read).
    """
    manifest = read_manifest(adapter_dir)
    spec = manifest.task
    if not test_data:
        raise EvalError("the test set is empty")
    max_tokens = max_tokens or schema_max_tokens(spec)
    gate = gate or GateConfig()
    own = engine is None
    engine = engine or Engine(base_dir)
    try:
        adapter_run, base_run, calibration = _runs(
            engine, manifest, adapter_dir, test_data, validation or [], compare_base, max_tokens
        )
        set_calibration = _set_calibration(
            engine, manifest, adapter_dir, test_data, validation or [], label_set_examples
        )
    finally:
        if own:
            engine.close()
    previous = None
    if previous_report is not None:
        previous = EvalReport.model_validate_json(previous_report.read_text()).adapter_run.scores
    verdict = regression_gate(
        adapter_run.scores,
        previous,
        metric=gate.metric,
        min_validity=gate.min_validity,
        min_metric=gate.min_metric,
        max_metric_drop=gate.max_metric_drop,
        max_class_drop=gate.max_class_drop,
    )
    report = EvalReport(
        adapter=manifest.name,
        test_examples=len(test_data),
        adapter_run=adapter_run,
        base_run=base_run,
        gate=verdict,
        previous=previous,
        calibration=calibration,
        set_calibration=set_calibration,
    )
    if write:
        write_report(report, adapter_dir)
    return report


def headline_metrics(report: EvalReport) -> dict[str, float]:
    """The numbers recorded in the manifest's `training.metrics`."""
    s = report.adapter_run.scores
    out = {
        "test_validity": s.validity,
        "test_accuracy": s.accuracy,
        "test_macro_f1": s.macro_f1,
        "test_micro_f1": s.micro_f1,
    }
    if report.base_run is not None:
        out["base_test_accuracy"] = report.base_run.scores.accuracy
        out["base_test_macro_f1"] = report.base_run.scores.macro_f1
    # Only what was measured: no validation split, no calibration figures. A multi-label
    # task's ECE is over (text, label) pairs.
    c: FittedTemperature | None = report.calibration or report.set_calibration
    if c is not None:
        out |= {
            "calibration_temperature": c.temperature,
            "val_ece_uncalibrated": c.val_ece_uncalibrated,
            "val_ece_calibrated": c.val_ece_calibrated,
            "test_ece_uncalibrated": c.test_ece_uncalibrated,
            "test_ece_calibrated": c.test_ece_calibrated,
        }
    if report.set_calibration is not None:
        out["test_micro_f1_thresholded"] = report.set_calibration.test_micro_f1_thresholded
    return out


def write_report(report: EvalReport, folder: Path) -> None:
    """report.json, report.md and (single-label) confusion.csv / confusion.png in `folder`."""
    (folder / REPORT_JSON).write_text(report.model_dump_json(indent=1) + "\n")
    (folder / REPORT_MD).write_text(render_markdown(report))
    scores = report.adapter_run.scores
    if scores.confusion is not None:
        columns = [*scores.labels, "<invalid>"]
        with (folder / "confusion.csv").open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["true \\ predicted", *columns])
            for label, row in zip(scores.labels, scores.confusion, strict=True):
                writer.writerow([label, *row])
        plot_confusion(scores.confusion, scores.labels, columns, folder / "confusion.png")


def plot_confusion(
    matrix: list[list[int]], rows: list[str], columns: list[str], path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = max(4.0, 0.18 * len(columns) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    small = len(columns) <= 20
    ax.set_xticks(range(len(columns)), columns if small else [""] * len(columns), rotation=90)
    ax.set_yticks(range(len(rows)), rows if small else [""] * len(rows))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def render_markdown(report: EvalReport) -> str:
    """A short human-readable report, adapter beside base."""
    runs = [report.adapter_run] + ([report.base_run] if report.base_run else [])
    lines = [
        f"# Evaluation of `{report.adapter}`",
        "",
        f"Test examples: {report.test_examples}. Gate: "
        + ("**passed**" if report.gate.passed else "**FAILED**"),
        "",
    ]
    lines += [f"- {reason}" for reason in report.gate.reasons]
    lines += [
        "",
        "| model | validity | accuracy | macro-F1 | micro-F1 | ECE | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        s = run.scores
        ece = "-" if run.ece is None else f"{run.ece:.3f}"
        lines.append(
            f"| {run.model} | {s.validity:.3f} | {s.accuracy:.3f} | {s.macro_f1:.3f} | "
            f"{s.micro_f1:.3f} | {ece} | {run.wall_s:.1f} |"
        )
    lines += _calibration_lines(report) + _set_calibration_lines(report.set_calibration)
    s = report.adapter_run.scores
    if s.field_exact_match:
        lines += ["", "Field-level exact match: " + json.dumps(s.field_exact_match)]
    lines += ["", "| label | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for label, c in s.per_class.items():
        lines.append(f"| {label} | {c.precision:.3f} | {c.recall:.3f} | {c.f1:.3f} | {c.support} |")
    return "\n".join(lines) + "\n"


def _calibration_lines(report: EvalReport) -> list[str]:
    """How the label probabilities were read: scored answers, temperature, calibration error."""
    run, c = report.adapter_run, report.calibration
    if run.confidences is None:
        return []
    lines = [
        "",
        f"Answers scored from label probabilities (ECE: expected calibration error, 15 bins; "
        f"mean confidence {sum(run.confidences) / len(run.confidences):.3f}; the adapter's "
        f"answers took {run.forward_passes} forward passes).",
    ]
    if c is None:
        return [*lines, f"Temperature {run.temperature:g} (not fitted in this evaluation)."]
    return [
        *lines,
        "",
        f"Temperature **{c.temperature:.3f}**, fitted on {c.validation_examples} validation "
        f"examples ({c.validation_passes} forward passes, {c.fit_wall_s:.1f} s).",
        *_ece_table(c),
        "",
        f"Test accuracy at temperature 1: {c.test_accuracy_uncalibrated:.3f} "
        f"({c.uncalibrated_passes} forward passes, {c.uncalibrated_wall_s:.1f} s).",
    ]


def _ece_table(c: FittedTemperature) -> list[str]:
    return [
        "",
        "| split | ECE at temperature 1 | ECE calibrated |",
        "|---|---|---|",
        f"| validation | {c.val_ece_uncalibrated:.3f} | {c.val_ece_calibrated:.3f} |",
        f"| test | {c.test_ece_uncalibrated:.3f} | {c.test_ece_calibrated:.3f} |",
    ]


def _set_calibration_lines(c: SetCalibrationReport | None) -> list[str]:
    if c is None:
        return []
    return [
        "",
        f"Label-set probabilities (each label's probability of being in the answer's set): "
        f"temperature **{c.temperature:.3f}**, fitted on {c.validation_examples} validation "
        f"examples; {c.test_examples} test texts scored ({c.forward_passes} forward passes, "
        f"{c.wall_s:.1f} s). ECE over every (text, label) pair, 15 bins:",
        *_ece_table(c),
        "",
        f"Micro-F1 of the labels with calibrated probability >= 0.5, on those test texts: "
        f"{c.test_micro_f1_thresholded:.3f}.",
    ]


def load_report(path: Path) -> EvalReport:
    return EvalReport.model_validate_json(path.read_text())


def report_summary(report: EvalReport) -> dict[str, Any]:
    """Compact dict for logs and benchmarks."""
    return {
        "adapter": headline_metrics(report),
        "passed": report.gate.passed,
        "reasons": report.gate.reasons,
    }

"""Evaluation through the serving engine: vLLM, the same constrained JSON decoding, the same
prompt framing, greedy. Scores the adapter beside the base model zero-shot and applies the
regression gate. Writes `report.json`, `report.md`, `confusion.csv` and `confusion.png`.

vLLM spawns its engine process: call `evaluate` from a function run under
`if __name__ == "__main__":` (or a pytest fixture), never at import time.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from adapters.document_budget import BudgetError, document_budget
from adapters.json_grammar import structured_outputs_kwargs
from adapters.manifest import MANIFEST_FILE, AdapterManifest, TaskSpec
from training.data import Example
from training.framing import prompt_ids
from training.metrics import GateResult, Scores, regression_gate, score
from training.recipe import GateConfig

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


class EvalReport(BaseModel):
    """The adapter's scores, the base model's zero-shot scores, and the gate's verdict."""

    adapter: str
    test_examples: int
    adapter_run: ModelRun
    base_run: ModelRun | None
    gate: GateResult
    previous: Scores | None = None

    @property
    def passed(self) -> bool:
        return self.gate.passed


class Engine:
    """A `vllm.LLM` configured like the server (bf16, LoRA rank <= 16, `outlines`)."""

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

        self.base_dir = base_dir
        self.backend = backend
        self.tokenizer = AutoTokenizer.from_pretrained(base_dir)
        self.llm = LLM(
            model=str(base_dir),
            enable_lora=True,
            max_lora_rank=max_lora_rank,
            max_loras=2,
            dtype="bfloat16",
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
        from vllm.lora.request import LoRARequest
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
        lora = None
        if adapter_dir is not None:
            lora = LoRARequest(f"eval-{self._next_lora_id}", self._next_lora_id, str(adapter_dir))
            self._next_lora_id += 1
        prompts = [
            TokensPrompt(prompt_token_ids=prompt_ids(self.tokenizer, spec, t)) for t in texts
        ]
        results = self.llm.generate(prompts, params, lora_request=lora, use_tqdm=False)
        return [r.outputs[0].text for r in results]

    def close(self) -> None:
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        del self.llm
        cleanup_dist_env_and_memory()


def _run(
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
    wall = time.monotonic() - started
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
) -> EvalReport:
    """Score the adapter in `adapter_dir` (with its `hotswap.json`) on `test_data`.

    `previous_report` is the `report.json` of an earlier adapter on the same test set; the
    gate compares against it. An `engine` may be shared between calls (tests, benchmarks);
    otherwise one is started and stopped here. Writes the reports into `adapter_dir`.
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
        adapter_run = _run(engine, manifest.name, spec, test_data, adapter_dir, max_tokens)
        base_run = (
            _run(engine, "base (zero-shot)", spec, test_data, None, max_tokens)
            if compare_base
            else None
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
        "| model | validity | accuracy | macro-F1 | micro-F1 | wall s |",
        "|---|---|---|---|---|---|",
    ]
    for run in runs:
        s = run.scores
        lines.append(
            f"| {run.model} | {s.validity:.3f} | {s.accuracy:.3f} | {s.macro_f1:.3f} | "
            f"{s.micro_f1:.3f} | {run.wall_s:.1f} |"
        )
    s = report.adapter_run.scores
    if s.field_exact_match:
        lines += ["", "Field-level exact match: " + json.dumps(s.field_exact_match)]
    lines += ["", "| label | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for label, c in s.per_class.items():
        lines.append(f"| {label} | {c.precision:.3f} | {c.recall:.3f} | {c.f1:.3f} | {c.support} |")
    return "\n".join(lines) + "\n"


def load_report(path: Path) -> EvalReport:
    return EvalReport.model_validate_json(path.read_text())


def report_summary(report: EvalReport) -> dict[str, Any]:
    """Compact dict for logs and benchmarks."""
    return {
        "adapter": headline_metrics(report),
        "passed": report.gate.passed,
        "reasons": report.gate.reasons,
    }

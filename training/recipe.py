"""A training recipe: every knob of one run, with its default, read from one YAML file.

Read it top to bottom like nanoGPT's `train.py`: data, task, LoRA, optimisation, evaluation
gate. Relative paths are resolved against the recipe file's folder, then the repository root.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from adapters.manifest import INPUT_PLACEHOLDER, AdapterName

REPO_ROOT = Path(__file__).resolve().parent.parent

DataFormat = Literal["auto", "csv", "jsonl", "json", "chat", "nlupp"]
TaskKind = Literal["classification", "multilabel", "extraction"]


class RecipeError(ValueError):
    """The recipe file cannot be read or names something that does not exist."""


class SplitConfig(BaseModel):
    """How to cut validation and test sets out of `train` when they are not given."""

    model_config = ConfigDict(extra="forbid")

    validation_fraction: float = Field(default=0.1, ge=0.0, lt=1.0)
    test_fraction: float = Field(default=0.2, ge=0.0, lt=1.0)
    seed: int = 0
    train_per_label: int | None = Field(
        default=None, gt=0, description="Keep at most this many training examples per label."
    )
    validation_per_label: int | None = Field(
        default=None, gt=0, description="Cap the validation split per label (faster eval)."
    )
    test_per_label: int | None = Field(
        default=None, gt=0, description="Cap the test split per label (faster evaluation)."
    )
    labels_subset: list[str] | None = Field(
        default=None, description="Train on these labels only (small experiments)."
    )


class DataConfig(BaseModel):
    """Where the labelled examples are and how to read them."""

    model_config = ConfigDict(extra="forbid")

    format: DataFormat = Field(
        default="auto",
        description="csv/jsonl (text + label/labels/target), chat ({'messages': [...]}), json "
        "(an array of records), nlupp (NLU++ folds); auto: by file suffix and first record.",
    )
    train: list[str] = Field(description="Files (globs allowed) with the training examples.")
    validation: list[str] | None = None
    test: list[str] | None = None
    text_field: str = "text"
    label_field: str | None = Field(
        default=None, description="Column holding the label; default: label, labels or category."
    )
    split: SplitConfig = Field(default_factory=SplitConfig)
    max_chars: int = Field(default=1000, gt=0, description="Longer texts are refused.")
    near_duplicate_policy: Literal["warn", "error"] = "warn"
    conflict_policy: Literal["error", "drop"] = Field(
        default="error", description="Same text, different targets: refuse, or drop them all."
    )
    leakage_policy: Literal["error", "drop"] = Field(
        default="error",
        description="The same text in two splits: refuse, or drop it from the held-out one "
        "(validation, then test; the training copy stays). Given folds can repeat a text.",
    )


class TaskConfig(BaseModel):
    """The task the adapter serves: becomes `adapters.manifest.TaskSpec`."""

    model_config = ConfigDict(extra="forbid")

    kind: TaskKind = "classification"
    output_field: str = Field(
        default="intent", description="Output property that carries the label(s)."
    )
    labels: list[str] | None = Field(
        default=None, description="Closed label set; default: labels_file, else from the data."
    )
    labels_file: str | None = Field(
        default=None, description="JSON list of labels, or object whose keys are labels."
    )
    labels_key: str | None = Field(
        default=None, description="Key in labels_file holding the labels (e.g. 'intents')."
    )
    output_schema: dict[str, Any] | None = Field(
        default=None, description="JSON Schema of the output; default: built from the labels."
    )
    max_labels: int = Field(
        default=8, gt=0, description="multilabel / extraction: most labels in one output."
    )
    slot_names: list[str] | None = Field(
        default=None, description="extraction: slot names (default: those seen in the data)."
    )
    slot_value_schema: dict[str, Any] = Field(
        default_factory=lambda: {"type": "string", "maxLength": 60},
        description="extraction: JSON Schema of one slot value. A `pattern` over a closed "
        "character class compiles far faster than `maxLength` (docs/training.md).",
    )
    system_message: str | None = Field(
        default="Classify the banking request.",
        description="Short: every token here is paid on every training step and request.",
    )
    input_template: str = INPUT_PLACEHOLDER


class LoraConfigModel(BaseModel):
    """The LoRA shape (PEFT `LoraConfig`); rank <= 16 is the server's default maximum."""

    model_config = ConfigDict(extra="forbid")

    r: int = Field(default=8, gt=0, le=64)
    alpha: float = 16.0
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"])
    layers_from: int | None = Field(
        default=None,
        ge=0,
        description="LoRA only on decoder layers >= this (backward stops there: faster); "
        "None: every layer.",
    )


class TrainConfig(BaseModel):
    """Optimisation knobs (transformers `TrainingArguments`)."""

    model_config = ConfigDict(extra="forbid")

    epochs: float = Field(default=3.0, gt=0)
    max_steps: int = Field(default=-1, description="Stop after this many steps (-1: epochs).")
    learning_rate: float = Field(default=2e-3, gt=0)
    batch_size: int = Field(default=16, gt=0)
    gradient_accumulation: int = Field(default=1, gt=0)
    warmup_ratio: float = Field(default=0.05, ge=0.0, lt=1.0)
    weight_decay: float = 0.0
    lr_scheduler: str = "linear"
    max_seq_len: int = Field(default=128, gt=8, description="Longer examples are truncated.")
    group_by_length: bool = Field(default=True, description="Batches of similar lengths.")
    answer_only_logits: bool = Field(
        default=True,
        description="Left-pad and compute the vocabulary projection on answer tokens only.",
    )
    bf16: bool = Field(default=True, description="bf16 autocast (faster on AVX-512 BF16 CPUs).")
    cache_frozen_layers: bool = Field(
        default=True,
        description="Run the layers below lora.layers_from once per example, not every step.",
    )
    share_prompt: bool = Field(
        default=True,
        description="Run the tokens every example opens with (chat header, system message) "
        "once per step, not once per row; needs answer_only_logits.",
    )
    label_choice_loss: bool = Field(
        default=True,
        description="Single-label classification: the loss only where the answer chooses "
        "between labels (the label trie's branching points, where serving reads the label's "
        "probability), not on the tokens the schema forces; other tasks learn every answer token.",
    )
    torch_threads: int = Field(default=2, gt=0)
    seed: int = 0
    eval_steps: int | None = Field(
        default=None, gt=0, description="Validate every N steps (default: once per epoch)."
    )
    early_stopping_patience: int | None = Field(
        default=2, description="Stop after N validations without a lower loss (None: never)."
    )
    restore_best: bool = Field(
        default=True,
        description="At the end, restore the weights of the lowest validation loss; False keeps "
        "the last weights (e.g. for a schedule that decays to zero).",
    )
    save_total_limit: int = Field(default=2, gt=0)
    logging_steps: int = Field(default=5, gt=0)


class GateConfig(BaseModel):
    """Regression gate: thresholds the new adapter must meet to pass."""

    model_config = ConfigDict(extra="forbid")

    min_validity: float = Field(default=1.0, ge=0.0, le=1.0)
    metric: str = Field(default="accuracy", description="accuracy, macro_f1 or micro_f1.")
    min_metric: float = Field(default=0.0, ge=0.0, le=1.0)
    max_metric_drop: float = Field(
        default=0.01, ge=0.0, description="Allowed drop of `metric` below the previous adapter."
    )
    max_class_drop: float = Field(
        default=0.10, ge=0.0, description="Allowed drop of any one label's F1 vs the previous."
    )


class EvalConfig(BaseModel):
    """Evaluation through the serving engine (vLLM, constrained JSON decoding)."""

    model_config = ConfigDict(extra="forbid")

    max_tokens: int | None = Field(
        default=None,
        gt=0,
        description="None: what the server runs a request without max_tokens with, the "
        "longest document the output schema allows (its token budget).",
    )
    max_examples: int | None = Field(default=None, gt=0, description="Cap the test set.")
    compare_base: bool = Field(default=True, description="Also score the base model zero-shot.")
    abstain_below: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Classification: the served adapter abstains when its calibrated "
        "confidence is below this (written into the manifest's calibration); None: never.",
    )
    label_set_examples: int = Field(
        default=200,
        ge=0,
        description="Multi-label: the test texts whose label-set probabilities are read and "
        "measured (tens of forward passes each); the validation split is read whole to fit "
        "their temperature. 0: not read, not calibrated.",
    )
    gate: GateConfig = Field(default_factory=GateConfig)


class Recipe(BaseModel):
    """One training run, from labelled data to a packaged adapter."""

    model_config = ConfigDict(extra="forbid")

    name: AdapterName
    description: str = ""
    base_model: str | None = Field(
        default=None,
        description="A short name (smollm2-135m, gemma3-270m: prepared under HOTSWAP_HOME) or "
        "an HF folder of the base; default: smollm2-135m (SmolLM2-135M-Instruct).",
    )
    data: DataConfig
    task: TaskConfig = Field(default_factory=TaskConfig)
    lora: LoraConfigModel = Field(default_factory=LoraConfigModel)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    source_dir: Path = Field(
        default=REPO_ROOT, exclude=True, description="Folder relative paths start from."
    )

    @model_validator(mode="after")
    def _check(self) -> Recipe:
        if INPUT_PLACEHOLDER not in self.task.input_template:
            raise ValueError(f"task.input_template must contain {INPUT_PLACEHOLDER}")
        return self

    def resolve(self, path: str) -> Path:
        """A recipe path: absolute, or relative to the recipe's folder, else the repo root."""
        candidate = Path(path).expanduser()
        if candidate.is_absolute():
            return candidate
        for root in (self.source_dir, REPO_ROOT):
            if (root / candidate).exists() or any(root.glob(path)):
                return Path(os.path.normpath(root / candidate))
        return Path(os.path.normpath(self.source_dir / candidate))

    def resolve_all(self, patterns: list[str]) -> list[Path]:
        """Expand globs; raises RecipeError naming a pattern that matches nothing."""
        files: list[Path] = []
        for pattern in patterns:
            resolved = self.resolve(pattern)
            if any(ch in pattern for ch in "*?["):
                anchor = Path(resolved.anchor)
                matches = sorted(anchor.glob(str(resolved.relative_to(anchor))))
            else:
                matches = [resolved] if resolved.exists() else []
            if not matches:
                raise RecipeError(f"data file {pattern!r} not found (looked for {resolved})")
            files.extend(matches)
        return files

    def hyperparameters(self) -> dict[str, Any]:
        """The knobs recorded in the manifest's training info."""
        return {
            "lora": self.lora.model_dump(),
            "train": self.train.model_dump(),
            "split": self.data.split.model_dump(),
        }


def load_recipe(path: Path, overrides: list[str] | None = None) -> Recipe:
    """Parse a recipe YAML file; raises RecipeError with the offending field.

    `overrides` are `dotted.key=YAML value` strings applied on top, e.g.
    `["train.epochs=2", "data.split.train_per_label=30"]`.
    """
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise RecipeError(f"cannot read recipe {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise RecipeError(f"recipe {path} must be a YAML mapping")
    for override in overrides or []:
        key, sep, value = override.partition("=")
        if not sep or not key:
            raise RecipeError(f"override {override!r} must look like section.key=value")
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise RecipeError(f"override {override!r}: {part!r} is not a section")
            node = child
        try:
            node[leaf] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise RecipeError(
                f"override {override!r}: its value is not YAML (quote strings with brackets "
                f"or commas): {exc}"
            ) from exc
    try:
        return Recipe.model_validate({**raw, "source_dir": path.resolve().parent})
    except ValidationError as exc:
        raise RecipeError(f"recipe {path} is invalid:\n{exc}") from exc

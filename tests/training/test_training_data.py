"""Data validation, splits, task spec, metrics and the regression gate (fast, no model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapters.manifest import TaskSpec
from training.data import (
    DataError,
    Example,
    build_task_spec,
    prepare_data,
    read_examples,
    reference_distribution,
    stratified_split,
    validate_splits,
)
from training.metrics import regression_gate, score
from training.recipe import REPO_ROOT, DataConfig, Recipe, RecipeError, TaskConfig, load_recipe

TASK = TaskConfig(labels=["a", "b"], system_message="Classify.")
SPEC = build_task_spec(TASK, ["a", "b"])


def ex(text: str, label: object, source: str = "") -> Example:
    return Example(text=text, target={"intent": label}, source=source)


def check(train: list[Example], **others: list[Example]) -> set[str]:
    splits = {"train": train, **others}
    return validate_splits(splits, SPEC, max_chars=50).codes()  # type: ignore[arg-type]


def test_clean_data_has_no_issues() -> None:
    report = validate_splits(
        {"train": [ex("hello", "a"), ex("bye", "b")], "test": [ex("hi there", "a")]},
        SPEC,
        max_chars=50,
    )
    assert report.ok and not report.issues
    assert report.counts == {"train": 2, "test": 1}


@pytest.mark.parametrize(
    ("examples", "code"),
    [
        ([ex("", "a")], "empty_text"),
        ([ex("   ", "a")], "empty_text"),
        ([ex("x" * 51, "a")], "too_long"),
        ([ex("hello", "a"), ex("hello", "a")], "duplicate"),
        ([ex("Hello!", "a"), ex("hello", "a")], "near_duplicate"),
        ([ex("hello", "a"), ex("hello", "b")], "conflicting_labels"),
        ([ex("hello", "zzz")], "unknown_label"),
        ([Example("hello", {"intent": "a", "extra": 1})], "schema"),
    ],
)
def test_each_defect_is_reported(examples: list[Example], code: str) -> None:
    report = validate_splits({"train": examples}, SPEC, max_chars=50)
    assert code in report.codes()
    issue = next(i for i in report.issues if i.code == code)
    assert issue.count >= 1 and issue.message and issue.where
    assert issue.code in report.format()


def test_severities() -> None:
    warn = validate_splits({"train": [ex("hi", "a"), ex("hi", "a")]}, SPEC, max_chars=50)
    assert warn.ok  # exact duplicates are dropped, a warning
    bad = validate_splits({"train": [ex("hi", "a"), ex("hi", "b")]}, SPEC, max_chars=50)
    assert not bad.ok and bad.errors()[0].code == "conflicting_labels"


def test_leakage_between_splits() -> None:
    assert "leakage" in check([ex("my card", "a")], test=[ex("my card", "a")])
    assert "near_leakage" in check([ex("my card", "a")], validation=[ex("My card?", "a")])
    assert not check([ex("my card", "a")], test=[ex("your card", "a")])


def test_stratified_split_is_seeded_and_keeps_every_label() -> None:
    examples = [ex(f"t{i}", "a" if i % 3 else "b") for i in range(60)]
    fractions = {"validation": 0.1, "test": 0.2}
    one = stratified_split(examples, lambda e: e.target["intent"], fractions, seed=1)  # type: ignore[arg-type]
    two = stratified_split(examples, lambda e: e.target["intent"], fractions, seed=1)  # type: ignore[arg-type]
    assert one == two
    assert sum(len(v) for v in one.values()) == 60
    for split in one.values():
        assert {e.target["intent"] for e in split} == {"a", "b"}
    assert not {e.text for e in one["train"]} & {e.text for e in one["test"]}


def test_reference_distribution_sums_to_one_and_enters_the_spec() -> None:
    dist = reference_distribution([ex("1", "a"), ex("2", "a"), ex("3", "b")], TASK, ["a", "b", "c"])
    assert dist["a"] == pytest.approx(2 / 3) and dist["c"] == 0.0
    spec = build_task_spec(TASK, ["a", "b", "c"], distribution=dist)
    assert isinstance(spec, TaskSpec) and spec.reference_distribution == dist
    assert spec.output_schema == {
        "type": "object",
        "properties": {"intent": {"type": "string", "enum": ["a", "b", "c"]}},
        "required": ["intent"],
        "additionalProperties": False,
    }


def test_input_formats(tmp_path: Path) -> None:
    csv_file = tmp_path / "d.csv"
    csv_file.write_text("text,label\nhello,a\n")
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text(
        json.dumps({"text": "yo", "labels": "a|b"})
        + "\n"
        + json.dumps({"text": "t", "target": {"intent": ["b"]}})
        + "\n"
    )
    chat = tmp_path / "c.jsonl"
    chat.write_text(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "Q: where is it"},
                    {"role": "assistant", "content": '{"intent":"a"}'},
                ]
            }
        )
        + "\n"
    )
    data = DataConfig(train=["x"])
    assert read_examples([csv_file], data, TASK) == [ex("hello", "a", "d.csv:2")]
    multi = TaskConfig(kind="multilabel")
    got = read_examples([jsonl], data, multi)
    assert [e.target for e in got] == [{"intent": ["a", "b"]}, {"intent": ["b"]}]
    framed = TaskConfig(input_template="Q: {input}")
    (chat_ex,) = read_examples([chat], DataConfig(train=["x"], format="chat"), framed)
    assert chat_ex.text == "where is it" and chat_ex.target == {"intent": "a"}


def test_unreadable_rows_say_where(tmp_path: Path) -> None:
    bad = tmp_path / "d.jsonl"
    bad.write_text('{"text": "a", "label": "x"}\nnot json\n')
    with pytest.raises(DataError, match=r"d\.jsonl:2"):
        read_examples([bad], DataConfig(train=["x"]), TASK)
    nolabel = tmp_path / "e.csv"
    nolabel.write_text("text,other\nhi,x\n")
    with pytest.raises(DataError, match="no label"):
        read_examples([nolabel], DataConfig(train=["x"]), TASK)


def test_prepare_refuses_bad_data_with_the_report(tmp_path: Path) -> None:
    rows = "text,label\n" + "".join(f"text {i},{'a' if i % 2 else 'b'}\n" for i in range(20))
    (tmp_path / "d.csv").write_text(rows + "text 1,b\n")
    recipe = Recipe(name="t", data=DataConfig(train=["d.csv"]), source_dir=tmp_path)
    with pytest.raises(DataError, match="conflicting_labels"):
        prepare_data(recipe)
    prepared = prepare_data(recipe, strict=False)
    assert "conflicting_labels" in prepared.report.codes()


def test_leaked_texts_are_refused_or_dropped_from_the_held_out_split(tmp_path: Path) -> None:
    """A test file repeating a training text: an error by default; with `leakage_policy:
    drop` the test copy goes, the training copy stays, and the report says so."""
    rows = "".join(f"text {i},{'a' if i % 2 else 'b'}\n" for i in range(20))
    (tmp_path / "train.csv").write_text("text,label\n" + rows)
    (tmp_path / "test.csv").write_text("text,label\ntext 3,a\nother 1,a\nother 2,b\n")
    data = DataConfig(train=["train.csv"], test=["test.csv"])
    recipe = Recipe(name="t", data=data, source_dir=tmp_path)
    with pytest.raises(DataError, match="leakage"):
        prepare_data(recipe)
    dropping = recipe.model_copy(
        update={"data": data.model_copy(update={"leakage_policy": "drop"})}
    )
    prepared = prepare_data(dropping)
    assert [ex.text for ex in prepared.splits["test"]] == ["other 1", "other 2"]
    assert "text 3" in {ex.text for ex in prepared.splits["train"]}
    (issue,) = [i for i in prepared.report.issues if i.code == "leakage"]
    assert issue.severity == "warning" and "1 held-out texts dropped" in issue.message
    assert prepared.report.counts["test"] == 2


def test_demo_recipe_prepares() -> None:
    recipe = load_recipe(REPO_ROOT / "training/recipes/demo.yaml")
    prepared = prepare_data(recipe)
    assert prepared.report.ok, prepared.report.format()
    spec = prepared.spec
    assert spec.labels and len(spec.labels) == 7 and spec.label_field == "intent"
    assert spec.reference_distribution is not None
    assert sum(spec.reference_distribution.values()) == pytest.approx(1.0)
    sizes = {k: len(v) for k, v in prepared.splits.items()}
    assert sizes["train"] > sizes["test"] > 0 and sizes["validation"] > 0
    assert prepared.digest == prepare_data(recipe).digest


SHARED = REPO_ROOT.parent / "shared" / "datasets"
needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"shared datasets not found at {SHARED}"
)


@needs_shared
@pytest.mark.parametrize("name", ["banking77", "banking77_all", "nlupp_banking"])
def test_shared_recipes_prepare(name: str) -> None:
    recipe = load_recipe(REPO_ROOT / f"training/recipes/{name}.yaml")
    prepared = prepare_data(recipe)
    assert prepared.report.ok, prepared.report.format()
    assert prepared.spec.labels and prepared.splits["test"]


def test_scores_and_gate() -> None:
    schema = SPEC.output_schema
    targets = [{"intent": "a"}, {"intent": "a"}, {"intent": "b"}, {"intent": "b"}]
    outputs = ['{"intent":"a"}', '{"intent":"b"}', '{"intent":"b"}', "{broken"]
    s = score(
        outputs, targets, schema=schema, labels=["a", "b"], label_field="intent", single_label=True
    )
    assert s.validity == 0.75 and s.accuracy == 0.5
    assert s.per_class["a"].precision == 1.0 and s.per_class["a"].recall == 0.5
    assert s.confusion == [[1, 1, 0], [0, 1, 1]]
    assert s.field_exact_match == {"intent": 0.5}
    perfect = score(
        [json.dumps(t, separators=(",", ":")) for t in targets],
        targets,
        schema=schema,
        labels=["a", "b"],
        label_field="intent",
        single_label=True,
    )
    kwargs = {
        "metric": "accuracy",
        "min_validity": 1.0,
        "min_metric": 0.6,
        "max_metric_drop": 0.05,
        "max_class_drop": 0.1,
    }
    assert regression_gate(perfect, None, **kwargs).passed  # type: ignore[arg-type]
    gate = regression_gate(s, perfect, **kwargs)  # type: ignore[arg-type]
    assert not gate.passed
    text = " ".join(gate.reasons)
    assert "validity" in text and "fell from 1.000 to 0.500" in text and "'a'" in text


def test_multilabel_scores() -> None:
    targets = [{"intents": ["x", "y"]}, {"intents": ["y"]}]
    outputs = ['{"intents":["y","x"]}', '{"intents":["x"]}']
    s = score(
        outputs, targets, schema=None, labels=["x", "y"], label_field="intents", single_label=False
    )
    assert s.accuracy == 0.5
    assert s.micro_f1 == pytest.approx(2 / 3)  # tp 2, fp 1, fn 1
    assert s.field_exact_match == {"intents": 0.5}


def test_recipe_overrides_and_errors(tmp_path: Path) -> None:
    path = REPO_ROOT / "training/recipes/demo.yaml"
    recipe = load_recipe(path, ["train.epochs=1", "data.split.train_per_label=3"])
    assert recipe.train.epochs == 1 and recipe.data.split.train_per_label == 3
    assert recipe.resolve_all(recipe.data.train) == [REPO_ROOT / "training/demo/intents.csv"]
    bad = tmp_path / "r.yaml"
    bad.write_text("name: x\ndata: {train: [a.csv]}\ntrain: {epochs: -1}\n")
    with pytest.raises(RecipeError, match="epochs"):
        load_recipe(bad)
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(bad, ["train.epochs=1"]).resolve_all(["missing.csv"])
    with pytest.raises(RecipeError, match="not YAML"):
        load_recipe(path, ["data.test=[a/fold[1-9].json]"])  # unquoted brackets
    quoted = load_recipe(path, ['data.test=["a/fold[1-9].json"]'])
    assert quoted.data.test == ["a/fold[1-9].json"]

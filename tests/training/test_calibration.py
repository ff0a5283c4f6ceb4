"""Label probabilities on held-out data without an engine: the search rounds, temperature
scaling, calibration error, the drift reference, and evaluation's scored path with a fake
engine whose log-probabilities come from a known over-confident model."""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from adapters.label_sets import LabelSetGrammar, RoundSearch, label_set_field
from adapters.label_trie import LabelPrefix, LabelSearch, LabelTrie, tempered
from adapters.manifest import MANIFEST_FILE, AdapterManifest, Calibration, TaskSpec
from tests.support.char_tokenizer import CharTokenizer
from tests.support.label_sets import SET_MODEL, SET_SCHEMA
from training.calibration import (
    TEMPERATURE_BOUNDS,
    Forward,
    Known,
    expected_calibration_error,
    fit_temperature,
    label_set_nll,
    mean_nll,
    predicted_distribution,
    run_label_searches,
    set_probabilities,
    thresholded_micro_f1,
)
from training.data import Example, build_task_spec
from training.evaluate import Engine, evaluate, headline_metrics
from training.package import update_manifest
from training.recipe import REPO_ROOT, RecipeError, TaskConfig, load_recipe

LABELS = ["aa", "ab", "ba", "bb", "c"]
"""Answers `{"y":"<label>"}`: branching after `{"y":"` (a, b, c), then after `a` and `b`."""
FIELD = "y"


@pytest.fixture(scope="module")
def trie() -> LabelTrie:
    return LabelTrie.build(CharTokenizer(), FIELD, LABELS)


def random_known(
    trie: LabelTrie, rng: random.Random, scale: float
) -> dict[LabelPrefix, dict[int, float]]:
    """Log-probabilities at every branching point: logits N(0, scale), normalised with some
    mass left outside the children (as a vocabulary-wide softmax leaves)."""
    known: dict[LabelPrefix, dict[int, float]] = {}
    for node in trie.branching_points:
        logits = {c: rng.gauss(0.0, scale) for c in trie.children(node)}
        norm = math.log(sum(math.exp(v) for v in logits.values())) + 0.5
        known[node] = {c: v - norm for c, v in logits.items()}
    return known


def sample_label(trie: LabelTrie, known: Known, temperature: float, rng: random.Random) -> int:
    """A label drawn from the model's distribution at `temperature`: the world the
    over-confident model (read at temperature 1) describes."""
    distribution = LabelSearch(trie, temperature, floor=0.0, known=dict(known)).distribution()
    assert math.isclose(sum(p for _, p in distribution.ranked), 1.0)
    pick, total = rng.random(), 0.0
    for label, p in distribution.ranked:
        total += p
        if pick <= total:
            return trie.labels.index(label)
    return trie.labels.index(distribution.ranked[-1][0])


@pytest.mark.parametrize("true_temperature", [0.5, 2.5])
def test_fitted_temperature_recovers_the_generating_one(
    trie: LabelTrie, true_temperature: float
) -> None:
    rng = random.Random(7)
    examples = []
    for _ in range(3000):
        known = random_known(trie, rng, scale=2.0)
        examples.append((known, sample_label(trie, known, true_temperature, rng)))
    fitted = fit_temperature(trie, examples)
    assert abs(fitted - true_temperature) < 0.1 * true_temperature, fitted


def test_a_validation_split_without_errors_does_not_sharpen_to_the_bound(
    trie: LabelTrie,
) -> None:
    rng = random.Random(3)
    examples = []
    for _ in range(14):
        known = random_known(trie, rng, scale=2.0)
        best = LabelSearch(trie, 1.0, floor=0.0, known=dict(known)).distribution().best[0]
        examples.append((known, trie.labels.index(best)))
    unconstrained = minimize_likelihood_only(trie, examples)
    fitted = fit_temperature(trie, examples)
    assert unconstrained == pytest.approx(TEMPERATURE_BOUNDS[0], rel=1e-2)
    assert TEMPERATURE_BOUNDS[0] * 2 < fitted < 1.0, fitted


def minimize_likelihood_only(trie: LabelTrie, examples: Sequence[tuple[Known, int]]) -> float:
    """The grid temperature of least `mean_nll` alone (no prior)."""
    grid = [TEMPERATURE_BOUNDS[0] * 1.05**i for i in range(120)]
    return min(grid, key=lambda t: mean_nll(trie, examples, t))


def test_fit_needs_examples(trie: LabelTrie) -> None:
    with pytest.raises(ValueError, match="at least one"):
        fit_temperature(trie, [])


def test_ece_by_hand() -> None:
    # Bin (13/15, 14/15]: accuracy 0.5, confidence 0.9; bin (8/15, 9/15]: 1.0 vs 0.6.
    ece = expected_calibration_error([0.9, 0.9, 0.6, 0.6], [True, False, True, True])
    assert ece == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)
    assert expected_calibration_error([1.0, 1.0], [True, True]) == 0.0
    with pytest.raises(ValueError):
        expected_calibration_error([0.5], [True, False])


def test_ece_of_calibrated_and_over_confident_data() -> None:
    rng = random.Random(3)
    confidences = [rng.uniform(0.2, 1.0) for _ in range(20000)]
    calibrated = [rng.random() < c for c in confidences]
    over_confident = [rng.random() < c - 0.2 for c in confidences]
    low = expected_calibration_error(confidences, calibrated)
    high = expected_calibration_error(confidences, over_confident)
    assert low < 0.02 and high > 0.15 and high > 10 * low, (low, high)


def fake_forward(trie: LabelTrie, worlds: Sequence[Known], calls: list[int]) -> Forward:
    """The worlds' log-probabilities of each branching point's children; records batch sizes."""

    def forward(batch: Sequence[tuple[int, LabelPrefix]]) -> list[Mapping[int, float]]:
        calls.append(len(batch))
        return [{c: worlds[i][node][c] for c in trie.children(node)} for i, node in batch]

    return forward


def test_full_scoring_expands_every_branching_point_in_one_round(trie: LabelTrie) -> None:
    rng = random.Random(1)
    worlds = [random_known(trie, rng, scale=2.0) for _ in range(4)]
    calls: list[int] = []
    searches = [LabelSearch(trie) for _ in worlds]
    passes = run_label_searches(searches, fake_forward(trie, worlds, calls), full=True)
    assert calls == [4 * len(trie.branching_points)] and passes == calls[0]
    for search, world in zip(searches, worlds, strict=True):
        assert set(search.known) == set(trie.branching_points)
        distribution = search.distribution()
        assert {label for label, _ in distribution.ranked} == set(LABELS)
        assert math.isclose(sum(p for _, p in distribution.ranked), 1.0)
        assert distribution.probability("ba") == pytest.approx(
            math.exp(trie.label_logprob(world, LABELS.index("ba"), 1.0))
        )


def test_search_expands_less_than_full_and_finds_the_same_best_label(trie: LabelTrie) -> None:
    # A confident model: `a` far above the rest at every branching point, `b` below `c`.
    logit = {"a": 0.0, "b": -12.0, "c": -9.0}
    confident = {
        node: {c: logit[chr(c)] for c in trie.children(node)} for node in trie.branching_points
    }
    worlds = [confident, confident]
    full = [LabelSearch(trie) for _ in worlds]
    run_label_searches(full, fake_forward(trie, worlds, []), full=True)
    calls: list[int] = []
    searched = [LabelSearch(trie) for _ in worlds]
    passes = run_label_searches(searched, fake_forward(trie, worlds, calls), full=False)
    assert passes == sum(calls) < 2 * len(trie.branching_points)
    assert calls == [2, 2]  # the root, then the branching point under `a`, for both texts
    for a, b in zip(full, searched, strict=True):
        assert a.distribution().best[0] == b.distribution().best[0] == "aa"
        assert b.distribution().best[1] == pytest.approx(a.distribution().best[1])


def test_predicted_distribution_has_no_empty_bin_and_sums_to_one() -> None:
    distribution = predicted_distribution(["aa", "aa", "ba"], LABELS)
    assert set(distribution) == set(LABELS)
    assert math.isclose(sum(distribution.values()), 1.0)
    assert distribution["c"] == pytest.approx(0.5 / 5.5)
    assert distribution["aa"] == pytest.approx(2.5 / 5.5)


class FakeEngine(Engine):
    """Label log-probabilities from a table per text (the adapter) or flat (the base)."""

    def __init__(self, worlds: Mapping[str, Known]) -> None:
        self.tokenizer = CharTokenizer()
        self.worlds = worlds
        self.full_passes = 0

    def logprobs(
        self, text: str, node: LabelPrefix, children: Sequence[int], adapter: bool
    ) -> dict[int, float]:
        return {c: self.worlds[text][node][c] if adapter else -2.0 for c in children}

    def label_searches(
        self,
        spec: object,
        texts: Sequence[str],
        searches: Sequence[RoundSearch],
        *,
        adapter_dir: Path | None,
        full: bool = False,
    ) -> int:
        def forward(batch: Sequence[tuple[int, LabelPrefix]]) -> list[Mapping[int, float]]:
            return [
                self.logprobs(texts[i], node, searches[i].children(node), adapter_dir is not None)
                for i, node in batch
            ]

        passes = run_label_searches(searches, forward, full=full)
        self.full_passes += passes if full else 0
        return passes


def test_evaluation_fits_a_temperature_that_lowers_the_calibration_error(
    trie: LabelTrie, tmp_path: Path
) -> None:
    """An adapter three times too confident: the fit finds the temperature, the calibrated
    test ECE is lower, the report and the metrics carry it."""
    rng = random.Random(11)
    worlds: dict[str, Known] = {}
    splits: dict[str, list[Example]] = {"validation": [], "test": []}
    for split, size in (("validation", 600), ("test", 600)):
        for i in range(size):
            text = f"{split}-{i}"
            worlds[text] = random_known(trie, rng, scale=3.0)
            label = LABELS[sample_label(trie, worlds[text], 3.0, rng)]
            splits[split].append(Example(text, {FIELD: label}))
    spec = build_task_spec(TaskConfig(output_field=FIELD, system_message=None), LABELS)
    manifest = AdapterManifest(name="toy", task=spec)
    (tmp_path / MANIFEST_FILE).write_text(manifest.model_dump_json(exclude_none=True))
    engine = FakeEngine(worlds)

    report = evaluate(
        tmp_path,
        splits["test"],
        base_dir=tmp_path,
        engine=engine,
        validation=splits["validation"],
    )
    c = report.calibration
    assert c is not None and report.base_run is not None
    assert abs(c.temperature - 3.0) < 0.6, c.temperature
    assert c.val_ece_calibrated < c.val_ece_uncalibrated
    assert c.test_ece_calibrated < c.test_ece_uncalibrated, c
    assert engine.full_passes == c.validation_passes == 600 * len(trie.branching_points)
    run = report.adapter_run
    assert run.ece == c.test_ece_calibrated and run.temperature == c.temperature
    assert run.confidences is not None and all(0 < p <= 1 for p in run.confidences)
    assert c.mean_confidence == pytest.approx(sum(run.confidences) / len(run.confidences))
    assert run.scores.validity == 1.0 and run.scores.accuracy > 0.35
    assert math.isclose(sum(c.predicted_distribution.values()), 1.0)
    base = report.base_run.confidences or []  # flat: a, b or c first, then c is the best
    assert len(base) == 600 and all(p == pytest.approx(1 / 3) for p in base)
    metrics = headline_metrics(report)
    assert metrics["test_ece_calibrated"] == c.test_ece_calibrated
    assert metrics["calibration_temperature"] == c.temperature
    markdown = (tmp_path / "report.md").read_text()
    assert f"Temperature **{c.temperature:.3f}**" in markdown
    assert f"| test | {c.test_ece_uncalibrated:.3f} | {c.test_ece_calibrated:.3f} |" in markdown

    # Without validation data the manifest's temperature is used and nothing is fitted.
    again = evaluate(tmp_path, splits["test"], base_dir=tmp_path, engine=engine, write=False)
    assert again.calibration is None and again.adapter_run.temperature == 1.0
    assert "calibration_temperature" not in headline_metrics(again)


def test_calibration_is_written_into_the_manifest(tmp_path: Path) -> None:
    spec = build_task_spec(TaskConfig(output_field=FIELD), LABELS)
    (tmp_path / MANIFEST_FILE).write_text(AdapterManifest(name="toy", task=spec).model_dump_json())
    predicted = predicted_distribution(["aa", "ab", "ab"], LABELS)
    calibration = Calibration(
        temperature=1.7, abstain_below=0.4, predicted_distribution=predicted, mean_confidence=0.8
    )
    update_manifest(tmp_path, calibration=calibration, metrics={"test_ece_calibrated": 0.05})
    stored = AdapterManifest.model_validate_json((tmp_path / MANIFEST_FILE).read_text())
    assert stored.task.calibration == calibration
    assert stored.task.drift_reference == predicted
    assert stored.training is not None
    assert stored.training.metrics == {"test_ece_calibrated": 0.05}


def test_abstain_below_is_a_probability() -> None:
    demo = REPO_ROOT / "training/recipes/demo.yaml"
    assert load_recipe(demo).eval.abstain_below is None
    assert load_recipe(demo, ["eval.abstain_below=0.4"]).eval.abstain_below == 0.4
    with pytest.raises(RecipeError, match="abstain_below"):
        load_recipe(demo, ["eval.abstain_below=1.5"])


WORLD_LABELS = ["aa", "ab", "b"]
WORLD_FIELD = "f"
WORLD_SCHEMA = {
    "type": "object",
    "properties": {
        WORLD_FIELD: {"type": "array", "items": {"enum": WORLD_LABELS}, "maxItems": 2},
    },
    "required": [WORLD_FIELD],
}


def world_logprobs(text: str, prefix: LabelPrefix, children: Sequence[int]) -> dict[int, float]:
    """The fake adapter's next-token log-probabilities after `text`'s prompt and `prefix`:
    logits N(0, 3) seeded by both, some mass left outside the children."""
    rng = random.Random(f"{text}|{prefix}")
    logits = {c: rng.gauss(0.0, 3.0) for c in children}
    norm = math.log(sum(math.exp(v) for v in logits.values())) + 0.5
    return {c: v - norm for c, v in logits.items()}


def sample_set(
    grammar: LabelSetGrammar, text: str, temperature: float, rng: random.Random
) -> set[str]:
    """A label set drawn item by item from the fake adapter's distribution at `temperature`:
    the world that the over-confident adapter (read at temperature 1) describes."""
    chosen: list[int] = []
    base = grammar.prefix
    while True:
        items = grammar.item_trie(len(chosen))
        trie, node = items.trie, items.trie.root
        assert node is not None
        while True:
            children = trie.children(node)
            scaled = tempered(world_logprobs(text, base + node, children), children, temperature)
            pick, total, token = rng.random(), 0.0, children[-1]
            for child in children:
                total += math.exp(scaled[child])
                if pick <= total:
                    token = child
                    break
            edge = trie.edges[node][token]
            if edge.branch is None:
                assert edge.label is not None
                leaf = edge.label
                break
            node = edge.branch
        item = items.items[leaf]
        if item.label is not None:
            chosen.append(item.label)
        if item.closes:
            return {grammar.labels[i] for i in chosen}
        base = base + trie.sequences[leaf]


class FakeSetEngine(FakeEngine):
    """Answers `{"f":[]}` when generating; label-set reads from `world_logprobs`."""

    def __init__(self) -> None:
        super().__init__({})

    def generate(
        self, spec: object, texts: Sequence[str], *, adapter_dir: Path | None, max_tokens: int
    ) -> list[str]:
        return ['{"f":[]}' for _ in texts]

    def logprobs(
        self, text: str, node: LabelPrefix, children: Sequence[int], adapter: bool
    ) -> dict[int, float]:
        return world_logprobs(text, node, children)


def test_multi_label_probabilities_are_calibrated_label_by_label(tmp_path: Path) -> None:
    """An adapter three times too confident about its label sets: the fit moves the
    temperature up, the calibrated label-wise ECE is lower on both splits, the report, the
    metrics and the markdown carry it, and only `label_set_examples` test texts are read."""
    tokenizer = CharTokenizer()
    spec_field = label_set_field(WORLD_SCHEMA, WORLD_LABELS)
    assert spec_field is not None
    grammar = LabelSetGrammar.build(tokenizer, spec_field, WORLD_LABELS)
    rng = random.Random(5)
    splits: dict[str, list[Example]] = {"validation": [], "test": []}
    for split, size in (("validation", 300), ("test", 400)):
        for i in range(size):
            text = f"{split}-{i}"
            truth = sample_set(grammar, text, 3.0, rng)
            splits[split].append(Example(text, {WORLD_FIELD: sorted(truth)}))
    spec = TaskSpec(output_schema=WORLD_SCHEMA, labels=WORLD_LABELS, label_field=WORLD_FIELD)
    (tmp_path / MANIFEST_FILE).write_text(
        AdapterManifest(name="sets", task=spec).model_dump_json(exclude_none=True)
    )

    evaluate_sets = functools.partial(
        evaluate,
        tmp_path,
        splits["test"],
        base_dir=tmp_path,
        engine=FakeSetEngine(),
        validation=splits["validation"],
        compare_base=False,
        max_tokens=16,
    )
    report = evaluate_sets(label_set_examples=300)
    c = report.set_calibration
    assert c is not None and report.calibration is None
    assert c.validation_examples == 300 and c.test_examples == 300
    assert 2.0 < c.temperature < 4.5, c.temperature
    assert c.val_ece_calibrated < c.val_ece_uncalibrated
    assert c.test_ece_calibrated < c.test_ece_uncalibrated, c
    assert 0.0 <= c.test_micro_f1_thresholded <= 1.0 and c.forward_passes > 600
    metrics = headline_metrics(report)
    assert metrics["calibration_temperature"] == c.temperature
    assert metrics["test_micro_f1_thresholded"] == c.test_micro_f1_thresholded
    markdown = (tmp_path / "report.md").read_text()
    assert f"temperature **{c.temperature:.3f}**" in markdown

    off = evaluate_sets(label_set_examples=0, write=False)
    assert off.set_calibration is None and "calibration_temperature" not in headline_metrics(off)


def test_label_set_probabilities_by_hand() -> None:
    """Two labels, at most two items (`SET_MODEL`: P(a in set) .672, P(b in set) .41): the
    log-loss and the thresholded F1 follow."""
    spec_field = label_set_field(SET_SCHEMA, ["a", "b"])
    assert spec_field is not None
    grammar = LabelSetGrammar.build(CharTokenizer(), spec_field, ["a", "b"])
    known = {
        tuple(map(ord, prefix)): {ord(ch): math.log(p) for ch, p in options.items()}
        for prefix, options in SET_MODEL.items()
    }
    assert set_probabilities(grammar, known, 1.0) == [pytest.approx(0.672), pytest.approx(0.41)]
    expected = -(math.log(0.672) + math.log(1 - 0.41)) / 2
    assert label_set_nll(grammar, [(known, frozenset({"a"}))], 1.0) == pytest.approx(expected)
    # {a} chosen (0.672 >= 1/2), reference {a, b}: tp 1, fn 1 -> F1 2/3.
    f1 = thresholded_micro_f1(grammar, [(known, frozenset({"a", "b"}))], 1.0)
    assert f1 == pytest.approx(2 / 3)

"""Label probabilities of a classification adapter through the real server: `/v1/generate`
and gRPC answer with the most probable label, its calibrated confidence and the top labels;
the manifest's temperature and abstain threshold apply, and the metrics count them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from server.grpc_api.gen.hotswap.v1 import inference_pb2 as pb
from server.grpc_api.gen.hotswap.v1 import inference_pb2_grpc
from server.grpc_api.structs import from_struct
from tests.support.adapters import make_random_lora, pack_adapter, upload_adapter
from tests.support.server import RunningServer

pytestmark = pytest.mark.engine

LABELS = ["greeting", "complaint", "question", "refund", "weather"]
"""Their answers part at one token (one branching point), so the temperature's effect is exact."""
SCHEMA = {
    "type": "object",
    "properties": {"intent": {"enum": LABELS}},
    "required": ["intent"],
    "additionalProperties": False,
}
TEXTS = ["I still have not received my new card.", "Which rate do you use for euros?"]


def _manifest(name: str, calibration: dict[str, Any] | None) -> dict[str, Any]:
    task: dict[str, Any] = {
        "system_message": "Classify the banking request.",
        "output_schema": SCHEMA,
        "labels": LABELS,
        "label_field": "intent",
    }
    if calibration is not None:
        task["calibration"] = calibration
    return {"name": name, "task": task}


@pytest.fixture(scope="module")
def adapters(server: RunningServer, base_model_path: Path, tmp_path: Path) -> dict[str, str]:
    """One random LoRA registered twice: without calibration, and with temperature 3 and an
    abstain threshold of 0.99 in its manifest."""
    folder = make_random_lora(
        base_model_path, tmp_path / "lora", seed=21, rank=8, target_modules=["q_proj", "v_proj"]
    )
    names = {"plain": "labels-plain", "calibrated": "labels-calibrated"}
    manifests = {
        "plain": _manifest(names["plain"], None),
        "calibrated": _manifest(names["calibrated"], {"temperature": 3.0, "abstain_below": 0.99}),
    }
    for key, manifest in manifests.items():
        archive = pack_adapter(folder, tmp_path / f"{key}.tar.gz", manifest)
        response = upload_adapter(server.url, archive)
        assert response.status_code in (200, 201), response.text
    return names


@pytest.fixture(scope="module", name="tmp_path")
def _module_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("labels")


def generate(server: RunningServer, **body: Any) -> dict[str, Any]:
    response = httpx.post(f"{server.url}/v1/generate", json=body, timeout=300)
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_the_answer_is_the_most_probable_label(
    server: RunningServer, adapters: dict[str, str]
) -> None:
    for text in TEXTS:
        answer = generate(server, adapter=adapters["plain"], input=text, top_labels=5)
        top = answer["top_labels"]
        assert [entry["label"] for entry in top] == sorted(
            (entry["label"] for entry in top),
            key=lambda label: -next(e["probability"] for e in top if e["label"] == label),
        )
        assert answer["valid"] is True and answer["abstained"] is False
        assert answer["output"] == {"intent": top[0]["label"]}
        assert answer["confidence"] == pytest.approx(top[0]["probability"])
        total = sum(entry["probability"] for entry in top)
        assert 0 < total <= 1 + 1e-9
        assert all(0 < entry["probability"] <= 1 for entry in top)
        # Five labels, all scored: their probabilities sum to 1.
        assert total == pytest.approx(1.0, abs=1e-6)
        assert answer["usage"]["completion_tokens"] > 0


def test_the_manifest_temperature_flattens_and_its_threshold_abstains(
    server: RunningServer, adapters: dict[str, str]
) -> None:
    text = TEXTS[0]
    plain = generate(server, adapter=adapters["plain"], input=text)
    calibrated = generate(server, adapter=adapters["calibrated"], input=text)
    # Temperature 3 divides the branching point's log-probabilities: p_T ∝ p^(1/3).
    tempered = {e["label"]: e["probability"] ** (1 / 3) for e in plain["top_labels"]}
    norm = sum(tempered.values())
    assert len(calibrated["top_labels"]) == len(LABELS)
    for entry in calibrated["top_labels"]:
        assert entry["probability"] == pytest.approx(tempered[entry["label"]] / norm, rel=1e-3)
    assert calibrated["top_labels"][0]["probability"] < plain["top_labels"][0]["probability"]
    assert calibrated["abstained"] is True and calibrated["output"] is None
    assert calibrated["text"] == ""
    # A request's own threshold overrides the manifest's.
    answered = generate(server, adapter=adapters["calibrated"], input=text, abstain_below=0.0)
    assert answered["abstained"] is False and answered["output"] is not None
    families = {
        family.name: family
        for family in text_string_to_metric_families(httpx.get(f"{server.url}/metrics").text)
    }
    verdicts = {
        (s.labels["adapter"], s.labels["verdict"]): s.value
        for s in families["hotswap_label_verdicts"].samples
        if s.name.endswith("_total")
    }
    assert verdicts[(adapters["calibrated"], "abstained")] >= 1
    assert verdicts[(adapters["calibrated"], "answered")] >= 1
    counts = [
        s.value
        for s in families["hotswap_label_confidence"].samples
        if s.name.endswith("_count") and s.labels["adapter"] == adapters["plain"]
    ]
    assert counts and counts[0] >= 1
    means = {
        s.labels["adapter"]: s.value for s in families["hotswap_label_confidence_mean"].samples
    }
    assert 0 < means[adapters["plain"]] <= 1


def test_sampled_choices_carry_their_labels_probability(
    server: RunningServer, adapters: dict[str, str]
) -> None:
    answer = generate(
        server, adapter=adapters["plain"], input=TEXTS[1], n=2, temperature=1.0, seed=3
    )
    scored = {e["label"]: e["probability"] for e in answer["top_labels"]}
    for choice in answer["choices"]:
        assert choice["valid"] is True
        label = choice["output"]["intent"]
        assert choice["confidence"] == pytest.approx(scored[label])


@pytest.fixture(scope="module")
def inference(server: RunningServer) -> Iterator[inference_pb2_grpc.InferenceStub]:
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield inference_pb2_grpc.InferenceStub(channel)


def test_grpc_returns_the_same_verdict(
    server: RunningServer, adapters: dict[str, str], inference: inference_pb2_grpc.InferenceStub
) -> None:
    over_http = httpx.post(
        f"{server.url}/v1/generate",
        json={"adapter": adapters["plain"], "input": TEXTS[0], "top_labels": 2},
        timeout=300,
    )
    http = over_http.json()
    reply, call = inference.Generate.with_call(
        pb.GenerateRequest(adapter=adapters["plain"], text=TEXTS[0], top_labels=2), timeout=300
    )
    # Both name the version that answered.
    version = f"{adapters['plain']}@{http['adapter']['version']}"
    assert over_http.headers["x-hotswap-adapter-version"] == version
    assert dict(call.initial_metadata())["x-hotswap-adapter-version"] == version
    assert [(e.label, pytest.approx(e.probability)) for e in reply.top_labels] == [
        (e["label"], e["probability"]) for e in http["top_labels"]
    ]
    assert reply.confidence == pytest.approx(http["confidence"])
    assert reply.HasField("abstained") and not reply.abstained
    assert from_struct(reply.output_struct) == http["output"]
    refused = httpx.post(
        f"{server.url}/v1/generate",
        json={"adapter": adapters["plain"], "input": "x", "top_labels": 21},
        timeout=60,
    )
    assert refused.status_code == 422 and "top_labels" in refused.text


SET_SCHEMA = {
    "type": "object",
    "properties": {
        "intents": {"type": "array", "items": {"type": "string", "enum": LABELS}, "maxItems": 3},
        "urgent": {"type": "boolean"},
    },
    "required": ["intents", "urgent"],
    "additionalProperties": False,
}


def test_a_multi_label_answer_carries_each_labels_probability(
    server: RunningServer,
    base_model_path: Path,
    tmp_path: Path,
    inference: inference_pb2_grpc.InferenceStub,
) -> None:
    folder = make_random_lora(
        base_model_path, tmp_path / "lora", seed=21, rank=8, target_modules=["q_proj", "v_proj"]
    )
    manifest = {
        "name": "labels-multi",
        "task": {
            "system_message": "List the intents of the banking request.",
            "output_schema": SET_SCHEMA,
            "labels": LABELS,
            "label_field": "intents",
        },
    }
    archive = pack_adapter(folder, tmp_path / "multi.tar.gz", manifest)
    uploaded = upload_adapter(server.url, archive)
    assert uploaded.status_code in (200, 201), uploaded.text
    answer = generate(server, adapter="labels-multi", input=TEXTS[0], top_labels=5)
    assert answer["valid"] is True
    assert answer["confidence"] is None and answer["abstained"] is None
    assert answer["top_labels"] is None
    scored = {e["label"]: e["probability"] for e in answer["label_probabilities"]}
    probabilities = list(scored.values())
    assert 0 < len(scored) <= 5 and probabilities == sorted(probabilities, reverse=True)
    assert all(0 <= p <= 1 for p in probabilities)
    # Their sum is the expected size of the set: at most maxItems.
    assert sum(probabilities) <= 3 + 1e-9
    empty = answer["empty_set_probability"]
    assert 0 <= empty <= 1
    chosen = answer["output"]["intents"]
    if chosen:
        # Greedy opened the array (probability >= 1/2) and took its most probable first label.
        assert all(label in scored for label in chosen)
        assert scored[chosen[0]] >= 1 / (2 * len(LABELS)) - 1e-6
        assert sum(probabilities) >= 0.5 - 1e-6 and empty <= 0.5 + 1e-6
    else:
        # Greedy wrote [] (probability >= 1/2): no label is in the set more often than not.
        assert max(probabilities) <= 0.5 + 1e-6 and empty >= 0.5 - 1e-6
    reply = inference.Generate(
        pb.GenerateRequest(adapter="labels-multi", text=TEXTS[0], top_labels=2), timeout=300
    )
    assert [
        (e.label, pytest.approx(e.probability, rel=1e-3)) for e in reply.label_probabilities
    ] == list(scored.items())[:2]
    assert reply.empty_set_probability == pytest.approx(empty, rel=1e-3)
    assert not reply.HasField("confidence") and not reply.HasField("abstained")

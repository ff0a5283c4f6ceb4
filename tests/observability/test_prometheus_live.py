"""A real Prometheus scrapes the real server and runs every query of deploy/: each recording
rule, alert and dashboard expression parses, and the recording rules and dashboard panels
return data after a short mixed load."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.adapters import make_random_lora, pack_adapter, upload_adapter
from tests.support.prometheus import RunningPrometheus, start_prometheus
from tests.support.server import RunningServer

pytestmark = [pytest.mark.engine, pytest.mark.promtool]

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "hotswap.json"

ADAPTER = "obs"
SENTIMENT_SCHEMA = {
    "type": "object",
    "properties": {"sentiment": {"enum": ["positive", "negative", "neutral"]}},
    "required": ["sentiment"],
    "additionalProperties": False,
}
# What the dashboard's template variables become in the queries sent here.
TEMPLATE_VALUES = {"$adapter": ".*", "$__rate_interval": "1m", "$__range": "5m"}


def substitute(expr: str) -> str:
    for variable, value in TEMPLATE_VALUES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unsubstituted template variable in {expr!r}"
    return expr


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, expr) of every target of the dashboard, nested row panels included."""

    def walk(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in panels:
            yield panel
            yield from walk(panel.get("panels", []))

    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"])
        for panel in walk(dashboard["panels"])
        for target in panel.get("targets", [])
    ]


def rule_file_rules() -> list[dict[str, Any]]:
    import yaml  # PyYAML comes with vLLM, which every engine test needs anyway

    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


@pytest.fixture(scope="module")
def obs_adapter(
    server: RunningServer, base_model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """Adapter `obs` with a task whose labels have a reference distribution (drift metrics),
    uploaded, then promoted again (a swap)."""
    root = tmp_path_factory.mktemp("obs")
    folder = make_random_lora(
        base_model_path, root / "lora", seed=21, rank=8, target_modules=["q_proj", "v_proj"]
    )
    manifest = {
        "name": ADAPTER,
        "description": "sentiment classifier for the observability test",
        "task": {
            "system_message": "Classify the sentiment of the message.",
            "input_template": "Message: {input}",
            "output_schema": SENTIMENT_SCHEMA,
            "labels": ["positive", "negative", "neutral"],
            "label_field": "sentiment",
            "reference_distribution": {"positive": 0.4, "negative": 0.4, "neutral": 0.2},
            # the confidence drift gauge compares live answers with this held-out mean
            "calibration": {"temperature": 1.0, "mean_confidence": 0.8},
        },
    }
    archive = pack_adapter(folder, root / "obs.tar.gz", manifest)
    uploaded = upload_adapter(server.url, archive)
    assert uploaded.status_code in (200, 201), uploaded.text
    version = uploaded.json()["version"]
    promoted = httpx.post(
        f"{server.url}/v1/adapters/{ADAPTER}/promote", json={"version": version}, timeout=300
    )
    assert promoted.status_code == 200, promoted.text
    # A second build under a canary that lasts the whole test (a minimum it never reaches),
    # so the dashboard's rollout row has candidate and current figures to show.
    candidate = pack_adapter(
        folder, root / "obs-v2.tar.gz", {**manifest, "description": "the canary's candidate"}
    )
    with candidate.open("rb") as fh:
        second = httpx.post(
            f"{server.url}/v1/adapters",
            files={"file": (candidate.name, fh, "application/gzip")},
            timeout=300,
        )
    assert second.status_code == 201, second.text
    canary = httpx.post(
        f"{server.url}/v1/adapters/{ADAPTER}/rollouts",
        json={
            "version": second.json()["version"],
            "mode": "canary",
            "percent": 50,
            "gates": {"min_requests": 1_000_000},
        },
        timeout=300,
    )
    assert canary.status_code == 201, canary.text
    return ADAPTER


@pytest.fixture(scope="module")
def prometheus(
    server: RunningServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningPrometheus]:
    """Prometheus scraping the shared server and evaluating deploy's rules every second."""
    running = start_prometheus(
        tmp_path_factory.mktemp("prometheus"),
        targets=[server.url.removeprefix("http://")],
        rule_files=[RULES],
        interval="1s",
    )
    try:
        yield running
    finally:
        running.stop()


async def mixed_load(url: str, adapter: str) -> list[int]:
    """Task calls, calls with and without a schema, chat (plain and streamed), and errors;
    the HTTP statuses."""
    chat = {"model": "alpha", "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]}
    calls: list[tuple[str, dict[str, Any]]] = [
        *(
            ("/v1/generate", {"adapter": adapter, "input": text})
            for text in ("I love it", "This is awful", "It is a chair", "Great!", "meh", "ok")
        ),
        ("/v1/generate", {"adapter": "alpha", "input": "Say hello", "max_tokens": 8}),
        (
            "/v1/generate",
            {
                "adapter": "alpha",
                "input": "Judge: fine",
                "schema": SENTIMENT_SCHEMA,
            },
        ),
        ("/v1/chat/completions", chat),
        ("/v1/chat/completions", {**chat, "stream": True}),
        ("/v1/generate", {"adapter": "no-such-adapter", "input": "x", "max_tokens": 4}),
        ("/v1/chat/completions", {**chat, "model": "no-such-model"}),
        ("/v1/generate", {"adapter": adapter, "input": "x" * 20_000, "max_tokens": 4}),
    ]
    async with httpx.AsyncClient(base_url=url, timeout=300) as http:
        responses = await asyncio.gather(*(http.post(path, json=body) for path, body in calls))
    return [r.status_code for r in responses]


def query_with_data(prom: RunningPrometheus, expr: str, timeout: float = 10.0) -> dict[str, Any]:
    """The answer to `expr`, retried a while when it is empty (a scrape can be late); a parse
    error is returned at once."""
    deadline = time.monotonic() + timeout
    while True:
        answer = prom.query(expr)
        if answer.get("status") != "success" or answer["data"]["result"]:
            return answer
        if time.monotonic() > deadline:
            return answer
        time.sleep(0.5)


def test_every_rule_and_panel_query_runs_on_real_scrapes(
    server: RunningServer, obs_adapter: str, prometheus: RunningPrometheus
) -> None:
    statuses = asyncio.run(mixed_load(server.url, obs_adapter))
    assert statuses.count(200) >= 10 and 404 in statuses, statuses

    # Wait until Prometheus holds several scrapes taken after the load, and rules ran on them.
    prometheus.wait_for(f'count_over_time(hotswap_labels_total{{adapter="{obs_adapter}"}}[1m]) > 3')
    prometheus.wait_for(f'adapter:hotswap_schema_validity:ratio_rate5m{{adapter="{obs_adapter}"}}')

    failures: list[str] = []

    # Recording rules: each expression returns data, and so does the series it records.
    # Alerts compare with thresholds this load does not reach: they must parse.
    rules = rule_file_rules()
    for rule in rules:
        name = rule.get("record") or rule["alert"]
        answer = (
            query_with_data(prometheus, rule["expr"])
            if "record" in rule
            else (prometheus.query(rule["expr"]))
        )
        if answer.get("status") != "success":
            failures.append(f"rule {name}: {answer.get('error')}")
        elif "record" in rule and not answer["data"]["result"]:
            failures.append(f"recording rule {name}: no data")
        elif "record" in rule and not query_with_data(prometheus, name)["data"]["result"]:
            failures.append(f"recorded series {name}: not written by Prometheus")

    # Every dashboard query, with the template variables filled in, returns data.
    exprs = dashboard_exprs()
    for title, expr in exprs:
        answer = query_with_data(prometheus, substitute(expr))
        if answer.get("status") != "success":
            failures.append(f"panel {title!r}: {answer.get('error')}\n  {expr}")
        elif not answer["data"]["result"]:
            failures.append(f"panel {title!r}: no data\n  {expr}")
    assert not failures, "\n".join(failures)

    # The adapter variable's query lists the adapters that took traffic.
    values = prometheus.api("label/adapter/values", **{"match[]": "hotswap_requests_total"})
    assert {obs_adapter, "alpha"} <= set(values["data"]), values

    # Prometheus loaded every group of the file and every rule evaluates without error.
    deadline = time.monotonic() + 15
    while True:
        groups = prometheus.api("rules")["data"]["groups"]
        loaded = [rule for group in groups for rule in group["rules"]]
        unhealthy = [
            (r["name"], r["health"], r.get("lastError")) for r in loaded if r["health"] != "ok"
        ]
        if not unhealthy or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert {g["name"] for g in groups} == {"hotswap.recording", "hotswap.alerts"}
    assert len(loaded) == len(rules) and not unhealthy, unhealthy

    # The server was scraped all along: the target-down alert is not even pending.
    alerts = prometheus.api("alerts")["data"]["alerts"]
    assert not [a for a in alerts if a["labels"]["alertname"] == "HotswapTargetDown"], alerts
    assert query_with_data(prometheus, 'up{job="hotswap"} == 1')["data"]["result"]

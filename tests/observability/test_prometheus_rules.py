"""The Prometheus configuration, rules and Grafana dashboard in deploy/ are valid: promtool
checks the config and the rules and runs the alerts' unit tests; the dashboard parses."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.prometheus import promtool

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "hotswap.json"


def dashboard_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel of a dashboard, those nested in collapsed rows included."""
    for panel in panels:
        yield panel
        yield from dashboard_panels(panel.get("panels", []))


@pytest.mark.parametrize(
    "args",
    [
        ("check", "config", "prometheus.yml"),
        ("check", "rules", "alerts.yml"),
        ("test", "rules", "alerts_test.yml"),
    ],
    ids=["check-config", "check-rules", "test-rules"],
)
@pytest.mark.promtool
def test_promtool(args: tuple[str, ...]) -> None:
    result = promtool(*args, cwd=PROMETHEUS_DIR)
    assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}{result.stderr}"
    assert "SUCCESS" in result.stdout


def test_every_alert_has_severity_summary_and_description() -> None:
    groups = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]
    alerts = [rule for group in groups for rule in group["rules"] if "alert" in rule]
    assert {a["alert"] for a in alerts} == {
        "HotswapTargetDown",
        "HotswapSchemaValidityLow",
        "HotswapLabelDrift",
        "HotswapServerErrorRateHigh",
        "HotswapLatencyHigh",
        "HotswapEngineQueueGrowing",
        "HotswapRolloutRolledBack",
    }
    for alert in alerts:
        assert alert["labels"]["severity"] in {"warning", "critical"}, alert["alert"]
        summary, description = alert["annotations"]["summary"], alert["annotations"]["description"]
        # Per-adapter alerts name the adapter, per-server ones the instance.
        who = (
            "$labels.instance"
            if alert["alert"]
            in {
                "HotswapTargetDown",
                "HotswapEngineQueueGrowing",
            }
            else "$labels.adapter"
        )
        assert who in summary and who in description, alert["alert"]
    tested = (PROMETHEUS_DIR / "alerts_test.yml").read_text()
    for alert in alerts:
        assert f"alertname: {alert['alert']}" in tested, f"{alert['alert']} has no unit test"


def test_dashboard_parses_and_every_target_has_an_expr() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert "label_values(hotswap_requests_total, adapter)" in json.dumps(
        variables["adapter"]["query"]
    )
    panels = [p for p in dashboard_panels(dashboard["panels"]) if p["type"] != "row"]
    assert len(panels) >= 10
    assert len({p["id"] for p in dashboard_panels(dashboard["panels"])}) == len(
        list(dashboard_panels(dashboard["panels"]))
    ), "panel ids must be unique"
    for panel in panels:
        assert panel["targets"], f"panel {panel['title']!r} has no target"
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target.get("expr", "").strip(), f"panel {panel['title']!r}: target without expr"
    exprs = " ".join(t["expr"] for p in panels for t in p["targets"])
    for metric in (
        "hotswap_schema_outcomes_total",
        "hotswap_labels_total",
        "hotswap_drift_psi",
        "hotswap_drift_js_distance",
        "hotswap_drift_chi2_pvalue",
        "hotswap_drift_window_fill",
        "hotswap_request_duration_seconds_bucket",
        "hotswap_time_to_first_token_seconds_bucket",
        "hotswap_time_per_output_token_seconds_bucket",
        "hotswap_requests_total",
        "hotswap_completion_tokens_total",
        "hotswap_adapters_loaded",
        "hotswap_adapter_swaps_total",
        "vllm:kv_cache_usage_perc",
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
    ):
        assert metric in exprs, f"the dashboard shows no {metric}"

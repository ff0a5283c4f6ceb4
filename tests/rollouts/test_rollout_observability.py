"""Ops see rollouts: every hotswap_rollout_* metric the alert and the dashboard row read is
defined, the rolled-back alert has its promtool test, and the row sits after the others."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client import REGISTRY

import server.metrics.instruments  # noqa: F401 (registers the metrics)

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "hotswap.json"


SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def defined_metrics() -> set[str]:
    """Every series name the registered metrics expose, with or without samples yet."""
    return {
        family.name + suffix
        for family in REGISTRY.collect()
        for suffix in SUFFIXES.get(family.type, ("",))
    }


def rollout_metrics(text: str) -> set[str]:
    return set(re.findall(r"hotswap_rollout_[a-z_]+", text))


def test_the_rolled_back_alert_reads_a_defined_counter_and_has_a_unit_test() -> None:
    rules = yaml.safe_load(ALERTS.read_text())["groups"]
    (alert,) = [
        r for g in rules for r in g["rules"] if r.get("alert") == "HotswapRolloutRolledBack"
    ]
    assert 'outcome="rolled_back", by="gates"' in alert["expr"]
    assert rollout_metrics(alert["expr"]) <= defined_metrics()
    assert "$labels.adapter" in alert["annotations"]["summary"]
    assert "alertname: HotswapRolloutRolledBack" in ALERT_TESTS.read_text()


def test_the_dashboard_row_compares_candidate_and_current_on_defined_metrics() -> None:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    titles = [p["title"] for p in panels]
    row = titles.index("Rollouts: candidate against current")
    assert row == len(panels) - 8  # appended last: the existing panels keep their places
    exprs = " ".join(t["expr"] for p in panels[row + 1 :] for t in p["targets"])
    used = rollout_metrics(exprs)
    assert {
        "hotswap_rollout_state",
        "hotswap_rollout_requests_total",
        "hotswap_rollout_latency_seconds_bucket",
        "hotswap_rollout_comparison",
        "hotswap_rollout_decisions_total",
        "hotswap_rollout_shadow_dropped_total",
    } <= used
    assert used <= defined_metrics()
    assert "by (adapter, role" in exprs  # candidate and current side by side

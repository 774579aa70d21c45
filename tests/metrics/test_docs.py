"""The Grafana dashboard and the alert rules in docs/ query only metrics the daemon
exports (tests/helpers/metrics.py lists them), and are well-formed: the dashboard is
valid JSON, the rules file has the five alerts of issue 17 in Prometheus's structure
(and passes `promtool check rules` where promtool is installed)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from typing import Any

import pytest
import yaml
from helpers import REPO
from helpers.metrics import EXPECTED

DASHBOARD = REPO / "docs" / "grafana-dashboard.json"
ALERTS = REPO / "docs" / "alerts.yml"
METRIC = re.compile(r"\bcolab_gateway_[a-z_]+")
ALERT_NAMES = {
    "ColabRuntimeDown",
    "ColabTunnelDown",
    "ColabHumanNeeded",
    "ColabDdnsStale",
    "ColabBrowserRestarting",
}


def _exprs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["expr"]] if isinstance(node.get("expr"), str) else []
        return found + [e for v in node.values() for e in _exprs(v)]
    if isinstance(node, list):
        return [e for v in node for e in _exprs(v)]
    return []


def _unknown(exprs: list[str]) -> set[str]:
    return {m for e in exprs for m in METRIC.findall(e)} - set(EXPECTED)


def test_the_dashboard_queries_only_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = _exprs(dashboard["panels"])
    assert len(exprs) >= 10
    assert _unknown(exprs) == set()
    # The chain at a glance: each link of it has a panel.
    queried = {m for e in exprs for m in METRIC.findall(e)}
    for link in ("runtime_connected", "tunnel_up", "ddns_published", "component_health"):
        assert any(link in m for m in queried), link
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_the_alert_rules_are_the_five_and_name_exported_metrics() -> None:
    data = yaml.safe_load(ALERTS.read_text())
    rules = [rule for group in data["groups"] for rule in group["rules"]]
    assert {r["alert"] for r in rules} == ALERT_NAMES
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert METRIC.search(rule["expr"]), rule["alert"]
    assert _unknown([r["expr"] for r in rules]) == set()


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_accepts_the_alert_rules() -> None:
    result = subprocess.run(
        ["promtool", "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr

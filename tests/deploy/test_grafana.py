"""The Grafana dashboard reads metrics a real pod exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.conftest import PodFactory

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "wsnode.json"
WANTED = ("connections", "users", "delivered", "acks_pending", "acks_resent", "acks_dead",
          "send_latency", "rate_limited", "dropped", "bus_reconnects", "ready")


def test_every_metric_of_the_dashboard_exists(pod_factory: PodFactory) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {re.sub(r"_(bucket|count|sum)$", "", m)
            for e in exprs for m in re.findall(r"\bwsnode_[a-z_]+", e)}
    pod = pod_factory("grafana")
    _, text = pod.api("GET", "/metrics", key=None)
    exported = set(re.findall(r"^# TYPE (wsnode_[a-z_]+) ", str(text), re.MULTILINE))
    exported |= {re.sub(r"_total$", "", m) + "_total" for m in exported}
    assert used <= exported, f"not exported: {sorted(used - exported)}"
    for part in WANTED:  # what the operator issue asks the dashboard to show
        assert any(part in m for m in used), part


def test_dashboard_shape() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "wsnode"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["targets"] and panel["datasource"]["uid"] == "${datasource}"

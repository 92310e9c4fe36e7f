"""PromQL found in the dashboard and the alert rules, and the metric names the agent exports.

Shared by the unit tests (names, syntax) and the live observability test (every
dashboard query returns data from a real Prometheus).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

from agent.metrics import Metrics, SyncMetrics

REPO = Path(__file__).resolve().parent.parent
DASHBOARD = REPO / "dashboards" / "grafana" / "nat-ha.json"
ALERTS = REPO / "dashboards" / "prometheus" / "alerts.yml"
ALERTS_TEST = REPO / "dashboards" / "prometheus" / "alerts_test.yml"
ALERTMANAGER_EXAMPLE = REPO / "dashboards" / "alertmanager" / "example.yml"
RUNBOOK = REPO / "dashboards" / "runbook.md"

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*[{\[]")
_NAT_HA = re.compile(r"\bnat_ha_[a-z0-9_]+\b")
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}


# What the sync service answers the agent (agent.ctsync.service.SyncService.snapshot_stats), abridged.
SYNC_STATS = {
    "peers": {"i-b": {"connected": True}, "i-c": {"connected": False}},
    "lag": {"i-b": 0.1},
    "entries_sent": 10,
    "entries_loaded": 5,
    "bytes_sent": 100,
    "resyncs": 1,
    "errors": {"load": 1},
    "takeover_entries": {"rtb-b": 3},
    "events": True,
}


def exported_names() -> set[str]:
    """Every sample name a freshly prepared agent exports (with _total/_bucket/... suffixes), plus ``up``."""
    metrics = Metrics(CollectorRegistry())
    metrics.prepare("0.0.0", "g", "i-a", ["i-b", "i-c"], ["rtb-a", "rtb-b"])
    sync = SyncMetrics(metrics.registry, ["i-b", "i-c"], ["rtb-a", "rtb-b"])  # an agent with conntrack_sync
    sync.stats = SYNC_STATS
    names = {"up"}
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created")}
    for family in metrics.registry.collect():
        names.update(sample.name for sample in family.samples)
        # a labelled family without series yet (e.g. AWS calls not made) still has these names
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
    return names


def metric_names(expr: str) -> set[str]:
    """Metric names used in a PromQL expression (selectors and every ``nat_ha_*`` token)."""
    bare = _STRING.sub('""', expr)
    names = {m for m in _SELECTOR.findall(bare) if m not in _KEYWORDS}
    names.update(_NAT_HA.findall(bare))
    return names


def load_dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def iter_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # collapsed rows keep their panels inside


def dashboard_exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, expr) for every panel target, annotation and query variable."""
    found: list[tuple[str, str]] = []
    for panel in iter_panels(dashboard):
        for target in panel.get("targets", []):
            found.append((f"panel {panel['title']!r} {target.get('refId')}", target["expr"]))
    for ann in dashboard.get("annotations", {}).get("list", []):
        if ann.get("expr"):
            found.append((f"annotation {ann['name']!r}", ann["expr"]))
    return found


def variable_queries(dashboard: dict[str, Any]) -> dict[str, str]:
    """name -> query of every ``query`` template variable."""
    out: dict[str, str] = {}
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            out[var["name"]] = query
    return out


_LABEL_VALUES = re.compile(r"^label_values\((?:(.*),\s*)?([a-zA-Z_][a-zA-Z0-9_]*)\)$")


def parse_label_values(query: str) -> tuple[str, str]:
    """``label_values(selector, label)`` -> (selector, label)."""
    m = _LABEL_VALUES.match(query.strip())
    if not m:
        raise ValueError(f"not a label_values() query: {query!r}")
    return (m.group(1) or "").strip(), m.group(2)


def substitute(expr: str, variables: dict[str, str], *, rate_interval: str = "15s", rng: str = "5m") -> str:
    """Replace Grafana's variables the way Grafana would (regex for multi-value variables)."""
    out = expr
    builtins = {
        "$__rate_interval": rate_interval,
        "$__interval": rate_interval,
        "$__range": rng,
    }
    for name, value in builtins.items():
        out = out.replace(name, value)
    for name in sorted(variables, key=len, reverse=True):
        out = out.replace("${" + name + "}", variables[name]).replace("$" + name, variables[name])
    return out


def load_rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(ALERTS.read_text())
    rules: list[dict[str, Any]] = []
    for group in data["groups"]:
        rules.extend(group["rules"])
    return rules


def runbook_anchors() -> set[str]:
    """GitHub-style anchors of the runbook's headings."""
    anchors = set()
    for line in RUNBOOK.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            slug = re.sub(r"[^\w\- ]", "", title).replace(" ", "-")
            anchors.add(slug)
    return anchors

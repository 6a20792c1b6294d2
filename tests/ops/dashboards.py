"""Every PromQL query the operations configuration runs: dashboard panels, dashboard
variables and alert rules, each with where it comes from."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.ops.promql import metric_names, variable_metric_names

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"


@dataclass(frozen=True)
class Query:
    where: str  # "mission-overview.json: panel 'Tasks by state'"
    expr: str
    variable: bool = False

    def metrics(self) -> set[str]:
        return variable_metric_names(self.expr) if self.variable else metric_names(self.expr)


def dashboard_files() -> list[Path]:
    return sorted(DASHBOARDS.glob("*.json"))


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in board.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def stat_panels() -> Iterator[Query]:
    """The query of every single-figure (stat) panel, the figures a glance reads."""
    for path in dashboard_files():
        board = json.loads(path.read_text())
        for panel in panels(board):
            if panel.get("type") != "stat":
                continue
            for target in panel.get("targets", []):
                if target.get("expr"):
                    yield Query(f"{path.name}: panel {panel.get('title')!r}", target["expr"])


def queries() -> Iterator[Query]:
    for path in dashboard_files():
        board = json.loads(path.read_text())
        for panel in panels(board):
            for target in panel.get("targets", []):
                if target.get("expr"):
                    yield Query(f"{path.name}: panel {panel.get('title')!r}", target["expr"])
        for variable in board.get("templating", {}).get("list", []):
            if variable.get("type") == "query":
                query = variable["query"]
                text = query.get("query", "") if isinstance(query, dict) else query
                yield Query(f"{path.name}: variable {variable['name']!r}", text, variable=True)
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            name = rule.get("alert") or rule.get("record")
            yield Query(f"{ALERTS.name}: rule {name!r}", str(rule["expr"]))

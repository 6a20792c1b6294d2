"""The Grafana dashboards and alert rules, checked statically: well-formed, provisioned,
and every query valid PromQL. (That every metric they use is exported is checked against
the running services in test_live.py.)"""

from __future__ import annotations

import json

import pytest

from tests.ops.dashboards import dashboard_files, panels, queries

EXPECTED = {"mission-overview.json", "agents-and-cost.json", "bus-and-services-health.json"}


def test_the_three_dashboards_exist_with_unique_uids() -> None:
    files = {path.name: json.loads(path.read_text()) for path in dashboard_files()}
    assert set(files) == EXPECTED
    uids = [board["uid"] for board in files.values()]
    assert len(set(uids)) == len(uids)
    for name, board in files.items():
        assert board["title"].startswith("Aether / "), name
        assert "aether" in board["tags"], name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_panels_are_laid_out_and_read_the_chosen_data_source(name: str) -> None:
    path = next(p for p in dashboard_files() if p.name == name)
    board = json.loads(path.read_text())
    variables = {v["name"] for v in board["templating"]["list"]}
    assert "datasource" in variables
    ids = [panel["id"] for panel in panels(board)]
    assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
    for panel in panels(board):
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, (name, panel["title"])
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], f"{name}: panel {panel['title']!r} has no query"
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids))


def test_every_query_is_valid_promql_and_names_aether_metrics() -> None:
    problems = []
    seen = 0
    for query in queries():
        seen += 1
        try:
            names = query.metrics()
        except ValueError as error:
            problems.append(f"{query.where}: {error}: {query.expr}")
            continue
        if not query.variable and not names:
            problems.append(f"{query.where}: selects no metric: {query.expr}")
    assert seen > 50
    assert not problems, "\n".join(problems)

"""The five services running, one mission through them (offline model), then: every
metric a dashboard or an alert queries is exported by some service, and every service's
log lines are JSON carrying the ids of the event being handled."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
import nats
import psycopg
import pytest

from aether.gitview import create_sample_repository
from aether.stack import SERVICES, Stack
from aether_events import MissionCompleted, MissionFailed
from tests.ops.dashboards import queries
from tests.ops.promql import PROMETHEUS_SERIES, exported_names
from tests.support import MissionLog

pytestmark = pytest.mark.e2e

# Metrics the dashboards use that their services do not export yet, by the service that
# will (its owner is building it now). The dashboards keep them; this test tells each one
# apart from a mistake, and fails once it is exported so the entry is removed.
AWAITED: dict[str, str] = {}

REQUIREMENT = """\
- Add notes/alpha.txt with a short note about alpha
- Add notes/beta.txt with a short note about beta (after 1)
"""
# Events that concern one task: their handling must be logged with its task id.
TASK_EVENTS = {"task_ready", "workspace_ready", "agent_started", "agent_completed", "branch_merged"}


@dataclass
class Live:
    stack: Stack
    mission_id: str
    expositions: dict[str, str]

    def log_lines(self, service: str) -> list[str]:
        path = self.stack.home / "logs" / f"{service}.log"
        return [line for line in path.read_text().splitlines() if line.strip()]


async def fresh_database(database_url: str) -> str:
    name = "ops_live"
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await conn.execute(f'CREATE DATABASE "{name}"')
    base, _, query = database_url.partition("?")
    return f"{base.rsplit('/', 1)[0]}/{name}" + (f"?{query}" if query else "")


async def run_mission(stack: Stack, repository: Path) -> str:
    async with httpx.AsyncClient(
        base_url=stack.gateway_url, headers=stack.auth_headers, timeout=10
    ) as http:
        created = await http.post(
            "/missions",
            json={"repository": str(repository), "requirement": REQUIREMENT, "auto_approve": True},
        )
        assert created.status_code == 202, created.text
        mission_id: str = created.json()["mission_id"]
    nc = await nats.connect(stack.nats_url)
    try:
        log = await MissionLog(nc, mission_id).start()
        await log.wait_for(
            lambda log: bool(log.of_type(MissionCompleted) or log.of_type(MissionFailed)),
            timeout=120,
        )
        assert log.of_type(MissionCompleted), [type(e).__name__ for _, e in log.events]
        await log.stop()
    finally:
        await nc.drain()
    return mission_id


@pytest.fixture(scope="module")
async def live(tmp_path_factory: pytest.TempPathFactory, database_url: str) -> AsyncIterator[Live]:
    home = tmp_path_factory.mktemp("ops-live")
    repository = home / "repo"
    create_sample_repository(repository)
    stack = Stack(
        home=home / "stack",
        random_ports=True,
        # No key: the offline model, so no test ever reaches a real endpoint.
        env={"ANTHROPIC_API_KEY": "", "DATABASE_URL": await fresh_database(database_url)},
    )
    try:
        await asyncio.to_thread(stack.start)
        mission_id = await run_mission(stack, repository)
        async with httpx.AsyncClient(timeout=10) as http:
            expositions = {
                name: (await http.get(f"{service.url}/metrics")).text
                for name, service in stack.processes.items()
            }
        yield Live(stack, mission_id, expositions)
    finally:
        await asyncio.to_thread(stack.stop)


def base_name(metric: str) -> str:
    return re.sub(r"_(bucket|sum|count|created)$", "", metric)


async def test_every_service_exports_metrics(live: Live) -> None:
    assert set(live.expositions) == set(SERVICES)
    for name, text in live.expositions.items():
        assert f'aether_service_ready{{service="{name}"}} 1.0' in text, name


async def test_every_metric_the_dashboards_and_alerts_query_is_exported(live: Live) -> None:
    exporters: dict[str, set[str]] = {}
    for service, text in live.expositions.items():
        for name in exported_names(text):
            exporters.setdefault(name, set()).add(service)
    missing: list[str] = []
    awaited_seen: set[str] = set()
    for query in queries():
        for metric in sorted(query.metrics()):
            if metric in exporters or metric in PROMETHEUS_SERIES:
                continue
            awaited = AWAITED.get(base_name(metric)) or AWAITED.get(metric)
            if awaited is not None:
                awaited_seen.add(base_name(metric) if base_name(metric) in AWAITED else metric)
                continue
            missing.append(f"{metric} (used by {query.where}) is exported by no service")
    assert not missing, "\n".join(sorted(set(missing)))
    now_exported = set(AWAITED) - awaited_seen
    assert not now_exported, (
        f"now exported, remove from AWAITED in {__file__}: {sorted(now_exported)}"
    )


async def test_metrics_follow_prometheus_naming(live: Live) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    problems = []
    for service, text in live.expositions.items():
        for family in text_string_to_metric_families(text):
            if not family.name.startswith("aether_") or family.name.endswith("_created"):
                continue  # process_*, python_* and creation times come from the client
            if family.type == "counter" and family.name.endswith("_total"):
                problems.append(f"{service}: counter {family.name}_total ends in _total_total")
            if family.type != "counter" and family.name.endswith("_total"):
                problems.append(f"{service}: {family.type} {family.name} ends in _total")
            if "duration" in family.name and not family.name.endswith("_seconds"):
                problems.append(f"{service}: {family.name} is a duration without its unit")
            if family.name.endswith("_seconds") and family.type not in ("histogram", "gauge"):
                problems.append(f"{service}: {family.name} should be a histogram")
    assert not problems, "\n".join(sorted(set(problems)))


def total(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


async def test_a_mission_moves_the_counters(live: Live) -> None:
    metrics = live.expositions
    published = "aether_events_published_total"
    assert total(metrics["scheduler"], published, type="task_ready", duplicate="false") == 2
    assert total(metrics["scheduler"], published, type="mission_completed") == 1
    assert total(metrics["scheduler"], "aether_missions", state="completed") == 1
    assert total(metrics["git-broker"], "aether_merges_total") == 2
    assert total(metrics["planner"], "aether_model_requests_total", outcome="ok") >= 1
    assert total(metrics["agent-runner"], "aether_model_tokens_total", kind="output") > 0
    consumed = "aether_events_consumed_total"
    for service in SERVICES:
        assert total(metrics[service], consumed, outcome="ok") > 0, service
        assert total(metrics[service], "aether_http_requests_total") > 0, service


async def test_log_lines_are_json_with_the_ids_of_the_event_being_handled(live: Live) -> None:
    for service in SERVICES:
        handled = []
        for number, line in enumerate(live.log_lines(service), 1):
            try:
                record = json.loads(line)
            except ValueError:
                pytest.fail(f"{service}.log line {number} is not JSON: {line[:200]}")
            assert {"ts", "level", "service", "msg"} <= set(record), (service, record)
            assert record["service"] == service
            assert datetime.fromisoformat(record["ts"]).tzinfo is not None
            if record["msg"].startswith("handled ") and record.get("mission_id") == live.mission_id:
                handled.append(record)
        assert handled, f"{service} logged no handled event of the mission"
        for record in handled:
            assert record["event_id"], record
            if record["type"] in TASK_EVENTS:
                assert record.get("task_id"), f"{service} handled {record['type']} without task_id"

"""The five services running, one mission through them (offline model), then: every
metric a dashboard or an alert queries is exported by some service, and every service's
log lines are JSON carrying the ids of the event being handled. Then a mission that fails
and one whose task times out and is retried, so that every stat panel's figure is seen to
start at zero and to move."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import signal
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import nats
import psycopg
import pytest
from prometheus_client.samples import Sample

from aether import prestart
from aether.gitview import create_sample_repository
from aether.stack import SERVICES, Stack
from aether_events import (
    AgentStarted,
    Event,
    MissionCancelled,
    MissionCompleted,
    MissionFailed,
    TaskRetried,
    TaskTimedOut,
)
from aether_llm import MessagesServer, Reply
from aether_llm.offline import respond, start_offline_server
from aether_runtime import tls
from tests.ops.dashboards import queries, stat_panels
from tests.ops.promql import (
    PROMETHEUS_SERIES,
    Selector,
    exported_names,
    groupings,
    selectors,
)
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

# The offline model answers every call (served from this test, with a key the services
# send to it alone), under model ids that make the cost panels move: the planner's tier
# has no price, the agents' tier has one.
UNPRICED_MODEL = "aether-test-unpriced"
PRICED_MODEL = "claude-haiku-5-5"
# Short enough for a task whose agent is frozen to time out within the test; the agents
# beat well inside it, so a working task never does.
HEARTBEAT_TIMEOUT = "10"

# Stat panels whose counted event no mission here can cause, and why. The series must
# still exist at zero from the first scrape.
NOT_MOVED: dict[str, str] = {
    "mission-overview.json: panel 'Merge conflicts (24 h)'": (
        "the offline model writes only the files of its task's scope and the scheduler "
        "never runs tasks with overlapping scopes together, so no merge can conflict"
    ),
}


@dataclass
class Live:
    stack: Stack
    mission_id: str
    # Every service's /metrics: before any mission, after the completed one, and after
    # the failed and the timed-out ones too.
    before: dict[str, str]
    expositions: dict[str, str]
    after: dict[str, str]

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


def gateway(stack: Stack) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        verify=tls.shared(), base_url=stack.gateway_url, headers=stack.auth_headers, timeout=10
    )


async def submit(stack: Stack, repository: Path, requirement: str) -> str:
    async with gateway(stack) as http:
        body = {"repository": str(repository), "requirement": requirement, "auto_approve": True}
        created = await http.post("/missions", json=body)
    assert created.status_code == 202, created.text
    mission_id: str = created.json()["mission_id"]
    return mission_id


async def wait_for(stack: Stack, mission_id: str, *wanted: type[Event]) -> list[str]:
    """Wait until the mission's stream holds every ``wanted`` type (or it ends); the
    types of its events."""
    ended = (MissionCompleted, MissionFailed, MissionCancelled)
    nc = await nats.connect(stack.nats_url)
    try:
        log = await MissionLog(nc, mission_id).start()
        await log.wait_for(
            lambda log: (
                all(log.of_type(cls) for cls in wanted) or any(log.of_type(cls) for cls in ended)
            ),
            timeout=120,
        )
        await log.stop()
        return [type(e).__name__ for e in log.events]
    finally:
        await nc.drain()


async def run_mission(stack: Stack, repository: Path) -> str:
    mission_id = await submit(stack, repository, REQUIREMENT)
    seen = await wait_for(stack, mission_id, MissionCompleted)
    assert "MissionCompleted" in seen, seen
    return mission_id


async def fail_a_mission(stack: Stack, repository: Path) -> None:
    """A mission on a repository that is not there: the broker fails it."""
    mission_id = await submit(stack, repository, "- Add notes/lost.txt")
    seen = await wait_for(stack, mission_id, MissionFailed)
    assert "MissionFailed" in seen, seen


# How long the model takes to answer the agent of the task frozen below: long enough for
# its runner to be stopped while the call is out.
FROZEN_REPLY_SECONDS = 5.0


def slow_for(marker: str) -> Callable[[dict[str, Any]], Reply]:
    """The offline model, answering an agent whose task names ``marker`` slowly."""

    def responder(request: dict[str, Any]) -> Reply:
        reply = respond(request)
        planning = any(tool.get("name") == "submit_plan" for tool in request.get("tools", []))
        if not planning and marker in json.dumps(request.get("messages", [])):
            reply.delay_seconds = FROZEN_REPLY_SECONDS
        return reply

    return responder


async def time_out_a_task(stack: Stack, repository: Path, model: MessagesServer) -> None:
    """A mission whose only task's runner is frozen once it has taken the attempt (the
    scheduler's clock runs from then on, not while an attempt waits for a runner): the
    task times out and is retried; then the mission is cancelled and the runner thawed."""
    runner = stack.processes["agent-runner"].process
    model.responder = slow_for("notes/frozen.txt")
    stopped = False
    try:
        mission_id = await submit(stack, repository, "- Add notes/frozen.txt")
        seen = await wait_for(stack, mission_id, AgentStarted)
        assert "AgentStarted" in seen, seen
        os.killpg(runner.pid, signal.SIGSTOP)
        stopped = True
        seen = await wait_for(stack, mission_id, TaskTimedOut, TaskRetried)
        assert {"TaskTimedOut", "TaskRetried"} <= set(seen), seen
        async with gateway(stack) as http:
            cancelled = await http.post(f"/missions/{mission_id}/cancel", json={"reason": "test"})
        assert cancelled.status_code == 202, cancelled.text
        seen = await wait_for(stack, mission_id, MissionCancelled)
        assert "MissionCancelled" in seen, seen
    finally:
        if stopped:
            os.killpg(runner.pid, signal.SIGCONT)
        model.responder = respond


async def scrape(stack: Stack) -> dict[str, str]:
    async with httpx.AsyncClient(verify=tls.shared(), timeout=10) as http:
        return {
            name: (await http.get(f"{service.url}/metrics")).text
            for name, service in stack.processes.items()
        }


@pytest.fixture(scope="module")
async def live(tmp_path_factory: pytest.TempPathFactory, database_url: str) -> AsyncIterator[Live]:
    home = tmp_path_factory.mktemp("ops-live")
    repository = home / "repo"
    create_sample_repository(repository)
    model = start_offline_server()
    stack = Stack(
        home=home / "stack",
        random_ports=True,
        prestart=prestart.shared(),
        env={
            # The offline model served here: no test ever reaches a real endpoint.
            "ANTHROPIC_API_KEY": "local-offline-model",
            "ANTHROPIC_BASE_URL": model.url,
            "AETHER_MODEL_COMPLEX": UNPRICED_MODEL,  # the planner's tier
            "AETHER_MODEL_STANDARD": PRICED_MODEL,  # the tasks' tier
            "AETHER_HEARTBEAT_TIMEOUT_SECONDS": HEARTBEAT_TIMEOUT,
            "AETHER_AGENT_HEARTBEAT_SECONDS": "1",
            "AETHER_RETRY_BASE_SECONDS": "0.5",
            "DATABASE_URL": await fresh_database(database_url),
        },
    )
    try:
        await asyncio.to_thread(stack.start)
        before = await scrape(stack)
        mission_id = await run_mission(stack, repository)
        expositions = await scrape(stack)
        await fail_a_mission(stack, home / "no-such-repository")
        await time_out_a_task(stack, repository, model)
        after = await scrape(stack)
        yield Live(stack, mission_id, before, expositions, after)
    finally:
        await asyncio.to_thread(stack.stop)
        model.stop()


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


OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def documented_metrics() -> set[str]:
    """Every metric named in the operations guide's table of metrics (its first column)."""
    section = OPERATIONS.read_text().split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for row in section.splitlines():
        if row.startswith("| `aether_"):
            names.update(re.findall(r"`(aether_\w+)`", row.split("|")[1]))
    return names


def exported_aether_metrics(expositions: dict[str, str]) -> set[str]:
    """Every aether_ metric the services export, as queried (counters with ``_total``)."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        family.name + ("_total" if family.type == "counter" else "")
        for text in expositions.values()
        for family in text_string_to_metric_families(text)
        if family.name.startswith("aether_")
        # A counter's creation time, which the parser reads as a gauge of its own (a
        # counter may end in ``_created`` itself: aether_worktrees_created).
        and not (family.name.endswith("_created") and family.type != "counter")
    }


async def test_the_operations_guide_lists_exactly_the_metrics_the_services_export(
    live: Live,
) -> None:
    documented = documented_metrics()
    exported = exported_aether_metrics(live.expositions)
    assert len(documented) > 50
    assert not documented - exported, f"documented, exported by no service: {documented - exported}"
    assert not exported - documented, f"exported, not in {OPERATIONS.name}: {exported - documented}"


# Labels Prometheus gives every series of a target, and the histogram buckets' bound.
TARGET_LABELS = frozenset({"job", "instance"})


async def test_every_label_the_dashboards_and_alerts_use_is_on_the_metric(live: Live) -> None:
    """A matcher or a ``by`` on a label the metric does not carry selects nothing or
    collapses every series into one, and nothing else says so."""
    labels: dict[str, set[str]] = {}
    for text in live.expositions.values():
        for _, sample in parsed(text):
            labels.setdefault(sample.name, set()).update(sample.labels)
    problems: list[str] = []
    for query in queries():
        if query.variable:
            continue
        for selector in selectors(query.expr):
            if selector.name in PROMETHEUS_SERIES or selector.name not in labels:
                continue  # Prometheus's own, or reported missing by the test above
            for label, _, _ in selector.matchers:
                if label not in labels[selector.name] | TARGET_LABELS:
                    problems.append(f"{query.where}: {selector.name} has no label {label!r}")
        for by, names in groupings(query.expr):
            for name in names & set(labels):
                for label in set(by) - labels[name] - TARGET_LABELS:
                    problems.append(f"{query.where}: by ({label}) on {name}, which has no {label}")
    assert not problems, "\n".join(sorted(set(problems)))


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


@functools.cache
def parsed(text: str) -> list[tuple[str, Sample]]:
    """The (family type, sample) of every sample of an exposition, parsed once: the
    parser is pure Python, and the stat panels' check reads each exposition once per
    selector (about 3 s a parse of the five)."""
    from prometheus_client.parser import text_string_to_metric_families

    return [
        (family.type, sample)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def total(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(
        sample.value
        for _, sample in parsed(text)
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


def selected(expositions: dict[str, str], selector: Selector) -> list[tuple[str, float]]:
    """The (type, value) of every sample of every service that ``selector`` selects."""
    return [
        (kind, sample.value)
        for text in expositions.values()
        for kind, sample in parsed(text)
        if selector.matches(sample.name, sample.labels)
    ]


async def test_every_stat_panel_reads_zero_before_anything_happened_and_moves_after(
    live: Live,
) -> None:
    problems: list[str] = []
    stale: list[str] = []
    checked = 0
    for query in stat_panels():
        for selector in selectors(query.expr):
            if selector.name in PROMETHEUS_SERIES:
                continue
            checked += 1
            first = selected(live.before, selector)
            if not first:
                problems.append(f"{query.where}: no {selector} series before the first event")
                continue
            if {kind for kind, _ in first} != {"counter"}:
                continue  # a gauge reads a state; it need only be there
            start = sum(value for _, value in first)
            end = sum(value for _, value in selected(live.after, selector))
            if start != 0:
                problems.append(f"{query.where}: {selector.name} starts at {start}, not 0")
            if query.where in NOT_MOVED:
                if end > start:
                    stale.append(query.where)
            elif not end > start:
                problems.append(f"{query.where}: {selector} did not move ({start} -> {end})")
    assert checked >= 15
    assert not problems, "\n".join(problems)
    assert not stale, f"these panels move now; remove them from NOT_MOVED in {__file__}: {stale}"


async def test_every_service_runs_on_uvloop(live: Live) -> None:
    """uvicorn takes uvloop when it is installed; without it every service would fall
    back to asyncio's own loop, a fifth more CPU a task, and nothing else would say so."""
    for service in SERVICES:
        started = [
            json.loads(line) for line in live.log_lines(service) if '"connected to the bus"' in line
        ]
        assert started, f"{service} logged no start"
        assert {line["event_loop"] for line in started} == {"uvloop"}, service


async def test_the_services_write_their_own_log_files(live: Live) -> None:
    """With nothing to echo them to, no thread of the starting process copies the
    services' lines (a wake-up of it for every line); the files hold them all the same."""
    copying = [t.name for t in threading.enumerate() if t.name.startswith("log-")]
    assert copying == []
    for service in SERVICES:
        assert live.stack.processes[service].process.stdout is None
        assert live.log_lines(service), service


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

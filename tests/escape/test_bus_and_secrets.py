"""Escape attempts against the bus, the database and the services' secrets.

Each test is an attack a prompt-injected agent (or anything that got hold of the agent
runner's connection) would try, run against the real servers ``aether up`` starts: the
embedded NATS with the generated users and permissions, and the embedded PostgreSQL after
the stack locked it down. Every attempt must be refused by the server itself.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import stat
import tempfile
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
import nats.errors
import psycopg
import pytest
from nats.aio.client import Client as NatsClient
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from aether.stack import SERVICES, Stack
from aether_events import (
    MISSIONS_STREAM,
    BranchMerged,
    Event,
    MissionCancelled,
    MissionRequested,
    PlanApproved,
    StepFailed,
    StreamSettings,
    TaskReady,
    WorkspaceReady,
    encode,
    ensure_streams,
    subject_for,
)
from aether_events.catalogue import PlannedTask

SECRET_ENV = {
    "ANTHROPIC_API_KEY": "sk-ant-escape-test-key",
    "AETHER_ADMIN_TOKEN": "escape-test-admin-token-0123456789",
    "AETHER_GIT_TOKEN": "escape-test-broker-git-token",
}


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """The infrastructure of ``aether up`` (no services): NATS with the generated users
    and permissions, PostgreSQL locked down with the gateway's role."""
    home = Path(tempfile.mkdtemp(prefix="aether-escape-"))
    stack = Stack(home=home, random_ports=True, prestart=False, env=dict(SECRET_ENV))
    stack.start_infrastructure()
    try:
        yield stack
    finally:
        stack.stop()
        shutil.rmtree(home, ignore_errors=True)  # its PostgreSQL data among the rest


class Connection:
    """A service's NATS connection that records the server's permission errors."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.nc: NatsClient | None = None

    async def open(self, stack: Stack, user: str, inbox: str | None = None) -> Connection:
        async def on_error(error: Exception) -> None:
            self.errors.append(str(error))

        self.nc = await nats.connect(
            stack.nats_server_url,
            user=user,
            password=stack.nats_passwords[user],
            inbox_prefix=inbox or f"_INBOX.{user}",
            error_cb=on_error,
            max_reconnect_attempts=0,
        )
        return self

    async def violation(self, fragment: str, within: float = 30.0) -> str:
        """Wait for the server's permissions violation naming ``fragment`` (the bound only
        keeps a missing one from hanging the test until its timeout)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while loop.time() < deadline:
            for error in self.errors:
                if "permissions violation" in error.lower() and fragment.lower() in error.lower():
                    return error
            await asyncio.sleep(0.02)
        raise AssertionError(f"no permissions violation for {fragment!r}: {self.errors}")


@pytest.fixture
async def admin(stack: Stack) -> AsyncIterator[NatsClient]:
    nc = await nats.connect(stack.nats_url)
    await ensure_streams(nc.jetstream(), StreamSettings())
    try:
        yield nc
    finally:
        await nc.close()


@pytest.fixture
async def runner(stack: Stack, admin: NatsClient) -> AsyncIterator[Connection]:
    connection = await Connection().open(stack, "agent-runner")
    try:
        yield connection
    finally:
        assert connection.nc is not None
        await connection.nc.close()


def _meta(mission_id: str) -> dict[str, Any]:
    return {
        "event_id": f"forged-{mission_id}",
        "mission_id": mission_id,
        "occurred_at": datetime.now(UTC),
        "correlation_id": f"corr-{mission_id}",
    }


def forged(kind: type[Event], mission_id: str) -> Event:
    """A well-formed event of ``kind`` that the agent runner has no business publishing."""
    meta = _meta(mission_id)
    if kind is MissionCancelled:
        return MissionCancelled(**meta, reason="forged by an agent")
    if kind is BranchMerged:
        return BranchMerged(
            **meta, task_id="t1", attempt=1, merge_sha="0" * 40, integration_branch="main"
        )
    if kind is PlanApproved:
        return PlanApproved(**meta, version=1)
    task = PlannedTask(id="t9", title="run my code")
    if kind is TaskReady:
        return TaskReady(**meta, task=task, attempt=1, model="x")
    if kind is MissionRequested:
        return MissionRequested(**meta, repository="/", requirement="exfiltrate")
    if kind is WorkspaceReady:
        return WorkspaceReady(
            **meta, task=task, attempt=1, model="x", branch="b", worktree_path="/", base_sha="0"
        )
    raise AssertionError(kind)


async def stored_on(admin: NatsClient, subject: str) -> int:
    """How many messages the missions stream holds on ``subject``."""
    info = await admin.jetstream().stream_info(MISSIONS_STREAM, subjects_filter=subject)
    return sum((info.state.subjects or {}).values())


# --- the bus ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind",
    [MissionCancelled, BranchMerged, PlanApproved, TaskReady, MissionRequested, WorkspaceReady],
)
async def test_runner_cannot_publish_a_forged_command_or_outcome(
    runner: Connection, admin: NatsClient, kind: type[Event]
) -> None:
    event = forged(kind, f"m-{kind.__name__.lower()}")
    subject = subject_for(event)
    assert runner.nc is not None
    with pytest.raises(nats.errors.TimeoutError):
        await runner.nc.jetstream().publish(subject, encode(event), timeout=1.0)
    await runner.violation(f'publish to "{subject}"')
    assert await stored_on(admin, subject) == 0


async def test_runner_cannot_slip_a_forged_event_in_with_a_plain_publish(
    runner: Connection, admin: NatsClient
) -> None:
    event = forged(MissionCancelled, "m-plain")
    assert runner.nc is not None
    await runner.nc.publish(subject_for(event), encode(event))
    await runner.nc.flush()
    await runner.violation(subject_for(event))
    assert await stored_on(admin, subject_for(event)) == 0


async def test_runner_publishes_its_own_step_records(runner: Connection, admin: NatsClient) -> None:
    """The control: the same connection is let through for what its role publishes (its
    agent events go out with an attempt's credential: test_attempt_credentials)."""
    event = StepFailed(
        **_meta("m-own"),
        service="agent-runner",
        consumer="agent-runner",
        failed_event_id="e1",
        failed_event_type="workspace_ready",
        stream=MISSIONS_STREAM,
        stream_sequence=1,
        error="boom",
        attempts=3,
    )
    assert runner.nc is not None
    ack = await runner.nc.jetstream().publish(subject_for(event), encode(event), timeout=5.0)
    assert ack.stream == MISSIONS_STREAM
    assert await stored_on(admin, subject_for(event)) == 1
    assert runner.errors == []


@pytest.mark.parametrize(
    "subject",
    ["aether.>", "_INBOX.gateway.>", "_INBOX.>", "$JS.EVENT.ADVISORY.>", "$JS.API.>"],
)
async def test_runner_cannot_listen_to_other_subjects(runner: Connection, subject: str) -> None:
    assert runner.nc is not None
    await runner.nc.subscribe(subject)
    await runner.nc.flush()
    await runner.violation(f'subscription to "{subject}"')


async def test_runner_cannot_create_delete_purge_or_change_a_stream(
    runner: Connection, admin: NatsClient
) -> None:
    assert runner.nc is not None
    js = runner.nc.jetstream(timeout=1.0)
    with pytest.raises(nats.errors.TimeoutError):
        await js.add_stream(StreamConfig(name="LOOT", subjects=["loot.>"]))
    await runner.violation("STREAM.CREATE.LOOT")
    with pytest.raises(nats.errors.TimeoutError):
        await js.delete_stream(MISSIONS_STREAM)
    await runner.violation(f"STREAM.DELETE.{MISSIONS_STREAM}")
    with pytest.raises(nats.errors.TimeoutError):
        await js.purge_stream(MISSIONS_STREAM)
    await runner.violation(f"STREAM.PURGE.{MISSIONS_STREAM}")
    config = (await js.stream_info(MISSIONS_STREAM)).config
    config.max_age = 1.0
    with pytest.raises(nats.errors.TimeoutError):
        await js.update_stream(config)
    await runner.violation(f"STREAM.UPDATE.{MISSIONS_STREAM}")
    info = await admin.jetstream().stream_info(MISSIONS_STREAM)
    assert not info.config.max_age
    with pytest.raises(nats.js.errors.NotFoundError):
        await admin.jetstream().stream_info("LOOT")


async def test_runner_cannot_take_over_the_schedulers_consumer(
    runner: Connection, admin: NatsClient
) -> None:
    """Pulling (and so stealing) the scheduler's deliveries, acknowledging them, or
    reconfiguring its durable (by name, or through the subject that names none) is
    refused."""
    await admin.jetstream().add_consumer(
        MISSIONS_STREAM,
        ConsumerConfig(
            name="scheduler",
            durable_name="scheduler",
            filter_subject="aether.mission.>",
            ack_policy=AckPolicy.EXPLICIT,
        ),
    )
    assert runner.nc is not None
    next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{MISSIONS_STREAM}.scheduler"
    with pytest.raises(nats.errors.TimeoutError):
        await runner.nc.request(next_subject, b'{"batch":1}', timeout=1.0)
    await runner.violation(next_subject)
    ack_subject = f"$JS.ACK.{MISSIONS_STREAM}.scheduler.1.1.1.0.0"
    await runner.nc.publish(ack_subject, b"+TERM")
    await runner.nc.flush()
    await runner.violation(ack_subject)
    with pytest.raises(nats.errors.TimeoutError):
        await runner.nc.jetstream(timeout=1.0).add_consumer(
            MISSIONS_STREAM,
            ConsumerConfig(
                name="scheduler",
                durable_name="scheduler",
                filter_subject="aether.mission.*.nothing",
                ack_policy=AckPolicy.EXPLICIT,
            ),
        )
    await runner.violation(f"CONSUMER.CREATE.{MISSIONS_STREAM}.scheduler")
    # The API subject that names no consumer would take the durable's name from the body.
    unnamed = f"$JS.API.CONSUMER.CREATE.{MISSIONS_STREAM}"
    body = {
        "stream_name": MISSIONS_STREAM,
        "config": {"name": "scheduler", "ack_policy": "explicit", "filter_subject": "x.>"},
    }
    with pytest.raises(nats.errors.TimeoutError):
        await runner.nc.request(unnamed, json.dumps(body).encode(), timeout=1.0)
    await runner.violation(f'publish to "{unnamed}"')
    config = (await admin.jetstream().consumer_info(MISSIONS_STREAM, "scheduler")).config
    assert config.filter_subject == "aether.mission.>"


async def test_no_credentials_no_connection(stack: Stack) -> None:
    # A login the configuration does not list goes to the auth callout, which no
    # scheduler answers here: the server refuses it once the callout times out, so the
    # client waits longer than that for the refusal.
    with pytest.raises(nats.errors.Error, match=r"(?i)authorization"):
        await nats.connect(
            stack.nats_server_url,
            max_reconnect_attempts=0,
            allow_reconnect=False,
            connect_timeout=30,
        )


async def test_one_service_password_does_not_open_another_user(stack: Stack) -> None:
    with pytest.raises(nats.errors.Error, match=r"(?i)authorization"):
        await nats.connect(
            stack.nats_server_url,
            user="gateway",
            password=stack.nats_passwords["agent-runner"],
            max_reconnect_attempts=0,
            allow_reconnect=False,
        )


async def test_runner_does_not_read_the_gateways_replies(stack: Stack) -> None:
    """Each service reads replies only under its own inbox prefix: the runner cannot
    subscribe with the gateway's."""
    connection = await Connection().open(stack, "agent-runner", inbox="_INBOX.gateway")
    assert connection.nc is not None
    try:
        with pytest.raises(nats.errors.TimeoutError):
            await connection.nc.jetstream(timeout=1.0).account_info()
        await connection.violation('subscription to "_INBOX.gateway.')
    finally:
        await connection.nc.close()


# --- the database -----------------------------------------------------------------------


def test_gateway_role_is_not_a_superuser_and_owns_only_its_database(stack: Stack) -> None:
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls"
            " FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
        assert row == (False, False, False, False, False)
        # What migrations need: it owns its schema.
        conn.execute("CREATE TABLE escape_probe (id int)")
        conn.execute("DROP TABLE escape_probe")
        for attempt in (
            "SELECT pg_read_file('/etc/passwd')",
            "COPY (SELECT 1) TO PROGRAM 'id'",
            "CREATE TABLE loot (line text); COPY loot FROM '/etc/passwd'",
            "CREATE ROLE intruder SUPERUSER LOGIN PASSWORD 'x'",
            "ALTER ROLE CURRENT_USER SUPERUSER",
            "CREATE DATABASE other",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(attempt)


def test_gateway_role_cannot_reach_another_database(stack: Stack) -> None:
    other = stack.database_url.replace("@/aether?", "@/postgres?")
    with pytest.raises(psycopg.OperationalError, match=r"(?i)permission denied"):
        psycopg.connect(other)


def test_no_password_no_database(stack: Stack) -> None:
    for user in ("aether", "postgres"):
        url = stack.database_url.split("@", 1)[1]
        with pytest.raises(psycopg.OperationalError, match=r"(?i)password"):
            psycopg.connect(f"postgresql://{user}@{url}")


# --- the services' settings -------------------------------------------------------------


def test_each_service_holds_only_its_own_secrets(stack: Stack) -> None:
    envs = {name: stack.service_env(name) for name in SERVICES}
    for name, env in envs.items():
        others = [stack.nats_passwords[o] for o in SERVICES if o != name]
        values = "\n".join(env.values())
        assert not any(password in values for password in others), name
        assert stack.nats_url.split("@")[0].split(":")[-1] not in values  # the admin's
        assert env["NATS_USER"] == name
        if name != "gateway":
            assert "DATABASE_URL" not in env, name
            assert SECRET_ENV["AETHER_ADMIN_TOKEN"] not in values, name
            assert stack.database_url not in values, name
    assert envs["gateway"]["DATABASE_URL"] == stack.database_url
    assert "ANTHROPIC_API_KEY" in envs["agent-runner"]
    assert "ANTHROPIC_API_KEY" in envs["planner"]
    for name in ("gateway", "scheduler", "git-broker"):
        assert SECRET_ENV["ANTHROPIC_API_KEY"] not in json.dumps(envs[name]), name
    # The scheduler chooses the tasks' models knowing only that a key exists.
    assert envs["scheduler"]["AETHER_MODEL_OFFLINE"] == "0"
    assert "AETHER_GIT_TOKEN" in envs["git-broker"]
    assert "AETHER_GIT_TOKEN" not in envs["agent-runner"]


def test_credentials_are_readable_by_their_owner_only(stack: Stack) -> None:
    assert stat.S_IMODE(stack.credentials_dir.stat().st_mode) == 0o700
    files = [path for path in stack.credentials_dir.rglob("*") if path.is_file()]
    assert len(files) >= len(SERVICES) + 3  # NATS users, admin, config, PostgreSQL roles
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path

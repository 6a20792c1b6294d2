"""The roles table and the NATS permissions derived from it (pure: the escape tests run
them against a real server)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from aether_events import MISSIONS_STREAM, catalogue
from aether_runtime.attempt_auth import AttemptKey, attempt_subjects
from aether_runtime.bus_auth import (
    AUTH_REPLIES,
    AUTH_SUBJECT,
    ISSUER_ENV,
    SYSTEM_ACCOUNT,
    Permissions,
    Secret,
    event_subjects,
    permissions,
    static_authorization,
    system_user_name,
    system_users,
)
from aether_runtime.roles import ROLES, STREAMS

ROOT = Path(__file__).resolve().parents[3]
EVENTS = {
    cls
    for cls in vars(catalogue).values()
    if isinstance(cls, type) and issubclass(cls, catalogue.Event) and cls is not catalogue.Event
}


def constructed(service: str) -> set[str]:
    """Names of the event classes the service's source builds (``Name(**meta, …)`` or
    ``Name(`` at the end of a line)."""
    names = {cls.__name__ for cls in EVENTS}
    found: set[str] = set()
    for path in (ROOT / "services" / service / "src").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(r"(?:=|return|\(|\[|,|^)\s*([A-Z]\w*)\((?:\*\*|\s*$)", text, re.M):
            if match.group(1) in names:
                found.add(match.group(1))
    return found


def test_every_event_type_has_a_publisher() -> None:
    published = set().union(*(role.publishes | role.attempt_publishes for role in ROLES.values()))
    assert {cls.__name__ for cls in EVENTS - published} == set()


@pytest.mark.parametrize("service", sorted(ROLES))
def test_a_service_builds_only_events_its_role_publishes(service: str) -> None:
    built = constructed(service)
    assert built, f"found no events built by {service}: the scan is broken"
    role = ROLES[service]
    allowed = {cls.__name__ for cls in role.publishes | role.attempt_publishes}
    assert built <= allowed, f"{service} builds {sorted(built - allowed)} its role lacks"


def test_the_agent_runner_publishes_agent_events_only_with_an_attempts_credential() -> None:
    runner = permissions(ROLES["agent-runner"])
    events = [s for s in runner.publish_allow if s.startswith("aether.")]
    assert events == event_subjects(ROLES["agent-runner"])
    # Its own user: only its failed steps; the agent and usage events of an attempt go
    # out with that attempt's credential, limited to the attempt's own subjects.
    assert {s.rsplit(".", 1)[1] for s in events} == {"step_failed", "step_recovered"}
    key = AttemptKey("m1", "t1", 2)
    scoped = attempt_subjects(key, ROLES["agent-runner"].attempt_publishes)
    assert {s.split(".")[3] for s in scoped} == {
        "agent_started",
        "agent_progress",
        "agent_heartbeat",
        "transcript_recorded",
        "transcript_entries",
        "agent_completed",
        "agent_failed",
        "usage_recorded",
    }
    assert all(s.split(".")[2::2] == ["m1", "t1"] and s.endswith(".2") for s in scoped)
    assert not any(".STREAM.CREATE." in s or ".STREAM.UPDATE." in s for s in runner.publish_allow)
    assert f"$JS.API.CONSUMER.MSG.NEXT.{MISSIONS_STREAM}.scheduler" in runner.publish_deny
    assert runner.subscribe_allow[0] == "_INBOX.agent-runner.>"


def test_no_service_may_create_a_consumer_through_the_subject_that_names_none() -> None:
    for role in ROLES.values():
        allow = permissions(role).publish_allow
        assert not {f"$JS.API.CONSUMER.CREATE.{stream}" for stream in STREAMS} & set(allow)
        assert f"$JS.API.CONSUMER.CREATE.{MISSIONS_STREAM}.*" in allow


def test_only_the_scheduler_declares_the_streams() -> None:
    declaring = {
        name
        for name, role in ROLES.items()
        if any(".STREAM.UPDATE.AETHER_" in s for s in permissions(role).publish_allow)
    }
    assert declaring == {"scheduler"}


def test_no_service_acknowledges_for_another() -> None:
    for name, role in ROLES.items():
        acks = {s for s in permissions(role).publish_allow if s.startswith("$JS.ACK.")}
        assert acks == {f"$JS.ACK.{stream}.{durable}.>" for stream, durable in role.durables}
        for other in ROLES.values():
            if other is not role:
                assert not acks & {f"$JS.ACK.{s}.{d}.>" for s, d in other.durables}, name


def test_only_the_scheduler_answers_the_servers_authorization_requests() -> None:
    answering = {
        name for name, role in ROLES.items() if AUTH_SUBJECT in permissions(role).subscribe_allow
    }
    assert answering == {"scheduler"}
    assert AUTH_REPLIES in permissions(ROLES["scheduler"]).publish_allow


def test_every_static_user_logs_in_without_the_callout() -> None:
    text = static_authorization()
    callout = text[text.index("auth_callout") : text.index("accounts {")]
    assert f"issuer: ${ISSUER_ENV}" in callout
    assert re.findall(r'"([\w-]+)"', callout) == ["aether", *ROLES, "scheduler-system"]


def test_the_system_account_holds_only_the_schedulers_user_that_may_only_kick() -> None:
    """The one user of the system account (the scheduler's, as the role that authorizes
    attempts): it may ask a server to close a connection and the servers to list the
    global account's connections, and read the answers; nothing else of the system
    account's requests and nothing of Aether's subjects."""
    text = static_authorization()
    accounts = text[text.index("accounts {") :]
    assert f"  {SYSTEM_ACCOUNT}: {{" in accounts
    assert text.rstrip().endswith(f"system_account: {SYSTEM_ACCOUNT}")
    assert re.findall(r'user: "([\w-]+)"', accounts) == ["scheduler-system"]
    (user,) = system_users({"scheduler-system": Secret("pw")})
    assert user.permissions == Permissions(
        publish_allow=("$SYS.REQ.SERVER.*.KICK", "$SYS.REQ.ACCOUNT.$G.CONNZ"),
        subscribe_allow=("_INBOX.scheduler-system.>",),
    )
    assert [u.name for u in system_users({"scheduler-system": Secret("pw")})] == [
        system_user_name(role) for role in ROLES.values() if role.authorizes_attempts
    ]


def test_static_configuration_reads_every_password_from_the_environment() -> None:
    text = static_authorization()
    assert re.findall(r"password: (\S+)", text) == [
        "$NATS_PASSWORD_ADMIN",
        *(f"$NATS_PASSWORD_{name.upper().replace('-', '_')}" for name in ROLES),
        "$NATS_PASSWORD_SCHEDULER_SYSTEM",
    ]

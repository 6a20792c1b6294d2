"""``request_mission``: the event a mission request becomes, given / when / then."""

from __future__ import annotations

from datetime import UTC, datetime

from aether_events import mission_id_for, step_event_id, step_ids
from aether_gateway.api.bodies import CreateMission
from aether_gateway.domain.commands import request_mission

NOW = datetime(2026, 2, 1, tzinfo=UTC)
FRESH = ("m-0123456789abcdef", "e-fresh")


def requested(body: CreateMission, key: str | None, caller: str = "alice", **kw):
    return request_mission(
        body,
        caller_id=caller,
        caller_name=caller.title(),
        idempotency_key=key,
        now=NOW,
        fresh_ids=FRESH,
        **kw,
    )


def test_without_a_key_the_mission_takes_fresh_ids_and_correlates_to_itself() -> None:
    event = requested(CreateMission(repository="  /srv/repo \n", requirement="add x"), None)
    assert (event.mission_id, event.event_id) == FRESH
    assert event.correlation_id == event.event_id
    assert event.causation_id is None
    assert event.occurred_at == NOW
    assert event.repository == "/srv/repo"  # stray whitespace around a path is dropped
    assert event.requirement == "add x"
    assert event.requested_by == "Alice"


def test_with_a_key_two_copies_of_the_request_are_one_mission() -> None:
    body = CreateMission(repository="/r", requirement="add x")
    first, second = requested(body, "k-1"), requested(body, "k-1")
    assert first.mission_id == mission_id_for("alice", "k-1")
    assert first.event_id == step_event_id(first.mission_id, step_ids.mission_requested())
    assert (second.mission_id, second.event_id) == (first.mission_id, first.event_id)
    assert first.mission_id != FRESH[0]


def test_the_same_key_from_two_callers_is_two_missions() -> None:
    body = CreateMission(repository="/r", requirement="add x")
    assert requested(body, "k-1", "alice").mission_id != requested(body, "k-1", "bob").mission_id


def test_every_option_of_the_request_is_carried_into_the_event() -> None:
    body = CreateMission(
        repository="/r",
        requirement="add x",
        base_branch="develop",
        budget_usd=2.5,
        auto_approve=True,
        max_concurrency=3,
        max_tasks=7,
        model_overrides={"small": "haiku"},
        verify_command="make test",
        allow_file_overlap=True,
    )
    event = requested(body, None)
    assert (event.base_branch, event.budget_usd, event.auto_approve) == ("develop", 2.5, True)
    assert (event.max_concurrency, event.max_tasks) == (3, 7)
    assert event.model_overrides == {"small": "haiku"}
    assert event.verify_command == "make test"
    assert event.allow_file_overlap is True


def test_a_request_without_a_budget_gets_the_default_and_an_explicit_one_wins() -> None:
    bare = CreateMission(repository="/r", requirement="x")
    assert requested(bare, None).budget_usd is None
    assert requested(bare, None, default_budget_usd=5.0).budget_usd == 5.0
    capped = CreateMission(repository="/r", requirement="x", budget_usd=1.25)
    assert requested(capped, None, default_budget_usd=5.0).budget_usd == 1.25

"""The rules every service shares: step ids, the cost arithmetic, the status fold."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from aether_events import (
    TIERS,
    ZERO_USAGE,
    MissionPaused,
    MissionProgress,
    MissionResumed,
    PlanApproved,
    Usage,
    add_cost,
    advance,
    as_tier,
    derived_id,
    keyed_id,
    mission_id_for,
    new_mission_id,
    phase_of,
    public_step_event_id,
    service_id_key,
    step_event_id,
    step_ids,
    use_event_id_key,
)

# Each constructor must keep naming its step exactly as before it existed: the ids of
# stored events depend on it.
PINNED = [
    (step_ids.plan_approved(3), ("plan_approved", 3)),
    (step_ids.task_ready("t1", 2), ("task_ready", "t1", 2)),
    (step_ids.mission_failed(), ("mission_failed",)),
    (step_ids.mission_failed("git-broker"), ("mission_failed", "git-broker")),
    (step_ids.budget_exceeded("mission", 5.0), ("budget_exceeded", "mission", 5.0)),
    (step_ids.budget_exceeded("day"), ("budget_exceeded", "day")),
    (step_ids.budget_raised(7), ("budget_raised", "7.0")),
    (step_ids.agent_usage("t1", 1, 4), ("usage", "agent", "t1", 1, 4)),
    (step_ids.planner_outcome("e1"), ("planner-outcome", "e1")),
    (step_ids.step_failed("s", "c", "e", "r"), ("step_failed", "s", "c", "e", "r")),
    (step_ids.mission_message("u-1", "k-1"), ("message", "u-1", "k-1")),
]


@pytest.mark.parametrize(("step", "parts"), PINNED)
def test_a_step_names_the_same_id_as_the_bare_parts_it_replaced(
    step: step_ids.Step, parts: tuple[object, ...]
) -> None:
    assert public_step_event_id("m-1", step) == derived_id("m-1", *parts)
    assert step_event_id("m-1", step) == derived_id("m-1", *parts)  # no key in this process


# The services' own events are stored under their step's id keyed with the key of the
# deployment's event id secret (decision 0031): the step tuples are unchanged, the ids
# stored for them changed with that decision, once. These pin the key's derivation and
# the keyed ids of one secret.
SERVICE_SECRET = "a-secret-of-sixteen-or-more"
PINNED_SERVICE_KEY = "8a79b1e63253613ef312b0ffbae8a4b9147a75399eb727b9859458b199252755"
PINNED_SERVICE_KEYED = [
    (step_ids.plan_approved(1), "05102d8be36f891dbdf5097f64daec4a"),
    (step_ids.task_ready("t1", 1), "b83da95dd2b58a0eb7c0e16bb1eb5627"),
    (step_ids.mission_completed(), "2a7646c7e96d85989b37efdf782d45f0"),
    (step_ids.mission_message("u-1", "k-1"), "89ed2c37662980bea9b3fb8a75fdb105"),
]


@pytest.fixture
def service_key() -> Iterator[bytes]:
    """This process keyed as a service of the deployment whose secret is SERVICE_SECRET."""
    key = service_id_key(SERVICE_SECRET)
    use_event_id_key(key)
    try:
        yield key
    finally:
        use_event_id_key(None)


def test_the_services_key_is_derived_from_the_secret_for_its_own_use() -> None:
    assert service_id_key(SERVICE_SECRET).hex() == PINNED_SERVICE_KEY


@pytest.mark.parametrize(("step", "stored"), PINNED_SERVICE_KEYED)
def test_a_services_step_is_stored_under_its_id_keyed_with_the_services_key(
    service_key: bytes, step: step_ids.Step, stored: str
) -> None:
    public = public_step_event_id("m-1", step)
    assert step_event_id("m-1", step) == keyed_id(service_key, public) == stored
    assert stored != public


# An attempt's own events (``ATTEMPT_TYPES``) are stored under their step's id keyed with
# the attempt's key (decision 0030): the step tuples above are unchanged, but the ids
# stored for those steps changed with that decision, once. These pin the keyed ids of
# one key, so that a change of the keyed derivation fails here, not in a stream.
ATTEMPT_KEY = bytes(range(32))
PINNED_KEYED = [
    (step_ids.agent_started("t1", 1), "c259fe49a32c8b6b81a7560ad9b5e4c2"),
    (step_ids.agent_usage("t1", 1, 4), "22a13f30346382b69b18181d5f265bf7"),
]


@pytest.mark.parametrize(("step", "stored"), PINNED_KEYED)
def test_an_attempts_step_is_stored_under_its_id_keyed_with_the_attempts_key(
    step: step_ids.Step, stored: str
) -> None:
    assert keyed_id(ATTEMPT_KEY, public_step_event_id("m-1", step)) == stored


def test_mission_ids_have_one_format() -> None:
    for mission_id in (new_mission_id(), mission_id_for("principal", "key")):
        assert mission_id.startswith("m-") and len(mission_id) == 18
    assert mission_id_for("p", "k") == mission_id_for("p", "k") != mission_id_for("p", "k2")


def test_tiers_are_listed_once_cheapest_first() -> None:
    assert TIERS == ("small", "standard", "complex")
    assert as_tier("standard") == "standard"
    assert as_tier("huge") is None


def test_a_sum_adds_the_known_costs_and_says_when_one_was_unknown() -> None:
    priced, unpriced = Usage(input_tokens=10, cost_usd=0.25), Usage(input_tokens=5)
    total = ZERO_USAGE.plus(priced).plus(unpriced).plus(priced)
    assert (total.input_tokens, total.cost_usd, total.cost_complete) == (25, 0.5, False)
    assert not total.cost_known
    # Order does not matter, and an unknown part never erases the known spend.
    assert unpriced.plus(priced).cost_usd == 0.25
    assert ZERO_USAGE.plus(priced).cost_known
    assert add_cost(None, True, unpriced) == (None, False)
    assert add_cost(1.0, True, priced) == (1.25, True)


def test_usage_from_before_the_completeness_flag_still_decodes_as_unknown() -> None:
    import msgspec

    old = msgspec.json.decode(b'{"input_tokens": 3, "cost_usd": null}', type=Usage)
    assert old.cost_complete and not old.cost_known


def _meta(n: int) -> dict[str, object]:
    return {
        "event_id": f"e{n}",
        "mission_id": "m-1",
        "occurred_at": datetime(2026, 1, 1, tzinfo=UTC),
        "correlation_id": "c",
    }


def test_a_paused_mission_stays_paused_through_an_approval_and_resumes_running() -> None:
    progress = MissionProgress(status="awaiting_approval", prepared=True, plan_version=1)
    progress = advance(progress, MissionPaused(**_meta(1)))
    progress = advance(progress, PlanApproved(**_meta(2), version=1, automatic=True))
    assert progress.status == "paused" and progress.approved_version == 1
    progress = advance(progress, MissionResumed(**_meta(3)))
    assert progress.status == "running"
    assert phase_of(progress.status) == "active"
    assert phase_of("awaiting_approval") == "planning"
    assert phase_of("answered") == "completed"

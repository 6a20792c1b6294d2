"""Given a step that failed this way, then the broker answers with this (``failures``)."""

from __future__ import annotations

import pytest

from aether_events import MissionFailed, WorkspaceFailed, step_event_id, step_ids
from aether_git_broker.domain import (
    PUSH_ATTEMPTS,
    DiskFailed,
    Refused,
    after_push_failure,
    decide,
    failure_event,
)

from .test_domain import NAMING, NOW, PREPARED, completed, given, requested, task_ready


def test_a_repository_that_refuses_preparation_fails_the_mission() -> None:
    event = requested()
    action = decide(given(event), event, NAMING)
    failed = failure_event(event, action, Refused("not a git repository"), NOW)
    assert isinstance(failed, MissionFailed)
    assert failed.reason == "not a git repository"
    assert failed.causation_id == event.event_id
    assert failed.event_id == step_event_id(event.mission_id, step_ids.mission_failed("git-broker"))


def test_a_refused_workspace_or_merge_fails_the_whole_mission_once() -> None:
    ready, done = task_ready(), completed()
    state = given(requested(), PREPARED, ready)
    on_ready = failure_event(ready, decide(state, ready, NAMING), Refused("unsafe path"), NOW)
    state = given(requested(), PREPARED, ready, done)
    on_merge = failure_event(done, decide(state, done, NAMING), Refused("bad object"), NOW)
    assert isinstance(on_ready, MissionFailed) and isinstance(on_merge, MissionFailed)
    # Whatever step failed it, the broker fails a mission with one id: published once.
    assert on_ready.event_id == on_merge.event_id


def test_a_full_disk_fails_only_the_attempt_and_the_task_may_run_again() -> None:
    ready = task_ready("t2", attempt=3)
    action = decide(given(requested(), PREPARED, ready), ready, NAMING)
    failed = failure_event(ready, action, DiskFailed("No space left on device"), NOW)
    assert isinstance(failed, WorkspaceFailed)
    assert failed.retryable
    assert (failed.task_id, failed.attempt) == ("t2", 3)
    assert failed.reason == (
        f"could not create the worktree {NAMING.worktree_path('m-1', 't2', 3)}: "
        "No space left on device"
    )


def test_a_disk_failure_outside_a_workspace_decides_nothing_and_is_redelivered() -> None:
    event = requested()
    action = decide(given(event), event, NAMING)
    assert failure_event(event, action, DiskFailed("EIO"), NOW) is None


@pytest.mark.parametrize("deliveries", range(1, PUSH_ATTEMPTS))
def test_a_failed_push_is_retried_before_its_last_delivery(deliveries: int) -> None:
    assert after_push_failure(deliveries) == "retry"


@pytest.mark.parametrize("deliveries", [PUSH_ATTEMPTS, PUSH_ATTEMPTS + 5])
def test_a_push_failing_on_its_last_delivery_is_given_up(deliveries: int) -> None:
    assert after_push_failure(deliveries) == "give_up"

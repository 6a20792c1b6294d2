"""Which attempts the scheduler grants credentials for: those it handed out and that
have not ended (``app.attempt_open``, read by the authorizer on every connection)."""

from __future__ import annotations

import pytest

from aether_events import MissionCancelled, MissionFailed
from aether_runtime.attempt_auth import AttemptKey
from aether_scheduler.app import attempt_open

from .scenario import Scenario, task


def test_an_attempt_is_open_from_its_dispatch_until_it_ends() -> None:
    s = Scenario()
    s.start(task("a"), task("b", "a"))
    first = AttemptKey(s.mission_id, "a", s.attempt("a"))
    assert attempt_open(s.state, first)  # ready: the runner may ask before it starts
    s.started("a")
    assert attempt_open(s.state, first)
    # Not the task that is not ready yet, not another attempt, not another mission.
    assert not attempt_open(s.state, AttemptKey(s.mission_id, "b", 1))
    assert not attempt_open(s.state, AttemptKey(s.mission_id, "a", first.attempt + 1))
    assert not attempt_open(s.state, AttemptKey("m-other", "a", first.attempt))
    s.failed("a")
    assert not attempt_open(s.state, first)
    s.tick(3600)  # the retry is handed out: a new attempt, open in its turn
    second = AttemptKey(s.mission_id, "a", s.attempt("a"))
    assert second.attempt == first.attempt + 1
    assert attempt_open(s.state, second)
    s.completed("a")
    assert not attempt_open(s.state, second)


@pytest.mark.parametrize("ending", ["cancelled", "failed"])
def test_an_ended_missions_attempts_are_not_open(ending: str) -> None:
    """A mission cancelled (or failed) while its attempts run: its runners are told to
    stop, and no attempt of it is open from then on (no credential is granted or
    renewed, and their connections are cut), though no runner has reported yet."""
    s = Scenario()
    s.start(task("a"), task("b"))
    s.started("a")
    running = AttemptKey(s.mission_id, "a", s.attempt("a"))
    ready = AttemptKey(s.mission_id, "b", s.attempt("b"))
    assert attempt_open(s.state, running) and attempt_open(s.state, ready)
    if ending == "cancelled":
        s.when(MissionCancelled(**s.meta(), reason="not needed"))
    else:
        s.when(MissionFailed(**s.meta(), reason="a person gave up on it"))
    assert s.status("a") == "running" and s.status("b") == "ready"
    assert not attempt_open(s.state, running)
    assert not attempt_open(s.state, ready)

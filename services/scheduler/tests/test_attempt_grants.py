"""Which attempts the scheduler grants credentials for: those it handed out and that
have not ended (``app.attempt_open``, read by the authorizer on every connection)."""

from __future__ import annotations

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

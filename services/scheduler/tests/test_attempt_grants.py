"""Which attempts the scheduler grants credentials for: those it handed out and that
have not ended (``app.attempt_open``, read by the authorizer on every connection), and,
for a grace after their mission ended, those a runner held already and that have not
reported their stop (``app.attempt_stopping``)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from aether_events import Event, EventPublisher, MissionCancelled, MissionFailed
from aether_runtime import Projection
from aether_runtime.attempt_auth import AttemptKey
from aether_runtime.bus_auth import new_issuer_seed
from aether_scheduler.app import attempt_credentials, attempt_open
from aether_scheduler.config import SchedulerSettings
from aether_scheduler.domain import State, evolve
from aether_scheduler.handlers import Handlers

from .scenario import CONFIG, Scenario, task


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


class Granting:
    """The scheduler's authorizer over a scenario's state (``app.attempt_credentials``),
    its wall clock in the test's hands, with a grace of ``GRACE`` seconds."""

    GRACE = 15.0

    def __init__(self) -> None:
        self.s = Scenario()
        self.now = self.s.now
        self.projection: Projection[State] = Projection(State(), evolve)
        settings = SchedulerSettings.from_env(
            {
                "AETHER_ATTEMPT_ISSUER_SEED": new_issuer_seed(),
                "AETHER_RUNNER_MASTER_SECRET": "m" * 32,
                "AETHER_ATTEMPT_STOP_GRACE_SECONDS": str(self.GRACE),
            }
        )
        handlers = Handlers(self.projection, lambda: EventPublisher(None), CONFIG)  # type: ignore[arg-type]
        made = attempt_credentials(self.projection, settings, handlers, clock=lambda: self.now)
        assert made is not None and made[1] is None  # no system password: nothing cut
        self.grants = made[0].grants

    def when(self, event: Event) -> None:
        self.s.when(event)
        self.projection.state = self.s.state

    def claim(self, key: AttemptKey, runner: str = "r1", after: float = 0.0) -> str | None:
        """The grant ``after`` seconds from the mission's end (or from now, before it)."""
        at = self.s.now + timedelta(seconds=after)
        self.now = at
        return self.grants.claim(key, runner, at.timestamp(), ttl=120.0)


def test_a_cancelled_missions_running_attempt_is_renewed_for_the_grace_only() -> None:
    """A mission cancelled while an attempt runs: its runner, told to stop, still has
    its last usage and its stop report to publish. Its credential is renewed (a
    reconnection, an expiry) for the grace after the cancel, counted from the cancel's
    own time; not for another runner, and not after the grace."""
    g = Granting()
    g.s.start(task("a"))
    g.s.started("a")
    g.projection.state = g.s.state
    running = AttemptKey(g.s.mission_id, "a", g.s.attempt("a"))
    assert g.claim(running) is None
    g.when(MissionCancelled(**g.s.meta(), reason="not needed"))
    assert not attempt_open(g.projection.state, running)
    assert g.claim(running, after=1.0) is None
    assert g.claim(running, after=g.GRACE - 0.5) is None
    assert g.claim(running, runner="r2", after=2.0) == "the attempt is not open"
    assert g.claim(running, after=g.GRACE) == "the attempt is not open"
    # Refused once, forgotten: not granted again, even were the clock to go back.
    assert g.claim(running, after=1.0) == "the attempt is not open"


def test_a_cancelled_missions_attempt_that_reported_is_refused_at_once() -> None:
    """Its stop report folded within the grace, the attempt has ended: no renewal."""
    g = Granting()
    g.s.start(task("a"))
    g.s.started("a")
    g.projection.state = g.s.state
    running = AttemptKey(g.s.mission_id, "a", g.s.attempt("a"))
    assert g.claim(running) is None
    g.when(MissionCancelled(**g.s.meta(), reason="not needed"))
    assert g.claim(running, after=1.0) is None
    g.s.failed("a", retryable=False, reason="the mission was cancelled")
    g.projection.state = g.s.state
    assert g.claim(running, after=2.0) == "the attempt is not open"


def test_a_cancelled_missions_new_attempt_is_refused_at_once() -> None:
    """An attempt no runner had asked for before the mission ended (ready, its runner
    not there yet) is not granted, within the grace or after it."""
    g = Granting()
    g.s.start(task("a"), task("b"))
    g.projection.state = g.s.state
    waiting = AttemptKey(g.s.mission_id, "b", g.s.attempt("b"))
    held = AttemptKey(g.s.mission_id, "a", g.s.attempt("a"))
    assert g.claim(held) is None
    g.when(MissionFailed(**g.s.meta(), reason="a person gave up on it"))
    assert g.claim(waiting, after=0.1) == "the attempt is not open"
    # The one a runner held, ready still (its start not folded yet), is renewed.
    assert g.claim(held, after=0.1) is None

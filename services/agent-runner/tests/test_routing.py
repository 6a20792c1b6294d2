"""Where an attempt on a runtime the runner lacks goes (``domain.routing``): on to a live
runner that has it, and failed only once no live runner has had it for the registry's
entry age, with a reason naming the runtime and what the runners have."""

from __future__ import annotations

from aether_agent_runner.domain.routing import (
    HAND_BACK_MAX_SECONDS,
    Absences,
    HandOn,
    Missing,
    hand_back_delay,
    route,
)

PATIENCE = 30.0
RUNNERS = {"me": ["builtin"], "r2": ["builtin", "codex"], "r3": ["codex"]}


def test_an_attempt_goes_on_to_the_runners_that_have_its_runtime() -> None:
    where = route("codex", RUNNERS, "me", Absences.empty(), 0.0, PATIENCE, 1)

    assert where == HandOn(("r2", "r3"), hand_back_delay(1))


def test_the_runner_itself_does_not_count_as_having_the_runtime() -> None:
    # Its entry says it has the runtime, yet it could not run it: nobody else has it.
    runners = {"me": ["builtin", "codex"], "r2": ["builtin"]}
    absences = Absences.empty()

    assert route("codex", runners, "me", absences, 0.0, PATIENCE, 1) == HandOn((), 0.25)
    assert isinstance(route("codex", runners, "me", absences, 29.0, PATIENCE, 9), HandOn)
    assert isinstance(route("codex", runners, "me", absences, 30.0, PATIENCE, 10), Missing)


def test_a_runtime_no_live_runner_has_fails_only_after_the_entry_age() -> None:
    runners = {"me": ["builtin"], "r2": ["builtin", "claude-code"]}
    absences = Absences.empty()
    looks = [
        route("codex", runners, "me", absences, float(t), PATIENCE, 5) for t in range(0, 30, 4)
    ]

    assert all(isinstance(where, HandOn) and where.runners == () for where in looks)
    # Never waiting past the patience: the last hand-back comes back as it runs out.
    assert [where.delay for where in looks if isinstance(where, HandOn)][-1] <= 2.0
    failed = route("codex", runners, "me", absences, 30.0, PATIENCE, 12)
    assert failed == Missing(
        "no live agent runner has the runtime 'codex' (waited 30 s for one); the live "
        "runners have: builtin (me, r2); claude-code (r2)"
    )


def test_a_runner_restarting_within_the_entry_age_is_not_taken_for_gone() -> None:
    absences = Absences.empty()
    gone = {"me": ["builtin"]}
    back = {"me": ["builtin"], "r2-new": ["codex"]}

    assert route("codex", gone, "me", absences, 0.0, PATIENCE, 1).runners == ()  # type: ignore[union-attr]
    assert route("codex", back, "me", absences, 20.0, PATIENCE, 2) == HandOn(("r2-new",), 0.5)
    # Gone again: the wait starts over rather than counting the time it was there.
    for t in (25.0, 40.0, 54.0):
        assert isinstance(route("codex", gone, "me", absences, t, PATIENCE, 3), HandOn)
    assert isinstance(route("codex", gone, "me", absences, 55.0, PATIENCE, 4), Missing)


def test_an_absence_nobody_watched_starts_over() -> None:
    # Seen missing once, then not looked at for longer than the patience: what happened
    # meanwhile is unknown, so the wait begins again rather than failing at once.
    absences = Absences.empty()
    route("codex", {}, "me", absences, 0.0, PATIENCE, 1)

    later = route("codex", {}, "me", absences, 100.0, PATIENCE, 1)

    assert isinstance(later, HandOn)
    assert isinstance(route("codex", {}, "me", absences, 130.0, PATIENCE, 1), Missing)


def test_an_unreadable_registry_bounds_the_wait_too() -> None:
    absences = Absences.empty()

    assert isinstance(route("codex", None, "me", absences, 0.0, PATIENCE, 1), HandOn)
    failed = route("codex", None, "me", absences, 30.0, PATIENCE, 2)

    assert isinstance(failed, Missing)
    assert failed.reason.endswith("the registry of runners could not be read")
    no_one = route("codex", {}, "me", Absences.empty(), 0.0, 0.0, 1)
    assert isinstance(no_one, Missing) and no_one.reason.endswith("no runner has announced itself")


def test_hand_backs_grow_from_a_quarter_second_to_a_bound() -> None:
    delays = [hand_back_delay(n) for n in range(1, 10)]

    assert delays[:5] == [0.25, 0.5, 1.0, 2.0, 4.0]
    assert delays[5:] == [HAND_BACK_MAX_SECONDS] * 4
    assert hand_back_delay(10_000) == HAND_BACK_MAX_SECONDS
    assert hand_back_delay(0) == 0.25

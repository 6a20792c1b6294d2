"""The indexes ``evolve`` keeps beside the tasks (by status, startable, undone counts, wave
members, live missions) always say what a scan of every task would say, over the same
random task graphs and histories as the property tests."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aether_events import MissionCancelled, PlannedTask
from aether_scheduler.domain import Config, MissionState, State, next_timer
from aether_scheduler.domain.model import DONE, IN_FLIGHT, TRACKED, changed

from .scenario import Scenario, task
from .test_properties import ACT, EXAMPLES, _act, actions, configs, graphs, pick

NOW_AND_THEN = st.integers(0, 49)


def scanned(m: MissionState) -> dict[str, Any]:
    tasks = m.tasks

    def deps_done(t: Any) -> bool:
        return all(tasks[d].status in DONE for d in t.spec.depends_on if d in tasks)

    ranked = sorted(tasks.values(), key=lambda t: (-t.spec.priority, t.wave, t.order))
    waves = {t.wave for t in tasks.values()}
    return {
        "tracked": {s: {t.spec.id for t in tasks.values() if t.status == s} for s in TRACKED},
        "startable": {t.spec.id for t in tasks.values() if t.status == "pending" and deps_done(t)},
        "undone": sum(1 for t in tasks.values() if t.status not in DONE),
        "undone_in_wave": {
            w: sum(1 for t in tasks.values() if t.wave == w and t.status not in DONE) for w in waves
        },
        "wave_tasks": {w: [t.spec.id for t in ranked if t.wave == w] for w in waves},
        "reserving_outside_flight": [
            t.spec.id for t in tasks.values() if t.reserved_usd and t.status not in IN_FLIGHT
        ],
    }


def indexed(m: MissionState) -> dict[str, Any]:
    waves = {t.wave for t in m.tasks.values()}
    return {
        "tracked": {s: set(m.with_status(s)) for s in TRACKED},
        "startable": set(m.startable),
        "undone": m.undone,
        "undone_in_wave": {w: m.undone_in_wave.get(w, 0) for w in waves},
        "wave_tasks": {w: list(m.wave_tasks.get(w, ())) for w in waves},
        "reserving_outside_flight": [],
    }


def assert_agree(state: State) -> None:
    for m in state.missions.values():
        assert indexed(m) == scanned(m)
    assert list(state.live) == [i for i, m in state.missions.items() if not m.terminal]


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tasks=graphs(),
    config=configs(),
    concurrency=st.integers(1, 3),
    budget=st.one_of(st.none(), st.floats(0.5, 6.0)),
    data=st.data(),
)
def test_indexes_match_a_scan_of_every_task_after_every_step(
    tasks: list[PlannedTask], config: Config, concurrency: int, budget: float | None, data: Any
) -> None:
    s = Scenario(config=config)
    s.start(*tasks, max_concurrency=concurrency, budget_usd=budget)
    assert_agree(s.state)
    for _ in range(200):
        if s.state.missions[s.mission_id].terminal:
            break
        possible = actions(s)
        if possible and data.draw(ACT) > 0:
            verb, tid = pick(data, possible)
            _act(s, verb, tid, data)
        elif data.draw(NOW_AND_THEN) == 0:
            s.when(MissionCancelled(**s.meta(), reason="changed my mind"))
        else:
            due = next_timer(s.state, s.config)
            if due is None and not possible:
                break
            s.tick(30.0 if due is None else max(0.0, (due - s.now).total_seconds()))
        assert_agree(s.state)


def test_a_state_built_from_missions_knows_which_are_live() -> None:
    open_, cancelled = Scenario("m-open"), Scenario("m-cancelled")
    open_.start(task("a"))
    cancelled.start(task("a"))
    cancelled.when(MissionCancelled(**cancelled.meta(), reason="no"))
    state = State(missions={**open_.state.missions, **cancelled.state.missions})
    assert list(state.live) == ["m-open"]
    assert_agree(state)


def test_a_change_names_only_fields_the_record_has() -> None:
    with pytest.raises(TypeError, match="no_such_field"):
        changed(State(), no_such_field=1)
    assert changed(State(), daily_spent={"d": 1.0}).daily_spent == {"d": 1.0}

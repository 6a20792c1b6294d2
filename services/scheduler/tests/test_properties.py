"""Properties of the scheduler over random task graphs and random, causally valid histories.

A simulated world answers the scheduler's TaskReady decisions with agents that start,
spend, finish, fail or go silent, merges that succeed or conflict, and people who retry
or skip escalated tasks, in an order hypothesis chooses. After every step the invariants
are checked against the state each decision was made in.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import event as note
from hypothesis import strategies as st

from aether_events import (
    BudgetRaised,
    Event,
    MissionCancelled,
    PlannedTask,
    TaskReady,
    TaskRetryRequested,
    TaskSkipped,
)
from aether_scheduler.domain import Config, State, evolve, next_timer
from aether_scheduler.domain.model import DONE, IN_FLIGHT

from .scenario import Scenario

FILES = ["a.py", "b.py", "src/", "src/c.py", "docs/d.md"]
EXAMPLES = 400
MOST_TASKS = 7

# Every strategy an example draws from is built once, here: hypothesis builds, validates
# and looks up a strategy each time one is made, about two fifths of these tests' CPU
# when each task of each graph and each step of each history made its own. The draws
# are the same (``sampled_from`` draws an index as ``integers`` does), so are the examples.
TASK_IDS = [f"t{i}" for i in range(MOST_TASKS)]
TASK_COUNT = st.integers(1, MOST_TASKS)
DEPENDENCIES = [st.lists(st.sampled_from(TASK_IDS[:i]), unique=True) for i in range(1, MOST_TASKS)]
TASK_FILES = st.lists(st.sampled_from(FILES), max_size=2, unique=True)
TIERS = st.sampled_from(["small", "standard", "complex"])
PRIORITIES = st.integers(0, 2)
ACT = st.integers(0, 9)  # anything but 0: someone acts, if anyone can
RARELY = st.sampled_from(range(100))
SPENDS = st.sampled_from([0.0, 0.3, 1.2])
_PICKS: dict[int, st.SearchStrategy[int]] = {}


def pick(data: Any, choices: list[tuple[str, str]]) -> tuple[str, str]:
    """``data.draw(st.sampled_from(choices))``, with one strategy per number of choices
    (and, as ``sampled_from`` of one element, no draw when there is one)."""
    if len(choices) == 1:
        return choices[0]
    picks = _PICKS.get(len(choices))
    if picks is None:
        picks = _PICKS[len(choices)] = st.integers(0, len(choices) - 1)
    return choices[data.draw(picks)]


@st.composite
def graphs(draw: st.DrawFn) -> list[PlannedTask]:
    n = draw(TASK_COUNT)
    tasks = []
    for i in range(n):
        deps = draw(DEPENDENCIES[i - 1]) if i else []
        tasks.append(
            PlannedTask(
                id=TASK_IDS[i],
                title=f"task {i}",
                files=draw(TASK_FILES),
                depends_on=deps,
                tier=draw(TIERS),
                priority=draw(PRIORITIES),
            )
        )
    return tasks


def configs() -> st.SearchStrategy[Config]:
    return st.builds(
        Config,
        tier_models=st.just({"small": "s", "standard": "m", "complex": "l"}),
        max_attempts=st.integers(1, 3),
        global_concurrency=st.integers(1, 5),
        estimate_usd=st.just({"small": 0.1, "standard": 1.0, "complex": 2.0}),
        retry_base_seconds=st.just(10.0),
        heartbeat_timeout_seconds=st.just(60.0),
    )


def check(before: State, decided: list[Event], mission_id: str, budget_seen: list[str]) -> None:
    """Each decision against the state it was made in."""
    state = before
    for event in decided:
        m = state.missions[mission_id]
        if isinstance(event, TaskReady):
            tid = event.task.id
            deps = m.tasks[tid].spec.depends_on
            assert all(m.tasks[d].status in DONE for d in deps), f"{tid} before its dependencies"
            key = f"{tid}/{event.attempt}"
            assert key not in budget_seen, f"{key} started twice"
            budget_seen.append(key)
            if m.budget_usd is not None:
                committed = m.spent_usd + m.reserved_usd + (event.estimated_cost_usd or 0.0)
                assert committed <= m.budget_usd + 1e-9, "reserved plus spent passes the budget"
        state = evolve(state, event)
        m = state.missions[mission_id]
        running = sum(1 for t in m.tasks.values() if t.status in IN_FLIGHT)
        assert running <= m.request.max_concurrency, "mission concurrency exceeded"


HUMAN = {"retry", "skip", "raise"}


def actions(s: Scenario, people_may_act: bool = True) -> list[tuple[str, str]]:
    m = s.state.missions[s.mission_id]
    out: list[tuple[str, str]] = []
    for tid, t in sorted(m.tasks.items()):
        if t.status == "ready":
            out += [("start", tid), ("silence", tid)]
        elif t.status == "running":
            out += [
                ("spend", tid),
                ("complete", tid),
                ("fail", tid),
                ("fatal", tid),
                ("silence", tid),
            ]
        elif t.status == "completed":
            out += [("merge", tid), ("merge", tid), ("conflict", tid)]
        elif t.status == "escalated":
            out += [("retry", tid), ("skip", tid)]
    if m.budget_usd is not None and (m.exceeded_at_budget is not None):
        out.append(("raise", ""))
    return out if people_may_act else [a for a in out if a[0] not in HUMAN]


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tasks=graphs(),
    config=configs(),
    concurrency=st.integers(1, 3),
    budget=st.one_of(st.none(), st.floats(0.5, 6.0)),
    overlap=st.booleans(),
    data=st.data(),
)
def test_invariants_hold_and_every_mission_ends_or_waits_on_a_person(
    tasks: list[PlannedTask],
    config: Config,
    concurrency: int,
    budget: float | None,
    overlap: bool,
    data: Any,
) -> None:
    s = Scenario(config=config)
    started: list[str] = []
    decided = s.start(
        *tasks, max_concurrency=concurrency, budget_usd=budget, allow_file_overlap=overlap
    )
    check(s.basis, decided, s.mission_id, started)
    interventions = 0
    for _ in range(300):
        m = s.state.missions[s.mission_id]
        if m.terminal:
            break
        # People step in a couple of times at most; then escalations are left waiting.
        possible = actions(s, people_may_act=interventions < 2)
        if possible and data.draw(ACT) > 0:
            verb, tid = pick(data, possible)
            interventions += verb in HUMAN
            decided = _act(s, verb, tid, data)
        elif data.draw(RARELY) == 37:  # rarely: boundaries are likely draws
            decided = s.when(MissionCancelled(**s.meta(), reason="changed my mind"))
        else:
            due = next_timer(s.state, s.config)
            if due is None and not possible:
                break
            step = 30.0 if due is None else max(0.0, (due - s.now).total_seconds())
            decided = s.tick(step)
        check(s.basis, decided, s.mission_id, started)
    m = s.state.missions[s.mission_id]
    waiting_on_person = any(t.status == "escalated" for t in m.tasks.values())
    out_of_money = m.exceeded_at_budget is not None and m.exceeded_at_budget == m.budget_usd
    # A ready attempt no runner took (the world stayed silent about it) waits for one: it
    # is on the bus, and a runner takes it when it has a free lane.
    waiting_on_runner = any(t.status == "ready" for t in m.tasks.values())
    note(
        f"ended {m.status}"
        if m.terminal
        else "waiting on a person"
        if waiting_on_person
        else "out of money"
        if out_of_money
        else "waiting on a runner"
    )
    note(f"{len(started)} task starts" if len(started) < 5 else "5+ task starts")
    assert m.terminal or waiting_on_person or out_of_money or waiting_on_runner, (
        f"mission left {m.status} with tasks {[(t.spec.id, t.status) for t in m.tasks.values()]}"
    )


def _act(s: Scenario, verb: str, tid: str, data: Any) -> list[Event]:
    if verb == "start":
        return s.started(tid)
    if verb == "spend":
        return s.used(tid, data.draw(SPENDS))
    if verb == "complete":
        return s.completed(tid)
    if verb == "fail":
        return s.failed(tid, retryable=True)
    if verb == "fatal":
        return s.failed(tid, retryable=False)
    if verb == "silence":
        return s.tick(s.config.heartbeat_timeout_seconds + 1)
    if verb == "merge":
        return s.merged(tid)
    if verb == "conflict":
        return s.conflicted(tid, ["a.py"])
    if verb == "retry":
        return s.when(TaskRetryRequested(**s.meta(), task_id=tid))
    if verb == "skip":
        return s.when(TaskSkipped(**s.meta(), task_id=tid))
    if verb == "raise":
        m = s.state.missions[s.mission_id]
        return s.when(BudgetRaised(**s.meta(), budget_usd=(m.budget_usd or 0) + 5.0))
    raise AssertionError(verb)

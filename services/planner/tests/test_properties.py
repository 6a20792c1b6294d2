"""Properties of plan validation over random graphs."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aether_planner.domain import (
    InvalidPlan,
    PlanSubmission,
    SubmittedTask,
    find_cycle,
    validate_plan,
)

# ``[a-z]{1,6}(/[a-z]{1,6}){0,2}\.py``, built from parts: the same paths as the regular
# expression's strategy, drawn at a fraction of its cost (it was most of these tests' time).
PATHS = st.lists(
    st.text(alphabet=string.ascii_lowercase, min_size=1, max_size=6), min_size=1, max_size=3
).map(lambda parts: "/".join(parts) + ".py")


MOST_TASKS = 12
# Each strategy built once: hypothesis builds, validates and looks up a strategy each time
# one is made, a good part of these tests' CPU when every task of every graph made its
# own. The draws, and so the examples, are the same.
TASK_IDS = [f"t{i}" for i in range(MOST_TASKS)]
TASK_COUNT = st.integers(1, MOST_TASKS)
DEPENDENCIES = [st.lists(st.sampled_from(TASK_IDS[:i]), unique=True) for i in range(1, MOST_TASKS)]
TASK_FILES = st.lists(PATHS, max_size=3, unique=True)
TIERS = st.sampled_from(["small", "standard", "complex"])


@st.composite
def dags(draw: st.DrawFn) -> list[SubmittedTask]:
    n = draw(TASK_COUNT)
    tasks = []
    for i in range(n):
        deps = draw(DEPENDENCIES[i - 1]) if i else []
        files = draw(TASK_FILES)
        tasks.append(
            SubmittedTask(
                id=TASK_IDS[i],
                title=f"Task {i}",
                description=f"do {i}",
                files=files,
                depends_on=list(deps),
                tier=draw(TIERS),
            )
        )
    return draw(st.permutations(tasks))


@settings(max_examples=300, deadline=None)
@given(dags())
def test_a_valid_graph_is_never_changed(tasks: list[SubmittedTask]) -> None:
    validated, repairs = validate_plan(PlanSubmission(tasks=tasks, rationale="r"), max_tasks=50)
    assert repairs == []
    assert [(t.id, t.depends_on, t.files, t.tier) for t in validated] == [
        (str(t.id), [str(d) for d in t.depends_on], t.files, t.tier) for t in tasks
    ]


@settings(max_examples=300, deadline=None)
@given(dags(), st.data())
def test_a_cycle_is_always_found(tasks: list[SubmittedTask], data: st.DataObject) -> None:
    # Close a cycle: some task comes to depend on one of its own descendants (or itself
    # through a longer path), by adding the back edge.
    ids = [str(t.id) for t in tasks]
    by_id = {str(t.id): t for t in tasks}
    source = data.draw(st.sampled_from(ids))
    descendants = _reachable_from(source, tasks) - {source}
    target = data.draw(st.sampled_from(sorted(descendants))) if descendants else None
    if (
        target is None
    ):  # no descendant: make a two-task cycle with any other task, or a self-loop chain
        other = data.draw(st.sampled_from(ids))
        if other == source:
            return  # a lone self-dependency is repaired, not a cycle; covered elsewhere
        by_id[other].depends_on.append(source)
        by_id[source].depends_on.append(other)
    else:
        by_id[source].depends_on.append(target)
    with pytest.raises(InvalidPlan) as raised:
        validate_plan(PlanSubmission(tasks=tasks, rationale="r"), max_tasks=50)
    assert any(error.startswith("dependency cycle: ") for error in raised.value.errors)


def _reachable_from(source: str, tasks: list[SubmittedTask]) -> set[str]:
    """Tasks that (transitively) depend on ``source``."""
    dependents: dict[str, list[str]] = {str(t.id): [] for t in tasks}
    for t in tasks:
        for d in t.depends_on:
            dependents[str(d)].append(str(t.id))
    seen, stack = set(), [source]
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            stack.extend(dependents[node])
    return seen


def test_find_cycle_reports_the_path() -> None:
    from aether_events import PlannedTask

    tasks = [
        PlannedTask(id="a", title="A", depends_on=["c"]),
        PlannedTask(id="b", title="B", depends_on=["a"]),
        PlannedTask(id="c", title="C", depends_on=["b"]),
    ]
    cycle = find_cycle(tasks)
    assert cycle[0] == cycle[-1] and set(cycle) == {"a", "b", "c"}

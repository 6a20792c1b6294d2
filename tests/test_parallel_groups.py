"""Tests sharing a module-scoped fixture run on one worker in a parallel run.

The fixture below counts its set-ups in a file shared by the run's workers: when the
module's tests are spread over workers, the fixture is set up once per worker and the
tests of every worker after the first fail. Run serially it is set up once, as always.
(pytest 9.2 with pytest-xdist 3.8 dropped every group without a word: a stack, a browser
or a sandbox per worker instead of one.)"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import cast

import pytest


@pytest.fixture(scope="module")
def set_ups(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The workers' temporary roots (``popen-gwN``) share one parent per run.
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID", f"serial-{os.getpid()}")
    counter = tmp_path_factory.getbasetemp().parent / f"parallel-groups-{run}"
    with counter.open("a") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        file.write(os.environ.get("PYTEST_XDIST_WORKER", "serial") + "\n")
    return counter


def workers_that_set_it_up(counter: Path) -> list[str]:
    return counter.read_text().split()


@pytest.mark.parametrize("n", range(8))
def test_the_module_fixture_was_set_up_by_one_worker_only(set_ups: Path, n: int) -> None:
    assert len(workers_that_set_it_up(set_ups)) == 1, workers_that_set_it_up(set_ups)


class _Item:
    """What ``long_first`` reads of a collected test: its markers and its function."""

    def __init__(self, name: str, *marks: str, hypothesis: bool = False) -> None:
        self.name = name
        self.marks = set(marks)
        self.obj = type("Test", (), {"is_hypothesis_test": True})() if hypothesis else None

    def get_closest_marker(self, name: str) -> str | None:
        return name if name in self.marks else None


def test_long_ungrouped_tests_are_handed_out_first_each_part_in_its_order() -> None:
    from conftest import long_first

    items = [
        _Item("quick-1"),
        _Item("in-a-stack", "e2e", "xdist_group"),
        _Item("end-to-end", "e2e"),
        _Item("quick-2"),
        _Item("property", hypothesis=True),
        _Item("fuzzing", "slow"),
        _Item("quick-3"),
    ]
    ordered = long_first(cast(list[pytest.Item], items))
    assert [item.name for item in ordered] == [
        "end-to-end",
        "property",
        "fuzzing",
        "quick-1",
        "in-a-stack",  # handed out with its group, wherever it stands
        "quick-2",
        "quick-3",
    ]

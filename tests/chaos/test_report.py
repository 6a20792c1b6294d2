"""What the chaos benchmark says about a trial, and which passed trials it keeps."""

from __future__ import annotations

import io
from pathlib import Path

from bench.chaos.checks import ModelCallReport
from bench.chaos.run import report_trial, worth_a_look
from bench.chaos.trial import TrialResult


def result(home: Path, notes: list[str], longest_gap: float = 1.0) -> TrialResult:
    return TrialResult(
        kills=[],
        seconds=3.0,
        mission_seconds=2.0,
        problems={},
        stalls=[],
        model_calls=ModelCallReport(),
        notes=notes,
        events=80,
        longest_gap=longest_gap,
        final_tree="abc",
        ready_seconds={},
        home=home,
    )


def test_a_passed_trial_with_a_service_that_exited_by_itself_is_kept(tmp_path: Path) -> None:
    """Once, a git broker killed near a mission's end exited at each start for a minute:
    the trial passed, its directory went, and with it the logs that said why."""
    exited = result(tmp_path, ["git-broker exited with 3 by itself"] * 291)
    assert exited.passed
    assert worth_a_look(exited, max_stall=30)
    out = io.StringIO()
    report_trial(17, 20, exited, out, max_stall=30)
    lines = out.getvalue().splitlines()
    # One line for the 291 exits, and where the logs are.
    assert "      note: git-broker exited with 3 by itself (×291)" in lines
    assert f"      logs: {tmp_path / 'stack' / 'logs'}" in lines
    assert len(lines) == 3


def test_a_passed_trial_quiet_for_longer_than_the_stall_limit_is_kept(tmp_path: Path) -> None:
    assert worth_a_look(result(tmp_path, [], longest_gap=61.6), max_stall=30)
    assert not worth_a_look(result(tmp_path, [], longest_gap=2.0), max_stall=30)
    # Without --max-stall, half a minute.
    assert worth_a_look(result(tmp_path, [], longest_gap=31.0), max_stall=None)
    assert not worth_a_look(result(tmp_path, [], longest_gap=29.0), max_stall=None)


def test_an_ordinary_passed_trial_is_not(tmp_path: Path) -> None:
    ordinary = result(tmp_path, ["mission submitted before planner ready"])
    assert not worth_a_look(ordinary, max_stall=30)
    out = io.StringIO()
    report_trial(3, 20, ordinary, out, max_stall=30)
    assert "logs:" not in out.getvalue()
    assert "      note: mission submitted before planner ready" in out.getvalue().splitlines()

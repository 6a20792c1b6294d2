"""Given these events, when this one arrives, then these are decided."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from aether_events import (
    AgentCompleted,
    BudgetExceeded,
    BudgetRaised,
    BudgetWarning,
    Event,
    MergeConflicted,
    MergeWithheld,
    MissionCancelled,
    MissionCompleted,
    MissionFailed,
    MissionPaused,
    MissionRequested,
    MissionResumed,
    PlanApproved,
    PlanFailed,
    PlanProduced,
    RepositoryPrepared,
    StepFailed,
    TaskEscalated,
    TaskReady,
    TaskRetried,
    TaskRetryRequested,
    TaskSkipped,
    TaskTimedOut,
    WaveCompleted,
    WaveStarted,
    WorkspaceReady,
    step_event_id,
    step_ids,
)
from aether_scheduler.domain import (
    Config,
    State,
    backoff_seconds,
    catch_up,
    evolve,
    next_timer,
    scopes_overlap,
    waves_of,
)

from .scenario import CONFIG, Scenario, of, ready, task


def diamond() -> list:
    return [task("a"), task("b", tier="small"), task("c", "a", "b")]


# --- readiness, waves, concurrency, priorities -------------------------------------------


def test_approval_starts_wave_zero_with_the_tasks_that_have_no_dependencies() -> None:
    s = Scenario()
    decided = s.start(*diamond())
    assert ready(decided) == ["a", "b"]
    assert [(w.wave, w.task_ids) for w in of(decided, WaveStarted)] == [(0, ["a", "b"])]
    by_id = {e.task.id: e for e in of(decided, TaskReady)}
    assert by_id["b"].model == "s" and by_id["a"].model == "m"
    assert by_id["a"].estimated_cost_usd == 1.0 and by_id["a"].attempt == 1


def test_tasks_carry_the_missions_agent_runtime_with_its_per_tier_override() -> None:
    s = Scenario()
    decided = s.start(*diamond(), runtime="claude-code", runtime_overrides={"small": "builtin"})
    by_id = {e.task.id: e for e in of(decided, TaskReady)}
    assert by_id["a"].runtime == "claude-code" and by_id["b"].runtime == "builtin"
    assert all(e.runtime is None for e in of(Scenario().start(*diamond()), TaskReady))


def test_tasks_carry_the_requirement_the_approved_plan_was_made_from() -> None:
    """A mission that invoked a repository command: its agents are told the command's
    text (the plan's requirement), not the bare invocation; otherwise the mission's."""
    s = Scenario()
    s.given(
        MissionRequested(**s.meta(), repository="/r", requirement="/release-notes v2.1"),
        RepositoryPrepared(
            **s.meta(),
            repository_path="/r",
            base_branch="main",
            base_sha="base",
            integration_branch=f"aether/{s.mission_id}",
        ),
        PlanProduced(**s.meta(), version=1, tasks=[task("a")], requirement="Write v2.1's notes"),
    )
    decided = s.when(PlanApproved(**s.meta(), version=1))
    assert [e.requirement for e in of(decided, TaskReady)] == ["Write v2.1's notes"]
    assert [e.requirement for e in of(Scenario().start(task("a")), TaskReady)] == ["do it"]


def test_dependent_task_waits_for_every_dependency_then_its_wave_starts() -> None:
    s = Scenario()
    s.start(*diamond())
    assert ready(s.finish("a")) == []
    decided = s.finish("b")
    assert [type(e).__name__ for e in decided] == ["WaveCompleted", "WaveStarted", "TaskReady"]
    assert ready(decided) == ["c"] and of(decided, WaveStarted)[0].wave == 1


def test_mission_concurrency_limit_holds_back_ready_tasks() -> None:
    s = Scenario()
    assert ready(s.start(*diamond(), max_concurrency=1)) == ["a"]
    assert ready(s.finish("a")) == ["b"]


def test_global_concurrency_spans_missions() -> None:
    s = Scenario(
        config=Config(tier_models=CONFIG.tier_models, global_concurrency=2, estimate_usd={})
    )
    assert ready(s.start(task("a"), task("b"), task("c"))) == ["a", "b"]
    other = Scenario(mission_id="m-other", config=s.config, state=s.state)
    assert ready(other.start(task("x"))) == []


def test_higher_priority_runs_first() -> None:
    s = Scenario()
    decided = s.start(task("low"), task("high", priority=5), max_concurrency=1)
    assert ready(decided) == ["high"]


def test_redelivered_event_decides_nothing_new() -> None:
    s = Scenario()
    s.start(*diamond())
    s.finish("a")
    s.started("b")
    s.completed("b")
    first = s.merged("b")
    again = s.when(s.log[-len(first) - 1])  # the same BranchMerged once more
    assert ready(first) == ["c"] and again == []


def test_completion_carries_final_sha_totals_and_duration() -> None:
    s = Scenario()
    s.start(*diamond())
    s.used("a", 0.25)
    for tid in ("a", "b"):
        s.finish(tid)
    s.now += timedelta(minutes=3)
    decided = s.finish("c")
    done = of(decided, MissionCompleted)[0]
    assert done.final_sha == "sha-c-1" and done.tasks_merged == 3
    assert done.integration_branch == "aether/m-test"
    assert done.usage.cost_usd == 0.25 and done.usage.input_tokens == 100
    assert done.duration_seconds == 180.0
    assert [w.wave for w in of(decided, WaveCompleted)] == [1]


def test_auto_approve_approves_the_plan_and_starts_work() -> None:
    s = Scenario()
    s.start(*diamond(), approve=False, auto_approve=True)
    approvals = of(s.log, PlanApproved)
    assert len(approvals) == 1 and approvals[0].automatic
    assert ready(s.log) == ["a", "b"]


# --- conflict avoidance ----------------------------------------------------------------


def test_tasks_whose_files_overlap_do_not_run_together() -> None:
    s = Scenario()
    decided = s.start(
        task("a", files=["src/x.py"]), task("b", files=["src/x.py", "b.py"]), task("c")
    )
    assert ready(decided) == ["a", "c"]
    assert ready(s.finish("a")) == ["b"]


def test_files_changed_outside_scope_hold_back_tasks_not_yet_started() -> None:
    s = Scenario()
    decided = s.start(
        task("a", files=["src/a.py"]), task("b", files=["src/b.py"]), max_concurrency=1
    )
    assert ready(decided) == ["a"]
    s.started("a")
    # a drifted into b's file: b waits for a's merge though a slot is free.
    assert ready(s.completed("a", outside_scope=["src/b.py"])) == []
    assert s.state.missions[s.mission_id].tasks["a"].drift == ("src/b.py",)
    assert ready(s.merged("a")) == ["b"]


def test_a_retry_keeps_the_lease_on_files_it_drifted_into() -> None:
    s = Scenario()
    s.start(
        task("a", files=["a.py"]),
        task("z", files=["z.py"]),
        task("b", files=["b.py"]),
        max_concurrency=2,
    )
    s.started("a")
    assert ready(s.completed("a", outside_scope=["b.py"])) == []
    assert ready(s.conflicted("a", ["a.py"])) == ["a"]  # the retry starts at once
    # z's slot frees up, but b's file is still held by a's retry.
    assert ready(s.finish("z")) == []
    assert ready(s.finish("a")) == ["b"]


def test_a_true_conflict_asks_for_a_resolution_of_the_conflicting_commit() -> None:
    s = Scenario()
    s.start(task("a", files=["a.py"]), task("b", files=["b.py"]))
    s.started("b")
    s.when(
        AgentCompleted(
            **s.meta(), task_id="b", attempt=1, commit_sha="c-b", branch="x", summary="beta"
        )
    )
    s.merged("b", files=["b.py", "shared.py"])
    s.started("a")
    s.completed("a")
    [retry] = of(s.conflicted("a", ["shared.py"]), TaskReady)
    assert retry.attempt == 2 and retry.resolve_sha == "c-a"
    assert "conflict" in retry.context and "<<<<<<<" in retry.context
    assert "task b (" in retry.context and "beta" in retry.context
    # Its resolution merges: the next task attempt starts from scratch again.
    s.started("a")
    s.completed("a")
    s.merged("a")
    assert s.state.missions[s.mission_id].tasks["a"].resolve_sha is None


def test_a_failed_verification_runs_the_task_again_without_a_resolution() -> None:
    s = Scenario()
    s.start(task("a", files=["a.py"]))
    s.started("a")
    s.completed("a")
    [retry] = of(s.conflicted("a", []), TaskReady)
    assert retry.resolve_sha is None


def test_a_mission_may_allow_overlapping_scopes() -> None:
    s = Scenario()
    decided = s.start(task("a", files=["x.py"]), task("b", files=["x.py"]), allow_file_overlap=True)
    assert ready(decided) == ["a", "b"]


def test_scope_overlap_rules() -> None:
    assert scopes_overlap(["src/"], ["src/a.py"])
    assert scopes_overlap(["src/a.py"], ["./src/a.py".removeprefix("./")])
    assert not scopes_overlap(["src/a.py"], ["src/ab.py"])
    assert not scopes_overlap(["src/"], ["srcx/a.py"])
    assert not scopes_overlap([], ["a.py"])


# --- budgets -------------------------------------------------------------------------


def test_reservations_keep_starts_within_the_budget() -> None:
    s = Scenario()
    decided = s.start(task("a"), task("b"), task("c"), budget_usd=2.5)
    assert ready(decided) == ["a", "b"]  # 1.0 + 1.0 reserved; a third would pass 2.5


def test_actual_usage_replaces_the_estimate() -> None:
    s = Scenario()
    s.start(task("a"), task("b"), task("c"), budget_usd=2.5)
    s.started("a")
    s.used("a", 0.2)
    mission = s.state.missions["m-test"]
    assert mission.tasks["a"].reserved_usd == 0.8 and mission.spent_usd == 0.2
    assert ready(s.completed("a")) == ["c"]  # a's reservation is released: 0.2 + 1.0 + 1.0


def test_warning_at_eighty_percent_and_stop_at_the_budget_until_raised() -> None:
    s = Scenario()
    s.start(task("a"), task("b", "a"), budget_usd=1.5)
    s.started("a")
    warned = s.used("a", 1.25)
    assert [(w.spent_usd, w.budget_usd) for w in of(warned, BudgetWarning)] == [(1.25, 1.5)]
    exceeded = s.used("a", 0.5)
    assert of(exceeded, BudgetExceeded)[0].spent_usd == 1.75
    assert ready(s.finish("a")) == []  # b would start now, but the money is gone
    decided = s.when(BudgetRaised(**s.meta(), budget_usd=10.0))
    assert ready(decided) == ["b"]


def test_a_task_that_cannot_fit_with_nothing_running_reports_the_budget_exceeded() -> None:
    s = Scenario()
    decided = s.start(task("big", tier="complex"), budget_usd=2.0)
    assert ready(decided) == [] and of(decided, BudgetExceeded)


def test_global_daily_budget_stops_new_tasks_in_every_mission() -> None:
    config = Config(tier_models=CONFIG.tier_models, daily_budget_usd=1.0, estimate_usd={})
    s = Scenario(config=config)
    s.start(task("a"), task("b", "a"))
    s.started("a")
    s.used("a", 1.0)
    decided = s.finish("a")
    assert ready(decided) == []
    assert of(decided, BudgetExceeded)[0].scope == "daily:2026-01-01"
    s.now += timedelta(days=1)
    assert ready(s.when(MissionResumed(**s.meta()))) == ["b"]


# --- retries, escalation, conflicts, liveness --------------------------------------------


def test_failure_backs_off_then_retries_with_the_reason_as_context() -> None:
    s = Scenario()
    s.start(task("a"))
    decided = s.failed("a", reason="tests failed")
    retried = of(decided, TaskRetried)[0]
    delay = (retried.not_before - s.now).total_seconds()
    assert retried.attempt == 2 and 5.0 <= delay < 10.0 and ready(decided) == []
    assert s.tick(delay - 0.5) == []
    decided = s.tick(0.5)
    again = of(decided, TaskReady)[0]
    assert again.attempt == 2 and "tests failed" in again.context
    assert again.causation_id == retried.event_id


def test_exhausted_retries_escalate_and_a_person_retries_or_skips() -> None:
    s = Scenario()
    s.start(task("a"), task("b", "a"))
    s.failed("a")
    s.tick(60)
    decided = s.failed("a")
    assert of(decided, TaskEscalated)[0].attempt == 2
    assert s.tick(3600) == []  # waiting on a person, not failed
    decided = s.when(TaskRetryRequested(**s.meta(), task_id="a"))
    assert [(e.task.id, e.attempt) for e in of(decided, TaskReady)] == [("a", 3)]
    s.failed("a")  # a person's retry grants a fresh allowance: attempt 4 follows
    assert [(e.task.id, e.attempt) for e in of(s.tick(60), TaskReady)] == [("a", 4)]
    assert of(s.failed("a"), TaskEscalated)[0].attempt == 4
    decided = s.when(TaskSkipped(**s.meta(), task_id="a", reason="done by hand"))
    assert ready(decided) == ["b"]
    decided = s.finish("b")
    assert of(decided, MissionCompleted)[0].tasks_merged == 1


def test_merge_conflict_reruns_at_once_on_the_new_head_with_the_files() -> None:
    s = Scenario()
    s.start(task("a"))
    s.started("a")
    s.completed("a")
    decided = s.conflicted("a", ["src/x.py"])
    again = of(decided, TaskReady)[0]
    assert again.attempt == 2 and "src/x.py" in again.context


def test_a_task_that_keeps_conflicting_escalates_after_max_attempts_saying_why() -> None:
    s = Scenario()  # max_attempts=2
    s.start(task("a"))
    s.started("a")
    s.completed("a")
    assert [e.attempt for e in of(s.conflicted("a", ["x.py"]), TaskReady)] == [2]
    s.started("a")
    s.completed("a")
    decided = s.conflicted("a", ["x.py"])
    assert ready(decided) == []
    escalated = of(decided, TaskEscalated)[0]
    assert escalated.attempt == 2
    assert escalated.reason == "failed 2 times; last: merge conflict in x.py"


def test_failed_verification_reruns_with_its_output_as_context() -> None:
    s = Scenario()
    s.start(task("a"))
    s.started("a")
    s.completed("a")
    from aether_events import MergeConflicted

    decided = s.when(
        MergeConflicted(
            **s.meta(),
            task_id="a",
            attempt=1,
            files=[],
            integration_sha="h",
            detail="verification failed: pytest -q exited with 1\nFAILED test_x",
        )
    )
    again = of(decided, TaskReady)[0]
    assert "verification failed on the result" in again.context and "FAILED test_x" in again.context
    assert s.state.missions["m-test"].tasks["a"].last_failure.startswith("verification failed")


def _refused(s: Scenario, detail: str, refusal: str = "", files: tuple[str, ...] = ()) -> Any:
    decided = s.when(
        MergeConflicted(
            **s.meta(),
            task_id="a",
            attempt=1,
            files=list(files),
            integration_sha="h",
            detail=detail,
            refusal=refusal,
        )
    )
    return of(decided, TaskReady)[0]


MARKERS = (
    "conflict markers left in 1 file(s): src/app.py:3\n"
    "The commit adds blocks of conflict markers to these files."
)


@pytest.mark.parametrize("refusal", ["conflict_markers", ""], ids=["v8", "before-v8"])
def test_a_merge_refused_for_conflict_markers_says_so_not_that_verification_failed(
    refusal: str,
) -> None:
    """A marker refusal names no files, like a failed verification: the next attempt is
    told what happened (from ``refusal``, or the detail of a broker that did not set it)."""
    s = Scenario()
    s.start(task("a"))
    s.started("a")
    s.completed("a")
    again = _refused(s, MARKERS, refusal)
    assert again.attempt == 2 and again.resolve_sha is None
    assert "verification" not in again.context.split("\n")[0]
    assert "merged cleanly" not in again.context
    assert again.context.startswith(
        "Your previous attempt's commit was not merged: it leaves conflict markers in files"
    )
    assert again.context.endswith(MARKERS)
    assert s.state.missions["m-test"].tasks["a"].last_failure == MARKERS.splitlines()[0]


@pytest.mark.parametrize(
    ("refusal", "files", "opening"),
    [
        ("verification_failed", (), "Your previous attempt merged cleanly but the mission's "),
        ("unsafe_paths", ("../x",), "Your previous attempt's commit was not merged: it has paths"),
        ("missing_commit", (), "Your previous attempt's commit could not be merged"),
        ("from_a_newer_broker", (), "Your previous attempt's commit was not merged; the git "),
    ],
)
def test_each_refused_merge_opens_the_next_attempts_context_with_what_happened(
    refusal: str, files: tuple[str, ...], opening: str
) -> None:
    s = Scenario()
    s.start(task("a"))
    s.started("a")
    s.completed("a")
    again = _refused(s, "what the broker said\nits details", refusal, files)
    assert again.context.startswith(opening)
    assert again.context.endswith("what the broker said\nits details")
    # Only a true conflict merges the earlier commit in, with its conflicts marked.
    assert again.resolve_sha is None


def test_no_heartbeat_times_the_attempt_out_and_retries_it() -> None:
    s = Scenario()
    s.start(task("a"))
    s.started("a")
    s.tick(50)
    s.heartbeat("a")
    assert s.tick(50) == []  # the heartbeat moved the deadline
    decided = s.tick(11)
    assert [type(e).__name__ for e in decided] == ["TaskTimedOut", "TaskRetried"]
    assert of(decided, TaskTimedOut)[0].last_heartbeat_at == s.now - timedelta(seconds=61)


def test_an_attempt_waiting_for_a_runner_has_no_clock_until_one_takes_it() -> None:
    """Wider than the runners, a mission's ready attempts wait for a free lane behind
    attempts that take minutes: they are not timed out and retried meanwhile. Once a
    runner takes one (its start, or a beat of a long preparation), the clock runs."""
    s = Scenario()
    s.start(task("a"), task("b"))
    limit = CONFIG.heartbeat_timeout_seconds
    s.started("a")
    s.tick(limit - 1)
    s.heartbeat("a")
    s.tick(limit * 10)
    # ``a`` went silent and timed out; ``b``, never taken by a runner, did not.
    assert [e.task_id for e in of(s.log, TaskTimedOut)] == ["a"]
    assert s.status("b") == "ready" and s.attempt("b") == 1
    s.heartbeat("b")  # taken: a runner beats while it prepares the attempt
    assert of(s.tick(limit - 1), TaskTimedOut) == []
    decided = s.tick(2)
    assert [(e.task_id, e.attempt) for e in of(decided, TaskTimedOut)] == [("b", 1)]


def test_the_scheduler_needs_no_workspace_ready_to_time_a_taken_attempt() -> None:
    """A WorkspaceReady is not what starts an attempt's clock (the scheduler's consumer
    does not even receive one): a ready attempt stays without a deadline after it."""
    s = Scenario()
    s.start(task("a"))
    before = s.state
    workspace = WorkspaceReady(
        **s.meta(),
        task=task("a"),
        attempt=1,
        model="m",
        branch="b",
        worktree_path="/w",
        base_sha="base",
    )
    s.when(workspace)
    assert s.state.missions["m-test"].tasks["a"] == before.missions["m-test"].tasks["a"]
    assert next_timer(s.state, CONFIG) is None


def test_a_runners_failed_step_on_the_workspace_starts_the_clock() -> None:
    """A runner that gave up on an attempt's WorkspaceReady for good (the runtime's
    StepFailed) leaves nobody to take it: its clock starts, and it is retried once it
    runs out, as an attempt whose runner went silent."""
    s = Scenario()
    s.start(task("a"), task("b"))

    def gave_up(
        tid: str,
        attempt: int,
        failed_type: str = "workspace_ready",
        service: str = "agent-runner",
    ) -> list[Event]:
        workspace_id = step_event_id("m-test", step_ids.workspace_ready(tid, attempt))
        return s.when(
            StepFailed(
                **s.meta(),
                service=service,
                consumer=service,
                failed_event_id=workspace_id,
                failed_event_type=failed_type,
                stream="AETHER_MISSIONS",
                stream_sequence=7,
                error="RuntimeError: boom",
                attempts=20,
            )
        )

    gave_up("a", 2)  # another attempt's: not this one
    gave_up("b", 1, failed_type="task_ready")  # another step's
    gave_up("b", 1, service="gateway")  # the read model's, not a runner's
    assert next_timer(s.state, CONFIG) is None
    gave_up("a", 1)
    limit = CONFIG.heartbeat_timeout_seconds
    assert s.tick(limit - 1) == []
    decided = s.tick(2)
    assert [type(e).__name__ for e in decided] == ["TaskTimedOut", "TaskRetried"]
    assert of(decided, TaskTimedOut)[0].task_id == "a"
    assert s.status("b") == "ready"


def test_two_runners_records_of_one_failed_workspace_start_one_clock() -> None:
    """Each runner keys its step records with its own secret (decision 0032), so two
    runners giving up on one WorkspaceReady store two records: the second, later, is the
    same step and does not put the timeout off."""
    s = Scenario()
    s.start(task("a"))
    workspace_id = step_event_id("m-test", step_ids.workspace_ready("a", 1))

    def gave_up(runner_record: str) -> list[Event]:
        return s.when(
            StepFailed(
                **{**s.meta(), "event_id": runner_record},
                service="agent-runner",
                consumer="agent-runner",
                failed_event_id=workspace_id,
                failed_event_type="workspace_ready",
                stream="AETHER_MISSIONS",
                stream_sequence=7,
                error="RuntimeError: boom",
                attempts=1,
            )
        )

    gave_up("record-of-r-1")
    limit = CONFIG.heartbeat_timeout_seconds
    s.now += timedelta(seconds=limit - 5)
    gave_up("record-of-r-2")
    decided = s.tick(6)
    assert [type(e).__name__ for e in decided] == ["TaskTimedOut", "TaskRetried"]


def test_a_failure_no_retry_can_help_fails_the_mission_once_nothing_else_can_run() -> None:
    s = Scenario()
    s.start(task("a"), task("b"), task("c", "a"))
    decided = s.failed("a", retryable=False, reason="task id is not a valid branch name")
    assert of(decided, MissionFailed) == []  # b is still running
    decided = s.finish("b")
    failed = of(decided, MissionFailed)[0]
    assert "a" in failed.reason and "blocked for good: c" in failed.reason


# --- control -------------------------------------------------------------------------


def test_pause_holds_new_tasks_and_resume_releases_them() -> None:
    s = Scenario()
    s.start(task("a"), task("b", "a"))
    s.when(MissionPaused(**s.meta()))
    assert ready(s.finish("a")) == []
    assert ready(s.when(MissionResumed(**s.meta()))) == ["b"]


def test_a_cancelled_mission_decides_nothing() -> None:
    s = Scenario()
    s.start(task("a"), task("b", "a"))
    s.when(MissionCancelled(**s.meta(), reason="wrong repo"))
    assert s.finish("a") == []
    assert s.tick(3600) == []


def test_a_merge_withheld_after_the_cancel_changes_nothing() -> None:
    """The git broker records a result it did not merge because the mission was
    cancelled (always after the cancel on the stream): the scheduler decides nothing and
    its state stays as the cancel left it."""
    s = Scenario()
    s.start(task("a"), task("b", "a"))
    s.started("a")
    s.completed("a")
    s.when(MissionCancelled(**s.meta(), reason="wrong repo"))
    before = s.state
    withheld = MergeWithheld(
        **s.meta(),
        task_id="a",
        attempt=s.attempt("a"),
        commit_sha="c-a",
        integration_sha="base",
        reason="the mission was cancelled: wrong repo",
    )
    assert s.when(withheld) == []
    assert s.state.missions[s.mission_id] == before.missions[s.mission_id]
    assert s.tick(3600) == []


# --- timers and small rules --------------------------------------------------------------


def test_next_timer_is_the_earliest_deadline() -> None:
    s = Scenario()
    s.start(task("a"), task("b"))
    assert next_timer(s.state, s.config) is None  # no runner has taken either yet
    s.started("b")
    assert next_timer(s.state, s.config) == s.now + timedelta(seconds=60)
    s.failed("a")
    retry_at = s.state.missions["m-test"].tasks["a"].not_before
    assert next_timer(s.state, s.config) == retry_at


def test_backoff_grows_is_capped_and_is_the_same_when_decided_twice() -> None:
    delays = [backoff_seconds("m", "t", n, CONFIG) for n in range(2, 8)]
    assert delays == [backoff_seconds("m", "t", n, CONFIG) for n in range(2, 8)]
    assert all(
        CONFIG.retry_base_seconds * 2 ** (n - 2) / 2 <= d
        for n, d in zip(range(2, 8), delays, strict=True)
    )
    assert max(backoff_seconds("m", "t", 40, CONFIG) for _ in range(3)) <= CONFIG.retry_max_seconds


def test_waves_are_graph_layers() -> None:
    tasks = [task("a"), task("b", "a"), task("c", "a", "b"), task("d")]
    assert waves_of(tasks) == {"a": 0, "b": 1, "c": 2, "d": 0}


# --- catching up on start -----------------------------------------------------------------


def replayed(events: list[Event]) -> State:
    """The state a scheduler rebuilds from ``events`` without deciding on any of them."""
    state = State()
    for event in events:
        state = evolve(state, event)
    return state


def test_catch_up_approves_a_plan_that_was_produced_before_the_scheduler_started() -> None:
    s = Scenario()
    s.start(*diamond(), approve=False, auto_approve=True)
    requested, prepared, produced, *decided_live = s.log
    caught_up = catch_up(replayed([requested, prepared, produced]), s.now, s.config)
    assert of(caught_up, PlanApproved)[0].automatic
    assert ready(caught_up) == ["a", "b"]
    # The same ids as deciding live, so a scheduler that did both publishes each once.
    assert [e.event_id for e in caught_up] == [e.event_id for e in decided_live]


def test_catch_up_readies_a_dependent_whose_dependencies_merged_while_it_was_away() -> None:
    s = Scenario()
    s.start(*diamond())
    s.finish("a")
    before = len(s.log)
    decided = s.finish("b")
    triggers = [e for e in s.log[before:] if e not in decided]
    caught_up = catch_up(replayed(s.log[:before] + triggers), s.now, s.config)
    assert ready(caught_up) == ["c"]
    assert [e.event_id for e in caught_up] == [e.event_id for e in decided]


def test_catch_up_fails_a_mission_whose_planning_failed_before_the_scheduler_started() -> None:
    s = Scenario()
    s.start(approve=False)
    failed = PlanFailed(**s.meta(), reason="no plan")
    caught_up = catch_up(replayed([*s.log, failed]), s.now, s.config)
    assert [type(e) for e in caught_up] == [MissionFailed]
    assert caught_up[0].reason == "planning failed: no plan"
    assert [e.event_id for e in s.when(failed)] == [caught_up[0].event_id]


def test_catch_up_after_a_full_replay_decides_nothing() -> None:
    s = Scenario()
    s.start(*diamond(), auto_approve=True)
    s.finish("a")
    s.failed("b")
    assert catch_up(replayed(s.log), s.now, s.config) == []

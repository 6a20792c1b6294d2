"""Working one attempt: from its worktree to the event that reports it.

Take the attempt's lock; if the task branch already holds this attempt's commit, report it.
Otherwise run the attempt's runtime (``aether_agent_runner.runtimes``: the built-in loop
continues a journal it left, others start over from a clean worktree) and commit what it
did.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
from dulwich.repo import Repo

from aether_agent_runner import metrics
from aether_agent_runner.adapters.commands import CommandPolicy
from aether_agent_runner.adapters.conversation import Conversation, identity
from aether_agent_runner.adapters.disk_cap import clear_excess, run_watched
from aether_agent_runner.adapters.git import (
    CommitLimits,
    CommitRefused,
    GitDir,
    GitDirError,
    Snapshot,
    clear_leftover_locks,
    commit_all,
    commit_files,
    head_sha,
    own_commit,
    snapshot,
)
from aether_agent_runner.adapters.journal import AttemptLock, Journal, first_start, state_dir
from aether_agent_runner.adapters.model import Outcome, Progress
from aether_agent_runner.adapters.remote import Broker, RemoteError, prepare_clone
from aether_agent_runner.adapters.steps import Step, Steps, StepStuck
from aether_agent_runner.adapters.stream import Emit
from aether_agent_runner.adapters.tools import ToolBox
from aether_agent_runner.adapters.transcript import (
    DEFAULT_PATTERNS,
    Redactor,
    Transcript,
    next_run,
    secrets_in,
)
from aether_agent_runner.adapters.workspace import Workspace
from aether_agent_runner.config import AgentSettings
from aether_agent_runner.domain import decide
from aether_agent_runner.domain.decide import completed, failed
from aether_agent_runner.runtimes import (
    BUILTIN,
    FreshStart,
    Job,
    Runtime,
    RuntimeUnavailable,
    runtime_name,
)
from aether_agent_runner.runtimes.builtin import BuiltinRuntime, begin_fresh
from aether_agent_runner.runtimes.roles import RoleMissing, find_role, role_tools
from aether_agent_runner.runtimes.session import earlier_run
from aether_events import (
    AgentCompleted,
    AgentFailed,
    Event,
    Usage,
    WorkspaceReady,
)
from aether_llm import DEFAULT_TIERS, OFFLINE_MODEL, load_prices
from aether_llm.roles import model_for_role
from aether_runtime import RetryLater
from aether_sandbox import CommandRunner, Sandbox, SandboxUnavailable
from aether_sandbox.trees import remove_tree

log = logging.getLogger("aether.agent-runner")

# Mission and task ids as the git broker accepts them; they name the clone's directories.
_SAFE_NAME = re.compile(r"(?!\.{1,2}$)[A-Za-z0-9._-]+")


def _clear_what_a_killed_holder_left(git: GitDir) -> None:
    """``clear_leftover_locks``, said in the log: the attempt's last holder was killed
    mid-commit, and with its locks there every commit of the attempt failed and the
    attempt waited for the heartbeat timeout."""
    if left := clear_leftover_locks(git):
        log.warning("locks a killed runner left removed", extra={"locks": left})


class AttemptBusy(RetryLater):
    """Another agent holds this attempt's worktree right now; the message comes back later
    (handed back with a delay, not a failed step)."""


class Reporter:
    """Emits UsageRecorded for every model call and AgentProgress at most every
    ``interval`` seconds, through the attempt's stream (``adapters.stream``).

    The attempt's start counts as its first report (AgentStarted says it began), so the
    first AgentProgress comes ``interval`` seconds into the attempt, not at its first
    step: an attempt shorter than that reports none (its files and usage come with its
    result, each step is in its transcript). Reported at once, the first step's progress
    would be one event more for every task to store and fold, in the burst of events of
    its first model call. ``always`` reports anyway (a runtime's notice, such as a
    session resumed)."""

    def __init__(
        self,
        ready: WorkspaceReady,
        emit: Emit,
        clock: Callable[[], datetime],
        runner_id: str,
        interval: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ready = ready
        self._emit = emit
        self._clock = clock
        self._runner_id = runner_id
        self._interval = interval
        self._monotonic = monotonic
        self._last = monotonic()
        # The latest step's counts, reported or not (what an attempt stopped from outside
        # its runtime had done).
        self.latest: Progress | None = None

    async def model_called(self, turn: int, usage: Usage) -> None:
        ready = self._ready
        offline = ready.model == OFFLINE_MODEL
        await self._emit(decide.usage_recorded(ready, self._clock(), turn, usage, offline))

    async def progressed(self, progress: Progress, *, always: bool = False) -> None:
        self.latest = progress
        now = self._monotonic()
        if not always and now - self._last < self._interval:
            return
        self._last = now
        await self._emit(
            decide.progressed(
                self._ready,
                self._clock(),
                self._runner_id,
                turns=progress.turns,
                tool_calls=progress.tool_calls,
                files_changed=progress.files_changed,
                usage=progress.usage,
                last_action=progress.last_action,
            )
        )


@dataclass
class Attempts:
    """Works attempts; ``runtimes`` gives the runtime a name stands for (or raises
    ``RuntimeUnavailable``)."""

    runtimes: Callable[[str], Runtime]
    settings: AgentSettings
    runner_id: str
    clock: Callable[[], datetime]
    # What commands run in; ``None``: opened from the environment at the first command.
    sandbox: Sandbox | CommandRunner | SandboxUnavailable | None = None
    # Model ids of the tiers, for the aliases a role may name (haiku, sonnet, opus).
    tiers: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_TIERS))
    # The preparation and the commit, each within AETHER_AGENT_STEP_TIMEOUT_SECONDS.
    steps: Steps = field(init=False)

    def __post_init__(self) -> None:
        self.steps = Steps(self.settings.step_timeout_seconds)

    def sandbox_name(self) -> str | None:
        """What AgentStarted reports: the sandbox, or why commands are refused."""
        if self.settings.commands == ():
            return None
        if isinstance(self.sandbox, SandboxUnavailable):
            return "unavailable"
        if self.sandbox is None:
            return "unconfined" if self.settings.sandbox.unconfined else "bubblewrap"
        return self.sandbox.name

    async def forget(self, mission_id: str) -> list[str]:
        """Remove the clones this runner made for an ended mission's fetched attempts
        (none when it works in the broker's worktrees); returns the ones removed."""
        if not self.settings.git_url or not _SAFE_NAME.fullmatch(mission_id):
            return []
        root = self.settings.clones_dir()
        return await asyncio.to_thread(remove_clones, root, [mission_id])

    def sweep(self, ended: Callable[[str], bool]) -> list[str]:
        """At start-up: remove the clones of every mission ``ended`` says is over (it
        ended while this runner was down, or before a clean-up finished)."""
        root = self.settings.clones_dir()
        if not self.settings.git_url or not root.is_dir():
            return []
        missions = [p.name for p in root.iterdir() if p.is_dir() and ended(p.name)]
        return remove_clones(root, missions)

    async def work(
        self,
        ready: WorkspaceReady,
        emit: Emit,
        *,
        first_delivery: bool = False,
        missing: str | None = None,
    ) -> Event:
        """The attempt's result, AgentCompleted or AgentFailed, for the handler to publish.
        What happens on the way (AgentStarted, usage, progress, the transcript) goes to
        ``emit``, the attempt's stream. Raises ``AttemptBusy``.

        ``first_delivery``: WorkspaceReady reaches a runner for the first time, so no
        agent has worked in the worktree since the git broker checked it out (see
        ``_prepare``). ``missing``: why no runner can run the attempt's runtime
        (``domain.routing``); the attempt fails for it, unless its commit is found.

        A preparation or a commit that has not returned within the step timeout (a file
        system that never answers) is given up (``adapters.steps``): the attempt fails,
        retryably, and its thread, left to itself, reports nothing of it."""
        try:
            return await self._work_within_deadlines(ready, emit, first_delivery, missing)
        except StepStuck as stuck:
            log.error(
                str(stuck),
                extra={"step": stuck.step, "attempt": ready.attempt, "task_id": ready.task.id},
            )
            metrics.RESULTS.labels("stuck").inc()
            return failed(ready, self.clock(), str(stuck), True)

    async def _work_within_deadlines(
        self,
        ready: WorkspaceReady,
        emit: Emit,
        first_delivery: bool,
        missing: str | None,
    ) -> Event:
        began = time.perf_counter()
        runtime = self._runtime(ready) if missing is None else RuntimeUnavailable(missing)
        # A fresh built-in attempt's conversation is begun in the same hand-off as the
        # lock (a role is looked up in the worktree first, and may change the model).
        begins = isinstance(runtime, BuiltinRuntime) and not ready.task.role
        # Stopped, or given up, while the thread takes the lock: it is released once
        # taken, or it would be held by this process for good (a pooled worktree comes
        # back).
        claimed = await self.steps.run(
            "preparation",
            _named(ready),
            self._prepare,
            ready,
            begins,
            first_delivery,
            late=_release_claimed,
        )
        if claimed is None:
            return await self._work_fetched(ready, emit, began, runtime)
        if isinstance(claimed, str):
            return failed(ready, self.clock(), claimed, True)
        release = True
        try:
            return await self._work(
                ready, claimed.git, claimed.journal, emit, began, claimed, runtime
            )
        except StepStuck as stuck:
            # A commit given up still works in the worktree: the lock is its until it
            # returns, should it ever.
            stuck.thread.add_done_callback(lambda _: claimed.lock.release())
            release = False
            raise
        finally:
            if release:
                claimed.lock.release()

    def lacks(self, ready: WorkspaceReady) -> str | None:
        """The name of the attempt's runtime when this runner does not have it."""
        name = runtime_name(ready.runtime, self.settings.runtime)
        return name if isinstance(self._runtime(ready), RuntimeUnavailable) else None

    def _runtime(self, ready: WorkspaceReady) -> Runtime | RuntimeUnavailable:
        """The attempt's runtime, or why it cannot run (reported only once the branch is
        known not to hold the attempt's commit already)."""
        try:
            return self.runtimes(runtime_name(ready.runtime, self.settings.runtime))
        except RuntimeUnavailable as error:
            return error

    def _prepare(
        self, step: Step, ready: WorkspaceReady, begins: bool, first_delivery: bool = False
    ) -> Prepared | str | None:
        """Everything before AgentStarted that touches the disk, in one worker thread:
        the attempt's lock (``_claim``), its journal and any commit of its own from
        before a restart, and, when ``begins`` and neither holds anything of this
        attempt's, the built-in loop's fresh start (reset, repository map, first
        record). ``None`` or a reason as ``_claim``; raises ``AttemptBusy``.

        The reset scans every file of the worktree against its index. It is left out
        when nothing can have touched the worktree since the git broker checked it out
        and verified every file (on a project of thousands of files, tens of
        milliseconds a task): WorkspaceReady's first delivery (no runner had it before,
        so no agent of this attempt ran), no journal, and the task branch still at the
        attempt's base. An attempt handed back, redelivered after a runner's death, or
        run from a clone is reset as before.

        ``step``: given up (its deadline passed while a part of it waited on the disk),
        the thread changes nothing more: it stops before the reset and the journal's
        first record."""
        claimed = self._claim(ready)
        if not isinstance(claimed, tuple):
            return claimed
        git, directory, lock = claimed
        try:
            if not first_delivery:
                _clear_what_a_killed_holder_left(git)
            journal = Journal(directory)
            started_ns = first_start(directory)
            task, attempt = ready.task, ready.attempt
            records, own = _recall(journal, git, ready.base_sha, task.id, attempt)
            fresh = None
            me = identity(ready.mission_id, task.id, attempt, ready.base_sha)
            step.check()
            if begins and own is None and Conversation.from_records(records, me) is None:
                limits = self.settings.limits(ready.max_cost_usd)
                checked_out = first_delivery and not records and head_sha(git) == ready.base_sha
                fresh = begin_fresh(git, ready, limits, journal, me, checked_out=checked_out)
            return Prepared(git, journal, lock, records, own, fresh, started_ns)
        except BaseException:
            lock.release()
            raise

    def _claim(self, ready: WorkspaceReady) -> tuple[GitDir, Path, AttemptLock] | str | None:
        """The attempt's worktree, state directory and lock, taken in one worker thread
        (under load each hand-off to a thread costs a few milliseconds); ``None`` when the
        attempt is fetched instead, a reason when the worktree is not usable. Raises
        ``AttemptBusy``."""
        worktree = Path(ready.worktree_path)
        if self.settings.fetches(worktree.exists()):
            return None
        if not worktree.is_dir():
            return f"worktree {worktree} does not exist"
        try:
            git = _git_dir(ready, worktree)
            directory = state_dir(git)
        except (OSError, GitDirError) as error:
            return f"{worktree} is not a usable git worktree: {error}"
        lock = AttemptLock(directory)
        if not lock.acquire():
            raise AttemptBusy(f"another agent is working in {worktree}")
        return git, directory, lock

    async def _work_fetched(
        self,
        ready: WorkspaceReady,
        emit: Emit,
        began: float,
        runtime: Runtime | RuntimeUnavailable | None = None,
    ) -> Event:
        """Fetch and push: work the attempt in a clone of its task branch from the git
        broker, then push the commit to that branch before reporting it."""
        settings = self.settings
        assert settings.git_url is not None
        # The attempt's own token (its task branch only, until it ends); the runner's
        # configured token only for a broker from before tokens were per attempt.
        token = ready.push_token or settings.git_token
        broker = Broker(settings.git_url, token, ready.mission_id, settings.git_timeout_seconds)
        if not all(_SAFE_NAME.fullmatch(part) for part in (ready.mission_id, ready.task.id)):
            reason = "the mission or task id cannot name a directory for the clone"
            return failed(ready, self.clock(), reason, False)
        missions = settings.clones_dir() / ready.mission_id
        name = f"{ready.task.id}-a{ready.attempt}"
        clone = missions / name
        await asyncio.to_thread(missions.mkdir, parents=True, exist_ok=True)
        lock = AttemptLock(missions, f"{name}.lock")
        if not await asyncio.to_thread(lock.acquire):
            raise AttemptBusy(f"another agent is working in {clone}")
        try:
            try:
                await asyncio.to_thread(
                    prepare_clone,
                    broker,
                    clone,
                    ready.branch,
                    ready.base_sha,
                    ready.task.id,
                    ready.attempt,
                )
            except RemoteError as error:
                metrics.RESULTS.labels("ended").inc()
                return failed(ready, self.clock(), str(error), error.retryable)
            git = GitDir.clone(clone, ready.branch)

            def own_clone() -> Path:
                # Only the holder of the attempt's lock writes its clone: a lock in it
                # is one a killed holder left, whatever the delivery.
                _clear_what_a_killed_holder_left(git)
                return state_dir(git)

            directory = await asyncio.to_thread(own_clone)
            result = await self._work(ready, git, Journal(directory), emit, began, runtime=runtime)
            if isinstance(result, AgentCompleted):
                try:
                    await asyncio.to_thread(_push, broker, git, ready.branch, result.commit_sha)
                except RemoteError as error:
                    reason = f"the work was committed but not pushed: {error}"
                    return failed(ready, self.clock(), reason, error.retryable)
                log.info("pushed the attempt's commit", extra={"sha": result.commit_sha})
                # The broker's branch now holds the commit, which is all a restart needs.
                await asyncio.to_thread(remove_tree, clone)
            return result
        finally:
            lock.release()

    async def _work(
        self,
        ready: WorkspaceReady,
        git: GitDir,
        journal: Journal,
        emit: Emit,
        began: float,
        prepared: Prepared | None = None,
        runtime: Runtime | RuntimeUnavailable | None = None,
    ) -> Event:
        """The attempt worked in ``git``'s worktree; ``began``: when its handling began
        (``time.perf_counter``), for the preparation's metric."""
        task, attempt = ready.task, ready.attempt
        worktree = git.worktree
        me = identity(ready.mission_id, task.id, attempt, ready.base_sha)
        if prepared is not None:
            records, own, fresh = prepared.records, prepared.own, prepared.fresh
            started_ns = prepared.first_start_ns
        else:
            records, own = await asyncio.to_thread(
                _recall, journal, git, ready.base_sha, task.id, attempt
            )
            fresh = None
            started_ns = await asyncio.to_thread(first_start, journal.path.parent)
        if own is not None:
            conversation = Conversation.from_records(records, me)
            log.info("found this attempt's commit from before a restart; reporting it")
            files = await asyncio.to_thread(commit_files, git, own)
            summary = (conversation.finish_summary() if conversation else None) or (
                "(recovered after a restart)"
            )
            usage = conversation.usage if conversation else _session_usage(records, me, ready)
            recovered = completed(ready, self.clock(), own, summary, files, usage)
            if conversation is None:
                return recovered
            return msgspec.structs.replace(
                recovered, turns=conversation.turns, tool_calls=conversation.tool_calls
            )
        limits = self.settings.limits(ready.max_cost_usd)
        if runtime is None:
            runtime = self._runtime(ready)
        if isinstance(runtime, RuntimeUnavailable):
            metrics.RESULTS.labels("ended").inc()
            return failed(ready, self.clock(), str(runtime), False)
        role = None
        if task.role:
            try:
                role = await asyncio.to_thread(find_role, worktree, task.role)
            except RoleMissing as error:
                metrics.RESULTS.labels("ended").inc()
                return failed(ready, self.clock(), str(error), False)
            # The role's model is the attempt's from here on: events, usage and trailers.
            model = model_for_role(role.model, ready.model, self.tiers)
            ready = msgspec.structs.replace(ready, model=model)
        metrics.STEP_SECONDS.labels("preparation").observe(time.perf_counter() - began)
        await emit(
            decide.started(ready, self.clock(), self.runner_id, self.sandbox_name(), runtime.name)
        )
        reporter = Reporter(ready, emit, self.clock, self.runner_id, self.settings.progress_seconds)
        settings = self.settings
        transcript = Transcript(
            ready,
            emit,
            self.clock,
            self.runner_id,
            settings.transcript,
            Redactor(
                [*secrets_in(os.environ), ready.push_token, settings.git_token],
                [*DEFAULT_PATTERNS, *settings.transcript.redact],
            ),
            runtime=runtime.name,
        )
        if runtime.name != BUILTIN:
            # Only the built-in loop republishes its journal's entries under their own
            # numbers; each run of the others (a resumed Claude Code session included)
            # numbers its entries after the earlier runs'.
            transcript.start_run(await asyncio.to_thread(next_run, journal.path.parent))
        confined = not settings.sandbox.unconfined
        # Every runtime's commands go through this toolbox: the built-in loop's tool calls
        # and Claude Code's run_command alike run under the policy and in the sandbox.
        toolbox = ToolBox(
            Workspace(worktree),
            CommandPolicy(
                settings.commands,
                settings.command_timeout_seconds,
                settings.command_output_chars,
                check_paths=not confined,
            ),
            settings.search_timeout_seconds,
            settings.command_env,
            sandbox=self.sandbox,
            limits=settings.sandbox.limits,
            allowed=role_tools(role),
            disk_since_ns=started_ns,
        )

        commit_limits = settings.commit_limits()
        # The latest look at the worktree, with the tool calls begun before it: the
        # commit reuses it when no call began since (the built-in loop's finish check is
        # taken right before its outcome), rather than scanning every file again.
        looked: tuple[Snapshot, int] | None = None
        # A worktree as the broker checked it out, where no command has run since, holds
        # what the file tools wrote and nothing else new: the look walks only the ways to
        # the paths they went for, not every directory of the project.
        checked_out = fresh is not None and fresh.checked_out

        def changes_now() -> bool:
            nonlocal looked
            looking = time.perf_counter()
            touched = toolbox.workspace.touched
            written = frozenset(touched) if checked_out and not toolbox.commands else None
            seen = snapshot(git, commit_limits.max_blob_bytes, written)
            looked = (seen, toolbox.calls)
            metrics.STEP_SECONDS.labels("finish_check").observe(time.perf_counter() - looking)
            return seen.changed

        async def has_changes() -> bool:
            return await asyncio.to_thread(changes_now)

        job = Job(
            ready=ready,
            worktree=worktree,
            git=git,
            limits=limits,
            journal=journal,
            identity=me,
            observer=reporter,
            toolbox=toolbox,
            has_changes=has_changes,
            changes_now=changes_now,
            role=role,
            transcript=transcript,
            records=records,
            fresh=fresh,
        )
        began = time.monotonic()
        # The built-in loop writes only through the toolbox, which checks the disk cap
        # after each call; any other runtime's agent writes on its own while it runs, so
        # it runs beside the attempt's disk watch, stopped once the attempt is over it.
        exact = runtime.name != BUILTIN
        try:
            if exact:
                outcome = await run_watched(
                    lambda: runtime.run(job), toolbox, lambda: reporter.latest
                )
            else:
                outcome = await runtime.run(job)
        finally:
            toolbox.close()
        metrics.ATTEMPT_TURNS.observe(outcome.turns)
        # Whatever the runtime (a CLI's own file tools, an ACP agent's writes too), an
        # attempt over its disk cap is not committed, nor tried again: it would only
        # fill the disk again. The built-in loop's writes were checked as they came (a
        # walk after each command; the file tools' writes counted), so the file system's
        # counts and the file tools' own, asked inline, suffice.
        over_disk = (
            await asyncio.to_thread(toolbox.check_disk, exact)
            if exact or toolbox.disk_may_be_over()
            else None
        )
        if over_disk is not None:
            outcome = dataclasses.replace(
                outcome, finished=False, reason=over_disk, retryable=False
            )
            # Nothing of the agent runs any more (its runtime has returned, its
            # commands' sandbox is closed): what it wrote goes, the excess with it.
            since = toolbox.attempt_disk().since_ns
            removed = await asyncio.to_thread(clear_excess, git, ready.base_sha, since)
            log.warning(
                "removed what the attempt over its disk cap wrote", extra={"entries": removed}
            )
        if not outcome.finished:
            metrics.RESULTS.labels("ended").inc()
            metrics.ATTEMPT_SECONDS.labels("ended").observe(time.monotonic() - began)
            return counted(failed(ready, self.clock(), outcome.reason, outcome.retryable), outcome)
        scanned = None
        if looked is not None and looked[1] == toolbox.calls and runtime.name == BUILTIN:
            scanned = looked[0]
        # Confined, nothing of the agent outlives its command (the sandbox ends every
        # process a command started), and the toolbox is closed: the worktree is what
        # the commit's scan finds, until the broker takes it back.
        result, kind = await self.steps.run(
            "commit",
            _named(ready),
            self._commit,
            ready,
            git,
            outcome,
            commit_limits,
            scanned,
            confined,
        )
        metrics.RESULTS.labels(kind).inc()
        metrics.ATTEMPT_SECONDS.labels(kind).observe(time.monotonic() - began)
        return counted(result, outcome)

    def _commit(
        self,
        step: Step,
        ready: WorkspaceReady,
        git: GitDir,
        outcome: Outcome,
        limits: CommitLimits,
        scanned: Snapshot | None = None,
        settled: bool = False,
    ) -> tuple[Event, str]:
        message = decide.commit_message(ready, outcome.summary, outcome.usage)
        began = time.perf_counter()
        try:
            sha, changed = commit_all(git, message, limits, scanned, settled)
        except CommitRefused as error:
            refused = decide.commit_refused(ready, self.clock(), str(error))
            log.warning("commit refused", extra={"reason": refused.reason})
            return refused, "refused"
        finally:
            metrics.STEP_SECONDS.labels("commit").observe(time.perf_counter() - began)
        return decide.committed(ready, self.clock(), sha, changed, outcome.summary, outcome.usage)


def counted(result: Event, outcome: Outcome) -> Event:
    """The attempt's result with how many turns and tool calls it took, all told."""
    if isinstance(result, AgentCompleted | AgentFailed):
        return msgspec.structs.replace(result, turns=outcome.turns, tool_calls=outcome.tool_calls)
    return result


def _session_usage(
    records: list[dict[str, Any]], me: dict[str, Any], ready: WorkspaceReady
) -> Usage:
    """What a Claude Code session's journal counted (else nothing is known)."""
    earlier = earlier_run(records, me, load_prices(), ready.model)
    return earlier.usage if earlier is not None else Usage()


def _push(broker: Broker, git: GitDir, branch: str, sha: str) -> None:
    # The clone's git directory opened as a bare repository: nothing of the worktree
    # (its .git, attributes, hooks) takes part in sending the pack.
    with Repo(str(git.common), bare=True) as repo:
        broker.push_branch(repo, branch, sha)


@dataclass(frozen=True)
class Prepared:
    """What the preparation hand-off took and read under the attempt's lock."""

    git: GitDir
    journal: Journal
    lock: AttemptLock
    records: list[dict[str, Any]]
    # This attempt's commit on the task branch from before a restart, if any.
    own: str | None
    # The built-in loop's conversation, begun there (``None``: the runtime's to do).
    fresh: FreshStart | None
    # When the attempt first started (``journal.first_start``; ``None``: now), for its
    # disk cap.
    first_start_ns: int | None


def _release_claimed(claimed: Prepared | str | None) -> None:
    """What a preparation took, released when its handler is no longer there to (it was
    stopped, or the preparation was given up)."""
    if isinstance(claimed, Prepared):
        claimed.lock.release()


def _named(ready: WorkspaceReady) -> str:
    """The attempt as the log and ``/readyz`` name it: ``<mission>/<task>/a<n>``."""
    return f"{ready.mission_id}/{ready.task.id}/a{ready.attempt}"


def _recall(
    journal: Journal, git: GitDir, base_sha: str, task_id: str, attempt: int
) -> tuple[list[dict[str, Any]], str | None]:
    """What the attempt left before a restart: its journal, and its commit if the task
    branch holds it (read together: one hand-off to a worker thread)."""
    return journal.read(), own_commit(git, base_sha, task_id, attempt)


def _git_dir(ready: WorkspaceReady, worktree: Path) -> GitDir:
    """The worktree's git directory as the broker named it; for an event from before it
    did, the ``.git`` file, checked against the broker's layout."""
    if ready.git_dir:
        return GitDir.linked(worktree, Path(ready.git_dir), ready.branch)
    return GitDir.discover(worktree, ready.branch)


def remove_clones(root: Path, mission_ids: Iterable[str]) -> list[str]:
    """Remove the attempt clones under ``root/<mission>`` that no attempt holds (each is
    locked while worked: ``<task>-a<n>.lock`` beside it), then the mission's directory
    once empty; returns the clones removed, as ``<mission>/<task>-a<n>``."""
    removed: list[str] = []
    for mission_id in mission_ids:
        missions = root / mission_id
        if not missions.is_dir() or missions.is_symlink():
            continue
        for clone in sorted(p for p in missions.iterdir() if p.is_dir() and not p.is_symlink()):
            lock = AttemptLock(missions, f"{clone.name}.lock")
            if not lock.acquire():
                continue  # an attempt (in this runner or another) works in it
            try:
                remove_tree(clone)
                removed.append(f"{mission_id}/{clone.name}")
            finally:
                lock.release()
                with contextlib.suppress(OSError):
                    lock.path.unlink()
        for stale in missions.glob("*.lock"):
            if not (missions / stale.name.removesuffix(".lock")).exists():
                with contextlib.suppress(OSError):
                    stale.unlink()
        with contextlib.suppress(OSError):
            missions.rmdir()  # only once empty
    return removed

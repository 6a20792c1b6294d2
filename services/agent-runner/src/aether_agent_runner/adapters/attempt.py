"""Working one attempt: from its worktree to the event that reports it.

Take the attempt's lock; if the task branch already holds this attempt's commit, report it.
Otherwise run the attempt's runtime (``aether_agent_runner.runtimes``: the built-in loop
continues a journal it left, others start over from a clean worktree) and commit what it
did.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
from dulwich.repo import Repo

from aether_agent_runner import metrics
from aether_agent_runner.adapters.commands import CommandPolicy
from aether_agent_runner.adapters.conversation import Conversation, identity
from aether_agent_runner.adapters.git import (
    CommitRefused,
    GitDir,
    GitDirError,
    changed_paths,
    commit_all,
    commit_files,
    own_commit,
)
from aether_agent_runner.adapters.journal import AttemptLock, Journal, state_dir
from aether_agent_runner.adapters.model import Outcome, Progress
from aether_agent_runner.adapters.remote import Broker, RemoteError, prepare_clone
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
from aether_agent_runner.runtimes import (
    BUILTIN,
    Job,
    Runtime,
    RuntimeUnavailable,
    runtime_name,
)
from aether_agent_runner.runtimes.roles import RoleMissing, find_role
from aether_agent_runner.runtimes.session import earlier_run
from aether_events import (
    AgentCompleted,
    AgentFailed,
    AgentProgress,
    AgentStarted,
    Event,
    EventPublisher,
    Usage,
    UsageRecorded,
    WorkspaceReady,
    caused_by,
    outside_scope,
    step_ids,
)
from aether_llm import DEFAULT_TIERS, OFFLINE_MODEL, load_prices
from aether_llm.roles import model_for_role
from aether_runtime import RetryLater
from aether_sandbox import Sandbox, SandboxUnavailable

log = logging.getLogger("aether.agent-runner")

# Mission and task ids as the git broker accepts them; they name the clone's directories.
_SAFE_NAME = re.compile(r"(?!\.{1,2}$)[A-Za-z0-9._-]+")


class AttemptBusy(RetryLater):
    """Another agent holds this attempt's worktree right now; the message comes back later
    (handed back with a delay, not a failed step)."""


def failed(ready: WorkspaceReady, now: datetime, reason: str, retryable: bool) -> AgentFailed:
    return AgentFailed(
        **caused_by(ready, now, step_ids.agent_failed(ready.task.id, ready.attempt)),
        task_id=ready.task.id,
        attempt=ready.attempt,
        reason=reason,
        retryable=retryable,
    )


def completed(
    ready: WorkspaceReady,
    now: datetime,
    sha: str,
    summary: str,
    files: list[str],
    usage: Usage,
) -> AgentCompleted:
    return AgentCompleted(
        **caused_by(ready, now, step_ids.agent_completed(ready.task.id, ready.attempt)),
        task_id=ready.task.id,
        attempt=ready.attempt,
        commit_sha=sha,
        branch=ready.branch,
        summary=summary,
        files_changed=files,
        usage=usage,
        files_outside_scope=outside_scope(files, ready.task.files),
    )


class Reporter:
    """Publishes UsageRecorded for every model call and AgentProgress at most every
    ``interval`` seconds (telemetry: a lost progress event is not worth failing over)."""

    def __init__(
        self,
        ready: WorkspaceReady,
        publisher: Callable[[], EventPublisher],
        clock: Callable[[], datetime],
        runner_id: str,
        interval: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ready = ready
        self._publisher = publisher
        self._clock = clock
        self._runner_id = runner_id
        self._interval = interval
        self._monotonic = monotonic
        self._last: float | None = None

    async def model_called(self, turn: int, usage: Usage) -> None:
        ready, task_id, attempt = self._ready, self._ready.task.id, self._ready.attempt
        await self._publisher().publish(
            UsageRecorded(
                **caused_by(ready, self._clock(), step_ids.agent_usage(task_id, attempt, turn)),
                service="agent-runner",
                model=ready.model,
                usage=usage,
                step=f"agent:{task_id}:a{attempt}:turn{turn}",
                offline=ready.model == OFFLINE_MODEL,
                task_id=task_id,
                attempt=attempt,
            )
        )

    async def progressed(self, progress: Progress, *, always: bool = False) -> None:
        now = self._monotonic()
        if not always and self._last is not None and now - self._last < self._interval:
            return
        self._last = now
        ready = self._ready
        step = step_ids.agent_progress(
            ready.task.id, ready.attempt, progress.turns, progress.tool_calls
        )
        try:
            await self._publisher().publish(
                AgentProgress(
                    **caused_by(ready, self._clock(), step),
                    task_id=ready.task.id,
                    attempt=ready.attempt,
                    runner_id=self._runner_id,
                    turns=progress.turns,
                    tool_calls=progress.tool_calls,
                    files_changed=progress.files_changed,
                    usage=progress.usage,
                    last_action=progress.last_action,
                )
            )
        except Exception:
            log.warning("progress not published", exc_info=True)


@dataclass
class Attempts:
    """Works attempts; ``runtimes`` gives the runtime a name stands for (or raises
    ``RuntimeUnavailable``)."""

    runtimes: Callable[[str], Runtime]
    settings: AgentSettings
    publisher: Callable[[], EventPublisher]
    runner_id: str
    clock: Callable[[], datetime]
    # What commands run in; ``None``: opened from the environment at the first command.
    sandbox: Sandbox | SandboxUnavailable | None = None
    # Model ids of the tiers, for the aliases a role may name (haiku, sonnet, opus).
    tiers: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_TIERS))

    def sandbox_name(self) -> str | None:
        """What AgentStarted reports: the sandbox, or why commands are refused."""
        if self.settings.commands == ():
            return None
        if isinstance(self.sandbox, SandboxUnavailable):
            return "unavailable"
        if self.sandbox is None:
            return "unconfined" if self.settings.sandbox.unconfined else "bubblewrap"
        return self.sandbox.name

    async def work(self, ready: WorkspaceReady) -> Event:
        """The attempt's result: AgentCompleted or AgentFailed. Raises ``AttemptBusy``."""
        worktree = Path(ready.worktree_path)
        if self.settings.fetches(await asyncio.to_thread(worktree.exists)):
            return await self._work_fetched(ready)
        if not await asyncio.to_thread(worktree.is_dir):
            return failed(ready, self.clock(), f"worktree {worktree} does not exist", True)
        try:
            git = await asyncio.to_thread(_git_dir, ready, worktree)
            directory = await asyncio.to_thread(state_dir, git)
        except (OSError, GitDirError) as error:
            reason = f"{worktree} is not a usable git worktree: {error}"
            return failed(ready, self.clock(), reason, True)
        lock = AttemptLock(directory)
        if not await asyncio.to_thread(lock.acquire):
            raise AttemptBusy(f"another agent is working in {worktree}")
        try:
            return await self._work(ready, git, Journal(directory))
        finally:
            lock.release()

    async def _work_fetched(self, ready: WorkspaceReady) -> Event:
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
            directory = await asyncio.to_thread(state_dir, git)
            result = await self._work(ready, git, Journal(directory))
            if isinstance(result, AgentCompleted):
                try:
                    await asyncio.to_thread(_push, broker, git, ready.branch, result.commit_sha)
                except RemoteError as error:
                    reason = f"the work was committed but not pushed: {error}"
                    return failed(ready, self.clock(), reason, error.retryable)
                log.info("pushed the attempt's commit", extra={"sha": result.commit_sha})
                # The broker's branch now holds the commit, which is all a restart needs.
                await asyncio.to_thread(shutil.rmtree, clone, True)
            return result
        finally:
            lock.release()

    async def _work(self, ready: WorkspaceReady, git: GitDir, journal: Journal) -> Event:
        task, attempt = ready.task, ready.attempt
        worktree = git.worktree
        me = identity(ready.mission_id, task.id, attempt, ready.base_sha)
        records = await asyncio.to_thread(journal.read)
        conversation = Conversation.from_records(records, me)
        own = await asyncio.to_thread(own_commit, git, ready.base_sha, task.id, attempt)
        if own is not None:
            log.info("found this attempt's commit from before a restart; reporting it")
            files = await asyncio.to_thread(commit_files, git, own)
            summary = (conversation.finish_summary() if conversation else None) or (
                "(recovered after a restart)"
            )
            usage = conversation.usage if conversation else _session_usage(records, me, ready)
            return completed(ready, self.clock(), own, summary, files, usage)
        limits = self.settings.limits(ready.max_cost_usd)
        try:
            runtime = self.runtimes(runtime_name(ready.runtime, self.settings.runtime))
        except RuntimeUnavailable as error:
            metrics.RESULTS.labels("ended").inc()
            return failed(ready, self.clock(), str(error), False)
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
        await self.publisher().publish(
            AgentStarted(
                **caused_by(ready, self.clock(), step_ids.agent_started(task.id, attempt)),
                task_id=task.id,
                attempt=attempt,
                runner_id=self.runner_id,
                model=ready.model,
                sandbox=self.sandbox_name(),
            )
        )
        reporter = Reporter(
            ready, self.publisher, self.clock, self.runner_id, self.settings.progress_seconds
        )
        settings = self.settings
        transcript = Transcript(
            ready,
            self.publisher,
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
        )

        async def has_changes() -> bool:
            return bool(await asyncio.to_thread(changed_paths, git))

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
            role=role,
            transcript=transcript,
        )
        began = time.monotonic()
        try:
            outcome = await runtime.run(job)
        finally:
            toolbox.close()
        metrics.ATTEMPT_TURNS.observe(outcome.turns)
        if not outcome.finished:
            metrics.RESULTS.labels("ended").inc()
            metrics.ATTEMPT_SECONDS.labels("ended").observe(time.monotonic() - began)
            return failed(ready, self.clock(), outcome.reason, outcome.retryable)
        result, kind = await asyncio.to_thread(self._commit, ready, git, outcome)
        metrics.RESULTS.labels(kind).inc()
        metrics.ATTEMPT_SECONDS.labels(kind).observe(time.monotonic() - began)
        return result

    def _commit(self, ready: WorkspaceReady, git: GitDir, outcome: Outcome) -> tuple[Event, str]:
        task = ready.task
        cost = "unknown" if outcome.usage.cost_usd is None else f"{outcome.usage.cost_usd:.6f}"
        message = (
            f"{task.title}\n\n{outcome.summary}\n\n"
            f"Aether-Mission: {ready.mission_id}\n"
            f"Aether-Task: {task.id}\n"
            f"Aether-Attempt: {ready.attempt}\n"
            f"Aether-Model: {ready.model}\n"
            f"Aether-Cost-USD: {cost}\n"
        )
        try:
            sha, changed = commit_all(git, message, self.settings.commit_limits())
        except CommitRefused as error:
            # Not retried: the same task would most likely produce the same change; a
            # person decides (the reason says what was too much).
            reason = f"the commit was refused: {error}"
            log.warning("commit refused", extra={"reason": reason})
            return failed(ready, self.clock(), reason, False), "refused"
        if sha is None:
            reason = f"the agent finished without changing any file: {outcome.summary}"
            return failed(ready, self.clock(), reason, True), "empty"
        result = completed(ready, self.clock(), sha, outcome.summary, changed, outcome.usage)
        return result, "completed"


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


def _git_dir(ready: WorkspaceReady, worktree: Path) -> GitDir:
    """The worktree's git directory as the broker named it; for an event from before it
    did, the ``.git`` file, checked against the broker's layout."""
    if ready.git_dir:
        return GitDir.linked(worktree, Path(ready.git_dir), ready.branch)
    return GitDir.discover(worktree, ready.branch)

"""Agent runtimes: what works a task inside its prepared worktree.

A runtime is given a ``Job`` (the attempt, its worktree, limits, the runner's tools and
journal, an observer for usage and progress) and returns an ``Outcome``. Cancellation is
asyncio's: when the runner cancels the task running ``Runtime.run``, the runtime stops
its agent (a child process is killed) before the cancellation propagates.

Everything around a runtime stays the runner's and is the same for every one: the attempt
lock, finding a commit from before a restart, ``AgentStarted``, heartbeats, stop orders,
the commit with its trailers and the events that report it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from aether_agent_runner.adapters.conversation import Conversation, Record
from aether_agent_runner.adapters.git import GitDir
from aether_agent_runner.adapters.journal import Journal
from aether_agent_runner.adapters.model import Observer, Outcome
from aether_agent_runner.adapters.tools import ToolBox
from aether_agent_runner.adapters.transcript import Transcript
from aether_agent_runner.domain import Limits
from aether_events import WorkspaceReady
from aether_llm.roles import Role

BUILTIN = "builtin"
CLAUDE_CODE = "claude-code"
KNOWN = (BUILTIN, CLAUDE_CODE)


@dataclass(frozen=True)
class FreshStart:
    """A built-in conversation begun from a clean worktree: whether changes no journal
    accounted for were discarded, the conversation, and its first (journaled) record;
    ``checked_out``: the worktree held exactly the base's tree, as the git broker
    checked it out (not even ignored files), when the conversation began."""

    discarded: bool
    conversation: Conversation
    begin: Record
    checked_out: bool = False


@dataclass(frozen=True)
class Job:
    """One attempt as a runtime sees it."""

    ready: WorkspaceReady
    worktree: Path
    # The worktree's git directory as the broker named it (what git operations go through).
    git: GitDir
    limits: Limits
    journal: Journal
    identity: dict[str, Any]
    observer: Observer
    toolbox: ToolBox
    has_changes: Callable[[], Awaitable[bool]]
    # The same check, blocking, for a worker thread that has other work of the attempt's
    # to do (``None``: only ``has_changes``).
    changes_now: Callable[[], bool] | None = None
    # The repository role the task takes on; ``ready.model`` is already the role's model.
    role: Role | None = None
    # Where the runtime records what the agent does (every runtime has one at work).
    transcript: Transcript | None = None
    # The journal as the runner read it, under the attempt's lock, before the runtime
    # started (``None``: not read; the runtime reads it).
    records: list[dict[str, Any]] | None = None
    # The built-in loop's conversation, begun by the runner in the same hand-off as the
    # lock and the journal's reading (``None``: the runtime resumes or begins it).
    fresh: FreshStart | None = None


class Runtime(Protocol):
    """Works one task in its worktree and says how it ended (the runner commits)."""

    @property
    def name(self) -> str: ...

    async def run(self, job: Job) -> Outcome: ...


class RuntimeUnavailable(Exception):
    """The runtime a task asks for is unknown here, or not installed."""


def runtime_name(requested: str | None, default: str) -> str:
    """The runtime an attempt runs with: the one its task asks for, else the runner's."""
    return (requested or default).strip().lower()

"""The attempt's disk cap held while an agent that writes on its own runs, and what the
attempt wrote taken out of its worktree once it went over.

The built-in loop writes only through the runner's tools, checked after each call
(``ToolBox.call``). A CLI agent's own file tools and an ACP agent write into the worktree
themselves, in between: such a runtime runs beside the attempt's disk watch
(``ToolBox.watch_disk``), and once the attempt is over its cap the runtime is cancelled,
which stops its agent and everything it started (``runtimes``: a runtime kills its
process tree before its cancellation propagates), and the attempt ends, not retryable,
naming the cap. Whatever the runtime, what an attempt over its cap wrote is then removed
and the worktree put back at the attempt's base, so the excess neither stays on the disk
until the mission ends nor goes back to the git broker with the worktree.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from aether_agent_runner.adapters.git import GitDir, reset_to
from aether_agent_runner.adapters.model import Outcome, Progress
from aether_agent_runner.adapters.tools import ToolBox
from aether_sandbox.trees import remove_changed

log = logging.getLogger("aether.agent-runner")


async def run_watched(
    run: Callable[[], Awaitable[Outcome]],
    toolbox: ToolBox,
    progress: Callable[[], Progress | None] = lambda: None,
) -> Outcome:
    """``run()``'s outcome, or, once the attempt goes over its disk cap while it runs,
    the runtime cancelled (its agent stopped) and an outcome that ends the attempt for
    it, with the counts of the last ``progress`` the runtime reported."""
    running = asyncio.ensure_future(run())
    watch = asyncio.ensure_future(toolbox.watch_disk())
    try:
        await asyncio.wait({running, watch}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # cancelled from outside (a stop order): the runtime too
        watch.cancel()
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await running
        raise
    if not running.done() and watch.exception() is not None:
        # A watch that failed must not end the attempt: the check before the commit holds.
        log.error("the attempt's disk watch failed", exc_info=watch.exception())
        await running
    if running.done():
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
        return running.result()
    running.cancel()
    # The runtime's cancellation ends its agent's processes before it returns; what it
    # raises on the way (the CLI's error as it is killed) is the stop's, not a failure.
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await running
    reason = watch.result()
    log.warning("the agent was stopped: the attempt went over its disk cap")
    last = progress()
    return Outcome(
        False,
        reason=reason,
        retryable=False,
        turns=last.turns if last is not None else 0,
        tool_calls=last.tool_calls if last is not None else 0,
    )


def clear_excess(git: GitDir, base_sha: str, since_ns: int) -> int:
    """Remove from the worktree everything made or changed since the attempt's first
    start (``since_ns``), whatever modes it was left with, then put the worktree, its
    index and the task branch back at ``base_sha``. Returns how many entries went."""
    worktree: Path = git.worktree
    removed = remove_changed(worktree, since_ns, keep=(".git",))
    reset_to(git, base_sha)
    return removed

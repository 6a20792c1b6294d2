"""The offline model works a task through the Claude Code runtime, as it does through the
built-in loop: the real CLI from the claude-agent-sdk wheel against the offline model's
own Messages API server (``aether up`` without a key, ``--runtime claude-code``)."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
import pytest

from aether_events import AgentCompleted, AgentFailed
from aether_llm.offline import MARK, start_offline_server

from .conftest import Model, git

if importlib.util.find_spec("claude_agent_sdk") is None:
    pytest.skip("claude_agent_sdk is not installed", allow_module_level=True)


@pytest.fixture
def offline() -> Iterator[Model]:
    server = start_offline_server()
    yield Model(script=None, server=server)  # type: ignore[arg-type]
    server.stop()


async def test_offline_model_works_a_task_through_claude_code(
    task_repo: Any,
    offline: Model,
    start_runner: Callable[..., Any],
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
) -> None:
    before = (task_repo.worktree / "src" / "app.py").read_text()
    await start_runner(offline, runtime="claude-code")
    ready = workspace_ready(task_repo, mission_id, files=["src/app.py", "docs/new.md"])
    await publish(msgspec.structs.replace(ready, model="aether-offline"))
    await events.wait_for(lambda log: bool(log.of(AgentCompleted) or log.of(AgentFailed)), 120)
    assert not events.of(AgentFailed), events.of(AgentFailed)
    done = events.of(AgentCompleted)[0]

    after = (task_repo.worktree / "src" / "app.py").read_text()
    # Every byte it did not write is kept; the marked section follows it.
    assert after == f"{before}\n# --- {MARK}, task t1 ---\n# Make the greeting friendlier\n"
    assert git(task_repo.worktree, "status", "--porcelain") == ""  # all of it committed
    created = (task_repo.worktree / "docs" / "new.md").read_text()
    assert "offline model" in created
    assert set(done.files_changed) == {"src/app.py", "docs/new.md"}
    assert "Offline model" in done.summary


async def test_a_claude_code_cli_that_is_not_there_fails_the_attempt_without_retry(
    task_repo: Any,
    offline: Model,
    start_runner: Callable[..., Any],
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
) -> None:
    missing = str(task_repo.root / "no-such-dir" / "claude")
    await start_runner(offline, runtime="claude-code", claude_code_cli=missing)
    ready = workspace_ready(task_repo, mission_id)
    await publish(msgspec.structs.replace(ready, model="aether-offline"))
    failed: AgentFailed = await events.first(AgentFailed, timeout=60)
    assert "Claude Code is not installed" in failed.reason, failed.reason
    assert missing in failed.reason
    assert not failed.retryable

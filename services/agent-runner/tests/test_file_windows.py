"""Claude Code's own file tools and the agent's commands kept apart in time
(``runtimes.claude_code.FileWindows``): the rules alone, then wired to the real CLI."""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable
from typing import Any

import pytest

from aether_llm import text_block, tool_use_block

from .test_claude_code import RUN_COMMAND, result_text, tool_results, turn, worked_by_claude_code

if importlib.util.find_spec("claude_agent_sdk") is None:
    pytest.skip("claude_agent_sdk is not installed", allow_module_level=True)

# Imported in the tests, not here: every worker collects this module, and importing the
# SDK (0.7 s) is only for the worker that runs them.


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_command_waits_for_the_file_tools_at_work_and_holds_off_new_ones() -> None:
    from aether_agent_runner.runtimes.claude_code import FileWindows

    windows = FileWindows()
    await windows.opening("read-1")
    await windows.opening("read-2")
    order: list[str] = []

    async def command() -> None:
        async with windows.command():
            order.append("command starts")
            await asyncio.sleep(0.05)
            order.append("command ends")

    running = asyncio.create_task(command())
    await settle()
    assert order == []  # two windows open
    await windows.closing("read-1")
    await settle()
    assert order == []
    await windows.closing("read-2")
    await settle()
    assert order == ["command starts"]

    async def read() -> None:
        await windows.opening("read-3")
        order.append("read opens")

    reading = asyncio.create_task(read())
    await asyncio.gather(running, reading)
    assert order == ["command starts", "command ends", "read opens"]


async def test_a_window_left_open_is_closed_by_the_next_reply_or_refuses_the_command() -> None:
    from aether_agent_runner.runtimes.claude_code import CommandBusy, FileWindows

    windows = FileWindows(patience=0.05)
    await windows.opening("read-1")
    with pytest.raises(CommandBusy, match="still at work"):
        async with windows.command():
            pass
    await windows.closing()  # the next model reply: every call before it has its result
    async with windows.command():
        assert windows.commands == 1
    assert windows.commands == 0 and not windows.open


async def test_a_file_tool_waits_for_a_command_no_longer_than_the_patience() -> None:
    from aether_agent_runner.runtimes.claude_code import FileWindows

    windows = FileWindows(patience=0.05)
    async with windows.command():
        assert not await windows.opening("read-1")  # refused: the command still runs
    assert await windows.opening("read-2")
    assert windows.open == {"read-2"}


async def test_a_check_that_fails_blocks_the_call_it_was_to_check(
    task_repo: Any,
    model: Callable[..., Any],
    start_runner: Callable[..., Any],
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A check that cannot be made refuses the call (the CLI would take a hook that
    fails for no decision, and run the tool unchecked, were it not told to block)."""
    from aether_agent_runner.runtimes import claude_code

    checked = claude_code.refused_argument

    def failing(tool: str, arguments: dict[str, Any], root: Any) -> object | None:
        if tool == "Read":
            raise RuntimeError("the check broke")
        return checked(tool, arguments, root)

    monkeypatch.setattr(claude_code, "refused_argument", failing)
    worktree = task_repo.worktree
    (worktree / "secret.txt").write_text("the contents\n")
    scripted = model(
        {
            "t1": [
                turn(tool_use_block("Read", {"file_path": str(worktree / "secret.txt")})),
                turn(
                    tool_use_block("Write", {"file_path": str(worktree / "x.md"), "content": "x"})
                ),
                turn(text_block("done")),
            ]
        }
    )
    await worked_by_claude_code(
        scripted, task_repo, start_runner, publish, events, mission_id, workspace_ready
    )

    [answer] = tool_results(scripted.script.requests[1])
    assert "could not check this call's paths" in result_text(answer)
    assert "the contents" not in result_text(answer)


async def test_the_clis_file_tools_and_commands_do_not_overlap(
    task_repo: Any,
    model: Callable[..., Any],
    start_runner: Callable[..., Any],
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A reply asking for reads and a command side by side: each read's window, opened
    by its PreToolUse before its path is checked and closed by its PostToolUse under the
    same call id (or at once, when the path is refused), never spans a command, and the
    command goes through the windows."""
    from aether_agent_runner.runtimes.claude_code import FileWindows

    seen: list[tuple[str, str | None]] = []
    opening, closing, command = FileWindows.opening, FileWindows.closing, FileWindows.command

    async def opened(self: Any, use_id: str) -> bool:
        done: bool = await opening(self, use_id)
        if done:
            seen.append(("open", use_id))
        return done

    async def closed(self: Any, use_id: str | None = None) -> None:
        seen.append(("close", use_id))
        await closing(self, use_id)

    def commanded(self: Any) -> Any:
        inner = command(self)

        class Recorded:
            async def __aenter__(self) -> None:
                await inner.__aenter__()
                seen.append(("command", "starts"))

            async def __aexit__(self, *error: Any) -> None:
                seen.append(("command", "ends"))
                await inner.__aexit__(*error)

        return Recorded()

    monkeypatch.setattr(FileWindows, "opening", opened)
    monkeypatch.setattr(FileWindows, "closing", closed)
    monkeypatch.setattr(FileWindows, "command", commanded)
    worktree = task_repo.worktree
    app, readme = str(worktree / "src" / "app.py"), str(worktree / "README.md")
    scripted = model(
        {
            "t1": [
                turn(
                    tool_use_block("Read", {"file_path": app}),
                    tool_use_block(RUN_COMMAND, {"command": "python -c print(6*7)"}),
                    tool_use_block("Read", {"file_path": readme}),
                    tool_use_block("Read", {"file_path": "/etc/hostname"}),
                ),
                # A file tool that fails beside a command closes its window all the same.
                turn(
                    tool_use_block("Read", {"file_path": str(worktree / "missing.txt")}),
                    tool_use_block(RUN_COMMAND, {"command": "python -c print(6*8)"}),
                ),
                turn(tool_use_block("Write", {"file_path": readme, "content": "read\n"})),
                turn(text_block("done")),
            ]
        }
    )
    done = await worked_by_claude_code(
        scripted, task_repo, start_runner, publish, events, mission_id, workspace_ready
    )

    assert done.summary == "done"
    opened_ids = [use_id for kind, use_id in seen if kind == "open"]
    # Two reads, the refused one (its path is checked inside its window), the failing
    # one, one write.
    assert len(opened_ids) == 5
    for use_id in opened_ids:
        assert ("close", use_id) in seen[seen.index(("open", use_id)) :]
    inside = False
    windows: set[str | None] = set()
    for kind, what in seen:
        if kind == "command":
            inside = what == "starts"
            assert not (inside and windows), f"a command began with windows open: {seen}"
        elif kind == "open":
            assert not inside, f"a window opened while a command ran: {seen}"
            windows.add(what)
        elif what is None:
            windows.clear()
        else:
            windows.discard(what)
    assert seen.count(("command", "starts")) == 2
    answers = [result_text(block) for r in scripted.script.requests for block in tool_results(r)]
    assert any("42" in a for a in answers) and any("48" in a for a in answers)
    assert not any("still at work" in a for a in answers)

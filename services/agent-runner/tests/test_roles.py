"""A task that names a repository role: its prompt and model reach the model, on both
runtimes; a role the worktree does not define fails the task plainly."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from aether_events import AgentCompleted, AgentFailed, AgentStarted, UsageRecorded
from aether_llm import DEFAULT_TIERS, Reply, text_block, tool_use_block

from .conftest import git, results_of

REVIEWER = """---
name: reviewer
description: Reviews and fixes a change
tools: Read, Edit, Write
model: opus
---
You are a meticulous reviewer. Say REVIEWED-BY-ROLE in your summary.
"""


def with_role(task_repo: Any, ready: Any) -> Any:
    worktree = task_repo.worktree
    (worktree / ".claude" / "agents").mkdir(parents=True)
    (worktree / ".claude" / "agents" / "reviewer.md").write_text(REVIEWER)
    git(worktree, "add", ".claude")
    git(worktree, "commit", "-q", "-m", "a reviewer role")
    task = msgspec.structs.replace(ready.task, role="reviewer")
    return msgspec.structs.replace(ready, task=task, base_sha=git(worktree, "rev-parse", "HEAD"))


async def test_the_builtin_loop_takes_on_the_tasks_role(
    task_repo: Any,
    model: Callable[..., Any],
    start_runner: Callable[..., Any],
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
    tool: Any,
    reply: Any,
    finish: Any,
) -> None:
    scripted = model(
        {"t1": [reply(tool("write_file", path="r.txt", content="ok\n")), finish("REVIEWED")]}
    )
    await start_runner(scripted)
    await publish(with_role(task_repo, workspace_ready(task_repo, mission_id)))
    done = await events.first(AgentCompleted)

    opus = DEFAULT_TIERS["complex"]
    request = scripted.script.requests[0]
    assert request["model"] == opus
    assert "You are a meticulous reviewer." in request["system"][0]["text"]
    assert events.of(AgentStarted)[0].model == opus
    assert {u.model for u in events.of(UsageRecorded)} == {opus}
    assert done.files_changed == ["r.txt"]


async def test_claude_code_takes_on_the_tasks_role_and_its_tools(
    task_repo: Any,
    model: Callable[..., Any],
    start_runner: Callable[..., Any],
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
) -> None:
    pytest.importorskip("claude_agent_sdk")
    path = str(task_repo.worktree / "r.txt")
    scripted = model(
        {
            "t1": [
                lambda r: Reply(
                    [tool_use_block("Write", {"file_path": path, "content": "ok\n"})],
                    "tool_use",
                    50,
                    10,
                ),
                lambda r: Reply([text_block("REVIEWED")], "end_turn", 60, 5),
            ]
        }
    )
    await start_runner(scripted, runtime="claude-code")
    await publish(with_role(task_repo, workspace_ready(task_repo, mission_id)))
    done = await events.first(AgentCompleted, timeout=120)

    opus = DEFAULT_TIERS["complex"]
    request = scripted.script.requests[0]
    assert request["model"] == opus
    system = "".join(block.get("text", "") for block in request["system"])
    assert "You are a meticulous reviewer." in system
    tools = {tool["name"] for tool in request["tools"]}
    assert {"Read", "Edit", "Write"} <= tools
    assert not tools & {"Grep", "Glob", "mcp__aether__run_command", "Bash"}
    assert done.summary == "REVIEWED"


async def test_a_role_the_worktree_does_not_define_fails_the_task(
    task_repo: Any,
    model: Callable[..., Any],
    start_runner: Callable[..., Any],
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
) -> None:
    scripted = model({"t1": []})
    await start_runner(scripted)
    ready = workspace_ready(task_repo, mission_id)
    task = msgspec.structs.replace(ready.task, role="architect")
    await publish(msgspec.structs.replace(ready, task=task))
    failed = await events.first(AgentFailed)

    assert "names role 'architect'" in failed.reason
    assert not failed.retryable
    assert scripted.script.requests == []


NOTES_SKILL = """---
name: release-notes
description: Writes the release notes from CHANGES.md
---
Read CHANGES.md and write docs/release.md, newest first.
"""


def test_the_worktrees_skills_are_found_without_leaving_it(tmp_path: Any) -> None:
    """Each ``.claude/skills/<name>/SKILL.md`` that names and describes its skill, in name
    order; a directory or file that is a link (into or out of the worktree) is not read,
    and what is not a skill is left out."""
    from pathlib import Path

    from aether_agent_runner.runtimes.roles import find_skills

    worktree = Path(tmp_path) / "wt"
    skills = worktree / ".claude" / "skills"
    (skills / "release-notes").mkdir(parents=True)
    (skills / "release-notes" / "SKILL.md").write_text(NOTES_SKILL)
    (skills / "broken").mkdir()
    (skills / "broken" / "SKILL.md").write_text("no front matter\n")
    (skills / "empty").mkdir()
    (skills / "README.md").write_text("not a skill directory\n")
    outside = Path(tmp_path) / "outside"
    outside.mkdir()
    (outside / "SKILL.md").write_text(NOTES_SKILL.replace("release-notes", "escaped"))
    (skills / "linked-dir").symlink_to(outside)
    (skills / "linked-file").mkdir()
    (skills / "linked-file" / "SKILL.md").symlink_to(outside / "SKILL.md")

    found, more = find_skills(worktree)
    assert [(s.name, s.path) for s in found] == [
        ("release-notes", ".claude/skills/release-notes/SKILL.md")
    ]
    assert found[0].description == "Writes the release notes from CHANGES.md"
    assert more == 0
    # The skills directory itself a link: nothing is read through it.
    (worktree / ".claude" / "skills").rename(worktree / ".claude" / "real")
    (worktree / ".claude" / "skills").symlink_to(worktree / ".claude" / "real")
    assert find_skills(worktree) == ([], 0)
    assert find_skills(Path(tmp_path) / "no-such-worktree") == ([], 0)


def test_past_the_bound_skills_are_counted_not_named(tmp_path: Any, monkeypatch: Any) -> None:
    from pathlib import Path

    from aether_agent_runner.runtimes import roles

    monkeypatch.setattr(roles, "MAX_SKILLS", 2)
    skills = Path(tmp_path) / ".claude" / "skills"
    for name in ("a-one", "b-two", "c-three"):
        (skills / name).mkdir(parents=True)
        (skills / name / "SKILL.md").write_text(NOTES_SKILL.replace("release-notes", name))
    found, more = roles.find_skills(Path(tmp_path))
    assert [s.name for s in found] == ["a-one", "b-two"] and more == 1


@pytest.mark.parametrize("runtime", ["builtin", "claude-code"])
async def test_the_agent_is_told_of_the_repositorys_skills(
    runtime: str,
    task_repo: Any,
    model: Callable[..., Any],
    start_runner: Callable[..., Any],
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
) -> None:
    """Its opening message names each skill, what it is for and where its file is (the
    agent reads the file when the task calls for it): on the built-in loop and on Claude
    Code, which is not given the repository's settings and so does not load them itself."""
    if runtime == "claude-code":
        pytest.importorskip("claude_agent_sdk")
    worktree = task_repo.worktree
    (worktree / ".claude" / "skills" / "release-notes").mkdir(parents=True)
    (worktree / ".claude" / "skills" / "release-notes" / "SKILL.md").write_text(NOTES_SKILL)
    git(worktree, "add", ".claude")
    git(worktree, "commit", "-q", "-m", "a release-notes skill")
    ready = msgspec.structs.replace(
        workspace_ready(task_repo, mission_id), base_sha=git(worktree, "rev-parse", "HEAD")
    )
    path = str(worktree / "r.txt")
    if runtime == "builtin":
        replies = [
            Reply([tool_use_block("write_file", {"path": "r.txt", "content": "ok\n"})], "tool_use"),
            Reply([tool_use_block("finish", {"summary": "done"})], "tool_use"),
        ]
    else:
        replies = [
            Reply([tool_use_block("Write", {"file_path": path, "content": "ok\n"})], "tool_use"),
            Reply([text_block("done")], "end_turn"),
        ]
    scripted = model({"t1": [lambda r, reply=reply: reply for reply in replies]})
    await start_runner(scripted, runtime=runtime)
    await publish(ready)
    await events.first(AgentCompleted, timeout=120)

    first = scripted.script.requests[0]["messages"][0]["content"]
    text = first if isinstance(first, str) else "".join(b.get("text", "") for b in first)
    assert "<skills>" in text
    line = (
        "- release-notes (.claude/skills/release-notes/SKILL.md): "
        "Writes the release notes from CHANGES.md"
    )
    assert line in text


READER = """---
name: reader
description: Reads and reports, changes nothing but its notes
tools: Read, Grep, Write
---
You read the code and write NOTES.md.
"""


async def test_the_builtin_loop_offers_only_the_tools_the_role_names(
    task_repo: Any,
    model: Callable[..., Any],
    start_runner: Callable[..., Any],
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
    tool: Any,
    reply: Any,
    finish: Any,
) -> None:
    """A role's ``tools`` (Claude Code's names) narrow the built-in loop's tools as they
    narrow Claude Code's: ``Read``, ``Grep`` and ``Write`` give read_file, search,
    write_file and delete_file, and finish; no edit_file, list_dir or run_command (the
    task's policy allows python), and a call to one is refused."""
    worktree = task_repo.worktree
    (worktree / ".claude" / "agents").mkdir(parents=True)
    (worktree / ".claude" / "agents" / "reader.md").write_text(READER)
    git(worktree, "add", ".claude")
    git(worktree, "commit", "-q", "-m", "a reader role")
    ready = workspace_ready(task_repo, mission_id)
    ready = msgspec.structs.replace(
        ready,
        task=msgspec.structs.replace(ready.task, role="reader"),
        base_sha=git(worktree, "rev-parse", "HEAD"),
    )
    scripted = model(
        {
            "t1": [
                reply(tool("edit_file", path="src/app.py", old_text="Hello", new_text="Hi")),
                reply(tool("run_command", command="python -V")),
                reply(tool("write_file", path="NOTES.md", content="read\n")),
                finish("noted"),
            ]
        }
    )
    await start_runner(scripted, commands=("python",))
    await publish(ready)
    done = await events.first(AgentCompleted)

    offered = [t["name"] for t in scripted.script.requests[0]["tools"]]
    assert offered == ["read_file", "search", "write_file", "delete_file", "finish"]
    answers = [results_of(r)[0] for r in scripted.script.requests[1:3]]
    assert all("is not one of this task's tools" in answer for answer in answers), answers
    assert done.files_changed == ["NOTES.md"]
    assert "Hello" in (worktree / "src" / "app.py").read_text()

"""The attempt's journal: what it keeps, and which records it syncs to disk."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from aether_agent_runner.adapters import attempt as attempt_module
from aether_agent_runner.adapters import journal as journal_module
from aether_agent_runner.adapters.attempt import Attempts
from aether_agent_runner.adapters.git import GitDir
from aether_agent_runner.adapters.journal import AttemptLock, Journal
from aether_agent_runner.config import AgentSettings
from aether_agent_runner.runtimes.session import TURN, tool_record, turn_record
from aether_events import ZERO_USAGE, Event, WorkspaceReady


def test_every_record_reads_back_in_order_and_a_torn_tail_is_ignored(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.start({"kind": "begin", "identity": {"task": "t1"}})
    journal.append({"kind": "reply", "content": [{"type": "text", "text": "ü"}]})
    journal.append({"kind": "answer", "block": {"type": "text", "text": "ok"}})
    with journal.path.open("ab") as out:
        out.write(b'{"kind": "answer", "blo')  # a crash mid-write

    assert [r["kind"] for r in journal.read()] == ["begin", "reply", "answer"]
    assert journal.read()[1]["content"][0]["text"] == "ü"


def test_model_replies_are_synced_the_begin_record_and_tool_results_ride_along(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reply is a paid call a resume must not make again, so it reaches the disk
    before the agent goes on; the built-in loop's begin record (rebuilt as it was by a
    fresh start) and a tool result are written to the system at once and reach the disk
    with the next sync of the same file."""
    synced: list[list[str]] = []
    real_fsync = journal_module.os.fsync

    def fsync(fd: int) -> None:
        real_fsync(fd)
        synced.append(
            [
                line.split(b'"kind":"')[1].split(b'"')[0].decode()
                for line in Path(f"/proc/self/fd/{fd}").read_bytes().splitlines()
            ]
        )

    monkeypatch.setattr(journal_module.os, "fsync", fsync)
    journal = Journal(tmp_path)
    journal.start({"kind": "begin"})
    journal.append({"kind": "reply", "content": []})
    journal.append({"kind": "answer", "block": {}})
    journal.append({"kind": "answer", "block": {}})
    assert len(synced) == 1
    assert [r["kind"] for r in journal.read()] == ["begin", "reply", "answer", "answer"]
    journal.append({"kind": "reply", "content": []})

    assert synced == [
        ["begin", "reply"],
        ["begin", "reply", "answer", "answer", "reply"],
    ]


def test_a_record_written_for_a_later_sync_reaches_the_disk_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``write`` never syncs, whatever the record; ``sync`` syncs everything written."""
    synced: list[int] = []
    real_fsync = journal_module.os.fsync

    def fsync(fd: int) -> None:
        real_fsync(fd)
        synced.append(len(Path(f"/proc/self/fd/{fd}").read_bytes().splitlines()))

    monkeypatch.setattr(journal_module.os, "fsync", fsync)
    journal = Journal(tmp_path)
    journal.start({"kind": "begin"})
    journal.write({"kind": "reply", "content": []})
    journal.write({"kind": "answer", "block": {}})
    assert synced == []
    journal.sync()
    assert synced == [3]
    assert [r["kind"] for r in journal.read()] == ["begin", "reply", "answer"]


def test_a_first_record_a_fresh_start_cannot_rebuild_is_synced_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Claude Code session's first record names the session to resume and carries what
    earlier sessions spent; it is on the disk before the session starts."""
    synced: list[bytes] = []
    real_fsync = journal_module.os.fsync

    def fsync(fd: int) -> None:
        real_fsync(fd)
        synced.append(Path(f"/proc/self/fd/{fd}").read_bytes())

    monkeypatch.setattr(journal_module.os, "fsync", fsync)
    journal = Journal(tmp_path)
    journal.start({"kind": "claude-code", "session_id": "s1"})

    assert len(synced) == 1
    assert b'"session_id":"s1"' in synced[0]


def test_a_first_journal_is_written_in_place_and_an_old_one_replaced_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An attempt's first start makes the file with its record (no file renamed into
    place: a torn first line is cut off by the next read); a start over an old journal
    replaces it whole, so none of its records survive under the new start."""
    renamed: list[str] = []
    real_replace = journal_module.os.replace

    def replace(source: Any, target: Any) -> None:
        renamed.append(Path(target).name)
        real_replace(source, target)

    monkeypatch.setattr(journal_module.os, "replace", replace)
    journal = Journal(tmp_path)
    journal.start({"kind": "claude-code", "session_id": "s1"})
    journal.append({"kind": "reply", "content": []})
    assert renamed == []
    assert [r["kind"] for r in journal.read()] == ["claude-code", "reply"]

    journal.start({"kind": "begin", "identity": {"task": "t2"}})

    assert renamed == ["transcript.jsonl"]
    assert journal.read() == [{"kind": "begin", "identity": {"task": "t2"}}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["transcript.jsonl"]


@pytest.mark.parametrize(
    "torn",
    [b'{"kind": "answer", "blo', b'{"kind":"answer","block":{"type":"text","text":"ok"}}'],
    ids=["mid-record", "before-its-newline"],
)
def test_records_appended_after_a_resume_from_a_torn_tail_are_read_back(
    tmp_path: Path, torn: bytes
) -> None:
    """A resumed attempt appends after the crash's torn line; a second resume must still
    see those records (else it pays again for every model call made after the first)."""
    journal = Journal(tmp_path)
    journal.start({"kind": "begin", "identity": {"task": "t1"}})
    journal.append({"kind": "reply", "content": []})
    with journal.path.open("ab") as out:
        out.write(torn)  # a crash mid-write

    first = [r["kind"] for r in journal.read()]
    journal.append({"kind": "reply", "content": [{"type": "text", "text": "after"}]})
    journal.append({"kind": "answer", "block": {"type": "text", "text": "later"}})

    again = journal.read()
    kept = 1 if torn.endswith(b"}") else 0
    assert first == ["begin", "reply"] + ["answer"] * kept
    assert [r["kind"] for r in again] == [*first, "reply", "answer"]
    assert again[-2]["content"][0]["text"] == "after"
    assert journal.path.read_bytes().endswith(b"\n")


def test_a_claude_code_turn_is_synced_as_it_is_appended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its usage is what a resumed session counts against the budget and numbers its
    next usage event from."""
    synced: list[int] = []
    real_fsync = journal_module.os.fsync

    def fsync(fd: int) -> None:
        real_fsync(fd)
        synced.append(fd)

    journal = Journal(tmp_path)
    journal.start({"kind": "claude-code", "identity": {}, "session_id": "s"})
    monkeypatch.setattr(journal_module.os, "fsync", fsync)
    journal.append(tool_record())
    assert synced == []
    journal.append(turn_record("m", ZERO_USAGE))
    assert len(synced) == 1
    assert journal.read()[-1]["kind"] == TURN


async def test_an_attempt_stopped_while_its_lock_is_taken_leaves_the_lock_free(
    task_repo: Any, workspace_ready: Callable[..., WorkspaceReady], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worktree is claimed (checked, its state directory made, its lock taken) in a
    worker thread. An attempt stopped meanwhile lets go of the lock once the thread has
    taken it; held, it would refuse every later attempt in this worktree (a pooled one
    comes back for another task) for as long as the process lives."""
    entered, go_on = threading.Event(), threading.Event()
    real_state_dir = attempt_module.state_dir

    def slow_state_dir(git: GitDir) -> Path:
        entered.set()
        go_on.wait(timeout=60)
        return real_state_dir(git)

    released = asyncio.Event()
    real_release = attempt_module._release_claimed

    def release(claiming: Any) -> None:
        real_release(claiming)
        released.set()

    monkeypatch.setattr(attempt_module, "state_dir", slow_state_dir)
    monkeypatch.setattr(attempt_module, "_release_claimed", release)
    attempts = Attempts(
        runtimes=lambda name: None,  # type: ignore[arg-type,return-value]
        settings=AgentSettings(),
        runner_id="r",
        clock=lambda: datetime.now(UTC),
    )
    ready = workspace_ready(task_repo, "m-stop")

    async def emit(event: Event) -> None:
        raise AssertionError(f"a stopped claim emitted {event!r}")

    work = asyncio.create_task(attempts.work(ready, emit))
    assert await asyncio.to_thread(entered.wait, 60)
    work.cancel()
    with pytest.raises(asyncio.CancelledError):
        await work
    go_on.set()
    await asyncio.wait_for(released.wait(), 60)

    git = attempt_module._git_dir(ready, Path(ready.worktree_path))
    lock = AttemptLock(real_state_dir(git))
    assert lock.acquire()
    lock.release()

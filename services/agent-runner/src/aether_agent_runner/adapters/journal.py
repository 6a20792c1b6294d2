"""Where an attempt's conversation is kept, and who may work on it.

Both live in the worktree's own git administrative directory (``<repo>/.git/worktrees/<id>/
aether-agent/``): outside the worktree, so the agent's tools cannot reach them and they are
never committed, and removed with the worktree by the git broker, so they share the fate of
the files they describe. A runner that sees the worktree sees its transcript.

The journal is JSON lines, appended one step at a time; a line torn by a crash is cut off
when the journal is next read.
Every record is written to the operating system before the agent goes on, so a runner
process that dies loses none of them. Only the records whose loss would repeat an effect
are also synced to the disk, against a machine that stops: each model reply (a paid call,
which a resume must not make again), each Claude Code turn's usage, and a first record
that carries what a fresh start could not rebuild (a Claude Code session's id and what its
earlier sessions spent). The
built-in loop syncs a reply while it runs the reply's tools, and waits for that sync
before its next model call and before its outcome (``Agent.sync``). A
sync writes everything appended before it, so the tool results between two replies reach
the disk with the next reply; one lost to a machine crash before that is a tool call made
again on resume, whose file writes were no more on the disk than its record was. The
built-in loop's first record (the attempt's identity and prompt) reaches the disk with
the first reply in the same way: lost before that, the attempt starts over having paid
for nothing. The lock is an ``flock`` held while an agent works: the kernel releases
it when the process dies, so a runner that takes over never finds a stale lock, and two
runners on one machine can never work one attempt at the same time.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

from aether_agent_runner.adapters.git import GitDir
from aether_agent_runner.adapters.safefs import write_all

DIRECTORY = "aether-agent"
# The records synced to disk as they are appended (see above): a model reply of the
# built-in loop, and a Claude Code turn's usage (``runtimes.session.TURN``: a paid call
# whose usage, lost, a resumed session would neither count against the budget nor give
# its own event id, so the next call's usage would reuse it and be dropped as a copy).
SYNCED = frozenset({"reply", "claude-code-turn"})
# First records that need no sync of their own: the built-in loop's, which a fresh start
# rebuilds as it was; any other first record is synced.
UNSYNCED_STARTS = frozenset({"begin"})


def state_dir(git: GitDir) -> Path:
    """The runner's directory for the attempt in ``git``'s worktree (created if missing)."""
    directory = git.admin / DIRECTORY
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def first_start(directory: Path) -> int | None:
    """When the attempt in ``directory`` first started, in nanoseconds of the wall clock,
    on a later start (a runner resuming it after another died), so that its disk cap
    counts what it wrote before as well; ``None`` on its first start, when the time is
    written (nothing was written before it: its cap counts from now, without a walk)."""
    path = directory / "first-start"
    with contextlib.suppress(FileNotFoundError, ValueError):
        return int(path.read_text().strip())
    path.write_text(f"{time.time_ns()}\n")
    return None


class Journal:
    """The attempt's conversation records, one JSON object per line."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "transcript.jsonl"

    def read(self) -> list[dict[str, Any]]:
        """The records, in order, up to a line torn by a crash mid-write (everything after
        it is unknown). The torn tail is cut off the file, and a last whole record the crash
        left without its newline gets one: records appended after a resume would otherwise
        land on the torn line and be lost to every later read. Only the attempt's lock
        holder reads."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        records: list[dict[str, Any]] = []
        whole = 0  # bytes of the file made of whole records
        while whole < len(data):
            end = data.find(b"\n", whole)
            line = data[whole:] if end < 0 else data[whole:end]
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    break
                if isinstance(record, dict):
                    records.append(record)
            whole = len(data) if end < 0 else end + 1
        if whole < len(data) or not data.endswith(b"\n"):
            self._cut(whole)
        return records

    def _cut(self, length: int) -> None:
        """Keep the first ``length`` bytes, ending on a newline."""
        with self.path.open("r+b") as out:
            out.truncate(length)
            if length:
                out.seek(length - 1)
                if out.read(1) != b"\n":
                    out.write(b"\n")
            out.flush()
            os.fsync(out.fileno())

    def start(self, record: dict[str, Any]) -> None:
        """Begin a new journal with ``record``, replacing any old one.

        With no journal there yet (an attempt's first start), the file is made with its
        record in it: a crash half-way leaves a torn line, which the next read cuts off
        as it would any other. An old journal is replaced whole, by a new file renamed
        over it, so no crash leaves its records under the new start."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC
        target = self.path
        try:
            fd = os.open(target, flags | os.O_EXCL, 0o644)
        except FileExistsError:
            target = self.path.with_suffix(".tmp")
            fd = os.open(target, flags | os.O_TRUNC, 0o644)
        try:
            write_all(fd, _line(record))
            if record.get("kind") not in UNSYNCED_STARTS:
                os.fsync(fd)
        finally:
            os.close(fd)
        if target != self.path:
            os.replace(target, self.path)

    def append(self, record: dict[str, Any]) -> None:
        with self.path.open("ab") as out:
            out.write(_line(record))
            out.flush()
            if self.syncs(record):
                os.fsync(out.fileno())

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` for the operating system only, whatever its kind: for a
        caller that syncs on its own (``sync``) while it goes on."""
        with self.path.open("ab") as out:
            out.write(_line(record))

    def sync(self) -> None:
        """Wait until everything appended so far is on the disk."""
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    @staticmethod
    def syncs(record: dict[str, Any]) -> bool:
        """Whether appending ``record`` waits for the disk (the rest only reach the
        operating system, in microseconds)."""
        return record.get("kind") in SYNCED


def _line(record: dict[str, Any]) -> bytes:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


class AttemptLock:
    """An exclusive, non-blocking ``flock`` on the attempt's lock file."""

    def __init__(self, directory: Path, name: str = "lock") -> None:
        self.path = directory / name
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock; ``False`` when another process (or runner) holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

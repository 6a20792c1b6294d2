"""Committing the agent's work on its task branch (dulwich, in the linked worktree)."""

from __future__ import annotations

from pathlib import Path

from dulwich import porcelain
from dulwich.repo import Repo

AUTHOR = b"Aether Agent <agent@aether.invalid>"


def head_sha(worktree: Path) -> str:
    with Repo(str(worktree)) as repo:
        return repo.head().decode()


def commit_message_trailers(sha: str, worktree: Path) -> dict[str, str]:
    """The ``Key: value`` trailers of a commit's message."""
    with Repo(str(worktree)) as repo:
        message = repo[sha.encode()].message.decode("utf-8", errors="replace")  # type: ignore[attr-defined]
    trailers: dict[str, str] = {}
    for line in message.strip().splitlines()[::-1]:
        key, sep, value = line.partition(": ")
        if not sep or " " in key:
            break
        trailers[key] = value
    return trailers


def _text(path: str | bytes) -> str:
    return path.decode() if isinstance(path, bytes) else path


def commit_all(worktree: Path, message: str) -> tuple[str | None, list[str]]:
    """Stage every change in the worktree and commit it; ``(None, [])`` when nothing changed."""
    with Repo(str(worktree)) as repo:
        status = porcelain.status(repo, untracked_files="all")
        paths = [*status.unstaged, *status.untracked]
        paths += [p for group in status.staged.values() for p in group]
        changed = sorted({_text(p) for p in paths})
        if not changed:
            return None, []
        repo.get_worktree().stage([p.encode() for p in changed])
        sha = porcelain.commit(repo, message=message.encode(), author=AUTHOR, committer=AUTHOR)
        return sha.decode(), changed

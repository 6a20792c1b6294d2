"""The agent's side of git (dulwich, in the linked worktree): committing the work on the
task branch, finding that commit again after a restart, and starting over cleanly."""

from __future__ import annotations

from pathlib import Path

from dulwich import porcelain
from dulwich.objects import Commit
from dulwich.repo import Repo

AUTHOR = b"Aether Agent <agent@aether.invalid>"


def control_dir(worktree: Path) -> Path:
    """The worktree's git administrative directory (``.git/worktrees/<id>`` for a linked
    worktree, ``.git`` for a main one)."""
    with Repo(str(worktree)) as repo:
        return Path(repo.controldir())


def head_sha(worktree: Path) -> str:
    with Repo(str(worktree)) as repo:
        return repo.head().decode()


def commit_message_trailers(sha: str, worktree: Path) -> dict[str, str]:
    """The ``Key: value`` trailers of a commit's message."""
    with Repo(str(worktree)) as repo:
        commit = repo[sha.encode()]
        assert isinstance(commit, Commit)
        message = commit.message.decode("utf-8", errors="replace")
    trailers: dict[str, str] = {}
    for line in message.strip().splitlines()[::-1]:
        key, sep, value = line.partition(": ")
        if not sep or " " in key:
            break
        trailers[key] = value
    return trailers


def own_commit(worktree: Path, base_sha: str, task_id: str, attempt: int) -> str | None:
    """The sha of this attempt's commit when the task branch's head is one, else ``None``."""
    head = head_sha(worktree)
    if head == base_sha:
        return None
    trailers = commit_message_trailers(head, worktree)
    if trailers.get("Aether-Task") == task_id and trailers.get("Aether-Attempt") == str(attempt):
        return head
    return None


def _text(path: str | bytes) -> str:
    return path.decode() if isinstance(path, bytes) else path


def changed_paths(worktree: Path) -> list[str]:
    """Every path that differs from the head commit: modified, deleted, new or staged."""
    with Repo(str(worktree)) as repo:
        status = porcelain.status(repo, untracked_files="all")
        paths = [*status.unstaged, *status.untracked]
        paths += [p for group in status.staged.values() for p in group]
        return sorted({_text(p) for p in paths})


def commit_files(worktree: Path, sha: str) -> list[str]:
    """The paths a commit changed relative to its first parent."""
    with Repo(str(worktree)) as repo:
        commit = repo[sha.encode()]
        assert isinstance(commit, Commit)
        parent_tree = None
        if commit.parents:
            parent = repo[commit.parents[0]]
            assert isinstance(parent, Commit)
            parent_tree = parent.tree
        changes = repo.object_store.tree_changes(parent_tree, commit.tree)
        paths: set[str] = set()
        for (old, new), _, _ in changes:
            for path in (old, new):
                if path is not None:
                    paths.add(path.decode("utf-8", errors="replace"))
        return sorted(paths)


def commit_all(worktree: Path, message: str) -> tuple[str | None, list[str]]:
    """Stage every change in the worktree and commit it; ``(None, [])`` when nothing changed."""
    changed = changed_paths(worktree)
    if not changed:
        return None, []
    with Repo(str(worktree)) as repo:
        repo.get_worktree().stage([p.encode() for p in changed])
        sha = porcelain.commit(repo, message=message.encode(), author=AUTHOR, committer=AUTHOR)
        return sha.decode(), changed


def reset_to(worktree: Path, sha: str) -> bool:
    """Put the task branch, index and files back at ``sha`` and remove untracked files.

    Returns whether anything had to change.
    """
    if head_sha(worktree) == sha and not changed_paths(worktree):
        return False
    with Repo(str(worktree)) as repo:
        porcelain.reset(repo, "hard", sha.encode())
        porcelain.clean(repo, str(worktree))
    return True

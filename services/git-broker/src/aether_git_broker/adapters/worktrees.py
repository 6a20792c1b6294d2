"""Linked worktrees, laid out exactly as ``git worktree add`` lays them out.

A linked worktree is a directory whose ``.git`` file points at an administrative
directory ``<common dir>/worktrees/<id>`` holding its ``HEAD``, its index and a ``gitdir``
file pointing back. dulwich's ``add_worktree`` names that directory after the worktree's
base name, which two missions with a task of the same id would share, so the broker
writes the same files itself with an id that includes a hash of the full path.

A worktree is checked out under a temporary name and renamed into place, so a worktree
that exists is complete: after a crash half-way through it is rebuilt, never reused.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil

from dulwich.repo import Repo

log = logging.getLogger("aether.git_broker.worktrees")

_PARTIAL = ".partial"


def _common_dir(repo: Repo) -> str:
    return os.path.realpath(repo.commondir())


def _admin_root(repo: Repo) -> str:
    return os.path.join(_common_dir(repo), "worktrees")


def _admin_id(path: str) -> str:
    digest = hashlib.sha256(path.encode()).hexdigest()[:10]
    return f"{os.path.basename(path)}-{digest}"


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as file:
            return file.read().strip()
    except (FileNotFoundError, NotADirectoryError, PermissionError, UnicodeDecodeError):
        return None


def registered_worktrees(repo: Repo) -> dict[str, str]:
    """Linked worktrees of ``repo``: real worktree path → administrative directory."""
    root = _admin_root(repo)
    found: dict[str, str] = {}
    if not os.path.isdir(root):
        return found
    for entry in sorted(os.listdir(root)):
        admin = os.path.join(root, entry)
        gitdir = _read(os.path.join(admin, "gitdir"))
        if gitdir is None:
            continue
        if not os.path.isabs(gitdir):
            gitdir = os.path.join(admin, gitdir)
        found[os.path.realpath(os.path.dirname(gitdir))] = admin
    return found


def is_worktree_on(repo: Repo, path: str, branch_ref: bytes) -> bool:
    """Whether ``path`` is a complete linked worktree of ``repo`` checked out on the branch."""
    pointer = _read(os.path.join(path, ".git"))
    if pointer is None or not pointer.startswith("gitdir: "):
        return False
    admin = os.path.realpath(pointer.removeprefix("gitdir: "))
    if os.path.dirname(admin) != _admin_root(repo):
        return False
    if _read(os.path.join(admin, "HEAD")) != f"ref: {branch_ref.decode()}":
        return False
    return os.path.exists(os.path.join(admin, "index"))


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as file:
        file.write(text)


def add_worktree(repo: Repo, path: str, branch_ref: bytes) -> bool:
    """Make ``path`` a linked worktree on ``branch_ref`` (which must exist).

    Returns ``False`` when a complete worktree on that branch is already there (it is
    reused untouched: an agent may be at work in it), ``True`` when one was created.
    """
    if is_worktree_on(repo, path, branch_ref):
        return False
    remove_worktree(repo, path)
    partial = path + _PARTIAL
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    admin = os.path.join(_admin_root(repo), _admin_id(path))
    shutil.rmtree(admin, ignore_errors=True)
    os.makedirs(admin)
    _write(os.path.join(partial, ".git"), f"gitdir: {admin}\n")
    _write(os.path.join(admin, "gitdir"), os.path.join(path, ".git") + "\n")
    _write(os.path.join(admin, "commondir"), "../..\n")
    _write(os.path.join(admin, "HEAD"), f"ref: {branch_ref.decode()}\n")
    with Repo(partial) as worktree:
        worktree.get_worktree().reset_index()
    os.rename(partial, path)
    return True


def remove_worktree(repo: Repo, path: str) -> bool:
    """Remove the worktree at ``path`` and its administrative directory, if present."""
    real = os.path.realpath(path)
    admin = registered_worktrees(repo).get(real)
    removed = False
    if admin is not None:
        shutil.rmtree(admin, ignore_errors=True)
        removed = True
    for leftover in (path, path + _PARTIAL):
        if os.path.lexists(leftover):
            shutil.rmtree(leftover, ignore_errors=True)
            removed = True
    return removed


def remove_worktrees_under(repo: Repo, directory: str) -> list[str]:
    """Remove every linked worktree of ``repo`` inside ``directory``, then the directory."""
    root = os.path.realpath(directory)
    removed = []
    for path in registered_worktrees(repo):
        if path.startswith(root + os.sep) and remove_worktree(repo, path):
            removed.append(path)
    if os.path.isdir(directory):
        shutil.rmtree(directory, ignore_errors=True)
    return removed

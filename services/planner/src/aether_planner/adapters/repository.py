"""Reading files of the base commit, read-only (dulwich; never a write, never a checkout)."""

from __future__ import annotations

import logging

from dulwich.errors import NotGitRepository
from dulwich.objects import Blob, Commit, Tree
from dulwich.repo import Repo

log = logging.getLogger("aether.planner.repository")


def read_files(
    repository_path: str, commit_sha: str, paths: list[str], max_bytes: int = 20_000
) -> dict[str, str]:
    """The text of ``paths`` at ``commit_sha``; binary, missing or unreadable files are left out.

    The planner may run where the repository is not mounted: then it plans from the file
    list alone, and says so in the log.
    """
    out: dict[str, str] = {}
    try:
        repo = Repo(repository_path)
    except (NotGitRepository, OSError) as error:
        log.info(
            "repository not readable here; planning from the file list", extra={"error": str(error)}
        )
        return out
    with repo:
        try:
            commit = repo[commit_sha.encode()]
        except KeyError:
            return out
        if not isinstance(commit, Commit):
            return out
        tree = repo[commit.tree]
        assert isinstance(tree, Tree)
        for path in paths:
            try:
                _, sha = tree.lookup_path(repo.object_store.__getitem__, path.encode())
                blob = repo[sha]
            except KeyError:
                continue
            if not isinstance(blob, Blob):
                continue
            data = blob.data[:max_bytes]
            if b"\x00" in data:
                continue
            out[path] = data.decode("utf-8", errors="replace")
    return out

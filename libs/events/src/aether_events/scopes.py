"""What a task's planned file scope covers.

A planned scope (``PlannedTask.files``) lists paths; an entry ending in ``/`` covers
everything below it. The agent runner uses this to record the files an attempt changed
outside its scope (scope drift) on ``AgentCompleted``; the scheduler's file-scope leases
use the same reading of a scope.
"""

from __future__ import annotations

from collections.abc import Iterable


def _entry(path: str) -> tuple[str, bool]:
    """A scope entry as (normalised path, is a directory prefix)."""
    clean = path.strip().strip("/") if path.strip() not in ("", "/", ".") else ""
    return clean, path.endswith("/") or clean == ""


def in_scope(path: str, scope: Iterable[str]) -> bool:
    """Whether ``path`` (a file, relative to the repository) is covered by ``scope``."""
    target = path.strip("/")
    for entry in scope:
        clean, directory = _entry(entry)
        if clean == target or (directory and (clean == "" or target.startswith(clean + "/"))):
            return True
    return False


def outside_scope(files: Iterable[str], scope: Iterable[str]) -> list[str]:
    """The files not covered by ``scope``, sorted; none when the scope is empty (the plan
    said nothing about where the task works, so there is nothing to drift from)."""
    planned = list(scope)
    if not planned:
        return []
    return sorted({f for f in files if not in_scope(f, planned)})

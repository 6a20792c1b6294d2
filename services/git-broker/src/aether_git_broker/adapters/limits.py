"""What one task's commit may bring into an integration branch, checked before a merge
reads any of it.

The agent runner refuses to commit too much (``AETHER_AGENT_COMMIT_MAX_*``), but a commit
also reaches the broker by a push over smart HTTP, made by whatever holds the attempt's
push token. So the broker checks the task's change itself, against the merge base, before
the merge, the marker check or a diff reads a blob: the paths it changes, each new file's
length and their sum (read from the objects' headers, never inflated), and how deep its
directories go (the tree walks are recursive). A change over a limit is refused like an
unsafe path, with the reason, and the branch stays where it was.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass

from dulwich.objects import ObjectID

from aether_events.diffs import shown_path
from aether_git_broker.adapters.treemerge import Entry, Trees, is_dir, is_file


@dataclass(frozen=True)
class CommitLimits:
    """The most one task's change may hold (the runner's own limits by default)."""

    max_files: int = 2_000
    max_blob_bytes: int = 10_000_000
    max_bytes: int = 100_000_000
    # Directories nested deeper than this (in the paths the change touches) are refused.
    max_depth: int = 200


def over_limits(
    trees: Trees, base_tree: ObjectID | None, tree: ObjectID, limits: CommitLimits
) -> str | None:
    """Why the change from ``base_tree`` to ``tree`` is too much to merge, or None.

    Walks only the directories that differ, without recursion, and stops at the first
    limit passed, so a change of a million files costs what its first few thousand do."""
    files = total = 0
    root_old: Entry | None = (stat.S_IFDIR, base_tree) if base_tree is not None else None
    pending: list[tuple[bytes, Entry | None, Entry | None, int]] = [
        (b"", root_old, (stat.S_IFDIR, tree), 0)
    ]
    while pending:
        path, old, new, depth = pending.pop()
        if depth > limits.max_depth:
            return (
                f"{_shown(path)} lies {depth} directories deep, more than the "
                f"{limits.max_depth} a change may nest"
            )
        old_entries = trees.entries(old[1]) if old is not None and is_dir(old) else {}
        new_entries = trees.entries(new[1]) if new is not None and is_dir(new) else {}
        for name in old_entries.keys() | new_entries.keys():
            a, b = old_entries.get(name), new_entries.get(name)
            if a == b:
                continue
            child = path + b"/" + name if path else name
            if is_dir(a) or is_dir(b):
                pending.append((child, a, b, depth + 1))
            if (a is not None and not is_dir(a)) or (b is not None and not is_dir(b)):
                files += 1
                if files > limits.max_files:
                    return f"the change has more than {limits.max_files:,} changed files"
            if is_file(b) or (b is not None and stat.S_ISLNK(b[0])):
                size = trees.objects.size(b[1])
                if size > limits.max_blob_bytes:
                    return (
                        f"{_shown(child)} has {size:,} bytes, more than the "
                        f"{limits.max_blob_bytes:,} one file may have in a commit"
                    )
                total += size
                if total > limits.max_bytes:
                    return f"the change holds more than {limits.max_bytes:,} bytes of files"
    return None


def _shown(path: bytes) -> str:
    return shown_path(path) if path else "the top directory"

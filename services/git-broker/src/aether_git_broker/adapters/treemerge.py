"""A three-way merge of trees, without a checkout.

dulwich ships a ``Merger``, but merging a file both sides changed needs the optional
``merge3`` package (without it dulwich raises ``ImportError``), and it reports a false
conflict when only one side changed a file's mode. The broker's rule is simpler and
strict: a path changed on one side only takes that side; the same change on both sides is
fine; different changes to the same path are a conflict. Line-level merging of one file
is left to the task's retry, which re-runs the agent on the new head.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from dulwich.diff_tree import tree_changes
from dulwich.object_store import BaseObjectStore, commit_tree_changes
from dulwich.objects import ObjectID

# (mode, sha) of a path after a change, or None when the change deleted it.
Entry = tuple[int, ObjectID] | None


@dataclass(frozen=True)
class TreeMerge:
    tree: ObjectID | None
    conflicts: tuple[str, ...]


def changed_paths(
    store: BaseObjectStore, old_tree: ObjectID | None, new_tree: ObjectID | None
) -> dict[bytes, Entry]:
    """Every file path that differs between two trees, with its new entry."""
    changes: dict[bytes, Entry] = {}
    for change in tree_changes(store, old_tree, new_tree):
        if change.old is not None and change.old.path is not None:
            changes.setdefault(change.old.path, None)
        if change.new is not None and change.new.path is not None:
            changes[change.new.path] = (change.new.mode, change.new.sha)
    return changes


def _parents(path: bytes) -> list[bytes]:
    parents = []
    parent = posixpath.dirname(path)
    while parent:
        parents.append(parent)
        parent = posixpath.dirname(parent)
    return parents


def _file_directory_clashes(ours: dict[bytes, Entry], theirs: dict[bytes, Entry]) -> set[bytes]:
    """Paths one side makes a file while the other puts files beneath them."""
    clashes: set[bytes] = set()
    for mine, other in ((ours, theirs), (theirs, ours)):
        files = {path for path, entry in other.items() if entry is not None}
        for path, entry in mine.items():
            if entry is None:
                continue
            clashes.update(parent for parent in _parents(path) if parent in files)
    return clashes


def merge_trees(
    store: BaseObjectStore,
    base_tree: ObjectID | None,
    ours_tree: ObjectID,
    theirs_tree: ObjectID,
) -> TreeMerge:
    """Merge ``theirs`` into ``ours`` relative to ``base``; writes the new trees to ``store``.

    Returns the merged tree's id, or ``None`` and the conflicting paths.
    """
    ours = changed_paths(store, base_tree, ours_tree)
    theirs = changed_paths(store, base_tree, theirs_tree)
    conflicts = {path for path, entry in theirs.items() if path in ours and ours[path] != entry}
    conflicts |= _file_directory_clashes(ours, theirs)
    if conflicts:
        return TreeMerge(
            tree=None, conflicts=tuple(sorted(p.decode(errors="replace") for p in conflicts))
        )
    # A directory their side turned into a file is replaced whole; deleting its old
    # files one by one would descend into the new file as if it were a tree.
    their_files = {path for path, entry in theirs.items() if entry is not None}
    to_apply: list[tuple[bytes, int | None, ObjectID | None]] = [
        (path, *(entry if entry is not None else (None, None)))
        for path, entry in sorted(theirs.items())
        if path not in ours
        and not (entry is None and any(p in their_files for p in _parents(path)))
    ]
    if not to_apply:
        return TreeMerge(tree=ours_tree, conflicts=())
    return TreeMerge(tree=commit_tree_changes(store, ours_tree, to_apply), conflicts=())

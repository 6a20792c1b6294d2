"""Commits, cached, and the merge base of two of them.

A commit never changes, so parsed commits are kept in a bounded cache. Each merge of the
train walks the integration branch back to its base (to find an earlier merge of the same
task, and the merge base), so without the cache every merge would read the whole
mission's history from disk again.
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict

from dulwich.object_store import BaseObjectStore
from dulwich.objects import Commit, ObjectID, ShaFile

from aether_git_broker.adapters.objects import ObjectIO

_ONE, _TWO, _STALE, _RESULT = 1, 2, 4, 8


class NotACommit(ValueError):
    """An id that names something other than a commit."""


class Commits:
    """Commits of one object store, parsed once and kept in a bounded cache."""

    def __init__(self, store: BaseObjectStore, max_commits: int = 50_000) -> None:
        self.store = store
        self._objects = ObjectIO(store)
        self._cache: OrderedDict[ObjectID, Commit] = OrderedDict()
        self._max = max_commits

    def get(self, sha: ObjectID) -> Commit:
        """The commit ``sha``; ``KeyError`` when missing, ``NotACommit`` when not one."""
        cached = self._cache.get(sha)
        if cached is not None:
            self._cache.move_to_end(sha)
            return cached
        type_num, raw = self._objects.read(sha)
        obj = ShaFile.from_raw_string(type_num, raw, sha=sha)
        if not isinstance(obj, Commit):
            raise NotACommit(f"{sha.decode()} is a {obj.type_name.decode()}, not a commit")
        self._cache[sha] = obj
        if len(self._cache) > self._max:
            self._cache.popitem(last=False)
        return obj

    def remember(self, commit: Commit) -> None:
        """Cache a commit this process just wrote."""
        self._cache[commit.id] = commit


def merge_bases(commits: Commits, one: ObjectID, two: ObjectID) -> list[ObjectID]:
    """The best common ancestors of two commits (usually one), as ``git merge-base --all``.

    Git's own method: walk both histories newest first, marking each commit with the
    side(s) it is reachable from; a commit reachable from both is a candidate and marks
    its ancestors stale, and the walk stops when only stale commits are left.
    """
    if one == two:
        return [one]
    flags: dict[ObjectID, int] = {one: _ONE, two: _TWO}
    order = itertools.count()
    queue: list[tuple[int, int, ObjectID]] = []
    for sha in (one, two):
        heapq.heappush(queue, (-commits.get(sha).commit_time, next(order), sha))
    found: list[ObjectID] = []
    while any(not flags[sha] & _STALE for _, _, sha in queue):
        _, _, sha = heapq.heappop(queue)
        mark = flags[sha] & (_ONE | _TWO | _STALE)
        if mark & (_ONE | _TWO) == (_ONE | _TWO):
            if not flags[sha] & _RESULT:
                flags[sha] |= _RESULT
                found.append(sha)
            mark |= _STALE
        for parent in commits.get(sha).parents:
            current = flags.get(parent, 0)
            if current & mark == mark:
                continue
            flags[parent] = current | mark
            heapq.heappush(queue, (-commits.get(parent).commit_time, next(order), parent))
    bases = [sha for sha in found if not flags[sha] & _STALE]
    if len(bases) > 1:
        bases = [
            sha for sha in bases if not any(is_ancestor(commits, sha, other) for other in bases)
        ]
    return bases


def is_ancestor(commits: Commits, ancestor: ObjectID, descendant: ObjectID) -> bool:
    """Whether ``ancestor`` is reachable from ``descendant`` (and not the same commit)."""
    if ancestor == descendant:
        return False
    seen: set[ObjectID] = set()
    pending = [descendant]
    while pending:
        sha = pending.pop()
        for parent in commits.get(sha).parents:
            if parent == ancestor:
                return True
            if parent not in seen:
                seen.add(parent)
                pending.append(parent)
    return False

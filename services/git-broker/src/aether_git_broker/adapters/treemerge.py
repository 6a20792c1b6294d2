"""Three-way merges and diffs of trees, without a checkout and without walking what is equal.

Git names every tree by the hash of its content, so two directories with the same id are
identical all the way down. The merge uses that at every level, as ``git merge-tree``
does: where only one side changed a directory it takes that side's directory whole, and
it descends only into directories both sides changed. A merge of two small tasks into a
repository of ten thousand files therefore reads a handful of trees, not ten thousand
entries.

A path changed on one side takes that side, and the same change on both sides is fine.
A regular file both sides changed differently is merged as git's default strategy does:
its lines three-way (:mod:`.linemerge`: hunks apart merge, overlapping or touching
different hunks conflict), its mode taken from the side that changed it (both changing it
differently is a conflict). Binary content (a NUL in the first 8,000 bytes), symlinks and
submodules changed on both sides, delete against modify and file against directory are
conflicts, as in git.

Renames are found as git finds them (:mod:`.renames`), among the files a side removed and
added, and only when a side did both: a file renamed on one side and changed on the other
is merged at its new path; renamed on one side and deleted, renamed to two different
paths, or renamed onto a path the other side added, is a conflict, as in git. The merge
then walks the trees with each renamed file moved to its new path on the other side and in
the base. Before that, renamed *directories* are found as git finds them
(:mod:`.dirrenames`): a file one side added in a directory the other side renamed is moved
where the directory went, on its own side, so the walk finds it there.
"""

from __future__ import annotations

import binascii
import stat
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeGuard

from dulwich.object_store import BaseObjectStore
from dulwich.objects import ObjectID, Tree, parse_tree, sorted_tree_items

from aether_git_broker.adapters.dirrenames import directory_renames, plan_moves
from aether_git_broker.adapters.linemerge import is_binary, merge_lines
from aether_git_broker.adapters.objects import ObjectIO
from aether_git_broker.adapters.renames import pair_renames

# (mode, sha) of one entry of a tree.
Entry = tuple[int, ObjectID]
Entries = Mapping[bytes, Entry]

_TREE_TYPE = Tree.type_num  # dulwich's number for trees


def is_dir(entry: Entry | None) -> TypeGuard[Entry]:
    return entry is not None and stat.S_ISDIR(entry[0])


def is_file(entry: Entry | None) -> TypeGuard[Entry]:
    """A regular file (not a directory, symlink or submodule)."""
    return entry is not None and stat.S_ISREG(entry[0])


class Trees:
    """Trees of one object store, parsed once and kept in a bounded cache.

    A tree never changes (its id is the hash of its content), so a cached tree is never
    stale; the cache only bounds memory, counted in entries. The merge train reads the
    same top-level trees over and over, which is where the cache pays.
    """

    def __init__(self, store: BaseObjectStore, max_entries: int = 500_000) -> None:
        self.store = store
        self.objects = ObjectIO(store)
        self._sha_len = store.object_format.oid_length
        self._cache: OrderedDict[ObjectID, dict[bytes, Entry]] = OrderedDict()
        self._size = 0
        self._max = max_entries

    def entries(self, tree_id: ObjectID) -> Mapping[bytes, Entry]:
        """The entries of a tree, name → (mode, sha). Do not mutate the result."""
        cached = self._cache.get(tree_id)
        if cached is not None:
            self._cache.move_to_end(tree_id)
            return cached
        type_num, raw = self.objects.read(tree_id)
        if type_num != _TREE_TYPE:
            raise ValueError(f"{tree_id.decode()} is not a tree")
        parsed = {
            name: (mode, ObjectID(sha))
            for name, mode, sha in parse_tree(raw, sha_len=self._sha_len)
        }
        self._remember(tree_id, parsed)
        return parsed

    def write(self, entries: Mapping[bytes, Entry]) -> ObjectID:
        """Store a tree with these entries and return its id."""
        content = b"".join(
            b"%o %s\0%s" % (entry.mode, entry.path, binascii.unhexlify(entry.sha))
            for entry in sorted_tree_items(dict(entries), False)
        )
        tree_id = self.objects.write(b"tree", content)
        if tree_id not in self._cache:
            self._remember(tree_id, dict(entries))
        return tree_id

    def _remember(self, tree_id: ObjectID, entries: dict[bytes, Entry]) -> None:
        self._cache[tree_id] = entries
        self._size += len(entries) + 1
        while self._size > self._max and len(self._cache) > 1:
            _, evicted = self._cache.popitem(last=False)
            self._size -= len(evicted) + 1


def _join(prefix: bytes, name: bytes) -> bytes:
    return prefix + b"/" + name if prefix else name


def diff_entries(
    trees: Trees,
    old: Entry | None,
    new: Entry | None,
    path: bytes,
    into: dict[bytes, Entry | None],
) -> None:
    """Record in ``into`` every file path that differs between two entries (a file, a
    directory or nothing), with its new entry (``None`` when removed). Equal directories
    are skipped without being read."""
    if old == new:
        return
    old_dir, new_dir = is_dir(old), is_dir(new)
    if not old_dir and not new_dir:
        into[path] = new
        return
    if old is not None and not old_dir:
        into[path] = None
    if new is not None and not new_dir:
        into[path] = new
    old_entries = trees.entries(old[1]) if old is not None and old_dir else {}
    new_entries = trees.entries(new[1]) if new is not None and new_dir else {}
    for name in old_entries.keys() | new_entries.keys():
        # Compared here, not in a call per name: a changed directory of hundreds of
        # files is mostly names whose entries did not change.
        if (a := old_entries.get(name)) != (b := new_entries.get(name)):
            diff_entries(trees, a, b, _join(path, name), into)


def changed_paths(
    trees: Trees, old_tree: ObjectID | None, new_tree: ObjectID | None
) -> dict[bytes, Entry | None]:
    """Every file path that differs between two trees, with its new entry."""
    into: dict[bytes, Entry | None] = {}
    old = (stat.S_IFDIR, old_tree) if old_tree is not None else None
    new = (stat.S_IFDIR, new_tree) if new_tree is not None else None
    diff_entries(trees, old, new, b"", into)
    return into


@dataclass(frozen=True)
class TreeMerge:
    """The merged tree (``None`` on conflict), the conflicting paths, and every file the
    merge changed relative to ``ours``. On conflict, ``partial`` is the merge with our side
    kept at each conflicting path, and ``marked`` the content of each conflicting text file
    with both sides between conflict markers."""

    tree: ObjectID | None
    conflicts: tuple[str, ...]
    changed: Mapping[bytes, Entry | None] = field(default_factory=dict)
    partial: ObjectID | None = None
    marked: Mapping[bytes, bytes] = field(default_factory=dict)
    # Files both sides changed whose lines merged cleanly.
    lines_merged: tuple[str, ...] = ()


class _Merge:
    def __init__(self, trees: Trees) -> None:
        self.trees = trees
        self.conflicts: list[bytes] = []
        self.changed: dict[bytes, Entry | None] = {}
        self.marked: dict[bytes, bytes] = {}
        self.lines_merged: list[bytes] = []

    def entry(
        self, path: bytes, base: Entry | None, ours: Entry | None, theirs: Entry | None
    ) -> Entry | None:
        """The merged entry at ``path``; records conflicts and changes as it goes."""
        if ours == theirs or theirs == base:
            return ours
        if ours == base:
            diff_entries(self.trees, ours, theirs, path, self.changed)
            return theirs
        # Both sides changed it, differently. Two directories (or a directory and
        # nothing) are merged entry by entry, two regular files line by line; anything
        # else is a conflict.
        if is_file(ours) and is_file(theirs):
            merged_file = self.file(path, base if is_file(base) else None, ours, theirs)
            if merged_file is None:
                self.conflicts.append(path)
                return ours
            if merged_file != ours:
                self.changed[path] = merged_file
            return merged_file
        if (ours is None or is_dir(ours)) and (theirs is None or is_dir(theirs)):
            merged = self.directory(
                path,
                base[1] if base is not None and is_dir(base) else None,
                ours[1] if ours is not None else None,
                theirs[1] if theirs is not None else None,
            )
            return (stat.S_IFDIR, merged) if merged is not None else None
        self.conflicts.append(path)
        return ours

    def file(self, path: bytes, base: Entry | None, ours: Entry, theirs: Entry) -> Entry | None:
        """Two regular files both sides changed, merged as git's ``ort`` does (mode
        first, then content); ``None`` on conflict."""
        base_mode = base[0] if base is not None else 0
        if ours[0] == theirs[0] or ours[0] == base_mode:
            mode = theirs[0]
        elif theirs[0] == base_mode:
            mode = ours[0]
        else:
            return None  # both changed the mode, differently
        base_sha = base[1] if base is not None else None
        if ours[1] == theirs[1] or theirs[1] == base_sha:
            return (mode, ours[1])
        if ours[1] == base_sha:
            return (mode, theirs[1])
        read = self.trees.objects.read
        base_data = read(base_sha)[1] if base_sha is not None else b""
        our_data, their_data = read(ours[1])[1], read(theirs[1])[1]
        if is_binary(base_data) or is_binary(our_data) or is_binary(their_data):
            return None
        merged = merge_lines(base_data, our_data, their_data)
        if merged.conflicts:
            self.marked[path] = merged.content
            return None
        self.lines_merged.append(path)
        return (mode, self.trees.objects.write(b"blob", merged.content))

    def directory(
        self,
        path: bytes,
        base: ObjectID | None,
        ours: ObjectID | None,
        theirs: ObjectID | None,
    ) -> ObjectID | None:
        """The merged directory's tree id, or ``None`` when nothing is left in it."""
        trees = self.trees
        base_entries = trees.entries(base) if base is not None else {}
        our_entries = trees.entries(ours) if ours is not None else {}
        their_entries = trees.entries(theirs) if theirs is not None else {}
        # Only the names their side changed can make the result differ from ours.
        base_get, their_get = base_entries.get, their_entries.get
        theirs_changed = [name for name, entry in their_entries.items() if base_get(name) != entry]
        theirs_changed += [name for name in base_entries if their_get(name) is None]
        merged = dict(our_entries)
        changed = False
        for name in theirs_changed:
            ours_entry = our_entries.get(name)
            entry = self.entry(_join(path, name), base_get(name), ours_entry, their_get(name))
            if entry == ours_entry:
                continue
            changed = True
            if entry is None:
                del merged[name]
            else:
                merged[name] = entry
        if ours is not None and not changed:
            return ours
        if not merged and path:
            return None
        return trees.write(merged)


def lookup(trees: Trees, tree_id: ObjectID | None, path: bytes) -> Entry | None:
    """The entry at ``path`` in a tree, or ``None``."""
    entry: Entry | None = (stat.S_IFDIR, tree_id) if tree_id is not None else None
    for part in path.split(b"/"):
        if entry is None or not is_dir(entry):
            return None
        entry = trees.entries(entry[1]).get(part)
    return entry


def put(trees: Trees, tree_id: ObjectID | None, path: bytes, entry: Entry | None) -> ObjectID:
    """A tree like ``tree_id`` with ``path`` set to ``entry`` (removed for ``None``)."""
    return _put(trees, tree_id, path.split(b"/"), entry) or trees.write({})


def _put(
    trees: Trees, tree_id: ObjectID | None, parts: list[bytes], entry: Entry | None
) -> ObjectID | None:
    entries = dict(trees.entries(tree_id)) if tree_id is not None else {}
    name = parts[0]
    if len(parts) > 1:
        child = entries.get(name)
        child_tree = _put(trees, child[1] if is_dir(child) else None, parts[1:], entry)
        entry = (stat.S_IFDIR, child_tree) if child_tree is not None else None
    if entry is None:
        entries.pop(name, None)
    else:
        entries[name] = entry
    return trees.write(entries) if entries else None


@dataclass
class _SideChanges:
    """What one side did to the base's files: its renames ``{old: new}``, the paths it
    removed, the files it added (rename targets among them) and the base's directories it
    no longer has."""

    renames: dict[bytes, bytes]
    removed: set[bytes]
    added: dict[bytes, Entry]
    removed_dirs: set[bytes]


def _side_changes(trees: Trees, base_tree: ObjectID, side_tree: ObjectID) -> _SideChanges:
    removed: dict[bytes, Entry] = {}
    added: dict[bytes, Entry] = {}
    removed_dirs: set[bytes] = set()
    _removed_and_added(
        trees,
        (stat.S_IFDIR, base_tree),
        (stat.S_IFDIR, side_tree),
        b"",
        removed,
        added,
        removed_dirs,
    )
    renames: dict[bytes, bytes] = {}
    if removed and added:
        read = trees.objects.read
        empty = ObjectID(b"e69de29bb2d1d6434b8b29ae775ad8c2e48c5391")
        renames = pair_renames(removed, added, lambda sha: read(sha)[1], empty)
    return _SideChanges(renames, set(removed), added, removed_dirs)


def _removed_and_added(
    trees: Trees,
    old: Entry | None,
    new: Entry | None,
    path: bytes,
    removed: dict[bytes, Entry],
    added: dict[bytes, Entry],
    removed_dirs: set[bytes],
) -> None:
    """The regular files under ``path`` that are gone (into ``removed``, with their old
    entry) or new where nothing was (into ``added``), and the directories that are gone
    (into ``removed_dirs``), walking only what differs: the walk of :func:`diff_entries`,
    keeping the old entry instead of looking it up again."""
    if old == new:
        return
    old_dir, new_dir = is_dir(old), is_dir(new)
    if not old_dir and not new_dir:
        if new is None and is_file(old):
            removed[path] = old
        elif old is None and is_file(new):
            added[path] = new
        return
    if not old_dir and is_file(old):
        removed[path] = old  # a file replaced by a directory
    if old_dir and not new_dir:
        removed_dirs.add(path)
    old_entries = trees.entries(old[1]) if old is not None and old_dir else {}
    new_entries = trees.entries(new[1]) if new is not None and new_dir else {}
    # Only the names whose entries differ (the comparison runs in C, not once per name).
    for name in {name for name, _ in old_entries.items() ^ new_entries.items()}:
        _removed_and_added(
            trees,
            old_entries.get(name),
            new_entries.get(name),
            _join(path, name),
            removed,
            added,
            removed_dirs,
        )


def _occupied(trees: Trees, tree_id: ObjectID, path: bytes) -> bool:
    """Whether the tree has anything at ``path``, or a non-directory above it."""
    entry: Entry | None = (stat.S_IFDIR, tree_id)
    for part in path.split(b"/"):
        if entry is None:
            return False
        if not is_dir(entry):
            return True
        entry = trees.entries(entry[1]).get(part)
    return entry is not None


def _follow_directory_renames(
    trees: Trees, found: list[_SideChanges], sides: list[ObjectID]
) -> list[bytes]:
    """Move the files each side added into a directory the other side renamed to where
    that directory went (:mod:`.dirrenames`), on that side's tree and in its renames;
    returns the conflicts. Costs nothing unless a side renamed files out of a directory it
    removed and the other side added a file directly in it."""
    dirs = [
        directory_renames(found[i].renames, found[i].removed_dirs, found[1 - i].added)
        for i in (0, 1)
    ]
    conflicts: list[bytes] = []
    for index, side_dirs in enumerate(dirs):
        other_added = found[1 - index].added
        for split in side_dirs.split:
            under = [p for p in other_added if p.startswith(split + b"/")]
            conflicts.extend(under or [split])
    renamed = (dirs[0].renamed, dirs[1].renamed)
    if not renamed[0] and not renamed[1]:
        return conflicts
    for both in renamed[0].keys() & renamed[1].keys():
        del renamed[0][both], renamed[1][both]
    plan = plan_moves(
        renamed,
        (found[0].added.keys(), found[1].added.keys()),
        (
            lambda path: _occupied(trees, sides[0], path),
            lambda path: _occupied(trees, sides[1], path),
        ),
    )
    conflicts.extend(plan.conflicts)
    for index, moves in enumerate(plan.moves):
        if not moves:
            continue
        side = sides[index]
        for old_path, new_path in moves.items():
            entry = lookup(trees, side, old_path)
            side = put(trees, put(trees, side, old_path, None), new_path, entry)
        sides[index] = side
        changes = found[index]
        changes.renames = {old: moves.get(new, new) for old, new in changes.renames.items()}
    return conflicts


def _follow_renames(
    trees: Trees, base_tree: ObjectID, sides: list[ObjectID]
) -> tuple[ObjectID, list[ObjectID], list[bytes]]:
    """Move each file one side renamed to its new path on the other side and in the base,
    so the walk merges it there; returns the new base and sides, and the rename conflicts."""
    found = [_side_changes(trees, base_tree, side) for side in sides]
    conflicts = _follow_directory_renames(trees, found, sides)
    moves: list[tuple[int, bytes, bytes]] = []  # (side to move on, old, new)
    for index, changes in enumerate(found):
        other = 1 - index
        other_renames, other_removed = found[other].renames, found[other].removed
        for old, new in changes.renames.items():
            if old in other_renames:
                if other_renames[old] != new:
                    conflicts.append(old)  # renamed to two different paths
                elif index == 0:
                    moves.append((-1, old, new))  # the same rename on both sides
                continue
            if old in other_removed:
                conflicts.append(old)  # renamed on one side, deleted on the other
                continue
            if lookup(trees, sides[other], new) is not None:
                conflicts.append(new)  # renamed onto a path the other side added
                continue
            if lookup(trees, sides[other], old) != lookup(trees, base_tree, old):
                moves.append((other, old, new))  # changed on the other side: merge there
    for side_index, old, new in moves:
        base_entry = lookup(trees, base_tree, old)
        base_tree = put(trees, put(trees, base_tree, old, None), new, base_entry)
        if side_index >= 0:
            side = sides[side_index]
            moved = lookup(trees, side, old)
            sides[side_index] = put(trees, put(trees, side, old, None), new, moved)
    return base_tree, sides, conflicts


def merge_trees(
    trees: Trees,
    base_tree: ObjectID | None,
    ours_tree: ObjectID,
    theirs_tree: ObjectID,
) -> TreeMerge:
    """Merge ``theirs`` into ``ours`` relative to ``base``; writes the new trees.

    Returns the merged tree's id and the files it changed relative to ``ours``, or no
    tree and the conflicting paths.
    """
    merge = _Merge(trees)
    ours_walked, theirs_walked = ours_tree, theirs_tree
    if base_tree is not None and base_tree not in (ours_tree, theirs_tree):
        base_tree, (ours_walked, theirs_walked), renamed = _follow_renames(
            trees, base_tree, [ours_tree, theirs_tree]
        )
        merge.conflicts.extend(renamed)
    root = merge.entry(
        b"",
        (stat.S_IFDIR, base_tree) if base_tree is not None else None,
        (stat.S_IFDIR, ours_walked),
        (stat.S_IFDIR, theirs_walked),
    )
    if merge.conflicts:
        return TreeMerge(
            tree=None,
            conflicts=tuple(sorted({p.decode(errors="replace") for p in merge.conflicts})),
            partial=root[1] if root is not None else trees.write({}),
            marked=merge.marked,
        )
    tree = root[1] if root is not None else trees.write({})
    changed = merge.changed
    if ours_walked != ours_tree:
        changed = changed_paths(trees, ours_tree, tree)
    return TreeMerge(
        tree=tree,
        conflicts=(),
        changed=changed,
        lines_merged=tuple(sorted(p.decode(errors="replace") for p in merge.lines_merged)),
    )

"""Reusing a pooled worktree in time that follows what changed rather than the size of
the project: one only the agent runner's file tools wrote to, or one the runner scanned
whole after the agent's commands ended.

The broker remembers the last checkout it made into each worktree (``Checkouts``: the
tree and the index as written). The runner's index says, at its end, that the worktree
held exactly that tree and that only some paths were written since (``Claim``). What the
worktree holds then differs from the next tree only where the two trees differ (found by
comparing them directory by directory, by id) and on the ways to those paths (their
directories listed, one level each). Only those paths are looked at, removed or written,
and the next index is the remembered one with their entries replaced: no entry of the
runner's index is read and no other file is looked at. A written path whose file is
already what a checkout of the next tree would write there (a chained task's file, as
its merge took it: a regular file with one link, the blob, a checkout's permissions) is
kept rather than removed and written again, as git keeps a file it finds right.

Anything less usual (a directory in place of a file or the other way round, a gitlink,
a directory removed or made by the agent off those ways, a path on them gone missing)
is left to the whole checkout (``checkout.checkout``), which looks at every file; so is
a worktree the broker has no record of (after a restart), or a claim about another tree.
The decision is taken before anything is changed.

Where a command ran, the runner scans every file before it commits, with nothing of the
agent running any more (a confined command's processes end with it). Its index then
holds every file with fresh stat data, and says what the worktree holds besides the
commit's tree: ignored files and directories, nested ``.git`` directories, special
files, directories a command made that hold nothing committed. The broker removes those
(falling back if one will not go) and takes the runner's index, sliced where the index
says its entries begin, in place of its own record: the rest is as above, with no path
written, so the scan is not made a second time by the broker.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import os
import stat
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from dulwich.objects import ObjectID
from dulwich.repo import Repo

from aether_git_broker.adapters.checkout import (
    RECENT_NS,
    Checkout,
    Checkouts,
    FileEntry,
    Stat,
    UnsupportedRepository,
    Written,
    checked_entries,
    entry_fields,
    index_mode,
    is_clean,
    pack_entry,
    read_claim,
    stat_mtime_ns,
    write_files,
    write_raw_index,
)
from aether_git_broker.adapters.treemerge import Entry, Trees
from aether_sandbox.trees import remove_tree

_GITLINK = 0o160000


class _Unusual(Exception):
    """Something the reuse on the ways leaves to the whole checkout."""


@dataclass
class _Diff:
    """Where two trees differ: non-directory paths (old, new; either may be absent),
    directories only the old one has, directories only the new one has."""

    files: dict[bytes, tuple[Entry | None, Entry | None]] = field(default_factory=dict)
    gone_dirs: list[bytes] = field(default_factory=list)
    new_dirs: list[bytes] = field(default_factory=list)


def _diff(trees: Trees, old: ObjectID, new: ObjectID) -> _Diff:
    """Compare two trees, entering only the subtrees whose ids differ; the new tree's
    names are checked as a checkout checks them."""
    diff = _Diff()
    pending: list[tuple[bytes, ObjectID | None, ObjectID | None]] = [(b"", old, new)]
    while pending:
        prefix, a_id, b_id = pending.pop()
        olds = trees.entries(a_id) if a_id is not None else {}
        news = checked_entries(trees, b_id, prefix) if b_id is not None else {}
        for name in olds.keys() | news.keys():
            a, b = olds.get(name), news.get(name)
            if a == b:
                continue
            path = prefix + name
            a_dir = a is not None and stat.S_ISDIR(a[0])
            b_dir = b is not None and stat.S_ISDIR(b[0])
            if (a is not None and a[0] == _GITLINK) or (b is not None and b[0] == _GITLINK):
                raise _Unusual(f"a gitlink at {path!r}")
            if a is not None and b is not None and a_dir != b_dir:
                raise _Unusual(f"a directory and a file at {path!r}")
            if a_dir or b_dir:
                if not b_dir:
                    diff.gone_dirs.append(path)
                elif not a_dir:
                    diff.new_dirs.append(path)
                pending.append(
                    (path + b"/", a[1] if a_dir and a else None, b[1] if b_dir and b else None)
                )
            else:
                diff.files[path] = (a, b)
    diff.new_dirs.sort()
    return diff


def _at(trees: Trees, tree: ObjectID, path: bytes) -> Entry | None:
    """The entry of ``tree`` at ``path`` (a directory's: its mode and tree id)."""
    entry: Entry | None = (stat.S_IFDIR, tree)
    for name in path.split(b"/") if path else []:
        if entry is None or not stat.S_ISDIR(entry[0]):
            return None
        entry = trees.entries(entry[1]).get(name)
    return entry


def _is_dir(entry: Entry | None) -> bool:
    return entry is not None and stat.S_ISDIR(entry[0])


@dataclass
class _Plan:
    """What the reuse does, decided before it does any of it."""

    unlink: list[bytes] = field(default_factory=list)
    rmtree: list[bytes] = field(default_factory=list)
    mkdir: list[bytes] = field(default_factory=list)
    write: list[FileEntry] = field(default_factory=list)
    # Index entries to replace: a path's new entry (mode, sha, stat), or None to drop it.
    entries: dict[bytes, tuple[int, ObjectID, Stat] | None] = field(default_factory=dict)


def _plan(
    trees: Trees,
    memo: Checkout,
    written: list[bytes],
    tree_id: ObjectID,
    root: bytes,
    extras: Sequence[bytes] = (),
) -> _Plan:
    """What makes ``root``, the checkout ``memo`` but on the ways to ``written`` and
    with ``extras`` besides, hold exactly ``tree_id``; ``_Unusual`` when that is left to
    the whole checkout."""
    base = memo.tree
    for extra in extras:
        # Beside the tree's files, in its directories: removed by name, nothing of the
        # tree's on their way.
        parent = extra.rpartition(b"/")[0]
        if _at(trees, base, extra) is not None or not _is_dir(_at(trees, base, parent)):
            raise _Unusual(f"an extra at {extra!r} is not beside the tree")
    extra_set = set(extras)
    diff = _diff(trees, base, tree_id)
    targets = set(written)
    ways: set[bytes] = set()
    for path in written:
        end = path.rfind(b"/")
        while end > 0:
            ways.add(path[:end])
            end = path.rfind(b"/", 0, end)
    for way in ways:
        for tree in (base, tree_id):
            entry = _at(trees, tree, way)
            if entry is not None and not _is_dir(entry):
                raise _Unusual(f"a way through a file at {way!r}")
    for target in targets:
        if _is_dir(_at(trees, base, target)) or _is_dir(_at(trees, tree_id, target)):
            raise _Unusual(f"a directory written to at {target!r}")

    # What the ways hold: each of their directories listed, one level.
    present: dict[bytes, os.stat_result] = {}
    seen_dirs: set[bytes] = set()
    for way in sorted({b"", *ways}):
        base_dir = _at(trees, base, way)
        try:
            listing = os.scandir(root + b"/" + way if way else root)
        except OSError:
            raise _Unusual(f"the way {way!r} is not a directory any more") from None
        on_disk: set[bytes] = set()
        with listing:
            for item in listing:
                name = item.name
                if not way and name == b".git":
                    continue
                on_disk.add(name)
                if not way and name in extra_set:
                    continue  # removed before anything is written
                path = way + b"/" + name if way else name
                if item.is_dir(follow_symlinks=False):
                    seen_dirs.add(path)
                    if path not in ways and not _is_dir(_at(trees, base, path)):
                        raise _Unusual(f"a directory off the ways made at {path!r}")
                    continue
                if path not in targets and memo.entry(path) is not None:
                    continue  # a file of the checkout no write went for
                present[path] = item.stat(follow_symlinks=False)
        if _is_dir(base_dir):
            assert base_dir is not None
            for name, (mode, _) in trees.entries(base_dir[1]).items():
                path = way + b"/" + name if way else name
                if name not in on_disk and (stat.S_ISDIR(mode) or path not in targets):
                    raise _Unusual(f"{path!r} is gone without a write naming it")

    plan = _Plan()
    for path in diff.files.keys() | present.keys() | targets | memo.index.racy:
        raw = memo.entry(path)
        new = diff.files[path][1] if path in diff.files else _file_of(raw)
        st = present.get(path)
        if st is not None:
            if _is_dir(_at(trees, base, path)) or _is_dir(_at(trees, tree_id, path)):
                raise _Unusual(f"a file where a tree has a directory, {path!r}")
            if (
                new is not None
                and raw is not None
                and _same(raw, new)
                and is_clean(entry_fields(raw), st, new[0], memo.index.mtime_ns)
            ):
                plan.entries[path] = (new[0], new[1], st)
                continue
            if (
                new is not None
                and path in targets
                and _on_real_directories(path, seen_dirs)
                and _holds(root + b"/" + path, st, new)
            ):
                # What the file tools wrote is what the next tree holds (a chained
                # task's merged file): kept, as git keeps a file it finds right.
                plan.entries[path] = (new[0], new[1], st)
                continue
            plan.unlink.append(path)
        elif path in targets or raw is None:
            pass  # not there: a written path gone, or a path the checkout did not have
        elif new is not None and _same(raw, new):
            # A file of the checkout nobody wrote to, as it was written.
            if path in memo.index.racy:
                # Its stat data could not vouch for it: taken again (nobody wrote to it).
                try:
                    plan.entries[path] = (new[0], new[1], os.lstat(root + b"/" + path))
                except OSError:
                    raise _Unusual(f"{path!r} is gone without a write naming it") from None
            continue
        else:
            plan.unlink.append(path)
        if new is None:
            plan.entries[path] = None
        else:
            plan.write.append(FileEntry(path, new[0], new[1]))
    plan.rmtree = [*diff.gone_dirs, *(w for w in ways if not _is_dir(_at(trees, tree_id, w)))]
    plan.mkdir = [d for d in diff.new_dirs if d not in seen_dirs]
    return plan


def _on_real_directories(path: bytes, seen_dirs: set[bytes]) -> bool:
    """Whether every directory on the way to ``path`` was listed as a directory itself,
    not reached through a link (the file is then opened where the listing found it)."""
    end = path.rfind(b"/")
    while end > 0:
        if path[:end] not in seen_dirs:
            return False
        end = path.rfind(b"/", 0, end)
    return True


# The most a written file is read to be kept rather than written again.
_HOLDS_MOST = 16 << 20


def _holds(path: bytes, st: os.stat_result, entry: Entry) -> bool:
    """Whether the file at ``path`` (``st``: its ``lstat``) is what a checkout of
    ``entry`` would write: a regular file with one link, the entry's blob, and the
    permissions git gives a file of its mode (0644, or 0755 for an executable)."""
    mode = entry[0]
    if not stat.S_ISREG(mode) or not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        return False
    if stat.S_IMODE(st.st_mode) != (0o755 if mode & 0o100 else 0o644):
        return False
    if st.st_size > _HOLDS_MOST:
        return False
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        with open(os.open(path, flags), "rb") as file:
            now = os.fstat(file.fileno())
            if (now.st_dev, now.st_ino, now.st_size) != (st.st_dev, st.st_ino, st.st_size):
                return False
            data = file.read(st.st_size + 1)
    except OSError:
        return False
    if len(data) != st.st_size:
        return False
    blob = hashlib.sha1(b"blob %d\0" % len(data), usedforsecurity=False)
    blob.update(data)
    return blob.hexdigest().encode("ascii") == entry[1]


def _same(raw: bytes, entry: Entry) -> bool:
    """Whether a remembered index entry records this mode and object."""
    was = entry_fields(raw)
    return was.sha == entry[1] and index_mode(was.mode) == index_mode(entry[0])


def _file_of(raw: bytes | None) -> Entry | None:
    if raw is None:
        return None
    entry = entry_fields(raw)
    return (entry.mode, entry.sha)


def reuse_on_the_ways(
    repo: Repo,
    trees: Trees,
    tree_id: ObjectID,
    directory: str,
    index_path: str,
    checkouts: Checkouts,
) -> int | None:
    """Make ``directory`` (a pooled worktree whose index is at ``index_path``) hold
    exactly ``tree_id`` by looking only where it can differ, and write its index; the
    number of files written, or ``None`` when it is left to the whole checkout (nothing
    changed then, but for extras removed before one of them would not go).

    The runner's claim is of one of two kinds: only its file tools wrote since the
    broker's last checkout into this worktree (which the broker remembers), or, after it
    scanned every file with nothing of the agent running, the worktree holds exactly its
    index's entries and the extras it names (``checkout.EXTRAS_EXTENSION``): these are
    removed first, and then what differs between the two trees is all there is to do."""
    if repo.object_format.name != "sha1":
        raise UnsupportedRepository(f"{repo.path} names its objects by {repo.object_format.name}")
    memo = checkouts.take(index_path)
    claim = read_claim(index_path)
    if claim is None:
        return None
    if claim.index is not None:
        # After a scan of every file: the runner's index, not the broker's last checkout,
        # says what the worktree holds.
        memo = Checkout(claim.base, claim.index)
    elif memo is None or claim.base != memo.tree:
        return None
    root = os.fsencode(directory)
    try:
        plan = _plan(trees, memo, claim.written, tree_id, root, claim.extras or [])
    except (_Unusual, KeyError, ValueError):
        return None  # a base this repository does not have is a claim not believed
    if not _removed(root, claim.extras or []):
        return None
    for path in plan.unlink:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(root + b"/" + path)
    for path in sorted(plan.rmtree, key=len, reverse=True):
        remove_tree(root + b"/" + path)
    for path in plan.mkdir:
        os.makedirs(root + b"/" + path, exist_ok=True)
    for path, mode, sha, st in write_files(repo.object_store, root, plan.write):
        plan.entries[path] = (mode, sha, st)
    written = _spliced(memo.index, plan.entries, index_path)
    checkouts.remember(index_path, tree_id, written)
    return len(plan.write)


def _removed(root: bytes, extras: list[bytes]) -> bool:
    """Remove ``extras`` (directories with all they hold); whether they are gone."""
    for extra in extras:
        path = root + b"/" + extra
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(st.st_mode):
            remove_tree(path)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        if os.path.lexists(path):
            return False
    return True


def _spliced(
    index: Written,
    entries: Mapping[bytes, tuple[int, ObjectID, Stat] | None],
    index_path: str,
) -> Written:
    """The remembered index with ``entries`` replaced, added or dropped, written."""
    names, raws = index.names, index.raws
    new_names: list[bytes] = []
    new_raws: list[bytes] = []
    fresh: dict[bytes, Stat] = {}
    done = 0
    for path in sorted(entries):
        at = bisect.bisect_left(names, path, done)
        new_names.extend(names[done:at])
        new_raws.extend(raws[done:at])
        done = at + 1 if at < len(names) and names[at] == path else at
        entry = entries[path]
        if entry is not None:
            mode, sha, st = entry
            new_names.append(path)
            new_raws.append(pack_entry(path, mode, sha, st))
            fresh[path] = st
    new_names.extend(names[done:])
    new_raws.extend(raws[done:])
    since = time.time_ns() - RECENT_NS
    recent = [path for path, st in fresh.items() if stat_mtime_ns(st) >= since]
    mtime_ns = write_raw_index(index_path, new_raws, recent)
    racy = (index.racy - entries.keys()) | {
        path for path, st in fresh.items() if stat_mtime_ns(st) >= mtime_ns
    }
    return Written(new_names, new_raws, mtime_ns, frozenset(racy))

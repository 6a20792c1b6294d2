"""Which directories a side renamed, and where the other side's new files go because of it.

git's ``ort`` merge (with ``merge.directoryRenames=true``; its default, ``conflict``, does
the same moves but calls each one a conflict) holds that a directory one side removed was
*renamed* when the files that side renamed out of it went, by a unique plurality, to one
new directory; a file the other side added in the old directory (or renamed into it) then
follows it there. These are git's rules, as ``merge-ort.c`` and ``diffcore-rename.c``
apply them:

- Only a directory of the base that no longer exists on the renaming side can be renamed,
  and only where the other side added a file *directly in it* (or in a directory above it
  that it added to directly): a file added only in a new subdirectory of a renamed
  directory stays where it was added, as in git.
- A rename ``old/dir/f -> new/dir/f`` counts for ``old/dir -> new/dir``, and for each
  directory above as long as the trailing names agree (``old -> new`` here), the latter
  only for a directory the other side added to directly.
- The target with the most files wins; a tie for the most is a *split*: a conflict.
- A directory both sides renamed is renamed by neither (the files' own renames decide).
- A file is moved by the deepest renamed directory above it; not into a directory its own
  side renamed away; not onto a path where its side already has something, nor onto a
  path another moved file also goes to (both conflicts; the files stay where they were).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field


def _parent(path: bytes) -> bytes:
    slash = path.rfind(b"/")
    return path[:slash] if slash != -1 else b""


def _name(path: bytes) -> bytes:
    return path[path.rfind(b"/") + 1 :]


@dataclass
class DirectoryRenames:
    """One side's directory renames ``{old: new}`` and the directories it split."""

    renamed: dict[bytes, bytes] = field(default_factory=dict)
    split: list[bytes] = field(default_factory=list)


def directory_renames(
    renames: Mapping[bytes, bytes],
    removed_dirs: Collection[bytes],
    other_added: Iterable[bytes],
) -> DirectoryRenames:
    """The directories a side renamed, from its file ``renames`` and the directories of the
    base it no longer has, where the other side added files (``other_added``)."""
    found = DirectoryRenames()
    # Directories the other side added a file to directly ("relevant for self" in git).
    direct = {d for d in map(_parent, other_added) if d in removed_dirs}
    if not direct or not renames:
        return found
    # Removed directories below one of those ("relevant for an ancestor"): git counts
    # their files' renames too, so they can be split as well.
    below = {
        d
        for d in removed_dirs
        if d not in direct and any(d.startswith(top + b"/") for top in direct)
    }
    counts: dict[bytes, Counter[bytes]] = {}
    for old, new in renames.items():
        old_dir, new_dir = _parent(old), _parent(new)
        if old_dir not in direct and old_dir not in below:
            continue
        counts.setdefault(old_dir, Counter())[new_dir] += 1
        while old_dir and new_dir:
            if _name(old_dir) != _name(new_dir):
                break
            old_dir, new_dir = _parent(old_dir), _parent(new_dir)
            if old_dir in direct:
                counts.setdefault(old_dir, Counter())[new_dir] += 1
            elif old_dir not in below:
                break
    for old_dir, targets in counts.items():
        ranked = targets.most_common(2)
        if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
            found.split.append(old_dir)
        else:
            found.renamed[old_dir] = ranked[0][0]
    return found


def _renamed_above(path: bytes, renamed: Mapping[bytes, bytes]) -> bytes | None:
    """The deepest directory above ``path`` that was renamed, if any."""
    directory = path
    while directory:
        directory = _parent(directory)
        if directory in renamed:
            return directory
    return None


def _moved(path: bytes, old_dir: bytes, new_dir: bytes) -> bytes:
    rest = path[len(old_dir) + 1 :] if old_dir else path
    return new_dir + b"/" + rest if new_dir else rest


def _targets(added: Iterable[bytes], renamed: Mapping[bytes, bytes]) -> dict[bytes, list[bytes]]:
    """Where each added path would go through ``renamed``: new path → sources."""
    targets: dict[bytes, list[bytes]] = {}
    if not renamed:
        return targets
    for path in added:
        old_dir = _renamed_above(path, renamed)
        if old_dir is not None:
            targets.setdefault(_moved(path, old_dir, renamed[old_dir]), []).append(path)
    return targets


@dataclass
class Moves:
    """The paths each side's added files move to, and the paths in conflict."""

    moves: tuple[dict[bytes, bytes], dict[bytes, bytes]] = field(default_factory=lambda: ({}, {}))
    conflicts: list[bytes] = field(default_factory=list)


def plan_moves(
    renamed: tuple[dict[bytes, bytes], dict[bytes, bytes]],
    added: tuple[Collection[bytes], Collection[bytes]],
    occupied: tuple[Callable[[bytes], bool], Callable[[bytes], bool]],
) -> Moves:
    """Where the files each side added go because of the other side's directory renames.

    ``renamed`` holds each side's directory renames (a directory both renamed already left
    out), ``added`` the paths each side added (new files and rename targets), and
    ``occupied[i](path)`` says whether side ``i`` has anything at ``path`` or a file
    above it.
    """
    result = Moves()
    targets = [_targets(added[i], renamed[1 - i]) for i in (0, 1)]
    for index in (0, 1):
        other = 1 - index
        theirs_renamed = renamed[other]
        if not theirs_renamed:
            continue
        in_way = occupied[index]
        for path in sorted(added[index]):
            if path in targets[other]:
                continue  # the other side's own file goes here: leave this one alone
            old_dir = _renamed_above(path, theirs_renamed)
            if old_dir is None:
                continue
            new_dir = theirs_renamed[old_dir]
            if new_dir in renamed[index]:
                continue  # into a directory this side renamed away: git skips it
            new_path = _moved(path, old_dir, new_dir)
            sources = targets[index][new_path]
            if len(sources) > 1:
                result.conflicts.append(path)  # two files would land on one path
            elif in_way(new_path):
                result.conflicts.extend((path, new_path))
            else:
                result.moves[index][path] = new_path
    return result

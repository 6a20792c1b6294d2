"""Which files a side renamed, found as git's default merge finds them.

A file removed on one side and a file added on that side are a rename when their contents
are the same, or similar enough: git's measure, the bytes of the removed file found again
in the added one (counted in chunks that end at a newline or after 64 bytes) over the
larger of the two sizes, at least 50%. Pairs are taken best score first, each file in one
pair at most; empty files are never renamed (git's merges skip them too).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping

from dulwich.objects import ObjectID

Entry = tuple[int, ObjectID]

MIN_SCORE = 0.5  # git's default rename threshold
MAX_PAIRS = 10_000  # removed x added pairs compared by content at most (git: merge.renameLimit)
_CHUNK = 64


def _chunks(data: bytes) -> Counter[bytes]:
    """Bytes per chunk, as git's ``diffcore-delta`` counts them: a chunk ends after a
    newline or 64 bytes, and the ``\r`` of a ``\r\n`` is not counted."""
    counts: Counter[bytes] = Counter()
    start, size = 0, len(data)
    while start < size:
        newline = data.find(b"\n", start, start + _CHUNK)
        stop = newline + 1 if newline != -1 else min(start + _CHUNK, size)
        piece = data[start:stop]
        if piece.endswith(b"\r\n"):
            piece = piece[:-2] + b"\n"
        counts[piece] += len(piece)
        start = stop
    return counts


def similarity(old: bytes, new: bytes) -> float:
    """The share of ``old`` found in ``new``, over the larger size (0 to 1)."""
    largest = max(len(old), len(new))
    if largest == 0:
        return 1.0
    if abs(len(old) - len(new)) > largest * (1 - MIN_SCORE):
        return 0.0  # too different in size to reach the threshold
    a, b = _chunks(old), _chunks(new)
    copied = sum(min(size, b[chunk]) for chunk, size in a.items() if chunk in b)
    return min(1.0, copied / largest)


def pair_renames(
    removed: Mapping[bytes, Entry],
    added: Mapping[bytes, Entry],
    read: Callable[[ObjectID], bytes],
    empty: ObjectID,
) -> dict[bytes, bytes]:
    """Renames as ``{old path: new path}`` among files one side removed and added."""
    targets = {path: entry for path, entry in added.items() if entry[1] != empty}
    pairs: dict[bytes, bytes] = {}
    by_blob: dict[ObjectID, list[bytes]] = {}
    for path in sorted(targets):
        by_blob.setdefault(targets[path][1], []).append(path)
    for source in sorted(removed):
        same = [p for p in by_blob.get(removed[source][1], []) if p not in pairs.values()]
        if same:
            name = source.rsplit(b"/", 1)[-1]
            same.sort(key=lambda p: p.rsplit(b"/", 1)[-1] != name)
            pairs[source] = same[0]
    sources = [s for s in sorted(removed) if s not in pairs and removed[s][1] != empty]
    left = [t for t in sorted(targets) if t not in pairs.values()]
    if not sources or not left or len(sources) * len(left) > MAX_PAIRS:
        return pairs
    contents = {path: read(removed[path][1]) for path in sources}
    contents.update({path: read(targets[path][1]) for path in left})
    scored = []
    for source in sources:
        for target in left:
            score = similarity(contents[source], contents[target])
            if score >= MIN_SCORE:
                scored.append((-score, source, target))
    taken: set[bytes] = set()
    for _, source, target in sorted(scored):
        if source not in pairs and target not in taken:
            pairs[source] = target
            taken.add(target)
    return pairs

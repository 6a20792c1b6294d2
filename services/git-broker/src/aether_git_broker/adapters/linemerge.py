"""Three-way merge of one file's lines, with git's rules for what merges cleanly.

git's default merge (``ort``) diffs the base against each side with the *histogram*
algorithm, slides every changed group as far down as it goes unless it can line up with a
change on the other side (``xdl_change_compact``), and then walks both lists of changes
(``xdl_do_merge``): a change that ends strictly before the other side's next change starts
is taken; anything else (overlapping *or* touching changes, two insertions at one point)
becomes a conflict region, which is clean after all when both sides hold the same lines
there. Which hunks a diff produces decides what merges, so the diff here follows git's
histogram diff step by step rather than using :mod:`difflib`, whose hunks differ from
git's on repeated lines (blank lines, closing braces) and which drops popular lines in
files over 200 lines.

Lines end at ``\\n`` and keep it: ``\\r`` is part of a line, and a last line without a
newline differs from the same text with one, as in git. Content with a NUL byte in its
first 8,000 bytes is binary and never merged line by line (git's ``buffer_is_binary``).

One difference from git, in regions where every line the two files share occurs more
than 64 times: git falls back to its Myers diff there, this module to :mod:`difflib`
(both are correct diffs; their hunks may differ).
"""

from __future__ import annotations

from dataclasses import dataclass
from difflib import SequenceMatcher

_BINARY_PROBE = 8000  # git's FIRST_FEW_BYTES
_MAX_CHAIN = 64  # git's histogram diff gives up on lines repeated more often than this


def is_binary(data: bytes) -> bool:
    """True when git would not merge this content line by line."""
    return b"\0" in data[:_BINARY_PROBE]


def split_lines(data: bytes) -> list[bytes]:
    """Lines including their ``\\n``; a last line without one stays without."""
    if not data:
        return []
    parts = data.split(b"\n")
    lines = [part + b"\n" for part in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


@dataclass(frozen=True)
class LineMerge:
    """The merged content; with conflicts, both sides between git-style markers."""

    content: bytes
    conflicts: int


# A change from a diff: (start in the old file, lines there, start in the new, lines there).
Change = tuple[int, int, int, int]


class _Histogram:
    """git's histogram diff (xdiff/xhistogram.c) over two lists of lines.

    Marks changed lines in ``changed_a``/``changed_b``, which carry a zero sentinel on
    each end (index ``i + 1`` is line ``i``), as xdiff's ``rchg`` arrays do.
    """

    def __init__(self, a: list[bytes], b: list[bytes]) -> None:
        self.a, self.b = a, b
        self.changed_a = bytearray(len(a) + 2)
        self.changed_b = bytearray(len(b) + 2)

    def run(self) -> None:
        # Over the whole files: xdiff trims the common head and tail only for its Myers
        # diff, and which line anchors the histogram depends on what is counted.
        # xdiff numbers lines from 1; so do the ranges below.
        self._diff(1, len(self.a), 1, len(self.b))

    def _mark(self, line1: int, count1: int, line2: int, count2: int) -> None:
        self.changed_a[line1 : line1 + count1] = b"\1" * count1
        self.changed_b[line2 : line2 + count2] = b"\1" * count2

    def _diff(self, line1: int, count1: int, line2: int, count2: int) -> None:
        while True:
            if count1 <= 0 and count2 <= 0:
                return
            if count1 <= 0 or count2 <= 0:
                self._mark(line1, max(count1, 0), line2, max(count2, 0))
                return
            found = self._find_lcs(line1, count1, line2, count2)
            if found is None:
                self._fall_back(line1, count1, line2, count2)
                return
            begin1, begin2, end1, end2 = found
            if begin1 == 0 and begin2 == 0:
                self._mark(line1, count1, line2, count2)
                return
            self._diff(line1, begin1 - line1, line2, begin2 - line2)
            count1 = line1 + count1 - 1 - end1
            line1 = end1 + 1
            count2 = line2 + count2 - 1 - end2
            line2 = end2 + 1

    def _find_lcs(
        self, line1: int, count1: int, line2: int, count2: int
    ) -> tuple[int, int, int, int] | None:
        """The longest common run anchored on the rarest line, as xhistogram's
        ``find_lcs``; ``None`` when every shared line is too common (git then falls
        back to another diff)."""
        a, b = self.a, self.b
        last1, last2 = line1 + count1 - 1, line2 + count2 - 1
        # For each distinct line of A's range: its first position and count; for each
        # position, the next position of the same line.
        first: dict[bytes, int] = {}
        counts: dict[bytes, int] = {}
        next_ptr: dict[int, int] = {}
        for ptr in range(last1, line1 - 1, -1):
            value = a[ptr - 1]
            previous = first.get(value)
            if previous is not None:
                next_ptr[ptr] = previous
                counts[value] += 1
            else:
                counts[value] = 1
            first[value] = ptr
        best_cnt = _MAX_CHAIN + 1
        has_common = False
        lcs = (0, 0, 0, 0)
        b_ptr = line2
        while b_ptr <= last2:
            b_next = b_ptr + 1
            value = b[b_ptr - 1]
            start = first.get(value)
            if start is None or counts[value] > best_cnt:
                b_ptr = b_next
                continue
            has_common = True
            as_ = start
            while True:
                np = next_ptr.get(as_, 0)
                bs, ae, be = b_ptr, as_, b_ptr
                rc = counts[value]
                while line1 < as_ and line2 < bs and a[as_ - 2] == b[bs - 2]:
                    as_ -= 1
                    bs -= 1
                    if rc > 1:
                        rc = min(rc, counts[a[as_ - 1]])
                while ae < last1 and be < last2 and a[ae] == b[be]:
                    ae += 1
                    be += 1
                    if rc > 1:
                        rc = min(rc, counts[a[ae - 1]])
                if b_next <= be:
                    b_next = be + 1
                if lcs[2] - lcs[0] < ae - as_ or rc < best_cnt:
                    lcs = (as_, bs, ae, be)
                    best_cnt = rc
                if np == 0:
                    break
                while np <= ae:
                    np = next_ptr.get(np, 0)
                    if np == 0:
                        break
                if np == 0:
                    break
                as_ = np
            b_ptr = b_next
        if has_common and best_cnt > _MAX_CHAIN:
            return None
        return lcs

    def _fall_back(self, line1: int, count1: int, line2: int, count2: int) -> None:
        old = self.a[line1 - 1 : line1 - 1 + count1]
        new = self.b[line2 - 1 : line2 - 1 + count2]
        matcher = SequenceMatcher(None, old, new, autojunk=False)
        for tag, i1, i2, j1, j2 in matcher.get_opcodes():
            if tag != "equal":
                self._mark(line1 + i1, i2 - i1, line2 + j1, j2 - j1)


def _compact(lines: list[bytes], changed: bytearray, other: bytearray) -> None:
    """git's ``xdl_change_compact`` without the indent heuristic (off for merges).

    Slides each group of changed lines up as far as it goes, then down as far as it
    goes, merging groups it bumps into; then moves it back up to the last place where it
    lines up with a change in the other file, if there is one. ``changed`` and ``other``
    are sentinel-padded (``changed[i + 1]`` is line ``i``).
    """
    n = len(lines)

    def same(i: int, j: int) -> bool:
        return lines[i] == lines[j]

    # Group bounds are line indexes [start, end); changed[i + 1] is line i.
    def group_next(flags: bytearray, count: int, end: int) -> tuple[int, int] | None:
        if end == count:
            return None
        start = end + 1
        end = start
        while flags[end + 1]:
            end += 1
        return start, end

    def group_previous(flags: bytearray, start: int) -> tuple[int, int] | None:
        if start == 0:
            return None
        end = start - 1
        start = end
        while flags[start]:  # line start - 1
            start -= 1
        return start, end

    def slide_up(start: int, end: int) -> tuple[int, int]:
        start -= 1
        end -= 1
        changed[start + 1] = 1
        changed[end + 1] = 0
        while changed[start]:  # line start - 1 changed too: the groups join
            start -= 1
        return start, end

    n_other = len(other) - 2
    g_start = g_end = 0
    while changed[g_end + 1]:
        g_end += 1
    go_start = go_end = 0
    while other[go_end + 1]:
        go_end += 1
    while True:
        if g_end != g_start:
            while True:
                size = g_end - g_start
                end_matching_other = -1
                # Slide up.
                while g_start > 0 and same(g_start - 1, g_end - 1):
                    g_start, g_end = slide_up(g_start, g_end)
                    previous = group_previous(other, go_start)
                    assert previous is not None
                    go_start, go_end = previous
                earliest_end = g_end
                if go_end > go_start:
                    end_matching_other = g_end
                # Slide down.
                while g_end < n and same(g_start, g_end):
                    changed[g_start + 1] = 0
                    changed[g_end + 1] = 1
                    g_start += 1
                    g_end += 1
                    while changed[g_end + 1]:
                        g_end += 1
                    following = group_next(other, n_other, go_end)
                    assert following is not None
                    go_start, go_end = following
                    if go_end > go_start:
                        end_matching_other = g_end
                if size == g_end - g_start:
                    break
            if g_end != earliest_end and end_matching_other != -1:
                # Back up to line up with the last change of the other file it met.
                while go_end == go_start:
                    g_start, g_end = slide_up(g_start, g_end)
                    previous = group_previous(other, go_start)
                    assert previous is not None
                    go_start, go_end = previous
        if g_start == g_end and go_start == go_end:
            # A run of unchanged lines: each is an empty group on both sides, with
            # nothing to slide. Jump to the last of them instead of stepping through.
            ahead = changed.find(1, g_end + 2)
            ahead_other = other.find(1, go_end + 2)
            run = min(
                (ahead - 1 if ahead != -1 else n) - g_end - 1,
                (ahead_other - 1 if ahead_other != -1 else n_other) - go_end - 1,
            )
            if run > 0:
                g_start = g_end = g_end + run
                go_start = go_end = go_end + run
        following = group_next(changed, n, g_end)
        if following is None:
            return
        g_start, g_end = following
        following = group_next(other, n_other, go_end)
        assert following is not None
        go_start, go_end = following


def _script(changed_a: bytearray, changed_b: bytearray, n_a: int, n_b: int) -> list[Change]:
    """The changes in file order, as xdiff's ``xdl_build_script`` pairs them."""
    changes: list[Change] = []
    i1, i2 = n_a, n_b
    while i1 >= 0 or i2 >= 0:
        if changed_a[i1] or changed_b[i2]:  # line i - 1, through the sentinel offset
            l1, l2 = i1, i2
            while changed_a[i1]:
                i1 -= 1
            while changed_b[i2]:
                i2 -= 1
            changes.append((i1, l1 - i1, i2, l2 - i2))
        i1 -= 1
        i2 -= 1
    changes.reverse()
    return changes


def diff(a: list[bytes], b: list[bytes]) -> list[Change]:
    """git's histogram diff of two lists of lines, compacted as git does."""
    histogram = _Histogram(a, b)
    histogram.run()
    _compact(a, histogram.changed_a, histogram.changed_b)
    _compact(b, histogram.changed_b, histogram.changed_a)
    return _script(histogram.changed_a, histogram.changed_b, len(a), len(b))


# A region of the merge: mode 1 takes ours, 2 theirs, 0 is a conflict; positions in
# base (i0), ours (i1) and theirs (i2), with their lengths.
_Region = list[int]


def _append(regions: list[_Region], mode: int, *span: int) -> None:
    """xdiff's ``xdl_append_merge``: a region touching the previous one joins it."""
    i0, c0, i1, c1, i2, c2 = span
    if regions:
        last = regions[-1]
        if i1 <= last[3] + last[4] or i2 <= last[5] + last[6]:
            if mode != last[0]:
                last[0] = 0
            last[2] = i0 + c0 - last[1]
            last[4] = i1 + c1 - last[3]
            last[6] = i2 + c2 - last[5]
            return
    regions.append([mode, i0, c0, i1, c1, i2, c2])


def _regions(
    ours: list[Change],
    theirs: list[Change],
    ours_lines: list[bytes],
    theirs_lines: list[bytes],
    ours_total: int,
    theirs_total: int,
    base_total: int,
) -> list[_Region]:
    """xdiff's ``xdl_do_merge`` walk over both sides' changes."""
    regions: list[_Region] = []
    x, y = 0, 0
    while x < len(ours) and y < len(theirs):
        o, t = ours[x], theirs[y]
        if o[0] + o[1] < t[0]:
            _append(regions, 1, o[0], o[1], o[2], o[3], t[2] - t[0] + o[0], o[1])
            x += 1
            continue
        if t[0] + t[1] < o[0]:
            _append(regions, 2, t[0], t[1], o[2] - o[0] + t[0], t[1], t[2], t[3])
            y += 1
            continue
        same = (
            o[0] == t[0]
            and o[1] == t[1]
            and o[3] == t[3]
            and ours_lines[o[2] : o[2] + o[3]] == theirs_lines[t[2] : t[2] + t[3]]
        )
        if not same:
            off = o[0] - t[0]
            ffo = off + o[1] - t[1]
            i0, i1, i2 = o[0], o[2], t[2]
            if off > 0:
                i0 -= off
                i1 -= off
            else:
                i2 += off
            c0 = o[0] + o[1] - i0
            c1 = o[2] + o[3] - i1
            c2 = t[2] + t[3] - i2
            if ffo < 0:
                c0 -= ffo
                c1 -= ffo
            else:
                c2 += ffo
            _append(regions, 0, i0, c0, i1, c1, i2, c2)
        end_o, end_t = o[0] + o[1], t[0] + t[1]
        if end_o >= end_t:
            y += 1
        if end_t >= end_o:
            x += 1
    for o in ours[x:]:
        _append(regions, 1, o[0], o[1], o[2], o[3], o[0] + theirs_total - base_total, o[1])
    for t in theirs[y:]:
        _append(regions, 2, t[0], t[1], t[0] + ours_total - base_total, t[1], t[2], t[3])
    return regions


def _with_newline(lines: list[bytes]) -> list[bytes]:
    if lines and not lines[-1].endswith(b"\n"):
        return [*lines[:-1], lines[-1] + b"\n"]
    return lines


def merge_lines(
    base: bytes,
    ours: bytes,
    theirs: bytes,
    *,
    ours_label: str = "ours",
    theirs_label: str = "theirs",
) -> LineMerge:
    """Merge ``theirs`` into ``ours`` relative to ``base``, line by line, as git does.

    Binary content is not merged (callers check :func:`is_binary` first). A conflict
    region shows ours then theirs between ``<<<<<<<``/``=======``/``>>>>>>>`` markers.
    """
    base_l, ours_l, theirs_l = split_lines(base), split_lines(ours), split_lines(theirs)
    regions = _regions(
        diff(base_l, ours_l),
        diff(base_l, theirs_l),
        ours_l,
        theirs_l,
        len(ours_l),
        len(theirs_l),
        len(base_l),
    )
    out: list[bytes] = []
    conflicts = 0
    cursor = 0  # in ours
    for mode, _i0, _c0, i1, c1, i2, c2 in regions:
        if mode == 0:
            # xdiff's zealous level diffs the two sides of a conflict: when they hold
            # the same lines, it was the same change reached through different hunks.
            if c1 and c2 and ours_l[i1 : i1 + c1] == theirs_l[i2 : i2 + c2]:
                continue
            conflicts += 1
            out.extend(ours_l[cursor:i1])
            out.append(f"<<<<<<< {ours_label}\n".encode())
            out.extend(_with_newline(ours_l[i1 : i1 + c1]))
            out.append(b"=======\n")
            out.extend(_with_newline(theirs_l[i2 : i2 + c2]))
            out.append(f">>>>>>> {theirs_label}\n".encode())
        elif mode == 1:
            out.extend(ours_l[cursor : i1 + c1])
        else:
            out.extend(ours_l[cursor:i1])
            out.extend(theirs_l[i2 : i2 + c2])
        cursor = i1 + c1
    out.extend(ours_l[cursor:])
    return LineMerge(content=b"".join(out), conflicts=conflicts)

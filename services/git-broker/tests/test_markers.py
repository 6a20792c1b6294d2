"""Conflict markers a commit adds (``domain.markers``): what counts as a block, what the
base already held, and the refusal's text."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from aether_git_broker.domain.markers import (
    MAX_PLACES,
    added_marker_lines,
    marker_blocks,
    markers_refusal,
)

BLOCK = "<<<<<<< ours\none\n=======\ntwo\n>>>>>>> theirs\n"
DIFF3 = "<<<<<<< ours\none\n||||||| base\nzero\n=======\ntwo\n>>>>>>> theirs\n"
TEXT = "".join(f"line {i}\n" for i in range(1, 9))

# Lines that are no marker of any kind, some of them close to one.
plain_lines = st.one_of(
    st.text(alphabet="abc =<>|\t", max_size=12).filter(
        lambda line: not any(line.startswith(c * 7) for c in "<=>|")
    ),
    st.sampled_from(["<<<<<<<<", "========", ">>>>>>>>x", "<<<<<<", "======x", "=== ===="]),
).map(lambda line: line + "\n")
plain_texts = st.lists(plain_lines, max_size=30).map("".join)


def _insert(text: str, at: int, block: str) -> str:
    lines = text.splitlines(keepends=True)
    at = min(at, len(lines))
    return "".join(lines[:at]) + block + "".join(lines[at:])


def test_a_block_added_to_a_file_is_found_where_it_starts() -> None:
    after = _insert(TEXT, 3, BLOCK)
    assert added_marker_lines(TEXT.encode(), after.encode()) == (4,)
    assert added_marker_lines(None, after.encode()) == (4,)  # a new file
    assert added_marker_lines(None, _insert(TEXT, 0, DIFF3).encode()) == (1,)


def test_markers_as_git_reads_them() -> None:
    # Seven characters, then white space or the line's end (a last line without one too).
    assert added_marker_lines(None, b"<<<<<<<\na\n=======\r\nb\n>>>>>>>") == (1,)
    assert added_marker_lines(None, b"<<<<<<< HEAD\r\na\r\n=======\r\nb\r\n>>>>>>> x\r\n") == (1,)
    # Eight characters, or a word straight after, are not markers.
    assert added_marker_lines(None, b"<<<<<<<<\na\n=======\nb\n>>>>>>>\n") == ()
    assert added_marker_lines(None, b"<<<<<<<x\na\n=======\nb\n>>>>>>>\n") == ()
    assert added_marker_lines(None, b"<<<<<<<\na\n========\nb\n>>>>>>>\n") == ()


def test_an_unfinished_block_is_not_one() -> None:
    for part in (
        "<<<<<<< ours\none\n=======\ntwo\n",
        "=======\ntwo\n>>>>>>> theirs\n",
        "<<<<<<< ours\none\n>>>>>>> theirs\n",
        ">>>>>>> theirs\n=======\n<<<<<<< ours\n",
    ):
        assert added_marker_lines(None, (TEXT + part).encode()) == (), part


def test_a_start_again_before_the_end_begins_the_block_there() -> None:
    text = "<<<<<<< a\nx\n<<<<<<< b\ny\n=======\nz\n>>>>>>> c\n"
    assert [block.line for block in marker_blocks(text.encode())] == [3]


def test_blocks_the_base_held_do_not_count() -> None:
    # Documentation showing a conflict: edited around and between its markers, moved.
    before = "# Conflicts\n\nGit writes:\n\n" + BLOCK + "\nThen resolve it.\n"
    after = "Then resolve it.\n\n" + BLOCK.replace("one", "first") + "# Conflicts, edited\n"
    assert added_marker_lines(before.encode(), after.encode()) == ()
    # One more of the same block is one added; a different one too.
    assert added_marker_lines(before.encode(), (after + BLOCK).encode()) == (9,)
    other = BLOCK.replace("theirs", "feature")
    assert added_marker_lines(before.encode(), (after + other).encode()) == (9,)


def test_binary_content_holds_no_markers() -> None:
    assert added_marker_lines(None, b"\0" + BLOCK.encode()) == ()


@given(plain_texts, st.integers(0, 40), st.sampled_from([BLOCK, DIFF3]))
def test_any_block_inserted_into_text_without_markers_is_found(
    text: str, at: int, block: str
) -> None:
    after = _insert(text, at, block)
    line = min(at, len(text.splitlines())) + 1
    assert added_marker_lines(text.encode(), after.encode()) == (line,)


@given(plain_texts, plain_texts, st.lists(st.sampled_from([BLOCK, DIFF3]), max_size=3))
def test_nothing_is_added_by_text_without_markers(base: str, extra: str, blocks: list[str]) -> None:
    before = base + "".join(blocks)
    # The same file, and the file with plain text put before and after it.
    assert added_marker_lines(before.encode(), before.encode()) == ()
    assert added_marker_lines(before.encode(), (extra + before + extra).encode()) == ()


@given(
    plain_texts,
    st.lists(st.sampled_from(["<<<<<<< ours\n", "=======\n", ">>>>>>> theirs\n"]), max_size=6),
    st.sampled_from(["<<<<<<< ours\n", "=======\n", ">>>>>>> theirs\n"]),
)
def test_blocks_lacking_one_kind_of_marker_are_never_found(
    text: str, markers: list[str], missing: str
) -> None:
    lines = [line for line in markers if line != missing]
    assert added_marker_lines(None, (text + "".join(lines) + text).encode()) == ()


def test_the_refusal_names_files_and_lines_within_bounds() -> None:
    text = markers_refusal([("src/a.py", (3, 20)), ("b.txt", (7,))])
    first = text.splitlines()[0]
    assert first == "conflict markers left in 2 file(s): src/a.py:3, src/a.py:20, b.txt:7"
    many = markers_refusal([("x" * 5000, tuple(range(1, 1000)))] * 50)
    assert len(many) < 3500
    assert f"and {50 * 999 - MAX_PLACES} more" in many

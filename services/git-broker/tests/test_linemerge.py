"""Line-level three-way merge: what merges cleanly and what conflicts, as in git."""

from __future__ import annotations

import stat

from dulwich.object_store import MemoryObjectStore

from aether_git_broker.adapters.linemerge import is_binary, merge_lines, split_lines
from aether_git_broker.adapters.treemerge import Trees, merge_trees

from .test_treemerge import EXECUTABLE, contents, tree

BASE = b"".join(b"line %d\n" % i for i in range(1, 11))


def edit(data: bytes, number: int, text: bytes) -> bytes:
    return data.replace(b"line %d\n" % number, text)


def test_hunks_apart_merge_with_both_changes() -> None:
    ours = edit(BASE, 2, b"ours 2\n")
    theirs = edit(BASE, 8, b"theirs 8\n")
    result = merge_lines(BASE, ours, theirs)
    assert result.conflicts == 0
    assert result.content == edit(ours, 8, b"theirs 8\n")


def test_touching_hunks_conflict_as_in_git() -> None:
    result = merge_lines(BASE, edit(BASE, 4, b"ours 4\n"), edit(BASE, 5, b"theirs 5\n"))
    assert result.conflicts == 1
    assert (
        b"<<<<<<< ours\nours 4\nline 5\n=======\nline 4\ntheirs 5\n>>>>>>> theirs\n"
        in result.content
    )


def test_one_unchanged_line_between_hunks_is_enough() -> None:
    result = merge_lines(BASE, edit(BASE, 4, b"ours 4\n"), edit(BASE, 6, b"theirs 6\n"))
    assert result.conflicts == 0
    assert b"ours 4\nline 5\ntheirs 6\n" in result.content


def test_the_same_change_on_both_sides_merges() -> None:
    both = edit(BASE, 3, b"same\n")
    assert merge_lines(BASE, both, both).content == both
    # Reached through different hunks, the same lines still merge.
    ours = edit(edit(BASE, 3, b"same\n"), 5, b"five\n")
    theirs = edit(ours, 9, b"nine\n")
    assert merge_lines(BASE, ours, theirs).content == theirs


def test_two_insertions_at_one_place_conflict() -> None:
    ours = BASE + b"ours\n"
    theirs = BASE + b"theirs\n"
    assert merge_lines(BASE, ours, theirs).conflicts == 1


def test_a_missing_final_newline_is_a_change_of_the_last_line() -> None:
    base = b"a\nb\nc"
    ours = b"A\nb\nc"
    theirs = b"a\nb\nc\n"
    assert merge_lines(base, ours, theirs).content == b"A\nb\nc\n"
    # Appending after a last line without newline rewrites that line: it touches an
    # edit of the line before it.
    assert merge_lines(base, b"a\nB\nc", b"a\nb\nc\nd").conflicts == 1


def test_carriage_returns_are_part_of_the_line() -> None:
    base = b"a\r\nb\r\nc\r\nd\r\n"
    assert split_lines(base) == [b"a\r\n", b"b\r\n", b"c\r\n", b"d\r\n"]
    result = merge_lines(base, b"A\r\nb\r\nc\r\nd\r\n", b"a\r\nb\r\nc\r\nD\r\n")
    assert result.content == b"A\r\nb\r\nc\r\nD\r\n"


def test_nul_in_the_first_bytes_is_binary() -> None:
    assert is_binary(b"abc\0def")
    assert not is_binary(b"x" * 8000 + b"\0")


def test_files_changed_on_both_sides_merge_in_the_tree() -> None:
    store = MemoryObjectStore()
    text = BASE.decode()
    base = tree(store, {"a.txt": text, "b.txt": "b\n"})
    ours = tree(store, {"a.txt": edit(BASE, 1, b"one\n").decode(), "b.txt": "b\n"})
    theirs = tree(store, {"a.txt": (edit(BASE, 10, b"ten\n").decode(), EXECUTABLE)})
    result = merge_trees(Trees(store), base, ours, theirs)
    assert result.conflicts == ()
    merged = edit(edit(BASE, 1, b"one\n"), 10, b"ten\n").decode()
    assert contents(store, result.tree) == {"a.txt": merged}
    assert set(result.changed) == {b"a.txt", b"b.txt"}
    assert result.lines_merged == ("a.txt",)
    entry = result.changed[b"a.txt"]
    assert entry is not None and entry[0] == EXECUTABLE  # the mode change carried over


def test_binary_files_changed_on_both_sides_conflict() -> None:
    store = MemoryObjectStore()
    base = tree(store, {"a.bin": "\0a\nb\nc\n"})
    ours = tree(store, {"a.bin": "\0A\nb\nc\n"})
    theirs = tree(store, {"a.bin": "\0a\nb\nC\n"})
    assert merge_trees(Trees(store), base, ours, theirs).conflicts == ("a.bin",)


def test_mode_changed_differently_on_both_sides_conflicts() -> None:
    store = MemoryObjectStore()
    ours = tree(store, {"run.sh": ("echo\n", EXECUTABLE)})
    theirs = tree(store, {"run.sh": ("echo\n", stat.S_IFREG | 0o644)})
    # Added on both sides with different modes: git calls it a conflict too.
    assert merge_trees(Trees(store), None, ours, theirs).conflicts == ("run.sh",)


def test_a_file_renamed_on_one_side_takes_the_other_sides_edit() -> None:
    store = MemoryObjectStore()
    text = BASE.decode()
    base = tree(store, {"old/name.txt": text, "keep.txt": "k\n"})
    ours = tree(store, {"new/name.txt": edit(BASE, 1, b"one\n").decode(), "keep.txt": "k\n"})
    theirs = tree(store, {"old/name.txt": edit(BASE, 10, b"ten\n").decode(), "keep.txt": "k\n"})
    result = merge_trees(Trees(store), base, ours, theirs)
    assert result.conflicts == ()
    merged = edit(edit(BASE, 1, b"one\n"), 10, b"ten\n").decode()
    assert contents(store, result.tree) == {"new/name.txt": merged, "keep.txt": "k\n"}
    assert set(result.changed) == {b"new/name.txt"}
    # The same the other way round: their rename, our edit.
    result = merge_trees(Trees(store), base, theirs, ours)
    assert contents(store, result.tree) == {"new/name.txt": merged, "keep.txt": "k\n"}
    assert set(result.changed) == {b"old/name.txt", b"new/name.txt"}


def test_renamed_against_deleted_or_renamed_elsewhere_conflicts() -> None:
    store = MemoryObjectStore()
    base = tree(store, {"a.txt": BASE.decode()})
    renamed = tree(store, {"b.txt": BASE.decode()})
    deleted = tree(store, {"other.txt": "x\n"})
    elsewhere = tree(store, {"c.txt": BASE.decode()})
    assert merge_trees(Trees(store), base, renamed, deleted).conflicts == ("a.txt",)
    assert merge_trees(Trees(store), base, renamed, elsewhere).conflicts == ("a.txt",)
    # Renamed the same way on both sides: nothing to merge.
    result = merge_trees(Trees(store), base, renamed, renamed)
    assert contents(store, result.tree) == {"b.txt": BASE.decode()}


def test_similar_contents_count_as_a_rename_as_in_git() -> None:
    from aether_git_broker.adapters.renames import similarity

    assert similarity(BASE, BASE) == 1.0
    assert similarity(BASE, edit(BASE, 3, b"three\n")) > 0.8
    assert similarity(BASE, b"something else entirely\n") < 0.5
    # Line ends alone do not make another file: the \r of \r\n is not compared, though
    # it counts in the size, as in git.
    assert similarity(b"a\r\nb\r\n", b"a\nb\n") == 4 / 6

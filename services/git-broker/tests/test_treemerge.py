"""The three-way tree merge, on an in-memory object store."""

from __future__ import annotations

import stat

from dulwich.index import commit_tree
from dulwich.object_store import MemoryObjectStore, iter_tree_contents
from dulwich.objects import Blob, ObjectID

from aether_git_broker.adapters.treemerge import Trees, merge_trees

FILE = stat.S_IFREG | 0o644
EXECUTABLE = stat.S_IFREG | 0o755


def tree(store: MemoryObjectStore, files: dict[str, str | tuple[str, int]]) -> ObjectID:
    entries = []
    for path, spec in files.items():
        content, mode = (spec, FILE) if isinstance(spec, str) else spec
        blob = Blob.from_string(content.encode())
        store.add_object(blob)
        entries.append((path.encode(), blob.id, mode))
    return commit_tree(store, entries)


def contents(store: MemoryObjectStore, tree_id: ObjectID | None) -> dict[str, str]:
    assert tree_id is not None
    result = {}
    for entry in iter_tree_contents(store, tree_id):
        blob = store[entry.sha]
        assert isinstance(blob, Blob)
        result[entry.path.decode()] = blob.data.decode()
    return result


def test_changes_on_different_files_combine() -> None:
    store = MemoryObjectStore()
    base = tree(store, {"a.txt": "a\n", "src/b.py": "b\n"})
    ours = tree(store, {"a.txt": "a2\n", "src/b.py": "b\n"})
    theirs = tree(store, {"a.txt": "a\n", "src/b.py": "b\n", "src/c.py": "c\n"})
    result = merge_trees(Trees(store), base, ours, theirs)
    assert result.conflicts == ()
    assert contents(store, result.tree) == {"a.txt": "a2\n", "src/b.py": "b\n", "src/c.py": "c\n"}


def test_the_same_change_on_both_sides_is_not_a_conflict() -> None:
    store = MemoryObjectStore()
    base = tree(store, {"a.txt": "a\n"})
    both = tree(store, {"a.txt": "same\n", "new.txt": "n\n"})
    result = merge_trees(Trees(store), base, both, both)
    assert result.conflicts == ()
    assert contents(store, result.tree) == {"a.txt": "same\n", "new.txt": "n\n"}


def test_different_changes_to_one_file_conflict() -> None:
    store = MemoryObjectStore()
    base = tree(store, {"a.txt": "a\n", "b.txt": "b\n"})
    ours = tree(store, {"a.txt": "ours\n", "b.txt": "b\n"})
    theirs = tree(store, {"a.txt": "theirs\n", "b.txt": "b2\n"})
    result = merge_trees(Trees(store), base, ours, theirs)
    assert result.tree is None
    assert result.conflicts == ("a.txt",)


def test_delete_against_modify_conflicts_and_delete_against_nothing_applies() -> None:
    store = MemoryObjectStore()
    base = tree(store, {"a.txt": "a\n", "b.txt": "b\n"})
    ours = tree(store, {"a.txt": "changed\n", "b.txt": "b\n"})
    theirs = tree(store, {"b.txt": "b\n"})
    assert merge_trees(Trees(store), base, ours, theirs).conflicts == ("a.txt",)
    untouched = tree(store, {"a.txt": "a\n", "b.txt": "b\n", "c.txt": "c\n"})
    result = merge_trees(Trees(store), base, untouched, theirs)
    assert contents(store, result.tree) == {"b.txt": "b\n", "c.txt": "c\n"}


def test_a_mode_change_on_one_side_merges_with_a_content_change_elsewhere() -> None:
    store = MemoryObjectStore()
    base = tree(store, {"run.sh": "echo\n", "a.txt": "a\n"})
    ours = tree(store, {"run.sh": "echo\n", "a.txt": "a2\n"})
    theirs = tree(store, {"run.sh": ("echo\n", EXECUTABLE), "a.txt": "a\n"})
    result = merge_trees(Trees(store), base, ours, theirs)
    assert result.conflicts == ()
    assert result.tree is not None
    modes = {e.path: e.mode for e in iter_tree_contents(store, result.tree)}
    assert modes[b"run.sh"] == EXECUTABLE
    assert contents(store, result.tree)["a.txt"] == "a2\n"


def test_a_file_on_one_side_where_the_other_adds_a_directory_conflicts() -> None:
    store = MemoryObjectStore()
    base = tree(store, {"keep.txt": "k\n"})
    ours = tree(store, {"keep.txt": "k\n", "docs": "a file\n"})
    theirs = tree(store, {"keep.txt": "k\n", "docs/index.md": "a dir\n"})
    result = merge_trees(Trees(store), base, ours, theirs)
    assert result.conflicts == ("docs",)


def test_their_directory_turned_into_a_file_replaces_it() -> None:
    store = MemoryObjectStore()
    base = tree(store, {"keep.txt": "k\n", "docs/a.md": "a\n", "docs/b.md": "b\n"})
    ours = tree(store, {"keep.txt": "k2\n", "docs/a.md": "a\n", "docs/b.md": "b\n"})
    theirs = tree(store, {"keep.txt": "k\n", "docs": "now a file\n"})
    result = merge_trees(Trees(store), base, ours, theirs)
    assert result.conflicts == ()
    assert contents(store, result.tree) == {"keep.txt": "k2\n", "docs": "now a file\n"}


def test_no_common_ancestor_merges_disjoint_additions() -> None:
    store = MemoryObjectStore()
    ours = tree(store, {"a.txt": "a\n"})
    theirs = tree(store, {"b.txt": "b\n"})
    result = merge_trees(Trees(store), None, ours, theirs)
    assert contents(store, result.tree) == {"a.txt": "a\n", "b.txt": "b\n"}

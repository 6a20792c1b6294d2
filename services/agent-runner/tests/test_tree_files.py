"""A base tree's files read as the difference from the tree read before it: the same
files, modes and blobs as reading the whole tree, whatever changed between the two
(files added, removed, rewritten, made executable or links, a file replaced by a
directory of the same name and back)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from dulwich.index import commit_tree
from dulwich.object_store import DiskObjectStore
from dulwich.objects import Blob, ObjectID
from hypothesis import given, settings
from hypothesis import strategies as st

from aether_agent_runner.adapters import git as runner_git

FILE = stat.S_IFREG | 0o644
EXECUTABLE = stat.S_IFREG | 0o755
LINK = stat.S_IFLNK

# Paths from a few names two deep, so that changes share directories, and a name can be
# a file in one tree and a directory in the next.
names = st.sampled_from(["a", "b", "src", "x.py"])
paths = st.lists(names, min_size=1, max_size=3).map(lambda parts: "/".join(parts).encode())
contents = st.sampled_from([b"one\n", b"two\n", b""])
modes = st.sampled_from([FILE, FILE, EXECUTABLE, LINK])
trees = st.dictionaries(paths, st.tuples(contents, modes), max_size=12)


def without_prefix_clashes(files: dict[bytes, tuple[bytes, int]]) -> dict[bytes, tuple[bytes, int]]:
    """A path cannot be a file and a directory in one tree: keep the shorter one."""
    kept: dict[bytes, tuple[bytes, int]] = {}
    for path in sorted(files, key=len):
        if not any(path.startswith(other + b"/") for other in kept):
            kept[path] = files[path]
    return kept


def write(store: DiskObjectStore, files: dict[bytes, tuple[bytes, int]]) -> ObjectID:
    entries = []
    for path, (content, mode) in files.items():
        blob = Blob.from_string(content)
        store.add_object(blob)
        entries.append((path, blob.id, mode))
    return commit_tree(store, entries)


def whole(store: DiskObjectStore, tree: ObjectID) -> dict[bytes, tuple[int, ObjectID]]:
    return {
        entry.path: (entry.mode, entry.sha)
        for entry in store.iter_tree_contents(tree)
        if entry.path is not None and entry.mode is not None and entry.sha is not None
    }


@settings(max_examples=150, deadline=None)
@given(st.lists(trees.map(without_prefix_clashes), min_size=2, max_size=5))
def test_a_tree_read_from_the_one_before_has_the_files_of_a_whole_read(
    tmp_path_factory: pytest.TempPathFactory, versions: list[dict[bytes, tuple[bytes, int]]]
) -> None:
    runner_git.forget_trees()  # each example reads its first tree whole
    root = tmp_path_factory.mktemp("objects")
    store = DiskObjectStore.init(root)
    try:
        for files in versions:
            tree = write(store, files)
            assert dict(runner_git._files_of(store, tree)) == whole(store, tree)
    finally:
        store.close()


def test_a_new_tree_is_read_from_the_last_one_of_its_store(tmp_path: Path) -> None:
    runner_git.forget_trees()
    store = DiskObjectStore.init(tmp_path)
    try:
        first = write(store, {b"src/a.py": (b"one\n", FILE), b"README": (b"r\n", FILE)})
        runner_git._files_of(store, first)
        second = write(store, {b"src/a.py": (b"two\n", FILE), b"README": (b"r\n", FILE)})
        read: list[bytes] = []
        original = store.iter_tree_contents

        def counted(tree_id: ObjectID, include_trees: bool = False):  # type: ignore[no-untyped-def]
            read.append(tree_id)
            return original(tree_id, include_trees)

        store.iter_tree_contents = counted  # type: ignore[method-assign]
        files = runner_git._files_of(store, second)
        store.iter_tree_contents = original  # type: ignore[method-assign]
        assert read == []  # not read whole: from the first tree and what changed
        assert dict(files) == whole(store, second)
    finally:
        store.close()

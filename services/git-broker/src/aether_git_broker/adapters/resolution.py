"""The start of a resolution attempt: an earlier commit of the task, which conflicted,
merged into the new integration head with git-style conflict markers where the two disagree.

The result is committed (a merge commit of the head and that commit, whose tree holds the
clean part of the merge and each conflicting text file with both sides between
``<<<<<<< ours``/``=======``/``>>>>>>> theirs``), and the attempt's branch and worktree
start from it, so the markers survive anything that puts the worktree back at its base.
Where a conflict cannot be shown in a file (binary content, a deletion against a change, a
file against a directory) the head's version stays, and the path is still listed. The
agent's resolution is a commit on top: merging it is a fast-forward.
"""

from __future__ import annotations

import stat

from dulwich.objects import Commit, ObjectID

from aether_git_broker.adapters.history import merge_bases
from aether_git_broker.adapters.repository import Handle, RepositoryError
from aether_git_broker.adapters.treemerge import lookup, merge_trees, put

_FILE = stat.S_IFREG | 0o644


def resolution_start(
    handle: Handle, identity: bytes, head: ObjectID, commit: ObjectID
) -> tuple[ObjectID, list[str]]:
    """The commit a resolution attempt starts from, and the conflicting paths.

    The head itself when ``commit`` is already in it or is not a commit here. The commit
    is deterministic (its time is the task commit's), so preparing the same workspace
    again gives the same one.
    """
    trees = handle.trees
    try:
        theirs = handle.commit(commit)
    except (KeyError, RepositoryError):
        return head, []  # not a commit of this repository: the attempt starts afresh
    bases = merge_bases(handle.commits, head, commit)
    if commit in bases:
        return head, []
    base_tree = handle.commit(bases[0]).tree if bases else None
    ours_tree = handle.commit(head).tree
    result = merge_trees(trees, base_tree, ours_tree, theirs.tree)
    tree = result.tree if result.tree is not None else result.partial
    assert tree is not None
    for path, content in sorted(result.marked.items()):
        ours = lookup(trees, tree, path)
        blob = trees.objects.write(b"blob", content)
        tree = put(trees, tree, path, (ours[0] if ours is not None else _FILE, blob))
    merge = Commit()
    merge.tree = tree
    merge.parents = [head, commit]
    merge.author = merge.committer = identity
    merge.author_time = merge.commit_time = theirs.commit_time
    merge.author_timezone = merge.commit_timezone = 0
    merge.encoding = b"UTF-8"
    listed = "".join(f"  {path}\n" for path in result.conflicts)
    merge.message = (
        f"Merge {commit.decode()[:12]} for resolution\n\n"
        + (f"Conflicts marked in:\n{listed}" if listed else "")
    ).encode()
    sha = trees.objects.write(b"commit", merge.as_raw_string())
    handle.commits.remember(merge)
    return sha, list(result.conflicts)

"""Merging one task into its integration branch, once.

Already merged (a merge commit with the task's trailers on the integration branch, or the
commit already in it) → nothing is written. Otherwise a fast-forward when possible, else
a merge commit from a three-way tree merge. A result that adds blocks of conflict markers
to a file (``domain.markers``: a resolution attempt that left them, say) is refused like
a conflict; with a verifier, the result must then pass it before the branch moves. The
branch moves by compare-and-swap; a conflict, markers or a failed verification leave it
untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime

from dulwich.objects import Commit, ObjectID
from dulwich.trailers import parse_trailers

from aether_git_broker.adapters.checkout import linked_gitmodules, unsafe_paths
from aether_git_broker.adapters.history import merge_bases
from aether_git_broker.adapters.limits import CommitLimits, over_limits
from aether_git_broker.adapters.refs import move_branch
from aether_git_broker.adapters.repository import (
    SHA,
    Handle,
    RefMoved,
    RepositoryError,
    Verifier,
    branch_ref,
    head_of,
    sorted_paths,
)
from aether_git_broker.adapters.treemerge import (
    Entry,
    Trees,
    changed_paths,
    is_file,
    lookup,
    merge_trees,
)
from aether_git_broker.domain import MergeOutcome
from aether_git_broker.domain.markers import added_marker_lines, markers_refusal, may_hold_markers


def merge_task(
    handle: Handle,
    identity: bytes,
    integration_branch: str,
    *,
    since_sha: str,
    mission_id: str,
    task_id: str,
    attempt: int,
    commit_sha: str,
    now: datetime,
    verify: Verifier | None = None,
    withhold: Callable[[], str | None] | None = None,
    limits: CommitLimits | None = None,
) -> MergeOutcome:
    """Merge a task's commit into the integration branch, once.

    Already merged (a merge commit with this task's trailers since ``since_sha``, or
    the commit is already in the branch) → ``already_merged`` and nothing written.
    Otherwise a fast-forward when possible, else a merge commit from a three-way tree
    merge. With ``verify``, the result must pass it before the branch moves. The
    branch moves by compare-and-swap; a conflict or failed verification leaves it
    untouched. With ``limits``, a task's change (from the merge base) holding too much is
    refused (``too_large``) before any of its blobs is read. ``withhold`` says why the
    branch must not move after all (the mission was cancelled), asked before the merge
    is made and again just before the branch moves: then ``withheld`` and nothing written.
    """
    repo, trees = handle.repo, handle.trees
    ref = branch_ref(integration_branch)
    head = head_of(repo, integration_branch, "integration branch")
    commit = ObjectID(commit_sha.encode())
    problem = None
    if not SHA.fullmatch(commit_sha) or len(commit) != repo.object_format.hex_length:
        problem = f"{commit_sha!r} is not a commit id"
    else:
        try:
            theirs = handle.commit(commit)
        except KeyError:
            problem = f"commit {commit_sha} is not in the repository"
        except RepositoryError as error:
            problem = str(error)
    if problem is not None:
        return MergeOutcome(
            kind="conflict", sha=head.decode(), detail=problem, refusal="missing_commit"
        )
    previous = _find_task_merge(handle, head, since_sha, mission_id, task_id, attempt)
    if previous is not None:
        before = handle.commit(previous.parents[0]).tree
        return MergeOutcome(
            kind="already_merged",
            sha=previous.id.decode(),
            files=sorted_paths(changed_paths(trees, before, previous.tree)),
        )
    bases = merge_bases(handle.commits, head, commit)
    if commit in bases:
        return MergeOutcome(kind="already_merged", sha=commit.decode(), fast_forward=True)
    if withhold is not None and (reason := withhold()) is not None:
        return MergeOutcome(kind="withheld", sha=head.decode(), detail=reason)
    if limits is not None:
        base_tree = handle.commit(bases[0]).tree if bases else None
        too_much = over_limits(trees, base_tree, theirs.tree, limits)
        if too_much is not None:
            return MergeOutcome(
                kind="conflict",
                sha=head.decode(),
                detail=f"the task's commit holds too much to merge: {too_much}",
                refusal="too_large",
            )
    ours = handle.commit(head)
    fast_forward = head in bases
    files: Mapping[bytes, Entry | None]
    lines_merged: tuple[str, ...] = ()
    if fast_forward:
        new_head = commit
        files = changed_paths(trees, ours.tree, theirs.tree)
    else:
        base_tree = handle.commit(bases[0]).tree if bases else None
        # The merge's new trees, blobs and commit reach the disk as one pack, before
        # anything (the verifier, the branch) can look for them.
        with trees.objects.batch():
            result = merge_trees(trees, base_tree, ours.tree, theirs.tree)
            if result.tree is not None:
                new_head = _merge_commit(
                    handle, identity, result.tree, head, commit, mission_id, task_id, attempt, now
                )
        if result.tree is None:
            return MergeOutcome(
                kind="conflict",
                sha=head.decode(),
                files=result.conflicts,
                detail="both the integration branch and the task changed "
                f"{len(result.conflicts)} file(s) differently",
                refusal="conflict",
            )
        files = result.changed
        lines_merged = result.lines_merged
    unsafe = unsafe_paths(files) + linked_gitmodules(files)
    if unsafe:
        return MergeOutcome(
            kind="conflict",
            sha=head.decode(),
            files=tuple(unsafe),
            detail="the task's commit has paths no checkout may write (a '..' or '.git' "
            "component, a .gitmodules link): " + ", ".join(unsafe[:10]),
            refusal="unsafe_paths",
        )
    marked = added_markers(trees, ours.tree, files)
    if marked:
        # Told apart from a failed verification (neither names files) for the next attempt.
        return MergeOutcome(
            kind="conflict",
            sha=head.decode(),
            detail=markers_refusal(marked),
            refusal="conflict_markers",
        )
    failure = None
    if verify is not None:
        failure = verify(handle, new_head)
        if failure is not None and (withhold is None or withhold() is None):
            return MergeOutcome(kind="verify_failed", sha=head.decode(), files=(), detail=failure)
    # The last moment a cancel heard meanwhile (a verification stopped for it) keeps it out;
    # what the verification printed until then goes with it.
    if withhold is not None and (reason := withhold()) is not None:
        return MergeOutcome(
            kind="withheld", sha=head.decode(), detail=reason, verification=failure or ""
        )
    if not move_branch(
        repo,
        ref,
        head,
        new_head,
        committer=identity,
        timestamp=int(now.timestamp()),
        message=f"aether: merge task {task_id} (attempt {attempt})".encode(),
    ):
        raise RefMoved(f"{integration_branch} moved while merging task {task_id}")
    return MergeOutcome(
        kind="fast_forward" if fast_forward else "merged",
        sha=new_head.decode(),
        files=sorted_paths(files),
        fast_forward=fast_forward,
        lines_merged=lines_merged,
    )


def added_markers(
    trees: Trees, before: ObjectID, files: Mapping[bytes, Entry | None]
) -> list[tuple[str, tuple[int, ...]]]:
    """The regular files among ``files`` (paths a merge changes, with their new entries)
    that gain blocks of conflict markers over the tree ``before``, with the lines where
    those start. Only the changed files are read, and their old version only when the
    new one may hold markers."""
    found: list[tuple[str, tuple[int, ...]]] = []
    for path, entry in sorted(files.items()):
        if not is_file(entry):
            continue
        _, after = trees.objects.read(entry[1])
        if not may_hold_markers(after):
            continue
        old = lookup(trees, before, path)
        lines = added_marker_lines(trees.objects.read(old[1])[1] if is_file(old) else None, after)
        if lines:
            found.append((path.decode(errors="replace"), lines))
    return found


def _merge_commit(
    handle: Handle,
    identity: bytes,
    tree: ObjectID,
    head: ObjectID,
    commit: ObjectID,
    mission_id: str,
    task_id: str,
    attempt: int,
    now: datetime,
) -> ObjectID:
    merge = Commit()
    merge.tree = tree
    merge.parents = [head, commit]
    merge.author = merge.committer = identity
    merge.author_time = merge.commit_time = int(now.timestamp())
    merge.author_timezone = merge.commit_timezone = 0
    merge.encoding = b"UTF-8"
    merge.message = (
        f"Merge task {task_id} (attempt {attempt})\n\n"
        f"Aether-Mission: {mission_id}\n"
        f"Aether-Task: {task_id}\n"
        f"Aether-Attempt: {attempt}\n"
    ).encode()
    sha = handle.trees.objects.write(b"commit", merge.as_raw_string())
    handle.commits.remember(merge)
    return sha


def _find_task_merge(
    handle: Handle, head: ObjectID, since_sha: str, mission_id: str, task_id: str, attempt: int
) -> Commit | None:
    """The merge commit this task attempt already produced, if the branch has one.

    The broker's merges all sit on the integration branch's first-parent line (each one
    has the previous head as its first parent), so that line is all there is to read.
    """
    needle = f"Aether-Task: {task_id}".encode()
    wanted = {"aether-task": task_id, "aether-attempt": str(attempt)}
    sha: ObjectID | None = head
    while sha is not None and sha.decode() != since_sha:
        commit = handle.commit(sha)
        if len(commit.parents) >= 2 and needle in commit.message:
            _, trailers = parse_trailers(commit.message)
            found = {t.key.lower(): t.value.strip() for t in trailers}
            if found.get("aether-mission", mission_id) == mission_id and all(
                found.get(key) == value for key, value in wanted.items()
            ):
                return commit
        sha = commit.parents[0] if commit.parents else None
    return None

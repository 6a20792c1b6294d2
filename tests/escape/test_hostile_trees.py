"""The third red-team pass on what a tree can hold: names a command made that are not
UTF-8 or hold a newline, case-folding twins, nested repositories and gitlinks, and
changes too long to align, through the runner's commit and reset, the git broker's
merge and diff, and the CLI's diff.

A name is a path's very bytes to the file system and is shown as git shows it (escaped
and quoted), never with a byte replaced: before, the runner's commit looked a file up by
its name with the bytes that are not UTF-8 replaced, found none and failed the attempt;
the broker's diff showed two such names alike and failed on a gitlink; the CLI's diff
failed on such a name and printed a newline in a name as a line of its own."""

from __future__ import annotations

import os
import shlex
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
from dulwich.objects import Blob, Commit, Tree
from dulwich.repo import Repo

from aether.gitview import diff_stat, format_stat, text_of_answer, unified_diff
from aether_agent_runner.adapters.git import commit_all, reset_to
from aether_events.diffs import shown_path
from aether_git_broker.adapters import diff as broker_diff
from aether_git_broker.adapters.git import GitRepositories
from tests.escape.test_attempt_disk_cap import LIMITS, _toolbox, needs_bwrap
from tests.escape.test_files_and_git import Linked, git, linked

__all__ = ["linked"]  # the fixture, used by name

NAMES = [b"bad\xffname.txt", b"bad\xfename.txt", b"two\nlines.txt", b"README.MD", b"readme.md"]


def _maker() -> str:
    code = (
        "import os\n"
        f"for name in {NAMES!r}:\n"
        "    with open(name, 'wb') as f: f.write(b'made by a command: %r\\n' % name)\n"
        "os.makedirs('nested/.git/objects/info')\n"
        "with open('nested/.git/objects/info/alternates', 'w') as f: f.write('/etc\\n')\n"
        "with open('nested/.git/HEAD', 'w') as f: f.write('ref: refs/heads/main\\n')\n"
        "with open('nested/inside.txt', 'w') as f: f.write('in a nested repository\\n')\n"
        "os.makedirs('linked')\n"
        "with open('linked/.git', 'w') as f: f.write('gitdir: /etc\\n')\n"
        "print('MADE')\n"
    )
    return f"python -c {shlex.quote(code)}"


def _merge(broker: GitRepositories, linked: Linked, branch: str, commit: str) -> str:
    merged = broker.merge(
        str(linked.repo),
        branch,
        since_sha=linked.base,
        mission_id="m-names",
        task_id="t1",
        attempt=1,
        commit_sha=commit,
        now=datetime.now(UTC),
    )
    assert merged.kind in {"fast_forward", "merged"}, merged
    return merged.sha


@needs_bwrap
async def test_names_a_command_made_are_committed_merged_and_shown_escaped(
    linked: Linked,
) -> None:
    tools = _toolbox(linked.worktree, LIMITS)
    try:
        made = await tools.call("run_command", {"command": _maker(), "timeout_seconds": 60})
    finally:
        tools.close()
    assert "MADE" in made.content, made.content

    sha, changed = commit_all(linked.records, "names\n")
    assert sha is not None
    shown = [shown_path(name) for name in NAMES]
    # A nested ``.git`` (directory or file) is never committed; what lies beside it is
    # ordinary content.
    assert sorted(changed) == sorted([*shown, "nested/inside.txt"]), changed
    assert '"bad\\377name.txt"' in changed and '"two\\nlines.txt"' in changed
    with Repo(str(linked.repo)) as repo:
        commit = repo[sha.encode()]
        assert isinstance(commit, Commit)
        tree = repo[commit.tree]
        assert isinstance(tree, Tree)
        names = {entry.path for entry in tree.items()}
        assert set(NAMES) <= names  # the very bytes, each its own content
        for name in NAMES:
            blob = repo[tree[name][1]]
            assert isinstance(blob, Blob) and blob.data.endswith(b"%r\n" % name)
        nested = repo[tree[b"nested"][1]]
        assert isinstance(nested, Tree)
        assert [e.path for e in nested.items()] == [b"inside.txt"]
        assert b"linked" not in names

    # The runner's reset writes each name back as its very bytes.
    for name in NAMES:
        os.unlink(os.path.join(os.fsencode(linked.worktree), name))
    assert reset_to(linked.records, sha)
    for name in NAMES:
        assert os.path.exists(os.path.join(os.fsencode(linked.worktree), name))

    broker = GitRepositories()
    try:
        broker.prepare_repository(str(linked.repo), "main", "aether/m-names")
        head = _merge(broker, linked, "aether/m-names", sha)
    finally:
        broker.close()
    with Repo(str(linked.repo)) as repo:
        answer = broker_diff.commit_diff(repo, linked.base, head)
    paths = [f.path for f in answer.files]
    assert sorted(paths) == sorted([*shown, "nested/inside.txt"])
    assert all("\n" not in p and "\ufffd" not in p for p in paths)

    # The CLI: from the repository here, and from the gateway's answer.
    for text in (
        unified_diff(linked.repo, linked.base, head),
        text_of_answer(msgspec.to_builtins(answer)),
        format_stat(diff_stat(linked.repo, linked.base, head)),
    ):
        assert "\ufffd" not in text
        assert not any(line.startswith("lines.txt") for line in text.splitlines()), text
        assert '"bad\\377name.txt"' in text and '"bad\\376name.txt"' in text


def _hand_made(repo: Path, parent: str, entries: dict[bytes, tuple[int, bytes]]) -> str:
    """A commit made by hand (as a remote agent's push could bring it) adding ``entries``
    (name: mode and content, or a gitlink's commit id) to ``parent``'s top tree."""
    with Repo(str(repo)) as handle:
        store = handle.object_store
        top = store[handle[parent.encode()].tree]  # type: ignore[attr-defined]
        assert isinstance(top, Tree)
        for name, (mode, data) in entries.items():
            if mode == 0o160000:
                top.add(name, mode, data)
            else:
                blob = Blob.from_string(data)
                store.add_object(blob)
                top.add(name, mode, blob.id)
        store.add_object(top)
        commit = Commit()
        commit.tree = top.id
        commit.parents = [parent.encode()]
        commit.author = commit.committer = b"Agent <agent@example.com>"
        commit.author_time = commit.commit_time = 0
        commit.author_timezone = commit.commit_timezone = 0
        commit.message = b"hand-made\n"
        store.add_object(commit)
        return commit.id.decode()


def test_a_gitlink_to_a_commit_the_repository_lacks_is_merged_and_shown_as_content(
    linked: Linked, tmp_path: Path
) -> None:
    # A repository beside, holding the commit the gitlink names: the broker must not read
    # it (no alternates, no nested git directory), only name it.
    other = tmp_path / "other"
    other.mkdir()
    git(other, "init", "-q", "-b", "main")
    (other / "x.txt").write_text("elsewhere\n")
    git(other, "add", ".")
    git(other, "commit", "-q", "-m", "elsewhere")
    elsewhere = git(other, "rev-parse", "HEAD").encode()
    bad = _hand_made(linked.repo, linked.base, {b"vendor": (0o160000, elsewhere)})

    broker = GitRepositories()
    try:
        broker.prepare_repository(str(linked.repo), "main", "aether/m-link")
        head = _merge(broker, linked, "aether/m-link", bad)
    finally:
        broker.close()
    assert not (linked.repo / ".git" / "objects" / "info" / "alternates").exists()
    with Repo(str(linked.repo)) as repo:
        assert elsewhere not in repo.object_store
        answer = broker_diff.commit_diff(repo, linked.base, head)
    (vendor,) = answer.files
    assert vendor.path == "vendor" and vendor.lines == [
        "@@ -0,0 +1 @@",
        f"+Subproject commit {elsewhere.decode()}",
    ]
    text = unified_diff(linked.repo, linked.base, head)
    assert f"+Subproject commit {elsewhere.decode()}" in text


def _worst_case_lines(seed: int, count: int) -> bytes:
    # Lines drawn from a pool where each value is common but under difflib's 1 % junk
    # threshold: aligning two such files costs seconds, quadratically in their length.
    import random

    pick = random.Random(seed)
    return "".join(f"{pick.randrange(count // 150)}\n" for _ in range(count)).encode()


def test_a_change_too_long_to_align_is_counted_in_bounded_time(linked: Linked) -> None:
    files = {f"long{n}.txt".encode(): (0o100644, _worst_case_lines(n, 100_000)) for n in range(3)}
    before = _hand_made(linked.repo, linked.base, files)
    after = _hand_made(
        linked.repo,
        before,
        {name: (0o100644, _worst_case_lines(n + 10, 100_000)) for n, name in enumerate(files)},
    )
    with Repo(str(linked.repo)) as repo:
        started = time.monotonic()
        answer = broker_diff.commit_diff(repo, before, after)
        took = time.monotonic() - started
    # Before: each file aligned line by line, about 7 s apiece on a quiet machine.
    assert took < 5, took
    assert len(answer.files) == 3
    assert all(f.truncated and not f.lines and f.added > 0 for f in answer.files)
    started = time.monotonic()
    stat = diff_stat(linked.repo, before, after)
    assert time.monotonic() - started < 5
    assert [s.added for s in stat] == [f.added for f in answer.files]
    assert "too long to show line by line" in unified_diff(linked.repo, before, after)


@pytest.mark.skipif(shutil.which("git") is None, reason="git is needed")
def test_shown_paths_are_never_alike_and_hold_no_line_break() -> None:
    names = [
        b"plain.txt",
        b"caf\xc3\xa9.txt",
        b"bad\xffname",
        b'"bad\\377name"',
        b"two\nlines",
        b"two\\nlines",
        b"tab\there",
        b"del\x7f",
        "sep\u2028arator".encode(),
        b"\xc2\x85next",
    ]
    shown = [shown_path(n) for n in names]
    assert len(set(shown)) == len(names)
    assert all(not any(c in s for c in "\n\r\u2028\u2029\x85\x7f") for s in shown)
    assert shown[:3] == ["plain.txt", "café.txt", '"bad\\377name"']

"""Verification: the merged tree must pass the mission's command before the branch moves."""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest
from dulwich import porcelain
from dulwich.repo import Repo
from dulwich.server import DictBackend
from dulwich.web import make_wsgi_chain

from aether_git_broker.adapters.git import GitRepositories
from aether_git_broker.adapters.verify import (
    Verification,
    Verifier,
    command_environment,
    run_command,
)
from aether_sandbox import StopOrder

NOW = datetime(2026, 1, 2, tzinfo=UTC)
INTEGRATION = "aether/m-v"
Git = Callable[..., str]
Commit = Callable[..., str]


def _merge_with(
    broker: GitRepositories, repo: Path, scratch: Path, sha: str, base: str, command: str
) -> object:
    verifier = Verifier(timeout=20)
    return broker.merge(
        str(repo),
        INTEGRATION,
        since_sha=base,
        mission_id="m-v",
        task_id="t1",
        attempt=1,
        commit_sha=sha,
        now=NOW,
        verify=lambda handle, commit: verifier.verify(
            broker, handle, commit, command, str(scratch)
        ),
    )


def _task_commit(
    broker: GitRepositories, repo: Path, worktrees_dir: Path, commit: Commit, files: dict[str, str]
) -> str:
    ws = broker.prepare_workspace(
        str(repo), INTEGRATION, "aether-tasks/m-v/t1/a1", str(worktrees_dir / "m-v" / "t1-a1")
    )
    return commit(ws.worktree_path, files, "task work")


def test_a_failing_command_keeps_the_branch_and_reports_its_output(
    repo: Path, worktrees_dir: Path, git: Git, commit: Commit
) -> None:
    broker = GitRepositories()
    base = broker.prepare_repository(str(repo), "main", INTEGRATION).base_sha
    sha = _task_commit(broker, repo, worktrees_dir, commit, {"app/broken.py": "raise SystemExit\n"})
    scratch = worktrees_dir / ".verify" / "m-v-t1-a1"
    outcome = _merge_with(
        broker,
        repo,
        scratch,
        sha,
        base,
        "test -f app/broken.py && echo 'tests: 1 failed' && git status --porcelain && exit 3",
    )
    assert outcome.kind == "verify_failed"  # type: ignore[attr-defined]
    assert "exited with 3" in outcome.detail  # type: ignore[attr-defined]
    assert "tests: 1 failed" in outcome.detail  # type: ignore[attr-defined]
    assert git(repo, "rev-parse", INTEGRATION) == base
    assert not scratch.exists()
    assert str(scratch) not in git(repo, "worktree", "list", "--porcelain")
    broker.close()


def test_a_passing_command_lets_the_merge_through(
    repo: Path, worktrees_dir: Path, git: Git, commit: Commit
) -> None:
    broker = GitRepositories()
    base = broker.prepare_repository(str(repo), "main", INTEGRATION).base_sha
    sha = _task_commit(broker, repo, worktrees_dir, commit, {"app/ok.py": "OK = 1\n"})
    scratch = worktrees_dir / ".verify" / "m-v-t1-a1"
    outcome = _merge_with(broker, repo, scratch, sha, base, "grep -q 'OK = 1' app/ok.py")
    assert outcome.kind == "fast_forward"  # type: ignore[attr-defined]
    assert git(repo, "rev-parse", INTEGRATION) == sha
    assert not scratch.exists()
    broker.close()


def test_a_command_past_its_time_is_stopped_with_everything_it_started(tmp_path: Path) -> None:
    marker = tmp_path / "survived"
    outcome = run_command(
        f"(sleep 3; touch {marker}) & sleep 30",
        str(tmp_path),
        timeout=0.5,
        max_output=1000,
        env=command_environment(),
    )
    assert outcome.result == "timed_out"
    assert outcome.seconds < 10
    # The background child went with the group; had it survived it would create the file.
    alive = subprocess.run(["pgrep", "-f", f"touch {marker}"], capture_output=True, check=False)
    assert alive.returncode == 1


def test_a_stopped_command_is_reported_stopped_with_what_it_printed(tmp_path: Path) -> None:
    """A cancel stops a verification: not the command's failure, and its output so far
    says how far it got."""
    stop = StopOrder()
    ran: list[Verification] = []
    worker = threading.Thread(
        target=lambda: ran.append(
            run_command(
                "echo 'collected 12 tests'; echo 'test_a PASSED'; touch started; sleep 60",
                str(tmp_path),
                timeout=60,
                max_output=1000,
                env=command_environment(),
                stop=stop,
            )
        )
    )
    worker.start()
    deadline = time.monotonic() + 30
    while not (tmp_path / "started").exists():
        assert time.monotonic() < deadline, "the command never started"
        time.sleep(0.01)
    stop.stop("the mission was cancelled by alice")
    worker.join(timeout=30)
    [outcome] = ran
    assert (outcome.result, outcome.exit_code) == ("stopped", None)
    assert outcome.output.startswith("[stopped: the mission was cancelled by alice]\n")
    assert "collected 12 tests\ntest_a PASSED" in outcome.output
    assert outcome.seconds < 30


def test_long_output_is_cut_to_its_end(tmp_path: Path) -> None:
    outcome = run_command(
        "seq 1 100000; exit 1", str(tmp_path), timeout=20, max_output=200, env=command_environment()
    )
    assert outcome.result == "failed"
    assert outcome.output.rstrip().endswith("100000")
    assert "bytes of output omitted" in outcome.output
    assert len(outcome.output) < 300


def test_the_command_does_not_see_the_brokers_secrets() -> None:
    env = command_environment(
        {
            "PATH": "/bin",
            "AETHER_GIT_TOKEN": "t",
            "ANTHROPIC_API_KEY": "k",
            "DB_PASSWORD": "p",
            "HOME": "/h",
        }
    )
    assert env == {"PATH": "/bin", "HOME": "/h"}


def test_a_verification_command_cannot_touch_the_repository_or_its_git_directory(
    repo: Path, worktrees_dir: Path, git: Git, commit: Commit
) -> None:
    """The merged code runs in the sandbox: the repository's git directory is readable (the
    command may use git) but nothing outside the scratch worktree can be written."""
    broker = GitRepositories()
    base = broker.prepare_repository(str(repo), "main", INTEGRATION).base_sha
    sha = _task_commit(broker, repo, worktrees_dir, commit, {"app/ok.py": "OK = 1\n"})
    scratch = worktrees_dir / ".verify" / "m-v-t1-a1"
    hook = repo / ".git" / "hooks" / "post-checkout"
    before = {p: p.read_bytes() for p in (repo / ".git").rglob("*") if p.is_file()}
    readme = (repo / "README.md").read_bytes()
    attack = (
        f"git log --oneline -1 >/dev/null && "
        f"(echo 'touch /tmp/pwned' > {hook}; chmod +x {hook}; "
        f"git config core.fsmonitor 'touch /tmp/pwned'; "
        f"echo pwned > {repo}/README.md; echo pwned > .git); exit 0"
    )
    outcome = _merge_with(broker, repo, scratch, sha, base, attack)
    assert outcome.kind == "fast_forward"  # type: ignore[attr-defined]
    assert not hook.exists()
    assert "fsmonitor" not in git(repo, "config", "--list")
    assert (repo / "README.md").read_bytes() == readme
    after = {p: p.read_bytes() for p in (repo / ".git").rglob("*") if p.is_file()}
    changed = {p for p in after if before.get(p) != after[p]}
    # Only what the merge itself wrote (the branch moved; the scratch worktree came and went).
    assert not [p for p in changed if "hooks" in p.parts or p.name == "config"]
    broker.close()


def test_without_a_sandbox_the_command_is_not_run_and_verification_fails(tmp_path: Path) -> None:
    from aether_sandbox import SandboxSettings, SandboxUnavailable, open_sandbox

    try:
        open_sandbox(SandboxSettings(bwrap="bwrap-that-is-not-installed"))
    except SandboxUnavailable as error:
        missing = error
    marker = tmp_path / "ran"
    outcome = run_command(
        f"touch {marker}", str(tmp_path), 20, 1000, command_environment(), sandbox=missing
    )
    assert outcome.result == "failed"
    assert "the command was not run" in outcome.output
    assert "bubblewrap is not installed" in outcome.output
    assert not marker.exists()


def test_code_the_agent_merged_cannot_read_the_brokers_settings_from_its_environment(
    repo: Path, worktrees_dir: Path, git: Git, commit: Commit, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The verification command runs what the agent wrote (a ``conftest.py``, a script):
    the broker's own settings are not its to print, whatever they are called."""
    hidden = {
        "AETHER_PUSH_REMOTE": "https://x-access-token:ghp_pushsecret@example.com/o/r.git",
        "NATS_URL": "nats://git-broker:natssecret@127.0.0.1:4222",
        "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer otelsecret",
        "SENTRY_DSN": "https://sentrysecret@example.com/1",
        "GITHUB_PAT": "ghp_patsecret",
    }
    for name, value in hidden.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    broker = GitRepositories()
    base = broker.prepare_repository(str(repo), "main", INTEGRATION).base_sha
    sha = _task_commit(broker, repo, worktrees_dir, commit, {"leak.sh": "env\nexit 1\n"})
    scratch = worktrees_dir / ".verify" / "m-v-t1-a1"
    outcome = _merge_with(broker, repo, scratch, sha, base, "sh leak.sh")
    detail = outcome.detail  # type: ignore[attr-defined]
    assert "LC_ALL=C.UTF-8" in detail  # the command's environment was printed
    for value in hidden.values():
        assert value not in detail
    assert "secret" not in detail
    broker.close()


def test_code_the_agent_merged_reads_the_repositorys_configuration_without_its_credentials(
    repo: Path, worktrees_dir: Path, git: Git, commit: Commit
) -> None:
    """The command may use git on the repository, whose configuration is the person's own:
    a token kept in a remote's URL, or a header given to a host, is not the command's."""
    config = repo / ".git" / "config"
    config.write_text(
        config.read_text()
        + '[remote "origin"]\n\turl = https://x-access-token:ghp_urlsecret@example.com/o/r.git\n'
        + "\tfetch = +refs/heads/*:refs/remotes/origin/*\n"
        + '[http "https://example.com/"]\n\textraheader = AUTHORIZATION: basic headersecret\n'
        + "[credential]\n\thelper = store --file /root/helpersecret\n"
    )
    broker = GitRepositories()
    base = broker.prepare_repository(str(repo), "main", INTEGRATION).base_sha
    script = 'cat "$(git rev-parse --git-common-dir)/config"\ngit log -1 --format=%s\nexit 1\n'
    sha = _task_commit(broker, repo, worktrees_dir, commit, {"leak.sh": script})
    scratch = worktrees_dir / ".verify" / "m-v-t1-a2"
    outcome = _merge_with(broker, repo, scratch, sha, base, "sh leak.sh")
    detail = outcome.detail  # type: ignore[attr-defined]
    # The configuration was read, and git still works on the repository.
    assert "https://example.com/o/r.git" in detail, detail
    assert "+refs/heads/*:refs/remotes/origin/*" in detail
    assert "secret" not in detail
    # The repository's own file is as it was.
    assert "ghp_urlsecret" in config.read_text()
    broker.close()


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def hosted(repo: Path) -> Iterator[str]:
    """``repo`` served over smart HTTP (``http://127.0.0.1:<port>/hosted.git``), as a
    hosting service would; it takes any credentials."""
    backend = DictBackend({"/hosted.git": Repo(str(repo))})
    server = make_server("127.0.0.1", 0, make_wsgi_chain(backend), handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}/hosted.git"
    finally:
        server.shutdown()
        server.server_close()


def test_a_clone_made_with_a_token_keeps_it_from_the_verification_command(
    hosted: str, tmp_path: Path, worktrees_dir: Path, git: Git, commit: Commit
) -> None:
    """A person's clone, made from a URL with a token in it, is the mission's repository.
    The clone's reflog names that URL, token and all, and a credential store kept in the
    git directory holds it too: the verification command, which may use git there, finds
    the token nowhere it can read."""
    token = f"ghp_{uuid.uuid4().hex}"
    clone = tmp_path / "clone"
    with porcelain.clone(
        f"http://x-access-token:{token}@{hosted}", str(clone), errstream=_Devnull()
    ):
        pass
    store = clone / ".git" / "credentials"
    subprocess.run(
        ["git", "credential-store", f"--file={store}", "store"],
        input=f"protocol=http\nhost={hosted.split('/')[0]}\nusername=x\npassword={token}\n",
        text=True,
        check=True,
    )
    git(clone, "config", "credential.helper", f"store --file={store}")
    # What a fetch by another tool may leave: the URL it fetched, as it was given.
    (clone / ".git" / "FETCH_HEAD").write_text(
        f"{git(clone, 'rev-parse', 'HEAD')}\t\tbranch 'main' of http://x:{token}@{hosted}\n"
    )
    git_dir = clone / ".git"
    assert token in "".join(
        p.read_text(errors="replace") for p in git_dir.rglob("*") if p.is_file()
    ), "the clone holds the token in its git directory"
    broker = GitRepositories()
    base = broker.prepare_repository(str(clone), "main", INTEGRATION).base_sha
    sha = _task_commit(broker, clone, worktrees_dir, commit, {"app/ok.py": "OK = 1\n"})
    scratch = worktrees_dir / ".verify" / "m-v-t1-a3"
    command = (
        'common="$(git rev-parse --git-common-dir)"; '
        "git log --oneline -3 >/dev/null && echo LOG-WORKS; "
        "git status --porcelain >/dev/null && echo STATUS-WORKS; "
        "git diff HEAD~1 --stat | grep -q ok.py && echo DIFF-WORKS; "
        'ls -A "$common"; '
        # A pattern, not the token: the command itself is part of the report.
        'grep -rsoE "ghp_[0-9a-f]{32}" "$common" "$(git rev-parse --git-dir)" . "$HOME" /tmp /etc; '
        'cat "$common/logs/HEAD" "$common/FETCH_HEAD" "$common/credentials" 2>&1; '
        "exit 1"
    )
    outcome = _merge_with(broker, clone, scratch, sha, base, command)
    detail = outcome.detail  # type: ignore[attr-defined]
    for works in ("LOG-WORKS", "STATUS-WORKS", "DIFF-WORKS"):
        assert works in detail, detail
    assert "objects" in detail and "refs" in detail  # the git directory was looked at
    assert token not in detail, detail
    assert token in (git_dir / "config").read_text()  # the person's files are as they were
    broker.close()


class _Devnull:
    def write(self, data: bytes) -> int:
        return len(data)

    def flush(self) -> None:
        pass


def test_only_harmless_variables_and_the_ones_an_operator_names_are_passed() -> None:
    env = command_environment(
        {
            "PATH": "/bin",
            "HOME": "/h",
            "LANG": "C.UTF-8",
            "LC_CTYPE": "C.UTF-8",
            "JAVA_HOME": "/opt/java",
            "AETHER_PUSH_REMOTE": "https://t:secret@example.com/r.git",
            "NATS_URL": "nats://u:p@h:4222",
            "PIP_INDEX_URL": "https://u:p@index.example.com/simple",
        },
        passed=("JAVA_HOME", "PIP_INDEX_URL", "AETHER_GIT_TOKEN"),
    )
    assert env == {
        "PATH": "/bin",
        "HOME": "/h",
        "LANG": "C.UTF-8",
        "LC_CTYPE": "C.UTF-8",
        "JAVA_HOME": "/opt/java",
    }


def test_tool_configuration_the_agent_merged_sees_no_secret_of_the_broker(
    repo: Path,
    worktrees_dir: Path,
    git: Git,
    commit: Commit,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """``.envrc``, ``conftest.py``, ``setup.cfg``, ``tox.ini``, a ``Makefile`` the agent
    merged run only inside the sandbox, through the user's own command: there, neither
    the broker's environment (through ``/proc`` of its processes either), nor its event id
    secret, nor its SSH key and passphrase files are to be read, and nothing of the tree
    runs outside it (the merge and checkout run no tool of the tree's)."""
    key = tmp_path / "secrets" / "id_ed25519"
    key.parent.mkdir()
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nkeysecret\n")
    (tmp_path / "secrets" / "passphrase").write_text("passphrasesecret\n")
    monkeypatch.setenv("AETHER_EVENT_ID_SECRET", "eventidsecret")
    monkeypatch.setenv("AETHER_GIT_SSH_KEY_FILE", str(key))
    outside = tmp_path / "ran-outside"
    probe = (
        f"touch {outside} 2>/dev/null; cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n'; "
        f"cat {key} {key.parent}/passphrase 2>&1; ls /proc; env"
    )
    files = {
        ".envrc": f"{probe}\n",
        "conftest.py": f"import os\nos.system({probe!r})\n",
        "setup.cfg": "[tool:pytest]\naddopts = -p no:cacheprovider\n",
        "tox.ini": f"[testenv]\ncommands = sh -c {probe!r}\n",
        "Makefile": f"check:\n\t{probe}\n",
        "pyproject.toml": '[tool.pytest.ini_options]\naddopts = "-x"\n',
    }
    broker = GitRepositories()
    base = broker.prepare_repository(str(repo), "main", INTEGRATION).base_sha
    sha = _task_commit(broker, repo, worktrees_dir, commit, files)
    scratch = worktrees_dir / ".verify" / "m-v-t1-a1"
    outcome = _merge_with(broker, repo, scratch, sha, base, "sh .envrc; make -s check; exit 1")
    detail = outcome.detail  # type: ignore[attr-defined]
    assert "PATH=" in detail  # the probe ran and printed the environment
    for secret in ("eventidsecret", "keysecret", "passphrasesecret"):
        assert secret not in detail
    assert not outside.exists()
    broker.close()

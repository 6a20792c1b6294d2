"""Missions on SSH remotes, against a real OpenSSH server: the broker fetches, merges and
pushes back over ``ssh`` with the operator's key, checks host keys strictly against the
operator's known hosts file, and runs ``ssh`` one fixed way whatever its surroundings."""

from __future__ import annotations

import dataclasses
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client as NatsClient

from aether_events import (
    AgentCompleted,
    BranchMerged,
    BranchPushed,
    EventPublisher,
    MergeConflicted,
    MissionCompleted,
    MissionFailed,
    MissionRequested,
    RepositoryPrepared,
    WorkspaceReady,
)
from aether_git_broker import GitBrokerSettings, bootstrap
from aether_git_broker.adapters.defaultbranch import remote_default_branch
from aether_git_broker.adapters.remote import RemoteError, Remotes
from aether_git_broker.adapters.ssh import FixedSshVendor, SshAccess, SshRefused
from aether_git_broker.domain import Policy
from aether_git_broker.sources import RemoteSource, parse_repository
from aether_runtime import RuntimeSettings
from aether_runtime.settings import SettingsError
from tests.sshd import SshServer, keygen

from .test_handlers import (
    Recorder,
    RecordingDelivery,
    done,
    handlers_for,
    meta,
    prepare,
    ready,
)
from .test_service import meta as service_meta
from .test_service import start_service, stop_service, task_ready, watch

Git = Callable[..., str]
Commit = Callable[..., str]


def access(server: SshServer, **changes: Any) -> SshAccess:
    """The server's key and known hosts, with ``changes``."""
    chosen = SshAccess(key=str(server.client_key), known_hosts=str(server.known_hosts))
    return dataclasses.replace(chosen, **changes)


async def deliver_one_task(
    url: str, ssh: SshAccess, worktrees_dir: Path, tmp_path: Path, commit: Commit
) -> tuple[Recorder, str, str]:
    """A mission on ``url`` (no base branch: the remote's default), one task merged, the
    mission completed and pushed back to ``url``; the events, the branch and the sha."""
    recorder = Recorder()
    handlers = handlers_for(
        worktrees_dir,
        recorder,
        policy=Policy(push_remote=url),
        remotes=Remotes(str(tmp_path / "data"), timeout=30, ssh=ssh),
    )
    prepared = await prepare(handlers, recorder, url)
    await handlers.handle(ready("t1"), RecordingDelivery())
    (workspace,) = recorder.of(WorkspaceReady)
    assert isinstance(workspace, WorkspaceReady)
    sha = commit(workspace.worktree_path, {"over_ssh.py": "SSH = True\n"}, "over ssh")
    await handlers.handle(done("t1", sha), RecordingDelivery())
    assert recorder.of(BranchMerged), recorder.events
    completed = MissionCompleted(
        **meta(), final_sha=sha, integration_branch=prepared.integration_branch, tasks_merged=1
    )
    await handlers.handle(completed, RecordingDelivery())
    assert prepared.base_branch == "trunk"  # read from the remote's HEAD, over SSH
    return recorder, prepared.integration_branch, sha


async def test_a_mission_on_an_ssh_url_is_fetched_merged_and_pushed_back_over_ssh(
    sshd: SshServer,
    upstream: Path,
    worktrees_dir: Path,
    tmp_path: Path,
    git: Git,
    commit: Commit,
) -> None:
    url = sshd.url(upstream)
    recorder, branch, sha = await deliver_one_task(
        url, access(sshd), worktrees_dir, tmp_path, commit
    )
    (pushed,) = recorder.of(BranchPushed)
    assert isinstance(pushed, BranchPushed)
    assert (pushed.remote, pushed.sha, pushed.already_there) == (url, sha, False)
    assert git(upstream, "rev-parse", branch) == sha
    assert git(upstream, "rev-parse", "trunk") != sha  # only the integration branch moved


async def test_an_scp_like_remote_reaches_the_port_the_operator_gave_its_host(
    sshd: SshServer,
    upstream: Path,
    worktrees_dir: Path,
    tmp_path: Path,
    git: Git,
    commit: Commit,
) -> None:
    url = f"{sshd.user}@127.0.0.1:{upstream}"
    ssh = access(sshd, ports=(("127.0.0.1", sshd.port),))
    recorder, branch, sha = await deliver_one_task(url, ssh, worktrees_dir, tmp_path, commit)
    (pushed,) = recorder.of(BranchPushed)
    assert isinstance(pushed, BranchPushed) and pushed.remote == url
    assert git(upstream, "rev-parse", branch) == sha


async def fails_to_prepare(url: str, ssh: SshAccess, worktrees_dir: Path, tmp_path: Path) -> str:
    recorder = Recorder()
    handlers = handlers_for(
        worktrees_dir, recorder, remotes=Remotes(str(tmp_path / "data"), timeout=30, ssh=ssh)
    )
    await handlers.handle(
        MissionRequested(**meta(), repository=url, requirement="r", base_branch="main"),
        RecordingDelivery(),
    )
    assert recorder.of(RepositoryPrepared) == []
    (failed,) = recorder.of(MissionFailed)
    assert isinstance(failed, MissionFailed)
    return failed.reason


async def test_an_unknown_host_key_is_refused_naming_the_host_and_never_learnt(
    sshd: SshServer, upstream: Path, worktrees_dir: Path, tmp_path: Path
) -> None:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    reason = await fails_to_prepare(
        sshd.url(upstream), access(sshd, known_hosts=str(known_hosts)), worktrees_dir, tmp_path
    )
    assert f"the host key of [127.0.0.1]:{sshd.port} is not in AETHER_GIT_SSH_KNOWN_HOSTS" in (
        reason
    ), reason
    assert str(known_hosts) in reason
    assert known_hosts.read_text() == ""  # not accepted, not written down


async def test_a_host_key_other_than_the_known_one_is_refused(
    sshd: SshServer, upstream: Path, worktrees_dir: Path, tmp_path: Path
) -> None:
    impostor = keygen(tmp_path / "impostor", "not the server")
    kind, key = impostor.with_suffix(".pub").read_text().split()[:2]
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{sshd.port} {kind} {key}\n")
    reason = await fails_to_prepare(
        sshd.url(upstream), access(sshd, known_hosts=str(known_hosts)), worktrees_dir, tmp_path
    )
    assert f"the host key [127.0.0.1]:{sshd.port} offered is not the one" in reason, reason


async def test_a_key_the_server_does_not_accept_is_refused_even_with_an_agent_holding_one_it_does(
    sshd: SshServer,
    upstream: Path,
    worktrees_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The broker's own user may run an agent holding keys the server accepts: ``ssh``
    uses none of them, only the key the broker was given."""
    wrong = keygen(tmp_path / "wrong", "not authorised")
    agent = subprocess.run(["ssh-agent", "-s"], check=True, capture_output=True, text=True).stdout
    variables = dict(part.split("=", 1) for part in agent.replace(";", "\n").split() if "=" in part)
    try:
        env = {**os.environ, **variables}
        subprocess.run(
            ["ssh-add", "-q", str(sshd.client_key)], env=env, check=True, capture_output=True
        )
        monkeypatch.setenv("SSH_AUTH_SOCK", variables["SSH_AUTH_SOCK"])
        reason = await fails_to_prepare(
            sshd.url(upstream), access(sshd, key=str(wrong)), worktrees_dir, tmp_path
        )
    finally:
        os.kill(int(variables["SSH_AGENT_PID"]), 15)
    assert f"[127.0.0.1]:{sshd.port} refused the broker's key (AETHER_GIT_SSH_KEY, {wrong})" in (
        reason
    ), reason
    assert "Permission denied (publickey)" in reason


async def test_an_ssh_remote_without_the_settings_is_refused_before_connecting(
    sshd: SshServer, upstream: Path, worktrees_dir: Path, tmp_path: Path
) -> None:
    reason = await fails_to_prepare(sshd.url(upstream), SshAccess(), worktrees_dir, tmp_path)
    assert "no SSH access configured (set AETHER_GIT_SSH_KEY and AETHER_GIT_SSH_KNOWN_HOSTS" in (
        reason
    ), reason
    partly = await fails_to_prepare(
        sshd.url(upstream), SshAccess(key=str(sshd.client_key)), worktrees_dir, tmp_path
    )
    assert "(set AETHER_GIT_SSH_KNOWN_HOSTS:" in partly, partly


def ssh_source(url: str) -> RemoteSource:
    source = parse_repository(url)
    assert isinstance(source, RemoteSource)
    return source


def test_the_default_branch_of_an_ssh_remote_is_read_over_ssh(
    sshd: SshServer, upstream: Path
) -> None:
    assert remote_default_branch(ssh_source(sshd.url(upstream)), 30, access(sshd)) == "trunk"
    with pytest.raises(RemoteError, match="no SSH access configured"):
        remote_default_branch(ssh_source(sshd.url(upstream)), 30)


def test_ssh_runs_with_a_fixed_configuration_and_no_inherited_environment() -> None:
    argv = SshAccess(key="/keys/id", known_hosts="/keys/known").argv(
        "git.example", b"git-upload-pack 'org/app.git'", username="git", port=None
    )
    assert argv[:3] == ["ssh", "-F", "/dev/null"]  # no ~/.ssh/config, no ProxyCommand there
    options = {argv[i + 1] for i, arg in enumerate(argv) if arg == "-o"}
    for fixed in (
        "BatchMode=yes",
        "StrictHostKeyChecking=yes",
        "UserKnownHostsFile=/keys/known",
        "GlobalKnownHostsFile=/dev/null",
        "IdentityFile=/keys/id",
        "IdentitiesOnly=yes",
        "IdentityAgent=none",
        "ForwardAgent=no",
        "ProxyCommand=none",
        "PermitLocalCommand=no",
        "UpdateHostKeys=no",
    ):
        assert fixed in options
    assert argv[-3:] == ["--", "git.example", "git-upload-pack 'org/app.git'"]
    assert argv[argv.index("-l") + 1] == "git" and "-p" not in argv


@pytest.mark.parametrize(
    ("host", "user"),
    [("-oProxyCommand=touch /tmp/pwned", None), ("host", "-oProxyCommand=x"), ("a b", None)],
)
def test_a_host_or_user_that_could_be_read_as_an_option_never_reaches_ssh(
    host: str, user: str | None, tmp_path: Path
) -> None:
    key = tmp_path / "key"
    key.write_text("")
    vendor = FixedSshVendor(SshAccess(key=str(key), known_hosts=str(key)))
    with pytest.raises(SshRefused):
        vendor.run_command(host, b"git-upload-pack 'x'", username=user)


def test_the_ssh_settings_are_read_and_checked_at_start(tmp_path: Path) -> None:
    key = tmp_path / "id_ed25519"
    key.write_text("key\n")
    known = tmp_path / "known_hosts"
    known.write_text("")
    base = {"AETHER_WORKTREES_DIR": str(tmp_path / "w")}
    settings = GitBrokerSettings.from_env(
        {
            **base,
            "AETHER_GIT_SSH_KEY": str(key),
            "AETHER_GIT_SSH_KNOWN_HOSTS": str(known),
            "AETHER_GIT_SSH_PORTS": "git.internal=7999, 127.0.0.1=2222",
            "AETHER_GIT_REMOTE_TIMEOUT_SECONDS": "20",
        }
    )
    assert settings.ssh == SshAccess(
        key=str(key),
        known_hosts=str(known),
        ports=(("git.internal", 7999), ("127.0.0.1", 2222)),
        timeout=20.0,
        askpass_dir=str(tmp_path),  # the broker's data directory: the worktrees' parent
    )
    for env, words in (
        ({"AETHER_GIT_SSH_KEY": str(tmp_path / "missing")}, "names no file"),
        ({"AETHER_GIT_SSH_KEY": "id_ed25519"}, "must be an absolute path"),
        ({"AETHER_GIT_SSH_KNOWN_HOSTS": str(known) + " /etc/passwd"}, "white space"),
        ({"AETHER_GIT_SSH_KEY_PASSPHRASE_FILE": "passphrase"}, "must be an absolute path"),
        ({"AETHER_GIT_SSH_KEY_PASSPHRASE_FILE": str(tmp_path / "none")}, "names no file"),
        ({"AETHER_GIT_SSH_PORTS": "git.internal"}, "is not host=port"),
        ({"AETHER_GIT_SSH_PORTS": "-oProxyCommand=x=22"}, "is not host=port"),
        ({"AETHER_GIT_SSH_PORTS": "host=70000"}, "1-65535"),
    ):
        with pytest.raises((SettingsError, ValueError), match=words):
            GitBrokerSettings.from_env({**base, **env})


async def test_the_service_delivers_an_ssh_mission_and_its_verification_never_sees_the_key(
    nc: NatsClient,
    nats_url: str,
    sshd: SshServer,
    upstream: Path,
    worktrees_dir: Path,
    tmp_path: Path,
    git: Git,
    commit: Commit,
) -> None:
    """The broker as it runs: settings from the environment's names, real NATS, a
    mission with a verification command that looks for the key where it lies (a
    directory the sandbox shows): it finds an empty file."""
    url = sshd.url(upstream)
    # A passphrase file beside the key (ssh never asks for it: this key has none).
    passphrase = sshd.root / f"passphrase-{os.getpid()}"
    passphrase.write_text("SECRET-WORDS\n")
    settings = GitBrokerSettings(
        runtime=RuntimeSettings(nats_url=nats_url, port=0),
        worktrees_dir=worktrees_dir,
        ack_wait_seconds=2.0,
        push_remote=url,
        ssh_key=str(sshd.client_key),
        ssh_known_hosts=str(sshd.known_hosts),
        ssh_key_passphrase_file=str(passphrase),
        remote_timeout_seconds=30.0,
    )
    sandbox = dataclasses.replace(
        settings.sandbox, read_only=(*settings.sandbox.read_only, sshd.root)
    )
    settings = msgspec.structs.replace(settings, sandbox=sandbox)
    publisher = EventPublisher(nc.jetstream())
    mission = "m-ssh"
    events = await watch(nc, mission)
    service = bootstrap(settings).service
    await start_service(service)
    try:
        verify = (
            f"test -e '{sshd.client_key}' && echo KEY-PATH-THERE; "
            f"if grep -q PRIVATE '{sshd.client_key}'; then echo KEY-READ; exit 1; fi; "
            f"if grep -q SECRET '{passphrase}'; then echo PASSPHRASE-READ; exit 1; fi"
        )
        await publisher.publish(
            MissionRequested(
                **service_meta(mission), repository=url, requirement="x", verify_command=verify
            )
        )
        prepared = await events.next(RepositoryPrepared)
        assert prepared.base_branch == "trunk"
        await publisher.publish(task_ready(mission, "t1"))
        workspace = await events.next(WorkspaceReady)
        sha = commit(workspace.worktree_path, {"shipped.py": "1\n"}, "ship it")
        await publisher.publish(
            AgentCompleted(
                **service_meta(mission), task_id="t1", attempt=1, commit_sha=sha, branch=""
            )
        )
        await events.wait_for(lambda log: bool(log.of(BranchMerged) or log.of(MergeConflicted)))
        # KEY-READ or PASSPHRASE-READ: the merge would be refused.
        assert not events.of(MergeConflicted), events.of(MergeConflicted)
        (merged,) = events.of(BranchMerged)
        await publisher.publish(
            MissionCompleted(
                **service_meta(mission),
                final_sha=merged.merge_sha,
                integration_branch=prepared.integration_branch,
                tasks_merged=1,
            )
        )
        pushed = await events.next(BranchPushed)
    finally:
        await stop_service(service)
        await events.stop()
    assert pushed.remote == url
    assert git(upstream, "rev-parse", prepared.integration_branch) == merged.merge_sha
    assert "PRIVATE" in sshd.client_key.read_text()  # the key itself is untouched
    assert passphrase.read_text() == "SECRET-WORDS\n"

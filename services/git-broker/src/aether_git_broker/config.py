"""The git broker's settings, read from the environment."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, ClassVar

import msgspec

from aether_git_broker.adapters.git import DEFAULT_IDENTITY
from aether_git_broker.adapters.limits import CommitLimits
from aether_git_broker.adapters.ssh import (
    PASSPHRASE_FILE,
    SshAccess,
    parse_ports,
    unsafe_path_problem,
)
from aether_git_broker.domain import Policy
from aether_git_broker.naming import Naming
from aether_runtime.consumers import DEFAULT_ACK_WAIT_SECONDS
from aether_runtime.settings import (
    ENV,
    AtLeastOne,
    Env,
    Flag,
    Names,
    NonNegativeInt,
    Port,
    Positive,
    RuntimeSettings,
    ServiceSettings,
    SettingsError,
    directory,
    path_list,
    setting,
)
from aether_sandbox import SandboxSettings

SERVICE_NAME = "git-broker"
DEFAULT_WORKTREES_DIR = "~/.local/share/aether/worktrees"

Directory = Annotated[Path, Env(parse=directory)]


class GitBrokerSettings(ServiceSettings, frozen=True, kw_only=True):
    """Where the broker keeps repositories, how it names and merges, what it serves.

    ``ack_wait_seconds`` is short: handlers keep their message alive with in-progress
    acks however long they take, so it only bounds how long a message delivered to a
    broker that then died (or lost with a restarting NATS server) waits for another.
    ``git_token`` is the secret each attempt's push token is minted with (not a token
    itself); ``read_token`` the token the read API (task diffs, default branches, on the
    broker's own port) accepts. ``sandbox`` confines verification commands.
    """

    DEFAULT_PORT: ClassVar[int] = 8104

    # Where task worktrees go, and clones of remote repositories (default: its parent).
    worktrees_dir: Directory = setting(
        "AETHER_WORKTREES_DIR", factory=lambda: directory(DEFAULT_WORKTREES_DIR)
    )
    data_dir: Directory | None = setting("AETHER_GIT_DATA_DIR", None)
    branch_prefix: str = setting("AETHER_BRANCH_PREFIX", "aether")
    # ``Name <email>`` of merge commits.
    identity: str = setting("AETHER_GIT_IDENTITY", DEFAULT_IDENTITY)
    max_listed_files: AtLeastOne = setting("AETHER_MAX_LISTED_FILES", 2000)
    ack_wait_seconds: Positive = setting("AETHER_ACK_WAIT_SECONDS", DEFAULT_ACK_WAIT_SECONDS)
    # Directories local repositories must be in (empty: anywhere).
    repository_roots: Annotated[tuple[str, ...], Env(parse=path_list)] = setting(
        "AETHER_REPOSITORY_ROOTS", ()
    )
    # False refuses missions with a verification command.
    verify: Flag = setting("AETHER_VERIFY", True)
    verify_timeout_seconds: Positive = setting("AETHER_VERIFY_TIMEOUT_SECONDS", 600.0)
    # More of the broker's variables a verification command sees (none that looks secret).
    verify_env: Names = setting("AETHER_VERIFY_ENV", ())
    # Where completed missions are pushed (a URL, a path or a remote's name).
    push_remote: str | None = setting("AETHER_PUSH_REMOTE", None)
    remote_timeout_seconds: Positive = setting("AETHER_GIT_REMOTE_TIMEOUT_SECONDS", 300.0)
    # Smart HTTP for remote agent runners (unset: not served), on this host (default:
    # AETHER_HTTP_HOST).
    git_http_port: Port | None = setting("AETHER_GIT_HTTP_PORT", None)
    git_http_host: str | None = setting("AETHER_GIT_HTTP_HOST", None)
    git_token: str = setting("AETHER_GIT_TOKEN", "")
    # The most a push over smart HTTP may send (its pack, as sent) and one object in it
    # may hold (inflated): a push past either is refused and nothing of it is kept.
    git_http_max_push_bytes: AtLeastOne = setting("AETHER_GIT_HTTP_MAX_PUSH_BYTES", 128 * 2**20)
    # What one task's change may bring into an integration branch, however it reached
    # the broker (the runner's own commit limits by default): changed files, one file's
    # bytes, all of them, and how deep its directories nest.
    merge_max_files: AtLeastOne = setting("AETHER_MERGE_MAX_FILES", 2_000)
    merge_max_blob_bytes: AtLeastOne = setting("AETHER_MERGE_MAX_BLOB_BYTES", 10_000_000)
    merge_max_bytes: AtLeastOne = setting("AETHER_MERGE_MAX_BYTES", 100_000_000)
    merge_max_depth: AtLeastOne = setting("AETHER_MERGE_MAX_DEPTH", 200)
    # Finished worktrees kept per repository for reuse (0: none).
    worktree_pool: NonNegativeInt = setting("AETHER_WORKTREE_POOL", 4)
    read_token: str = setting("AETHER_GIT_READ_TOKEN", "")
    # SSH remotes: the private key the broker authenticates with, the known hosts file
    # host keys are checked against (strictly: unknown keys are refused), and the ports
    # of hosts whose URLs name none (``host=port,...``; ``user@host:path`` cannot).
    ssh_key: str | None = setting("AETHER_GIT_SSH_KEY", None)
    ssh_known_hosts: str | None = setting("AETHER_GIT_SSH_KNOWN_HOSTS", None)
    # The file holding the key's passphrase, if it has one (a path, never the value).
    ssh_key_passphrase_file: str | None = setting(PASSPHRASE_FILE, None)
    ssh_ports: Annotated[tuple[tuple[str, int], ...], Env(parse=parse_ports)] = setting(
        "AETHER_GIT_SSH_PORTS", ()
    )
    # Read with the rest when the settings are made, as the sandbox library reads it.
    sandbox: SandboxSettings = msgspec.field(default_factory=SandboxSettings.from_env)

    def __post_init__(self) -> None:
        if self.git_http_port is not None and not self.git_token:
            raise SettingsError("AETHER_GIT_HTTP_PORT is set but AETHER_GIT_TOKEN is not")
        if self.read_token and len(self.read_token) < 16:
            raise SettingsError("AETHER_GIT_READ_TOKEN must be at least 16 characters")
        for name, path in (
            ("AETHER_GIT_SSH_KEY", self.ssh_key),
            ("AETHER_GIT_SSH_KNOWN_HOSTS", self.ssh_known_hosts),
            (PASSPHRASE_FILE, self.ssh_key_passphrase_file),
        ):
            problem = None if path is None else unsafe_path_problem(name, path)
            if problem is not None:
                raise SettingsError(problem)
        for root in self.repository_roots:
            if not os.path.isabs(root):
                raise SettingsError(f"repository root {root!r} is not an absolute path")
        self.naming  # noqa: B018 - fail at start-up on a prefix git would refuse

    @property
    def naming(self) -> Naming:
        return Naming(branch_prefix=self.branch_prefix, worktrees_dir=str(self.worktrees_dir))

    @property
    def policy(self) -> Policy:
        return Policy(
            repository_roots=self.repository_roots,
            verify=self.verify,
            push_remote=self.push_remote,
        )

    @property
    def commit_limits(self) -> CommitLimits:
        return CommitLimits(
            max_files=self.merge_max_files,
            max_blob_bytes=self.merge_max_blob_bytes,
            max_bytes=self.merge_max_bytes,
            max_depth=self.merge_max_depth,
        )

    @property
    def ssh(self) -> SshAccess:
        return SshAccess(
            key=self.ssh_key,
            known_hosts=self.ssh_known_hosts,
            ports=self.ssh_ports,
            timeout=self.remote_timeout_seconds,
            passphrase_file=self.ssh_key_passphrase_file,
            askpass_dir=str(self.clones_dir),
        )

    @property
    def clones_dir(self) -> Path:
        return self.data_dir if self.data_dir is not None else self.worktrees_dir.parent

    @classmethod
    def from_env(cls, env: ENV | None = None) -> GitBrokerSettings:
        return cls.load(
            env,
            runtime=RuntimeSettings.for_service(cls.DEFAULT_PORT, env),
            sandbox=SandboxSettings.from_env(env),
        )

"""The git broker's settings, read from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from aether_git_broker.adapters.git import DEFAULT_IDENTITY
from aether_git_broker.domain import Policy
from aether_git_broker.naming import Naming
from aether_runtime import RuntimeSettings

SERVICE_NAME = "git-broker"
DEFAULT_PORT = 8104
DEFAULT_WORKTREES_DIR = "~/.local/share/aether/worktrees"


class SettingsError(ValueError):
    """A setting the broker cannot start with."""


def _flag(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() not in ("0", "false", "no", "off")


@dataclass(frozen=True)
class GitBrokerSettings:
    """``AETHER_WORKTREES_DIR``: where task worktrees go (resolved to an absolute path);
    ``AETHER_GIT_DATA_DIR``: where clones of remote repositories go (default: the
    worktrees directory's parent); ``AETHER_BRANCH_PREFIX``: the first part of every
    branch the broker creates; ``AETHER_GIT_IDENTITY``: ``Name <email>`` of merge commits;
    ``AETHER_MAX_LISTED_FILES``: how many files RepositoryPrepared lists at most;
    ``AETHER_ACK_WAIT_SECONDS``: how long JetStream waits for an ack before redelivering
    (handlers keep their message alive while they work, so this only bounds how long a
    message delivered to a broker that then died waits before another instance gets it);
    ``AETHER_REPOSITORY_ROOTS``: ``:``-separated directories local repositories must be
    in (default: anywhere); ``AETHER_VERIFY``: ``0`` refuses missions with a verification
    command; ``AETHER_VERIFY_TIMEOUT_SECONDS``: the limit on one verification;
    ``AETHER_PUSH_REMOTE``: where completed missions are pushed (a URL, a path, or a
    remote's name; unset: nowhere); ``AETHER_GIT_REMOTE_TIMEOUT_SECONDS``: the limit on
    a network operation; ``AETHER_GIT_HTTP_PORT``: serve repositories to remote agent
    runners over smart HTTP on this port (unset: not served), on
    ``AETHER_GIT_HTTP_HOST`` (default: ``AETHER_HTTP_HOST``), with ``AETHER_GIT_TOKEN`` the
    secret the broker mints each attempt's push token with (it is not a token itself);
    ``AETHER_WORKTREE_POOL``: how many finished worktrees per repository are kept for
    reuse (``0``: none); ``AETHER_GIT_READ_TOKEN``: the token the read API (task diffs,
    default branches, on the broker's own port) accepts (unset: the API answers 503).
    """

    runtime: RuntimeSettings
    worktrees_dir: Path
    data_dir: Path | None = None
    branch_prefix: str = "aether"
    identity: str = DEFAULT_IDENTITY
    max_listed_files: int = 2000
    # Short: a delivery lost with a restarting NATS server holds the broker this long
    # (handlers are kept alive with in-progress acks however long they take).
    ack_wait_seconds: float = 4.0
    repository_roots: tuple[str, ...] = ()
    verify: bool = True
    verify_timeout_seconds: float = 600.0
    push_remote: str | None = None
    remote_timeout_seconds: float = 300.0
    git_http_port: int | None = None
    git_http_host: str | None = None
    git_token: str = ""
    worktree_pool: int = 4
    read_token: str = ""

    def __post_init__(self) -> None:
        if self.git_http_port is not None and not self.git_token:
            raise SettingsError("AETHER_GIT_HTTP_PORT is set but AETHER_GIT_TOKEN is not")
        if self.read_token and len(self.read_token) < 16:
            raise SettingsError("AETHER_GIT_READ_TOKEN must be at least 16 characters")
        for root in self.repository_roots:
            if not os.path.isabs(root):
                raise SettingsError(f"repository root {root!r} is not an absolute path")

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
    def clones_dir(self) -> Path:
        return self.data_dir if self.data_dir is not None else self.worktrees_dir.parent

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> GitBrokerSettings:
        env = os.environ if env is None else env
        runtime = RuntimeSettings.for_service(DEFAULT_PORT)
        worktrees = env.get("AETHER_WORKTREES_DIR") or DEFAULT_WORKTREES_DIR
        data_dir = env.get("AETHER_GIT_DATA_DIR")
        roots = env.get("AETHER_REPOSITORY_ROOTS") or ""
        port = env.get("AETHER_GIT_HTTP_PORT")
        settings = cls(
            runtime=runtime,
            worktrees_dir=Path(worktrees).expanduser().resolve(),
            data_dir=Path(data_dir).expanduser().resolve() if data_dir else None,
            branch_prefix=env.get("AETHER_BRANCH_PREFIX") or "aether",
            identity=env.get("AETHER_GIT_IDENTITY") or DEFAULT_IDENTITY,
            max_listed_files=int(env.get("AETHER_MAX_LISTED_FILES") or 2000),
            ack_wait_seconds=float(env.get("AETHER_ACK_WAIT_SECONDS") or 4.0),
            repository_roots=tuple(
                os.path.normpath(os.path.expanduser(r)) for r in roots.split(":") if r
            ),
            verify=_flag(env.get("AETHER_VERIFY"), True),
            verify_timeout_seconds=float(env.get("AETHER_VERIFY_TIMEOUT_SECONDS") or 600.0),
            push_remote=env.get("AETHER_PUSH_REMOTE") or None,
            remote_timeout_seconds=float(env.get("AETHER_GIT_REMOTE_TIMEOUT_SECONDS") or 300.0),
            git_http_port=int(port) if port else None,
            git_http_host=env.get("AETHER_GIT_HTTP_HOST") or None,
            git_token=env.get("AETHER_GIT_TOKEN") or "",
            worktree_pool=int(env.get("AETHER_WORKTREE_POOL") or 4),
            read_token=env.get("AETHER_GIT_READ_TOKEN") or "",
        )
        settings.naming  # noqa: B018 - fail at start-up on a prefix git would refuse
        return settings

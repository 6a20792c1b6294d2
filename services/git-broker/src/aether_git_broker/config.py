"""The git broker's settings, read from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from aether_git_broker.adapters.git import DEFAULT_IDENTITY
from aether_git_broker.naming import Naming
from aether_runtime import RuntimeSettings

SERVICE_NAME = "git-broker"
DEFAULT_PORT = 8104
DEFAULT_WORKTREES_DIR = "~/.local/share/aether/worktrees"


@dataclass(frozen=True)
class GitBrokerSettings:
    """``AETHER_WORKTREES_DIR``: where task worktrees go (resolved to an absolute path);
    ``AETHER_BRANCH_PREFIX``: the first part of every branch the broker creates;
    ``AETHER_GIT_IDENTITY``: ``Name <email>`` of merge commits;
    ``AETHER_MAX_LISTED_FILES``: how many files RepositoryPrepared lists at most;
    ``AETHER_ACK_WAIT_SECONDS``: how long JetStream waits for an ack before redelivering.
    Handlers keep their message alive while they work, so this only bounds how long a
    message delivered to a broker that then died waits before another instance gets it.
    """

    runtime: RuntimeSettings
    worktrees_dir: Path
    branch_prefix: str = "aether"
    identity: str = DEFAULT_IDENTITY
    max_listed_files: int = 2000
    ack_wait_seconds: float = 30.0

    @property
    def naming(self) -> Naming:
        return Naming(branch_prefix=self.branch_prefix, worktrees_dir=str(self.worktrees_dir))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> GitBrokerSettings:
        env = os.environ if env is None else env
        runtime = RuntimeSettings.from_env(DEFAULT_PORT)
        worktrees = env.get("AETHER_WORKTREES_DIR") or DEFAULT_WORKTREES_DIR
        settings = cls(
            runtime=runtime,
            worktrees_dir=Path(worktrees).expanduser().resolve(),
            branch_prefix=env.get("AETHER_BRANCH_PREFIX") or "aether",
            identity=env.get("AETHER_GIT_IDENTITY") or DEFAULT_IDENTITY,
            max_listed_files=int(env.get("AETHER_MAX_LISTED_FILES") or 2000),
            ack_wait_seconds=float(env.get("AETHER_ACK_WAIT_SECONDS") or 30.0),
        )
        settings.naming  # noqa: B018 - fail at start-up on a prefix git would refuse
        return settings

"""The one place the git broker's real parts are built from its settings."""

from __future__ import annotations

from aether_git_broker.adapters.git import GitRepositories
from aether_git_broker.adapters.remote import Remotes
from aether_git_broker.adapters.smarthttp import PushTokens
from aether_git_broker.adapters.verify import Verifier, verification_sandbox
from aether_git_broker.app import Adapters, GitBroker, wire
from aether_git_broker.config import GitBrokerSettings


def bootstrap(settings: GitBrokerSettings | None = None) -> GitBroker:
    """The git broker from ``settings`` (default: the environment)."""
    settings = settings or GitBrokerSettings.from_env()
    git = GitRepositories(
        identity=settings.identity,
        max_listed_files=settings.max_listed_files,
        worktrees_dir=str(settings.worktrees_dir),
        pool_capacity=settings.worktree_pool,
        commit_limits=settings.commit_limits,
    )
    verifier = Verifier(
        timeout=settings.verify_timeout_seconds,
        sandbox=verification_sandbox(settings.sandbox),
        passed_env=settings.verify_env,
        # The SSH key and its passphrase are the broker's alone: a command finds an
        # empty file in their place.
        hidden=tuple(path for path in (settings.ssh_key, settings.ssh_key_passphrase_file) if path),
    )
    adapters = Adapters(
        git=git,
        remotes=Remotes(
            str(settings.clones_dir), timeout=settings.remote_timeout_seconds, ssh=settings.ssh
        ),
        verifier=verifier,
        push_tokens=(
            PushTokens(settings.git_token) if settings.git_http_port is not None else None
        ),
    )
    return wire(settings, adapters)

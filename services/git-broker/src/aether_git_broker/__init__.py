"""The git broker: the single writer of every repository Aether works on.

It prepares integration branches, gives each task attempt a branch and a linked worktree
at the integration head, and merges finished tasks one at a time.
"""

from aether_git_broker.bootstrap import bootstrap
from aether_git_broker.config import GitBrokerSettings

__all__ = ["GitBrokerSettings", "bootstrap"]

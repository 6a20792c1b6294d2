"""The file tools' safe opening of paths now lives in ``adapters/safefs.py``.

This name stays only for ``adapters/git.py`` and ``adapters/scan.py``, which import it
from here; once they import ``aether_agent_runner.adapters.safefs``, delete this module.
"""

from aether_agent_runner.adapters.safefs import (
    Raced,
    Refused,
    Resolved,
    Tree,
    is_git_name,
    open_dir,
    read_in,
)

__all__ = ["Raced", "Refused", "Resolved", "Tree", "is_git_name", "open_dir", "read_in"]

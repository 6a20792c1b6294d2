"""Confinement for the commands an agent, or a mission's verification, runs.

``open_sandbox(settings)`` gives the configured backend (bubblewrap by default) or raises
``SandboxUnavailable`` naming what is missing; ``execute`` runs a ``Request`` in it.
``open_runner`` gives the same as a ``CommandRunner`` (the port ``port.py`` describes).
"""

from aether_sandbox.base import (
    UNCONFINED,
    Launch,
    Request,
    Sandbox,
    SandboxUnavailable,
    Unconfined,
    mark_logs_unconfined,
)
from aether_sandbox.bubblewrap import Bubblewrap, open_bubblewrap
from aether_sandbox.execute import Outcome, OutputCollector, enforcement, execute, execute_sync
from aether_sandbox.port import CommandRunner, SandboxRunner, open_runner
from aether_sandbox.settings import MIB, Limits, SandboxSettings
from aether_sandbox.stop import StopOrder
from aether_sandbox.warm import WarmSandbox

__all__ = [
    "MIB",
    "UNCONFINED",
    "Bubblewrap",
    "CommandRunner",
    "Launch",
    "Limits",
    "Outcome",
    "OutputCollector",
    "Request",
    "Sandbox",
    "SandboxRunner",
    "SandboxSettings",
    "SandboxUnavailable",
    "StopOrder",
    "Unconfined",
    "WarmSandbox",
    "enforcement",
    "execute",
    "execute_sync",
    "mark_logs_unconfined",
    "open_runner",
    "open_sandbox",
]


def open_sandbox(settings: SandboxSettings) -> Sandbox:
    """The configured sandbox, ready to run commands, or ``SandboxUnavailable``.

    ``unconfined`` is only ever what an operator asked for: a bubblewrap that cannot start
    never falls back to it.
    """
    if settings.unconfined:
        return Unconfined(settings)
    return open_bubblewrap(settings)

"""The port a caller of a sandboxed command works through: run one ``Request``, get its
``Outcome``.

``CommandRunner`` is what ``run_command`` (the agent runner's tool, the git broker's
verification) needs of a sandbox, and no more. ``SandboxRunner`` is the real adapter: a
backend (``Bubblewrap``, or an operator's explicit ``Unconfined``) through ``execute``;
``aether_sandbox.testing.ScriptedSandbox`` the fake for handler tests, which runs nothing
and answers from a script. ``tests/contracts/test_sandbox.py`` runs the same assertions
against both; a behaviour it does not check is not promised.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from aether_sandbox.base import Request, Sandbox, SandboxUnavailable
from aether_sandbox.execute import Outcome, execute
from aether_sandbox.settings import SandboxSettings

UNAVAILABLE = "unavailable"


@runtime_checkable
class CommandRunner(Protocol):
    """Runs one command confined and says how it ended.

    ``run`` gives the exit code (``None`` when a limit stopped it first), stdout and
    stderr together with the middle cut past ``output_chars``, ``timed_out`` past the
    request's wall-clock limit, ``stopped`` naming any other limit that stopped it (more
    output than ``limits.output_bytes``), and the sandbox's ``name``. A runner that cannot
    start a sandbox here is named ``unavailable`` and refuses every request with
    ``SandboxUnavailable`` naming what is missing, running nothing.
    """

    @property
    def name(self) -> str: ...

    @property
    def confined(self) -> bool: ...

    async def run(self, request: Request, output_chars: int = 16_000) -> Outcome:
        """``request``'s outcome; ``SandboxUnavailable`` when no sandbox can start."""
        ...


class SandboxRunner:
    """The real ``CommandRunner``: a sandbox backend, or why none can start."""

    def __init__(self, sandbox: Sandbox | SandboxUnavailable) -> None:
        self.sandbox = sandbox

    @property
    def name(self) -> str:
        return UNAVAILABLE if isinstance(self.sandbox, SandboxUnavailable) else self.sandbox.name

    @property
    def confined(self) -> bool:
        # An unavailable sandbox never falls back to running unconfined.
        return isinstance(self.sandbox, SandboxUnavailable) or self.sandbox.confined

    async def run(self, request: Request, output_chars: int = 16_000) -> Outcome:
        if isinstance(self.sandbox, SandboxUnavailable):
            raise SandboxUnavailable(str(self.sandbox))
        return await execute(self.sandbox, request, output_chars)


def open_runner(settings: SandboxSettings) -> SandboxRunner:
    """The configured sandbox as a ``CommandRunner`` (one that refuses, with the reason,
    where none can start)."""
    from aether_sandbox import open_sandbox  # the package's one choice of backend

    try:
        return SandboxRunner(open_sandbox(settings))
    except SandboxUnavailable as error:
        return SandboxRunner(error)

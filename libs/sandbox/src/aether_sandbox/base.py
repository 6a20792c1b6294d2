"""The port: what a sandbox is asked to run, and what it hands back to start it.

A backend turns a ``Request`` into a ``Launch`` (the argument vector, environment and
directory of the process to start); ``execute`` then starts it with the limits, watches
it and kills all of it. A backend that can hold the command back until its limits are set
(bubblewrap) says how in ``Launch.held``. bubblewrap is the one confining backend today;
nsjail or Landlock would be other ``Sandbox`` implementations of the same two methods.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from aether_sandbox.settings import Limits, SandboxSettings

if TYPE_CHECKING:
    from aether_sandbox.disk import DiskWatch

UNCONFINED = "unconfined"


class SandboxUnavailable(Exception):
    """No sandbox can start here; the message names what is missing."""


@dataclass(frozen=True)
class Request:
    """One command: ``workdir`` is the only tree it may write (``cwd`` lies inside it);
    ``protect`` are entries inside ``workdir`` that stay read-only (a ``.git`` file) or,
    for directories, are hidden behind an empty read-only one; ``read_only`` are more host
    paths it may read (on top of the system directories and the Python runtime); ``stdin``
    a host file the command reads on its standard input (else it reads nothing); ``home``
    a host directory that is the command's ``HOME``, writable and kept once it ends (where
    an agent keeps its sessions; else ``HOME`` is in the sandbox's private ``/tmp``);
    ``shown_as`` are host files shown, read-only, in place of others (a repository's
    configuration with its credentials left out, over the real one); ``shown_only`` are
    host directories shown read-only with only the listed entries (paths relative to the
    directory, files or whole directories), nothing else of them there, whatever else
    shows (a repository's git directory without its reflogs); a ``shown_as`` target may
    lie inside one."""

    argv: list[str]
    workdir: Path
    cwd: Path
    env: Mapping[str, str]
    limits: Limits = field(default_factory=Limits)
    read_only: tuple[Path, ...] = ()
    protect: tuple[Path, ...] = ()
    stdin: Path | None = None
    home: Path | None = None
    shown_as: tuple[tuple[Path, Path], ...] = ()
    shown_only: tuple[tuple[Path, tuple[str, ...]], ...] = ()
    # The watch of the attempt the command is part of (``DiskWatch.of_attempt``): the
    # command is stopped too once the attempt as a whole has written too much.
    attempt_disk: DiskWatch | None = field(default=None, compare=False)

    @property
    def writable(self) -> tuple[Path, ...]:
        """The host trees the command may write: ``workdir``, and ``home`` if given."""
        return (self.workdir,) if self.home is None else (self.workdir, self.home)


@dataclass(frozen=True)
class Launch:
    """``held(info_fd, gate_fd)``, where the backend offers it, is an argument vector that
    writes ``{"child-pid": N}`` (N: the process that will start the command, in the
    caller's PID namespace) to ``info_fd`` and then waits, the command not yet started,
    until a byte can be read from ``gate_fd``: the caller moves N into the command's
    cgroup and sets its rlimits in between. Closing ``gate_fd``'s other end unwritten
    releases it too, so the caller kills the launch before it ever does that.

    ``seccomp``, where the backend filters system calls, is the compiled filter the
    argument vector asks for on a descriptor not yet known (``seccomp.passed`` gives it
    one, at each start)."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path
    held: Callable[[int, int], list[str]] | None = None
    seccomp: bytes | None = None


class Sandbox(Protocol):
    """A way of running a command confined (or, for ``Unconfined``, not)."""

    name: str
    confined: bool
    settings: SandboxSettings

    def launch(self, request: Request) -> Launch:
        """How to start ``request`` inside this sandbox."""
        ...


class Unconfined:
    """Runs commands as the runner's own user, with only the limits: chosen explicitly by
    an operator (``AETHER_SANDBOX=unconfined``), and shown in every log line and event."""

    name = UNCONFINED
    confined = False

    def __init__(self, settings: SandboxSettings) -> None:
        self.settings = settings

    def launch(self, request: Request) -> Launch:
        env = dict(request.env)
        if request.home is not None:
            env["HOME"] = str(request.home)
        return Launch(list(request.argv), env, request.cwd)


_marked = False


def mark_logs_unconfined() -> None:
    """Tag every log record of this process with ``confinement: unconfined``."""
    global _marked
    if _marked:
        return
    _marked = True
    factory = logging.getLogRecordFactory()

    def tagged(*args: object, **kwargs: object) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        record.confinement = UNCONFINED
        return record

    logging.setLogRecordFactory(tagged)

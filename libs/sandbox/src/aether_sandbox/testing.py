"""A scripted ``CommandRunner`` for handler tests: it runs nothing.

Each request takes the next scripted ``Scripted`` (what the command would do: print
``output``, run for ``seconds``, exit with ``exit_code``), or the result of a function of
the request, and every request is recorded in ``requests``. The request's limits are
applied as the real sandbox applies them: past ``limits.wall_seconds`` the command has
timed out (no exit code, what it printed kept); printing more than
``limits.output_bytes`` while it runs on stops it; the output is cut in the middle past
``output_chars`` by the same collector. ``unavailable`` makes it refuse every request
with that reason. ``tests/contracts/test_sandbox.py`` runs the same assertions against
this class and bubblewrap; a behaviour it does not check is not promised.

What it leaves out: the confinement itself (mounts, network, the read-only ``.git``),
memory, CPU and disk limits, and programs that cannot start; those are bubblewrap's and
are tested on it (``libs/sandbox/tests``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from aether_sandbox.base import Request, SandboxUnavailable
from aether_sandbox.execute import Outcome, OutputCollector, _size
from aether_sandbox.port import UNAVAILABLE

SCRIPTED = "scripted"


@dataclass(frozen=True)
class Scripted:
    """What one command would do: print ``output``, then exit with ``exit_code`` after
    ``seconds`` (unless a limit stops it first)."""

    output: str = ""
    exit_code: int = 0
    seconds: float = 0.0


class ScriptedSandbox:
    """The fake of ``CommandRunner``: scripted results, every request recorded."""

    confined = True

    def __init__(
        self,
        replies: Iterable[Scripted | Callable[[Request], Scripted]] = (),
        *,
        unavailable: str | None = None,
    ) -> None:
        self.replies = list(replies)
        self.requests: list[Request] = []
        self.unavailable = unavailable

    @property
    def name(self) -> str:
        return UNAVAILABLE if self.unavailable is not None else SCRIPTED

    async def run(self, request: Request, output_chars: int = 16_000) -> Outcome:
        if self.unavailable is not None:
            raise SandboxUnavailable(self.unavailable)
        self.requests.append(request)
        if not self.replies:
            raise LookupError(f"no scripted result for {request.argv!r}")
        reply = self.replies.pop(0)
        scripted = reply if isinstance(reply, Scripted) else reply(request)
        limits = request.limits
        printed = scripted.output.encode()
        collector = OutputCollector(output_chars)
        collector.feed(printed)
        timed_out = scripted.seconds >= limits.wall_seconds
        stopped = None
        if not timed_out and scripted.seconds > 0 and len(printed) > limits.output_bytes:
            stopped = f"it printed more than {_size(limits.output_bytes)} of output"
        killed = timed_out or stopped is not None
        return Outcome(
            exit_code=None if killed else scripted.exit_code,
            timed_out=timed_out,
            output=collector.text(),
            seconds=limits.wall_seconds if timed_out else (0.0 if killed else scripted.seconds),
            sandbox=SCRIPTED,
            stopped=stopped,
        )

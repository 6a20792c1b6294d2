"""The contract of the ``CommandRunner`` port, held by bubblewrap and the scripted fake.

Every test runs twice: against ``SandboxRunner`` on bubblewrap (skipped only where
bubblewrap cannot start here, with its reason; CI installs it) running real ``/bin/sh``
commands, and against ``aether_sandbox.testing.ScriptedSandbox``, given what the same
command would do. A handler test on the fake may rely on what is asserted here, and only
on that.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from aether_sandbox import (
    CommandRunner,
    Limits,
    Request,
    SandboxSettings,
    SandboxUnavailable,
    open_runner,
)
from aether_sandbox.testing import Scripted, ScriptedSandbox

ENV = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.defpath}"}
# Prints its first argument, sleeps its third, exits with its second.
SCRIPT = 'printf %s "$1"; if [ "$3" != 0 ]; then sleep "$3"; fi; exit "$2"'


@dataclass
class World:
    runner: CommandRunner
    # (output, exit code, seconds, limits): a request for a command that prints
    # ``output``, runs ``seconds`` and exits with the code.
    command: Callable[[str, int, float, Limits], Request]
    # A runner where no sandbox can start, and words its refusal must contain.
    refusing: CommandRunner
    missing: str
    workdir: Path


@pytest.fixture(params=["scripted", "bubblewrap"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> World:
    workdir = tmp_path / "wt"
    workdir.mkdir()

    def request_for(argv: list[str], limits: Limits) -> Request:
        return Request(argv, workdir, workdir, ENV, limits)

    reason = "bubblewrap is not installed (no 'no-such-bwrap' on PATH)"
    if request.param == "scripted":
        fake = ScriptedSandbox()

        def scripted(output: str, code: int, seconds: float, limits: Limits) -> Request:
            fake.replies.append(Scripted(output, code, seconds))
            return request_for(["scripted-command"], limits)

        refused = ScriptedSandbox(unavailable=reason)
        return World(fake, scripted, refused, "bubblewrap is not installed", workdir)
    runner = open_runner(SandboxSettings())
    if runner.name == "unavailable":
        pytest.skip(f"bubblewrap cannot start here: {runner.sandbox}")

    def real(output: str, code: int, seconds: float, limits: Limits) -> Request:
        argv = ["/bin/sh", "-c", SCRIPT, "sh", output, str(code), f"{seconds:g}"]
        return request_for(argv, limits)

    refusing = open_runner(SandboxSettings(bwrap="no-such-bwrap"))
    return World(runner, real, refusing, "bubblewrap is not installed", workdir)


async def test_the_exit_code_and_the_output_come_back(world: World) -> None:
    failed = await world.runner.run(world.command("hello\n", 3, 0, Limits()))
    assert (failed.exit_code, failed.output, failed.timed_out, failed.stopped) == (
        3,
        "hello\n",
        False,
        None,
    )
    assert failed.sandbox == world.runner.name and world.runner.confined
    quiet = await world.runner.run(world.command("", 0, 0, Limits()))
    assert (quiet.exit_code, quiet.output) == (0, "(no output)")


async def test_long_output_keeps_its_first_quarter_and_last_three_quarters(
    world: World,
) -> None:
    lines = "".join(f"{n:05d}\n" for n in range(2000))  # 12,000 bytes
    outcome = await world.runner.run(world.command(lines, 0, 0, Limits()), output_chars=600)
    assert outcome.exit_code == 0
    assert outcome.output.startswith(lines[:150])
    assert outcome.output.endswith(lines[-450:])
    assert "[… 11,400 bytes of output omitted …]" in outcome.output


async def test_a_command_past_its_wall_clock_limit_is_stopped_without_an_exit_code(
    world: World,
) -> None:
    limits = Limits(wall_seconds=0.5)
    outcome = await world.runner.run(world.command("started\n", 0, 30, limits))
    assert (outcome.timed_out, outcome.exit_code, outcome.stopped) == (True, None, None)
    assert outcome.output == "started\n"
    assert outcome.seconds >= limits.wall_seconds


async def test_a_command_printing_past_the_output_cap_is_stopped(world: World) -> None:
    limits = Limits(output_bytes=1000)
    outcome = await world.runner.run(world.command("x" * 5000, 0, 30, limits), output_chars=100)
    assert (outcome.timed_out, outcome.exit_code) == (False, None)
    assert outcome.stopped == "it printed more than 1,000 bytes of output"


async def test_where_no_sandbox_can_start_every_command_is_refused_with_the_reason(
    world: World,
) -> None:
    marker = world.workdir / "ran"
    for _ in range(2):
        with pytest.raises(SandboxUnavailable, match=world.missing):
            await world.refusing.run(
                Request(["/bin/sh", "-c", f"touch {marker}"], world.workdir, world.workdir, ENV)
            )
    assert world.refusing.name == "unavailable" and world.refusing.confined
    assert not marker.exists()

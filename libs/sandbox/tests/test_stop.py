"""A stop order ends a command another thread runs, whole, at once."""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from pathlib import Path

import pytest

from aether_sandbox import (
    Outcome,
    Request,
    SandboxSettings,
    StopOrder,
    execute_sync,
    open_sandbox,
)

ENV = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.defpath}"}
needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="no bubblewrap")


@needs_bwrap
def test_a_stop_order_kills_a_running_command_and_says_why(tmp_path: Path) -> None:
    sandbox = open_sandbox(SandboxSettings())
    stop = StopOrder()
    # Started in the background: the order must end it, not only the shell.
    request = Request(["sh", "-c", "sleep 60 & touch started; wait"], tmp_path, tmp_path, ENV)
    ran: list[object] = []
    worker = threading.Thread(target=lambda: ran.append(execute_sync(sandbox, request, stop=stop)))
    worker.start()
    deadline = time.monotonic() + 30
    while not (tmp_path / "started").exists():
        assert time.monotonic() < deadline, "the command never started"
        time.sleep(0.01)
    began = time.monotonic()
    stop.stop("the mission was cancelled")
    worker.join(timeout=30)
    assert not worker.is_alive()
    (outcome,) = ran
    assert time.monotonic() - began < 10
    assert outcome.exit_code is None and not outcome.timed_out
    assert outcome.stopped == "the mission was cancelled"


@needs_bwrap
def test_a_stopped_command_keeps_the_output_it_printed_until_the_order(tmp_path: Path) -> None:
    sandbox = open_sandbox(SandboxSettings())
    stop = StopOrder()
    script = "seq 1 3; printf 'halfway'; touch started; sleep 60"
    request = Request(["sh", "-c", script], tmp_path, tmp_path, ENV)
    ran: list[Outcome] = []
    worker = threading.Thread(target=lambda: ran.append(execute_sync(sandbox, request, stop=stop)))
    worker.start()
    deadline = time.monotonic() + 30
    while not (tmp_path / "started").exists():
        assert time.monotonic() < deadline, "the command never started"
        time.sleep(0.01)
    stop.stop("the mission was cancelled")
    worker.join(timeout=30)
    (outcome,) = ran
    assert outcome.stopped == "the mission was cancelled" and outcome.exit_code is None
    assert outcome.output == "1\n2\n3\nhalfway"


@needs_bwrap
def test_a_stop_order_given_before_the_command_starts_stops_it_as_it_starts(
    tmp_path: Path,
) -> None:
    stop = StopOrder()
    stop.stop("cancelled first")
    stop.stop("a second order changes nothing")
    outcome = execute_sync(
        open_sandbox(SandboxSettings()),
        Request(["sh", "-c", "touch ran; sleep 60"], tmp_path, tmp_path, ENV),
        stop=stop,
    )
    assert outcome.stopped == "cancelled first" and outcome.exit_code is None
    assert outcome.seconds < 10

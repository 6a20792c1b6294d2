"""Repositories served over git's own protocol (``git://``) by a real ``git daemon``, for
tests of missions on remote repositories."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from aether.infra import free_port

_ENV = {
    **os.environ,
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}


def bare_copy(source: Path, served: Path, name: str, head: str | None = None) -> Path:
    """A bare clone of ``source`` at ``served/name``, its ``HEAD`` naming ``head`` when
    given (what a remote advertises as its default branch)."""
    target = served / name
    subprocess.run(["git", "clone", "-q", "--bare", str(source), str(target)], env=_ENV, check=True)
    if head is not None:
        subprocess.run(
            ["git", "-C", str(target), "symbolic-ref", "HEAD", f"refs/heads/{head}"],
            env=_ENV,
            check=True,
        )
    return target


@contextlib.contextmanager
def git_daemon(served: Path) -> Iterator[str]:
    """``git daemon`` exporting every repository under ``served`` on a free port; yields
    the URL prefix (``git://127.0.0.1:<port>``)."""
    if shutil.which("git") is None:  # pragma: no cover - git is part of the test image
        raise RuntimeError("git daemon needs the git program")
    port = free_port()
    process = subprocess.Popen(
        [
            "git",
            "daemon",
            "--reuseaddr",
            "--export-all",
            "--informative-errors",
            f"--base-path={served}",
            "--listen=127.0.0.1",
            f"--port={port}",
            str(served),
        ],
        env=_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("git daemon did not start") from None
                time.sleep(0.05)
        yield f"git://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)

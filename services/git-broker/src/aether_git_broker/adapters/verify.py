"""Running a mission's verification command on a merge before the branch moves.

This is the one place the broker starts a process, and it is the user's command, never
git. The merged commit is checked out in a scratch worktree (detached, so the command can
use git there), the command runs in it through ``/bin/sh`` with a time limit, in a
process group of its own so that a timeout stops everything it started, and the scratch
worktree is removed afterwards. The environment is the broker's minus anything that
looks like a secret (tokens, keys, passwords).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import Literal

from dulwich.objects import ObjectID

from aether_git_broker.adapters.git import GitRepositories, Handle

log = logging.getLogger("aether.git_broker.verify")

_SECRET = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|(^|_)KEY$|API_KEY", re.IGNORECASE)


@dataclass(frozen=True)
class Verification:
    result: Literal["passed", "failed", "timed_out"]
    exit_code: int | None
    seconds: float
    output: str


def command_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a verification command gets: no secrets of the broker."""
    env = dict(os.environ if base is None else base)
    return {name: value for name, value in env.items() if not _SECRET.search(name)}


def run_command(
    command: str, cwd: str, timeout: float, max_output: int, env: dict[str, str]
) -> Verification:
    """Run ``command`` with ``/bin/sh -c`` in ``cwd``; stdout and stderr together."""
    began = time.monotonic()
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(
            ["/bin/sh", "-c", command],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            code: int | None = process.wait(timeout=timeout)
            result: Literal["passed", "failed", "timed_out"] = "passed" if code == 0 else "failed"
        except subprocess.TimeoutExpired:
            code, result = None, "timed_out"
        finally:
            # Whatever it started (a test runner's workers, a server) goes with it.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        size = output.tell()
        output.seek(max(0, size - max_output))
        text = output.read().decode(errors="replace")
    if size > max_output:
        text = f"[… {size - max_output} earlier bytes left out]\n" + text
    return Verification(result, code, time.monotonic() - began, text)


class Verifier:
    """Checks a merge out in a scratch worktree and runs the mission's command there."""

    def __init__(self, *, timeout: float = 600.0, max_output: int = 8000) -> None:
        self.timeout = timeout
        self.max_output = max_output
        self.last: Verification | None = None

    def verify(
        self,
        git: GitRepositories,
        handle: Handle,
        commit: ObjectID,
        command: str,
        scratch: str,
    ) -> str | None:
        """``None`` when ``command`` passes on ``commit``; else why, for people.

        The scratch worktree comes from the repository's pool and goes back to it, so
        verifying merge after merge rewrites only the files each merge changed.
        """
        git.scratch_worktree(handle, scratch, commit)
        try:
            outcome = run_command(
                command, scratch, self.timeout, self.max_output, command_environment()
            )
        finally:
            git.release_worktree(handle.repo, scratch)
        self.last = outcome
        log.info(
            "verification %s",
            outcome.result,
            extra={"exit_code": outcome.exit_code, "seconds": round(outcome.seconds, 3)},
        )
        if outcome.result == "passed":
            return None
        if outcome.result == "timed_out":
            head = f"verification failed: `{command}` did not finish within {self.timeout:g}s"
        else:
            head = (
                f"verification failed: `{command}` exited with {outcome.exit_code} "
                f"after {outcome.seconds:.1f}s"
            )
        return f"{head}\n--- output ---\n{outcome.output}" if outcome.output else head

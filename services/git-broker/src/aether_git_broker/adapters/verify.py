"""Running a mission's verification command on a merge before the branch moves.

This is the one place the broker starts a process, and it is the user's command, never
git. The merged commit is checked out in a scratch worktree (detached, so the command can
use git there), the command runs in it through ``/bin/sh`` in the same sandbox as an
agent's commands (``aether_sandbox``: bubblewrap by default): the scratch worktree is its
only writable place, the repository's git directory is readable but not writable and
shown only in part (what git needs to read the repository, see ``GIT_DIR_SHOWN``: no
reflogs, no ``FETCH_HEAD``, its configuration without credentials), there is no
network, and the limits of ``AETHER_SANDBOX_*`` apply, the time limit killing
everything it started. The scratch worktree is removed afterwards. The command runs what
agents merged, so its environment is built as an agent command's is: a few harmless
variables of the broker's and the ones an operator names (``AETHER_VERIFY_ENV``), never one
whose name looks secret, whatever else the broker holds (a push URL with a token, the
bus's address). With no
sandbox able to start, verification fails with the reason, unless an operator set
``AETHER_SANDBOX=unconfined``.
"""

from __future__ import annotations

import io
import logging
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from dulwich.config import ConfigFile
from dulwich.objects import ObjectID

from aether_git_broker.adapters.git import Handle
from aether_git_broker.adapters.worktrees import admin_dir
from aether_git_broker.domain.outcomes import VerificationResult
from aether_git_broker.ports import ScratchWorktrees
from aether_sandbox import (
    Request,
    Sandbox,
    SandboxSettings,
    SandboxUnavailable,
    StopOrder,
    execute_sync,
    mark_logs_unconfined,
    open_sandbox,
)
from aether_sandbox.environment import harmless_environment

log = logging.getLogger("aether.git_broker.verify")


@dataclass(frozen=True)
class Verification:
    """How a verification command ended, and what it printed (until it was stopped)."""

    result: VerificationResult
    exit_code: int | None
    seconds: float
    output: str


def command_environment(
    base: Mapping[str, str] | None = None, passed: tuple[str, ...] = ()
) -> dict[str, str]:
    """The environment a verification command gets: harmless variables of ``base`` (the
    broker's environment) and the ``passed`` names, none that looks secret."""
    return harmless_environment(os.environ if base is None else base, passed, also=("HOME",))


# What a repository's configuration may hold that a verification command must not read:
# a header or a password given to a remote, a credential helper's settings, and a token in
# a URL (``https://user:token@host/...``), kept without it.
_SECRET_KEY = re.compile(rb"extraheader|password|passwd|token|secret|cookie", re.IGNORECASE)
_USERINFO = re.compile(rb"^([a-z][a-z0-9+.-]*://)[^/@]*@", re.IGNORECASE)


# What of the repository's git directory (its common directory) a verification command
# sees: what git needs to read the repository and its history (objects, refs, the
# configuration, shown without credentials, and a few files of ``info/``), and the scratch
# worktree's own administrative files. Everything else is not there: reflogs (``logs/``,
# whose entries can name the URL a clone came from, with its token), ``FETCH_HEAD`` and
# ``ORIG_HEAD`` (a fetch's URL), the ``remotes/`` and ``branches/`` files (remotes' URLs),
# hooks, the other worktrees' directories, and what a tool or a person kept there (a
# credential store's file, a submodule's git directory with its own configuration).
GIT_DIR_SHOWN = (
    "HEAD",
    "objects",
    "refs",
    "packed-refs",
    "shallow",
    "info/exclude",
    "info/attributes",
    "info/grafts",
)
WORKTREE_ADMIN_SHOWN = ("HEAD", "index", "commondir", "gitdir", "locked")


def shown_git_dir(common: Path, admin: Path) -> tuple[str, ...]:
    """The entries of the common directory ``common`` a verification command sees, the
    administrative directory ``admin`` of its scratch worktree (inside it) among them."""
    inside = admin.relative_to(common)
    return GIT_DIR_SHOWN + tuple(str(inside / name) for name in WORKTREE_ADMIN_SHOWN)


def config_without_credentials(text: bytes) -> bytes:
    """A git configuration file as git reads it, without what could be a credential."""
    parsed = ConfigFile.from_file(io.BytesIO(text))
    out: list[bytes] = []
    for section in parsed.sections():
        if section[0].lower() == b"credential":
            continue
        head = section[0]
        if len(section) > 1:
            head += b' "' + _escaped(_USERINFO.sub(rb"\1", section[1])) + b'"'
        out.append(b"[" + head + b"]\n")
        for key, value in parsed.items(section):
            if _SECRET_KEY.search(key):
                continue
            if key.lower() in (b"url", b"pushurl", b"insteadof", b"pushinsteadof"):
                value = _USERINFO.sub(rb"\1", value)
            out.append(b"\t" + key + b' = "' + _escaped(value) + b'"\n')
    return b"".join(out)


def _escaped(value: bytes) -> bytes:
    return (
        value.replace(b"\\", b"\\\\")
        .replace(b'"', b'\\"')
        .replace(b"\n", b"\\n")
        .replace(b"\t", b"\\t")
    )


def verification_sandbox(settings: SandboxSettings | None = None) -> Sandbox | SandboxUnavailable:
    """The sandbox verification commands run in, or why none can start (logged here)."""
    settings = settings or SandboxSettings.from_env()
    try:
        sandbox = open_sandbox(settings)
    except SandboxUnavailable as error:
        log.error("no sandbox can start: verification will fail", extra={"reason": str(error)})
        return error
    if not sandbox.confined:
        mark_logs_unconfined()
        log.warning("verification commands run UNCONFINED, as the broker's own user")
    return sandbox


def run_command(
    command: str,
    cwd: str,
    timeout: float,
    max_output: int,
    env: dict[str, str],
    *,
    sandbox: Sandbox | SandboxUnavailable | None = None,
    read_only: tuple[str, ...] = (),
    shown_as: tuple[tuple[Path, Path], ...] = (),
    shown_only: tuple[tuple[Path, tuple[str, ...]], ...] = (),
    stop: StopOrder | None = None,
) -> Verification:
    """Run ``command`` with ``/bin/sh -c`` in ``cwd`` (the only writable place) inside
    ``sandbox``; stdout and stderr together. ``read_only``: more paths it may read;
    ``shown_as``: host files it reads in place of others; ``shown_only``: directories it
    sees only the listed entries of; ``stop``: ends it early (a cancelled mission),
    reported as ``stopped``, with the order's reason and the output printed until then."""
    if sandbox is None:
        sandbox = verification_sandbox()
    if isinstance(sandbox, SandboxUnavailable):
        return Verification("failed", None, 0.0, f"the command was not run: {sandbox}")
    workdir = Path(cwd)
    request = Request(
        argv=["/bin/sh", "-c", command],
        workdir=workdir,
        cwd=workdir,
        env=env,
        limits=sandbox.settings.limits.with_wall(timeout),
        read_only=tuple(Path(path) for path in read_only),
        protect=(workdir / ".git",),
        shown_as=shown_as,
        shown_only=shown_only,
    )
    outcome = execute_sync(sandbox, request, max_output, stop)
    result: VerificationResult
    if outcome.timed_out:
        result = "timed_out"
    elif stop is not None and outcome.stopped is not None and outcome.stopped == stop.reason:
        result = "stopped"
    else:
        result = "passed" if outcome.exit_code == 0 and outcome.stopped is None else "failed"
    output = outcome.output
    if outcome.stopped:
        output = f"[stopped: {outcome.stopped}]\n{output}"
    log.info(
        "verification command ran",
        extra={"sandbox": outcome.sandbox, "result": result, "stopped": outcome.stopped},
    )
    return Verification(result, outcome.exit_code, outcome.seconds, output)


class Verifier:
    """Checks a merge out in a scratch worktree and runs the mission's command there."""

    def __init__(
        self,
        *,
        timeout: float = 600.0,
        max_output: int = 8000,
        sandbox: Sandbox | SandboxUnavailable | None = None,
        passed_env: tuple[str, ...] = (),
        hidden: tuple[str, ...] = (),
    ) -> None:
        self.timeout = timeout
        self.passed_env = passed_env
        # Host files the command must not read wherever they lie (the broker's SSH key).
        self.hidden = hidden
        self.max_output = max_output
        self.sandbox = sandbox
        self.last: Verification | None = None

    def verify(
        self,
        git: ScratchWorktrees,
        handle: Handle,
        commit: ObjectID,
        command: str,
        scratch: str,
        stop: StopOrder | None = None,
    ) -> str | None:
        """``None`` when ``command`` passes on ``commit``; else why, for people.

        The scratch worktree comes from the repository's pool and goes back to it, so
        verifying merge after merge rewrites only the files each merge changed.
        """
        git.scratch_worktree(handle, scratch, commit)
        # Real paths, as the scratch worktree's ``.git`` file names them.
        common = Path(os.path.realpath(handle.repo.commondir()))
        admin = Path(admin_dir(handle.repo, scratch))
        try:
            with tempfile.TemporaryDirectory(prefix="aether-verify-") as kept:
                config = common / "config"
                # Each hidden file is an empty one, at its real path, read now: a mounted
                # secret is a link that a rotation points elsewhere.
                shown: tuple[tuple[Path, Path], ...] = tuple(
                    (Path(os.devnull), Path(os.path.realpath(path))) for path in self.hidden
                )
                if config.is_file():
                    clean = Path(kept) / "config"
                    clean.write_bytes(config_without_credentials(config.read_bytes()))
                    shown += ((clean, config),)
                outcome = run_command(
                    command,
                    scratch,
                    self.timeout,
                    self.max_output,
                    command_environment(passed=self.passed_env),
                    sandbox=self.sandbox,
                    # The repository's git directory, readable so the command can use git:
                    # only what git needs of it, its configuration without the credentials
                    # a person may keep there.
                    shown_as=shown,
                    shown_only=((common, shown_git_dir(common, admin)),),
                    stop=stop,
                )
        finally:
            git.release_worktree(handle.repo, scratch)
        self.last = outcome
        extra: dict[str, object] = {
            "exit_code": outcome.exit_code,
            "seconds": round(outcome.seconds, 3),
        }
        if outcome.result == "stopped":
            # No event carries it (the merge is withheld): the log keeps what it printed.
            extra["output"] = outcome.output[-2000:]
        log.info("verification %s", outcome.result, extra=extra)
        if outcome.result == "passed":
            return None
        if outcome.result == "stopped":
            head = (
                f"verification stopped: `{command}` was stopped after "
                f"{outcome.seconds:.1f}s ({stop.reason if stop else 'stopped'})"
            )
        elif outcome.result == "timed_out":
            head = f"verification failed: `{command}` did not finish within {self.timeout:g}s"
        else:
            head = (
                f"verification failed: `{command}` exited with {outcome.exit_code} "
                f"after {outcome.seconds:.1f}s"
            )
        return f"{head}\n--- output ---\n{outcome.output}" if outcome.output else head

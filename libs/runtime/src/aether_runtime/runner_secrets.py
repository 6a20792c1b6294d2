"""Each agent runner's own secret, bound to its name.

The attempt authorizer (``attempt_auth``) holds the deployment's *master* secret
(``AETHER_RUNNER_MASTER_SECRET``); a runner holds only the secret derived from it for its
own name (``AETHER_RUNNER_SECRET``): an HMAC-SHA256 of the master over the name as one
subject token (``runners.runner_token``). The authorizer grants a runner's registry
credential (``runner/<name>/<runner id>``) and an attempt credential
(``attempt/<mission>/<task>/<attempt>/<name>``) only when the password is the secret of
the name the user names, so a runner can neither write another runner's entry nor ask for
a credential under another runner's name (docs/decisions/0026-runner-names-bound.md).

The master keys one more thing, under a context of its own: the key of each attempt's
event ids (``attempt_event_key``), which the authorizer gives to that attempt's
connections only (docs/decisions/0030-attempt-event-ids-keyed.md).

A runner's own secret keys one thing more, under a context of its own: the ids of the step
records its own user publishes (``step_record_key``,
docs/decisions/0032-runner-step-records-keyed.md).

Who derives it: ``aether up`` for its runner; the Kubernetes manifests in an init
container of each runner pod, for the pod's name, into a memory volume the runner's own
container reads (the master never reaches the runner's container); an operator with
``aether runner-secret NAME`` or ``python -m aether_runtime.runner_secrets NAME``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import os
import re
import socket
import sys
from pathlib import Path

MASTER_ENV = "AETHER_RUNNER_MASTER_SECRET"
NAME_ENV = "AETHER_RUNNER_NAME"
# Shorter masters are refused: every runner's secret is only as hard to guess as it.
MIN_MASTER_LENGTH = 16
# Binds each digest to its use: the master keys two things (a runner's secret and an
# attempt's event key), and no input of one can be an input of the other.
_CONTEXT = b"aether runner secret v1\x00"
_ATTEMPT_KEY_CONTEXT = b"aether attempt event key v1\x00"
# The same for a runner's own secret, which keys its step records' ids and proves its
# name to the authorizer: a key derived under this context is not the password.
_STEP_RECORD_KEY_CONTEXT = b"aether runner step record key v1"


# The one secret every runner shared before runners had names of their own.
RETIRED_ENV = "AETHER_ATTEMPT_SECRET"


def retired_shared_secret(service: str) -> str:
    """Why ``service`` refuses to start with the runners' old shared secret set: kept as
    it was, every runner would still hold what lets it act as any other (on the
    scheduler's side it was that secret, which the runners hold)."""
    where = (
        f"set {MASTER_ENV} to a NEW value (the old one is known to every runner), "
        "and give each runner the secret of its name"
        if service == "scheduler"
        else f"set AETHER_RUNNER_SECRET (or AETHER_RUNNER_SECRET_FILE) to the secret of "
        f"this runner's name ({NAME_ENV}, else its host name)"
    )
    return (
        f"{RETIRED_ENV} is no longer used: runners no longer share one secret, each "
        f"proves its own name. Unset it; {where}, made with `aether runner-secret NAME` "
        f"from {MASTER_ENV} (docs/security.md, Runner names)"
    )


def runner_token(runner_id: str) -> str:
    """``runner_id`` (a runner's name or id) as one subject token (a host name may hold
    dots)."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", runner_id)[:64] or "runner"


def runner_secret(master: str, name: str) -> str:
    """The secret of the runner called ``name`` (as its subject token: names that make the
    same token are one runner to the bus)."""
    if not master:
        raise ValueError(f"no master secret ({MASTER_ENV})")
    digest = hmac.new(
        master.encode(), _CONTEXT + runner_token(name).encode(), hashlib.sha256
    ).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def attempt_event_key(master: str, mission_id: str, task_token: str, attempt: int) -> bytes:
    """The key of one attempt's event ids (``aether_events.attempt_ids``), named as its
    subjects name it (the mission, the task's subject token, the attempt number): the
    authorizer gives it only to a connection holding that attempt's credential. The same
    for every process holding the master (a standby scheduler, a restarted one), so a
    resumed attempt stores its steps under the ids it stored them under before."""
    if not master:
        raise ValueError(f"no master secret ({MASTER_ENV})")
    name = f"{mission_id}\x1f{task_token}\x1f{attempt}".encode()
    return hmac.new(master.encode(), _ATTEMPT_KEY_CONTEXT + name, hashlib.sha256).digest()


def step_record_key(secret: str) -> bytes:
    """The key of the ids of the step records (``StepFailed``, ``StepRecovered``) a runner
    publishes with its own user, from its own secret (``AETHER_RUNNER_SECRET``): HMAC-SHA256
    of the secret over its own context. Only this runner's name yields it (every process of
    the name, restarted or not, the same key, so a step recorded again is a duplicate); no
    attempt's credential and no other runner can compute the ids it keys."""
    if not secret:
        raise ValueError("no runner secret (AETHER_RUNNER_SECRET)")
    return hmac.new(secret.encode(), _STEP_RECORD_KEY_CONTEXT, hashlib.sha256).digest()


def proves(master: str, token: str, password: str) -> bool:
    """Whether ``password`` is the secret of the runner whose name token is ``token``
    (``token`` must already be one: a name that is not is no runner's)."""
    if runner_token(token) != token:
        return False
    return hmac.compare_digest(password.encode(), runner_secret(master, token).encode())


def default_name() -> str:
    """The runner's name where none is set: its host name (a pod's name in Kubernetes)."""
    return os.environ.get(NAME_ENV) or socket.gethostname()


def write_secret(path: Path, secret: str) -> None:
    """Write ``secret`` to ``path``, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as out:
        out.write(secret + "\n")
    path.chmod(0o600)


def main(argv: list[str] | None = None) -> int:
    """Print (or write to ``--out``) the secret of one runner name, from the master in
    ``$AETHER_RUNNER_MASTER_SECRET`` or ``--master-file``."""
    parser = argparse.ArgumentParser(
        prog="python -m aether_runtime.runner_secrets",
        description="The secret of one agent runner (AETHER_RUNNER_SECRET), derived for its "
        "name from the deployment's master secret (AETHER_RUNNER_MASTER_SECRET).",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "name",
        nargs="?",
        help=f"the runner's name, its AETHER_RUNNER_NAME (default: ${NAME_ENV}, else this "
        "host's name)",
    )
    parser.add_argument(
        "--master-file",
        type=Path,
        help=f"a file whose first line is the master secret (default: ${MASTER_ENV})",
    )
    parser.add_argument(
        "--out", type=Path, help="write the secret to this file (mode 0600) instead of printing it"
    )


def run(args: argparse.Namespace) -> int:
    if args.master_file is not None:
        lines = args.master_file.read_text(encoding="utf-8").splitlines()
        master = lines[0].strip() if lines else ""
    else:
        master = os.environ.get(MASTER_ENV, "")
    if len(master) < MIN_MASTER_LENGTH:
        print(
            f"no master secret: set {MASTER_ENV} (or --master-file) to the deployment's, "
            f"{MIN_MASTER_LENGTH} characters or more",
            file=sys.stderr,
        )
        return 2
    name = args.name or default_name()
    secret = runner_secret(master, name)
    if args.out is not None:
        write_secret(args.out, secret)
        print(f"the secret of runner {runner_token(name)!r} is in {args.out}", file=sys.stderr)
    else:
        print(secret)
    return 0


if __name__ == "__main__":
    sys.exit(main())

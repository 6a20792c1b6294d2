"""The ``aether`` command line."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import httpx

from aether import commands
from aether.client import ApiError, GatewayClient
from aether.credentials import TOKEN_FILE
from aether.locate import Target
from aether.login import LoginError, run_login, run_logout
from aether.render import describe

SCOPES = ("read", "write", "admin")


def _unreachable_hint(target: Target) -> str:
    """What to do when the gateway does not answer. With no URL given and no stack in the
    home, the default URL was only a guess: say which home was looked in, and how it was
    chosen (a mistyped ``--home`` or a stale ``$AETHER_HOME`` shows at once). A stack that
    runs on the home but does not answer yet is starting: say so, not "start one"."""
    from aether import supervise  # here: the error path alone pays for psutil

    state = supervise.running_state(target.home)
    if state is not None and target.url_source not in ("--url", "$AETHER_URL"):
        pid = state.get("pid") or "?"
        return (
            f"the stack on {target.home} (aether up pid {pid}) does not answer yet: it is "
            "still starting (its terminal says what it waits for), or its gateway is down "
            "(`aether status` shows each process)"
        )
    if target.url_source == "the default":
        home = shlex.quote(str(target.home))
        return (
            f"no stack is running on {target.home} (the home from {target.home_source}): "
            f"start one with `aether up --home {home}`, or point --url / $AETHER_URL at a "
            "running one"
        )
    return "start a stack with `aether up`, or point --url / $AETHER_URL at a running one"


def main(argv: list[str] | None = None) -> int:
    try:
        try:
            return _main(argv)
        finally:
            # What is still buffered goes out here, where a closed reader is caught.
            sys.stdout.flush()
    except BrokenPipeError:
        # The reader stopped reading (``aether mission logs … | head``): not an error of
        # the command's. Later writes (the interpreter's own flush at exit) go nowhere,
        # and the exit status is a shell's for a pipe's closed reader, as git's is.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + signal.SIGPIPE


def _main(argv: list[str] | None) -> int:
    parser = _parser()
    given = _attach_secrets(sys.argv[1:] if argv is None else argv)
    _Parser.json_errors = "--json" in given
    try:
        args = parser.parse_args(given)
    finally:
        _Parser.json_errors = False  # for this command line only
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        result: int = args.run(args)
    except ApiError as error:
        if args.json:
            # For scripts: the gateway's status and details beside its sentence.
            answer = {"error": error.message, "status": error.status, "detail": error.detail}
            print(json.dumps(answer, default=str), file=sys.stderr)
        else:
            print(f"error: {_explain(error, args)}", file=sys.stderr)
        return 1
    except httpx.TransportError as error:
        target = commands.target(args)
        said = (
            f"cannot reach the gateway at {target.url} (from {target.url_source}): "
            f"{error or type(error).__name__}"
        )
        hint = _unreachable_hint(target)
        if args.json:
            detail = {"url": target.url, "url_source": target.url_source, "hint": hint}
            print(json.dumps({"error": said, "status": None, "detail": detail}), file=sys.stderr)
        else:
            print(f"error: {said}\n  {hint}", file=sys.stderr)
        return 1
    except (commands.UsageError, LoginError) as error:
        if args.json:
            # The shape of the gateway's refusals, with no HTTP status: nothing was asked.
            print(
                json.dumps({"error": str(error), "status": None, "detail": None}), file=sys.stderr
            )
        else:
            print(f"error: {error}", file=sys.stderr)
        code: int = getattr(error, "exit_code", 1)
        return code
    except KeyboardInterrupt:
        return 130
    return result


def _explain(error: ApiError, args: argparse.Namespace) -> str:
    """The gateway's refusal as a sentence (its HTTP status is for ``--json``), with where
    the CLI looked when it is about the token."""
    if error.status == 401:
        target = commands.target(args)
        return (
            f"the gateway at {target.url} refused the token ({error.message}); "
            f"token from {target.token_source}\n"
            "  pass --token, export AETHER_TOKEN, run `aether login`, or --home for the "
            "stack's home"
        )
    if error.status == 403:
        return f"{error.message} (the token lacks the scope this needs)"
    if error.status == 500:
        return f"the gateway failed: {error.message} (its log says why: `aether logs gateway`)"
    return error.message


# Options whose value is a secret: it may begin with "-", which argparse would take for an
# option (a token from ``secrets.token_urlsafe`` does one time in 64).
SECRET_OPTIONS = ("--token",)


def _attach_secrets(argv: list[str]) -> list[str]:
    """``--token VALUE`` as ``--token=VALUE``, so that any value is taken as it is."""
    out: list[str] = []
    index = 0
    while index < len(argv):
        arg = argv[index]
        if arg == "--":
            out.extend(argv[index:])
            break
        if arg in SECRET_OPTIONS and index + 1 < len(argv):
            out.append(f"{arg}={argv[index + 1]}")
            index += 2
            continue
        out.append(arg)
        index += 1
    return out


def _add_common(parser: argparse.ArgumentParser) -> None:
    """Options every gateway command takes, before or after its name."""
    parser.add_argument(
        "--url",
        default=argparse.SUPPRESS,
        help="gateway URL ($AETHER_URL, else the stack home's, else http://127.0.0.1:8100)",
    )
    parser.add_argument(
        "--token",
        default=argparse.SUPPRESS,
        help="API token ($AETHER_TOKEN, else the home's `aether login`, else the stack "
        f"home's {TOKEN_FILE})",
    )
    parser.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print JSON for scripts"
    )
    parser.add_argument(
        "--home",
        type=Path,
        default=argparse.SUPPRESS,
        help="the stack's home, for its URL and token ($AETHER_HOME, ./.aether, else the "
        "latest `aether up`'s)",
    )


class _Parser(argparse.ArgumentParser):
    """The command line's parser (its commands' too): a usage error is a usage line and
    exit status 2, or, when the command line asks for ``--json``, the shape of every
    other error of a command given it, with the usage in ``detail``."""

    # Whether the command line being parsed holds ``--json`` (set by ``_main``).
    json_errors = False

    def error(self, message: str) -> NoReturn:
        if _Parser.json_errors:
            said = {
                "error": f"{self.prog}: {message}",
                "status": None,
                "detail": {"usage": self.format_usage().strip()},
            }
            print(json.dumps(said), file=sys.stderr)
            self.exit(2)
        super().error(message)


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    _add_common(common)
    parser = _Parser(prog="aether", description="Turn a software requirement into merged code.")
    _add_common(parser)
    # Given before the command or after it; the command's own copy only sets what it got.
    parser.set_defaults(url=None, token=None, json=False, home=None)
    sub = parser.add_subparsers(title="commands")
    _stack_parsers(sub)

    demo = sub.add_parser("demo", help="run a whole mission on a sample repository")
    demo.add_argument("--home", type=Path, help="where to keep the demo (default: a temp dir)")
    demo.add_argument("--verbose", action="store_true", help="echo service logs")
    demo.set_defaults(run=_demo)

    _mission_parsers(sub, common)
    _other_parsers(sub, common)
    _backup_parsers(sub)
    _runner_secret_parser(sub)
    return parser


def _runner_secret_parser(sub: Any) -> None:
    from aether_runtime import runner_secrets  # standard library only: no cost at start

    secret = sub.add_parser(
        "runner-secret",
        help="the secret of one agent runner, for its name (AETHER_RUNNER_SECRET)",
        description="Derive the secret of the agent runner called NAME from the "
        "deployment's master secret (AETHER_RUNNER_MASTER_SECRET, which only the scheduler "
        "holds): the runner proves its name with it, and is granted credentials for its "
        "own registry entry and attempts only (docs/security.md, Runner names).",
    )
    runner_secrets.add_arguments(secret)
    secret.set_defaults(run=runner_secrets.run)


def _backup_parsers(sub: Any) -> None:
    servers = argparse.ArgumentParser(add_help=False)
    servers.add_argument(
        "--home",
        type=Path,
        default=argparse.SUPPRESS,
        help="the `aether up` home whose servers to use (its running stack's, else its NATS "
        "and PostgreSQL started for the command); $AETHER_HOME, ./.aether, else the latest "
        "`aether up`'s",
    )
    servers.add_argument(
        "--nats-url",
        help="instead of a home: NATS, with credentials that may read and create streams "
        "(the bus administrator's)",
    )
    servers.add_argument(
        "--database-url", help="instead of a home: the gateway's PostgreSQL database"
    )
    backup = sub.add_parser(
        "backup",
        help="write the mission stream and the API tokens to a file",
        description="Write every event of the AETHER_MISSIONS stream (up to its last one "
        "when the backup starts), the stream's configuration and the gateway's API tokens "
        "to FILE: gzip'd JSON lines with a checksum (docs/operations.md, Backups).",
        parents=[servers],
    )
    backup.add_argument("file", metavar="FILE", help="the backup file to write")
    backup.set_defaults(run=_backup)
    restore = sub.add_parser(
        "restore",
        help="bring back a backup into an empty stream, before the services start",
        description="Check FILE whole, then recreate the AETHER_MISSIONS stream with its "
        "configuration, publish its events in order with their headers, check them, and "
        "restore the API tokens. Refused when the stream holds events (but the start of "
        "this backup, where a run of the same restore stopped: it goes on from there), or "
        "while services run on it (stop them: they fold the restored stream when they "
        "start).",
        parents=[servers],
    )
    restore.add_argument("file", metavar="FILE", help="the backup file to read")
    restore.add_argument(
        "--while-running",
        action="store_true",
        help="restore although services run on the stream (they take the events for new "
        "work); the gateway's read model is then rebuilt",
    )
    restore.add_argument(
        "--replicas", type=_at_least_one, help="the stream's replicas (default: the backup's)"
    )
    restore.set_defaults(run=_restore)


def _backup(args: argparse.Namespace) -> int:
    from aether.backup import run_backup

    return run_backup(args)


def _restore(args: argparse.Namespace) -> int:
    from aether.backup import run_restore

    return run_restore(args)


# The services take the four ports after the gateway's.
HIGHEST_PORT_BASE = 65535 - 4


def _port_base(text: str) -> int:
    """``--port-base``: 0 (free ports) or a port that leaves room for the four after it.
    Checked here, so a typo is a usage line, not a bind error from deep in the start."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if value != 0 and not 1 <= value <= HIGHEST_PORT_BASE:
        raise argparse.ArgumentTypeError(
            f"{value} is not a port base: give 1 to {HIGHEST_PORT_BASE} (the gateway's port; "
            "the services take the next four), or 0 for free ports"
        )
    return value


def _amount(example: str) -> Callable[[str], float]:
    """An amount of US dollars above 0 (``--budget``, ``mission budget``'s USD), refused
    by argparse under the option's name (the gateway's refusal named its own field,
    ``budget_usd``); ``example`` shows one as the command takes it."""

    def amount(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not an amount: give US dollars, e.g. {example}"
            ) from None
        if not value > 0 or value == float("inf"):
            raise argparse.ArgumentTypeError(
                f"{text} is not a budget: give US dollars above 0, e.g. {example}"
            )
        return value

    return amount


_budget = _amount("--budget 2.50")


def _whole(least: int, most: int | None = None) -> Callable[[str], int]:
    """A whole number from ``least`` (to ``most``), checked here so that a wrong one is a
    usage line naming the option as typed, not the gateway's refusal naming its field."""

    def whole(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < least:
            few = "give 1 or more" if least == 1 else f"give {least} or more"
            raise argparse.ArgumentTypeError(f"{text} is too few: {few}")
        if most is not None and value > most:
            raise argparse.ArgumentTypeError(f"{text} is too many: give at most {most}")
        return value

    return whole


# A count of at least 1 (``--concurrency``, ``--max-tasks``).
_at_least_one = _whole(1)


def _seconds(text: str) -> float:
    """A duration in seconds above 0 (``login --timeout``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a duration: give seconds above 0")
    return value


def _since(text: str) -> str:
    """``--since``: a day (YYYY-MM-DD) or an ISO 8601 date-time, as the gateway takes it
    (whose refusal read "since must be an ISO 8601 date or date-time", naming no option)."""
    from datetime import date, datetime

    try:
        if len(text) == 10:
            date.fromisoformat(text)
        else:
            datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a day: give YYYY-MM-DD (e.g. --since 2025-01-31), or an ISO "
            "8601 date-time"
        ) from None
    return text


def _mission_status(text: str) -> str:
    """``mission list --status``: a mission status, or several separated by commas (the
    gateway's refusal read "unknown status 'x'", naming neither the option nor the ones
    there are)."""
    from aether_events.status import MISSION_STATUSES  # here: only when the option is given

    unknown = [s for s in text.split(",") if s.strip() not in MISSION_STATUSES]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"{unknown[0]!r} is not a mission status: give one of {', '.join(MISSION_STATUSES)}"
        )
    return text


def _stack_parsers(sub: Any) -> None:
    home = argparse.ArgumentParser(add_help=False)
    home.add_argument(
        "--home",
        type=Path,
        default=argparse.SUPPRESS,
        help="where the stack keeps its data, logs and token ($AETHER_HOME, else ./.aether; "
        "for down, status and logs, else the latest `aether up`'s)",
    )
    up = sub.add_parser(
        "up", help="run NATS, PostgreSQL and the five services locally", parents=[home]
    )
    up.add_argument(
        "--port-base",
        type=_port_base,
        default=None,
        help="gateway on this port, the other services on the next four (default 8100; "
        "0 picks free ports)",
    )
    up.add_argument(
        "--event-id-secret",
        choices=("home", "environment"),
        default="",
        help="when AETHER_EVENT_ID_SECRET is another than the secret the home keeps (up "
        "refuses then: the services' event ids would change): start with the home's, or "
        "with the environment's and keep it in the home from now on",
    )
    up.add_argument("--verbose", action="store_true", help="echo every service log line")
    up.add_argument("--quiet", action="store_true", help=argparse.SUPPRESS)  # the default now
    up.set_defaults(run=_up)
    down = sub.add_parser("down", help="stop the stack `aether up` runs", parents=[home])
    down.set_defaults(run=lambda args: localstack().down(_stack_home(args)))
    status = sub.add_parser(
        "status", help="each process of the local stack: pid, port, health", parents=[home]
    )
    status.set_defaults(run=lambda args: localstack().status(_stack_home(args)))
    logs = sub.add_parser("logs", help="the local stack's service logs", parents=[home])
    logs.add_argument("service", nargs="?", help="one service (default: all)")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    logs.add_argument("-n", "--lines", type=_whole(0), default=40, help="lines of history (40)")
    logs.add_argument("--raw", action="store_true", help="the JSON lines as written")
    logs.set_defaults(
        run=lambda args: localstack().logs(
            _stack_home(args), args.service, args.lines, args.follow, args.raw
        )
    )


def localstack() -> Any:
    """The local-stack commands, imported only when used (they pull in the services)."""
    from aether import localstack as module

    return module


def _stack_home(args: argparse.Namespace) -> Path:
    from aether.locate import find_home

    explicit: Path | None = args.home
    if args.run is _up:
        return explicit or Path(os.environ.get("AETHER_HOME", ".aether"))
    return find_home(explicit)[0]


# What a watch's exit status says (``mission watch`` and ``submit --watch``).
WATCH_EXIT = (
    "0 when the mission completed (or its question was answered); "
    f"{commands.DID_NOT_COMPLETE} when it ended otherwise (failed, its plan failed, or "
    "cancelled): the watch worked, but there is no result to use; 1 when the command "
    "itself failed (the gateway refused it); 130 when interrupted."
)
MISSION_HELP = "the mission: its id, a unique start of one, or @last (the newest)"
TASK_HELP = "the task's id in the plan (`aether mission show` lists them)"


def _mission_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    mission = sub.add_parser("mission", help="submit, follow and steer missions")
    msub = mission.add_subparsers(title="mission commands")

    def command(name: str, run: Any, help: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = msub.add_parser(name, help=help, parents=[common])
        parser.set_defaults(run=run)
        return parser

    def mission_of(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument("mission_id", help=MISSION_HELP)
        return parser

    def task_of(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("task_id", help=TASK_HELP)

    submit = command("submit", commands.submit, "submit a mission")
    submit.add_argument(
        "requirement", help="what you want done, in words (- reads it from standard input)"
    )
    submit.add_argument("--repo", required=True, help="path of the git repository")
    submit.add_argument(
        "--base",
        help="base branch (default: the repository's current branch; a URL's default branch)",
    )
    submit.add_argument(
        "--budget", type=_budget, help="budget in USD (default: the gateway's, $5 locally)"
    )
    submit.add_argument(
        "--concurrency", type=_at_least_one, default=4, help="tasks at once (default 4)"
    )
    submit.add_argument("--max-tasks", type=_at_least_one, help="most tasks the plan may have")
    submit.add_argument("--model", action="append", metavar="TIER=MODEL", help="model override")
    submit.add_argument(
        "--auto-approve",
        action="store_true",
        help="start on the plan without waiting for `aether mission approve`",
    )
    submit.add_argument(
        "--runtime",
        help="agent runtime of the tasks: builtin, claude-code or a command runtime's name "
        "(default: the runner's AETHER_AGENT_RUNTIME); one no live runner has is refused "
        "(see `aether runtimes`)",
    )
    submit.add_argument("--verify", help="command that must pass on the merged tree")
    submit.add_argument("--idempotency-key", help="submitting again with it creates no second")
    submit.add_argument(
        "--watch",
        action="store_true",
        help="watch the mission afterwards, as `mission watch` does (its exit status too)",
    )

    listing = command("list", commands.list_missions, "list missions, newest first")
    listing.add_argument(
        "--status",
        action="append",
        type=_mission_status,
        help="only this status (repeatable, or separated by commas)",
    )
    listing.add_argument("--repo", help="only missions on this repository")
    listing.add_argument(
        "--since", type=_since, help="only missions created since (YYYY-MM-DD, or a date-time)"
    )
    listing.add_argument(
        "--limit", type=_whole(1, 200), default=20, help="page size (default 20, at most 200)"
    )
    listing.add_argument("--all", action="store_true", help="follow every page")

    show = command("show", commands.show, "a mission with its plan, tasks and cost")
    mission_of(show)

    diff = command(
        "diff",
        commands.task_diff,
        "what the mission changed (every task merged so far), or what one task's latest "
        "attempt changed",
    )
    mission_of(diff)
    diff.add_argument(
        "task_id",
        nargs="?",
        help="only this task's latest attempt, against the base it started from (default: "
        "the whole mission's branch against the mission's base)",
    )
    diff.add_argument("--stat", action="store_true", help="files and line counts only")

    logs = command(
        "logs",
        commands.mission_logs,
        "what the agents did: a task's transcript, or one line per step of every task",
    )
    mission_of(logs)
    logs.add_argument(
        "task_id",
        nargs="?",
        help="this task's transcript: turns, tool calls, commands (default: every task's steps)",
    )
    logs.add_argument("--attempt", type=_at_least_one, help="only this attempt of the task")
    logs.add_argument(
        "-f", "--follow", action="store_true", help="keep printing new steps until it ends"
    )
    logs.add_argument(
        "--full", action="store_true", help="every line of results and outputs (and the prompt)"
    )
    logs.add_argument(
        "--steps", action="store_true", help="one line per step for the task too, no transcript"
    )

    watch = command("watch", commands.watch, "live board of a mission's tasks")
    watch.description = (
        "A live board of the mission's tasks until the mission ends (one line per event "
        "without a terminal, or with --events). Ctrl-C stops the watch, not the mission."
    )
    watch.epilog = f"Exit status: {WATCH_EXIT}"
    submit.epilog = f"With --watch, the exit status is the watch's: {WATCH_EXIT}"
    mission_of(watch)
    watch.add_argument("--events", action="store_true", help="one line per event, no board")

    approve = command("approve", commands.approve, "approve the mission's plan")
    mission_of(approve)
    approve.add_argument("--version", type=_at_least_one, help="plan version (default: the latest)")

    message = command("message", commands.message, "answer the planner, or give plan feedback")
    mission_of(message)
    message.add_argument("text", help="the message, in words (- reads it from standard input)")

    for name, run, help in (
        ("pause", commands.pause, "pause: running tasks finish, no new one starts"),
        ("cancel", commands.cancel, "cancel the mission"),
    ):
        mission_of(command(name, run, help)).add_argument(
            "--reason", help="why, for the mission's history and the board"
        )
    mission_of(command("resume", commands.resume, "resume a paused mission"))

    mission_of(
        command(
            "deliver", commands.deliver, "push a completed mission's result again after a failure"
        )
    )

    step = command("retry-step", commands.retry_step, "run a failed step again")
    mission_of(step)
    step.add_argument("event_id", help="the id of the event the step failed on")
    step.add_argument("--service", help="the service, when several failed on the event")

    retry = command("retry", commands.retry, "run an escalated task again")
    mission_of(retry)
    task_of(retry)
    skip = command("skip", commands.skip, "skip an escalated task")
    mission_of(skip)
    task_of(skip)
    skip.add_argument("--reason", help="why, for the mission's history and the board")

    budget = command("budget", commands.budget, "raise the mission's budget")
    mission_of(budget)
    budget.add_argument(
        "budget_usd",
        type=_amount("`aether mission budget M 10`"),
        metavar="USD",
        help="the new budget in USD",
    )


def _other_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    login = sub.add_parser(
        "login",
        help="sign in with the gateway's OIDC provider (or keep an API token) for later commands",
        parents=[common],
    )
    login.add_argument(
        "--device",
        action="store_true",
        help="the device authorization grant: a code to enter on another device",
    )
    login.add_argument(
        "--no-browser", action="store_true", help="print the sign-in URL, do not open a browser"
    )
    login.add_argument(
        "--timeout", type=_seconds, default=300.0, help="seconds to wait for the browser (300)"
    )
    login.set_defaults(run=run_login)
    logout = sub.add_parser(
        "logout", help="forget the sign-in kept for the gateway", parents=[common]
    )
    logout.set_defaults(run=run_logout)

    tokens = sub.add_parser("tokens", help="create, list and revoke API tokens (admin)")
    tsub = tokens.add_subparsers(title="token commands")
    create = tsub.add_parser("create", help="create a token", parents=[common])
    create.add_argument("name", help="what the token is for (shown by `tokens list`)")
    create.add_argument(
        "--scope", action="append", choices=SCOPES, required=True, help="read, write or admin"
    )
    create.add_argument(
        "--expires-days",
        type=_whole(1, 3650),
        help="days until it expires, up to 3650 (default: it does not)",
    )
    create.set_defaults(run=commands.token_create)
    listing = tsub.add_parser("list", help="list tokens", parents=[common])
    listing.add_argument("--all", action="store_true", help="revoked ones too")
    listing.set_defaults(run=commands.token_list)
    revoke = tsub.add_parser("revoke", help="revoke a token", parents=[common])
    revoke.add_argument("token_id", help="the token's id (`tokens list` shows them)")
    revoke.set_defaults(run=commands.token_revoke)
    whoami = tsub.add_parser("whoami", help="who the gateway takes you for", parents=[common])
    whoami.set_defaults(run=commands.whoami)

    admin = sub.add_parser("admin", help="administration")
    asub = admin.add_subparsers(title="admin commands")
    rebuild = asub.add_parser(
        "rebuild-read-model",
        help="rebuild the gateway's read model from the event streams",
        parents=[common],
    )
    rebuild.set_defaults(run=commands.rebuild_read_model)

    usage = sub.add_parser("usage", help="model usage and cost", parents=[common])
    usage.add_argument(
        "--by",
        choices=("day", "month", "mission", "model"),
        default="day",
        help="one row per day, month, mission or model (default: day)",
    )
    usage.add_argument(
        "--mission", help="one mission only (an id, a unique start of one, or @last)"
    )
    usage.add_argument("--since", type=_since, help="only usage since this day (YYYY-MM-DD)")
    usage.set_defaults(run=commands.usage)

    agents = sub.add_parser("agents", help="agent runners and what they do", parents=[common])
    agents.add_argument(
        "--mission", help="one mission only (an id, a unique start of one, or @last)"
    )
    agents.add_argument(
        "--status",
        choices=("active", "idle", "gone"),
        help="only runners working an attempt now (active), live with nothing to do (idle), "
        "or no longer heard from (gone)",
    )
    agents.set_defaults(run=commands.agents)

    runtimes = sub.add_parser(
        "runtimes", help="the agent runtimes the live runners have", parents=[common]
    )
    runtimes.set_defaults(run=commands.runtimes)


# --- local stack -------------------------------------------------------------------


def _offline_banner() -> None:
    if not os.environ.get("ANTHROPIC_API_KEY"):
        print(
            "No ANTHROPIC_API_KEY: planner and agents use the OFFLINE model, which is not a "
            "language model: it plans one task per line of the requirement and only adds "
            "clearly marked text (new files, or a marked section appended); no intelligence "
            "is involved.",
            file=sys.stderr,
        )


def _up(args: argparse.Namespace) -> int:
    from aether.localstack import up

    result: int = up(
        _stack_home(args),
        port_base=args.port_base,
        verbose=args.verbose,
        event_id_source=args.event_id_secret,
    )
    return result


DEMO_REQUIREMENT = """\
- Add src/greeting.py with a greet(name) function that returns a friendly greeting
- Add src/farewell.py with a farewell(name) function that says goodbye
- Write docs/usage.md explaining how to use greet and farewell together (after 1, 2)
"""


# The demo's last words: its board stops answering now, and what to run for one that stays.
DEMO_ENDS = (
    "\nthe demo's stack stops now, and its board with it; for a stack that stays up (and "
    'its board), run `aether up`, then `aether mission submit --repo PATH "what you want '
    'done" --watch` in another terminal (docs/guide.md)'
)


def _demo(args: argparse.Namespace) -> int:
    from aether.gitview import create_sample_repository, diff_stat, format_stat
    from aether.stack import Stack

    _offline_banner()
    home = (args.home or Path(tempfile.mkdtemp(prefix="aether-demo-"))).resolve()
    repo = home / "sample-repo"
    base_sha = create_sample_repository(repo)
    print(f"sample repository: {repo} (main @ {base_sha[:10]})")
    stack = Stack(
        home=home / "stack", random_ports=True, echo_logs=sys.stderr if args.verbose else None
    )
    try:
        stack.start()
        client = GatewayClient(stack.gateway_url, token=stack.admin_token)
        created = client.submit(
            {"repository": str(repo), "requirement": DEMO_REQUIREMENT, "max_concurrency": 4}
        )
        mission_id = created["mission_id"]
        print(f"mission {mission_id} submitted; following its events:")
        # The board answers only while the demo runs: its stack stops with it.
        print(
            f"  (live on the board while the demo runs, which stops it at the end: "
            f"{stack.gateway_url}/board/missions/{mission_id},"
        )
        # The token's file, not the token: a terminal's scroll-back and a shared screen
        # are not places for a credential.
        token_file = stack.home / TOKEN_FILE
        where = token_file if token_file.exists() else "$AETHER_ADMIN_TOKEN"
        print(f"   sign in with the token in {where})")
        from aether.watch import TERMINAL

        final: dict[str, Any] | None = None
        for event in client.events(mission_id):
            print(describe(event), flush=True)
            if event.event == "plan_produced":
                for task in event.data["tasks"]:
                    deps = f" (after {', '.join(task['depends_on'])})" if task["depends_on"] else ""
                    print(f"         plan: {task['id']}: {task['title']}{deps}")
                client.approve(mission_id, event.data["version"])
                print("         plan approved")
            if event.event in TERMINAL:
                final = event.data if event.event == "mission_completed" else None
                break
        if final is None:
            print("the mission did not complete", file=sys.stderr)
            return 1
        print(f"\nresult branch: {final['integration_branch']} @ {final['final_sha']}")
        print(format_stat(diff_stat(repo, base_sha, final["final_sha"])))
        branch = shlex.quote(final["integration_branch"])
        print(f"\ninspect it with: git -C {shlex.quote(str(repo))} log --stat {branch}")
        print(DEMO_ENDS)
        return 0
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())

"""The command line's gateway commands: missions, tokens, usage, agents, administration.

Each prints for people by default and the gateway's JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import queue
import re
import shlex
import shutil
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aether.client import ApiError, GatewayClient
from aether.gitview import diff_stat, format_stat, stat_of_answer, text_of_answer, unified_diff
from aether.locate import Target, find_target
from aether.render import (
    deliver_again,
    describe,
    mission_detail,
    mission_lines,
    money,
    short,
    token_line,
)
from aether.repocheck import RepositoryProblem, check_repository
from aether.resume import resumed_events

if TYPE_CHECKING:
    # Imported by ``watch`` only: the board decodes the v1 events (aether_events and
    # the NATS client, about 0.25 s of CPU at every other command's start).
    from aether.watch import Board


class UsageError(Exception):
    """The command cannot run as asked; nothing was sent to the gateway. ``exit_code`` is
    the command's exit status (2 for a value given wrongly, as argparse's own)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def target(args: argparse.Namespace) -> Target:
    """The gateway and token for this command (looked up once per command)."""
    found: Target | None = getattr(args, "_target", None)
    if found is None:
        found = find_target(args.url, args.token, getattr(args, "home", None))
        args._target = found
    return found


def client(args: argparse.Namespace) -> GatewayClient:
    found = target(args)
    gateway = GatewayClient(found.url, token=found.token)
    if getattr(args, "mission_id", None) is not None:
        args.mission_id = resolve_mission(gateway, args.mission_id)
    return gateway


# What a mission id may hold (one subject token, ``aether_events.is_valid_token``).
_MISSION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def resolve_mission(gateway: GatewayClient, ref: str) -> str:
    """A mission id from ``@last`` (the newest mission) or a unique prefix of one;
    refused with a sentence, before anything is asked, when it cannot be one (an empty
    argument was sent as the list's own URL and crashed the command)."""
    if ref == "@last":
        newest = gateway.missions(limit=1)["missions"]
        if not newest:
            raise UsageError(
                "there is no mission yet: submit one with "
                '`aether mission submit --repo PATH "what you want done"`'
            )
        found: str = newest[0]["id"]
        return found
    if not _MISSION_ID.fullmatch(ref):
        raise UsageError(
            f"{ref!r} is not a mission id: give its id (m-…), a unique start of one, or "
            "@last (the newest); `aether mission list` lists them"
        )
    if len(ref) >= 18:  # a whole id ("m-" and 16 characters): nothing to look up
        return ref
    matches: list[str] = []
    cursor = None
    for _ in range(20):  # a thousand missions back is plenty for a prefix
        page = gateway.missions(cursor=cursor, limit=50)
        matches += [m["id"] for m in page["missions"] if m["id"].startswith(ref)]
        cursor = page.get("next_cursor")
        if cursor is None:
            break
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise UsageError(f"{ref!r} is the start of several missions: {', '.join(matches[:5])}")
    return ref  # let the gateway say it does not know it


def emit(args: argparse.Namespace, data: Any, human: Callable[[], str]) -> None:
    """Print ``data`` as JSON with ``--json``, else ``human()``."""
    if args.json:
        print(json.dumps(data, indent=2, default=str))
    else:
        print(human())


def _accepted(what: str) -> Callable[[dict[str, Any]], str]:
    return lambda answer: f"{what}: {answer['url']}"


# --- missions ----------------------------------------------------------------------------

# The most characters a requirement, or a message to a mission, may have: the gateway's
# limit (``CreateMission``, ``PostMessage``).
REQUIREMENT_LIMIT = 20_000
# The tiers a plan's tasks are given (``aether_events.Tier``), each with a model.
TIERS = ("small", "standard", "complex")
MESSAGE_LIMIT = 20_000


def checked_text(text: str, what: str, limit: int, *, empty: str, from_file: str) -> str:
    """``text`` (read from standard input when it is ``-``), refused with a sentence before
    anything is sent when it is blank or longer than the gateway takes: ``what`` names it,
    ``empty`` says what to write instead, ``from_file`` shows the command reading it from
    a file."""
    if text == "-":
        # A long text kept in a file: `… - < spec.md`.
        text = sys.stdin.read()
    if not text.strip():
        raise UsageError(f"the {what} is empty: {empty}")
    if len(text) > limit:
        raise UsageError(
            f"the {what} is {len(text):,} characters; a {what} may have at most {limit:,}: "
            f"shorten it (keep it in a file and pass - to read it from standard input: "
            f"`{from_file}`), or commit the long part to the repository and have the {what} "
            "point at it"
        )
    return text


def submit(args: argparse.Namespace) -> int:
    args.requirement = checked_text(
        args.requirement,
        "requirement",
        REQUIREMENT_LIMIT,
        empty="say what you want done, "
        'e.g. `aether mission submit --repo PATH "Add a --json flag to export"`',
        from_file="aether mission submit --repo PATH - < spec.md",
    )
    overrides = {}
    for item in args.model or []:
        tier, sep, model = item.partition("=")
        if not sep or not tier or not model:
            raise UsageError(f"--model takes TIER=MODEL, not {item!r}", exit_code=2)
        if tier not in TIERS:
            # The gateway's answer named its own field and an "enum value".
            raise UsageError(
                f"--model takes a tier of {', '.join(TIERS[:-1])} or {TIERS[-1]}, not "
                f"{tier!r} (e.g. --model complex=claude-opus-4-1)",
                exit_code=2,
            )
        overrides[tier] = model
    repository, base = args.repo, args.base
    if "://" not in args.repo:
        repository, base = _checked_repository(Path(args.repo).resolve(), args.base)
    body: dict[str, Any] = {
        "repository": repository,
        "requirement": args.requirement,
        "auto_approve": args.auto_approve,
        "max_concurrency": args.concurrency,
    }
    # A remote repository without --base: the git broker reads the remote's default branch.
    if base is not None:
        body["base_branch"] = base
    if args.max_tasks is not None:
        body["max_tasks"] = args.max_tasks
    if overrides:
        body["model_overrides"] = overrides
    if args.budget is not None:
        body["budget_usd"] = args.budget
    if args.verify:
        body["verify_command"] = args.verify
    if args.runtime:
        body["runtime"] = args.runtime
    created = client(args).submit(body, idempotency_key=args.idempotency_key)
    emit(args, created, lambda: created["mission_id"])
    if not args.json:
        if created.get("warning"):
            print(f"warning: {created['warning']}", file=sys.stderr)
        limit = created.get("budget_usd")
        print(
            f"budget ${limit:.2f}: no new task starts once it is reached (raise it with "
            f"`aether mission budget {created['mission_id']} USD`)"
            if limit is not None
            else "no budget: nothing limits this mission's model spend",
            file=sys.stderr,
        )
        if not args.watch:
            mission = created["mission_id"]
            then = (
                ""
                if args.auto_approve
                else f"; approve its plan: `aether mission approve {mission}`"
            )
            print(f"follow it: `aether mission watch {mission}`{then}", file=sys.stderr)
    if args.watch:
        args.mission_id = created["mission_id"]
        args.events = False
        return watch(args)
    return 0


def _checked_repository(path: Path, base: str | None) -> tuple[str, str]:
    """Check a local repository before anything is sent; warn about what a mission on it
    would not see."""
    try:
        checked = check_repository(path, base)
    except RepositoryProblem as problem:
        raise UsageError(str(problem)) from None
    if checked.uncommitted:
        shown = ", ".join(checked.uncommitted[:6])
        more = f" and {len(checked.uncommitted) - 6} more" if len(checked.uncommitted) > 6 else ""
        print(
            f"warning: {len(checked.uncommitted)} uncommitted change(s) in {path} are NOT part "
            f"of the mission, which starts from {checked.base}@{checked.head[:10]}: "
            f"{shown}{more}\n  commit them first to include them",
            file=sys.stderr,
        )
    return str(path), checked.base


def list_missions(args: argparse.Namespace) -> int:
    gateway = client(args)
    repository = args.repo
    if repository and "://" not in repository and Path(repository).is_dir():
        # As submit sent it: a local repository is recorded by its absolute path.
        repository = str(Path(repository).resolve())
    cursor = None
    found: list[dict[str, Any]] = []
    while True:
        page = gateway.missions(
            status=args.status,
            repository=repository,
            since=args.since,
            cursor=cursor,
            limit=args.limit,
        )
        found.extend(page["missions"])
        cursor = page.get("next_cursor")
        if not args.all or cursor is None:
            break
    if args.json:
        print(json.dumps({"missions": found, "next_cursor": cursor}, indent=2))
        return 0
    for line in mission_lines(found):
        print(line)
    if not found:
        filtered = args.status or args.repo or args.since
        print(
            "no missions match"
            if filtered
            else 'no missions yet: `aether mission submit --repo PATH "what you want done"`'
        )
    if cursor is not None:
        print(f"(more: --all, or the API's cursor {cursor})", file=sys.stderr)
    return 0


def show(args: argparse.Namespace) -> int:
    gateway = client(args)
    mission = gateway.show(args.mission_id)
    emit(args, mission, lambda: mission_detail(mission, _spent_globally(gateway, mission)))
    return 0


def _spent_globally(gateway: GatewayClient, mission: dict[str, Any]) -> list[str]:
    """The daily and monthly budgets used up now, which hold a running mission's tasks
    without anything on the mission itself saying so."""
    if mission.get("status") not in ("running", "paused"):
        return []
    now = datetime.now(UTC)
    spent = []
    for group_by, kind, period in (
        ("day", "daily", now.strftime("%Y-%m-%d")),
        ("month", "monthly", now.strftime("%Y-%m")),
    ):
        rows = gateway.usage(group_by)["rows"]
        if any(row["key"] == period and row.get("budget_exceeded") for row in rows):
            spent.append(f"{kind}:{period}")
    return spent


def task_diff(args: argparse.Namespace) -> int:
    """The whole mission's change without a task (``_mission_diff``); with one, what a
    task's latest attempt changed: its commit against the base it started from,
    read from the mission's repository when it is a directory here, else asked of the
    gateway (whose git broker holds every mission's repository, local or remote)."""
    gateway = client(args)
    mission = gateway.show(args.mission_id)
    if args.task_id is None:
        return _mission_diff(args, gateway, mission)
    task = gateway.task(args.mission_id, args.task_id)
    base, commit = task.get("base_sha"), task.get("commit_sha")
    if not base or not commit:
        raise UsageError(
            f"task {args.task_id} of {args.mission_id} has no commit yet ({task.get('status')})"
        )
    repository = Path(mission["repository"])
    local = "://" not in mission["repository"] and repository.is_dir()
    if local:
        try:
            text = (
                format_stat(diff_stat(repository, base, commit))
                if args.stat
                else unified_diff(repository, base, commit)
            )
        except KeyError:
            local = False  # not this machine's copy: ask the broker's
    if not local:
        answer = gateway.task_diff(args.mission_id, args.task_id)
        text = format_stat(stat_of_answer(answer)) if args.stat else text_of_answer(answer)
    emit(args, {"base_sha": base, "commit_sha": commit, "diff": text}, lambda: text.rstrip())
    return 0


def _mission_diff(args: argparse.Namespace, gateway: GatewayClient, mission: dict[str, Any]) -> int:
    """What the mission's integration branch changed against its base: its result once
    completed, read from the repository when it is a directory here; else, and while it
    runs (every task merged so far), asked of the gateway."""
    base, final = mission.get("base_sha"), mission.get("final_sha")
    repository = Path(mission["repository"])
    text = None
    if base and final and "://" not in mission["repository"] and repository.is_dir():
        with contextlib.suppress(KeyError):  # not this machine's copy: ask the broker's
            text = (
                format_stat(diff_stat(repository, base, final))
                if args.stat
                else unified_diff(repository, base, final)
            )
    if text is None:
        try:
            answer = gateway.mission_diff(args.mission_id)
        except ApiError as error:
            reason = error.detail.get("reason") if isinstance(error.detail, dict) else None
            if reason != "no task has been merged yet":
                raise
            raise UsageError(
                f"nothing has been merged into {args.mission_id}'s branch yet "
                f"({mission.get('status', '?').replace('_', ' ')}): "
                f"`aether mission diff {args.mission_id} TASK` shows a task's own commit"
            ) from None
        base, final = answer["base_sha"], answer["head_sha"]
        text = format_stat(stat_of_answer(answer)) if args.stat else text_of_answer(answer)
    emit(args, {"base_sha": base, "head_sha": final, "diff": text}, lambda: text.rstrip())
    return 0


def mission_logs(args: argparse.Namespace) -> int:
    """A task's transcript (``aether.transcript``), or the agents' steps on every task
    (``aether.agentlog``)."""
    from aether.agentlog import mission_logs as print_steps
    from aether.transcript import task_transcript

    gateway = client(args)
    if args.task_id:
        _check_task(gateway, args.mission_id, args.task_id)
    try:
        if args.task_id and not args.steps:
            return task_transcript(gateway, args)
        return print_steps(gateway, args)
    except KeyboardInterrupt:
        return 130


def _check_task(gateway: GatewayClient, mission_id: str, task_id: str) -> None:
    """Refuse a task the mission's plan does not have (a typo would otherwise read as a
    task with nothing to show yet)."""
    tasks = [t["task_id"] for t in gateway.show(mission_id).get("tasks") or []]
    if tasks and task_id not in tasks:
        raise UsageError(
            f"mission {mission_id} has no task {task_id!r} (it has: {', '.join(tasks)})"
        )


# A mission in one of these has ended: no command changes it any more.
ENDED = ("completed", "answered", "failed", "cancelled")


def _steer(
    args: argparse.Namespace,
    send: Callable[[GatewayClient], dict[str, Any]],
    done: Callable[[dict[str, Any]], str],
    already: Callable[[dict[str, Any]], str | None],
) -> int:
    """Send a command; when the gateway refuses it because the mission already is as the
    command would leave it (a second cancel, a pause of a paused mission…), say so and
    succeed: the command asked for a state, and the mission is in it. ``already`` reads
    the mission as the gateway shows it after the refusal, and says how it already is, or
    None when the refusal stands."""
    gateway = client(args)
    try:
        answer = send(gateway)
    except ApiError as error:
        if error.status != 409:
            raise
        state = already(gateway.show(args.mission_id))
        if state is None:
            raise
        unchanged = {"mission_id": args.mission_id, "unchanged": True, "reason": state}
        emit(args, unchanged, lambda: f"{state}: nothing to do")
        return 0
    emit(args, answer, lambda: done(answer))
    return 0


def approve(args: argparse.Namespace) -> int:
    def already(mission: dict[str, Any]) -> str | None:
        latest, approved = mission.get("plan_version"), mission.get("approved_version")
        version = args.version or latest
        if latest is None or approved is None or version != latest or approved < version:
            return None  # no plan yet, or not the latest: the refusal stands
        return f"plan v{version} of {args.mission_id} is already approved"

    return _steer(
        args,
        lambda gateway: gateway.approve(args.mission_id, args.version),
        lambda answer: f"approved plan v{answer['version']} of {args.mission_id}",
        already,
    )


def message(args: argparse.Namespace) -> int:
    text = checked_text(
        args.text,
        "message",
        MESSAGE_LIMIT,
        empty="answer the planner's question, or say what the plan should change",
        from_file=f"aether mission message {args.mission_id} - < notes.md",
    )
    answer = client(args).message(args.mission_id, text)
    note = " (and asked for a revised plan)" if answer.get("revision_requested") else ""
    emit(args, answer, lambda: f"message posted to {args.mission_id}{note}")
    return 0


def pause(args: argparse.Namespace) -> int:
    return _steer(
        args,
        lambda gateway: gateway.pause(args.mission_id, args.reason or ""),
        lambda _: f"pausing {args.mission_id}: running tasks finish, none start",
        lambda m: (
            f"mission {args.mission_id} is already paused" if m["status"] == "paused" else None
        ),
    )


def resume(args: argparse.Namespace) -> int:
    def already(mission: dict[str, Any]) -> str | None:
        status = mission["status"]
        if status == "paused" or status in ENDED:
            return None
        return f"mission {args.mission_id} is not paused (it is {status.replace('_', ' ')})"

    return _steer(
        args,
        lambda gateway: gateway.resume(args.mission_id),
        lambda _: f"resuming {args.mission_id}",
        already,
    )


def cancel(args: argparse.Namespace) -> int:
    return _steer(
        args,
        lambda gateway: gateway.cancel(args.mission_id, args.reason or ""),
        lambda _: f"cancelling {args.mission_id}",
        lambda m: (
            f"mission {args.mission_id} is already cancelled"
            if m["status"] == "cancelled"
            else None
        ),
    )


def retry(args: argparse.Namespace) -> int:
    # Not a state but a new run: a task that is not escalated or failed is refused.
    answer = client(args).retry(args.mission_id, args.task_id)
    emit(args, answer, lambda: f"task {args.task_id} of {args.mission_id} will run again")
    return 0


def deliver(args: argparse.Namespace) -> int:
    def already(mission: dict[str, Any]) -> str | None:
        delivery = mission.get("delivery") or {}
        if delivery.get("status") != "pushed":
            return None
        return f"the result of {args.mission_id} was delivered to {delivery.get('remote')} already"

    return _steer(
        args,
        lambda gateway: gateway.retry_delivery(args.mission_id),
        lambda _: f"the git broker will push the result of {args.mission_id} again",
        already,
    )


def retry_step(args: argparse.Namespace) -> int:
    answer = client(args).retry_step(args.mission_id, args.event_id, args.service)
    emit(
        args,
        answer,
        lambda: f"the failed step on event {args.event_id} of {args.mission_id} will run again",
    )
    return 0


def skip(args: argparse.Namespace) -> int:
    def already(mission: dict[str, Any]) -> str | None:
        tasks = {t["task_id"]: t for t in mission.get("tasks") or []}
        if (tasks.get(args.task_id) or {}).get("status") != "skipped":
            return None
        return f"task {args.task_id} of {args.mission_id} is already skipped"

    return _steer(
        args,
        lambda gateway: gateway.skip(args.mission_id, args.task_id, args.reason or ""),
        lambda _: f"task {args.task_id} of {args.mission_id} skipped",
        already,
    )


def budget(args: argparse.Namespace) -> int:
    def already(mission: dict[str, Any]) -> str | None:
        current = mission.get("budget_usd")
        if current is None or mission["status"] in ENDED or abs(current - args.budget_usd) >= 0.005:
            return None  # lower than the budget (or the mission ended): the refusal stands
        return f"the budget of {args.mission_id} is already ${current:.2f}"

    return _steer(
        args,
        lambda gateway: gateway.raise_budget(args.mission_id, args.budget_usd),
        lambda _: f"budget of {args.mission_id} raised to ${args.budget_usd:.2f}",
        already,
    )


# --- watching -----------------------------------------------------------------------------

_CLEAR = "\x1b[H\x1b[2J"
REDRAW_EVERY = 1.0  # seconds: the elapsed time moves and a stale board is never left up
# The exit status of a watch that saw its mission end without completing (failed, its plan
# failed, cancelled): not 1, which says the command itself failed (refused, say), yet not
# 0, since what the mission was for is not there to use (`submit --watch && …`).
DID_NOT_COMPLETE = 3
# How long a completed mission's watch waits for the push its repository's preparation
# announced (BranchPushed or BranchPushFailed) before it ends without it.
DELIVERY_WAIT_SECONDS = 120.0


def _read_events(
    gateway: GatewayClient, mission_id: str, inbox: queue.Queue[tuple[str, Any]], stop: Any
) -> None:
    """Put the mission's events on ``inbox``, reconnecting after the last one seen; a
    connection problem is reported (``retry``) rather than hidden."""
    # Not ended by the gateway at the mission's end: the delivery may follow it, and the
    # watch itself decides when it has seen enough.
    events = resumed_events(
        gateway,
        mission_id,
        lambda said: inbox.put(("retry", said)),
        stop.wait,
        ended=stop.is_set,
    )
    try:
        for event in events:
            inbox.put(("event", event))
            if stop.is_set():
                return
    except ApiError as error:
        inbox.put(("fatal", error))


def watch(args: argparse.Namespace) -> int:
    """Follow a mission live until it finishes, resuming after a dropped connection. The
    board redraws on every change and every second even when no event arrives."""
    from aether.watch import Board, render, waiting_for_a_person, waiting_hint

    gateway = client(args)
    board = Board(args.mission_id)
    board_view = sys.stdout.isatty() and not args.json and not getattr(args, "events", False)
    inbox: queue.Queue[tuple[str, Any]] = queue.Queue()
    stop = threading.Event()
    threading.Thread(
        target=_read_events, args=(gateway, args.mission_id, inbox, stop), daemon=True
    ).start()
    notice = ""
    drawn_at = 0.0
    drawn_state: tuple[Any, ...] = ()
    delivery_since: float | None = None
    hinted: tuple[str, int | None] = ("", None)
    try:
        while True:
            try:
                kind, item = inbox.get(timeout=REDRAW_EVERY)
            except queue.Empty:
                kind, item = "tick", None
            if kind == "fatal":
                raise item
            if kind == "retry":
                notice = item
                if not board_view and not args.json:
                    print(f"({item})", file=sys.stderr, flush=True)
            elif kind == "tick" and not board_view and not args.json and not board.finished:
                # The feed has gone quiet: if the mission waits on the watcher (a plan to
                # approve, questions, a pause), say what to run, as the board does. Only once
                # the history has been read, so a state long left is not advertised.
                # An escalated task waits on the watcher too, as the board's "> task …"
                # line says.
                waits = [f"» {wait}" for wait in waiting_for_a_person(board)]
                hint = "\n".join(line for line in (waiting_hint(board), *waits) if line)
                if hint and (hint, board.plan_version) != hinted:
                    print(hint, file=sys.stderr, flush=True)
                hinted = (hint, board.plan_version)
            elif kind == "event":
                notice = ""
                board.apply(item)
                if args.json:
                    print(json.dumps({"id": item.id, "event": item.event, "data": item.data}))
                elif not board_view and item.event != "agent_heartbeat":
                    print(describe(item), flush=True)
            if board_view:
                tasks = ((t.status, t.activity) for t in board.tasks.values())
                state = (board.status, notice, *tasks)
                now = time.monotonic()
                if state != drawn_state or now - drawn_at >= REDRAW_EVERY or board.finished:
                    width = shutil.get_terminal_size((100, 24)).columns
                    print(_CLEAR + render(board, width, notice=notice), flush=True)
                    drawn_at, drawn_state = now, state
            if board.finished and board.awaiting_delivery:
                # Completed: the push announced when the repository was prepared follows.
                if delivery_since is None:
                    delivery_since = time.monotonic()
                    notice = f"completed; waiting for the push to {board.delivery_remote}"
                    if not board_view and not args.json:
                        print(f"({notice})", file=sys.stderr, flush=True)
                if time.monotonic() - delivery_since < DELIVERY_WAIT_SECONDS:
                    continue
            if board.finished:
                if not args.json:
                    print(_outcome(board), flush=True)
                return 0 if board.status in ("completed", "answered") else DID_NOT_COMPLETE
    except KeyboardInterrupt:
        # Stopping the watch stops nothing else: say so, and how to stop the mission.
        if not args.json:
            mission = args.mission_id
            print(
                f"\nstopped watching; {mission} goes on (`aether mission watch {mission}` "
                f"follows it again, `aether mission cancel {mission}` stops it)",
                file=sys.stderr,
                flush=True,
            )
        return 130
    finally:
        stop.set()


def _outcome(board: Board) -> str:
    """What the mission left behind and what to do next."""
    if board.status != "completed":
        reason = f": {board.reason}" if board.reason else ""
        return (
            f"\nmission {board.mission_id} {board.status}{reason}\n"
            f"see `aether mission show {board.mission_id}`"
        )
    lines = [f"\nresult branch: {board.branch} @ {board.final_sha[:10]}"]
    if board.delivered:
        lines.append(board.delivered)
        if board.delivered.startswith("delivery FAILED"):
            lines.append(f"  {deliver_again(board.mission_id)}")
    elif board.delivery_remote:
        lines.append(
            f"its push to {board.delivery_remote} was not reported within"
            f" {DELIVERY_WAIT_SECONDS:.0f} s; `aether mission show {board.mission_id}` will say"
        )
    local = Path(board.repository)
    if "://" not in board.repository and local.is_dir() and board.base_sha and board.final_sha:
        # Left out when the result is not in this repository (another clone of it).
        with contextlib.suppress(KeyError, OSError):
            lines.append(format_stat(diff_stat(local, board.base_sha, board.final_sha)))
        # As a shell reads them: the repository's path may hold a space.
        git, branch = f"git -C {shlex.quote(str(local))}", shlex.quote(board.branch)
        lines.append(
            f"next: review it with `{git} diff {board.base_sha[:10]} {branch}`"
            f"\n      and merge it with `{git} merge {branch}`"
        )
    return "\n".join(lines)


# --- other queries ------------------------------------------------------------------------


def _mission_option(gateway: GatewayClient, args: argparse.Namespace) -> str | None:
    """``--mission``, read as a mission argument is: ``@last`` or a unique start of an id."""
    return resolve_mission(gateway, args.mission) if args.mission else None


def usage(args: argparse.Namespace) -> int:
    gateway = client(args)
    report = gateway.usage(args.by, mission_id=_mission_option(gateway, args), since=args.since)

    def human() -> str:
        if not report["rows"] and not report["total"]["calls"]:
            # Nothing to add up: no total of "unknown" cost.
            return "no model calls recorded" + (f" since {args.since}" if args.since else "")
        lines = [f"{args.by:<22} {'calls':>6} {'in':>10} {'out':>10} {'cost':>12}  budget"]
        for row in [*report["rows"], {**report["total"], "key": "total"}]:
            budget_usd = row.get("budget_usd")
            limit = f"${budget_usd:.2f}" if budget_usd is not None else "-"
            limit += " EXCEEDED" if row.get("budget_exceeded") else ""
            cost, complete = row["cost_usd"], row["cost_complete"]
            if cost is None and complete and not row["calls"]:
                cost = 0.0  # no call: nothing spent, not a price unknown
            lines.append(
                f"{short(str(row['key']), 22):<22} {row['calls']:>6} {row['input_tokens']:>10} "
                f"{row['output_tokens']:>10} {money(cost, complete):>12}"
                f"  {limit}"
            )
        return "\n".join(lines)

    emit(args, report, human)
    return 0


def agents(args: argparse.Namespace) -> int:
    gateway = client(args)
    found = gateway.agents(mission_id=_mission_option(gateway, args), status=args.status)

    def human() -> str:
        lines = []
        for runner in found["agents"]:
            seen = str(runner["last_seen_at"])[:19].replace("T", " ")
            lines.append(
                f"{runner['runner_id']}  {runner['status']:<6}  last seen {seen}  "
                f"{runner['sessions']} sessions ({runner['completed']} done, "
                f"{runner['failed']} failed)"
            )
            for s in runner["running"]:
                action = s.get("last_action") or "working"
                lines.append(
                    f"    {s['mission_id']}/{s['task_id']} try {s['attempt']}: "
                    f"turn {s['turns']}, {short(action, 60)}"
                )
        return "\n".join(lines) or "no agents seen"

    emit(args, found, human)
    return 0


def runtimes(args: argparse.Namespace) -> int:
    found = client(args).runtimes()

    def human() -> str:
        if not found["runners"]:
            return (
                "no agent runner has announced itself: none runs, or none has started yet "
                "(a mission naming a runtime is then accepted unchecked)"
            )
        lines = [f"{'runtime':<20} runners"]
        for offer in found["runtimes"]:
            lines.append(f"{offer['name']:<20} {', '.join(offer['runners'])}")
        lines.append("")
        lines.append(f"{'runner':<32} {'lanes':>5}  {'default':<12} {'version':<9} runtimes")
        for runner in found["runners"]:
            lines.append(
                f"{short(runner['runner_id'], 32):<32} {runner['lanes']:>5}  "
                f"{runner['default_runtime'] or '-':<12} {runner['version'] or '-':<9} "
                f"{', '.join(runner['runtimes'])}"
            )
        return "\n".join(lines)

    emit(args, found, human)
    return 0


# --- tokens and administration ------------------------------------------------------------


def token_create(args: argparse.Namespace) -> int:
    created = client(args).create_token(args.name, args.scope, args.expires_days)
    emit(
        args,
        created,
        lambda: (
            f"{token_line(created)}\n\n{created['token']}\n\n"
            "This is the only time the token is shown; keep it somewhere safe."
        ),
    )
    return 0


def token_list(args: argparse.Namespace) -> int:
    tokens = client(args).tokens(include_revoked=args.all)
    emit(args, {"tokens": tokens}, lambda: "\n".join(map(token_line, tokens)) or "no tokens")
    return 0


def token_revoke(args: argparse.Namespace) -> int:
    revoked = client(args).revoke_token(args.token_id)
    emit(args, revoked, lambda: f"revoked {revoked['id']} ({revoked['name']})")
    return 0


def whoami(args: argparse.Namespace) -> int:
    me = client(args).whoami()
    emit(args, me, lambda: f"{me['name']} ({me['kind']} {me['id']}): {', '.join(me['scopes'])}")
    return 0


def rebuild_read_model(args: argparse.Namespace) -> int:
    result = client(args).rebuild_read_model()
    emit(
        args,
        result,
        lambda: (
            f"read model rebuilt in {result['seconds']} s: {result['events_folded']} events,"
            f" mission stream to #{result['missions_sequence']},"
            f" telemetry to #{result['telemetry_sequence']}"
        ),
    )
    return 0

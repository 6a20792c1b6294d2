"""``aether mission logs``: what the agents did, one line per step.

A step is an attempt's start, each progress report (one per tool call: the tool and the
file or command it worked on), the attempt's end, and the git broker's refusal to merge
it (a "completed" attempt that was then not merged says why on the line after). The
gateway lists what it has (``/missions/{id}/activity``; progress reports for about an
hour); ``--follow`` then streams new ones until the mission ends, opening the stream
again after the last event seen when it drops.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from aether.client import GatewayClient
from aether.render import merge_refused, merge_withheld, short
from aether.resume import resumed_events
from aether_events import TERMINAL_TYPES, tag_of
from aether_events.status import TERMINAL_STATUSES

TERMINAL = frozenset(tag_of(cls) for cls in TERMINAL_TYPES)
# How the agent runner words a progress report taken when a model reply asks for tools.
_ASKS = "model asks: "
AGENT_EVENTS = frozenset(
    {
        "agent_started",
        "agent_progress",
        "agent_completed",
        "agent_failed",
        "merge_conflicted",
        "merge_withheld",
    }
)


def _clock(value: object) -> str:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).strftime("%H:%M:%S")
    except ValueError:
        return "--:--:--"


def action_text(action: str) -> str:
    """A progress report's action, tool first: ``write_file  src/a.py``, or what a model
    reply asked for (``model asks  run_command pytest -q``)."""
    if action.startswith(_ASKS):
        return f"{'model asks':<14} {short(action.removeprefix(_ASKS), 90)}"
    tool, _, detail = (action or "working").partition(" ")
    return f"{tool:<14} {short(detail, 90)}".rstrip()


def step_line(kind: str, data: dict[str, Any]) -> str:
    """One step for people: when, which attempt, and what happened."""
    head = (
        f"{_clock(data.get('occurred_at'))}  {data.get('task_id', '?')} a{data.get('attempt', 0)}"
    )
    if kind == "agent_started":
        sandbox = f", commands in {data['sandbox']}" if data.get("sandbox") else ""
        runtime = f" through {data['runtime']}" if data.get("runtime") else ""
        what = (
            f"started    on {data.get('runner_id', '?')} with {data.get('model', '?')}"
            f"{runtime}{sandbox}"
        )
    elif kind == "agent_progress":
        turn = f"turn {data.get('turns', 0)}"
        what = f"{turn:<10} {action_text(str(data.get('last_action') or ''))}"
    elif kind == "agent_completed":
        files = [str(f) for f in data.get("files_changed") or []]
        count = f"{len(files)} file{'s' if len(files) != 1 else ''}"
        changed = f", {count}: {short(', '.join(files), 60)}" if files else ""
        summary = f" — {short(str(data['summary']), 80)}" if data.get("summary") else ""
        what = f"completed  commit {str(data.get('commit_sha', ''))[:10]}{changed}{summary}"
    elif kind == "agent_failed":
        again = "will be retried" if data.get("retryable", True) else "not retryable"
        what = f"failed     {short(str(data.get('reason', '')), 100)} ({again})"
    elif kind == "merge_conflicted":
        what = f"{'refused':<10} {merge_refused(data)}"
    elif kind == "merge_withheld":
        what = f"{'refused':<10} {merge_withheld(data)}"
    else:
        what = kind
    return f"{head}  {what}"


class StepPrinter:
    """Prints each step once (a step listed and then streamed again is skipped)."""

    def __init__(self, args: argparse.Namespace, out: Callable[[str], None] = print) -> None:
        self._task: str | None = args.task_id
        self._attempt: int | None = args.attempt
        self._json: bool = args.json
        self._out = out
        self._seen: set[str] = set()
        self.printed = 0

    def wanted(self, data: dict[str, Any]) -> bool:
        return (self._task is None or data.get("task_id") == self._task) and (
            self._attempt is None or data.get("attempt") == self._attempt
        )

    def show(self, kind: str, data: dict[str, Any]) -> None:
        event_id = str(data.get("event_id", ""))
        if kind not in AGENT_EVENTS or not self.wanted(data) or event_id in self._seen:
            return
        self._seen.add(event_id)
        self.printed += 1
        self._out(json.dumps(data) if self._json else step_line(kind, data))

    def show_all(self, entries: Iterable[dict[str, Any]]) -> None:
        for entry in entries:
            self.show(str(entry["type"]), entry["data"])


def mission_logs(
    gateway: GatewayClient, args: argparse.Namespace, out: Callable[[str], None] = print
) -> int:
    """Print the agents' steps; with ``--follow``, keep printing until the mission ends,
    through the stream's drops."""
    printer = StepPrinter(args, out)

    def listed() -> int:
        activity = gateway.activity(args.mission_id, args.task_id, args.attempt)
        printer.show_all(activity["entries"])
        position: int = activity["position"]
        return position

    position = listed()
    # A mission that has ended has nothing more to stream (read after the position, so
    # one ending after it ends the stream below).
    status = gateway.show(args.mission_id)["status"]
    ended = status in TERMINAL_STATUSES
    what = f"task {args.task_id}" if args.task_id else "any task"
    if not args.follow or ended:
        if not printer.printed and not args.json:
            print(f"no agent activity for {what} of {args.mission_id} yet")
        if args.follow:
            say_the_end(gateway, args)  # nothing to follow: say why it stops at once
        return 0
    if not printer.printed and not args.json:
        # Else a follow with nothing to show yet is a silent wait, maybe a long one.
        waits = (
            f" (its plan awaits approval: `aether mission approve {args.mission_id}`)"
            if status == "awaiting_approval"
            else ""
        )
        print(
            f"no agent activity for {what} of {args.mission_id} yet{waits}; following it "
            "until the mission ends (Ctrl-C stops)",
            file=sys.stderr,
            flush=True,
        )
    # Listed again once each stream is open, so a report made before it (between the
    # list and the stream, or while a dropped stream was away: progress reports are not
    # replayed) is not lost; the printer shows each step once.
    stream = resumed_events(
        gateway,
        args.mission_id,
        lambda said: print(f"({said})", file=sys.stderr, flush=True),
        time.sleep,
        last_id=str(position),
        until_terminal=True,
        on_open=listed,
        # A stream the gateway ended at the mission's end (or at once, its end having been
        # folded by then) is over; else it dropped.
        ended=lambda: gateway.show(args.mission_id)["status"] in TERMINAL_STATUSES,
    )
    for event in stream:
        printer.show(event.event, event.data)
        if event.event in TERMINAL:
            say_the_end(gateway, args)
            return 0
    # The mission ended while the stream was away: what it stored meanwhile is listed.
    listed()
    say_the_end(gateway, args)
    return 0


def say_the_end(gateway: GatewayClient, args: argparse.Namespace) -> None:
    """A follow that stops because the mission ended says so, and what to run next
    (it stopped without a word, which read like a dropped connection)."""
    if args.json:
        return
    mission = args.mission_id
    status = str(gateway.show(mission)["status"])
    if status == "completed":
        then = f"`aether mission diff {mission}` shows what it changed"
    else:
        then = f"`aether mission show {mission}` says why"
    print(f"{mission} {status.replace('_', ' ')}: {then}", file=sys.stderr, flush=True)

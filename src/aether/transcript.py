"""``aether mission logs MISSION TASK``: the task's agent transcript.

Every model turn (what it said, why it stopped, its tokens), every tool call (its
arguments and an excerpt of its result) and every command (its exit status and output),
attempt by attempt, between each attempt's start and end. The gateway keeps transcripts
durably (``/missions/{id}/tasks/{task}/transcript``); ``--follow`` then prints new
entries as the runner publishes them, until the mission ends.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from aether.agentlog import _clock, say_the_end, step_line
from aether.client import GatewayClient
from aether.render import short
from aether_events.status import TERMINAL_STATUSES

TRANSCRIPT = "transcript_recorded"
LIFECYCLE = frozenset({"agent_started", "agent_completed", "agent_failed"})
# Lines of a result or an output shown unless ``--full``.
BODY_LINES = 12
INDENT = " " * 12


def _tokens(usage: dict[str, Any] | None) -> str:
    if not usage:
        return ""
    parts = [f"{usage.get('input_tokens', 0)} in", f"{usage.get('output_tokens', 0)} out"]
    if usage.get("cache_read_input_tokens"):
        parts.append(f"{usage['cache_read_input_tokens']} cached")
    return ", ".join(parts)


def _body(text: str, full: bool, mark: str = "") -> list[str]:
    lines = text.rstrip("\n").split("\n") if text else []
    hidden = 0 if full else max(0, len(lines) - BODY_LINES)
    if hidden:
        lines = lines[:BODY_LINES]
    out = [f"{INDENT}{mark}{line}" for line in lines]
    if hidden:
        out.append(f"{INDENT}… {hidden} more line{'s' if hidden != 1 else ''} (--full shows them)")
    return out


def missing_line(missing: int) -> str:
    """Where entries of a run are missing (the gateway's ``missing_before``)."""
    them = "it" if missing == 1 else "them"
    return (
        f"{INDENT}… {missing:,} entr{'y' if missing == 1 else 'ies'} missing: the telemetry "
        f"stream dropped {them} before the gateway stored {them}"
    )


def entry_lines(entry: dict[str, Any], full: bool = False) -> list[str]:
    """One transcript entry for people: a head line, then what it held, indented (after
    a line saying how many entries are missing before it, if the gateway said so)."""
    missing = entry.get("missing_before")
    if isinstance(missing, int) and missing > 0:
        return [missing_line(missing), *entry_lines({**entry, "missing_before": 0}, full)]
    kind = str(entry.get("kind", ""))
    head = (
        f"{_clock(entry.get('occurred_at'))}  a{entry.get('attempt', 0)} "
        f"#{entry.get('sequence', 0):<3}"
    )
    cut = "  (excerpt)" if entry.get("truncated") else ""
    tool = str(entry.get("tool") or "")
    if kind == "turn":
        asks = f"  asks {tool}" if tool else ""
        why = f" ({entry['stop_reason']})" if entry.get("stop_reason") else ""
        tokens = f"  [{_tokens(entry.get('usage'))}]" if entry.get("usage") else ""
        return [
            f"{head}  model{why}{asks}{tokens}{cut}",
            *_body(str(entry.get("text") or ""), full),
        ]
    if kind == "command":
        code = entry.get("exit_code")
        status = f"exit {code}" if code is not None else str(entry.get("status") or "no exit")
        shown = _command_of(entry)
        result = _body(str(entry.get("result") or ""), full, "| ")
        return [f"{head}  $ {short(shown, 80)}  → {status}{cut}", *result]
    if kind == "tool_call":
        error = "  → error" if entry.get("is_error") else ""
        arguments = short(str(entry.get("arguments") or ""), 100)
        result = _body(str(entry.get("result") or ""), full, "→ ")
        return [f"{head}  {tool} {arguments}{error}{cut}", *result]
    if kind == "prompt":
        text = str(entry.get("text") or "")
        body = _body(text, full) if full else []
        return [f"{head}  prompt ({len(text)} characters{', cut' if cut else ''})", *body]
    label = {"note": f"note {tool}".strip(), "output": "output"}.get(kind, kind)
    return [f"{head}  {label}{cut}", *_body(str(entry.get("text") or ""), full)]


def _command_of(entry: dict[str, Any]) -> str:
    """The command line of a command entry (a JSON argument list, or a CLI agent's)."""
    raw = str(entry.get("arguments") or "")
    try:
        value = json.loads(raw)
    except ValueError:
        return raw or str(entry.get("tool") or "")
    command = value.get("command") if isinstance(value, dict) else None
    return command if isinstance(command, str) else raw


class TranscriptPrinter:
    """Prints each entry and each start or end of an attempt once, in order."""

    def __init__(self, args: argparse.Namespace, out: Callable[[str], None] = print) -> None:
        self._task: str = args.task_id
        self._attempt: int | None = args.attempt
        self._json: bool = args.json
        self._full: bool = getattr(args, "full", False)
        self._out = out
        self._seen: set[str] = set()
        self.printed = 0
        # The attempts whose start (or end) has been printed, and the entries of the
        # others, waiting for it.
        self._begun: set[object] = set()
        self._waiting: dict[object, list[dict[str, Any]]] = {}
        # What the gateway's cap dropped of an attempt whose entries wait: said after them.
        self._dropped_after: dict[object, list[dict[str, Any]]] = {}
        # The last entry held: the next page starts after it.
        self.after_attempt: int | None = None
        self.after: int | None = None

    def wanted(self, data: dict[str, Any]) -> bool:
        return data.get("task_id", self._task) == self._task and (
            self._attempt is None or data.get("attempt") == self._attempt
        )

    def show(self, kind: str, data: dict[str, Any]) -> None:
        """Print an entry, or an attempt's start or end, once. An attempt's entries wait
        for its start: the runner may publish the start after them (held with them, or
        carried by the attempt's result), and the stream brings telemetry as it comes, so
        the "started" line printed after the entries it began (``flush`` prints what
        still waits, when nothing more will come)."""
        if not self.wanted(data):
            return
        if kind == TRANSCRIPT:
            key = f"entry:{data.get('attempt')}:{data.get('sequence')}"
            self.note_position(data)
        elif kind in LIFECYCLE:
            key = f"step:{data.get('event_id')}"
        else:
            return
        if key in self._seen:
            return
        self._seen.add(key)
        attempt = data.get("attempt")
        if kind == TRANSCRIPT and attempt not in self._begun:
            self._waiting.setdefault(attempt, []).append(data)
            return
        if kind == "agent_started":
            self._print(kind, data)
            self._begun.add(attempt)
            self._release(attempt)
            return
        if kind in LIFECYCLE:
            # Its end: what still waits for a start not seen goes before it, and any
            # later entry of the attempt is printed as it comes.
            self._begun.add(attempt)
            self._release(attempt)
        self._print(kind, data)

    def flush(self) -> None:
        """Print the entries still waiting for their attempt's start, attempt by attempt
        (nothing more will come: the listing or the stream is over)."""
        for attempt in sorted(self._waiting, key=lambda a: a if isinstance(a, int) else -1):
            self._begun.add(attempt)
            self._release(attempt)

    def _release(self, attempt: object) -> None:
        waiting = self._waiting.pop(attempt, [])
        waiting.sort(key=lambda entry: _number(entry.get("sequence")))
        for entry in waiting:
            self._print(TRANSCRIPT, entry)
        for data in self._dropped_after.pop(attempt, []):
            self._say_dropped(data)

    def _print(self, kind: str, data: dict[str, Any]) -> None:
        self.printed += 1
        if self._json:
            self._out(json.dumps({"type": kind, **data}))
        elif kind == TRANSCRIPT:
            for line in entry_lines(data, self._full):
                self._out(line)
        else:
            self._out(step_line(kind, data))

    def dropped(self, data: dict[str, Any]) -> None:
        """Say (once each count) how many of an attempt's entries the gateway's cap
        dropped."""
        attempt, entries = data.get("attempt"), data.get("entries")
        key = f"dropped:{attempt}:{entries}"
        if key in self._seen:
            return
        self._seen.add(key)
        if attempt in self._waiting:
            # Said after the attempt's entries, which wait for its start.
            self._dropped_after.setdefault(attempt, []).append(data)
        else:
            self._say_dropped(data)

    def _say_dropped(self, data: dict[str, Any]) -> None:
        attempt, entries = data.get("attempt"), data.get("entries")
        if self._json:
            self._out(json.dumps({"type": "transcript_dropped", **data}))
        else:
            self._out(f"attempt {attempt}: {entries} entries dropped by the gateway's cap")

    def note_position(self, data: dict[str, Any]) -> None:
        attempt, sequence = data.get("attempt"), data.get("sequence")
        if not isinstance(attempt, int) or not isinstance(sequence, int):
            return
        held = None if self.after_attempt is None or self.after is None else self.held()
        if held is None or (attempt, sequence) > held:
            self.after_attempt, self.after = attempt, sequence

    def held(self) -> tuple[int, int]:
        assert self.after_attempt is not None
        assert self.after is not None
        return self.after_attempt, self.after


def _listed(gateway: GatewayClient, args: argparse.Namespace, printer: TranscriptPrinter) -> int:
    """Print what the gateway holds and is new; returns the mission events' position."""
    activity = gateway.activity(args.mission_id, args.task_id, args.attempt)
    dropped: list[dict[str, Any]] = []
    items: list[tuple[str, str, dict[str, Any]]] = [
        (str(e["occurred_at"]), str(e["type"]), e["data"])
        for e in activity["entries"]
        if e["type"] in LIFECYCLE
    ]
    while True:
        page = gateway.transcript(
            args.mission_id, args.task_id, args.attempt, printer.after_attempt, printer.after
        )
        for entry in page["entries"]:
            data = {"task_id": args.task_id, **entry}
            items.append((str(entry["occurred_at"]), TRANSCRIPT, data))
            printer.note_position(data)
        following = page.get("next")
        if not following:
            dropped = page.get("dropped") or []
            break
        printer.after_attempt, printer.after = following["after_attempt"], following["after"]
    # Attempt by attempt: its start, its entries in their order, its end. Not by their
    # times, which came from two clocks' strings ("…:08Z" sorts after "…:08.5Z").
    items.sort(key=lambda item: _place(item[1], item[2]))
    for _, kind, data in items:
        printer.show(kind, data)
    for each in dropped:
        printer.dropped(each)
    position: int = activity["position"]
    return position


def _number(value: object) -> int:
    return value if isinstance(value, int) else 0


def _place(kind: str, data: dict[str, Any]) -> tuple[int, int, int]:
    """Where a listed item goes: its attempt, then start, entries (by sequence), end."""
    phase = 0 if kind == "agent_started" else 1 if kind == TRANSCRIPT else 2
    return _number(data.get("attempt")), phase, _number(data.get("sequence"))


def task_transcript(gateway: GatewayClient, args: argparse.Namespace) -> int:
    """Print the task's transcript; with ``--follow``, keep printing until the mission
    ends."""
    printer = TranscriptPrinter(args)
    position = _listed(gateway, args, printer)
    ended = gateway.show(args.mission_id)["status"] in TERMINAL_STATUSES
    if args.follow and ended:
        # It ended after (or while) it was listed: what came in between is in the
        # gateway's record by now, and a stream from the listing's position would never
        # see the end it already passed.
        _listed(gateway, args, printer)
    if not args.follow or ended:
        printer.flush()
        if not printer.printed and not args.json:
            attempt = f" attempt {args.attempt}" if args.attempt is not None else ""
            still = "" if ended else " yet"
            print(f"no transcript for task {args.task_id}{attempt} of {args.mission_id}{still}")
        if args.follow:
            say_the_end(gateway, args)  # nothing to follow: say why it stops at once
        return 0
    # Listed again once the stream is open: an entry published between the two (telemetry
    # is not replayed by the stream) is then in the gateway's record.
    stream = gateway.events(
        args.mission_id,
        last_event_id=str(position),
        telemetry=True,
        on_open=lambda: _listed(gateway, args, printer),
    )
    for event in stream:
        printer.show(event.event, event.data)
    printer.flush()
    if gateway.show(args.mission_id)["status"] in TERMINAL_STATUSES:
        say_the_end(gateway, args)
    return 0

"""An attempt's transcript: every step the agent took, as bounded entries published as
``TranscriptRecorded`` events (the gateway keeps them).

What an entry holds is cut to a configured number of characters (the cut is marked, and
``truncated`` says so) after anything that looks like a credential was replaced: the
values of the runner's own secret-looking variables and the attempt's push token, and
text matching the configured patterns. The agent's tools never see those values, but a
model can echo what a file held, so the transcript does not trust the text it carries.

Sequences name entries: the built-in loop's entry ``n`` is its journal's record ``n``, so
a runner that resumes the journal publishes the same entries under the same ids (the
gateway keeps the first). Runtimes that start over number each run's entries after the
earlier runs' (``RUN_STRIDE`` apart), so a restart adds a run instead of overwriting one.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec

from aether_agent_runner.adapters.tools import ToolResult
from aether_events import (
    TRANSCRIPT_RUN_STRIDE,
    Event,
    TranscriptKind,
    TranscriptRecorded,
    Usage,
    WorkspaceReady,
    caused_by,
    encode,
    step_ids,
)
from aether_events import bounded as bounded_bytes
from aether_sandbox.environment import is_secret_name

RUN_STRIDE = TRANSCRIPT_RUN_STRIDE
REDACTED = "[redacted]"
# Shapes of credentials that should never be in a transcript, whoever wrote them.
DEFAULT_PATTERNS: tuple[str, ...] = (
    r"sk-ant-[A-Za-z0-9_\-]{8,}",
    r"\baet_[A-Za-z0-9_\-]{8,}",
    r"\bgh[pousr]_[A-Za-z0-9]{20,}",
    r"\bgithub_pat_[A-Za-z0-9_]{20,}",
    r"\bAKIA[0-9A-Z]{16}\b",
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(-----END [A-Z ]*PRIVATE KEY-----|$)",
    r"(?i)\bbearer\s+[A-Za-z0-9._~+/=\-]{16,}",
)
# A secret shorter than this is not looked for (it would blank ordinary words).
MIN_SECRET = 8
# The most bytes one entry encodes to: a TranscriptEntries groups entries up to
# ``adapters.stream.BYTES_PER_MESSAGE``, so one entry alone must fit well within that.
ENTRY_BYTES = 64 * 1024
# The least bytes a text of an entry is cut to (with ``entry_chars`` set high).
_LEAST_BYTES = 256


class TranscriptSettings(msgspec.Struct, frozen=True, kw_only=True):
    """``entry_chars``: the most characters one field of an entry keeps; ``redact``:
    more regular expressions whose matches are replaced; ``max_entries``: the most
    entries one run of an attempt publishes (an agent that floods its session does not
    flood the bus and the read model)."""

    entry_chars: int = 4000
    redact: tuple[str, ...] = ()
    max_entries: int = 20_000


def check_patterns(patterns: Iterable[str]) -> tuple[str, ...]:
    """The patterns, each checked to compile (a bad one stops the runner at start)."""
    checked = tuple(patterns)
    for pattern in checked:
        try:
            re.compile(pattern)
        except re.error as error:
            raise ValueError(f"AETHER_AGENT_TRANSCRIPT_REDACT: {pattern!r}: {error}") from None
    return checked


class Redactor:
    """Replaces known secret values and credential-shaped text by ``[redacted]``."""

    def __init__(self, secrets: Iterable[str], patterns: Iterable[str]) -> None:
        values = sorted({s for s in secrets if len(s) >= MIN_SECRET}, key=len, reverse=True)
        self._values = values
        self._patterns = compiled(tuple(patterns))

    def __call__(self, text: str) -> str:
        for value in self._values:
            if value in text:
                text = text.replace(value, REDACTED)
        for pattern, first in self._patterns:
            if first is None or first.search(text) is not None:
                text = pattern.sub(REDACTED, text)
        return text


@functools.lru_cache(maxsize=16)
def compiled(
    patterns: tuple[str, ...],
) -> tuple[tuple[re.Pattern[str], re.Pattern[str] | None], ...]:
    """Each pattern compiled, with its prefilter: once per set of patterns (every attempt
    makes a ``Redactor`` of the same ones)."""
    return tuple((re.compile(p), prefilter(p)) for p in patterns)


# A pattern's leading word boundary, after its inline flags if it has any, before a letter.
_LEADING_BOUNDARY = re.compile(r"(\(\?[aiLmsux]+\))?\\b(?=[A-Za-z0-9_-])")


def prefilter(pattern: str) -> re.Pattern[str] | None:
    """What to search for before ``pattern`` is applied, when that is quicker: the pattern
    without its leading ``\\b``. The regular expression engine looks for a literal start
    with a fast substring search, which a leading assertion turns off: it then tries the
    pattern at every position (about 130 µs for a few kilobytes, the size of a task's
    prompt, against 2 to 6 µs without the ``\\b``). A pattern with an assertion taken out
    matches wherever it matched and maybe more, so a text the prefilter finds nothing in
    holds no match of the pattern. None when the pattern does not start so."""
    leading = _LEADING_BOUNDARY.match(pattern)
    if leading is None:
        return None
    try:
        return re.compile((leading.group(1) or "") + pattern[leading.end() :])
    except re.error:
        return None


def secrets_in(env: Mapping[str, str]) -> list[str]:
    """The values of the variables whose names say they hold a credential."""
    return [value for name, value in env.items() if is_secret_name(name) and value]


def cut(text: str, limit: int) -> tuple[str, bool]:
    """``text`` kept to ``limit`` characters (its start and end, the cut marked), and
    whether anything was cut."""
    if len(text) <= limit:
        return text, False
    marker = f"\n… [{len(text) - limit} characters cut] …\n"
    room = max(limit - len(marker), 0)
    head = room * 2 // 3
    tail = room - head
    return text[:head] + marker + (text[-tail:] if tail else ""), True


@dataclass(frozen=True)
class Entry:
    """One transcript entry before it is bounded and published."""

    kind: TranscriptKind
    text: str = ""
    tool: str = ""
    arguments: str = ""
    result: str = ""
    is_error: bool = False
    exit_code: int | None = None
    status: str = ""
    stop_reason: str | None = None
    usage: Usage | None = None


def command_entry(tool: str, arguments: dict[str, Any], result: ToolResult) -> Entry:
    """The ``command`` entry of a ``run_command`` a runtime carried out for its agent: its
    output, and how it ended (``refused`` when it did not run)."""
    ran = result.ran
    return Entry(
        kind="command",
        tool=tool,
        arguments=as_json(arguments),
        result=result.content,
        is_error=result.is_error,
        exit_code=None if ran is None else ran.exit_code,
        status="refused" if ran is None else ran.status(),
    )


def as_json(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    except (TypeError, ValueError):
        return str(value)


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [
            str(block.get("text", ""))
            for block in content
            if isinstance(block, dict) and block.get("type") == "text"
        ]
        return "\n".join(parts)
    return ""


class RecordReader:
    """Turns the built-in loop's journal records into entries; remembers each reply's
    tool calls so their results can name the tool and its arguments."""

    def __init__(self) -> None:
        self._calls: dict[str, tuple[str, Any]] = {}

    def entry(self, record: Mapping[str, Any]) -> Entry | None:
        match record.get("kind"):
            case "begin":
                return Entry(kind="prompt", text=str(record.get("prompt", "")))
            case "reply":
                return self._reply(record)
            case "answer":
                return self._answer(record)
        return None

    def _reply(self, record: Mapping[str, Any]) -> Entry:
        content = [b for b in record.get("content") or [] if isinstance(b, dict)]
        asked = []
        for block in content:
            if block.get("type") == "tool_use":
                self._calls[str(block.get("id"))] = (str(block.get("name")), block.get("input"))
                asked.append(str(block.get("name")))
        usage: Usage | None = None
        try:
            usage = msgspec.convert(record.get("usage") or {}, Usage)
        except msgspec.ValidationError:
            usage = None
        return Entry(
            kind="turn",
            text=_text_of(content),
            tool=", ".join(asked),
            stop_reason=record.get("stop_reason"),
            usage=usage,
        )

    def _answer(self, record: Mapping[str, Any]) -> Entry:
        block = record.get("block") or {}
        note = str(record.get("note") or "")
        if block.get("type") != "tool_result":
            return Entry(kind="note", tool=note, text=_text_of([block]))
        name, arguments = self._calls.get(str(block.get("tool_use_id")), ("", None))
        result = _text_of(block.get("content"))
        is_error = bool(block.get("is_error"))
        if note:
            return Entry(kind="note", tool=note, text=result, is_error=is_error)
        command = record.get("command")
        if isinstance(command, dict):
            code = command.get("exit_code")
            return Entry(
                kind="command",
                tool=name,
                arguments=as_json(arguments),
                result=result,
                is_error=is_error,
                exit_code=code if isinstance(code, int) else None,
                status=str(command.get("status", "")),
            )
        return Entry(
            kind="tool_call",
            tool=name,
            arguments=as_json(arguments),
            result=result,
            is_error=is_error,
        )


class Transcript:
    """Emits one attempt's entries, each bounded and redacted, to the attempt's stream
    (``adapters.stream``: a lost entry is logged there, never a reason to fail the
    attempt; a resumed built-in attempt publishes it again)."""

    def __init__(
        self,
        ready: WorkspaceReady,
        emit: Callable[[Event], Awaitable[object]],
        clock: Callable[[], datetime],
        runner_id: str,
        settings: TranscriptSettings,
        redact: Redactor,
        runtime: str = "",
    ) -> None:
        self._ready = ready
        self._emit = emit
        self._clock = clock
        self._runner_id = runner_id
        self._settings = settings
        self._redact = redact
        self.runtime = runtime
        self.next_sequence = 0
        self.reader = RecordReader()
        # Entries this process published for the attempt, and whether the cap was said.
        self.published = 0
        self.capped = False

    def start_run(self, run: int) -> None:
        """Number the entries from here on as run ``run`` (runtimes that start over)."""
        self.next_sequence = run * RUN_STRIDE

    async def journaled(self, record: Mapping[str, Any], sequence: int | None = None) -> None:
        """Publish the entry of a journal record (``sequence``: its index in the journal;
        left out, the next one)."""
        entry = self.reader.entry(record)
        if entry is None:
            # Nothing to show, but the record keeps its number.
            number = self.next_sequence if sequence is None else sequence
            self.next_sequence = max(self.next_sequence, number + 1)
            return
        await self.add(entry, sequence)

    async def add(self, entry: Entry, sequence: int | None = None) -> None:
        """Emit ``entry`` as the next entry (or at ``sequence``); past ``max_entries``,
        one note says the rest are left out, and nothing more is emitted."""
        number = self.next_sequence if sequence is None else sequence
        self.next_sequence = max(self.next_sequence, number + 1)
        if self.published >= self._settings.max_entries:
            if not self.capped:
                self.capped = True
                limit = self._settings.max_entries
                note = Entry(
                    kind="note",
                    text=f"the transcript keeps {limit:,} entries of a run; the rest are left out",
                )
                await self._emit(self.event(note, number))
            return
        self.published += 1
        await self._emit(self.event(entry, number))

    def event(self, entry: Entry, sequence: int) -> TranscriptRecorded:
        """The bounded, redacted event of ``entry``: each text cut to ``entry_chars``
        characters, and all of it to ``ENTRY_BYTES`` once encoded (each text cut to
        fewer bytes until it fits: a character may take four bytes, or six in JSON)."""
        event = self._event(entry, sequence, None)
        budget = ENTRY_BYTES // 2
        while len(encode(event)) > ENTRY_BYTES and budget >= _LEAST_BYTES:
            event = self._event(entry, sequence, budget)
            budget //= 2
        return event

    def _event(self, entry: Entry, sequence: int, byte_budget: int | None) -> TranscriptRecorded:
        ready, limit = self._ready, self._settings.entry_chars
        truncated = False

        def bounded(value: str) -> str:
            nonlocal truncated
            kept, was_cut = cut(self._redact(value), limit)
            if byte_budget is not None:
                fitting = bounded_bytes(kept, byte_budget)
                was_cut = was_cut or fitting is not kept
                kept = fitting
            truncated = truncated or was_cut
            return kept

        step = step_ids.transcript_entry(ready.task.id, ready.attempt, sequence)
        return TranscriptRecorded(
            **caused_by(ready, self._clock(), step),
            task_id=ready.task.id,
            attempt=ready.attempt,
            runner_id=self._runner_id,
            sequence=sequence,
            kind=entry.kind,
            runtime=self.runtime,
            text=bounded(entry.text),
            tool=bounded(entry.tool)[:200],
            arguments=bounded(entry.arguments),
            result=bounded(entry.result),
            is_error=entry.is_error,
            exit_code=entry.exit_code,
            status=bounded(entry.status)[:500],
            stop_reason=entry.stop_reason,
            usage=entry.usage,
            truncated=truncated,
        )


def next_run(directory: Path) -> int:
    """The number of this run of an attempt in ``directory`` (0 the first time), counted
    on disk so that a runner starting the attempt over numbers its entries after the
    earlier runs'."""
    path = directory / "transcript-runs"
    try:
        run = int(path.read_text().strip() or 0)
    except (FileNotFoundError, ValueError):
        run = 0
    path.write_text(f"{run + 1}\n")
    return run


class OutputLines:
    """A CLI agent's output gathered for ``output`` entries: lines until ``chars`` of them
    or ``lines`` lines, so a chatty tool makes a few entries rather than one per line.
    Synchronous, so the sandbox's output callback can feed it from the event loop."""

    def __init__(self, chars: int = 2000, lines: int = 40) -> None:
        self._chars = chars
        self._lines = lines
        self._held: list[str] = []
        self._size = 0

    def line(self, text: str) -> str | None:
        """Hold ``text``; the batch it completes, if it completes one."""
        self._held.append(text)
        self._size += len(text) + 1
        if self._size >= self._chars or len(self._held) >= self._lines:
            return self.rest()
        return None

    def rest(self) -> str | None:
        """The lines held so far as one batch (None: none held)."""
        if not self._held:
            return None
        text = "\n".join(self._held)
        self._held, self._size = [], 0
        return text

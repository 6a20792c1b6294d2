"""The attempt's transcript: bounded, redacted entries from journal records, and a runner
on real NATS publishing every step of an attempt as TranscriptRecorded."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from aether_agent_runner.adapters.transcript import (
    DEFAULT_PATTERNS,
    ENTRY_BYTES,
    REDACTED,
    Entry,
    RecordReader,
    Redactor,
    Transcript,
    TranscriptSettings,
    check_patterns,
    cut,
    next_run,
    prefilter,
    secrets_in,
)
from aether_events import AgentCompleted, Event, TranscriptRecorded, derived_id, encode
from aether_llm import text_block

from .conftest import workspace_ready
from .test_command_runtime import needs_sandbox

# Commands the tests run find the Python they run on (its virtual environment's bin).
pytestmark = pytest.mark.usefixtures("python_on_path")


# --- pure parts ------------------------------------------------------------------------


def test_a_long_text_keeps_its_start_and_end_and_says_how_much_was_cut() -> None:
    text = "a" * 3000 + "b" * 3000
    kept, was_cut = cut(text, 1000)
    assert was_cut and len(kept) <= 1000
    assert kept.startswith("aaa") and kept.endswith("bbb")
    assert "characters cut]" in kept
    assert cut("short", 1000) == ("short", False)


def test_secret_values_and_credential_shapes_are_redacted() -> None:
    env = {"ANTHROPIC_API_KEY": "sk-ant-api03-abcdefghijkl", "MY_TOKEN": "hunter2hunter2", "X": "x"}
    redact = Redactor([*secrets_in(env), "push-token-123456"], [*DEFAULT_PATTERNS, r"corp-\d+"])
    text = (
        "key hunter2hunter2 then push-token-123456, an aet_abcdefghijklmnop token, "
        "ghp_abcdefghijklmnopqrstuvwxyz123456, corp-991 and Bearer abcdefghijklmnopqrstu"
    )
    out = redact(text)
    for secret in ("hunter2", "push-token", "aet_abc", "ghp_", "corp-991", "abcdefghijklmnopqrstu"):
        assert secret not in out
    assert out.count(REDACTED) == 6
    assert secrets_in(env) == ["sk-ant-api03-abcdefghijkl", "hunter2hunter2"]


def test_a_pattern_after_its_prefilter_redacts_what_it_alone_would() -> None:
    """A pattern that starts with a word boundary is first searched for without it (a
    fast substring search); the texts below hold every default pattern's match, text
    that the pattern without its boundary matches but the pattern does not, and none."""
    patterns = [*DEFAULT_PATTERNS, r"(?i)\bcorp-\d+", r"\b(?:foo|bar)\d"]
    assert [prefilter(p) is not None for p in patterns] == [
        False,
        True,
        True,
        True,
        True,
        False,
        True,
        True,
        False,
    ]
    texts = [
        "aet_abcdefghijklmnop ghp_abcdefghijklmnopqrstuvwxyz123456 github_pat_"
        + "a" * 22
        + " AKIAABCDEFGHIJKLMNOP bearer abcdefghijklmnopqrstu CORP-7 foo1",
        "xaet_abcdefghijklmnop xghp_abcdefghijklmnopqrstuvwxyz123456 xAKIAABCDEFGHIJKLMNOP"
        " unbearer abcdefghijklmnopqrstu xcorp-7",
        "ordinary words about github, bearings and a corporate plan " * 40,
        "",
    ]
    redact = Redactor([], patterns)
    for text in texts:
        alone = text
        for pattern in patterns:
            alone = re.sub(pattern, REDACTED, alone)
        assert redact(text) == alone
    assert redact(texts[0]).count(REDACTED) == 7
    assert redact(texts[1]) == texts[1]


def test_a_bad_redaction_pattern_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="AETHER_AGENT_TRANSCRIPT_REDACT"):
        check_patterns(["(unclosed"])


def test_journal_records_become_turns_tool_calls_commands_and_notes() -> None:
    reader = RecordReader()
    begin = reader.entry({"kind": "begin", "prompt": "do it"})
    turn = reader.entry(
        {
            "kind": "reply",
            "content": [
                {"type": "text", "text": "I will look"},
                {"type": "tool_use", "id": "u1", "name": "read_file", "input": {"path": "a"}},
                {"type": "tool_use", "id": "u2", "name": "run_command", "input": {"command": "ls"}},
            ],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 10, "output_tokens": 2},
        }
    )
    read = reader.entry(
        {"kind": "answer", "block": {"type": "tool_result", "tool_use_id": "u1", "content": "x"}}
    )
    ran = reader.entry(
        {
            "kind": "answer",
            "block": {"type": "tool_result", "tool_use_id": "u2", "content": "$ ls\n[exit]"},
            "command": {"exit_code": 2, "status": "exit code 2 after 0.1 s"},
        }
    )
    nudge = reader.entry({"kind": "answer", "block": {"type": "text", "text": "go"}, "note": "n"})
    assert begin is not None and begin.kind == "prompt" and begin.text == "do it"
    assert turn is not None and turn.kind == "turn" and turn.text == "I will look"
    assert turn.tool == "read_file, run_command" and turn.stop_reason == "tool_use"
    assert turn.usage is not None and turn.usage.input_tokens == 10
    assert read is not None and (read.kind, read.tool, read.arguments) == (
        "tool_call",
        "read_file",
        '{"path": "a"}',
    )
    assert ran is not None and (ran.kind, ran.exit_code, ran.status) == (
        "command",
        2,
        "exit code 2 after 0.1 s",
    )
    assert nudge is not None and (nudge.kind, nudge.text) == ("note", "go")


def test_runs_of_an_attempt_are_counted_on_disk(tmp_path: Path) -> None:
    assert [next_run(tmp_path) for _ in range(3)] == [0, 1, 2]


async def test_a_run_publishes_at_most_its_entries_then_says_the_rest_are_left_out(
    task_repo: Any,
) -> None:
    """An agent that floods its session (an ACP agent announcing tool calls without end)
    does not flood the bus: past ``max_entries`` one note, then nothing."""
    sent: list[Event] = []

    async def emit(event: Event) -> None:
        sent.append(event)

    transcript = Transcript(
        workspace_ready(task_repo, "m-cap"),
        emit,
        lambda: datetime.now(UTC),
        "r1",
        TranscriptSettings(max_entries=3),
        Redactor([], []),
    )
    for n in range(6):
        await transcript.add(Entry(kind="tool_call", tool=f"call {n}"))
    entries = [e for e in sent if isinstance(e, TranscriptRecorded)]
    assert [(e.sequence, e.kind, e.tool) for e in entries[:3]] == [
        (0, "tool_call", "call 0"),
        (1, "tool_call", "call 1"),
        (2, "tool_call", "call 2"),
    ]
    assert [(e.sequence, e.kind) for e in entries[3:]] == [(3, "note")]
    assert "keeps 3 entries" in entries[3].text
    assert transcript.next_sequence == 6


# --- a runner on real NATS -------------------------------------------------------------


async def test_every_step_of_an_attempt_is_published_bounded_and_redacted(
    monkeypatch: pytest.MonkeyPatch,
    task_repo: Any,
    model: Callable[..., Any],
    start_runner: Callable[..., Any],
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
    tool: Any,
    reply: Any,
    finish: Any,
) -> None:
    secret = "s3cr3t-value-the-model-must-not-leak"
    monkeypatch.setenv("AETHER_TEST_DEPLOY_TOKEN", secret)
    loud = "python -c \"print('x' * 5000); raise SystemExit(3)\""
    scripted = model(
        {
            "t1": [
                reply(
                    text_block("Writing the note first."),
                    tool("write_file", path="note.txt", content=f"token: {secret}"),
                ),
                reply(tool("run_command", command=loud)),
                finish("note written"),
            ]
        }
    )
    await start_runner(scripted, transcript=TranscriptSettings(entry_chars=600))
    ready = workspace_ready(task_repo, mission_id)

    await publish(ready)
    await events.first(AgentCompleted)
    await events.wait_for(lambda log: len(log.of(TranscriptRecorded)) >= 6)

    entries = sorted(events.of(TranscriptRecorded), key=lambda e: e.sequence)
    assert [e.sequence for e in entries] == list(range(6))
    assert [e.kind for e in entries] == ["prompt", "turn", "tool_call", "turn", "command", "turn"]
    assert {(e.task_id, e.attempt, e.runtime) for e in entries} == {("t1", 1, "builtin")}
    # The ids are the attempt's and the sequence's: a resumed attempt repeats them.
    assert [e.event_id for e in entries] == [
        derived_id(mission_id, "transcript", "t1", 1, n) for n in range(6)
    ]
    prompt, first, write, _, command, last = entries
    assert "<task>" in prompt.text
    assert first.text == "Writing the note first." and first.tool == "write_file"
    assert first.usage is not None and first.usage.input_tokens == 100
    assert first.stop_reason == "tool_use"
    assert write.tool == "write_file" and '"path": "note.txt"' in write.arguments
    assert secret not in write.arguments and REDACTED in write.arguments
    assert command.exit_code == 3 and command.status.startswith("exit code 3")
    assert command.truncated and len(command.result) <= 600
    assert "characters cut]" in command.result
    assert last.tool == "finish"
    assert all(secret not in e.text + e.arguments + e.result for e in entries)


@pytest.mark.parametrize(("mode", "code"), [("ok", 0), ("crash", 3)])
@needs_sandbox
async def test_a_cli_agents_output_and_exit_status_are_its_transcript(
    mode: str,
    code: int,
    tmp_path: Path,
    task_repo: Any,
    model: Callable[..., Any],
    start_runner: Callable[..., Any],
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
) -> None:
    from aether_agent_runner.runtimes.spec import CommandSpec

    from .test_command_runtime import AGENT

    # The program lives outside the worktree, readable in the sandbox.
    tool = tmp_path / "tool"
    tool.mkdir()
    program = tool / "fake_agent.py"
    program.write_text(AGENT)
    spec = CommandSpec(
        name="fake",
        command=[sys.executable, str(program), mode],
        prompt="stdin",
        usage="json",
        read_only=[str(tool)],
    )
    await start_runner(model({}), runtime="fake", command_runtimes=(spec,))
    await publish(workspace_ready(task_repo, mission_id))

    await events.wait_for(
        lambda log: any(e.kind == "command" for e in log.of(TranscriptRecorded)), timeout=30
    )
    entries = sorted(events.of(TranscriptRecorded), key=lambda e: e.sequence)
    # The first run of the attempt: its entries are numbered from 0.
    assert [e.sequence for e in entries] == list(range(len(entries)))
    output = "\n".join(e.text for e in entries if e.kind == "output")
    assert "reading the task t1" in output
    last = entries[-1]
    assert (last.kind, last.tool, last.exit_code, last.runtime) == ("command", "fake", code, "fake")
    assert last.arguments.endswith(f"fake_agent.py {mode}")
    assert last.status.startswith(f"exit code {code} after ")
    if mode == "crash":
        assert last.is_error and "something broke" in last.result


def test_an_entry_is_cut_to_its_bytes_once_encoded_whatever_its_characters(
    task_repo: Any,
) -> None:
    """With ``entry_chars`` set high, an entry of text JSON writes six bytes a character
    for is cut, marked, to ``ENTRY_BYTES`` once encoded: never a message larger than
    the attempt's credential takes."""
    transcript = Transcript(
        workspace_ready(task_repo, "m-bytes"),
        _ignore,
        lambda: datetime.now(UTC),
        "r1",
        TranscriptSettings(entry_chars=1_000_000),
        Redactor([], []),
    )
    hostile = "\x01é😀" * 50_000
    event = transcript.event(
        Entry(kind="command", text=hostile, arguments=hostile, result=hostile), 0
    )
    assert len(encode(event)) <= ENTRY_BYTES
    assert event.truncated
    assert "bytes cut" in event.result and event.result.startswith("\x01é😀")
    small = transcript.event(Entry(kind="note", text="é" * 3000), 1)
    assert small.text == "é" * 3000 and not small.truncated


async def _ignore(event: Event) -> None:
    return None

"""An attempt's stream: everything emitted is stored, in the order emitted, by the time
``close`` returns; a lost telemetry entry does not fail the attempt, a lost usage record
does."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from aether_agent_runner.adapters.stream import (
    BYTES_PER_MESSAGE,
    ENTRIES_PER_MESSAGE,
    AttemptStream,
)
from aether_agent_runner.domain import decide
from aether_events import (
    ATTEMPT_EVENT_BYTES,
    TELEMETRY_STREAM,
    AgentFailed,
    AgentProgress,
    Event,
    PlannedTask,
    TranscriptEntries,
    TranscriptRecorded,
    Usage,
    UsageRecorded,
    WorkspaceReady,
    carried_by,
    encode,
    entries_of,
)
from aether_events.testing import InMemoryPublisher

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def ready(mission_id: str) -> WorkspaceReady:
    return WorkspaceReady(
        event_id=f"{mission_id}-ready",
        mission_id=mission_id,
        occurred_at=NOW,
        correlation_id="c",
        task=PlannedTask(id="t1", title="t"),
        attempt=1,
        model="claude",
        branch=f"aether-tasks/{mission_id}/t1/a1",
        worktree_path="/wt",
        base_sha="b" * 40,
    )


async def test_every_emitted_event_is_stored_in_order_before_close_returns() -> None:
    # The in-memory publisher stores in publish order, as JetStream does
    # (tests/contracts/test_publisher.py).
    publisher = InMemoryPublisher()
    workspace = ready("m-order")
    # A buffer far smaller than what is emitted: emitting waits for room, nothing is lost.
    stream = AttemptStream(lambda: publisher, buffer=2)
    emitted = [decide.started(workspace, NOW, "r", None)] + [
        decide.usage_recorded(workspace, NOW, turn, Usage(input_tokens=turn), False)
        for turn in range(1, 21)
    ]
    for event in emitted:
        await stream.emit(event)
    await stream.close()

    stored = publisher.of(UsageRecorded)
    assert [e.event_id for e in stored] == [e.event_id for e in emitted[1:]]
    assert [e.usage.input_tokens for e in stored] == list(range(1, 21))


class Refusing:
    """A publisher that refuses every event of the given types (a full stream, a lost
    connection) and takes the others."""

    def __init__(self, refused: tuple[type[Event], ...]) -> None:
        self.refused = refused
        self.taken: list[Event] = []

    async def publish(self, event: Event) -> None:
        await asyncio.sleep(0)
        if isinstance(event, self.refused):
            raise ConnectionError("refused")
        self.taken.append(event)


async def test_lost_progress_and_transcript_entries_do_not_fail_the_attempt() -> None:
    workspace = ready("m1")
    refusing = Refusing((AgentProgress, TranscriptRecorded))
    stream = AttemptStream(lambda: refusing)  # type: ignore[arg-type,return-value]
    progress = decide.progressed(
        workspace, NOW, "r", turns=1, tool_calls=0, files_changed=[], usage=Usage(), last_action=""
    )
    usage = decide.usage_recorded(workspace, NOW, 1, Usage(), False)
    await stream.emit(progress)
    await stream.emit(usage)
    await stream.close()
    assert refusing.taken == [usage]


async def test_a_lost_usage_record_fails_the_attempt_at_the_next_emit_and_at_close() -> None:
    workspace = ready("m1")
    refusing = Refusing((UsageRecorded,))
    stream = AttemptStream(lambda: refusing)  # type: ignore[arg-type,return-value]
    await stream.emit(decide.usage_recorded(workspace, NOW, 1, Usage(), False))
    with pytest.raises(ConnectionError):
        await stream.close()
    with pytest.raises(ConnectionError):
        await stream.emit(decide.started(workspace, NOW, "r", None))


class GatedPublisher(InMemoryPublisher):
    """Stores nothing until ``gate`` opens: a publish that cannot get through (an
    attempt's connection whose credential is being refused)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.waiting = asyncio.Event()

    async def publish(self, event: Event) -> Any:
        self.waiting.set()
        await self.gate.wait()
        return await super().publish(event)


async def test_an_abandoned_stream_drops_what_is_queued_and_closes_at_once() -> None:
    publisher = GatedPublisher()
    workspace = ready("m-abandoned")
    stream = AttemptStream(lambda: publisher)
    await stream.emit(decide.started(workspace, NOW, "r", None))
    await stream.emit(decide.usage_recorded(workspace, NOW, 1, Usage(input_tokens=1), False))
    await asyncio.wait_for(publisher.waiting.wait(), 120)

    stream.abandon()
    # With the publish still held: a close that waited for the queue would never return.
    await asyncio.wait_for(stream.close(), 120)
    with pytest.raises(RuntimeError):
        await stream.emit(decide.usage_recorded(workspace, NOW, 2, Usage(), False))
    assert publisher.stored() == []


async def test_a_bounded_close_drops_what_the_bus_does_not_take_in_time() -> None:
    """A stopping service waits a bounded time for an attempt's events; the rest is
    dropped (a resumed attempt publishes it again) rather than hold the stop."""
    publisher = GatedPublisher()
    workspace = ready("m-bounded")
    stream = AttemptStream(lambda: publisher)
    await stream.emit(decide.started(workspace, NOW, "r", None))
    await asyncio.wait_for(publisher.waiting.wait(), 120)

    closing = asyncio.ensure_future(stream.close())
    await asyncio.sleep(0)
    closing.cancel()  # the service's stop cancels the handler in its close
    with pytest.raises(asyncio.CancelledError):
        await closing
    # An unbounded close would wait on the held publish for good.
    await asyncio.wait_for(stream.close(within=0.05), 120)
    with pytest.raises(RuntimeError):
        await stream.emit(decide.usage_recorded(workspace, NOW, 1, Usage(), False))
    assert publisher.stored() == []


class CountingGate(GatedPublisher):
    """A gated publisher that also counts the publishes waiting at its gate."""

    def __init__(self) -> None:
        super().__init__()
        self.held = 0

    async def publish(self, event: Event) -> Any:
        self.held += 1
        return await super().publish(event)


async def test_what_is_queued_together_is_sent_together_and_stored_in_order() -> None:
    """A model reply's burst (usage, progress, a transcript entry) waits for one round of
    acknowledgements, not one each: every queued event's publish has started before the
    first is acknowledged, and they are stored in the order emitted."""
    publisher = CountingGate()
    workspace = ready("m-burst")
    stream = AttemptStream(lambda: publisher)
    emitted = [decide.started(workspace, NOW, "r", None)] + [
        decide.usage_recorded(workspace, NOW, turn, Usage(input_tokens=turn), False)
        for turn in range(1, 6)
    ]
    for event in emitted:
        await stream.emit(event)
    # Emitting does not wait (the buffer has room): all six are queued when the sender
    # first looks, and each publish is held at the gate once started.
    for _ in range(400):
        if publisher.held == len(emitted):
            break
        await asyncio.sleep(0.005)
    assert publisher.held == len(emitted)
    publisher.gate.set()
    await stream.close()
    assert [e.event_id for e in publisher.stored()] == [e.event_id for e in emitted]


async def test_a_stream_with_no_publisher_to_send_with_fails_the_attempt() -> None:
    """Sending with no publisher to be had is a lost event like any other: the next emit
    raises it (the sender does not die leaving emits to fill the buffer), and so does
    the close."""

    def no_publisher() -> Any:
        raise RuntimeError("service not connected yet")

    workspace = ready("m-unsent")
    stream = AttemptStream(no_publisher)

    async def emit_until_refused() -> None:
        for turn in range(1, 400):  # until the sender has tried the first
            await stream.emit(decide.usage_recorded(workspace, NOW, turn, Usage(), False))
            await asyncio.sleep(0.005)

    with pytest.raises(RuntimeError, match="not connected"):
        # A bound, not an expectation: a dead sender left the emits waiting for room.
        await asyncio.wait_for(emit_until_refused(), 30)
    with pytest.raises(RuntimeError, match="not connected"):
        await asyncio.wait_for(stream.close(), 120)


def entry(workspace: WorkspaceReady, sequence: int, text: str = "") -> TranscriptRecorded:
    return TranscriptRecorded(
        event_id=f"{workspace.mission_id}-entry-{sequence}",
        mission_id=workspace.mission_id,
        occurred_at=NOW,
        correlation_id="c",
        causation_id=workspace.event_id,
        task_id=workspace.task.id,
        attempt=workspace.attempt,
        runner_id="r",
        sequence=sequence,
        kind="note",
        text=text or f"entry {sequence}",
    )


def entries_stored(publisher: InMemoryPublisher) -> list[Event]:
    return publisher.stored(TELEMETRY_STREAM)


async def test_entries_emitted_within_the_wait_go_out_as_one_message_in_order() -> None:
    publisher = InMemoryPublisher()
    workspace = ready("m-entries")
    stream = AttemptStream(lambda: publisher, linger=30.0)
    for sequence in range(4):
        await stream.emit(entry(workspace, sequence))
    await stream.close()

    [batch] = entries_stored(publisher)
    assert isinstance(batch, TranscriptEntries)
    assert [e.sequence for e in entries_of(batch)] == [0, 1, 2, 3]
    assert (batch.mission_id, batch.task_id, batch.attempt) == ("m-entries", "t1", 1)
    assert batch.causation_id == workspace.event_id
    # Its id names the entries it carries: the same grouping sent again is one message.
    again = InMemoryPublisher()
    stream = AttemptStream(lambda: again, linger=30.0)
    for sequence in range(4):
        await stream.emit(entry(workspace, sequence))
    await stream.close()
    assert [e.event_id for e in entries_stored(again)] == [batch.event_id]


async def test_an_entry_alone_goes_out_as_itself_once_it_has_waited() -> None:
    publisher = InMemoryPublisher()
    workspace = ready("m-alone")
    stream = AttemptStream(lambda: publisher, linger=0.05)
    await stream.emit(entry(workspace, 0))
    # Sent by the wait's end, not only by the close.
    for _ in range(400):
        if entries_stored(publisher):
            break
        await asyncio.sleep(0.005)
    assert [type(e) for e in entries_stored(publisher)] == [TranscriptRecorded]
    await stream.emit(entry(workspace, 1))
    await stream.emit(entry(workspace, 2))
    await stream.close()
    stored = entries_stored(publisher)
    assert [type(e) for e in stored] == [TranscriptRecorded, TranscriptEntries]
    assert [e.sequence for e in stored for e in entries_of(e)] == [0, 1, 2]


async def test_other_events_do_not_wait_for_the_entries() -> None:
    publisher = InMemoryPublisher()
    workspace = ready("m-progress")
    stream = AttemptStream(lambda: publisher, linger=30.0)
    await stream.emit(entry(workspace, 0))
    progress = decide.progressed(
        workspace, NOW, "r", turns=1, tool_calls=0, files_changed=[], usage=Usage(), last_action=""
    )
    await stream.emit(progress)
    for _ in range(400):
        if publisher.of(AgentProgress):
            break
        await asyncio.sleep(0.005)
    assert publisher.of(AgentProgress) == [progress]
    assert publisher.of(TranscriptRecorded) == []
    await stream.close()
    assert [e.sequence for e in publisher.of(TranscriptRecorded)] == [0]


async def test_an_attempt_ended_within_the_wait_is_one_message_carrying_its_start_and_usage() -> (
    None
):
    """The start and each model call's usage wait with the entries; what still waits
    when the attempt ends goes out inside its result, in the order emitted, each with
    its own id, and nothing of it alone."""
    publisher = InMemoryPublisher()
    workspace = ready("m-carried")
    stream = AttemptStream(lambda: publisher, linger=30.0)
    started = decide.started(workspace, NOW, "r", "bubblewrap")
    first = decide.usage_recorded(workspace, NOW, 1, Usage(input_tokens=1), False)
    second = decide.usage_recorded(workspace, NOW, 2, Usage(input_tokens=2), False)
    for event in (started, entry(workspace, 0), first, entry(workspace, 1), second):
        await stream.emit(event)
    await asyncio.sleep(0.05)
    assert publisher.stored() == []  # all of it waits
    result = decide.failed(workspace, NOW, "done", retryable=False)
    ack = await stream.close(then=result)

    [stored] = publisher.stored()
    assert isinstance(stored, AgentFailed) and stored.event_id == result.event_id
    assert stored.carried == [started, first, second]
    assert carried_by(stored) == [started, first, second, stored]
    assert ack is not None and ack.seq == 1
    assert [e.sequence for e in publisher.of(TranscriptRecorded)] == [0, 1]


async def test_what_waits_goes_out_alone_once_it_has_waited() -> None:
    """An attempt longer than the wait reports its start and usage as it did: alone,
    in order, and its result carries nothing."""
    publisher = InMemoryPublisher()
    workspace = ready("m-waited")
    stream = AttemptStream(lambda: publisher, linger=0.05)
    started = decide.started(workspace, NOW, "r", None)
    usage = decide.usage_recorded(workspace, NOW, 1, Usage(input_tokens=1), False)
    await stream.emit(started)
    await stream.emit(usage)
    for _ in range(400):
        if len(publisher.stored()) == 2:
            break
        await asyncio.sleep(0.005)
    assert publisher.stored() == [started, usage]
    later = decide.usage_recorded(workspace, NOW, 2, Usage(input_tokens=2), False)
    await stream.emit(later)
    result = decide.failed(workspace, NOW, "done", retryable=False)
    await stream.close(then=result)
    stored = publisher.stored()
    assert stored[:2] == [started, usage]
    assert isinstance(stored[2], AgentFailed) and stored[2].carried == [later]


async def test_what_waits_goes_out_alone_before_any_other_event_and_without_a_result() -> None:
    """Emitted before an event that does not wait, the start and usage go out before
    it; a close with no result of the attempt's own sends them alone, then nothing."""
    publisher = Recording()
    workspace = ready("m-alone-held")
    stream = AttemptStream(lambda: publisher, linger=30.0)  # type: ignore[arg-type,return-value]
    started = decide.started(workspace, NOW, "r", None)
    usage = decide.usage_recorded(workspace, NOW, 1, Usage(input_tokens=1), False)
    progress = decide.progressed(
        workspace, NOW, "r", turns=1, tool_calls=0, files_changed=[], usage=Usage(), last_action=""
    )
    for event in (started, usage, progress):
        await stream.emit(event)
    later = decide.usage_recorded(workspace, NOW, 2, Usage(input_tokens=2), False)
    await stream.emit(later)
    await stream.close()
    assert publisher.taken == [started, usage, progress, later]


async def test_a_stream_without_a_wait_holds_nothing() -> None:
    """A CLI agent's stream (no wait: nothing of it is sent again on a resume) sends its
    start and usage alone, and its result carries nothing."""
    publisher = InMemoryPublisher()
    workspace = ready("m-no-hold")
    stream = AttemptStream(lambda: publisher)
    started = decide.started(workspace, NOW, "r", None)
    usage = decide.usage_recorded(workspace, NOW, 1, Usage(input_tokens=1), False)
    await stream.emit(started)
    await stream.emit(usage)
    result = decide.failed(workspace, NOW, "done", retryable=False)
    await stream.close(then=result)
    stored = publisher.stored()
    assert stored[:2] == [started, usage]
    assert isinstance(stored[2], AgentFailed) and stored[2].carried == []


class Recording:
    """A publisher that takes every event, keeping the order they were published in
    across both streams."""

    def __init__(self) -> None:
        self.taken: list[Event] = []

    async def publish(self, event: Event) -> None:
        await asyncio.sleep(0)
        self.taken.append(event)


async def test_many_entries_are_split_so_no_message_is_too_large() -> None:
    publisher = InMemoryPublisher()
    workspace = ready("m-many")
    stream = AttemptStream(lambda: publisher, linger=30.0)
    for sequence in range(150):
        await stream.emit(entry(workspace, sequence))
    # Long entries: fewer of them fit in one message.
    for sequence in range(150, 160):
        await stream.emit(entry(workspace, sequence, "x" * 30_000))
    await stream.close()

    stored = entries_stored(publisher)
    assert [e.sequence for s in stored for e in entries_of(s)] == list(range(160))
    assert all(len(entries_of(s)) <= ENTRIES_PER_MESSAGE for s in stored)
    assert all(len(encode(s)) < 1024 * 1024 for s in stored)
    assert len(stored) >= 5


@pytest.mark.parametrize(
    "character",
    [
        pytest.param("\u00e9", id="two-bytes"),
        pytest.param("\U0001f600", id="four-bytes"),
        # A control character: one byte of UTF-8, six once JSON escapes it (``\u0001``).
        pytest.param("\x01", id="six-in-json"),
    ],
)
async def test_entries_are_grouped_by_their_encoded_bytes_not_their_characters(
    character: str,
) -> None:
    """Entries whose characters would all fit one message, counted as characters (or at
    four bytes a character), but not once encoded: split so that no message is larger
    than ``BYTES_PER_MESSAGE`` and the attempt credential's largest, every entry kept,
    in order."""
    publisher = InMemoryPublisher()
    workspace = ready("m-bytes")
    stream = AttemptStream(lambda: publisher, linger=30.0)
    # About 60 KB each once encoded, whatever the character: 3 such entries are more
    # than one message holds, though their characters number far fewer.
    one = len(encode(entry(workspace, 0, character * 1001))) - len(
        encode(entry(workspace, 0, character))
    )
    count = 60_000 * 1000 // one
    texts = [character * count for _ in range(6)]
    assert sum(len(t) for t in texts[:3]) < BYTES_PER_MESSAGE  # fits by characters
    for sequence, text in enumerate(texts):
        await stream.emit(entry(workspace, sequence, text))
    await stream.close()

    stored = entries_stored(publisher)
    assert [e.sequence for s in stored for e in entries_of(s)] == list(range(6))
    assert [e.text for s in stored for e in entries_of(s)] == texts
    sizes = [len(encode(s)) for s in stored]
    assert all(size <= BYTES_PER_MESSAGE + 1024 for size in sizes), sizes
    assert all(size <= ATTEMPT_EVENT_BYTES for size in sizes), sizes
    assert len(stored) >= 3


async def test_without_a_wait_only_entries_queued_together_go_out_together() -> None:
    """A CLI agent's stream (no wait: its entries are not sent again on a resume) sends
    each entry as soon as it can; what queued meanwhile goes in one message."""
    publisher = CountingGate()
    workspace = ready("m-no-wait")
    stream = AttemptStream(lambda: publisher)
    await stream.emit(entry(workspace, 0))
    for _ in range(400):
        if publisher.held == 1:
            break
        await asyncio.sleep(0.005)
    assert publisher.held == 1
    await stream.emit(entry(workspace, 1))
    await stream.emit(entry(workspace, 2))
    publisher.gate.set()
    await stream.close()
    stored = entries_stored(publisher)
    assert [type(e) for e in stored] == [TranscriptRecorded, TranscriptEntries]
    assert [e.sequence for s in stored for e in entries_of(s)] == [0, 1, 2]


async def test_the_result_goes_out_right_behind_the_last_entries_with_one_wait() -> None:
    """What is left at the attempt's end is its last transcript entries, which are
    telemetry: the result is sent behind them before either is acknowledged (one round
    of acknowledgements, not two), stored last, and ``close`` returns its
    acknowledgement."""
    publisher = CountingGate()
    workspace = ready("m-result")
    stream = AttemptStream(lambda: publisher, linger=30.0)
    for sequence in (1, 2):
        await stream.emit(entry(workspace, sequence))
    result = decide.failed(workspace, NOW, "done", retryable=False)
    closing = asyncio.create_task(stream.close(then=result))
    for _ in range(400):
        if publisher.held == 2:
            break
        await asyncio.sleep(0.005)
    # Both started: the entries (one message) and the result, neither acknowledged yet.
    assert publisher.held == 2
    assert publisher.stored() == [] and entries_stored(publisher) == []
    publisher.gate.set()
    ack = await closing
    assert [e.event_id for e in publisher.stored()] == [result.event_id]
    assert ack is not None and ack.seq == 1
    assert [e.sequence for e in publisher.of(TranscriptRecorded)] == [1, 2]


async def test_the_result_waits_until_a_cost_left_at_the_end_is_stored() -> None:
    """A model call's cost still queued at the end is stored before the result is
    sent: a result stored ahead of a cost that then failed would lose the cost."""
    publisher = CountingGate()
    workspace = ready("m-cost")
    stream = AttemptStream(lambda: publisher)
    usage = decide.usage_recorded(workspace, NOW, 1, Usage(input_tokens=7), False)
    result = decide.failed(workspace, NOW, "done", retryable=False)
    await stream.emit(usage)
    closing = asyncio.create_task(stream.close(then=result))
    for _ in range(400):
        if publisher.held >= 1:
            break
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.05)
    assert publisher.held == 1  # the cost alone: the result waits for its acknowledgement
    publisher.gate.set()
    await closing
    assert publisher.held == 2
    assert [e.event_id for e in publisher.stored()] == [usage.event_id, result.event_id]


async def test_no_result_after_a_lost_cost_and_its_own_loss_fails_the_close() -> None:
    workspace = ready("m-lost")
    result = decide.failed(workspace, NOW, "done", retryable=False)
    refusing = Refusing((UsageRecorded,))
    stream = AttemptStream(lambda: refusing)  # type: ignore[arg-type,return-value]
    await stream.emit(decide.usage_recorded(workspace, NOW, 1, Usage(), False))
    with pytest.raises(ConnectionError):
        await stream.close(then=result)
    assert refusing.taken == []

    refusing = Refusing((type(result),))
    stream = AttemptStream(lambda: refusing, linger=30.0)  # type: ignore[arg-type,return-value]
    await stream.emit(entry(workspace, 1))
    with pytest.raises(ConnectionError):
        await stream.close(then=result)
    # The entry went out all the same, before the result.
    assert [type(e) for e in refusing.taken] == [TranscriptRecorded]

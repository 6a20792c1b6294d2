"""The read model in PostgreSQL: folding events into rows.

Each event, or each run of events waiting together (the live consumers' runs, see
``batches``, and the catch-up's, see ``runs``), is folded in one transaction with the
projection's stream position, under a row lock on that position: an event at or below
the stored position was folded before and is skipped, so redeliveries, the start-up
catch-up, several replicas folding at once and a rebuild running beside the live
projection each change the rows exactly once.

An attempt's result may carry the attempt's start and usage, a TaskReady its waves
(``domain.carried``): each event carried is recorded in ``events`` as a row of its own,
at the carrier's sequence and before it, and folded as if it had come alone. An event id
is recorded once, so one carried after it came alone, or coming alone after it was
carried, is not folded again.

Two positions are kept: the mission stream's (named by the consumer) and the telemetry
stream's (``<consumer>-telemetry``); they count different streams' sequences. Transcript
entries arrive with telemetry and are kept in ``transcript_entries`` (``transcripts``),
which a rebuild does not clear: the telemetry stream forgets them within the hour. At
most ``transcript_max_entries`` are kept an attempt; the rest are counted as dropped (in
``transcript_counts`` and ``aether_transcript_entries_dropped_total``), the count and
the check one primary-key row updated with the insert.

An event that cannot be stored as it is (see ``faults``) never holds the position back:
a sanitised copy, or for an unreadable request a bare mission row, is stored where
possible, the failure is recorded, and the position moves on. A position that jumps
(sequences the consumer never delivered) is noted as a gap, for the projector to check
against the stream and refold.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, LiteralString, TypeVar

import psycopg
from psycopg import AsyncClientCursor, AsyncConnection, AsyncCursor, sql
from psycopg.abc import Params
from psycopg.rows import DictRow, dict_row

from aether_events import Event, MissionRequested, entries_of, tag_of
from aether_gateway.adapters import faults
from aether_gateway.adapters.db import Database, fold_version
from aether_gateway.adapters.faults import EVENT_ERRORS, Stream
from aether_gateway.adapters.rows import (
    INSERTS_MANY,
    MERGE_SESSION_SQL,
    UPSERT_MISSIONS,
    UPSERT_PLANS,
    UPSERT_TASKS,
    convert,
    event_row,
    rows_json,
    session_json,
)
from aether_gateway.adapters.runs import finish_run, fold_events, send_run
from aether_gateway.adapters.stream import Incoming, StoredMessage
from aether_gateway.adapters.transcripts import DEFAULT_MAX_ENTRIES, STORE_ENTRIES, storing
from aether_gateway.domain import (
    Changes,
    Mission,
    MissionView,
    ProjectionFailure,
    SessionUpdate,
    Task,
    carries,
    fold,
    placeholder_mission,
    salvage,
    sanitised,
    session_update,
    tasks_read,
)
from aether_gateway.metrics import PROJECTION_FAILURES, TRANSCRIPT_ENTRIES_DROPPED

log = logging.getLogger("aether.gateway.read_model")

# Everything derived from the streams (never tokens, idempotency keys or rate windows).
DERIVED_TABLES = (
    "tasks",
    "plans",
    "events",
    "missions",
    "usage_records",
    "mission_messages",
    "budget_alerts",
    "agent_sessions",
    "projection_failures",
    "projection_gaps",
)
# The rows of one mission, emptied to refold it (plans and tasks go with the mission).
_MISSION_TABLES = (
    "events",
    "usage_records",
    "mission_messages",
    "budget_alerts",
    "agent_sessions",
)


# The answers ``_read_view`` asked for, and ``_record``'s (the event's insert, then those).
_Reading = tuple[list[str] | None, AsyncCursor[DictRow], AsyncCursor[DictRow] | None]
_Recording = tuple[AsyncCursor[Any], _Reading]
_LOCK_POSITION = "SELECT last_seq FROM projection_position WHERE consumer = %s FOR UPDATE"
T = TypeVar("T")


class Rebuild:
    """Folding inside a rebuild's transaction."""

    def __init__(self, read_model: ReadModel, conn: AsyncConnection) -> None:
        self._read_model = read_model
        self._conn = conn
        self.missions_last = 0
        self.telemetry_last = 0
        self.folded = 0

    async def fold(self, item: Incoming) -> None:
        self.folded += await self._read_model._fold_item(self._conn, item, "missions")
        self.missions_last = max(self.missions_last, item.seq)

    async def fold_run(self, messages: list[StoredMessage]) -> None:
        """Fold a run of mission stream messages as ``fold`` folds each: the events
        together (``runs``), under a savepoint that, should a row be refused, undoes
        them for each half to be folded the same way (``halves``), down to the one
        ``fold`` records; a message without an event alone."""
        events: list[Incoming] = []
        for item in [Incoming.of_message(message) for message in messages]:
            if item.event is not None:
                events.append(item)
                continue
            await self._fold_events(events)
            events = []
            await self.fold(item)
        await self._fold_events(events)

    async def _fold_events(self, items: list[Incoming]) -> None:
        if not items:
            return
        if len(items) == 1:
            await self.fold(items[0])
            return
        run = [(item.event, item.seq) for item in items if item.event is not None]
        try:
            async with self._conn.transaction():
                self.folded += await fold_events(self._conn, run)
        except EVENT_ERRORS:
            for half in halves(items):
                await self._fold_events(half)
            return
        self.missions_last = max(self.missions_last, items[-1].seq)

    async def fold_telemetry(self, event: Event, sequence: int) -> None:
        item = Incoming.of_event(event, sequence)
        await self._read_model._fold_item(self._conn, item, "telemetry")
        self.folded += 1
        self.telemetry_last = max(self.telemetry_last, sequence)


class ReadModel:
    """The gateway's projection, stored in PostgreSQL and named by its consumer."""

    def __init__(
        self,
        db: Database,
        consumer: str = "gateway",
        *,
        transcript_max_entries: int = DEFAULT_MAX_ENTRIES,
    ) -> None:
        self._db = db
        self.consumer = consumer
        # The transcript entries kept of one attempt (the rest counted as dropped).
        self.transcript_max_entries = transcript_max_entries
        self.telemetry_consumer = f"{consumer}-telemetry"
        # The fold version this build stamps its rebuilds with (``db.fold_version``).
        self.fold_version = fold_version()
        # Set when the position jumps over sequences, so the gap is looked at promptly.
        self.gap_found = asyncio.Event()
        self._positions_seen: set[str] = set()

    @property
    def db(self) -> Database:
        return self._db

    # --- positions -------------------------------------------------------------------

    async def position(self, consumer: str | None = None) -> int:
        """The last stream sequence folded (0 before the first)."""
        async with self._db.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT last_seq FROM projection_position WHERE consumer = %s",
                (consumer or self.consumer,),
            )
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def telemetry_position(self) -> int:
        return await self.position(self.telemetry_consumer)

    async def _lock_position(self, conn: AsyncConnection, consumer: str) -> int:
        select = _LOCK_POSITION
        row = None
        if consumer in self._positions_seen:
            # The row exists once made (nothing deletes it): one statement per event, not two.
            row = await (await conn.execute(select, (consumer,))).fetchone()
        if row is None:
            await conn.execute(
                "INSERT INTO projection_position (consumer) VALUES (%s) ON CONFLICT DO NOTHING",
                (consumer,),
            )
            row = await (await conn.execute(select, (consumer,))).fetchone()
        assert row is not None
        self._positions_seen.add(consumer)
        return int(row[0])

    async def _set_position(self, conn: AsyncConnection, consumer: str, sequence: int) -> None:
        await conn.execute(_SET_POSITION, (sequence, consumer))

    # --- folding ---------------------------------------------------------------------

    async def apply(self, event: Event, sequence: int) -> bool:
        """Fold a mission event stored at ``sequence``, unless it was folded already.

        Returns whether the rows changed hands (the event was new to the read model).
        """
        return await self.take(Incoming.of_event(event, sequence))

    async def take(self, item: Incoming) -> bool:
        """Fold one mission stream message above the position, and move the position to
        it: an event, a type this build does not know (only the position moves) or a
        payload that does not decode (recorded as a failure)."""
        # Optimistically without a savepoint (it costs a sixth of a fold); an event that
        # cannot be stored undoes the whole transaction, which then runs again guarded.
        try:
            return await self._take(item, self.consumer, "missions", guarded=False)
        except EVENT_ERRORS:
            return await self._take(item, self.consumer, "missions", guarded=True)

    async def take_run(self, items: list[StoredMessage]) -> int:
        """Fold a run of stored mission stream messages as ``take`` folds each, and
        return how many changed the read model.

        The events are folded together (``runs``): recorded, read and written with a
        few statements per table, in one transaction with the position, so the start-up
        catch-up neither waits for the server once per event nor commits once per
        event. A message without an event (an unknown type, a payload that does not
        decode) is taken alone between the events around it; a run with an event that
        cannot be stored as it is is undone and each half folded the same way
        (``halves``), down to the one event that is recorded as a failure."""
        return await self.take_items([Incoming.of_message(message) for message in items])

    async def take_items(self, incoming: list[Incoming]) -> int:
        """``take_run`` for messages already read (the live consumer's runs, see
        ``batches``): one alone takes the one-event path, which waits for the server
        least; more are folded together, in one transaction with one position move."""
        if len(incoming) == 1:
            return int(await self.take(incoming[0]))
        fresh = 0
        events: list[Incoming] = []
        for item in incoming:
            if item.event is not None:
                events.append(item)
                continue
            fresh += await self._take_events(events)
            events = []
            fresh += await self.take(item)
        return fresh + await self._take_events(events)

    async def _take_events(self, incoming: list[Incoming]) -> int:
        if not incoming:
            return 0
        fresh = 0
        jumped = False
        try:
            async with self._db.folds.connection() as conn, _in_one_go(conn):
                taken = await self._take_events_ahead(conn, incoming)
                if taken is not None:
                    fresh, jumped = taken
                else:
                    # The position is locked and moved once for the run.
                    position = await self._lock_position(conn, self.consumer)
                    run: list[tuple[Event, int]] = []
                    for item in incoming:
                        if item.seq <= position:
                            continue
                        if item.seq > position + 1:
                            await faults.note_gap(conn, self.consumer, position + 1, item.seq - 1)
                            jumped = True
                        assert item.event is not None
                        run.append((item.event, item.seq))
                        position = item.seq
                    fresh = await fold_events(conn, run)
                    await self._set_position(conn, self.consumer, position)
        except EVENT_ERRORS:
            if len(incoming) == 1:
                return int(await self.take(incoming[0]))
            return sum([await self._take_events(half) for half in halves(incoming)])
        if jumped:
            self.gap_found.set()
        return fresh

    async def _take_events_ahead(
        self, conn: AsyncConnection, incoming: list[Incoming]
    ) -> tuple[int, bool] | None:
        """A run as ``_take_scripted`` takes one event: the position's lock goes with the
        run's record and reads, one round trip fewer, and a run the position does not
        lie below (another replica folded part of it) is undone for the slow way
        (``None``)."""
        sequences = [item.seq for item in incoming]
        if self.consumer not in self._positions_seen or sequences != sorted(set(sequences)):
            return None
        locked = await conn.execute(_LOCK_POSITION, (self.consumer,))
        run = [(item.event, item.seq) for item in incoming if item.event is not None]
        sent = await send_run(conn, run)
        row = await locked.fetchone()
        if row is None or sequences[0] <= int(row[0]):
            await _begin_again(conn)
            return None
        position = int(row[0])
        jumped = False
        for sequence in sequences:
            if sequence > position + 1:
                await faults.note_gap(conn, self.consumer, position + 1, sequence - 1)
                jumped = True
            position = sequence
        fresh = await finish_run(conn, sent)
        await self._set_position(conn, self.consumer, position)
        return fresh, jumped

    async def apply_telemetry(self, event: Event, sequence: int) -> bool:
        """Fold a telemetry event (heartbeat, progress) stored at ``sequence``."""
        return await self._take_telemetry(Incoming.of_event(event, sequence))

    async def take_telemetry(self, incoming: list[Incoming]) -> int:
        """Fold a run of telemetry events (in stream order) in one transaction with one
        move of the telemetry position; returns how many were new. A run with an event
        that cannot be stored as it is is undone and each half folded the same way
        (``halves``), so that one is recorded as a failure and the others are folded."""
        if len(incoming) == 1:
            return int(await self._take_telemetry(incoming[0]))
        consumer = self.telemetry_consumer
        fresh = 0
        stores: list[AsyncCursor[Any]] = []
        try:
            async with self._db.folds.connection() as conn, _in_one_go(conn):
                position = await self._lock_position(conn, consumer)
                for item in incoming:
                    if item.seq <= position or item.event is None:
                        continue
                    stores += await self._fold_telemetry(conn, item.event)
                    position = item.seq
                    fresh += 1
                await self._set_position(conn, consumer, position)
        except EVENT_ERRORS:
            return sum([await self.take_telemetry(half) for half in halves(incoming)])
        # Committed: the answers came with the pipeline's one sync.
        await _count_drops(stores)
        return fresh

    async def _take_telemetry(self, item: Incoming) -> bool:
        try:
            return await self._take(item, self.telemetry_consumer, "telemetry", guarded=False)
        except EVENT_ERRORS:
            return await self._take(item, self.telemetry_consumer, "telemetry", guarded=True)

    async def _take(self, item: Incoming, consumer: str, stream: Stream, *, guarded: bool) -> bool:
        async with self._db.folds.connection() as conn:
            if guarded or item.event is None:
                # Statement by statement, so that a refused row is known at its own
                # savepoint.
                async with conn.transaction():
                    fresh, jumped = await self._take_in(conn, item, consumer, stream, guarded)
            else:
                fresh, jumped = await self._take_batched(conn, item, consumer, stream)
        if jumped:
            self.gap_found.set()  # committed: the watch will find the gap
        return fresh

    async def _take_batched(
        self, conn: AsyncConnection, item: Incoming, consumer: str, stream: Stream
    ) -> tuple[bool, bool]:
        """``_take_in`` in two round trips: ``_take_scripted`` once the position's row
        is known to exist, else in pipeline mode, where a statement whose answer is not
        read yet goes with the next one whose answer is (see ``_in_one_go``)."""
        assert item.event is not None
        # A result carrying events is several events to record: the run's statements.
        if consumer in self._positions_seen and not carries(item.event):
            async with _autocommit(conn):
                taken = await self._take_scripted(conn, item.event, item.seq, consumer, stream)
            if taken is not None:
                return taken
            self._positions_seen.discard(consumer)  # the position's row is gone: make it
        async with _in_one_go(conn):
            return await self._take_in(conn, item, consumer, stream, False)

    async def _take_scripted(
        self, conn: AsyncConnection, event: Event, seq: int, consumer: str, stream: Stream
    ) -> tuple[bool, bool] | None:
        """Fold one event with two scripts (``_Script``: statements sent as one query).

        The first begins, locks the position, records the event and reads its rows (or
        writes a telemetry event); the second writes the rows, moves the position and
        commits. Sent one statement at a time, even pipelined, psycopg's work per
        statement (a cursor, the parameters' adaptation, the result's handling) was
        most of a fold's CPU. The lock is taken before the rest runs (the server runs
        them in order); an event at or below the position is undone with everything
        sent for it. ``None``: the position's row is missing (undone too)."""
        first = _Script(conn)
        first.add(_BEGIN)
        first.add(_LOCK_POSITION, (consumer,))
        task_ids: list[str] | None = None
        if stream == "missions":
            first.add(_RECORD_EVENT, event_row(event, seq))
            task_ids = tasks_read(event)
            for query, params in _reads(event.mission_id, task_ids):
                first.add(query, params)
        else:
            for query, params in _telemetry_writes(event, self.transcript_max_entries):
                first.add(query, params)
        cur = await first.run()
        cur.nextset()  # past BEGIN
        row = await cur.fetchone()
        if row is None or seq <= int(row["last_seq"]):
            await conn.execute(_ROLLBACK, prepare=False)
            return None if row is None else (False, False)
        position = int(row["last_seq"])
        jumped = stream == "missions" and seq > position + 1
        if jumped:
            await faults.note_gap(conn, consumer, position + 1, seq - 1)
        second = _Script(conn)
        fresh = True
        dropped = 0
        if stream == "telemetry":
            while cur.nextset():
                if cur.description is not None and cur.description[0].name == "dropped":
                    answer = await cur.fetchone()
                    dropped += int(answer["dropped"]) if answer is not None else 0
        if stream == "missions":
            cur.nextset()
            fresh = await cur.fetchone() is not None
            if fresh:
                cur.nextset()
                mission_row = await cur.fetchone()
                task_rows = None
                if task_ids is None or task_ids:
                    cur.nextset()
                    task_rows = await cur.fetchall()
                view = await self._view_of(conn, event.mission_id, task_ids, mission_row, task_rows)
                for query, params in _writes(fold(view, event, seq)):
                    second.add(query, params)
        second.add(_SET_POSITION, (seq, consumer))
        second.add(_COMMIT)
        await second.run()
        if dropped:
            TRANSCRIPT_ENTRIES_DROPPED.inc(dropped)
        return fresh, jumped

    async def _take_in(
        self, conn: AsyncConnection, item: Incoming, consumer: str, stream: Stream, guarded: bool
    ) -> tuple[bool, bool]:
        """Fold ``item`` in the caller's transaction unless the position is past it;
        returns whether rows changed and whether the position jumped over sequences."""
        position = await self._lock_position(conn, consumer)
        if item.seq <= position:
            return False, False
        # Only the mission stream's sequences are looked at again (telemetry is
        # short-lived, and the next heartbeat says what a lost one would have).
        jumped = stream == "missions" and item.seq > position + 1
        if jumped:
            await faults.note_gap(conn, consumer, position + 1, item.seq - 1)
        if guarded or item.event is None:
            fresh = await self._fold_item(conn, item, stream)
        else:
            fresh = await self._fold_one(conn, item.event, item.seq, stream)
        await self._set_position(conn, consumer, item.seq)
        return fresh, jumped

    async def _fold_item(self, conn: AsyncConnection, item: Incoming, stream: Stream) -> bool:
        """Fold one message inside the caller's transaction; what cannot be stored as it
        is is recorded instead. Returns whether rows changed."""
        if item.unknown:
            return False
        problem = item.problem or "nothing to fold"
        if item.event is not None:
            try:
                async with conn.transaction():  # a savepoint: a refused row undoes only itself
                    return await self._fold_one(conn, item.event, item.seq, stream)
            except EVENT_ERRORS as error:
                problem = faults.describe(error)
        await self._store_what_can_be(conn, item, stream, problem)
        return True

    async def _fold_one(
        self, conn: AsyncConnection, event: Event, sequence: int, stream: Stream
    ) -> bool:
        if stream == "missions":
            return await self._fold(conn, event, sequence)
        await _count_drops(await self._fold_telemetry(conn, event))
        return True

    async def _store_what_can_be(
        self, conn: AsyncConnection, item: Incoming, stream: Stream, problem: str
    ) -> None:
        outcome = "skipped"
        stand_in = sanitised(item.event) if item.event is not None else salvage(item.payload)
        if stand_in is not None:
            try:
                async with conn.transaction():
                    await self._fold_one(conn, stand_in, item.seq, stream)
                outcome = "sanitised"
            except EVENT_ERRORS as error:
                problem = f"{problem}; sanitised, still refused: {faults.describe(error)}"
        if (
            outcome == "skipped"
            and stream == "missions"
            and item.tag == tag_of(MissionRequested)
            and await self._place_holder(conn, item)
        ):
            outcome = "placeholder"
        fresh = await faults.record_failure(
            conn,
            stream=stream,
            seq=item.seq,
            mission_id=item.mission_id,
            event_type=item.tag,
            error=problem,
            outcome=outcome,
        )
        if fresh:
            PROJECTION_FAILURES.inc()
            log.error(
                "event could not be stored as it is; recorded and passed over",
                extra={
                    "stream": stream,
                    "seq": item.seq,
                    "type": item.tag,
                    "outcome": outcome,
                    "error": problem,
                },
            )

    async def _place_holder(self, conn: AsyncConnection, item: Incoming) -> bool:
        if not item.mission_id:
            return False
        view = await self._load_view(conn, item.mission_id)
        if view.mission is not None:
            return False
        await self._write(
            conn, Changes(mission=placeholder_mission(item.mission_id, item.stored_at))
        )
        return True

    async def _fold(self, conn: AsyncConnection, event: Event, sequence: int) -> bool:
        if carries(event):
            return bool(await fold_events(conn, [(event, sequence)]))
        return await self._fold_read(
            conn, event, sequence, *await self._record(conn, event, sequence)
        )

    async def _record(self, conn: AsyncConnection, event: Event, sequence: int) -> _Recording:
        """Record the event and ask for the rows it reads, without waiting for the
        answers (``_fold_read`` reads them)."""
        # The same event id at a new sequence (republished after the stream's duplicate
        # window) is history already: record nothing, fold nothing.
        cur = await conn.execute(_RECORD_EVENT, event_row(event, sequence))
        # Only the rows the event reads: loading every task of the mission for each event
        # made a fold cost grow with the mission's size. They are asked for before the
        # insert's answer is read, so in a pipeline both go in one round trip; for an
        # event recorded before, the rows read (and the mission row locked until the
        # commit) are simply not used.
        reading = await self._read_view(conn, event.mission_id, tasks_read(event))
        return cur, reading

    async def _fold_read(
        self,
        conn: AsyncConnection,
        event: Event,
        sequence: int,
        recorded: AsyncCursor[Any],
        reading: _Reading,
    ) -> bool:
        if await recorded.fetchone() is None:
            return False
        view = await self._view(conn, event.mission_id, *reading)
        await self._write(conn, fold(view, event, sequence))
        return True

    async def _fold_telemetry(self, conn: AsyncConnection, event: Event) -> list[AsyncCursor[Any]]:
        """Send ``event``'s writes; the cursors of its transcript entries' stores, whose
        answers say whether the cap dropped each (``_count_drops``)."""
        stores: list[AsyncCursor[Any]] = []
        for query, params in _telemetry_writes(event, self.transcript_max_entries):
            cursor = await conn.execute(query, params)
            if query is STORE_ENTRIES:
                stores.append(cursor)
        return stores

    @asynccontextmanager
    async def rebuilding(self) -> AsyncIterator[Rebuild]:
        """Replace every derived row, in one transaction: the body folds the streams
        from their start into the ``Rebuild`` it is given, which then sets both positions
        and stamps the rows with this build's fold version.

        The fold version's row, then both positions, are locked first, so the live
        projection waits (and afterwards skips what the rebuild folded), another rebuild
        waits its turn, and the body reads the streams only once nobody else can fold.
        Readers keep seeing the old rows until the commit: rows are deleted, not
        truncated, so no query waits on a table lock.
        """
        async with self._rebuilding(only_if_older=False) as rebuild:
            assert rebuild is not None
            yield rebuild

    @asynccontextmanager
    async def refolding(self) -> AsyncIterator[Rebuild | None]:
        """``rebuilding``, unless the rows are stamped with this build's fold version or a
        later one (another gateway refolded them while this one waited for the lock):
        then ``None``, and nothing changes. Several replicas starting together refold
        once: the fold version's row is their compare-and-set."""
        async with self._rebuilding(only_if_older=True) as rebuild:
            yield rebuild

    @asynccontextmanager
    async def _rebuilding(self, *, only_if_older: bool) -> AsyncIterator[Rebuild | None]:
        async with self._db.pool.connection() as conn, conn.transaction():
            row = await (await conn.execute(_LOCK_FOLD_VERSION)).fetchone()
            if only_if_older and (row is None or int(row[0]) >= self.fold_version):
                yield None
                return
            await self._lock_position(conn, self.consumer)
            await self._lock_position(conn, self.telemetry_consumer)
            for table in DERIVED_TABLES:
                await conn.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier(table)))
            rebuild = Rebuild(self, conn)
            yield rebuild
            await self._set_position(conn, self.consumer, rebuild.missions_last)
            await self._set_position(conn, self.telemetry_consumer, rebuild.telemetry_last)
            await conn.execute(_SET_FOLD_VERSION, (self.fold_version,))

    async def stored_fold_version(self) -> int:
        """The fold version the read model's rows are stamped with."""
        async with self._db.pool.connection() as conn:
            row = await (await conn.execute("SELECT version FROM read_model_fold")).fetchone()
        return int(row[0]) if row else 0

    async def refold_due(self) -> bool:
        """Whether rows folded by an older fold version are in the read model (to be
        folded again: ``refolding``). A read model that has folded nothing yet is
        stamped with this build's version instead: what it folds from now on, this
        build folds. Asked before the start's catch-up; it waits for no rebuild's lock
        unless the rebuild is of an empty read model."""
        if await self.stored_fold_version() >= self.fold_version:
            return False
        async with self._db.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                """
                SELECT EXISTS (SELECT 1 FROM projection_position
                               WHERE consumer = %s AND last_seq > 0)
                    OR EXISTS (SELECT 1 FROM missions)
                """,
                (self.consumer,),
            )
            row = await cur.fetchone()
            if row is not None and row[0]:
                return True
            # Only now the version's row: another gateway's refold holds it for as long
            # as that takes, and this start does not wait for it.
            await conn.execute(
                "UPDATE read_model_fold SET version = %s, updated_at = now() WHERE version < %s",
                (self.fold_version, self.fold_version),
            )
        return False

    async def mission_count(self) -> int:
        async with self._db.pool.connection() as conn:
            row = await (await conn.execute("SELECT count(*) FROM missions")).fetchone()
        return int(row[0]) if row else 0

    async def reset(self) -> None:
        """Forget everything folded (to rebuild from the start of a new stream)."""
        async with self._db.pool.connection() as conn, conn.transaction():
            await conn.execute(
                sql.SQL("TRUNCATE {}").format(
                    sql.SQL(", ").join(map(sql.Identifier, DERIVED_TABLES))
                )
            )
            await conn.execute(
                "UPDATE projection_position SET last_seq = 0, updated_at = now()"
                " WHERE consumer = ANY(%s)",
                ([self.consumer, self.telemetry_consumer],),
            )

    async def reset_telemetry_position(self) -> None:
        """Fold the telemetry stream from its start again (it was recreated)."""
        async with self._db.pool.connection() as conn, conn.transaction():
            await self._lock_position(conn, self.telemetry_consumer)
            await self._set_position(conn, self.telemetry_consumer, 0)

    # --- recovery --------------------------------------------------------------------

    async def refold_mission(
        self, mission_id: str, history: Callable[[], Awaitable[list[StoredMessage]]]
    ) -> int:
        """Replace one mission's rows by folding its history again, up to the position.

        ``history`` reads the mission's stored messages; it is called with the position
        locked, so no event of the mission is folded meanwhile, and what lies above the
        position is left for the live projection. Returns the events folded.
        """
        async with self._db.pool.connection() as conn, conn.transaction():
            position = await self._lock_position(conn, self.consumer)
            messages = await history()
            for table in _MISSION_TABLES:
                await conn.execute(
                    sql.SQL("DELETE FROM {} WHERE mission_id = %s").format(sql.Identifier(table)),
                    (mission_id,),
                )
            await conn.execute("DELETE FROM missions WHERE id = %s", (mission_id,))
            await conn.execute(
                "DELETE FROM projection_failures WHERE stream = 'missions' AND mission_id = %s",
                (mission_id,),
            )
            folded = 0
            for message in messages:
                if message.seq > position:
                    break
                folded += await self._fold_item(conn, Incoming.of_message(message), "missions")
        return folded

    async def knows(self, seq: int, event_id: str) -> bool:
        """Whether the event stored at ``seq`` is in the read model (folded, folded
        under another sequence, or recorded as a failure)."""
        async with self._db.pool.connection() as conn:
            cur = await conn.execute(
                """
                SELECT EXISTS (SELECT 1 FROM events WHERE seq = %s OR event_id = %s)
                    OR EXISTS (SELECT 1 FROM projection_failures
                               WHERE stream = 'missions' AND seq = %s)
                """,
                (seq, event_id, seq),
            )
            row = await cur.fetchone()
        return bool(row and row[0])

    async def failed_at(self, seq: int) -> bool:
        """Whether the mission stream's message at ``seq`` is recorded as a failure."""
        async with self._db.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT 1 FROM projection_failures WHERE stream = 'missions' AND seq = %s",
                (seq,),
            )
            return await cur.fetchone() is not None

    async def gaps(self) -> list[tuple[int, int]]:
        """Sequence ranges the position moved past without folding, oldest first."""
        async with self._db.pool.connection() as conn:
            return await faults.gaps(conn, self.consumer)

    async def close_gap(self, from_seq: int) -> None:
        async with self._db.pool.connection() as conn, conn.transaction():
            await faults.close_gap(conn, self.consumer, from_seq)

    async def last_folded(self) -> tuple[int, str] | None:
        """The latest event folded at or below the position, as (sequence, event id): a
        message's own event, not one its result carried."""
        async with self._db.pool.connection() as conn:
            cur = await conn.execute(
                """
                SELECT seq, event_id FROM events
                WHERE part = 0
                  AND seq <= (SELECT coalesce(max(last_seq), 0) FROM projection_position
                              WHERE consumer = %s)
                ORDER BY seq DESC LIMIT 1
                """,
                (self.consumer,),
            )
            row = await cur.fetchone()
        return (int(row[0]), str(row[1])) if row else None

    async def failure_count(self) -> int:
        async with self._db.pool.connection() as conn:
            return await faults.failure_count(conn)

    async def failures(self, mission_id: str | None = None) -> list[ProjectionFailure]:
        """Recorded projection failures (of one mission when given)."""
        async with self._db.pool.connection() as conn:
            return await faults.failures(conn, mission_id)

    async def _load_view(
        self, conn: AsyncConnection, mission_id: str, task_ids: list[str] | None = None
    ) -> MissionView:
        """The mission's row and its task rows: all of them, or only ``task_ids`` (then
        with the mission's task count when one of those does not exist)."""
        return await self._view(
            conn, mission_id, *await self._read_view(conn, mission_id, task_ids)
        )

    async def _read_view(
        self, conn: AsyncConnection, mission_id: str, task_ids: list[str] | None
    ) -> _Reading:
        """Send the reads of ``_load_view`` without waiting for their answers (which a
        pipeline then brings with the next statement whose answer is read)."""
        reads = _reads(mission_id, task_ids)
        mission = conn.cursor(row_factory=dict_row)
        await mission.execute(*reads[0])
        if len(reads) == 1:
            return task_ids, mission, None
        tasks = conn.cursor(row_factory=dict_row)
        await tasks.execute(*reads[1])
        return task_ids, mission, tasks

    async def _view(
        self,
        conn: AsyncConnection,
        mission_id: str,
        task_ids: list[str] | None,
        mission_cur: AsyncCursor[DictRow],
        tasks_cur: AsyncCursor[DictRow] | None,
    ) -> MissionView:
        """The view from the answers to ``_read_view``."""
        async with mission_cur:
            mission_row = await mission_cur.fetchone()
        rows = None
        if tasks_cur is not None:
            async with tasks_cur:
                rows = await tasks_cur.fetchall()
        return await self._view_of(conn, mission_id, task_ids, mission_row, rows)

    async def _view_of(
        self,
        conn: AsyncConnection,
        mission_id: str,
        task_ids: list[str] | None,
        mission_row: DictRow | None,
        rows: list[DictRow] | None,
    ) -> MissionView:
        """The view from the rows ``_reads`` read (``rows`` is ``None`` when no task
        row was asked for)."""
        if mission_row is None:
            return MissionView()
        mission = convert(mission_row, Mission)
        if rows is None:
            return MissionView(mission=mission, task_count=None)
        tasks = {t.task_id: t for t in (convert(r, Task) for r in rows)}
        count = None
        if task_ids is not None and not set(task_ids) <= tasks.keys():
            cur = await conn.execute(
                "SELECT count(*) FROM tasks WHERE mission_id = %s", (mission_id,)
            )
            row = await cur.fetchone()
            count = int(row[0]) if row else 0
        return MissionView(mission=mission, tasks=tasks, task_count=count)

    async def _write(self, conn: AsyncConnection, changes: Changes) -> None:
        for query, params in _writes(changes):
            await conn.execute(query, params)


Statement = tuple[bytes | LiteralString, Params | None]

# The same event id at a new sequence (republished after the stream's duplicate window)
# is history already: record nothing, fold nothing.
_RECORD_EVENT = b"""
INSERT INTO events (seq, part, mission_id, type, task_id, event_id, occurred_at, payload)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s::jsonb)
ON CONFLICT DO NOTHING
RETURNING seq
"""
_LOCK_FOLD_VERSION = b"SELECT version FROM read_model_fold FOR UPDATE"
_SET_FOLD_VERSION = b"UPDATE read_model_fold SET version = %s, updated_at = now()"
_SET_POSITION = (
    b"UPDATE projection_position SET last_seq = %s, updated_at = now() WHERE consumer = %s"
)


def halves(items: list[T]) -> list[list[T]]:
    """A run undone for one message that cannot be stored as it is, split for each half
    to be folded as a run again: the bad message is found in about two runs per halving
    (under twenty for a catch-up's run of 500) rather than by folding every message of the
    run alone, one transaction each."""
    middle = len(items) // 2
    return [items[:middle], items[middle:]]


def _reads(mission_id: str, task_ids: list[str] | None) -> list[Statement]:
    """The mission's row (locked), then its task rows: all of them, some, or (for an
    empty ``task_ids``) no statement."""
    reads: list[Statement] = [(b"SELECT * FROM missions WHERE id = %s FOR UPDATE", (mission_id,))]
    if task_ids is None:
        reads.append((b"SELECT * FROM tasks WHERE mission_id = %s", (mission_id,)))
    elif task_ids:
        reads.append(
            (
                b"SELECT * FROM tasks WHERE mission_id = %s AND task_id = ANY(%s)",
                (mission_id, task_ids),
            )
        )
    return reads


def _writes(changes: Changes) -> list[Statement]:
    """The statements that write a fold's changes, in order. Rows go as JSON (the runs'
    statements, ``rows``): one parameter a row, encoded by msgspec, rather than one
    per column adapted by psycopg one at a time."""
    out: list[Statement] = []
    if changes.mission is not None:
        out.append((UPSERT_MISSIONS, (rows_json([changes.mission]),)))
    if changes.plan is not None:
        out.append((UPSERT_PLANS, (rows_json([changes.plan]),)))
    if changes.removed_tasks:
        assert changes.mission is not None
        out.append(
            (
                b"DELETE FROM tasks WHERE mission_id = %s AND task_id = ANY(%s)",
                (changes.mission.id, changes.removed_tasks),
            )
        )
    if changes.tasks:
        # One statement upserts each row once: a task listed twice keeps its last state,
        # as two upserts one after the other left it.
        tasks = list({task.task_id: task for task in changes.tasks}.values())
        out.append((UPSERT_TASKS, (rows_json(tasks),)))
    for row in (changes.usage, changes.message, changes.alert):
        if row is not None:
            out.append((INSERTS_MANY[type(row)], (rows_json([row]),)))
    if changes.session is not None:
        out.append(_merging(changes.session))
    return out


def _merging(update: SessionUpdate) -> Statement:
    return MERGE_SESSION_SQL, (session_json(update),)


def _telemetry_writes(event: Event, cap: int) -> list[Statement]:
    """What folding a telemetry event writes: its transcript entries (all of them by one
    statement, each under its attempt's ``cap``), or what it says about its agent
    session."""
    entries = entries_of(event)
    if entries:
        return [storing(entries, cap)]
    update = session_update(event)
    return [] if update is None else [_merging(update)]


async def _count_drops(stores: list[AsyncCursor[Any]]) -> None:
    """Count in the metric the entries the cap dropped, from their stores' answers."""
    dropped = 0
    for cursor in stores:
        answer = await cursor.fetchone()
        if answer is not None:
            dropped += int(answer[0] if not isinstance(answer, dict) else answer["dropped"])
    if dropped:
        TRANSCRIPT_ENTRIES_DROPPED.inc(dropped)


class _Script:
    """Statements sent to the server as one query: one execute and one round trip for
    all of them, their parameters bound here (psycopg's client-side binding, with the
    connection's own escaping). Statements after one that fails are not run, and the
    error is raised by ``run``. The connection must be in autocommit mode (psycopg
    would otherwise send a ``BEGIN`` of its own first): a script begins and ends its
    transaction itself."""

    def __init__(self, conn: AsyncConnection) -> None:
        self._cursor = AsyncClientCursor(conn, row_factory=dict_row)
        self._encoding = conn.info.encoding
        self._parts: list[str] = []

    def add(self, query: bytes | LiteralString, params: Params | None = None) -> None:
        self._parts.append(self._cursor.mogrify(query, params))

    async def run(self) -> AsyncClientCursor[DictRow]:
        """Send the statements; the cursor is at the first one's answer."""
        script = ";\n".join(self._parts).encode(self._encoding)
        await self._cursor.execute(script, prepare=False)
        return self._cursor


@contextlib.asynccontextmanager
async def _autocommit(conn: AsyncConnection) -> AsyncIterator[None]:
    """``conn`` in autocommit mode for the block (whose statements begin and end their
    transaction); whatever fails inside is rolled back. The connection leaves in its
    usual mode, or is closed (the pool then replaces it) when it cannot be put back."""
    await conn.set_autocommit(True)
    try:
        yield
    except BaseException:
        with contextlib.suppress(psycopg.Error):
            await conn.rollback()
        raise
    finally:
        try:
            await conn.set_autocommit(False)
        except psycopg.Error:
            await conn.close()


@contextlib.asynccontextmanager
async def _in_one_go(conn: AsyncConnection) -> AsyncIterator[None]:
    """A transaction in pipeline mode whose begin and commit travel with its statements.

    psycopg begins a transaction in pipeline mode with a round trip of its own (it
    sends its ``BEGIN`` with a sync and waits), and ending the pipeline after its
    ``commit()`` is another sync to wait for: two of an event's four round trips, and
    each costs the gateway CPU (a wait on the socket, a timer, a loop turn), not only
    time. Here the connection is in autocommit mode while the block runs, so psycopg
    begins nothing; ``BEGIN`` goes out with the first statement and ``COMMIT`` with the
    last, and the pipeline's end is the one sync. A statement that fails aborts the
    transaction (the server skips the rest until the sync) and the error is raised;
    ``_pipelined`` then rolls back. The connection leaves in its usual mode, or is
    closed (the pool then replaces it) when it cannot be put back."""
    async with _autocommit(conn), _pipelined(conn):
        await conn.execute(_BEGIN, prepare=False)
        yield
        await conn.execute(_COMMIT, prepare=False)


async def _begin_again(conn: AsyncConnection) -> None:
    """Undo what an ``_in_one_go`` block sent so far, and go on in a new transaction."""
    await conn.execute(_ROLLBACK, prepare=False)
    await conn.execute(_BEGIN, prepare=False)


_BEGIN = b"BEGIN"
_COMMIT = b"COMMIT"
_ROLLBACK = b"ROLLBACK"


@contextlib.asynccontextmanager
async def _pipelined(conn: AsyncConnection) -> AsyncIterator[None]:
    """``conn`` in pipeline mode; whatever fails inside is rolled back (the caller
    commits). A connection too broken to roll back is the pool's to discard; the error
    that matters is the one that got here."""
    try:
        async with conn.pipeline():
            yield
    except asyncio.CancelledError:
        # Stopped mid-pipeline (a catch-up cut short): what the server has of it is not
        # known, and rolling back would wait for its answers in a task told to stop.
        # Closed, the connection takes its transaction (and the position's lock) with
        # it, and the pool replaces it.
        await conn.close()
        raise
    except BaseException:
        with contextlib.suppress(psycopg.Error):
            await conn.rollback()
        raise

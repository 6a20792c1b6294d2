"""``aether backup`` and ``aether restore``: the system of record to a file and back.

What is kept is what cannot be rebuilt: every stored message of the ``AETHER_MISSIONS``
stream (with its subject, headers and sequence) and the stream's configuration, and the
gateway's ``api_tokens``. The rest is derived: the services fold the stream when they
start, the gateway folds its read model from it, the planner's journal and the telemetry
stream only matter while work is in flight (see docs/operations.md, "Backups").

Both reach NATS as the bus administrator and PostgreSQL as the gateway's role. Under
``aether up`` they take those from the home (``credentials/``, owner-readable only): the
running stack's servers, or, when no stack runs on the home, its NATS and PostgreSQL
started for the command alone, with the home locked meanwhile so no ``up`` starts the
services during a restore. Elsewhere ``--nats-url`` and ``--database-url`` name them (with
credentials that may read and create the stream: the administrator's; no service's user
may, by design, see ``aether_runtime.bus_auth``).

The services' event ids are keyed with the deployment's event id secret (decision 0031),
and exactly once across a restore rests on the duplicate window knowing a repeated step's
id: the target must key with the source's secret. So the backup's header records a
fingerprint of it (``aether.credentials.event_id_fingerprint``, never the secret), taken
from where the services get it: the running stack's record, else
``AETHER_EVENT_ID_SECRET`` (or ``_FILE``) as ``aether up`` would take it, else the home's
``credentials/event-id.secret``; with ``--nats-url``, the environment's only. A restore
refuses a target with another, or an ``aether up`` home with none yet, before it starts
or writes anything; a stopped home restored into with ``AETHER_EVENT_ID_SECRET`` given
keeps that secret. The backup does not carry the secret: it would make every copy of the
backup a credential.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import shlex
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nats
import psycopg
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import StreamConfig
from nats.js.errors import NotFoundError
from psycopg.rows import dict_row

from aether import archive, supervise
from aether.archive import ArchiveError, Message, StreamPart, Token
from aether.commands import UsageError
from aether.credentials import (
    EVENT_ID_SECRET_FILE,
    event_id_fingerprint,
    given_event_id_secret,
    write_private,
)
from aether.render import counted
from aether_events import ALL_MISSION_EVENTS, MISSIONS_STREAM
from aether_events.replay import stored_batches

TOKEN_COLUMNS = (
    "id",
    "name",
    "token_hash",
    "prefix",
    "scopes",
    "created_at",
    "created_by",
    "expires_at",
    "revoked_at",
    "last_used_at",
)


SECRET_ENV = "AETHER_EVENT_ID_SECRET"  # noqa: S105 - its name, not its value


@dataclass(frozen=True)
class EventIdKey:
    """Which event id secret a deployment's services key their ids with, as far as the
    command can tell: its fingerprint, or ``None`` with why not."""

    fingerprint: str | None
    # Where it comes from, for messages ("AETHER_EVENT_ID_SECRET", "<home>/credentials/
    # event-id.secret", "the stack running on <home>"), or why it is not known.
    source: str
    # The operator's own secret (``AETHER_EVENT_ID_SECRET``), which a stopped home
    # restored into keeps; ``None`` when it came from elsewhere.
    given: str | None = None
    # An ``aether up`` home with no secret yet: its first start makes a new one.
    none_yet: bool = False


def _given_secret() -> str | None:
    """``AETHER_EVENT_ID_SECRET``, else the file ``AETHER_EVENT_ID_SECRET_FILE`` names, as
    the services and ``aether up`` read it; ``None`` when neither is set."""
    try:
        return given_event_id_secret(os.environ) or None
    except OSError as error:
        raise UsageError(f"{SECRET_ENV}_FILE: {error}") from None


def _env_key(where: str) -> EventIdKey:
    given = _given_secret()
    if given is None:
        return EventIdKey(None, f"{where}: {SECRET_ENV} is not set here")
    return EventIdKey(event_id_fingerprint(given), SECRET_ENV, given=given)


def _running_key(home: Path, state: dict[str, Any]) -> EventIdKey:
    recorded = state.get("event_id_key")
    if isinstance(recorded, str) and recorded:
        return EventIdKey(recorded, f"the stack running on {home}")
    return EventIdKey(None, f"the stack running on {home} recorded none (an older `aether up`)")


def _stopped_home_key(home: Path) -> EventIdKey:
    """The secret the next ``aether up`` on ``home`` takes: the operator's, else the one
    kept under the home, else none yet (it makes a new one)."""
    given = _env_key(str(home))
    if given.fingerprint is not None:
        return given
    kept = home / "credentials" / EVENT_ID_SECRET_FILE
    with contextlib.suppress(FileNotFoundError):
        secret = kept.read_text(encoding="utf-8").strip()
        if secret:
            return EventIdKey(event_id_fingerprint(secret), str(kept))
    return EventIdKey(None, f"{home} has no event id secret yet", none_yet=True)


@dataclass
class Servers:
    """Where the stream and the tokens are, and whether Aether's services run on them."""

    nats_url: str
    database_url: str
    # Who the servers are, for messages ("the stack on <home>", "--nats-url").
    where: str
    # A running ``aether up`` (its services run too): its state.
    running: dict[str, Any] | None = None
    home: Path | None = None
    # Which event id secret the services there key their ids with.
    event_id_key: EventIdKey = EventIdKey(None, "not known")


def _home_urls(home: Path, state: dict[str, Any]) -> tuple[str, str]:
    """The administrator's NATS URL and the gateway role's database URL of the stack
    running on ``home``, from its state file and its credentials."""
    from aether_runtime.bus_auth import ADMIN_USER

    credentials = home / "credentials"
    admin = (credentials / "nats" / f"{ADMIN_USER}.password").read_text(encoding="utf-8").strip()
    nats_url = str(state.get("nats_url") or "")
    if not nats_url.startswith("nats://"):
        raise UsageError(f"the stack on {home} recorded no NATS URL")
    nats_url = nats_url.replace("nats://", f"nats://{ADMIN_USER}:{admin}@", 1)
    # postmaster.pid: pid, data directory, start time, port, socket directory, …
    lines = (home / "postgres" / "postmaster.pid").read_text(encoding="utf-8").splitlines()
    port, socket_dir = lines[3].strip(), lines[4].strip()
    password = (credentials / "postgres" / "aether.password").read_text(encoding="utf-8").strip()
    database_url = f"postgresql://aether:{password}@/aether?host={socket_dir}&port={port}"
    return nats_url, database_url


@contextlib.contextmanager
def servers(
    args: argparse.Namespace,
    *,
    fresh_home_ok: bool,
    check: Callable[[EventIdKey], None] | None = None,
) -> Iterator[Servers]:
    """The servers the command works on: ``--nats-url``/``--database-url``, else the home's
    (see the module's docstring). ``fresh_home_ok``: a home with no data yet is made
    (a restore into a new home), else refused. ``check`` is given the servers' event id
    key before any server is started (it raises to refuse)."""
    if args.nats_url or args.database_url:
        if not (args.nats_url and args.database_url):
            raise UsageError("give both --nats-url and --database-url (or neither, for a home)")
        where = "--nats-url and --database-url"
        key = _env_key(where)
        if check is not None:
            check(key)
        yield Servers(args.nats_url, args.database_url, where=where, event_id_key=key)
        return
    from aether.locate import find_home

    home, how = find_home(args.home)
    state = supervise.running_state(home)
    if state is not None:
        nats_url, database_url = _home_urls(home, state)
        key = _running_key(home, state)
        if check is not None:
            check(key)
        yield Servers(
            nats_url,
            database_url,
            f"the stack on {home}",
            running=state,
            home=home,
            event_id_key=key,
        )
        return
    if not fresh_home_ok and not (home / "nats").is_dir():
        raise UsageError(
            f"no Aether data in {home} (the home from {how}): give --home, or --nats-url "
            "and --database-url"
        )
    from aether.stack import Stack

    # Before the lock (which makes the home's directory): a refused restore leaves
    # nothing; with no stack running and none able to start (the lock), the key is the
    # one the next start takes.
    key = _stopped_home_key(home)
    if check is not None:
        check(key)
    lock = supervise.HomeLock(home)
    try:
        lock.acquire()
    except supervise.StackError as error:
        raise UsageError(str(error)) from None
    stack = Stack(home=home, prestart=False)
    try:
        supervise.reap(home)
        supervise.prune_postgres_handles(home / "postgres")
        print(f"starting the NATS and PostgreSQL of {home} (no stack runs there)", flush=True)
        stack.start_infrastructure()
        yield Servers(
            stack.nats_url,
            stack.database_url,
            f"the stopped stack on {home}",
            home=home,
            event_id_key=key,
        )
    finally:
        stack.stop()
        lock.release()


async def _connect(url: str) -> NATS:
    return await nats.connect(url, connect_timeout=5, max_reconnect_attempts=2, name="aether-cli")


# --- backup ------------------------------------------------------------------------


def run_backup(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if path.is_dir():
        raise UsageError(f"{path} is a directory; name the file to write")
    with servers(args, fresh_home_ok=False) as found:
        header = asyncio.run(backup(found, path))
    size = path.stat().st_size
    stream = header.stream
    print(
        f"backed up {counted(header.counts.messages, 'event')} of "
        f"{counted(header.counts.missions, 'mission')} ({stream.name} "
        f"#{stream.first_seq}–#{stream.last_seq}) and {counted(header.counts.tokens, 'API token')}"
        f" from {found.where} to {path} ({size} bytes, sha256 {header.sha256[:12]}…)"
    )
    key = found.event_id_key
    if key.fingerprint is not None:
        print(
            f"event id secret: from {key.source}, recorded by its fingerprint "
            f"{key.fingerprint[:12]}… (not the secret; restore into services keyed with the "
            "same secret)"
        )
    else:
        print(
            f"event id secret: not known ({key.source}): the backup records no fingerprint of "
            f"it, and a restore cannot check that the services it goes to key their event "
            f"ids with the same one (give {SECRET_ENV} to record it)"
        )
    return 0


async def backup(found: Servers, path: Path) -> archive.Header:
    """Write the stream up to its last sequence now, and the tokens, to ``path``."""
    created_at = datetime.now(UTC)
    nc = await _connect(found.nats_url)
    try:
        js = nc.jetstream()
        try:
            info = await js.stream_info(MISSIONS_STREAM)
        except NotFoundError:
            raise UsageError(f"{found.where} has no {MISSIONS_STREAM} stream") from None
        # The consistent point: the last sequence now. Later events are left out.
        first, last = info.state.first_seq, info.state.last_seq
        stream = StreamPart(
            name=MISSIONS_STREAM, config=info.config.as_dict(), first_seq=first, last_seq=last
        )
        with archive.Writer(path) as writer:
            if info.state.messages:
                subjects = list(info.config.subjects or [">"])
                await _copy_messages(js, subjects, first, last, writer)
            for token in _read_tokens(found.database_url):
                writer.add(token)
            return writer.finish(stream, created_at, found.event_id_key.fingerprint)
    finally:
        await nc.close()


# Messages asked for at once by the backup's pull requests.
READ_BATCH = 2048


async def _copy_messages(
    js: JetStreamContext, subjects: list[str], first: int, last: int, writer: Any
) -> None:
    """Every stored message from ``first`` to ``last``, in order, read as the services
    read their history (``aether_events.stored_batches``: an ephemeral pull consumer with
    no acks, ``READ_BATCH`` messages a request); sequences a deleted message left empty
    are not delivered. A stream that stops answering for a while (a cluster electing a
    leader) is read on from where the read stopped."""
    batches = stored_batches(
        js, MISSIONS_STREAM, subjects, after=first - 1, batch=READ_BATCH, patience=30.0
    )
    async with contextlib.aclosing(batches):
        async for batch in batches:
            for raw in batch:
                stored = _stored(raw)
                if stored.seq > last:
                    return
                writer.add(stored)
                if stored.seq == last:
                    return


def _stored(raw: Msg) -> Message:
    """A message as the consumer delivered it, as it is stored: its sequence and store
    time from its reply subject (the time to the microsecond, as the stream's get API
    reports it), its own headers and data."""
    tokens = (raw.reply or "").split(".")
    if len(tokens) == 9:  # $JS.ACK.<stream>.<consumer>.<n>.<seq>.<cseq>.<ns>.<pending>
        seq, nanos = int(tokens[5]), int(tokens[7])
    else:  # with the domain and account hash (and a token of randomness)
        seq, nanos = int(tokens[Msg.Ack.StreamSeq]), int(tokens[Msg.Ack.Timestamp])
    headers = {str(k): str(v) for k, v in (raw.headers or {}).items()} or None
    return Message(
        seq=seq,
        subject=raw.subject,
        data=raw.data or b"",
        headers=headers,
        time=_EPOCH + timedelta(microseconds=nanos // 1000),
    )


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _read_tokens(database_url: str) -> list[Token]:
    columns = ", ".join(TOKEN_COLUMNS)
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        try:
            rows = conn.execute(f"SELECT {columns} FROM api_tokens ORDER BY created_at, id")  # noqa: S608
        except psycopg.errors.UndefinedTable:
            return []  # the gateway never ran on this database
        return [Token(**row) for row in rows.fetchall()]


# --- restore -----------------------------------------------------------------------


class Refused(UsageError):
    """The restore would overwrite or race something: nothing was written."""


def run_restore(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        header = archive.verify(path)  # before anything is started or written
    except ArchiveError as error:
        raise UsageError(f"{error}; nothing was restored") from None
    with servers(
        args, fresh_home_ok=True, check=lambda key: check_event_id_key(header, key)
    ) as found:
        if found.running is not None and not args.while_running:
            raise Refused(
                f"a stack is running on {found.home}: its services would take every restored "
                "event for new work. Stop it first (`aether down"
                f" --home {shlex.quote(str(found.home))}`) and restore again; nothing was "
                "restored"
            )
        restored = asyncio.run(restore(found, path, header, args))
    earlier = f", {restored.resumed} of them by an earlier run" if restored.resumed else ""
    print(
        f"restored {counted(restored.messages, 'event')} of "
        f"{counted(header.counts.missions, 'mission')} ({MISSIONS_STREAM} "
        f"#{restored.first_seq}–#{restored.last_seq}{earlier}) and {restored.tokens} of "
        f"{counted(header.counts.tokens, 'API token')} to {found.where}"
    )
    if found.running is not None:
        _rebuild_read_model(found)
    elif found.home is not None:
        up = f"aether up --home {shlex.quote(str(found.home))}"
        print(
            f"next: start the services (`{up}`): each folds the stream as it starts, and "
            "the gateway folds its read model from it"
        )
    else:
        print(
            "next: start the services: each folds the stream as it starts; a gateway on an "
            "empty database folds its read model from it (or run `aether admin "
            "rebuild-read-model` once it runs)"
        )
    return 0


def check_event_id_key(header: archive.Header, target: EventIdKey) -> None:
    """Refuse (``Refused``) to restore the backup of ``header`` where the services key
    their event ids with another secret than the backup's did, or would make a new one:
    each step the backup's events record and a service there takes again would get
    another id, which the stream's duplicate window does not know, and be stored and
    acted on again. Where either fingerprint is not known, say so on stderr and go on."""
    recorded = header.event_id_key
    if recorded is None:
        print(
            "warning: the backup records no fingerprint of its deployment's event id secret "
            "(made by an older Aether, or where the secret was not known): not checked "
            "that the services restored into key their event ids with the same one. If "
            "they do not, they take again the steps of missions in flight",
            file=sys.stderr,
        )
        return
    if target.fingerprint == recorded:
        return
    if target.fingerprint is None and not target.none_yet:
        print(
            f"warning: which event id secret the services key their ids with is not known "
            f"({target.source}): not checked that it is the backup's. Give {SECRET_ENV} "
            "(the source deployment's) to check it",
            file=sys.stderr,
        )
        return
    way_out = (
        f"Restore into services started with the source's secret: give it as {SECRET_ENV} "
        "(for a source under `aether up`, its home's credentials/event-id.secret)"
    )
    if target.none_yet:
        why = (
            f"{target.source}, and its first start would make a new one, not the one the "
            "backup's events were stored under"
        )
        how = (
            f"{way_out} to this restore (`{SECRET_ENV}=$(cat OLD_HOME/credentials/"
            "event-id.secret) aether restore …`): the home keeps it"
        )
    elif target.given is None and target.source.startswith("the stack running on "):
        why = f"{target.source} keys its event ids with another secret than the backup's"
        how = (
            f"{way_out}: stop it, then restore into the stopped home with {SECRET_ENV} "
            f"set (the home keeps it), or start it again with {SECRET_ENV} set and restore "
            "with --while-running"
        )
    else:
        why = (
            f"the event id secret of {target.source} is another than the one the backup's "
            "events were stored under"
        )
        how = f"{way_out}, and restore again"
    raise Refused(
        f"{why}: the services would not know the restored events as their own steps and "
        f"would take those steps again (a mission worked twice). {how}; nothing was restored"
    )


def _keep_given_secret(found: Servers) -> None:
    """A stopped home restored into with ``AETHER_EVENT_ID_SECRET`` given keeps that
    secret (``credentials/event-id.secret``), so its next ``aether up`` keys with the
    backup's secret without being given it. Called once the stream is known to be empty
    or this backup's start: no event there was stored under the home's former one."""
    key = found.event_id_key
    if found.running is not None or found.home is None or key.given is None:
        return
    kept = found.home / "credentials" / EVENT_ID_SECRET_FILE
    with contextlib.suppress(FileNotFoundError):
        if kept.read_text(encoding="utf-8").strip() == key.given:
            return
    kept.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_private(kept, key.given + "\n")
    print(f"the home keeps the given {SECRET_ENV} from now on ({kept})", flush=True)


@dataclass
class Restored:
    messages: int
    first_seq: int
    last_seq: int
    tokens: int
    # The backup's messages an earlier run of the restore had stored already.
    resumed: int = 0


class Stopped(UsageError):
    """The restore stopped part way: the stream holds the backup's messages up to a
    point, and nothing after it; the same restore run again goes on from there."""


async def restore(
    found: Servers, path: Path, header: archive.Header, args: argparse.Namespace
) -> Restored:
    nc = await _connect(found.nats_url)
    try:
        js = nc.jetstream()
        resumed = await _prepare_stream(js, found, path, header, args)
        _keep_given_secret(found)
        tokens: list[Token] = []
        last: Message | None = None

        def messages() -> Iterator[Message]:
            nonlocal last
            index = 0
            for record in archive.records(path):
                if isinstance(record, Token):
                    tokens.append(record)
                    continue
                last = record
                index += 1
                if index > resumed:
                    yield record

        await _publish_all(js, nc, messages())
        info = await js.stream_info(MISSIONS_STREAM)
        if info.state.messages != header.counts.messages:
            raise UsageError(
                f"the stream holds {info.state.messages} messages after the restore; the "
                f"backup has {header.counts.messages}"
            )
        if last is not None:
            stored = await js.get_msg(MISSIONS_STREAM, info.state.last_seq)
            if (stored.subject, stored.data or b"", _msg_id(stored.headers)) != _identity(last):
                raise UsageError("the last message stored is not the backup's last message")
        await _restored(js)
        restored_tokens = await _restore_tokens(found.database_url, tokens)
        return Restored(
            info.state.messages,
            info.state.first_seq,
            info.state.last_seq,
            restored_tokens,
            resumed,
        )
    finally:
        await nc.close()


def _msg_id(headers: dict[str, str] | None) -> str | None:
    return (headers or {}).get("Nats-Msg-Id")


def _identity(message: Message) -> tuple[str, bytes, str | None]:
    """What makes a stored message the backup's: its subject, data and event id."""
    return message.subject, message.data, _msg_id(message.headers)


async def _prepare_stream(
    js: JetStreamContext,
    found: Servers,
    path: Path,
    header: archive.Header,
    args: argparse.Namespace,
) -> int:
    """Create the stream with the backup's configuration where it is absent or empty, or
    find in it the start of this backup that an earlier run stored before it stopped;
    refuse where it holds anything else. Returns how many of the backup's messages the
    stream holds already (the restore goes on after them)."""
    try:
        info = await js.stream_info(MISSIONS_STREAM)
    except NotFoundError:
        info = None
    held = 0
    if info is not None:
        # Asked first: the check of what the stream holds reads it with a consumer of
        # its own (ephemeral), which is nobody's to refuse for.
        consumers = await js.consumers_info(MISSIONS_STREAM)
        bound = [c.name for c in consumers if c.push_bound or (c.num_waiting or 0) > 0]
        durables = [c for c in consumers if c.config.durable_name]
        if info.state.messages:
            if (info.config.metadata or {}).get(RESTORING) == header.sha256:
                held = await _backup_start_held(js, path, info.state.messages)
            if not held:
                state = info.state
                raise Refused(
                    f"{MISSIONS_STREAM} on {found.where} already holds {state.messages} "
                    f"events (#{state.first_seq}–#{state.last_seq}) that are not the start "
                    "of this backup: a restore goes only into an absent or empty stream, or "
                    "one an earlier run of the same restore stopped in; nothing was restored"
                )
        if bound and not args.while_running:
            raise Refused(
                f"services are reading {MISSIONS_STREAM} on {found.where} (consumers "
                f"{', '.join(sorted(str(name) for name in bound))}): stop them and restore "
                "again, or pass --while-running; nothing was restored"
            )
        if not args.while_running and (durables or not held):
            # Empty, or holding the start of the backup but with durables (made by
            # services that ran on it) that would deliver every restored event as new
            # work: the stream goes, with them, and the restore starts over.
            await js.delete_stream(MISSIONS_STREAM)
            info, held = None, 0
    if held:
        print(
            f"{MISSIONS_STREAM} holds the first {counted(held, 'event')} of this backup (an "
            "earlier restore stopped there): going on after them",
            flush=True,
        )
    config = StreamConfig.from_response(dict(header.stream.config))
    # The server's own notes (``_nats.*``) are its to write; the restore marks the
    # stream as its own until it has stored every message.
    config.metadata = {
        **{
            k: v
            for k, v in (config.metadata or {}).items()
            if not k.startswith("_nats.") and k != RESTORING
        },
        RESTORING: header.sha256,
    }
    if args.replicas is not None:
        config.num_replicas = args.replicas
    if info is None:
        # Sequences as they were: the stream starts where the backup's did.
        if header.stream.first_seq > 1:
            config.first_seq = header.stream.first_seq
        from aether_events.streams import ensure_stream

        await ensure_stream(js, config)
    else:
        config.first_seq = None  # a stream's first sequence is set when it is made
        await js.update_stream(config)
    return held


async def _restored(js: JetStreamContext) -> None:
    """Take the restore's mark off the stream: every message of the backup is in it."""
    config = (await js.stream_info(MISSIONS_STREAM)).config
    metadata = {
        k: v
        for k, v in (config.metadata or {}).items()
        if not k.startswith("_nats.") and k != RESTORING
    }
    config.metadata = metadata or None
    await js.update_stream(config)


# The stream's metadata key a restore marks it with (the backup's checksum) until every
# message is stored: a run of the same restore again goes on only in a stream so marked.
RESTORING = "aether_restoring"


async def _backup_start_held(js: JetStreamContext, path: Path, count: int) -> int:
    """``count`` when the stream's ``count`` stored messages are the backup's first
    ``count``, in order (subject, data and event id each), else 0."""
    backed_up = (r for r in archive.records(path) if isinstance(r, Message))
    compared = 0
    batches = stored_batches(
        js, MISSIONS_STREAM, ALL_MISSION_EVENTS, batch=READ_BATCH, patience=30.0
    )
    async with contextlib.aclosing(batches):
        async for batch in batches:
            for raw in batch:
                wanted = next(backed_up, None)
                if wanted is None or _identity(_stored(raw)) != _identity(wanted):
                    return 0
                compared += 1
                if compared == count:
                    return count
    return 0


# Conditions of the original publish (optimistic concurrency on the stream as it was),
# met when it was stored: checked again against the new stream, they could only refuse.
_PUBLISH_CONDITIONS = "Nats-Expected-"


# Publishes whose acknowledgement is awaited at once; the stream's order is the order
# of the publishes on the one connection, not of their acknowledgements.
PUBLISH_WINDOW = 256
ACK_TIMEOUT = 30.0


async def _publish_all(js: JetStreamContext, nc: NATS, messages: Iterator[Message]) -> None:
    """Publish ``messages`` in order on ``nc``, at most ``PUBLISH_WINDOW`` of them waiting
    for the stream's acknowledgement, each checked in order: stored (not dropped as a
    duplicate, not refused) and at a sequence after the one before.

    When one is not, the messages published after it that the stream stored (up to
    ``PUBLISH_WINDOW`` - 1, sent before its answer came) are deleted again, so the
    stream holds the backup's messages up to the one before it and nothing after:
    ``Stopped`` says where, and the same restore run again goes on from there."""
    inbox = nc.new_inbox()
    waiting: dict[str, asyncio.Future[Msg]] = {}

    async def answered(reply: Msg) -> None:
        future = waiting.pop(reply.subject, None)
        if future is not None and not future.done():
            future.set_result(reply)

    sub = await nc.subscribe(f"{inbox}.*", cb=answered)
    in_flight: collections.deque[tuple[Message, asyncio.Future[Msg]]] = collections.deque()
    previous = (await js.stream_info(MISSIONS_STREAM)).state.last_seq
    reached: Message | None = None
    try:
        try:
            for index, message in enumerate(messages):
                reply = f"{inbox}.{index}"
                waiting[reply] = asyncio.get_running_loop().create_future()
                in_flight.append((message, waiting[reply]))
                headers = {
                    key: value
                    for key, value in (message.headers or {}).items()
                    if not key.startswith(_PUBLISH_CONDITIONS)
                }
                await nc.publish(
                    message.subject, message.data, reply=reply, headers=headers or None
                )
                if len(in_flight) >= PUBLISH_WINDOW:
                    reached, previous = await _acknowledged(*in_flight.popleft(), previous)
            while in_flight:
                reached, previous = await _acknowledged(*in_flight.popleft(), previous)
        except _NotStored as failed:
            await _take_back_after(js, previous, in_flight)
            where = (
                f"the backup's events up to #{reached.seq} (stream #{previous})"
                if reached is not None
                else "what it held before this run"
            )
            raise Stopped(
                f"{failed}: the restore stopped at the backup's event #{failed.message.seq}. "
                f"{MISSIONS_STREAM} holds {where} and nothing after; once the cause is "
                f"dealt with, run the same restore again to go on from #{failed.message.seq}"
                " (or delete the stream, `nats stream rm AETHER_MISSIONS`, to start over)"
            ) from None
    finally:
        for _, future in in_flight:
            future.cancel()
        await sub.unsubscribe()


class _NotStored(Exception):
    def __init__(self, message: Message, why: str) -> None:
        super().__init__(why)
        self.message = message


async def _take_back_after(
    js: JetStreamContext,
    previous: int,
    in_flight: collections.deque[tuple[Message, asyncio.Future[Msg]]],
) -> None:
    """Delete what the stream stored after sequence ``previous``: the messages published
    after the one it did not store, whose answers are awaited first (a message still
    unanswered after ``ACK_TIMEOUT`` may be stored later; a run again finds the stream
    is not the backup's start then, and says so)."""
    for _, future in in_flight:
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(future, ACK_TIMEOUT)
    last = (await js.stream_info(MISSIONS_STREAM)).state.last_seq
    for seq in range(previous + 1, last + 1):
        with contextlib.suppress(NotFoundError):
            await js.delete_msg(MISSIONS_STREAM, seq)


async def _acknowledged(
    message: Message, future: asyncio.Future[Msg], previous: int
) -> tuple[Message, int]:
    """``message`` and the sequence the stream stored it at, once it says so; raises
    ``_NotStored`` when it did not store it, or stored it out of order."""
    try:
        reply = await asyncio.wait_for(future, ACK_TIMEOUT)
    except TimeoutError:
        raise _NotStored(
            message, f"no acknowledgement of event #{message.seq} within {ACK_TIMEOUT:.0f}s"
        ) from None
    if (reply.headers or {}).get("Status") == "503":
        raise _NotStored(message, f"no stream took event #{message.seq}")
    answer = json.loads(reply.data or b"{}")
    if "error" in answer:
        error = answer["error"]
        raise _NotStored(
            message,
            f"the stream refused event #{message.seq}: {error.get('description', error)}",
        )
    if answer.get("duplicate"):
        raise _NotStored(
            message,
            f"the stream dropped event #{message.seq} as a duplicate of an earlier one "
            f"(Nats-Msg-Id {_msg_id(message.headers)!r}, within the duplicate window)",
        )
    seq = int(answer.get("seq", 0))
    if seq <= previous:
        raise _NotStored(
            message, f"event #{message.seq} was stored at #{seq}, not after #{previous}"
        )
    return message, seq


async def _restore_tokens(database_url: str, tokens: list[Token]) -> int:
    """Insert the tokens (the gateway's schema made first, as the gateway makes it);
    a token already there (the same id or digest) is kept as it is."""
    from aether_gateway.adapters.db import Database

    db = Database(database_url, min_size=1, max_size=1)
    await db.open()
    try:
        await db.migrate()
    finally:
        await db.close()
    columns = ", ".join(TOKEN_COLUMNS)
    values = ", ".join(["%s"] * len(TOKEN_COLUMNS))
    inserted = 0
    with psycopg.connect(database_url) as conn, conn.transaction():
        for token in tokens:
            row = [getattr(token, column) for column in TOKEN_COLUMNS]
            cursor = conn.execute(
                f"INSERT INTO api_tokens ({columns}) VALUES ({values}) ON CONFLICT DO NOTHING",  # noqa: S608
                row,
            )
            inserted += cursor.rowcount
    return inserted


def _rebuild_read_model(found: Servers) -> None:
    """Refold the running gateway's read model from the restored stream."""
    from aether.client import GatewayClient
    from aether.credentials import TOKEN_FILE

    assert found.running is not None
    assert found.home is not None
    token = (found.home / TOKEN_FILE).read_text(encoding="utf-8").strip()
    result = GatewayClient(str(found.running["gateway_url"]), token=token).rebuild_read_model()
    print(f"read model rebuilt: {result['events_folded']} events folded")

"""Stream definitions, created or updated idempotently at start-up."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import msgspec
import nats.errors
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError, ServerError

from aether_events.subjects import ALL_MISSION_EVENTS, ALL_TELEMETRY

log = logging.getLogger("aether.events.streams")

MISSIONS_STREAM = "AETHER_MISSIONS"
TELEMETRY_STREAM = "AETHER_TELEMETRY"


# How long the telemetry stream keeps a message (heartbeats, progress, transcript
# entries): the gateway keeps transcript entries from it, so this is the longest a
# gateway may be away without an attempt's entries being lost (a night, a weekend).
TELEMETRY_MAX_AGE_SECONDS = 7 * 24 * 3600.0
# The most the telemetry stream holds, per server: past it the oldest messages go first,
# so a flood of telemetry cannot fill the disk and the newest entries are always taken.
TELEMETRY_MAX_BYTES = 1024**3
# The telemetry stream's duplicate window, at most: a runner that resumes an attempt
# sends its transcript entries again at once, and the gateway keeps the first copy of
# each entry anyway, so a longer window would only cost the server memory (it keeps
# every id of the window) for a stream that holds days of messages.
TELEMETRY_DUPLICATE_WINDOW_SECONDS = 120.0


class StreamSettings(msgspec.Struct, frozen=True, kw_only=True):
    replicas: int = 1
    # Long enough to swallow a republish after a crash-and-restart of any service.
    duplicate_window_seconds: float = 2 * 3600
    telemetry_max_age_seconds: float = TELEMETRY_MAX_AGE_SECONDS
    telemetry_max_bytes: int = TELEMETRY_MAX_BYTES


def stream_configs(settings: StreamSettings) -> list[StreamConfig]:
    """The two streams: durable mission history and short-lived telemetry."""
    return [
        StreamConfig(
            name=MISSIONS_STREAM,
            description="Aether mission events (the system of record)",
            subjects=[ALL_MISSION_EVENTS],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=settings.replicas,
            duplicate_window=settings.duplicate_window_seconds,
            discard=DiscardPolicy.OLD,
        ),
        StreamConfig(
            name=TELEMETRY_STREAM,
            description="Aether agent progress, heartbeats and transcript entries",
            subjects=[ALL_TELEMETRY],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=settings.replicas,
            max_age=settings.telemetry_max_age_seconds,
            max_bytes=settings.telemetry_max_bytes,
            duplicate_window=min(
                TELEMETRY_DUPLICATE_WINDOW_SECONDS, settings.telemetry_max_age_seconds
            ),
            # Past either bound the oldest go: what a gateway has not folded yet is
            # lost from the front, and it counts the sequences it never saw.
            discard=DiscardPolicy.OLD,
        ),
    ]


async def ensure_streams(js: JetStreamContext, settings: StreamSettings | None = None) -> None:
    """Create the streams, or bring an existing one's settings up to date.

    Safe to call from every service at every start, concurrently. A stream that already
    has every setting asked for is left alone: every service updating it at every start
    was a replicated proposal per service on a cluster, and five services starting
    together saw one time out (a service then failed its start). A request that times
    out is asked again, ``REQUEST_TRIES`` times in all.
    """
    for config in stream_configs(settings or StreamSettings()):
        await ensure_stream(js, config)


async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    """Create the stream ``config`` names, or bring its settings up to date (see
    ``ensure_streams``). A request that times out is asked again, ``REQUEST_TRIES`` times
    in all; a store the server cannot create yet, because a deleted stream of that name is
    still being removed, is asked for again for up to ``STORE_WAIT_SECONDS``."""
    clock = asyncio.get_running_loop().time
    store_deadline = clock() + STORE_WAIT_SECONDS
    pause = 0.05
    tries_left = REQUEST_TRIES - 1
    while True:
        try:
            await _ensure_stream(js, config)
            return
        except nats.errors.TimeoutError:
            if not tries_left:
                raise
            tries_left -= 1
            log.warning("stream request timed out; asking again", extra={"stream": config.name})
        except ServerError as error:
            if not store_not_created(error) or clock() > store_deadline:
                raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.5)


def store_not_created(error: Exception) -> bool:
    """Whether ``error`` is the server's "error creating store for stream": a deleted
    stream's directory is removed in the background, and a stream of the same name
    created meanwhile fails so (seen with nats-server 2.15 when streams are deleted and
    created again within milliseconds)."""
    return isinstance(error, ServerError) and error.err_code == STORE_NOT_CREATED


# How many times a stream request that times out is made in all.
REQUEST_TRIES = 3
# JetStream's error code for "error creating store for stream".
STORE_NOT_CREATED = 10049
# How long a stream's creation waits for a deleted namesake's removal to finish.
STORE_WAIT_SECONDS = 10.0


async def _ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    assert config.name is not None
    try:
        current = (await js.stream_info(config.name)).config
    except NotFoundError:
        try:
            await js.add_stream(config)
        except Exception as error:
            if store_not_created(error):
                raise  # asked again by ``ensure_stream``
            # Another service created it between our look and our add; if none did, the
            # stream never shows, and this is why.
            await _until_led(js, config.name, unless=error)
            return
        await _until_led(js, config.name)
        return
    if _has_settings(current, config):
        await _until_led(js, config.name)
        return
    was, now = _durability(current), _durability(config)
    if was != now:
        # Visible, since whoever starts a service with other settings changes the
        # stream for everyone (fewer replicas is less durable).
        log.warning(
            "stream settings changed",
            extra={"stream": config.name, "was": str(was), "now": str(now)},
        )
    await js.update_stream(config)
    await _until_led(js, config.name)


# How long a start waits for a replicated stream to have a leader.
LEADER_WAIT_SECONDS = 30.0
# How long a stream just added (by this service or another) may still be "not found".
UNSEEN_GRACE_SECONDS = 5.0


async def _until_led(js: JetStreamContext, name: str, unless: Exception | None = None) -> None:
    """Wait until the stream ``name`` has a leader (at once on a single server): a
    replicated stream just created or changed elects one first, and until then every
    request about it (a replay's consumer, a publish) times out. A service starting in
    that moment failed its start in CI.

    On a cluster a stream just added can also be "not found" for a moment (five
    services forked at once, all declaring it, failed a start in CI so); it is looked
    for again for ``UNSEEN_GRACE_SECONDS``, and then ``unless`` (why our own add
    failed), else the not-found, is raised."""
    clock = asyncio.get_running_loop().time
    began = clock()
    while True:
        try:
            cluster = (await js.stream_info(name)).cluster
        except NotFoundError:
            if clock() - began > UNSEEN_GRACE_SECONDS:
                if unless is not None:
                    raise unless from None
                raise
        else:
            if cluster is None or cluster.leader:
                return
            if clock() - began > LEADER_WAIT_SECONDS:
                raise nats.errors.TimeoutError
        await asyncio.sleep(0.1)


def _has_settings(current: StreamConfig, wanted: StreamConfig) -> bool:
    """Whether the stream already has every setting ``wanted`` gives (those it leaves
    as ``None`` are the server's to choose)."""
    return all(
        getattr(current, field.name) == value
        for field in dataclasses.fields(wanted)
        if (value := getattr(wanted, field.name)) is not None
    )


def _durability(config: StreamConfig) -> tuple[object, ...]:
    """Replicas, duplicate window, age and size limits, with the server's spelling of
    defaults (no size limit is -1)."""
    max_bytes = config.max_bytes if config.max_bytes not in (None, 0) else -1
    return (
        config.num_replicas or 1,
        config.duplicate_window or 0.0,
        config.max_age or 0.0,
        max_bytes,
    )

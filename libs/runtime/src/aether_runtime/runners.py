"""The registry of live agent runners: which runtimes each has, kept on the bus.

Each agent runner writes one entry, its own, to the JetStream key-value bucket
``AETHER_RUNNERS`` (key: its runner id as one subject token) when it starts, again every
third of the bucket's entry age, and deletes it when it stops; the bucket's streams keep
one message per key and drop it once it is ``AETHER_RUNNER_ENTRY_SECONDS`` old, so the
entry of a runner that died without a word is gone within that time. The gateway reads
the bucket to refuse a mission naming a runtime no live runner has (see
docs/decisions/0022-runner-registry-in-a-key-value-bucket.md).

An entry's key is two tokens, the runner's name and its runner id
(``<name>.<runner id>``): the name is what the runner's secret is derived for
(``runner_secrets``), the id tells apart the processes that share it (a restart).

Who may do what (``bus_auth``, ``attempt_auth``): the role that declares the streams (the
scheduler) creates the bucket; a runner writes with a credential of its own, asked of the
authorizer as the user ``runner/<name>/<runner id>`` with the secret of that name, whose
only publish subject is that entry's; the gateway reads (stream info and direct gets);
nobody else has any part in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
from collections.abc import Awaitable, Callable
from datetime import datetime

import msgspec
import nats
import nats.errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from aether_events.streams import ensure_stream
from aether_runtime.runner_secrets import runner_token

log = logging.getLogger("aether.runners")

RUNNERS_BUCKET = "AETHER_RUNNERS"
RUNNERS_STREAM = f"KV_{RUNNERS_BUCKET}"
ENTRY_PREFIX = f"$KV.{RUNNERS_BUCKET}"
# The user name prefix of a runner's own credential (``attempt_auth``).
RUNNER_USER_PREFIX = "runner"
# What a key-value delete leaves in place of the entry.
_OPERATION = "KV-Operation"
DEFAULT_ENTRY_SECONDS = 30.0
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")


class RunnerEntry(msgspec.Struct, frozen=True, kw_only=True):
    """What one runner says of itself. Optional fields only: an entry a newer runner
    wrote still decodes here."""

    runner_id: str
    # The name its secret was derived for (its entry's first key token); empty from a
    # runner older than names.
    name: str = ""
    host: str = ""
    # The agent runtimes it can run, by the names a mission gives them.
    runtimes: list[str] = msgspec.field(default_factory=list)
    # The runtime of a task that names none.
    default_runtime: str = ""
    # How many attempts it works at once.
    lanes: int = 0
    version: str = ""
    started_at: datetime | None = None
    # When it wrote this entry (its clock); it writes again every ``refresh_seconds``.
    announced_at: datetime | None = None
    refresh_seconds: float = 0.0


def entry_subject(name: str, runner_id: str) -> str:
    """The subject of the entry of runner ``runner_id`` called ``name``."""
    return f"{ENTRY_PREFIX}.{runner_token(name)}.{runner_token(runner_id)}"


def runner_user(name: str, runner_id: str) -> str:
    """The NATS user name a runner asks its own credential for."""
    return f"{RUNNER_USER_PREFIX}/{runner_token(name)}/{runner_token(runner_id)}"


def parse_runner_user(user: str) -> tuple[str, str] | None:
    """The runner name and runner id tokens a user name claims, or None if it is not a
    runner's."""
    parts = user.split("/")
    if len(parts) != 3 or parts[0] != RUNNER_USER_PREFIX:
        return None
    _, name, runner_id = parts
    if not (_TOKEN.fullmatch(name) and _TOKEN.fullmatch(runner_id)):
        return None
    return name, runner_id


def runner_inbox(name: str, runner_id: str) -> str:
    """The only subjects a runner's own connection may subscribe to."""
    return f"_INBOX.{RUNNER_USER_PREFIX}.{runner_token(name)}.{runner_token(runner_id)}"


def bucket_config(max_age_seconds: float, replicas: int = 1) -> StreamConfig:
    """The bucket's stream: one message per runner, gone once ``max_age_seconds`` old.
    Memory storage: a server restart loses the entries, and each runner writes its own
    again within a third of their age."""
    return StreamConfig(
        name=RUNNERS_STREAM,
        description="Aether's live agent runners (one entry each, kept briefly)",
        subjects=[f"{ENTRY_PREFIX}.>"],
        storage=StorageType.MEMORY,
        num_replicas=replicas,
        max_msgs_per_subject=1,
        max_age=max_age_seconds,
        duplicate_window=min(max_age_seconds, 120.0),
        discard=DiscardPolicy.NEW,
        allow_direct=True,
        # No roll-ups: a runner may publish on its own entry's subject, and
        # ``Nats-Rollup: all`` there would have the server purge every other runner's
        # entry (no runner writes one; a delete is a ``KV-Operation`` marker).
        allow_rollup_hdrs=False,
        deny_delete=True,
        max_consumers=-1,
        max_msgs=-1,
    )


async def ensure_bucket(
    js: JetStreamContext, max_age_seconds: float = DEFAULT_ENTRY_SECONDS, replicas: int = 1
) -> None:
    """Create the bucket, or bring its entry age and replicas up to date."""
    await ensure_stream(js, bucket_config(max_age_seconds, replicas))


_DECODER = msgspec.json.Decoder(RunnerEntry)


async def read_runners(js: JetStreamContext) -> list[RunnerEntry]:
    """The entries of the live runners, by runner id; none when the bucket does not
    exist yet. An entry that does not decode is skipped (a runner wrote it, and a
    runner's word is not trusted to stall the gateway)."""
    try:
        info = await js.stream_info(RUNNERS_STREAM, subjects_filter=f"{ENTRY_PREFIX}.>")
    except NotFoundError:
        return []
    entries: list[RunnerEntry] = []
    for subject in sorted(info.state.subjects or {}):
        try:
            stored = await js.get_last_msg(RUNNERS_STREAM, subject, direct=True)
        except NotFoundError:
            continue  # expired between the two requests
        if (stored.headers or {}).get(_OPERATION):
            continue  # the runner deleted its entry as it stopped
        try:
            entries.append(_DECODER.decode(stored.data or b""))
        except msgspec.MsgspecError:
            log.warning("a runner entry does not decode", extra={"subject": subject})
    return sorted(entries, key=lambda entry: entry.runner_id)


class Announcer:
    """Writes one runner's entry now and every ``refresh_seconds``, and deletes it at
    ``stop``.

    ``name`` is the runner's name (its entry's key is ``<name>.<runner id>``). ``connect``
    opens the connection the entry is written on (the runner's own credential:
    ``own_connection``), or ``js`` is the service's own (a bus without per-service users).
    A write that fails is made again on a new connection, soon at first
    (``RETRY_FIRST_SECONDS``, doubling up to ``refresh_seconds``): the credential
    expires (the server then closes the connection), the bucket may not exist yet, or the
    scheduler, which grants the credential and makes the bucket, may not be up yet. Until
    the first write, for ``QUIET_SECONDS`` (a stack starting together), failures are logged
    at INFO; after that, or once an entry was written, at WARNING."""

    RETRY_FIRST_SECONDS = 0.25
    QUIET_SECONDS = 30.0

    def __init__(
        self,
        entry: Callable[[], RunnerEntry],
        refresh_seconds: float,
        *,
        name: str,
        connect: Callable[[], Awaitable[NatsClient]] | None = None,
        js: Callable[[], JetStreamContext] | None = None,
    ) -> None:
        if (connect is None) == (js is None):
            raise ValueError("an announcer writes on its own connection or the service's")
        self._entry = entry
        self.name = name
        self.refresh_seconds = refresh_seconds
        self._connect = connect
        self._service_js = js
        self._nc: NatsClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        # Set after each write that the server stored, and after each that failed (tests
        # wait on them).
        self.written = asyncio.Event()
        self.failed = asyncio.Event()

    @property
    def subject(self) -> str:
        return entry_subject(self.name, self._entry().runner_id)

    async def _js(self) -> JetStreamContext:
        if self._service_js is not None:
            return self._service_js()
        assert self._connect is not None
        if self._nc is None or self._nc.is_closed:
            self._nc = await self._connect()
        return self._nc.jetstream()

    async def announce(self) -> None:
        """Write the entry once (raises what the bus says)."""
        entry = self._entry()
        js = await self._js()
        await js.publish(entry_subject(self.name, entry.runner_id), msgspec.json.encode(entry))
        self.written.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        quiet_until = loop.time() + self.QUIET_SECONDS
        retry = self.RETRY_FIRST_SECONDS
        while not self._stopped.is_set():
            wait = self.refresh_seconds
            try:
                await self.announce()
                retry = self.RETRY_FIRST_SECONDS
            except Exception as error:
                starting = not self.written.is_set() and loop.time() < quiet_until
                log.log(
                    logging.INFO if starting else logging.WARNING,
                    "the runner's entry was not written",
                    extra={"error": str(error) or repr(error), "retry_seconds": retry},
                )
                self.failed.set()
                await self._close()
                wait, retry = retry, min(retry * 2, self.refresh_seconds)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._stopped.wait()

    def start(self) -> None:
        """Write the entry now and from now on (a task of the running loop)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="runner-announcer")

    async def stop(self) -> None:
        """Stop writing and delete the entry (best effort: a bus that is away then leaves
        it to expire)."""
        self._stopped.set()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task
            self._task = None
        # On the connection open now only: connecting anew could take the connection's
        # timeout, and hold up the runner's stop, when the bus is away.
        js: JetStreamContext | None = None
        if self._service_js is not None:
            js = self._service_js()
        elif self._nc is not None and not self._nc.is_closed:
            js = self._nc.jetstream()
        try:
            if js is None:
                raise ConnectionError("no connection")
            await js.publish(self.subject, b"", timeout=2.0, headers={_OPERATION: "DEL"})
        except Exception as error:
            log.info("the runner's entry was left to expire", extra={"error": str(error)})
        await self._close()

    async def _close(self) -> None:
        if self._nc is not None:
            with contextlib.suppress(nats.errors.Error, OSError):
                await self._nc.close()
            self._nc = None


def own_connection(
    nats_url: str, name: str, runner_id: str, secret: str, tls: ssl.SSLContext | None = None
) -> Callable[[], Awaitable[NatsClient]]:
    """Opens a connection with the runner's own credential (``runner/<name>/<runner id>``,
    ``secret`` being the one derived for ``name``: ``runner_secrets``)."""

    async def silent(error: Exception) -> None:
        log.info("runner entry connection error", extra={"error": str(error) or repr(error)})

    def connect() -> asyncio.Future[NatsClient]:
        return asyncio.ensure_future(
            nats.connect(
                nats_url,
                user=runner_user(name, runner_id),
                password=secret,
                inbox_prefix=runner_inbox(name, runner_id),
                name=f"aether-runner-entry-{runner_token(runner_id)}",
                allow_reconnect=False,
                max_reconnect_attempts=0,
                connect_timeout=10,
                error_cb=silent,
                tls=tls,
            )
        )

    return connect

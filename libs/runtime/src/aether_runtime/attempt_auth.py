"""Credentials for one task attempt: NATS auth callout served by a trusted service.

A subject names a mission and an event type, so a static NATS user cannot be limited to
"the work it holds". This module lets the runner publish its agent events with a
credential that names one attempt instead:

* the NATS server's ``authorization`` block gets an ``auth_callout`` whose ``auth_users``
  are every static user (they log in as before, without the callout); any other user
  name is handed to the authorizer as an authorization request (``$SYS.REQ.USER.AUTH``);
* the authorizer (``AttemptAuthorizer``, served by a trusted service that knows which
  attempts are open) accepts a user name ``attempt/<mission>/<task>/<attempt>/<runner>``
  with the secret of that runner's name (``runner_secrets``: derived from the master the
  authorizer holds, so a runner can ask only under its own name), only while that
  attempt is open and only for the first runner that asked for it (a second runner asking
  for the same attempt is refused until the holder's credential has expired unrenewed: a
  runner that died);
* the answer is a user JWT, signed with the issuer account key the server trusts, whose
  publish allow-list names only the attempt's own subjects: each of its event types on
  ``aether.<kind>.<mission>.<type>.<task token>.<attempt>`` (``aether_events.subjects``),
  so neither another task nor another attempt of the same task; whose only subscription
  is the attempt's own inbox,
  and which expires after ``ttl_seconds``: the server then closes the connection, and the
  runner's next publish connects and asks again, which is refused once the attempt has
  ended;
* the connections it let in are remembered (the server id and client id the request
  names), and cut as soon as the trusted service's state says their attempt ended, not
  only when they expire (``attempt_connections``).

The JWTs are NATS's ``ed25519-nkey`` JWTs (the formats of ``nats-io/jwt`` v2), made and
checked here with ``nkeys``; requests are not encrypted (no ``xkey``): they travel on the
server's own connection to the authorizer.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import contextvars
import hashlib
import json
import logging
import re
import secrets
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import nacl.exceptions
import nacl.signing
import nats
import nats.errors
import nkeys
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import PubAck

from aether_events import ATTEMPT_MAX_PAYLOAD, Event, EventPublisher, keyed
from aether_events.attempt_ids import MIN_KEY_BYTES
from aether_events.subjects import attempt_subject, is_valid_token, task_token
from aether_runtime.bus_auth import (
    ATTEMPT_KEY_PREFIX,
    ATTEMPT_KEY_REQUESTS,
    AUTH_SUBJECT,
    GLOBAL_ACCOUNT,
    issuer_public_key,
    new_issuer_seed,
)
from aether_runtime.failures import RetryLater
from aether_runtime.runner_secrets import attempt_event_key, proves, runner_secret, runner_token
from aether_runtime.runners import entry_subject, parse_runner_user, runner_inbox
from aether_runtime.service import CountingPublisher

if TYPE_CHECKING:
    from aether_runtime.attempt_connections import AttemptConnections

log = logging.getLogger("aether.attempt-auth")

USER_PREFIX = "attempt"
DEFAULT_TTL_SECONDS = 120.0
# What the planner lets a task id be (a subject names it by ``task_token``, the inbox by a
# digest).
_TASK_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")


@dataclass(frozen=True)
class AttemptKey:
    """One attempt of one task of one mission."""

    mission_id: str
    task_id: str
    attempt: int

    def user(self, runner_id: str) -> str:
        """The NATS user name a runner connects with for this attempt."""
        return f"{USER_PREFIX}/{self.mission_id}/{self.task_id}/{self.attempt}/{runner_id}"

    @property
    def key_subject(self) -> str:
        """Where a connection of this attempt asks for the key of its event ids (its
        credential may publish there, and no other credential or service may)."""
        return f"{ATTEMPT_KEY_PREFIX}.{self.mission_id}.{task_token(self.task_id)}.{self.attempt}"

    @property
    def inbox_prefix(self) -> str:
        """The only subjects a connection of this attempt may subscribe to (a digest: a
        task id may hold dots, which would split a subject token)."""
        name = f"{self.mission_id}/{self.task_id}/{self.attempt}".encode()
        return f"_INBOX.{USER_PREFIX}.{hashlib.sha256(name).hexdigest()[:32]}"


def parse_user(user: str) -> tuple[AttemptKey, str] | None:
    """The attempt and runner a user name claims, or None if it is not one."""
    parts = user.split("/")
    if len(parts) != 5 or parts[0] != USER_PREFIX:
        return None
    _, mission_id, task_id, attempt, runner_id = parts
    if not (is_valid_token(mission_id) and is_valid_token(runner_id)):
        return None
    if not _TASK_ID.fullmatch(task_id):
        return None
    if not attempt.isdigit() or len(attempt) > 9:
        return None
    return AttemptKey(mission_id, task_id, int(attempt)), runner_id


def parse_key_subject(subject: str) -> tuple[str, str, int] | None:
    """The mission, task token and attempt number a key request's subject names, or None
    if it names none."""
    parts = subject.split(".")
    if len(parts) != 5 or ".".join(parts[:2]) != ATTEMPT_KEY_PREFIX:
        return None
    _, _, mission_id, token, attempt = parts
    if not (is_valid_token(mission_id) and is_valid_token(token)):
        return None
    if not attempt.isdigit() or len(attempt) > 9:
        return None
    return mission_id, token, int(attempt)


def attempt_subjects(key: AttemptKey, types: Iterable[type[Event]]) -> list[str]:
    """The subjects an attempt's credential may publish on: these types, on this attempt
    of this task of this mission, and nothing with a wildcard."""
    return sorted(attempt_subject(cls, key.mission_id, key.task_id, key.attempt) for cls in types)


class Grants:
    """Which attempts are open (asked of the trusted service's state on every
    connection), and which runner holds each: the first that asked for it, until its
    credential has expired without being renewed (a runner that died: the attempt's
    message is delivered to another, which may then take it over).

    An attempt that is not open any more may still be ``stopping`` (its mission ended a
    moment ago, and its runner, told to stop, has its last usage and its stop report to
    publish): its holder keeps it, renewed or connected again, while it is; no other
    runner gets it, nor does one that never held it."""

    def __init__(
        self,
        is_open: Callable[[AttemptKey], bool],
        stopping: Callable[[AttemptKey], bool] | None = None,
    ) -> None:
        self.is_open = is_open
        self.stopping = stopping or _never
        self._holders: dict[AttemptKey, tuple[str, float]] = {}

    def claim(
        self, key: AttemptKey, runner_id: str, now: float = 0.0, ttl: float = float("inf")
    ) -> str | None:
        """Bind ``key`` to ``runner_id`` (at ``now``, for ``ttl`` seconds) if it is open
        and free, already its, or its holder's credential has expired; or, while it is
        stopping, if it is already ``runner_id``'s; None when granted, else why not."""
        holder = self._holders.get(key)
        if not self.is_open(key):
            if not self.stopping(key):
                self._holders.pop(key, None)
            elif holder is not None and holder[0] == runner_id:
                self._holders[key] = (runner_id, now)
                return None
            return "the attempt is not open"
        if holder is not None and holder[0] != runner_id and now < holder[1] + ttl:
            return "the attempt is held by another runner"
        self._holders[key] = (runner_id, now)
        if len(self._holders) > 4 * _PRUNE_ABOVE:
            self._prune()
        return None

    def held(self, key: AttemptKey, runner_id: str, now: float) -> None:
        """``runner_id`` holds ``key``, as a connection the servers list says (one a
        predecessor granted), unless another runner already does here."""
        if key not in self._holders and (self.is_open(key) or self.stopping(key)):
            self._holders[key] = (runner_id, now)

    def _prune(self) -> None:
        for key in [k for k in self._holders if not self.is_open(k) and not self.stopping(k)]:
            del self._holders[key]


def _never(key: AttemptKey) -> bool:
    return False


_PRUNE_ABOVE = 256


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


_HEADER = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())


def encode_jwt(claims: dict[str, Any], signer: nkeys.KeyPair) -> str:
    """A NATS JWT of ``claims`` (``jti`` and ``iat`` added), signed by ``signer``."""
    body = {**claims, "jti": "", "iat": int(time.time())}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).digest()
    body["jti"] = base64.b32encode(digest).decode().rstrip("=")
    head_and_body = f"{_HEADER}.{_b64(json.dumps(body).encode())}"
    return f"{head_and_body}.{_b64(signer.sign(head_and_body.encode()))}"


def _verify_key(public_key: str) -> nacl.signing.VerifyKey:
    raw = base64.b32decode(public_key + "=" * (-len(public_key) % 8))
    return nacl.signing.VerifyKey(raw[1:-2])  # prefix byte, key, crc16


def decode_jwt(token: str) -> dict[str, Any]:
    """The claims of a NATS JWT whose signature is its issuer's (``iss``); ValueError
    otherwise."""
    try:
        head, body, signature = token.split(".")
        claims: dict[str, Any] = json.loads(_unb64(body))
        issuer = str(claims["iss"])
        _verify_key(issuer).verify(f"{head}.{body}".encode(), _unb64(signature))
    except (ValueError, KeyError, TypeError, nacl.exceptions.BadSignatureError) as error:
        raise ValueError(f"not a JWT signed by its issuer: {error}") from error
    return claims


@dataclass
class AttemptAuthorizer:
    """Answers the NATS server's authorization requests for attempt and runner users.

    ``master`` is the runners' master secret (``AETHER_RUNNER_MASTER_SECRET``): each
    runner holds the secret derived from it for its own name (``runner_secrets``), and is
    granted only credentials that name it, for its registry entry and its attempts;
    ``types`` are the events an attempt's credential may publish.
    """

    issuer_seed: str
    master: str
    grants: Grants
    types: frozenset[type[Event]]
    ttl_seconds: float = DEFAULT_TTL_SECONDS
    clock: Callable[[], float] = time.time
    # Where the connections it lets in are remembered, to be cut when their attempt ends.
    connections: AttemptConnections | None = None
    # Whether this process may answer now (the active scheduler: it holds the lease). A
    # request that comes while it may not is left unanswered, for the active one.
    may_answer: Callable[[], bool] | None = None
    _subscription: Subscription | None = None
    _key_subscription: Subscription | None = None

    def __post_init__(self) -> None:
        self._issuer = nkeys.from_seed(self.issuer_seed.encode())
        self.issuer = bytes(self._issuer.public_key).decode()

    async def serve(self, nc: NatsClient) -> None:
        """Answer the server's requests on ``nc`` (a static user, so not called out), and
        the attempts' requests for the keys of their event ids."""
        self._subscription = await nc.subscribe(AUTH_SUBJECT, cb=self._on_request)
        self._key_subscription = await nc.subscribe(ATTEMPT_KEY_REQUESTS, cb=self._on_key_request)

    async def stop(self) -> None:
        for subscription in (self._subscription, self._key_subscription):
            if subscription is not None:
                await subscription.unsubscribe()
        self._subscription = self._key_subscription = None

    async def _on_request(self, msg: Msg) -> None:
        if self.may_answer is not None and not self.may_answer():
            log.info("authorization request left to the active process")
            return
        try:
            answer = self.answer(msg.data.decode())
        except ValueError as error:
            # Not a request of the server (forged or garbled): no answer, the server
            # times out and refuses the connection.
            log.warning("authorization request refused unanswered", extra={"error": str(error)})
            return
        await msg.respond(answer.encode())

    async def _on_key_request(self, msg: Msg) -> None:
        """The key of an attempt's event ids (``aether_events.attempt_ids``), to whoever
        may ask on its subject: only a connection holding that attempt's credential may
        publish there (``user_jwt``), and the answer goes to the attempt's own inbox,
        which nothing else may read."""
        if self.may_answer is not None and not self.may_answer():
            return
        named = parse_key_subject(msg.subject)
        if named is None or not msg.reply:
            log.warning("attempt key request unanswered", extra={"subject": msg.subject})
            return
        await msg.respond(_b64(self.event_key(*named)).encode())

    def event_key(self, mission_id: str, token: str, attempt: int) -> bytes:
        """The key of the event ids of ``attempt`` of the task whose subject token is
        ``token`` in ``mission_id``: a function of the master alone, so a standby or a
        restarted scheduler gives the same."""
        return attempt_event_key(self.master, mission_id, token, attempt)

    def answer(self, request_jwt: str) -> str:
        """The signed authorization response to one request (a user JWT, or an error)."""
        request = decode_jwt(request_jwt)
        nats_claims = request.get("nats") or {}
        if nats_claims.get("type") != "authorization_request":
            raise ValueError("not an authorization request")
        server_id = str((nats_claims.get("server_id") or {}).get("id") or request["iss"])
        client_id = (nats_claims.get("client_info") or {}).get("id")
        user_nkey = str(nats_claims.get("user_nkey") or "")
        if not user_nkey:
            raise ValueError("the request names no user nkey")
        options = nats_claims.get("connect_opts") or {}
        user = str(options.get("user") or "")
        password = str(options.get("pass") or "")
        error = ""
        user_jwt = ""
        claimed = parse_user(user)
        runner = parse_runner_user(user) if claimed is None else None
        # The runner name the user names: its secret is the only password it is let in
        # with, so a runner asks only under its own name.
        name = runner[0] if runner is not None else claimed[1] if claimed is not None else ""
        if claimed is None and runner is None:
            error = "not an attempt user"
        elif not proves(self.master, name, password):
            error = f"wrong password: not the secret of runner {name!r}"
        elif runner is not None:
            # A runner's own entry in the registry of runners (``runners``).
            user_jwt = self.runner_jwt(*runner, user, user_nkey)
        else:
            assert claimed is not None
            key, runner_id = claimed
            refusal = self.grants.claim(key, runner_id, self.clock(), self.ttl_seconds)
            if refusal is not None:
                error = refusal
            else:
                user_jwt = self.user_jwt(key, user, user_nkey)
                if self.connections is not None and isinstance(client_id, int):
                    self.connections.granted(key, server_id, client_id)
        if error:
            log.info("attempt credential refused", extra={"user": user, "reason": error})
        response = {
            "aud": server_id,
            "iss": self.issuer,
            "sub": user_nkey,
            "nats": {
                "jwt": user_jwt,
                "error": error,
                "type": "authorization_response",
                "version": 2,
            },
        }
        return encode_jwt(response, self._issuer)

    def user_jwt(self, key: AttemptKey, user: str, user_nkey: str) -> str:
        """The credential of one attempt: its events on its own subjects, the request for
        its own event key, its own inbox; no message larger than ``ATTEMPT_MAX_PAYLOAD``
        (the server drops a connection that sends one)."""
        publish = [*attempt_subjects(key, self.types), key.key_subject]
        return self._signed_user(
            user, user_nkey, publish, f"{key.inbox_prefix}.>", payload=ATTEMPT_MAX_PAYLOAD
        )

    def runner_jwt(self, name: str, runner_id: str, user: str, user_nkey: str) -> str:
        """The credential of one runner's entry in the registry of runners: writing (and
        deleting) that entry, and its own inbox for the stream's acknowledgements."""
        return self._signed_user(
            user,
            user_nkey,
            [entry_subject(name, runner_id)],
            f"{runner_inbox(name, runner_id)}.>",
        )

    def _signed_user(
        self, user: str, user_nkey: str, publish: list[str], inbox: str, payload: int = -1
    ) -> str:
        claims = {
            "aud": GLOBAL_ACCOUNT,
            "iss": self.issuer,
            "sub": user_nkey,
            "name": user,
            "exp": int(self.clock() + self.ttl_seconds),
            "nats": {
                "pub": {"allow": publish},
                "sub": {"allow": [inbox]},
                "subs": -1,
                "data": -1,
                "payload": payload,
                "type": "user",
                "version": 2,
            },
        }
        return encode_jwt(claims, self._issuer)


# The publisher of the attempt the current task works on (set by ``AttemptCredentials``).
_CURRENT: contextvars.ContextVar[EventPublisher | None] = contextvars.ContextVar(
    "aether_attempt_publisher", default=None
)


def current_publisher() -> EventPublisher | None:
    """The publisher of the attempt this task (or the task that started it) works on."""
    return _CURRENT.get()


class CredentialRefused(RetryLater):
    """The bus did not grant the attempt's credential: its message comes back later."""


async def _connection_error(error: Exception) -> None:
    """An attempt connection's error, one line: nats-py's own logs each at ERROR with its
    traceback, two a refused try, where a refusal is expected (the attempt ended, or the
    scheduler has not folded it yet) and is told once it is final (``CredentialRefused``)."""
    log.info("attempt connection error", extra={"error": str(error) or type(error).__name__})


class AttemptPublisher(EventPublisher):
    """Publishes one attempt's events on a connection of its own, made with the
    attempt's credential when the first event is published, closed with the scope.

    Each event is stored under its id keyed with the attempt's event key (``keyed``),
    asked of the authorizer on that connection once it is made: an id no other attempt
    can compute, the same for every runner and restart of this attempt."""

    def __init__(
        self,
        url: str,
        key: AttemptKey,
        runner_id: str,
        secret: str,
        service: str = "agent-runner",
        stopping: asyncio.Event | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._url = url
        self._tls = tls
        # Set when the runner stops: a refused credential is not asked for again then.
        self._stopping = stopping or asyncio.Event()
        self._service = service
        self._key = key
        self._user = key.user(runner_token(runner_id))
        self._secret = secret
        self._nc: NatsClient | None = None
        self._inner: EventPublisher | None = None
        # The key of the attempt's event ids, once the authorizer gave it.
        self._event_key: bytes | None = None
        self._lock = asyncio.Lock()
        # Why the credential was refused, once it was: asked ``CONNECT_TRIES`` times
        # already, it is not asked for again within this attempt.
        self._refused: str | None = None

    async def _connected(self) -> EventPublisher:
        async with self._lock:
            if self._refused is not None:
                # The attempt's other events (what its stream still holds, its result)
                # fail at once: each asking again took a few seconds, and far longer once
                # the scheduler had stopped answering (a runner's stop waited on them).
                raise CredentialRefused(self._refused)
            if self._inner is None or self._nc is None or self._nc.is_closed:
                # The first event, or the credential expired: the server closed the
                # connection (the client does not reconnect then) and it is asked for
                # again, granted only while the attempt is open.
                try:
                    self._nc = await self._connect()
                except CredentialRefused as refused:
                    self._refused = str(refused)
                    raise
                # Counted and logged as the service's own publishes are: the events
                # metric, and the handler's "handled" line at INFO (it published).
                self._inner = CountingPublisher(
                    self._nc.jetstream(), self._service, check_duplicates=False
                )
            return self._inner

    async def _connect(self) -> NatsClient:
        # Refused while the attempt is not open (it ended, or the scheduler has not
        # folded it), held by another runner, or while no scheduler answers: asked a few
        # times, then the delivery is handed back for later (``RetryLater``), freeing the
        # lane; its redelivery looks at the mission's history again before it runs.
        wait = 0.2
        for tries in range(CONNECT_TRIES):
            try:
                nc = await nats.connect(
                    self._url,
                    user=self._user,
                    password=self._secret,
                    inbox_prefix=self._key.inbox_prefix,
                    name=f"aether-attempt-{self._key.task_id}-a{self._key.attempt}",
                    allow_reconnect=True,
                    # nats-py retries a first connection as often as it reconnects: with no
                    # limit, a refused credential was asked for again forever and the
                    # attempt held its lane. One retry per try here (the count is the
                    # tries above); once connected, it reconnects through any bus restart.
                    max_reconnect_attempts=1,
                    reconnect_time_wait=0.2,
                    # The server asks the scheduler before it answers.
                    connect_timeout=15,
                    error_cb=_connection_error,
                    tls=self._tls,
                )
                nc.options["max_reconnect_attempts"] = -1
                if self._event_key is None:
                    try:
                        self._event_key = await self._ask_event_key(nc)
                    except BaseException:
                        with contextlib.suppress(nats.errors.Error, OSError):
                            await nc.close()
                        raise
                return nc
            except (nats.errors.Error, OSError, ValueError) as error:
                if tries < CONNECT_TRIES - 1 and not self._stopping.is_set():
                    log.info("attempt credential not granted yet", extra={"error": str(error)})
                    # The wait ends early when the runner stops: it would hold the stop
                    # (each ask takes the callout's timeout once no scheduler answers).
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait):
                            await self._stopping.wait()
                    wait *= 2
                    if not self._stopping.is_set():
                        continue
                stopping = "; the runner is stopping" if self._stopping.is_set() else ""
                raise CredentialRefused(
                    f"no NATS credential for attempt {self._key.attempt} of task "
                    f"{self._key.task_id}: {error}{stopping}"
                ) from error
        raise AssertionError("unreachable")

    async def _ask_event_key(self, nc: NatsClient) -> bytes:
        """The attempt's event key, asked of the authorizer on the attempt's connection
        (nobody answers while no scheduler is active, nor an old one: asked again like a
        credential not granted yet)."""
        answer = await nc.request(self._key.key_subject, b"", timeout=KEY_REQUEST_SECONDS)
        key = _unb64(answer.data.decode())
        if len(key) < MIN_KEY_BYTES:
            raise ValueError("the authorizer's answer is not an attempt key")
        return key

    async def publish(
        self,
        event: Event,
        *,
        expected_last_subject_sequence: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> PubAck:
        for tries in range(2):
            inner = await self._connected()
            assert self._event_key is not None  # asked with the connection
            try:
                return await inner.publish(
                    keyed(event, self._event_key),
                    expected_last_subject_sequence=expected_last_subject_sequence,
                    headers=headers,
                )
            except nats.errors.ConnectionClosedError:
                # Closed as it expired, mid-publish: once more on a new connection (the
                # event's id makes a second copy a duplicate the stream drops).
                if tries == 1:
                    raise
        raise AssertionError("unreachable")

    async def open(self) -> None:
        """Open the attempt's connection now rather than at its first event: its
        credential is asked of the authorizer, and a refusal raises ``CredentialRefused``
        as a publish would."""
        await self._connected()

    @property
    def connection(self) -> NatsClient | None:
        """The attempt's connection now (None before it is opened)."""
        return self._nc

    async def close(self) -> None:
        async with self._lock:
            if self._nc is not None:
                with contextlib.suppress(nats.errors.Error, OSError):
                    await self._nc.close()
            self._nc = None
            self._inner = None


@runtime_checkable
class Opens(Protocol):
    """A publisher whose connection can be opened ahead of its first event
    (``AttemptPublisher``)."""

    async def open(self) -> None: ...


CONNECT_TRIES = 5  # about 3 s of waits (each refusal may take the callout's timeout too)
# How long the attempt's event key is waited for (the active scheduler answers at once).
KEY_REQUEST_SECONDS = 5.0


@dataclass(frozen=True)
class AttemptCredentials:
    """What a runner needs to publish an attempt's events with its own credential:
    ``runner_id`` is the runner's name (an attempt user's last part) and ``secret`` the one
    derived for it (``runner_secrets``)."""

    nats_url: str
    secret: str
    runner_id: str
    # The bus's TLS, as the service's own connection has it (``RuntimeSettings.nats_tls``).
    tls: ssl.SSLContext | None = field(default=None, compare=False, repr=False)
    _stopping: asyncio.Event = field(
        default_factory=asyncio.Event, init=False, compare=False, repr=False
    )

    async def stop(self) -> None:
        """The runner stops: a credential refused from now on is not asked for again
        (the attempt's delivery is handed back at once, for another runner)."""
        self._stopping.set()

    @contextlib.asynccontextmanager
    async def scope(self, key: AttemptKey) -> AsyncIterator[AttemptPublisher]:
        """Within this block (and the tasks started in it) ``current_publisher()`` is the
        attempt's; its connection is closed when the block ends."""
        publisher = AttemptPublisher(
            self.nats_url,
            key,
            self.runner_id,
            self.secret,
            stopping=self._stopping,
            tls=self.tls,
        )
        token = _CURRENT.set(publisher)
        try:
            yield publisher
        finally:
            _CURRENT.reset(token)
            await publisher.close()


# The runner's name in docker-compose.yml.
COMPOSE_RUNNER_NAME = "agent-runner"


def main() -> None:
    """Print a new issuer seed and its public key, a new master secret of the runners, the
    secret of compose's runner, and a new secret of the services' event ids (decision
    0031; for compose and Kubernetes secrets)."""
    seed = new_issuer_seed()
    master = secrets.token_urlsafe(32)
    print(f"AETHER_ATTEMPT_ISSUER_SEED={seed}")
    print(f"NATS_ATTEMPT_ISSUER={issuer_public_key(seed)}")
    print(f"AETHER_RUNNER_MASTER_SECRET={master}")
    print(f"AETHER_RUNNER_SECRET={runner_secret(master, COMPOSE_RUNNER_NAME)}")
    print(f"AETHER_EVENT_ID_SECRET={secrets.token_urlsafe(32)}")


if __name__ == "__main__":
    main()

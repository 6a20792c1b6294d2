"""Cutting an attempt's bus connection once its attempt has ended, not when its credential
expires (decisions 0024 and 0025).

* ``AttemptConnections`` remembers, per attempt, where each connection the authorizer let
  in is (its server's id, its client id there: what the authorization request names);
* ``ConnectionCutter`` asks that server to close it (``$SYS.REQ.SERVER.<id>.KICK``) once the
  trusted service's state says the attempt is not open any more, through a user of the
  system account that may send nothing else but the listing below
  (``bus_auth.system_permissions``);
* at start (``ConnectionCutter.sweep``), the attempt connections the servers hold are
  listed (``$SYS.REQ.ACCOUNT.$G.CONNZ``: every server answers for its own clients, named
  by the user each logged in as, which names its attempt): those whose attempt is not open
  are cut, the others remembered, so that what a predecessor granted (a restarted
  scheduler's) is cut as this process's own grants are. Nothing is stored for it: the
  servers hold the connections, and say where;
* an attempt whose mission has just ended stays open for a grace (its runner, told to
  stop, publishes its last usage and its stop report): the service says until when
  (``closes_at``), and the cutter wakes itself then, once per ended mission, to cut
  what has not reported by that time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client as NatsClient

from aether_runtime.attempt_auth import AttemptKey, parse_user
from aether_runtime.bus_auth import CONNECTION_LIST_SUBJECT

log = logging.getLogger("aether.attempt-auth")

# The server's request that closes one client connection (answered in the system account).
KICK_SUBJECT = "$SYS.REQ.SERVER.{server}.KICK"
# Connections remembered per attempt (each renewal or reconnect is a new one) and attempts
# remembered in all: the oldest are forgotten beyond them (their credential's expiry
# stays the bound on how long they live).
_CONNECTIONS_PER_ATTEMPT = 8
_ATTEMPTS_REMEMBERED = 4096


class AttemptConnections:
    """The connections the authorizer let in, per attempt: where each is (its server's
    id, its client id there), so that they can be cut the moment the attempt ends rather
    than when their credential expires.

    ``ended(mission_id)`` takes out those of the mission's attempts that are no longer
    open (``is_open``: open, or still stopping within its mission's grace); ``kick`` asks
    the server that holds a connection to close it. A predecessor's grants are added at
    start (``ConnectionCutter.sweep``); one forgotten beyond the bounds lives until its
    credential expires."""

    def __init__(self, is_open: Callable[[AttemptKey], bool]) -> None:
        self.is_open = is_open
        # mission -> attempt -> [(server id, client id)], oldest first.
        self._missions: dict[str, dict[AttemptKey, list[tuple[str, int]]]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def holds(self, mission_id: str) -> bool:
        """Whether a connection of ``mission_id``'s attempts is remembered."""
        return mission_id in self._missions

    def granted(self, key: AttemptKey, server_id: str, client_id: int) -> None:
        attempts = self._missions.setdefault(key.mission_id, {})
        if key not in attempts:
            if self._count >= _ATTEMPTS_REMEMBERED:
                self._forget_oldest()
            attempts = self._missions.setdefault(key.mission_id, {})
            attempts[key] = []
            self._count += 1
        held = attempts[key]
        if (server_id, client_id) not in held:
            held.append((server_id, client_id))
            del held[:-_CONNECTIONS_PER_ATTEMPT]

    def _forget_oldest(self) -> None:
        mission_id, attempts = next(iter(self._missions.items()))
        attempts.pop(next(iter(attempts)))
        self._count -= 1
        if not attempts:
            del self._missions[mission_id]

    def ended(self, mission_id: str) -> list[tuple[AttemptKey, str, int]]:
        """The remembered connections of ``mission_id``'s attempts that are not open any
        more (forgotten here: each is returned once)."""
        attempts = self._missions.get(mission_id)
        if not attempts:
            return []
        out = []
        for key in [key for key in attempts if not self.is_open(key)]:
            out += [(key, server, client) for server, client in attempts.pop(key)]
            self._count -= 1
        if not attempts:
            del self._missions[mission_id]
        return out


KICK_TIMEOUT_SECONDS = 2.0
# How long after an ended mission's grace its attempts are looked at again.
_GRACE_MARGIN_SECONDS = 0.05


async def kick(nc: NatsClient, server_id: str, client_id: int) -> str | None:
    """Ask server ``server_id`` to close its client ``client_id`` (``nc`` is a user of the
    system account); None when it did, else why not."""
    try:
        reply = await nc.request(
            KICK_SUBJECT.format(server=server_id),
            json.dumps({"cid": client_id}).encode(),
            timeout=KICK_TIMEOUT_SECONDS,
        )
    except (nats.errors.Error, OSError) as failure:
        return str(failure) or type(failure).__name__
    try:
        answer = json.loads(reply.data)
    except ValueError:
        return "the server's answer is not JSON"
    error = answer.get("error") if isinstance(answer, dict) else "the answer is not an object"
    if error:
        return str(error.get("description", error) if isinstance(error, dict) else error)
    return None


# Connections asked of a server at a time (a page of its answer is about 450 bytes each),
# how long the listing waits for the first server's answer, and for another after the last
# (each server of a cluster answers for itself; how many there are is not known here).
LIST_PAGE = 256
LIST_TIMEOUT_SECONDS = 2.0
LIST_QUIET_SECONDS = 0.5


@dataclass(frozen=True)
class HeldConnection:
    """An attempt connection a server holds: the attempt and runner its user names, and
    where it is."""

    key: AttemptKey
    runner_id: str
    server_id: str
    client_id: int


async def attempt_connections_held(nc: NatsClient, page: int = LIST_PAGE) -> list[HeldConnection]:
    """The attempt connections every server holds (``nc`` is a user of the system
    account). A server that answers with an error is logged and passed over; no answer
    at all (no server, or a user not allowed to ask) is an empty list, logged too."""
    body: dict[str, Any] = {"auth": True, "limit": page}
    answers = await _ask_every_server(nc, CONNECTION_LIST_SUBJECT, body)
    if not answers:
        log.warning("no server listed its connections", extra={"subject": CONNECTION_LIST_SUBJECT})
    held: list[HeldConnection] = []
    for answer in answers:
        listed = _listed(answer)
        if listed is None:
            continue
        name, server_id, entries = listed
        held += _attempts(server_id, entries)
        offset = len(entries)
        while len(entries) >= page:
            # More on that server: the next page, of it alone (by its name, which a
            # cluster keeps unique).
            asked = {**body, "offset": offset, "server_name": name, "exact_match": True}
            try:
                reply = await nc.request(
                    CONNECTION_LIST_SUBJECT,
                    json.dumps(asked).encode(),
                    timeout=LIST_TIMEOUT_SECONDS,
                )
            except (nats.errors.Error, OSError) as error:
                # What the other pages and servers listed is still cut or remembered.
                log.warning(
                    "a server's next page of connections did not come",
                    extra={"server": name, "offset": offset, "error": str(error)},
                )
                break
            listed = _listed(reply.data)
            if listed is None:
                break
            _, _, entries = listed
            held += _attempts(server_id, entries)
            offset += len(entries)
    return held


async def _ask_every_server(nc: NatsClient, subject: str, body: dict[str, Any]) -> list[bytes]:
    """Every server's answer to one request: until none has come for a moment."""
    inbox = nc.new_inbox()
    subscription = await nc.subscribe(inbox)
    answers: list[bytes] = []
    try:
        await nc.publish(subject, json.dumps(body).encode(), reply=inbox)
        wait = LIST_TIMEOUT_SECONDS
        while True:
            try:
                message = await subscription.next_msg(timeout=wait)
            except nats.errors.TimeoutError:
                return answers
            answers.append(message.data)
            wait = LIST_QUIET_SECONDS
    finally:
        with contextlib.suppress(nats.errors.Error, OSError):
            await subscription.unsubscribe()


def _listed(data: bytes) -> tuple[str, str, list[Any]] | None:
    """A server's name, id and listed connections from its answer; None (logged) when it
    answered with an error or not in the expected shape."""
    try:
        answer = json.loads(data)
        server = answer["server"]
        name, server_id = str(server["name"]), str(server["id"])
        if answer.get("error"):
            raise ValueError(str(answer["error"]))
        entries = answer["data"].get("connections") or []
        if not isinstance(entries, list):
            raise TypeError("connections is not a list")
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        log.warning("a server's list of connections is unusable", extra={"error": str(error)})
        return None
    return name, server_id, entries


def _attempts(server_id: str, entries: list[Any]) -> list[HeldConnection]:
    """The listed connections whose user is an attempt's (the callout let it in under
    that name, for that attempt alone)."""
    out = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        user, client_id = entry.get("authorized_user"), entry.get("cid")
        claimed = parse_user(user) if isinstance(user, str) else None
        if claimed is not None and isinstance(client_id, int):
            out.append(HeldConnection(claimed[0], claimed[1], server_id, client_id))
    return out


class ConnectionCutter:
    """Cuts the connections of attempts that ended, as the trusted service's state says
    they did (``attempt_ended``): one kick each, on a connection of the system account's
    user, in the background (a fold never waits on the bus). At start, ``sweep`` finds
    the attempt connections the servers hold, a predecessor's grants among them. A kick
    that fails is logged; the connection then lives until its credential expires, as it
    did without this.

    ``closes_at(mission_id)`` is when the attempts of a mission that has ended stop being
    open though none has reported (the end of their grace, on ``clock``: seconds since
    the epoch), None for a mission that has not ended: the cutter looks at the mission's
    remembered attempts again then (one timer per ended mission that has some), and
    ``found`` is told of each open attempt connection the sweep finds (its holder)."""

    def __init__(
        self,
        connections: AttemptConnections,
        url: str,
        user: str,
        password: str,
        tls: ssl.SSLContext | None = None,
        closes_at: Callable[[str], float | None] | None = None,
        found: Callable[[HeldConnection], None] | None = None,
        clock: Callable[[], float] = time.time,
        may_act: Callable[[], bool] | None = None,
    ) -> None:
        self.connections = connections
        # Whether this process may cut connections now (the active scheduler, holding the
        # lease): a standby, or one that lost it, leaves them to the active one.
        self._may_act = may_act
        self._url = url
        self._user = user
        self._password = password
        self._tls = tls
        self._closes_at = closes_at
        self._found = found
        self._clock = clock
        self._nc: NatsClient | None = None
        self._kicks: set[asyncio.Task[None]] = set()
        # The ended missions whose remembered attempts are looked at again when their
        # grace is over.
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self.cut = 0  # connections the server said it closed
        self.failed = 0
        # Set once a sweep has looked at what the servers hold (``sweep``).
        self.swept = asyncio.Event()

    async def start(self) -> None:
        """Connect as the system account's user; a failure is logged and leaves every
        attempt's connection to its credential's expiry."""
        try:
            nc = await nats.connect(
                self._url,
                user=self._user,
                password=self._password,
                name=f"aether-{self._user}",
                # Its permissions let it read replies only there (``bus_auth``).
                inbox_prefix=f"_INBOX.{self._user}",
                # A first connection is tried as often as a reconnect: a few times, so a
                # wrong password does not hold the service's start.
                max_reconnect_attempts=2,
                reconnect_time_wait=0.5,
                tls=self._tls,
                error_cb=_connection_error,
            )
        except (nats.errors.Error, OSError) as error:
            log.warning(
                "ended attempts' connections will not be cut: no system account connection",
                extra={"user": self._user, "error": str(error) or type(error).__name__},
            )
            return
        nc.options["max_reconnect_attempts"] = -1
        self._nc = nc
        log.info("cutting ended attempts' connections", extra={"user": self._user})

    def _acting(self) -> bool:
        return self._may_act is None or self._may_act()

    def attempt_ended(self, mission_id: str) -> None:
        """An event of ``mission_id`` was folded: cut the connections of its attempts that
        are not open any more."""
        if not self._acting():
            return
        for key, server_id, client_id in self.connections.ended(mission_id):
            self._in_background(self._kick(key, server_id, client_id))
        self._watch(mission_id)

    def _watch(self, mission_id: str) -> None:
        """Look at ``mission_id``'s remembered attempts again when its grace is over, if
        it has ended and some are left (open until then)."""
        if self._closes_at is None or mission_id in self._timers:
            return
        if not self.connections.holds(mission_id):
            return
        at = self._closes_at(mission_id)
        if at is None:
            return
        # Never at once: the attempts left were open a moment ago, so their grace ends
        # after now (on the same clock); the margin keeps a timer that fires a hair
        # early from looking before it has.
        delay = max(at - self._clock(), 0.0) + _GRACE_MARGIN_SECONDS
        loop = asyncio.get_running_loop()
        self._timers[mission_id] = loop.call_later(delay, self._grace_over, mission_id)

    def _grace_over(self, mission_id: str) -> None:
        del self._timers[mission_id]
        if not self._acting():
            return
        left = self.connections.ended(mission_id)
        if left:
            log.info(
                "a stopped mission's attempts did not report within the grace",
                extra={"mission_id": mission_id, "connections": len(left)},
            )
        for key, server_id, client_id in left:
            self._in_background(self._kick(key, server_id, client_id))
        self._watch(mission_id)

    def sweep_soon(self) -> None:
        """``sweep`` in the background (a service's start does not wait on it)."""
        self._in_background(self.sweep())

    async def sweep(self) -> None:
        """Cut the attempt connections the servers hold whose attempt is not open, and
        remember the others, whoever granted them: a predecessor's grants are known to no
        process but the servers. Run once the state is rebuilt (it says what is open);
        an attempt that ends later is cut as one this process granted."""
        if self._nc is None or not self._acting():
            return
        try:
            held = await attempt_connections_held(self._nc)
        except (nats.errors.Error, OSError) as error:
            log.warning(
                "the servers' attempt connections were not listed: a predecessor's live "
                "until their credentials expire",
                extra={"error": str(error) or type(error).__name__},
            )
            return
        # From the look at the state to the last one remembered, no await: an event
        # folded in between cannot end an attempt that is then remembered as open.
        ended = []
        for each in held:
            if self.connections.is_open(each.key):
                self.connections.granted(each.key, each.server_id, each.client_id)
                if self._found is not None:
                    self._found(each)
            else:
                ended.append(each)
        for each in ended:
            self._in_background(self._kick(each.key, each.server_id, each.client_id))
        # An ended mission's attempts still within its grace: cut when it is over.
        for mission_id in dict.fromkeys(each.key.mission_id for each in held):
            self._watch(mission_id)
        self.swept.set()
        log.info(
            "attempt connections found",
            extra={"open": len(held) - len(ended), "ended": len(ended)},
        )

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._kicks.add(task)
        task.add_done_callback(self._kicks.discard)

    async def _kick(self, key: AttemptKey, server_id: str, client_id: int) -> None:
        where = {
            "mission_id": key.mission_id,
            "task_id": key.task_id,
            "attempt": key.attempt,
            "server_id": server_id,
            "client_id": client_id,
        }
        if self._nc is None:
            error: str | None = "no system connection"
        elif not self._acting():
            error = "this process is not the active one any more"
        else:
            error = await kick(self._nc, server_id, client_id)
        if error is None:
            self.cut += 1
            log.info("ended attempt's connection cut", extra=where)
        else:
            # Gone already (the runner closed it, or it expired) is the common case.
            self.failed += 1
            log.info("ended attempt's connection not cut", extra={**where, "error": error})

    async def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for task in list(self._kicks):
            task.cancel()
        await asyncio.gather(*self._kicks, return_exceptions=True)
        if self._nc is not None:
            with contextlib.suppress(nats.errors.Error, OSError):
                await self._nc.close()
            self._nc = None


async def _connection_error(error: Exception) -> None:
    """The system connection's error, one line (nats-py's own logs each with its
    traceback)."""
    log.info("system connection error", extra={"error": str(error) or type(error).__name__})

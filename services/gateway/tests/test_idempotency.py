"""Idempotency keys are reserved before anything else acts: copies of a request, however
many and on whichever replica, get the first one's answer, and only it is rate-limited."""

from __future__ import annotations

import asyncio
import hashlib
import os
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from aether_events import MissionRequested, MissionResumed
from aether_gateway.adapters.db import Database
from aether_gateway.adapters.limits import (
    Fingerprint,
    IdempotencyStore,
    InProgress,
    RateLimiter,
    Reserved,
    StoredResponse,
)
from aether_gateway.api.idempotency import IdempotentPosts

from .conftest import eventually
from .test_commands import MISSION, events_of, publish, wait_for

# 1,000 reproduces the report that found the bug (AETHER_IDEMPOTENCY_COPIES=1000).
COPIES = int(os.environ.get("AETHER_IDEMPOTENCY_COPIES", "200"))


def wide_client(server, **kwargs) -> httpx.AsyncClient:
    """A client that really sends ``COPIES`` requests at once."""
    return server.client(
        timeout=60.0,
        limits=httpx.Limits(max_connections=COPIES, max_keepalive_connections=COPIES),
        **kwargs,
    )


@pytest.mark.slow
async def test_concurrent_copies_with_one_key_all_get_the_first_answer_and_count_once(
    make_gateway, nc
):
    server = await make_gateway(mission_rate_limit=2, mission_rate_window_seconds=3600)
    headers = {"Idempotency-Key": "one-key-many-copies"}
    async with wide_client(server) as client:
        answers = await asyncio.gather(
            *(client.post("/missions", json=MISSION, headers=headers) for _ in range(COPIES))
        )
        assert sorted({a.status_code for a in answers}) == [202], [
            (a.status_code, a.text) for a in answers if a.status_code != 202
        ]
        assert len({a.content for a in answers}) == 1
        assert len({a.headers["location"] for a in answers}) == 1
        assert sum("idempotent-replayed" not in a.headers for a in answers) == 1
        mission_id = answers[0].json()["mission_id"]
        assert len(await events_of(nc, mission_id, MissionRequested)) == 1

    # The copies counted once against the limit of 2: one more mission is allowed. Asked on
    # a connection of its own: one the copies left idle may be closing as it is reused
    # (the server ends idle connections after its keep-alive, 5 s), which a loaded run hit.
    async with server.client() as client:
        other = await client.post("/missions", json=MISSION, headers={"Idempotency-Key": "b"})
        assert other.status_code == 202, other.text
        limited = await client.post("/missions", json=MISSION, headers={"Idempotency-Key": "c"})
        assert limited.status_code == 429


async def test_copies_sent_to_two_replicas_make_one_mission(make_gateway, nc):
    first, second = await make_gateway(), await make_gateway()
    headers = {"Idempotency-Key": "across-replicas"}
    async with wide_client(first) as a, wide_client(second) as b:
        answers = await asyncio.gather(
            *(
                client.post("/missions", json=MISSION, headers=headers)
                for _ in range(COPIES // 2)
                for client in (a, b)
            )
        )
    assert sorted({r.status_code for r in answers}) == [202]
    assert len({r.content for r in answers}) == 1
    mission_id = answers[0].json()["mission_id"]
    assert len(await events_of(nc, mission_id, MissionRequested)) == 1


async def test_concurrent_copies_of_a_refused_command_get_the_same_refusal(http, nc, script):
    # Resuming a mission that is not paused is refused (409): every copy says so, and the
    # key is free again afterwards, so the same request may succeed once it is allowed.
    await publish(nc, script.requested(), script.prepared(), script.plan(), script.approved())
    await wait_for(http, script.mission_id, lambda m: m["status"] == "running")
    url = f"/missions/{script.mission_id}/resume"
    headers = {"Idempotency-Key": "resume-once"}
    answers = await asyncio.gather(*(http.post(url, headers=headers) for _ in range(20)))
    assert {(a.status_code, a.content) for a in answers} == {
        (answers[0].status_code, answers[0].content)
    }
    assert answers[0].status_code == 409

    assert (await http.post(f"/missions/{script.mission_id}/pause")).status_code == 202
    await wait_for(http, script.mission_id, lambda m: m["status"] == "paused")
    resumed = await http.post(url, headers=headers)
    assert resumed.status_code == 202, resumed.text
    assert len(await events_of(nc, script.mission_id, MissionResumed)) == 1


async def _true(value: object) -> bool:
    return bool(value)


def _fingerprint(body: bytes = b"{}", path: str = "/missions") -> Fingerprint:
    digest = hashlib.sha256(b"POST\x00" + path.encode() + b"\x00" + body).hexdigest()
    return Fingerprint(method="POST", path=path, request_hash=digest)


@pytest.fixture
async def store(gateway_db):
    db = Database(gateway_db, max_size=2)
    await db.open()
    await db.migrate()
    try:
        yield IdempotencyStore(db)
    finally:
        await db.close()


async def test_a_key_is_reserved_once_then_answered_from_the_store(store):
    request = _fingerprint()
    reserved = await store.reserve("alice", "k", request)
    assert isinstance(reserved, Reserved)
    assert await store.reserve("alice", "k", request) == InProgress(request)
    assert isinstance(await store.reserve("bob", "k", request), Reserved)  # per caller

    answer = StoredResponse(
        method="POST",
        path="/missions",
        request_hash=request.request_hash,
        status_code=202,
        headers=[["content-type", "application/json"]],
        body=b'{"mission_id": "m-1"}',
    )
    await store.complete("alice", "k", reserved, answer)
    assert await store.reserve("alice", "k", request) == answer


async def test_a_released_or_abandoned_reservation_is_taken_over(store):
    request = _fingerprint()
    first = await store.reserve("alice", "k", request)
    assert isinstance(first, Reserved)
    await store.release("alice", "k", first)
    second = await store.reserve("alice", "k", request)
    assert isinstance(second, Reserved)

    # A lease that ran out (its gateway died mid-request) is taken over, and the late
    # owner can no longer answer for the key.
    store.lease_seconds = 0.0
    third = await store.reserve("alice", "k2", request)
    store.lease_seconds = 60.0
    fourth = await store.reserve("alice", "k2", request)
    assert isinstance(third, Reserved)
    assert isinstance(fourth, Reserved)
    assert fourth.owner != third.owner
    late = StoredResponse("POST", "/missions", request.request_hash, 500, [], b"late")
    await store.complete("alice", "k2", third, late)
    assert isinstance(await store.reserve("alice", "k2", request), InProgress)


def idempotency_middleware(server) -> IdempotentPosts:
    """The gateway's own requests under a key (what its middleware hands them to)."""
    return server.gateway.context.idempotent


async def test_a_copy_waits_for_a_request_running_on_another_replica(http, gateway_server, store):
    # Another replica holds the key: this one waits, then replays what it answered.
    body = b'{"repository":"/repos/demo","requirement":"Add a greeting"}'
    request = _fingerprint(body)
    principal = "bootstrap"
    reserved = await store.reserve(principal, "elsewhere", request)
    assert isinstance(reserved, Reserved)
    copy = asyncio.create_task(
        http.post(
            "/missions",
            content=body,
            headers={"Idempotency-Key": "elsewhere", "content-type": "application/json"},
        )
    )
    middleware = idempotency_middleware(gateway_server)
    await eventually(lambda: _true(middleware._flights), what="the copy to wait")
    different = await http.post(
        "/missions", json={**MISSION, "max_tasks": 3}, headers={"Idempotency-Key": "elsewhere"}
    )
    assert different.status_code == 422
    assert not copy.done()
    answer = StoredResponse(
        "POST", "/missions", request.request_hash, 202, [["location", "/there"]], b"{}"
    )
    await store.complete(principal, "elsewhere", reserved, answer)
    replayed = await asyncio.wait_for(copy, 10)
    assert replayed.status_code == 202
    assert replayed.headers["location"] == "/there"
    assert replayed.headers["idempotent-replayed"] == "true"


async def test_a_copy_that_waits_too_long_is_told_to_try_again(http, gateway_server, store):
    middleware = idempotency_middleware(gateway_server)
    middleware.wait_seconds = 0.3
    body = b'{"repository":"/repos/demo","requirement":"Add a greeting"}'
    assert isinstance(await store.reserve("bootstrap", "slow", _fingerprint(body)), Reserved)
    answer = await http.post(
        "/missions",
        content=body,
        headers={"Idempotency-Key": "slow", "content-type": "application/json"},
    )
    assert answer.status_code == 409
    assert answer.headers["retry-after"] == "1"
    assert "still running" in answer.json()["error"]


async def test_a_limiter_with_a_short_window_leaves_a_longer_windows_hits_alone(gateway_db):
    """Each limiter forgets only its own ended windows: a minute's limiter moving on does
    not reset the count of an hour's limiter sharing the table."""
    db = Database(gateway_db, max_size=2)
    await db.open()
    await db.migrate()
    try:
        hourly = RateLimiter(db, name="commands", limit=1, window_seconds=3600)
        minutely = RateLimiter(db, name="missions", limit=1, window_seconds=60)
        start = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
        assert await hourly.hit("alice", now=start) is None
        # A later minute of the same hour: the minute's limiter drops its ended windows.
        later = start + timedelta(minutes=5)
        assert await minutely.hit("alice", now=later) is None
        assert await hourly.hit("alice", now=later) == 55 * 60
        assert await hourly.hit("bob", now=later) is None  # per caller
    finally:
        await db.close()

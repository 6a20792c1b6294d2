"""Every ``503`` and ``429`` the gateway gives says when to come back (``Retry-After``), a
wait that suits its cause, so the board and the CLI back off by the gateway's word: the
bus away (a real NATS server of the test's own, killed), the git broker away or not set
up, the identity provider away, the database away (``test_http``), and any answer that
forgot to say."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import pytest
from litestar.exceptions import ServiceUnavailableException, TooManyRequestsException

from aether.infra import free_port
from aether_gateway.adapters.diffs import BROKER_RETRY_SECONDS, SETTING_RETRY_SECONDS
from aether_gateway.adapters.hub import FOLLOW_PATIENCE_SECONDS
from aether_gateway.adapters.oidc import RETRY_SECONDS, OidcSettings
from aether_gateway.api.errors import (
    BUS_RETRY_SECONDS,
    DEFAULT_RETRY_SECONDS,
    RUNNERS_RETRY_SECONDS,
    on_http_error,
)
from aether_gateway.api.limits import within_limit
from aether_gateway.app import READY_RETRY_SECONDS

from .conftest import GatewayServer, gateway_settings
from .test_read_model_recovery import own_nats  # noqa: F401 (a fixture)

T = TypeVar("T")


async def _timed(request: Awaitable[T]) -> tuple[T, float]:
    """What ``request`` answered, and how many seconds it took."""
    began = time.monotonic()
    answer = await request
    return answer, time.monotonic() - began


MISSION = {"repository": "/repos/demo", "requirement": "Add a greeting"}


async def test_every_503_while_the_bus_is_away_says_when_to_come_back(
    own_nats,  # noqa: F811
    gateway_db,
):
    server = GatewayServer(gateway_settings(own_nats.url, gateway_db))
    await server.start()
    try:
        own_nats.process.kill()
        own_nats.process.wait()
        async with server.client(timeout=90) as http:
            stream, submitted, runtimes, ready = await asyncio.gather(
                _timed(http.get("/events/stream")),
                http.post("/missions", json=MISSION),
                http.get("/runtimes"),
                http.get("/readyz"),
            )
    finally:
        await server.stop()
    stream, took = stream
    # Told soon: the start's patience with a cluster electing leaders (half a minute) is
    # not a client's (the hub's ``FOLLOW_PATIENCE_SECONDS``, and a little for a loaded
    # machine).
    assert took < FOLLOW_PATIENCE_SECONDS + 3, took
    assert stream.status_code == 503, stream.text
    assert stream.json()["error"] == "the event bus cannot be followed right now; try again"
    assert stream.headers["retry-after"] == str(BUS_RETRY_SECONDS)
    assert submitted.status_code == 503, submitted.text
    assert submitted.headers["retry-after"] in {
        str(BUS_RETRY_SECONDS),
        str(RUNNERS_RETRY_SECONDS),
    }
    assert runtimes.status_code == 503, runtimes.text
    assert runtimes.headers["retry-after"] == str(RUNNERS_RETRY_SECONDS)
    assert ready.status_code == 503, ready.text
    assert ready.headers["retry-after"] == str(READY_RETRY_SECONDS)


async def test_the_brokers_503s_say_a_short_wait_when_it_is_away_and_a_long_one_when_unset(
    make_gateway,
):
    away = await make_gateway(broker_url=f"http://127.0.0.1:{free_port()}")
    unset = await make_gateway(broker_url="")
    asked = {"repository": "/repos/demo"}
    async with away.client() as http:
        unreachable = await http.get("/repositories/default-branch", params=asked)
    async with unset.client() as http:
        unconfigured = await http.get("/repositories/default-branch", params=asked)
    assert unreachable.status_code == 503, unreachable.text
    assert "cannot be reached" in unreachable.json()["error"]
    assert unreachable.headers["retry-after"] == str(BROKER_RETRY_SECONDS)
    assert unconfigured.status_code == 503, unconfigured.text
    assert "AETHER_GATEWAY_BROKER_URL" in unconfigured.json()["error"]
    assert unconfigured.headers["retry-after"] == str(SETTING_RETRY_SECONDS)


async def test_the_identity_provider_away_says_when_to_come_back(make_gateway):
    nowhere = f"http://127.0.0.1:{free_port()}"
    gateway = await make_gateway(oidc=OidcSettings(issuer=nowhere, client_id="aether-board"))
    async with gateway.client(token=None) as anonymous:
        config = await anonymous.get("/auth/oidc")
        token = await anonymous.post(
            "/auth/oidc/token",
            json={"code": "c", "code_verifier": "v" * 43, "nonce": "n"},
        )
    for answer in (config, token):
        assert answer.status_code == 503, answer.text
        assert answer.headers["retry-after"] == str(int(RETRY_SECONDS))


@pytest.mark.parametrize(
    "refusal",
    [
        ServiceUnavailableException(detail="something is away"),
        TooManyRequestsException(detail="too many"),
    ],
)
def test_a_503_or_429_raised_without_a_wait_is_given_one(refusal: Any) -> None:
    answer = on_http_error(None, refusal)  # type: ignore[arg-type]
    assert answer.headers["Retry-After"] == str(DEFAULT_RETRY_SECONDS)


def test_a_wait_of_its_own_is_kept() -> None:
    said = ServiceUnavailableException(detail="away", headers={"retry-after": "7"})
    answer = on_http_error(None, said)  # type: ignore[arg-type]
    assert {k.lower(): v for k, v in answer.headers.items()}["retry-after"] == "7"


class _Limiter:
    """A limit that has just been reached, a slot free again in ``wait`` seconds."""

    limit = 1
    window_seconds = 60

    def __init__(self, wait: float) -> None:
        self.wait = wait

    async def hit(self, caller: str) -> float | None:
        return self.wait


async def test_a_rate_limits_wait_under_a_second_is_said_as_one_second_not_zero() -> None:
    with pytest.raises(TooManyRequestsException) as refused:
        await within_limit(_Limiter(0.3), "caller", "write requests")  # type: ignore[arg-type]
    assert refused.value.headers == {"Retry-After": "1"}
    assert refused.value.detail.endswith("try again in 1 s")

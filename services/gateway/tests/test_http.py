"""The REST API against a real NATS and a real PostgreSQL."""

from __future__ import annotations

import os

from litestar import Litestar, post
from litestar.params import FromPath
from prometheus_client import REGISTRY

from aether_events import MissionRequested
from aether_gateway.config import DEFAULT_MISSION_BUDGET_USD, GatewaySettings
from aether_gateway.metrics import routes_at_zero

from .conftest import stored_events


async def test_health_and_readiness(http):
    assert (await http.get("/healthz")).json() == {"status": "ok"}
    ready = await http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"


async def test_not_ready_when_the_database_does_not_answer(http, gateway_server):
    await gateway_server.gateway.db.close()
    response = await http.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {
        "status": "not-ready",
        "detail": "database unreachable",
        "pid": os.getpid(),  # the gateway runs in this test's process
    }


async def test_a_request_while_the_database_is_gone_is_a_503_to_try_again(http, gateway_server):
    # Not a 500 "internal error": the request was fine, and once the pool has its
    # connections back (a restarted PostgreSQL) the same request answers.
    await gateway_server.gateway.db.close()
    response = await http.get("/missions")
    assert response.status_code == 503
    assert response.json() == {"error": "the database is unavailable; try again", "detail": None}
    assert response.headers["retry-after"] == "1"


async def test_the_ready_metric_follows_the_database_like_readyz(http, gateway_server):
    # The alert on a service not ready reads the gauge: it must see what /readyz sees.
    def ready() -> float | None:
        return REGISTRY.get_sample_value("aether_service_ready", {"service": "gateway"})

    assert "aether_service_ready" in (await http.get("/metrics")).text
    assert ready() == 1.0
    await gateway_server.gateway.db.close()
    assert (await http.get("/metrics")).status_code == 200
    assert ready() == 0.0
    assert 'aether_service_ready{service="gateway"} 0.0' in (await http.get("/metrics")).text


async def test_gateways_in_one_process_share_the_routes_and_each_answers_as_itself(make_gateway):
    # The routes are built once per process; each gateway's app hands them its own
    # context, so what one gateway knows (its admin token, its database) is never the
    # other's, whichever of them answered first.
    other_token = "another-bootstrap-admin-token"
    first = await make_gateway()
    second = await make_gateway(admin_token=other_token)
    assert first._server.config.app.routes is second._server.config.app.routes
    async with (
        first.client() as first_admin,
        second.client(token=other_token) as second_admin,
        first.client(token=other_token) as second_token_at_first,
        second.client() as first_token_at_second,
    ):
        for _ in range(2):
            assert (await first_admin.get("/missions")).status_code == 200
            assert (await second_admin.get("/missions")).status_code == 200
            assert (await second_token_at_first.get("/missions")).status_code == 401
            assert (await first_token_at_second.get("/missions")).status_code == 401
        await second.gateway.db.close()
        assert (await second_admin.get("/readyz")).json()["detail"] == "database unreachable"
        assert (await first_admin.get("/readyz")).json()["status"] == "ready"


async def test_a_valid_request_publishes_mission_requested(http, nc, gateway_server):
    body = {
        "repository": "/repos/demo",
        "requirement": "Add a greeting",
        "max_concurrency": 2,
        "auto_approve": True,
        "model_overrides": {"standard": "claude-x"},
    }
    response = await http.post("/missions", json=body)
    assert response.status_code == 202, response.text
    answer = response.json()
    mission_id = answer["mission_id"]
    assert answer["url"] == f"{gateway_server.settings.base_url}/missions/{mission_id}"
    assert answer["events_url"] == answer["url"] + "/events"
    # No budget asked for: the default one, so a real model never spends without a limit.
    assert answer["budget_usd"] == DEFAULT_MISSION_BUDGET_USD == 5.0

    events = await stored_events(nc, mission_id)
    assert len(events) == 1
    requested = events[0]
    assert isinstance(requested, MissionRequested)
    assert requested.requirement == "Add a greeting"
    assert requested.budget_usd == 5.0
    # No base branch asked for: left to the broker, which reads the repository's default.
    assert requested.base_branch == ""
    assert requested.max_concurrency == 2
    assert requested.max_tasks == 20
    assert requested.auto_approve is True
    assert requested.model_overrides == {"standard": "claude-x"}
    assert requested.correlation_id == requested.event_id
    assert requested.causation_id is None


# A refused request and what its error names.
INVALID_REQUESTS: list[tuple[dict[str, object], str]] = [
    ({"requirement": "x"}, "repository"),
    ({"repository": "/r"}, "requirement"),
    ({"repository": "/r", "requirement": ""}, "requirement"),
    ({"repository": "/r", "requirement": "   "}, "requirement"),
    ({"repository": "", "requirement": "x"}, "repository"),
    ({"repository": "/r", "requirement": "x" * 20001}, "requirement"),
    ({"repository": "/r", "requirement": "x", "max_concurrency": 0}, "max_concurrency"),
    ({"repository": "/r", "requirement": "x", "max_concurrency": 65}, "max_concurrency"),
    ({"repository": "/r", "requirement": "x", "max_tasks": 201}, "max_tasks"),
    ({"repository": "/r", "requirement": "x", "max_concurrency": "four"}, "max_concurrency"),
    ({"repository": "/r", "requirement": "x", "budget_usd": -1}, "budget_usd"),
    ({"repository": "/r", "requirement": "x", "auto_aprove": True}, "auto_aprove"),
    ({"repository": 5, "requirement": "x"}, "repository"),
]


async def test_invalid_requests_are_refused_with_a_message(http, nc):
    # One gateway for every case: a refusal changes nothing, and a gateway of its own
    # for each was nearly all of their time.
    for body, mentions in INVALID_REQUESTS:
        response = await http.post("/missions", json=body)
        assert 400 <= response.status_code < 500, (body, response.text)
        answer = response.json()
        assert set(answer) == {"error", "detail"}, answer
        assert mentions in answer["error"], (body, answer)


async def test_a_body_that_is_not_json_is_refused(http):
    response = await http.post(
        "/missions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]


async def test_an_unknown_mission_is_404_with_a_message(http):
    response = await http.get("/missions/m-doesnotexist")
    assert response.status_code == 404
    assert response.json()["error"] == "mission 'm-doesnotexist' not found"


async def test_listing_validates_its_query(http):
    assert (await http.get("/missions", params={"limit": 0})).status_code == 400
    assert (await http.get("/missions", params={"limit": 201})).status_code == 400
    bad_status = await http.get("/missions", params={"status": "sleeping"})
    assert bad_status.status_code == 400
    assert "sleeping" in bad_status.json()["error"]
    assert (await http.get("/missions")).json() == {"missions": [], "next_cursor": None}


async def test_metrics_count_requests_by_route(http):
    await http.get("/missions/m-nothere")
    text = (await http.get("/metrics")).text
    assert (
        'aether_http_requests_total{method="GET",route="/missions/{mission_id}",status="404"}'
        in text
    )
    assert "aether_sse_clients" in text
    assert "aether_http_request_duration_seconds_bucket" in text


async def test_openapi_schema_is_served(http):
    schema = (await http.get("/schema/openapi.json")).json()
    assert "/missions" in schema["paths"]
    assert "/missions/{mission_id}/plan/approve" in schema["paths"]


def test_every_route_is_exported_at_zero_before_its_first_request():
    @post("/zero-test/{item:str}", status_code=202)
    async def accept(item: FromPath[str]) -> None:
        return None

    routes_at_zero(Litestar([accept]))
    labels = {"route": "/zero-test/{item}", "method": "POST"}
    get = REGISTRY.get_sample_value
    assert get("aether_http_requests_total", {**labels, "status": "202"}) == 0.0
    assert get("aether_http_request_duration_seconds_count", labels) == 0.0
    options = {**labels, "method": "OPTIONS", "status": "200"}
    assert get("aether_http_requests_total", options) is None


def test_the_default_mission_budget_can_be_changed_or_turned_off(monkeypatch):
    for raw, expected in (("", 5.0), ("12.5", 12.5), ("0", None), ("none", None)):
        monkeypatch.setenv("AETHER_DEFAULT_MISSION_BUDGET_USD", raw)
        assert GatewaySettings.from_env().default_mission_budget_usd == expected

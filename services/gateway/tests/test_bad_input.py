"""Bad input answers 400 in the API's error format, and nothing is published for it."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st
from litestar.exceptions import ValidationException

from aether_events import MISSIONS_STREAM, MissionPaused, MissionRequested
from aether_gateway.api.bodies import CreateMission
from aether_gateway.api.inputs import check_path, check_query_string, unstorable

from .test_commands import MISSION, events_of, publish

QUERY_ROUTES = ["/missions", "/tasks", "/events", "/agents", "/usage", "/admin/tokens"]


def assert_refused(response, mentions: str) -> None:
    assert response.status_code == 400, response.text
    answer = response.json()
    assert set(answer) == {"error", "detail"}
    assert mentions in answer["error"], answer


async def stream_messages(nc) -> int:
    return (await nc.jetstream().stream_info(MISSIONS_STREAM)).state.messages


# --- query parameters and paths --------------------------------------------------------


BAD_QUERY_VALUES = ["%00", "a%00b", "%1B[31m", "%7F", "%C2%85", "%FF", "%ED%A0%80"]


async def test_a_control_character_or_bad_utf8_in_any_query_parameter_is_refused(http):
    # Every route and value against one gateway: a refusal changes nothing, and a gateway
    # of its own for each of the 42 requests was nearly all of their time.
    for route in QUERY_ROUTES:
        for value in BAD_QUERY_VALUES:
            name = "repository" if route == "/missions" else "mission_id"
            response = await http.get(f"{route}?{name}={value}")
            assert response.status_code == 400, f"{route}?{name}={value}: {response.text}"
            assert_refused(response, name)


async def test_a_control_character_in_a_parameter_name_or_the_path_is_refused(http):
    assert_refused(await http.get("/missions?repo%00=1"), "query")
    assert_refused(await http.get("/missions/m-%00"), "path")
    assert_refused(await http.delete("/admin/tokens/t%0A1"), "path")


async def test_ordinary_query_values_still_work(http):
    response = await http.get("/missions?repository=/repos/caf%C3%A9%20x&limit=5")
    assert response.status_code == 200, response.text


@given(st.text(alphabet=st.characters(exclude_categories=["Cs"])))
def test_query_values_are_refused_exactly_when_they_hold_control_characters(text):
    query = b"q=" + quote(text, safe="").encode()
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in text):
        with pytest.raises(ValidationException):
            check_query_string(query)
        with pytest.raises(ValidationException):
            check_path(b"/missions/" + quote(text).encode())
    else:
        check_query_string(query)
        check_path(b"/missions/" + quote(text).encode())


# --- bodies ----------------------------------------------------------------------------


# A refused body and what its error names.
BAD_BODIES: list[tuple[bytes, str]] = [
    (b'{"repository": "/r\\u0000", "requirement": "x"}', "repository"),
    (b'{"repository": "/r", "requirement": "x\\u0000y"}', "requirement"),
    (b'{"repository": "/r", "requirement": "x", "base_branch": "\\u0000"}', "base_branch"),
    (b'{"repository": "/r", "requirement": "x", "verify_command": "a\\u0000"}', "verify"),
    (
        b'{"repository": "/r", "requirement": "x", "model_overrides": {"small": "\\u0000"}}',
        "model_overrides.small",
    ),
    (
        b'{"repository": "/r", "requirement": "x", "model_overrides": {"\\u0000": "v"}}',
        "model_overrides",
    ),
    # Overrides are per model tier: another key would be kept and never used.
    (b'{"repository": "/r", "requirement": "x", "model_overrides": {"fast": "m"}}', "'fast'"),
    (
        b'{"repository": "/r", "requirement": "x", "runtime_overrides": {"simple": "builtin"}}',
        "runtime_overrides",
    ),
    (b'{"repository": "/r", "requirement": "\\ud800"}', "not valid JSON"),
    (b'{"repository": "/r", "requirement": "\\udc00 x"}', "surrogate"),
    (b'{"repository": "\xff\xfe", "requirement": "x"}', "UTF-8"),
    (b'{"repository": "\xed\xa0\x80", "requirement": "x"}', "UTF-8"),
    (b"[" * 100_000 + b"]" * 100_000, "body"),
    (
        b'{"repository": "/r", "requirement": "x", "model_overrides": {"small": '
        + b"[" * 100_000
        + b"]" * 100_000
        + b"}}",
        "model_overrides",
    ),
    (b'{"repository": "/r", "requirement": "x", "budget_usd": "3"}', "budget_usd"),
    (b'{"repository": "/r", "requirement": "x", "max_tasks": 3.5}', "max_tasks"),
    (b'{"repository": "/r", "requirement": "x", "auto_approve": "true"}', "auto_approve"),
    (b'{"repository": "/r", "requirement": "x", "max_concurrency": "2"}', "max_concurrency"),
    (b"", "a JSON body is required"),
    (b"{", "not valid JSON"),
]


async def test_a_mission_request_that_cannot_be_stored_is_refused_before_publishing(http, nc):
    # Every body against one gateway, as the query values above: a refusal changes
    # nothing (checked after each), and a gateway of its own for each of the 18 bodies
    # was nearly all of their time.
    for body, mentions in BAD_BODIES:
        response = await http.post(
            "/missions", content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == 400, f"{body[:80]!r}: {response.text}"
        assert_refused(response, mentions)
        assert await stream_messages(nc) == 0, f"{body[:80]!r} was published"


async def test_a_valid_body_is_still_accepted_with_integers_for_amounts(http, nc):
    response = await http.post("/missions", json={**MISSION, "budget_usd": 3})
    assert response.status_code == 202, response.text
    assert await stream_messages(nc) == 1


async def test_an_integer_written_with_a_zero_fraction_is_an_integer(http, nc):
    """JSON Schema's ``integer``, which the API's document declares, is any number whose
    fractional part is zero; a generator of valid input (and some encoders) write 3.0."""
    response = await http.post(
        "/missions",
        content=b'{"repository": "/r", "requirement": "x", "max_tasks": 3.0, '
        b'"max_concurrency": 2.0}',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 202, response.text
    [requested] = await events_of(nc, response.json()["mission_id"], MissionRequested)
    assert (requested.max_tasks, requested.max_concurrency) == (3, 2)
    assert isinstance(requested.max_tasks, int)


async def test_every_command_body_refuses_nul(http, nc, script):
    await publish(nc, script.requested(), script.prepared(), script.plan(), script.approved())
    base = f"/missions/{script.mission_id}"
    before = await stream_messages(nc)
    for path, body in [
        (f"{base}/messages", {"text": "hi\x00"}),
        (f"{base}/pause", {"reason": "\x00"}),
        (f"{base}/cancel", {"reason": "x\x00"}),
        (f"{base}/tasks/t1/skip", {"reason": "\x00"}),
        ("/admin/tokens", {"name": "n\x00", "scopes": ["read"]}),
    ]:
        assert_refused(await http.post(path, json=body), "NUL")
    assert_refused(await http.post(f"{base}/budget", json={"budget_usd": "9"}), "budget_usd")
    assert_refused(await http.post(f"{base}/plan/approve", json={"version": 1.5}), "version")
    assert await stream_messages(nc) == before
    assert (await http.get("/admin/tokens")).json()["tokens"] == []
    # A body may still be left out where the route allows it.
    assert (await http.post(f"{base}/pause")).status_code == 202
    assert len(await events_of(nc, script.mission_id, MissionPaused)) == 1


def test_unstorable_names_the_first_string_postgresql_cannot_hold():
    fine = CreateMission(repository="/r", requirement="tab\tnew\nline é 🚀")
    assert unstorable(fine) is None
    bad = CreateMission(repository="/r", requirement="x", model_overrides={"a": "b", "c": "\x00"})
    assert unstorable(bad) == "model_overrides.c"
    assert unstorable({"k": ["ok", "\udcff"]}) == "k.1"
    assert unstorable("\x00") == "body"


# A body's value out of its bounds, and the refusal's sentence: it gave msgspec's
# "Expected `str` of length <= 20000", where the pattern's refusal was already plain.
OUT_OF_BOUNDS: list[tuple[str, dict[str, object], str]] = [
    (
        "/missions",
        {"requirement": "x" * 20_001},
        "invalid request (requirement: must have at most 20,000 characters)",
    ),
    ("/missions", {"repository": ""}, "invalid request (repository: must not be empty)"),
    ("/missions", {"max_concurrency": 0}, "invalid request (max_concurrency: must be at least 1)"),
    ("/missions", {"max_tasks": 201}, "invalid request (max_tasks: must be at most 200)"),
    ("/missions", {"budget_usd": 0}, "invalid request (budget_usd: must be more than 0)"),
]


async def test_a_value_out_of_its_bounds_is_refused_in_a_sentence(http, nc):
    for path, fields, said in OUT_OF_BOUNDS:
        response = await http.post(path, json={**MISSION, **fields})
        assert_refused(response, said)
        assert response.json()["error"] == said
    answer = await http.post(
        "/admin/tokens", json={"name": "ci", "scopes": [], "expires_in_days": 0}
    )
    assert answer.json()["error"] == "invalid request (scopes: must not be empty)"
    assert await stream_messages(nc) == 0

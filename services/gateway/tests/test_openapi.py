"""The OpenAPI document: valid, complete, and saying what each route really does."""

from __future__ import annotations

import asyncio
import json
import re
import warnings
from typing import Any
from urllib.parse import quote

import jsonschema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar.handlers import HTTPRouteHandler
from openapi_spec_validator import validate

OPEN = {"/healthz", "/readyz", "/metrics"}


def served_routes(app) -> dict[str, set[str]]:
    """Every API route the app serves: its path template and methods."""
    found: dict[str, set[str]] = {}
    for route in app.routes:
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
        if path in OPEN or path.startswith("/schema"):
            continue
        for handler in getattr(route, "route_handlers", []):
            if isinstance(handler, HTTPRouteHandler) and handler.include_in_schema:
                found.setdefault(path, set()).update(m.lower() for m in handler.http_methods)
    return found


async def test_the_document_validates_and_lists_every_route(http, gateway_server):
    response = await http.get("/schema/openapi.json")
    assert response.status_code == 200
    document = response.json()
    validate(document)

    documented = {
        path: {m for m in item if m in ("get", "post", "put", "patch", "delete")}
        for path, item in document["paths"].items()
    }
    app = gateway_server._server.config.app.routes  # the Litestar app it hands requests to
    assert documented == served_routes(app)
    assert len(documented) >= 17


async def test_every_operation_documents_auth_errors_and_its_parameters(http):
    document = (await http.get("/schema/openapi.json")).json()
    assert document["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An API token (aet_…), AETHER_ADMIN_TOKEN, or an OIDC JWT"
        " (or an opaque OIDC access token, with introspection on)",
    }
    assert document["security"] == [{"bearer": []}]
    open_operations = set()
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method not in ("get", "post", "delete"):
                continue
            where = f"{method.upper()} {path}"
            assert operation.get("summary"), where
            if operation.get("security") == [{}]:
                open_operations.add(where)
            else:
                assert {"401", "403"} <= set(operation["responses"]), where
            declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert declared == set(re.findall(r"\{(\w+)\}", path)), where
            for code, answer in operation["responses"].items():
                if code[0] in "45":  # every error has the one error body
                    ref = answer["content"]["application/json"]["schema"]["$ref"]
                    assert ref == "#/components/schemas/ErrorBody", (where, code)
            success = [c for c in operation["responses"] if c.startswith("2")]
            assert success, where
            if method == "post" and path.startswith("/missions"):
                assert success == ["202"], where
                headers = {p["name"] for p in operation["parameters"] if p["in"] == "header"}
                assert "Idempotency-Key" in headers, where
                assert "409" in operation["responses"], where
    # Only the OIDC sign-in's two steps are open (the caller has no token yet).
    assert open_operations == {
        "GET /auth/oidc",
        "POST /auth/oidc/token",
        "POST /auth/oidc/refresh",
        "POST /auth/oidc/device",
        "POST /auth/oidc/device/token",
    }


async def test_documented_bodies_match_the_routes(http):
    document = (await http.get("/schema/openapi.json")).json()
    paths = document["paths"]
    create = paths["/missions"]["post"]
    schema = create["requestBody"]["content"]["application/json"]["schema"]
    ref = schema["$ref"].rsplit("/", 1)[-1]
    body = document["components"]["schemas"][ref]
    assert set(body["required"]) == {"repository", "requirement"}
    assert {"budget_usd", "auto_approve", "max_concurrency", "model_overrides"} <= set(
        body["properties"]
    )
    assert "429" in create["responses"]
    sse = paths["/missions/{mission_id}/events"]["get"]
    assert "text/event-stream" in sse["responses"]["200"]["content"]
    names = {p["name"] for p in sse["parameters"]}
    assert {"Last-Event-ID", "after", "until_terminal", "telemetry", "access_token"} <= names
    assert paths["/admin/tokens"]["post"]["responses"].keys() >= {"201", "400"}


async def test_every_write_route_but_mission_requests_has_the_command_rate_limit(
    http, gateway_server
):
    """Each POST and DELETE a caller with a token makes counts against its command limit
    and documents the 429 (``POST /missions`` has a limit of its own)."""
    from aether_gateway.api.limits import COMMAND_RATE

    document = (await http.get("/schema/openapi.json")).json()
    app = gateway_server._server.config.app.routes
    limited = set()
    for route in app.routes:
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
        for handler in getattr(route, "route_handlers", []):
            if not isinstance(handler, HTTPRouteHandler) or not handler.include_in_schema:
                continue
            for method in handler.http_methods & {"POST", "DELETE"}:
                operation = document["paths"][path][method.lower()]
                if operation.get("security") == [{}] or path == "/missions":
                    assert COMMAND_RATE not in handler.resolve_guards(), path
                    continue
                assert COMMAND_RATE in handler.resolve_guards(), (method, path)
                assert "429" in operation["responses"], (method, path)
                limited.add(f"{method} {path}")
    assert {"DELETE /admin/tokens/{token_id}", "POST /missions/{mission_id}/messages"} <= limited
    assert len(limited) >= 13


async def post_json(http, path: str, body: dict) -> Any:
    """``body`` sent as JSON with every character outside ASCII escaped, so that an
    unpaired surrogate goes as the ``\\ud800`` a client may well send (httpx's own
    encoding cannot encode one)."""
    content = json.dumps(body, ensure_ascii=True)
    return await http.post(path, content=content, headers={"content-type": "application/json"})


def body_validator(document: dict, name: str) -> jsonschema.Draft202012Validator:
    """The document's schema of a request body, as a validator (its $refs resolved)."""
    schema = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
    return jsonschema.Draft202012Validator(schema)


# Strings the schema and the API must judge alike: blank in Python's sense (which the
# ECMA-262 ``\s`` of JSON Schema validators does not match for U+001C, and does for
# U+FEFF), NUL anywhere, and plain text.
TEXTS = [
    *("x", " x ", "", "  ", "\t\n", "\u2003", "\x1c", "\ufeff", "a\x00b", "\x00", "é"),
    # Unpaired surrogates (refused), and a character beyond U+FFFF (a pair in JSON: taken).
    *("a\ud800b", "\udc00", " \ud83d", "\U0001f600", " \U0001f600 "),
]
MISSION_PROBES = [
    *({"requirement": text} for text in TEXTS),
    *({"repository": text} for text in TEXTS),
    *({"budget_usd": budget} for budget in [0, -1, 0.0, 1e-9, 2.5, None]),
    {"verify_command": "pytest\x00"},
    {"base_branch": "ma\x00in"},
    {"model_overrides": {"small": "claude\x00"}},
    {"model_overrides": {"sm\x00all": "claude"}},
    {"model_overrides": {"small": "claude-tiny"}},
]


async def test_the_document_and_the_api_agree_on_text_nul_and_budgets(make_gateway):
    """A body the document calls valid is not refused as invalid (400), and one it calls
    invalid is: blank text, NUL in a string, an optional budget that is not positive."""
    server = await make_gateway(mission_rate_limit=0, command_rate_limit=0)
    async with server.client() as http:
        document = (await http.get("/schema/openapi.json")).json()
        missions = body_validator(document, "CreateMission")
        messages = body_validator(document, "PostMessage")
        disagreements = []
        for probe in MISSION_PROBES:
            body = {"repository": "/repos/demo", "requirement": "Add a greeting", **probe}
            answer = await post_json(http, "/missions", body)
            valid = missions.is_valid(body)
            if valid != (answer.status_code != 400):
                disagreements.append((probe, valid, answer.status_code, answer.text))
        for text in TEXTS:
            # An unknown mission: a valid body is a 404, an invalid one a 400.
            answer = await post_json(http, "/missions/m-unknown/messages", {"text": text})
            valid = messages.is_valid({"text": text})
            if valid != (answer.status_code != 400):
                disagreements.append((text, valid, answer.status_code, answer.text))
        assert not disagreements
        blank = await http.post("/missions/m-unknown/messages", json={"text": "  "})
    [refusal] = blank.json()["detail"]
    assert (refusal["key"], refusal["message"]) == (
        "text",
        "must not be blank (nor contain NUL characters or unpaired surrogates)",
    )


async def test_generated_messages_are_judged_alike_by_the_document_and_the_api(make_gateway):
    """A property test over text made of whitespace of every kind, NUL and letters."""
    server = await make_gateway(command_rate_limit=0)
    loop = asyncio.get_running_loop()
    async with server.client() as http:
        document = (await http.get("/schema/openapi.json")).json()
    messages = body_validator(document, "PostMessage")
    alphabet = st.sampled_from([" ", "\t", "\n", "\x1c", "\x85", "\u3000", "\ufeff", "\x00", "a"])

    async def status_of(text: str) -> int:
        async with server.client() as http:
            answer = await http.post("/missions/m-unknown/messages", json={"text": text})
        return answer.status_code

    @settings(
        max_examples=40,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.text(alphabet, min_size=1, max_size=6))
    def agrees(text: str) -> None:
        status = asyncio.run_coroutine_threadsafe(status_of(text), loop).result(timeout=30)
        assert messages.is_valid({"text": text}) == (status != 400), (text, status)

    await asyncio.to_thread(agrees)


def test_the_routes_are_built_without_a_deprecated_litestar_idiom() -> None:
    """Litestar 3 drops what it deprecates now (a dependency's provider whose own
    dependency is inferred from its name, for one): the routes are built with none."""
    from litestar.exceptions import LitestarDeprecationWarning

    from aether_gateway.app import create_routes

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        create_routes()
    deprecated = [
        str(w.message) for w in caught if issubclass(w.category, LitestarDeprecationWarning)
    ]
    assert deprecated == []


# What the input guard refuses in a query parameter or a path, whatever the route.
REFUSED_IN_PARAMETERS = ["a\x01", "\x00", "\x1f", "\x7f", "\x85", "\x9f", "a\ud800", "\udfff"]
TAKEN_IN_PARAMETERS = ["x", "é", "\U0001f600", "a b"]


def parameter_value(schema: dict, text: str) -> Any:
    """``text`` as the value of a parameter of ``schema`` (an array's one item)."""
    arrays = [schema, *schema.get("oneOf", []), *schema.get("anyOf", [])]
    return [text] if any(s.get("type") == "array" for s in arrays) else text


async def test_the_document_states_that_control_characters_and_surrogates_are_refused(
    http,
):
    """Each operation documents its 400; each string query or path parameter has a
    pattern that refuses what the input guard refuses and takes what it takes, and a
    description that says so; and the API refuses such a value with that 400."""
    document = (await http.get("/schema/openapi.json")).json()
    strings = 0
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method not in ("get", "post", "delete"):
                continue
            where = f"{method.upper()} {path}"
            refused = operation["responses"].get("400")
            assert refused is not None, where
            assert "control character" in refused["description"], where
            assert "unpaired surrogate" in refused["description"], where
            for parameter in operation.get("parameters", []):
                if parameter["in"] not in ("query", "path"):
                    continue
                name = f"{where} {parameter['name']}"
                assert "control character" in parameter["description"], name
                schema = parameter["schema"]
                validator = jsonschema.Draft202012Validator(schema)
                if not validator.is_valid(parameter_value(schema, "x")):
                    continue  # not free text (an integer, a boolean, a choice)
                strings += 1
                for text in REFUSED_IN_PARAMETERS:
                    assert not validator.is_valid(parameter_value(schema, text)), (name, text)
                for text in TAKEN_IN_PARAMETERS:
                    assert validator.is_valid(parameter_value(schema, text)), (name, text)
    assert strings >= 20, strings
    # The API agrees: a query parameter and a path segment of each kind refused.
    for text in REFUSED_IN_PARAMETERS:
        encoded = quote(text.encode("utf-8", "surrogatepass"), safe="")
        for url in (f"/missions?repository={encoded}", f"/missions/m-{encoded}"):
            answer = await http.get(url)
            assert answer.status_code == 400, (url, answer.text)
            # A lone surrogate percent-encoded is bytes that are not UTF-8.
            said = answer.json()["error"]
            assert "control characters" in said or "not valid UTF-8" in said, url
    assert (await http.get("/missions", params={"repository": "\U0001f600"})).status_code == 200

"""Fuzzing the API from its OpenAPI document (schemathesis) against a running gateway on
real NATS and PostgreSQL: no input, valid or not, gets a 5xx, and every answer matches
the document (status code, content type, body schema).

Each operation gets valid and invalid inputs, then a stateful run follows the links
added in ``fuzzer.py`` (a mission's id from ``POST /missions`` into the routes that take
it, a new token's id into its revocation). Generation is derandomized, so CI sees the
same cases every run; ``AETHER_FUZZ_EXAMPLES`` raises the number of cases per operation
for a deeper run by hand. The fuzzer runs in a process of its own (see ``fuzzer.py``).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from .conftest import ADMIN_TOKEN

MINIMUM_CASES = 1000
FUZZER = Path(__file__).with_name("fuzzer.py")


@pytest.mark.slow
async def test_fuzzing_the_openapi_document_finds_no_server_error(make_gateway, nc, tmp_path):
    # No rate limits: the fuzzer requests hundreds of missions and commands.
    server = await make_gateway(mission_rate_limit=0, command_rate_limit=0)
    async with server.client() as client:
        document = (await client.get("/schema/openapi.json")).json()
    given = {"document": document, "base_url": server.base_url, "token": ADMIN_TOKEN}
    result = tmp_path / "tally.json"
    fuzzing = await asyncio.create_subprocess_exec(
        sys.executable,
        str(FUZZER),
        str(result),
        stdin=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await fuzzing.communicate(json.dumps(given).encode())
    assert fuzzing.returncode == 0, err.decode(errors="replace")[-4000:]
    tally = json.loads(result.read_text())
    statuses = dict(tally["statuses"])
    stateful = {(label, status): n for label, status, n in tally["stateful"]}
    assert not tally["failures"], "\n\n".join(tally["failures"])
    print(f"fuzzing: {tally['cases']} cases, answers by status {sorted(statuses.items())}")
    print(f"stateful: {sorted(stateful.items())}, flaky replays: {tally['flaky_replays']}")
    assert tally["cases"] >= MINIMUM_CASES, tally
    assert not any(status >= 500 for status in statuses), statuses
    # Valid input also got through: the fuzzer did not only knock on closed doors.
    assert {200, 201, 202} <= statuses.keys(), statuses
    # The stateful run followed the links: it created missions, and routes that take a
    # mission's id then succeeded, which a made-up id never does.
    assert stateful.get(("POST /missions", 202)), stateful
    linked = {
        label: n
        for (label, status), n in stateful.items()
        if "{mission_id}" in label and 200 <= status < 300
    }
    assert sum(linked.values()) >= 3, stateful

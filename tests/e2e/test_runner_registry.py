"""The registry of live runners with the real services: the stack's agent runner
announces its runtimes, the gateway refuses a mission naming another and lists them
(``GET /runtimes``, ``aether runtimes``), and a killed runner's entry expires while its
restarted successor announces itself."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from aether.cli import main
from aether.stack import Stack


async def listed(stack: Stack, holds: Callable[[dict[str, Any]], bool], within: float) -> dict:
    """``GET /runtimes`` once it answers what ``holds`` accepts (it is read again every
    2 s at most; the runners write every 2 s here)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    async with httpx.AsyncClient(base_url=stack.gateway_url, headers=stack.auth_headers) as c:
        while True:
            response = await c.get("/runtimes")
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            if holds(body):
                return body
            assert loop.time() < deadline, body
            await asyncio.sleep(0.25)


def runner_ids(body: dict[str, Any]) -> set[str]:
    return {runner["runner_id"] for runner in body["runners"]}


async def test_the_runners_runtimes_are_known_to_the_gateway(
    running: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    stack = running
    body = await listed(stack, lambda b: len(b["runners"]) == 1, within=60)
    [runner] = body["runners"]
    assert "builtin" in runner["runtimes"]
    assert runner["default_runtime"] == "builtin"
    assert runner["lanes"] >= 1 and runner["version"]
    have = [offer["name"] for offer in body["runtimes"]]

    # A runtime no live runner has: refused at once, naming those it has.
    async with httpx.AsyncClient(base_url=stack.gateway_url, headers=stack.auth_headers) as c:
        refused = await c.post(
            "/missions",
            json={"repository": "/nowhere", "requirement": "x", "runtime": "no-such-agent"},
        )
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"] == (
        f"no live agent runner has the runtime 'no-such-agent'; the runners have: {', '.join(have)}"
    )

    # What the command line shows.
    capsys.readouterr()
    args = ["--url", stack.gateway_url, "--token", stack.admin_token, "runtimes"]
    assert await asyncio.to_thread(main, args) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1].split()[:2] == ["builtin", runner["runner_id"]]
    assert runner["runner_id"] in out.splitlines()[-1]

    # Killed without a word: its entry expires (6 s here); the runner started again
    # announces itself under a new id.
    await asyncio.to_thread(stack.kill, "agent-runner")
    killed = runner["runner_id"]
    await listed(stack, lambda b: killed not in runner_ids(b), within=30)
    stack.start_service("agent-runner")
    await asyncio.to_thread(stack.wait_ready, ["agent-runner"])
    after = await listed(stack, lambda b: len(b["runners"]) == 1, within=60)
    assert runner_ids(after) != {killed}

"""The board's live stream refused with "try again later" in a real browser (Debian's
chromium, driven by Playwright) against a real gateway on real NATS and PostgreSQL: a
stream refused with ``429`` and ``Retry-After`` (the caller's streams at
``AETHER_STREAM_LIMIT``) is opened again no sooner than the gateway said, the page says
live updates are paused meanwhile, and the events published while it waited arrive once
each when it resumes after the last one it showed.
"""

# The browser fixtures are imported from tests.web.browser, then named as parameters.
# ruff: noqa: F811
from __future__ import annotations

import contextlib
import itertools
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aether_events import AgentStarted, EventPublisher
from aether_gateway.api.live import STREAM_RETRY_SECONDS
from tests.web.browser import artefacts, browser, chromium, expect  # noqa: F401 (fixtures)

from .conftest import GatewayServer, Script, eventually
from .test_web import goto, signed_in


def stream_requests(page: Any, path: str) -> list[Any]:
    """The requests ``page`` makes to the event stream at ``path``, as they are made."""
    seen: list[Any] = []
    page.on("request", lambda r: seen.append(r) if r.url.split("?")[0].endswith(path) else None)
    return seen


async def answered_at(request: Any) -> float:
    """When (ms since the epoch, on the browser's clock) ``request``'s answer was read."""
    await request.response()  # its timing is complete once answered
    timing = request.timing
    end = timing["responseEnd"] if timing["responseEnd"] >= 0 else timing["responseStart"]
    return float(timing["startTime"] + end)


async def task_folded(server: GatewayServer, script: Script) -> None:
    """Wait until the gateway's read model holds task t1 (the page shows "Task not found"
    for good if it is opened before: on a loaded machine the fold can trail the publish)."""
    async with server.client() as client:

        async def folded() -> bool:
            answer = await client.get(f"/missions/{script.mission_id}/tasks/t1")
            return answer.status_code == 200

        await eventually(folded, timeout=30, what="task t1 in the read model")


async def test_a_stream_refused_with_retry_after_waits_that_long_and_misses_nothing(
    make_gateway: Callable[..., Awaitable[GatewayServer]], nc: Any, script: Script, browser: Any
) -> None:
    server = await make_gateway(stream_limit=1)
    publisher = EventPublisher(nc.jetstream())
    await publisher.publish_all(
        [script.requested(), script.prepared(), script.plan(), script.approved()]
    )
    await publisher.publish(script.task_ready("t1"))
    await task_folded(server, script)
    async with server.client(timeout=60) as client, contextlib.AsyncExitStack() as held:
        caller = (await client.get("/auth/whoami")).json()["id"]
        # The caller's one stream slot, taken by another client of the same token.
        other = await held.enter_async_context(client.stream("GET", "/events/stream"))
        assert other.status_code == 200
        page = await signed_in(browser, server)
        path = f"/missions/{script.mission_id}/events"
        opened = stream_requests(page, path)
        await goto(page, f"{server.base_url}/board{path.removesuffix('/events')}/tasks/t1")
        transcript = page.locator("#transcript li")
        await expect(transcript).to_have_count(1)
        notice = page.locator("#stream-notice")
        await expect(notice).to_have_text(
            re.compile(r"^Live updates paused; reconnecting in [1-6] s$")
        )
        await expect(page.locator("#live")).to_have_attribute("data-state", "reconnecting")
        refused = opened[0]
        assert (await refused.response()).status == 429
        # Published while the board waits: it must show each once it is back.
        await publisher.publish(
            AgentStarted(
                **script.meta(),  # type: ignore[arg-type]
                task_id="t1",
                attempt=1,
                runner_id="runner-1",
                model="claude-test",
            )
        )
        await publisher.publish(script.agent_completed("t1"))
        await publisher.publish(script.merged("t1"))
        await held.aclose()  # the slot comes back (at the other stream's next keep-alive)
        streams = server.gateway.context.streams  # type: ignore[union-attr]

        async def slot_free() -> bool:
            return streams.open(caller) == 0

        await eventually(slot_free, timeout=20, what="the other stream's slot given back")

    await expect(page.locator("#live")).to_have_attribute("data-state", "live", timeout=30_000)
    await expect(notice).to_be_hidden()
    await expect(transcript).to_have_count(4)
    kinds = [k.strip().lower() for k in await page.locator("#transcript .kind").all_inner_texts()]
    assert kinds == ["task ready", "agent started", "agent completed", "branch merged"]
    assert await page.evaluate("window.aetherBoard.applied") == 3

    # Each attempt came no sooner than the Retry-After of the refusal before it, on the
    # browser's own clock (when it read the refusal, when it sent the next request).
    statuses = [(await r.response()).status for r in opened]
    assert statuses[-1] == 200 and set(statuses[:-1]) == {429}, statuses
    for before, after in itertools.pairwise(opened):
        said = float((await before.response()).headers["retry-after"])
        assert said == STREAM_RETRY_SECONDS
        waited = (after.timing["startTime"] - await answered_at(before)) / 1000
        # At most a fifth more than it said (the jitter), and some slack for a busy machine.
        assert said <= waited < said * 1.2 + 3, (waited, statuses)


async def test_a_stream_that_drops_as_it_opens_backs_off_until_one_delivers_again(
    make_gateway: Callable[..., Awaitable[GatewayServer]], nc: Any, script: Script, browser: Any
) -> None:
    """A gateway that is closing answers each stream and ends it at once: the board opens
    it again after a wait that doubles each time (not every half second for ever), and a
    connection that delivers an event starts the backoff again."""
    server = await make_gateway()
    publisher = EventPublisher(nc.jetstream())
    await publisher.publish_all(
        [script.requested(), script.prepared(), script.plan(), script.approved()]
    )
    await publisher.publish(script.task_ready("t1"))
    await task_folded(server, script)
    page = await signed_in(browser, server)
    path = f"/missions/{script.mission_id}/events"
    opened = stream_requests(page, path)
    await goto(page, f"{server.base_url}/board{path.removesuffix('/events')}/tasks/t1")
    transcript = page.locator("#transcript li")
    await expect(transcript).to_have_count(1)
    await expect(page.locator("#live")).to_have_attribute("data-state", "live")
    closing = server.gateway.context.closing  # type: ignore[union-attr]
    closing.set()  # every stream open ends, and every one opened ends as it opens

    async def reopened(count: int) -> bool:
        return len(opened) >= count

    # Seven opened while it is closing: the board opens the next only once the one
    # before has ended, so the first six all ended as they opened (clearing it after the
    # sixth was asked for could let the gateway answer the sixth as a live stream).
    await eventually(lambda: reopened(7), timeout=90, what="the stream opened seven times")
    closing.clear()
    dropped = opened[:6]
    assert [(await r.response()).status for r in dropped] == [200] * 6
    gaps = [
        (after.timing["startTime"] - await answered_at(before)) / 1000
        for before, after in itertools.pairwise(dropped)
    ]
    # The first stream delivered events, so the first wait is the shortest (0.25-0.5 s);
    # the ones that delivered nothing double it: 0.5-1, 1-2, 2-4, then 2.5-5 s. (The
    # upper bounds are relative: a loaded machine adds to every wait alike.)
    assert gaps[2] >= 1.0 and gaps[3] >= 2.0 and gaps[4] >= 2.5, gaps
    assert gaps[0] < gaps[3], gaps
    print("waits between a dropped stream and the next:", [f"{g:.2f}" for g in gaps])

    # Open again (the seventh, or the eighth if the seventh was still ended as it
    # opened), and an event arrives on it: the backoff starts again.
    await publisher.publish(script.agent_completed("t1"))
    await expect(transcript).to_have_count(2, timeout=30_000)
    # The stream that delivered it was opened after the gateway stopped closing (what
    # one opened before delivered, it replayed as it ended, before the publish), so it
    # is still open, and it is the last one asked for: the board opens one at a time.
    await expect(page.locator("#live")).to_have_attribute("data-state", "live")
    held = len(opened)
    closing.set()  # ends the open stream at its next keep-alive
    await eventually(lambda: reopened(held + 1), timeout=30, what="the stream opened once more")
    closing.clear()
    last, again = opened[held - 1], opened[held]
    wait = (again.timing["startTime"] - await answered_at(last)) / 1000
    assert wait < gaps[3], (wait, gaps)  # started again, not the 2.5-5 s it had reached

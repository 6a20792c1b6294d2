"""What a handler did goes on its delivery's one line (``note``), not on lines of its own."""

from __future__ import annotations

import asyncio
import logging

import pytest
from nats.aio.client import Client as NatsClient

from aether_events import ALL_MISSION_EVENTS, Event, EventPublisher, ensure_streams
from aether_runtime import ConsumerSpec, Delivery, RuntimeSettings, Service, note

from .test_pull import requested


def handled_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "aether.runtime" and r.getMessage().startswith("handled ")
    ]


async def test_what_a_handler_notes_is_on_its_deliverys_line_and_no_further(
    nc: NatsClient, nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The first delivery's handler notes a branch and files: its line carries them, at
    INFO although it published nothing. The second notes nothing: its line is DEBUG and
    carries nothing of the first's, not even what a task the first handler started
    noted after that delivery's line was written."""
    caplog.set_level(logging.DEBUG, logger="aether.runtime")
    js = nc.jetstream()
    await ensure_streams(js)
    name = "noting"
    seen: list[str] = []
    done = asyncio.Event()
    late = asyncio.Event()
    later: set[asyncio.Task[None]] = set()

    async def noted_later() -> None:
        await late.wait()
        # The delivery that started this task has ended: nothing takes the fields now.
        note(stray="late")

    async def handle(event: Event, delivery: Delivery) -> None:
        seen.append(event.mission_id)
        if event.mission_id == "m-noted":
            assert note(branch="aether/t1", files=["a.py"])
            assert note(reused=True)
            later.add(asyncio.create_task(noted_later()))
        else:
            late.set()
            await asyncio.sleep(0)
            done.set()

    service = Service(name=name, settings=RuntimeSettings(nats_url=nats_url, port=0))
    service.consume(ConsumerSpec(durable=name, subject=ALL_MISSION_EVENTS, handler=handle))
    await service.start()
    try:
        await EventPublisher(js).publish(requested("m-noted"))
        await EventPublisher(js).publish(requested("m-quiet"))
        await asyncio.wait_for(done.wait(), 30)
        await asyncio.gather(*later)
        await asyncio.sleep(0.2)  # the second delivery's line is written after its handler
    finally:
        await service.stop()

    assert seen == ["m-noted", "m-quiet"]
    # One delivery at a time, in order: the lines are the two missions' in turn.
    first, second = handled_lines(caplog)
    assert first.levelno == logging.INFO
    assert (first.branch, first.files, first.reused) == ("aether/t1", ["a.py"], True)  # type: ignore[attr-defined]
    assert first.published == 0  # type: ignore[attr-defined]
    assert second.levelno == logging.DEBUG
    for field in ("branch", "files", "reused", "stray"):
        assert not hasattr(second, field)


def test_outside_a_delivery_nothing_takes_a_note() -> None:
    assert note(branch="b") is False

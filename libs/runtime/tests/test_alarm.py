"""``Alarm``: one timer for many waits, ringing by the earliest time asked for."""

from __future__ import annotations

import asyncio
import time

from aether_runtime.alarm import Alarm


async def test_it_rings_once_by_the_earliest_time_asked_for_and_not_after_a_cancel() -> None:
    rung: list[float] = []
    alarm = Alarm(lambda: rung.append(time.monotonic()))
    began = time.monotonic()
    alarm.at(began + 0.3)
    alarm.at(began + 0.05)  # earlier: armed again
    alarm.at(began + 5.0)  # later: the timer armed already serves
    await asyncio.sleep(0.4)
    assert len(rung) == 1 and rung[0] - began < 0.25
    # Rung, it is armed anew by the next wait; a cancelled one does not ring.
    alarm.at(time.monotonic() + 0.05)
    alarm.cancel()
    alarm.at(time.monotonic() - 1.0)  # a time gone by rings at the next turn
    await asyncio.sleep(0.1)
    assert len(rung) == 2

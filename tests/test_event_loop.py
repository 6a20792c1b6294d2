"""The suite's async tests run on the loop the services run on."""

from __future__ import annotations

import asyncio


async def test_async_tests_run_on_uvloop() -> None:
    # As ``aether_runtime.service.event_loop_name`` names it for a service's log.
    assert type(asyncio.get_running_loop()).__module__.partition(".")[0] == "uvloop"

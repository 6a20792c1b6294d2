"""What an attempt's own NATS credential costs: connecting through the auth callout
against connecting as a static user, and a first event published either way.

Starts an embedded NATS with the configuration ``aether up`` writes (every service's
user, the callout), the authorizer on the scheduler's user, then times N connections of
a static user and N of attempt users (each a new attempt, so each asks the authorizer),
each followed by one published event.

    uv run python bench/attempt_credentials.py [--n 100]

A figure, not a test: it prints numbers and never fails on them.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import nats

from aether.stack import Stack
from aether_events import AgentHeartbeat, EventPublisher, StreamSettings, ensure_streams
from aether_runtime.attempt_auth import AttemptAuthorizer, AttemptCredentials, AttemptKey, Grants
from aether_runtime.roles import ROLES


async def run(n: int) -> None:
    home = Path(tempfile.mkdtemp(prefix="aether-bench-attempts-"))
    stack = Stack(home=home, random_ports=True, prestart=False, env={})
    stack.start_infrastructure()
    try:
        scheduler = await nats.connect(
            stack.nats_server_url,
            user="scheduler",
            password=stack.nats_passwords["scheduler"],
            inbox_prefix="_INBOX.scheduler",
        )
        await ensure_streams(scheduler.jetstream(), StreamSettings())
        authorizer = AttemptAuthorizer(
            issuer_seed=stack.attempt_issuer_seed,
            master=stack.runner_master_secret,
            grants=Grants(lambda key: True),
            types=ROLES["agent-runner"].attempt_publishes,
        )
        await authorizer.serve(scheduler)

        def beat(key: AttemptKey, i: int) -> AgentHeartbeat:
            return AgentHeartbeat(
                event_id=f"beat-{key.mission_id}-{i}",
                mission_id=key.mission_id,
                occurred_at=datetime.now(UTC),
                correlation_id="bench",
                task_id=key.task_id,
                attempt=key.attempt,
                runner_id="bench",
            )

        static: list[float] = []
        for i in range(n):
            # A static user (the operator's: no other may publish a heartbeat now).
            key = AttemptKey(f"m-static-{i}", "t1", 1)
            began = time.perf_counter()
            nc = await nats.connect(stack.nats_url)
            await EventPublisher(nc.jetstream()).publish(beat(key, i))
            static.append(time.perf_counter() - began)
            await nc.close()
        scoped: list[float] = []
        credentials = AttemptCredentials(
            stack.nats_server_url, stack.runner_secret("bench"), "bench"
        )
        for i in range(n):
            key = AttemptKey(f"m-bench-{i}", "t1", 1)
            began = time.perf_counter()
            async with credentials.scope(key) as publisher:
                await publisher.publish(beat(key, i))
                scoped.append(time.perf_counter() - began)
        await authorizer.stop()
        await scheduler.close()
    finally:
        stack.stop()
        shutil.rmtree(home, ignore_errors=True)
    s, a = statistics.median(static), statistics.median(scoped)
    print(f"static user: connect + first event {s * 1000:.2f} ms (median of {n})")
    print(f"attempt credential: connect through the callout + first event {a * 1000:.2f} ms")
    print(f"ratio: {a / s:.1f}x, {(a - s) * 1000:.2f} ms more per attempt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=100)
    asyncio.run(run(parser.parse_args().n))


if __name__ == "__main__":
    main()

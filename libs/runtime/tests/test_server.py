"""A service that waits for its bus at start-up still stops when told to."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from aether.infra import free_port


def test_a_service_still_waiting_for_its_bus_ends_on_sigterm() -> None:
    # Nothing listens on the bus's port: the service's start-up waits for it for good.
    bus, port = free_port(), free_port()
    env = {
        **os.environ,
        "NATS_URL": f"nats://127.0.0.1:{bus}",
        "PORT": str(port),
        "AETHER_HTTP_HOST": "127.0.0.1",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "aether_scheduler"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        # uvicorn says so as it begins the app's start-up, which then waits for the bus.
        assert process.stderr is not None
        deadline = time.monotonic() + 60
        for line in process.stderr:
            if b"Waiting for application startup" in line or time.monotonic() > deadline:
                break
        assert process.poll() is None
        time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == -signal.SIGTERM
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

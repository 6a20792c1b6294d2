"""Scheduler processes started by a test, several at once (``python -m aether_scheduler``),
with what a test asks of each: its readiness, its metrics, a kill, a pause."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from aether.infra import free_port


class SchedulerProcess:
    """One scheduler process with ``env`` (its port chosen here), logging to ``log``."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.env = {**env, "PORT": str(self.port), "PYTHONUNBUFFERED": "1"}
        # Never "the only one": it would take the lease from the other at start.
        self.env.pop("AETHER_ONE_PROCESS", None)
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> SchedulerProcess:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "aether_scheduler"],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    async def readiness(self) -> tuple[int, str]:
        """``/readyz``'s status and detail (0 and the error when it does not answer)."""
        try:
            async with httpx.AsyncClient(timeout=2.0) as http:
                answer = await http.get(f"{self.url}/readyz")
        except httpx.HTTPError as error:
            return 0, repr(error)
        return answer.status_code, str(answer.json().get("detail"))

    async def until(self, detail: str, timeout: float = 60.0) -> float:
        """Wait until ``/readyz`` answers 200 with ``detail`` (``ok``: active, ``standby``);
        returns when (monotonic). Asked every 50 ms: a process's readiness is read, not
        waited on as an event."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        seen: tuple[int, str] = (0, "")
        while loop.time() < deadline:
            assert self.process is not None and self.process.poll() is None, self.tail()
            seen = await self.readiness()
            if seen == (200, detail):
                return loop.time()
            await asyncio.sleep(0.05)
        raise AssertionError(f"{self.url} not {detail!r} in {timeout} s: {seen}\n{self.tail()}")

    async def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples of ``name`` whose labels include ``labels``."""
        async with httpx.AsyncClient(timeout=5.0) as http:
            text = (await http.get(f"{self.url}/metrics")).text
        total = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and labels.items() <= sample.labels.items():
                    total += sample.value
        return total

    async def published(self) -> float:
        """Events this process published (decisions, failed steps), duplicates included."""
        return await self.metric("aether_events_published_total", service="scheduler")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def pause(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGCONT)

    def stop(self, timeout: float = 15.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGCONT)
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

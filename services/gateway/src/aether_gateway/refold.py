"""Folding the read model again after an upgrade that asks for it.

A migration that adds a column filled from events is marked ``-- refold:``
(``adapters.db``): rows folded before it lack what it added. The read model's rows carry
the fold version they were folded by (``read_model_fold``); a gateway whose own is later
finds this at its start (``Projector.rebuild``, before the catch-up) and, once it serves,
rebuilds the read model from the streams in the background (``Projector.refold``): the
rebuild the administrators' route runs, in one transaction, so queries answer from the
old rows until it commits, and the live folds wait for it and then skip what it folded.

Several replicas starting together refold once: the rebuild locks the fold version's row
first and stamps it in the same transaction, and a replica that got the lock after
another's refold committed finds the rows current and leaves them. A refold that fails
(the database went away) is undone whole and tried again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from aether_events import MISSIONS_STREAM
from aether_gateway.adapters.read_model import Rebuild
from aether_gateway.handlers import Projector
from aether_gateway.metrics import READ_MODEL_REPAIRS
from aether_runtime import Service

log = logging.getLogger("aether.gateway.refold")

# Between attempts of a refold that failed, growing to the last.
RETRY_SECONDS = (1.0, 5.0, 30.0, 120.0)


class Refold:
    """The background refold of one gateway, and where it stands (for ``/readyz``)."""

    def __init__(self, projector: Projector, service: Service) -> None:
        self.projector = projector
        self.service = service
        # "not needed", then for a due refold: "waiting" (for the rebuild's locks: the
        # live folds, or another gateway's refold), "running", then "done", or "done by
        # another gateway"; "failed" between attempts.
        self.state = "not needed"
        self.from_version = 0
        self.stream_last_seq = 0
        self.missions = 0
        self.error = ""
        self._rebuild: Rebuild | None = None
        self._began = 0.0
        self._seconds = 0.0
        self._task: asyncio.Task[None] | None = None

    @property
    def to_version(self) -> int:
        return self.projector.read_model.fold_version

    async def start(self) -> None:
        """Start the refold if the start found it due (``Projector.refold_due``)."""
        if not self.projector.refold_due or self._task is not None:
            return
        self.state = "waiting"
        self._task = asyncio.create_task(self._run(), name="gateway-read-model-refold")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def wait(self) -> None:
        """Return once the refold ended (at once when none was due)."""
        if self._task is not None:
            await asyncio.shield(self._task)

    async def _run(self) -> None:
        attempt = 0
        while True:
            try:
                await self._once()
                return
            except asyncio.CancelledError:
                raise
            except Exception as error:
                self.state = "failed"
                self.error = str(error)
                self._rebuild = None
                delay = RETRY_SECONDS[min(attempt, len(RETRY_SECONDS) - 1)]
                attempt += 1
                log.error(
                    "refolding the read model failed; it keeps its rows, and is tried again",
                    extra={"error": self.error, "retry_seconds": delay},
                )
                await asyncio.sleep(delay)  # a pause between attempts, no event to wait on

    async def _once(self) -> None:
        read_model = self.projector.read_model
        js = self.service.js
        self.from_version = await read_model.stored_fold_version()
        self.missions = await read_model.mission_count()
        self.stream_last_seq = (await js.stream_info(MISSIONS_STREAM)).state.last_seq
        self.state = "waiting"
        result = await self.projector.refold(js, self._began_with)
        if result is None:
            self.state = "done by another gateway"
            log.info(
                "read model already refolded by another gateway",
                extra={"fold_version": self.to_version},
            )
            return
        self._seconds = time.monotonic() - self._began
        self._rebuild = None
        self.missions = await read_model.mission_count()
        self.state = "done"
        READ_MODEL_REPAIRS.labels("refold").inc()
        log.info(
            f"read model refolded: {self.missions} missions, {result[2]} events, "
            f"fold version {self.from_version} -> {self.to_version}, "
            f"in {self._seconds:.1f} s",
            extra={
                "missions": self.missions,
                "folded": result[2],
                "from_version": self.from_version,
                "fold_version": self.to_version,
                "seconds": round(self._seconds, 3),
            },
        )

    def _began_with(self, rebuild: Rebuild) -> None:
        self._rebuild = rebuild
        self._began = time.monotonic()
        self.state = "running"
        log.info(
            f"read model folded by fold version {self.from_version}, this gateway folds by "
            f"{self.to_version}: refolding its {self.missions} missions from the streams "
            "in the background (queries answer from the old rows until it commits)",
            extra={
                "missions": self.missions,
                "stream_last_seq": self.stream_last_seq,
                "from_version": self.from_version,
                "fold_version": self.to_version,
            },
        )

    def status(self) -> dict[str, Any] | None:
        """Where the refold stands, for ``/readyz`` (``None`` when none was due)."""
        if self.state == "not needed":
            return None
        status: dict[str, Any] = {
            "state": self.state,
            "from_version": self.from_version,
            "to_version": self.to_version,
            "missions": self.missions,
        }
        rebuild = self._rebuild
        if self.state == "running" and rebuild is not None:
            status.update(
                missions_sequence=rebuild.missions_last,
                stream_last_seq=self.stream_last_seq,
                events_folded=rebuild.folded,
                seconds=round(time.monotonic() - self._began, 3),
            )
        elif self.state == "done":
            status["seconds"] = round(self._seconds, 3)
        elif self.state == "failed":
            status["error"] = self.error
        return status

    def detail(self) -> str | None:
        """A phrase for ``/readyz``'s detail while the refold is under way or failing."""
        if self.state == "waiting":
            return "read model refold waiting for its lock"
        if self.state == "running":
            rebuild = self._rebuild
            done = rebuild.missions_last if rebuild is not None else 0
            return (
                f"read model refolding (fold version {self.from_version} -> "
                f"{self.to_version}): {done} of {self.stream_last_seq} mission events"
            )
        if self.state == "failed":
            return f"read model refold failed, to be tried again: {self.error}"
        return None

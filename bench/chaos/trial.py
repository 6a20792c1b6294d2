"""One chaos trial: the chaos mission through the five services and nats-server, each its
own process, with planned SIGKILLs and restarts, and everything the checks need recorded.

The stack is the one ``aether up`` runs (``aether.stack.Stack``) on a nats-server the
trial owns, so it can kill and restart it on the same port and store. A watcher acts as a
restart policy would: a process that exits on its own is started again (and noted).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import nats
from dulwich.objects import Commit
from dulwich.refs import Ref
from dulwich.repo import Repo
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from aether import prestart
from aether.gitview import create_sample_repository
from aether.infra import EmbeddedNats, port_is_free
from aether.stack import SERVICES, Stack
from aether_events import (
    MISSIONS_STREAM,
    TERMINAL_TYPES,
    MissionCompleted,
    RepositoryPrepared,
    decode,
    mission_subject,
)
from aether_llm import MessagesServer
from aether_runtime import tls

from . import checks
from .checks import KillRecord, ModelCallReport, ReadModelView, Stall, Stored
from .model import GRAPH, ChaosModel

NATS = "nats"
TARGETS: tuple[str, ...] = (*SERVICES, NATS)
REQUIREMENT = "The chaos benchmark's mission: twenty small files in four layers."

Phase = Literal["boot", "run"]


@dataclass(frozen=True)
class Kill:
    """A SIGKILL to carry out: ``target`` at ``at`` of the way through ``phase``, back
    after ``down_seconds``.

    ``boot``: ``at`` of the target's start-up time in the fault-free run, counted from
    launch (so before it is ready); the mission is then submitted as soon as the gateway
    is ready, while the other services may still be starting. ``run``: once ``at`` of the
    fault-free run's mission events are stored.
    """

    target: str
    phase: Phase
    at: float
    down_seconds: float = 0.5

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"unknown target {self.target!r}; one of {', '.join(TARGETS)}")
        if not 0.0 <= self.at <= 1.0:
            raise ValueError("at is a fraction of the phase, between 0 and 1")


@dataclass(frozen=True)
class Reference:
    """What the fault-free run showed: the final tree and how long things took."""

    tree: str | None
    events: int
    ready_seconds: dict[str, float]

    def trigger(self, kill: Kill) -> tuple[float, int]:
        """The kill's moment: seconds after launch (boot) or mission events (run)."""
        if kill.phase == "boot":
            known = [s for s in self.ready_seconds.values() if s > 0]
            limit = self.ready_seconds.get(kill.target) or (min(known) if known else 2.0)
            return round(kill.at * limit, 2), 0
        return 0.0, max(1, round(kill.at * self.events))


FAULT_FREE = Reference(tree=None, events=0, ready_seconds={})


@dataclass
class TrialResult:
    kills: list[KillRecord]
    seconds: float
    mission_seconds: float | None
    problems: dict[str, list[str]]
    stalls: list[Stall]
    model_calls: ModelCallReport
    notes: list[str]
    events: int
    longest_gap: float
    final_tree: str | None
    ready_seconds: dict[str, float]
    home: Path

    @property
    def passed(self) -> bool:
        return not any(self.problems.values())


@dataclass
class _Process:
    launched: float
    ready: float | None = None


@dataclass
class TrialSettings:
    timeout: float = 300.0  # for the mission to end, from the launch
    ready_timeout: float = 90.0  # for every service to answer /readyz after the mission
    read_model_wait: float = 15.0  # for the read model to agree with the stream
    # No new event for this long and the mission is taken as stuck. Longer than any wait
    # recovery may need: the heartbeat timeout (120 s) a lost agent is found by.
    idle_timeout: float = 150.0
    max_stall: float | None = None  # fail a trial whose nats-server stall is longer
    env: dict[str, str] = field(default_factory=dict)
    # A command each task's agent runs beside its write (``ChaosModel.command``).
    command: str | None = None


class Trial:
    """Runs the mission once under ``kills`` in ``home`` (a new directory) against
    ``database_url`` (a new, empty database)."""

    def __init__(
        self,
        home: Path,
        database_url: str,
        kills: Sequence[Kill],
        reference: Reference = FAULT_FREE,
        settings: TrialSettings | None = None,
    ) -> None:
        self.home = home
        self.database_url = database_url
        self.kills = list(kills)
        self.reference = reference
        self.settings = settings or TrialSettings()
        self.stored: list[Stored] = []
        self.notes: list[str] = []
        self.errors: list[str] = []  # the bench's own, which fail the trial
        self.processes: dict[str, _Process] = {}
        self.down: set[str] = set()
        self.first_ready: dict[str, float] = {}
        self._locks = {target: asyncio.Lock() for target in TARGETS}
        self._firing: set[asyncio.Task[None]] = set()
        self._started = 0.0
        self._progress = asyncio.Condition()  # notified as events are collected

    # --- the run ---------------------------------------------------------------------

    async def run(self) -> TrialResult:
        began = time.time()
        self.home.mkdir(parents=True, exist_ok=True)
        model = ChaosModel(command=self.settings.command)
        server = MessagesServer(model).start()
        repo = self.home / "repo"
        create_sample_repository(repo)
        self.nats = EmbeddedNats(self.home / "nats")
        await asyncio.to_thread(self.nats.start, self._nats_log())
        self.stack = Stack(
            home=self.home / "stack",
            random_ports=True,
            prestart=prestart.shared(),
            env={
                **self.settings.env,
                "NATS_URL": self.nats.url,
                "DATABASE_URL": self.database_url,
                "ANTHROPIC_API_KEY": "chaos-bench",
                "ANTHROPIC_BASE_URL": server.url,
            },
        )
        records = [KillRecord(k.target, k.phase, self._describe(k)) for k in self.kills]
        tasks: list[asyncio.Task[None]] = []
        watcher: asyncio.Task[None] | None = None
        mission_id: str | None = None
        submitted = ended = None
        view: ReadModelView | None = None
        try:
            self.stack.start_infrastructure()
            self._started = time.time()
            for name in SERVICES:
                await self._launch(name)
            watcher = asyncio.create_task(self._watch())
            tasks = [
                asyncio.create_task(self._carry_out(k, r))
                for k, r in zip(self.kills, records, strict=True)
            ]
            boot = any(k.phase == "boot" for k in self.kills)
            deadline = time.monotonic() + self.settings.timeout
            async with httpx.AsyncClient(
                verify=tls.shared(),
                base_url=self.stack.gateway_url,
                timeout=5.0,
                headers=self.stack.auth_headers,
            ) as http:
                # With a kill at start-up the mission goes in as soon as the gateway takes
                # it, as a user would send it; otherwise once everything is ready.
                await self._wait_ready(["gateway"] if boot else list(SERVICES), deadline)
                mission_id = await self._submit(http, repo, deadline)
                submitted = time.time()
                starting = [n for n in SERVICES if not self._is_ready(n)]
                if starting:
                    self.notes.append(f"mission submitted before {', '.join(starting)} ready")
                nc = await _connect(self.nats.url, deadline)
                try:
                    ended = await self._follow(nc.jetstream(), mission_id, deadline)
                    for task in tasks:
                        if task not in self._firing:
                            task.cancel()  # its moment never came
                    await asyncio.gather(*tasks, return_exceptions=True)
                    try:
                        await self._wait_ready(
                            list(SERVICES), time.monotonic() + self.settings.ready_timeout
                        )
                    except TrialAborted as late:
                        self.notes.append(f"after the mission: {late}")
                    view = await self._settle_read_model(http, nc.jetstream(), mission_id)
                finally:
                    await nc.close()
        except TrialAborted as aborted:
            self.notes.append(str(aborted))
        except Exception as error:  # the bench's own failure: the trial fails and says why
            self.errors.append(f"{type(error).__name__}: {error}")
        finally:
            # The watcher goes first: it would start again what the stop ends.
            for task in [*tasks, *([watcher] if watcher else [])]:
                task.cancel()
            await asyncio.gather(*tasks, *([watcher] if watcher else []), return_exceptions=True)
            await asyncio.to_thread(self._stop)
            server.stop()
        return self._result(began, records, model, repo, mission_id, submitted, ended, view)

    def _result(
        self,
        began: float,
        records: list[KillRecord],
        model: ChaosModel,
        repo: Path,
        mission_id: str | None,
        submitted: float | None,
        ended: float | None,
        view: ReadModelView | None,
    ) -> TrialResult:
        stored = self.stored
        try:
            final_tree, line_tasks, git_problems = _read_git(repo, stored)
        except Exception as error:  # a repository the broker left unreadable
            final_tree, line_tasks, git_problems = None, None, [f"reading it: {error!r}"]
        problems = {
            "completed": (
                checks.check_completed(stored)
                if mission_id
                else ["the mission was never accepted: " + "; ".join(self.notes)]
            ),
            "merges": checks.check_merges(stored, list(GRAPH), line_tasks),
            "duplicates": checks.check_duplicates(stored),
            "tree": git_problems + checks.check_tree(final_tree, self.reference.tree),
            "read-model": checks.check_read_model(stored, view) if mission_id else [],
        }
        if self.errors:
            problems["bench"] = self.errors
        report = checks.check_model_calls(stored, model.calls, records)
        problems["model-calls"] = report.problems
        found_stalls = checks.stalls(stored, records)
        limit = self.settings.max_stall
        if limit is not None:
            problems["stall"] = [
                f"{s.seconds:.1f} s without events after the nats-server kill"
                for s in found_stalls
                if s.seconds is not None and s.seconds > limit
            ]
        return TrialResult(
            kills=records,
            seconds=time.time() - began,
            mission_seconds=(ended - submitted) if ended and submitted else None,
            problems=problems,
            stalls=found_stalls,
            model_calls=report,
            notes=self.notes,
            events=len(stored),
            longest_gap=checks.longest_gap(stored),
            final_tree=final_tree,
            ready_seconds=self.first_ready,
            home=self.home,
        )

    # --- processes -------------------------------------------------------------------

    async def _launch(self, name: str) -> None:
        await asyncio.to_thread(self.stack.start_service, name)
        self.processes[name] = _Process(time.time())

    async def _restart(self, target: str) -> None:
        if target == NATS:
            await asyncio.to_thread(self.nats.start, self._nats_log())
        else:
            await self._launch(target)

    def _nats_log(self) -> Path:
        logs = self.home / "stack" / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        return logs / "nats.log"

    def _stop(self) -> None:
        with contextlib.suppress(Exception):
            self.stack.stop()
        self.nats.stop()

    async def _watch(self) -> None:
        """Restart what exits on its own, and note when each process gets ready."""
        async with httpx.AsyncClient(verify=tls.shared(), timeout=1.0) as http:
            while True:
                for name, service in list(self.stack.processes.items()):
                    code = service.process.poll()
                    if code is not None and name not in self.down:
                        async with self._locks[name]:
                            if self.stack.processes.get(name) is service:
                                self.notes.append(f"{name} exited with {code} by itself")
                                self.stack.processes.pop(name, None)
                                await self._launch(name)
                process = self.nats.process
                if NATS not in self.down and (process is None or process.poll() is not None):
                    async with self._locks[NATS]:
                        if self.nats.process is process:
                            self.notes.append("nats-server exited by itself")
                            await self._restart(NATS)
                await asyncio.gather(
                    *(
                        self._probe(http, name)
                        for name, p in self.processes.items()
                        if p.ready is None and name in self.stack.processes
                    )
                )
                await asyncio.sleep(0.1)

    async def _probe(self, http: httpx.AsyncClient, name: str) -> None:
        service = self.stack.processes.get(name)
        if service is None:  # killed meanwhile
            return
        with contextlib.suppress(httpx.HTTPError):
            if (await http.get(f"{service.url}/readyz")).status_code == 200:
                state = self.processes.get(name)
                if state is not None and state.ready is None:
                    state.ready = time.time()
                    self.first_ready.setdefault(name, round(state.ready - state.launched, 2))

    async def _wait_ready(self, names: list[str], deadline: float) -> None:
        while True:
            waiting = [n for n in names if self._is_ready(n) is not True]
            if not waiting:
                return
            if time.monotonic() > deadline:
                raise TrialAborted(f"not ready in time: {', '.join(waiting)}")
            await asyncio.sleep(0.1)

    def _is_ready(self, name: str) -> bool | None:
        if name == NATS:
            return NATS not in self.down
        state = self.processes.get(name)
        return state is not None and state.ready is not None and name not in self.down

    # --- kills -----------------------------------------------------------------------

    def _describe(self, kill: Kill) -> str:
        seconds, events = self.reference.trigger(kill)
        if kill.phase == "boot":
            return f"{kill.target} {seconds:.2f}s after launch"
        return f"{kill.target} at event {events}"

    async def _carry_out(self, kill: Kill, record: KillRecord) -> None:
        seconds, events = self.reference.trigger(kill)
        if kill.phase == "boot":
            await self._start_up_moment(kill.target, self._started + seconds)
        else:
            async with self._progress:
                await self._progress.wait_for(lambda: len(self.stored) >= events)
        current = asyncio.current_task()
        if current is not None:
            self._firing.add(current)  # from here on it is seen through, mission over or not
        async with self._locks[kill.target]:
            await self._kill_and_restart(kill, record)

    async def _start_up_moment(self, target: str, planned: float) -> None:
        """Until ``planned`` (a wall-clock time), or until ``target`` listens on its port
        if that comes first: a service binds its port before it starts anything else
        (``aether_runtime.listen``), so from then on it is connecting, replaying and
        starting its consumers, and ready only after that. The fault-free run that sets
        ``planned`` is the session's first start (Python compiling every module it
        imports), slower than a trial's: a trial's scheduler was once ready before its
        planned moment, and its "start-up" kill came after it."""
        service = self.stack.processes.get(target) if target != NATS else None
        while time.time() < planned:
            if service is not None and not port_is_free(service.port):
                return
            await asyncio.sleep(0.02)

    async def _kill_and_restart(self, kill: Kill, record: KillRecord) -> None:
        target = kill.target
        record.was_ready = self._is_ready(target) is True
        record.starting = [n for n in SERVICES if not self._is_ready(n)]
        record.events_before = len(self.stored)
        self.down.add(target)
        try:
            if target == NATS:
                process = self.nats.process
                if process is not None:
                    process.kill()
                    record.killed_at = time.time()
                    await asyncio.to_thread(process.wait)
                self.nats.process = None
            elif target in self.stack.processes:
                await asyncio.to_thread(self.stack.kill, target)
                record.killed_at = time.time()
            await asyncio.sleep(kill.down_seconds)
            await self._restart(target)
            record.restarted_at = time.time()
        finally:
            self.down.discard(target)

    # --- the mission -----------------------------------------------------------------

    async def _submit(self, http: httpx.AsyncClient, repo: Path, deadline: float) -> str:
        key = f"chaos-{uuid.uuid4()}"
        body = {
            "repository": str(repo),
            "requirement": REQUIREMENT,
            "auto_approve": True,
            "max_tasks": len(GRAPH),
        }
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                answer = await http.post("/missions", json=body, headers={"idempotency-key": key})
            except httpx.HTTPError as error:
                last = repr(error)
            else:
                if answer.status_code == 202:
                    mission_id: str = answer.json()["mission_id"]
                    return mission_id
                last = f"{answer.status_code} {answer.text[:200]}"
                if answer.status_code < 500 and answer.status_code != 429:
                    break
            await asyncio.sleep(0.2)
        raise TrialAborted(f"POST /missions failed: {last}")

    async def _follow(self, js: JetStreamContext, mission_id: str, deadline: float) -> float | None:
        """Collect the mission's events until it ends (the time it did), the deadline, or
        ``idle_timeout`` without a new event (stuck: nothing is going to happen)."""
        seen, moved = len(self.stored), time.monotonic()
        while time.monotonic() < deadline:
            await self._collect(js, mission_id)
            if any(type(s.event) in TERMINAL_TYPES for s in self.stored):
                return time.time()
            if len(self.stored) != seen:
                seen, moved = len(self.stored), time.monotonic()
            elif time.monotonic() - moved > self.settings.idle_timeout:
                self.notes.append(f"given up: no new event for {self.settings.idle_timeout:.0f} s")
                return None
            await asyncio.sleep(0.1)
        self.notes.append(f"given up: no end after {self.settings.timeout:.0f} s")
        return None

    async def _collect(self, js: JetStreamContext, mission_id: str) -> None:
        """Add the events stored since the last look (none if the bus is down)."""
        after = self.stored[-1].seq if self.stored else 0
        try:
            new = await read_stored(js, mission_id, after)
        except Exception:  # the bus may be down or restarting: look again later
            return
        if new:
            async with self._progress:
                self.stored.extend(new)
                self._progress.notify_all()

    async def _settle_read_model(
        self, http: httpx.AsyncClient, js: JetStreamContext, mission_id: str
    ) -> ReadModelView:
        """The gateway's view once it agrees with the stream, or after the wait."""
        deadline = time.monotonic() + self.settings.read_model_wait
        while True:
            await self._collect(js, mission_id)
            view = await read_model(http, mission_id)
            if not checks.check_read_model(self.stored, view) or time.monotonic() > deadline:
                return view
            await asyncio.sleep(0.5)


class TrialAborted(Exception):
    """The trial could not go on (a service never got ready, the mission not accepted)."""


async def _connect(url: str, deadline: float) -> NatsClient:
    """A client that keeps reconnecting (nats-server is killed under it)."""

    async def quiet(*_: Any) -> None:
        return None

    connecting = nats.connect(
        url,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.2,
        connect_timeout=2,
        error_cb=quiet,
        disconnected_cb=quiet,
        reconnected_cb=quiet,
    )
    try:
        return await asyncio.wait_for(connecting, max(1.0, deadline - time.monotonic()))
    except TimeoutError:
        raise TrialAborted("could not connect to nats-server") from None


async def read_stored(js: JetStreamContext, mission_id: str, after: int = 0) -> list[Stored]:
    """The mission's events stored after sequence ``after``, with their storage times."""
    subject = mission_subject(mission_id)
    config = ConsumerConfig(
        filter_subject=subject,
        ack_policy=AckPolicy.NONE,
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE if after else DeliverPolicy.ALL,
        opt_start_seq=after + 1 if after else None,
        inactive_threshold=30.0,
        mem_storage=True,
    )
    sub = await js.pull_subscribe(subject, stream=MISSIONS_STREAM, config=config)
    out: list[Stored] = []
    try:
        remaining = (await sub.consumer_info()).num_pending or 0
        while remaining > 0:
            for msg in await sub.fetch(min(256, remaining), timeout=5.0):
                meta = msg.metadata
                stored_at = meta.timestamp.timestamp()
                out.append(Stored(meta.sequence.stream, stored_at, decode(msg.data)))
                remaining = meta.num_pending or 0
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return out


async def read_model(http: httpx.AsyncClient, mission_id: str) -> ReadModelView:
    """The mission, its tasks and its event ids as the gateway shows them."""
    try:
        answer = await http.get(f"/missions/{mission_id}")
        if answer.status_code != 200:
            return ReadModelView(error=f"GET /missions/{mission_id}: {answer.status_code}")
        mission = answer.json()
        ids: list[str] = []
        after = 0
        while True:
            page = await http.get(
                "/events", params={"mission_id": mission_id, "after": after, "limit": 1000}
            )
            if page.status_code != 200:
                return ReadModelView(error=f"GET /events: {page.status_code}")
            body = page.json()
            ids += [e["event_id"] for e in body["events"]]
            if body.get("next_after") is None:
                break
            after = body["next_after"]
    except httpx.HTTPError as error:
        return ReadModelView(error=f"gateway: {error!r}")
    return ReadModelView(
        status=mission.get("status"),
        final_sha=mission.get("final_sha"),
        tasks={
            t["task_id"]: (t["status"], t.get("attempt", 0), t.get("merge_sha"))
            for t in mission.get("tasks", [])
        },
        event_ids=ids,
    )


_TASK_TRAILER = re.compile(rb"^Aether-Task: (\S+)\s*$", re.MULTILINE)


def _read_git(
    repo_path: Path, stored: Sequence[Stored]
) -> tuple[str | None, list[str] | None, list[str]]:
    """The final tree, the task of every commit on the integration branch's first-parent
    line since the base, and what disagrees with MissionCompleted."""
    completed = next((s.event for s in stored if isinstance(s.event, MissionCompleted)), None)
    prepared = next((s.event for s in stored if isinstance(s.event, RepositoryPrepared)), None)
    if completed is None or prepared is None:
        return None, None, []
    problems = []
    with Repo(str(repo_path)) as repo:
        ref = Ref(f"refs/heads/{completed.integration_branch}".encode())
        head = repo.refs[ref].decode() if ref in repo.refs else None
        if head != completed.final_sha:
            problems.append(f"branch at {head}, MissionCompleted says {completed.final_sha}")
        final = repo[completed.final_sha.encode()]
        assert isinstance(final, Commit)
        tasks: list[str] = []
        sha: bytes | None = completed.final_sha.encode()
        while sha is not None and sha.decode() != prepared.base_sha:
            commit = repo[sha]
            assert isinstance(commit, Commit)
            tasks += [m.decode() for m in _TASK_TRAILER.findall(commit.message)]
            sha = commit.parents[0] if commit.parents else None
        return final.tree.decode(), tasks, problems

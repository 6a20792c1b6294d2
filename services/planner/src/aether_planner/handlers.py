"""Planner handlers: a trigger in, one model decision out, published with its usage."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from aether_events import (
    Event,
    MissionAnswered,
    PlanClarificationRequested,
    PlanFailed,
    PlanProduced,
    Publisher,
    RepositoryPrepared,
    Tier,
    UsageRecorded,
    caused_by,
    derived_id,
    publish_in_order,
    step_ids,
)
from aether_llm import OFFLINE_MODEL, LLMSettings
from aether_llm.roles import InvalidRole, is_role_path, parse_role
from aether_planner import metrics
from aether_planner.adapters.model import Decision, ModelUnavailable
from aether_planner.adapters.repository import read_files
from aether_planner.context import files_to_read, render
from aether_planner.domain import MissionPlanning, State, wants_model
from aether_planner.domain.decide import AskModel, Outcome, decide, failed
from aether_planner.ports import PlanningModel
from aether_planner.prompt import mission_text
from aether_runtime import Delivery, Projection, stored_sequence

log = logging.getLogger("aether.planner")


class Handlers:
    def __init__(
        self,
        projection: Projection[State],
        publisher: Callable[[], Publisher],
        model: PlanningModel,
        llm: LLMSettings,
        tier: Tier = "complex",
        context_tokens: int = 24_000,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.projection = projection
        self._publisher = publisher
        self._model = model
        self._llm = llm
        self._tier = tier
        self._context_tokens = context_tokens
        self._clock = clock
        self._contexts: dict[str, str] = {}
        # Per mission: the repository's role names, and warnings about its bad templates.
        self._roles: dict[str, tuple[list[str], list[str]]] = {}
        # One lock per mission with a trigger in hand: its triggers are answered one after
        # another, in stream order, while other missions' are answered beside them.
        self._missions: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    async def handle(self, event: Event, delivery: Delivery) -> None:
        # The consumer delivers one event at a time, in stream order (see app.py), and
        # every event is folded before the next is delivered. A trigger then takes its
        # mission's lock (locks are fair: a later trigger of the mission queues behind)
        # and releases the consumer for the model call.
        self.projection.apply(event, delivery.sequence)
        mission = self.projection.state.missions.get(event.mission_id)
        if mission is not None and (mission.approved or mission.ended):
            self._contexts.pop(event.mission_id, None)  # no more planning for it
            self._roles.pop(event.mission_id, None)
        if not wants_model(self.projection.state, event):
            return
        lock, users = self._missions.setdefault(event.mission_id, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                delivery.release()
                # Looked at again: an earlier trigger of the mission may have answered it.
                if wants_model(self.projection.state, event):
                    async with delivery.keep_alive():
                        decided = await self._answer(event)
                    acks = await publish_in_order(self._publisher(), decided)
                    for out, ack in zip(decided, acks, strict=True):
                        self.projection.apply(out, stored_sequence(ack))
        finally:
            users[0] -= 1
            if not users[0]:  # nobody queued behind: the mission's lock can go
                self._missions.pop(event.mission_id, None)

    async def _context(self, mission: MissionPlanning) -> str:
        prepared = mission.prepared
        assert prepared is not None
        cached = self._contexts.get(prepared.mission_id)
        if cached is None:
            paths = files_to_read(prepared, mission.request.requirement)
            contents = await asyncio.to_thread(
                read_files, prepared.repository_path, prepared.base_sha, paths
            )
            cached = render(prepared, contents, self._context_tokens)
            roles, warnings, block = await asyncio.to_thread(self._discover_roles, prepared)
            cached += block
            self._roles[prepared.mission_id] = (roles, warnings)
            self._contexts[prepared.mission_id] = cached  # the same text keeps the cache warm
        return cached

    @staticmethod
    def _discover_roles(prepared: RepositoryPrepared) -> tuple[list[str], list[str], str]:
        """The repository's roles (``.claude/agents/*.md``), warnings about templates that
        cannot be used, and the block that offers the roles to the model."""
        paths = [f.path for f in prepared.files if is_role_path(f.path)]
        if not paths:
            return [], [], ""
        texts = read_files(prepared.repository_path, prepared.base_sha, paths)
        roles: dict[str, str] = {}
        warnings = []
        for path in paths:
            if path not in texts:
                continue
            try:
                role = parse_role(texts[path])
            except InvalidRole as error:
                warnings.append(f"role template {path} ignored: {error}")
                continue
            roles.setdefault(role.name, role.description)
        for warning in warnings:
            log.warning("invalid role template", extra={"warning": warning})
        if not roles:
            return [], warnings, ""
        lines = "\n".join(f"- {name}: {description}" for name, description in roles.items())
        return list(roles), warnings, f"\n\n<roles>\n{lines}\n</roles>"

    async def _answer(self, trigger: Event) -> list[Event]:
        """Ask the model until ``decide`` (the domain's rules) names the outcome."""
        mission = self.projection.state.missions[trigger.mission_id]
        request = mission.request
        model = self._llm.model_for(self._tier, request.model_overrides)
        offline = model == OFFLINE_MODEL
        context = await self._context(mission)
        roles, warnings = self._roles.get(trigger.mission_id, ([], []))
        replies: list[Decision] = []
        out: list[Event] = []

        def next_step() -> AskModel | Outcome:
            return decide(
                mission,
                trigger,
                replies,
                self._clock(),
                model=model,
                offline=offline,
                roles=roles,
                warnings=warnings,
            )

        step = next_step()
        while isinstance(step, AskModel):
            correction = None
            if step.correction is not None:
                log.warning(
                    "model reply rejected; asking once more", extra={"errors": step.correction}
                )
                correction = (replies[-1].message, step.correction)
            call = len(replies) + 1
            try:
                reply = await self._model.call(
                    key=derived_id(trigger.mission_id, "planner-call", trigger.event_id, call),
                    model=model,
                    context=context,
                    mission=mission_text(request, mission.turns, step.revising),
                    plan_only=step.plan_only,
                    correction=correction,
                )
            except ModelUnavailable as error:
                step = failed(mission, trigger, self._clock(), str(error))
                break
            replies.append(reply)
            out.append(
                UsageRecorded(
                    **caused_by(
                        trigger, self._clock(), step_ids.planner_usage(trigger.event_id, call)
                    ),
                    service="planner",
                    model=model,
                    usage=reply.usage,
                    step=f"planner:{trigger.event_id[:12]}:call{call}",
                    offline=offline,
                )
            )
            step = next_step()
        _count(step)
        return [*out, step]


def _count(outcome: Outcome) -> None:
    match outcome:
        case PlanClarificationRequested():
            log.info("asking clarifying questions", extra={"questions": len(outcome.questions)})
            metrics.OUTCOMES.labels("questions").inc()
        case MissionAnswered():
            metrics.OUTCOMES.labels("answer").inc()
        case PlanProduced():
            metrics.OUTCOMES.labels("plan").inc()
            metrics.PLAN_TASKS.observe(len(outcome.tasks))
            log.info(
                "plan produced",
                extra={
                    "version": outcome.version,
                    "tasks": len(outcome.tasks),
                    "model": outcome.model,
                    "offline": outcome.offline,
                },
            )
        case PlanFailed():
            metrics.OUTCOMES.labels("failed").inc()

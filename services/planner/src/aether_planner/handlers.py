"""Planner handlers: a trigger in, one model decision out, published with its usage."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from aether_events import (
    Event,
    EventPublisher,
    MissionAnswered,
    PlanClarificationRequested,
    PlanFailed,
    PlanProduced,
    PlanRevisionRequested,
    RepositoryPrepared,
    Tier,
    UsageRecorded,
    caused_by,
    derived_id,
    step_ids,
)
from aether_llm import OFFLINE_MODEL, LLMSettings
from aether_planner import metrics
from aether_planner.adapters.model import Decision, ModelUnavailable, PlannerModel
from aether_planner.adapters.repository import read_files
from aether_planner.context import files_to_read, render
from aether_planner.domain import InvalidPlan, MissionPlanning, State, validate_plan, wants_model
from aether_planner.prompt import mission_text
from aether_runtime import Delivery, Projection

log = logging.getLogger("aether.planner")

MAX_CLARIFICATION_ROUNDS = 2


class Handlers:
    def __init__(
        self,
        projection: Projection[State],
        publisher: Callable[[], EventPublisher],
        model: PlannerModel,
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
        # One lock per mission with a trigger in hand: its triggers are answered one after
        # another, in stream order, while other missions' are answered beside them.
        self._missions: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    async def handle(self, event: Event, delivery: Delivery) -> None:
        # The consumer delivers one event at a time, in stream order (see app.py), and
        # every event is folded before the next is delivered. A trigger then takes its
        # mission's lock (locks are fair: a later trigger of the mission queues behind)
        # and releases the consumer for the model call.
        self.projection.apply(event)
        mission = self.projection.state.missions.get(event.mission_id)
        if mission is not None and (mission.approved or mission.ended):
            self._contexts.pop(event.mission_id, None)  # no more planning for it
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
                    for out in decided:
                        await self._publisher().publish(out)
                        self.projection.apply(out)
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
            self._contexts[prepared.mission_id] = cached  # the same text keeps the cache warm
        return cached

    async def _answer(self, trigger: Event) -> list[Event]:
        mission = self.projection.state.missions[trigger.mission_id]
        request = mission.request
        model = self._llm.model_for(self._tier, request.model_overrides)
        revising = bool(mission.plans) and not isinstance(trigger, RepositoryPrepared)
        if isinstance(trigger, PlanRevisionRequested) and not mission.plans:
            revising = False
        plan_only = revising or mission.clarification_rounds >= MAX_CLARIFICATION_ROUNDS
        context = await self._context(mission)
        text = mission_text(request, mission.turns, revising)
        out: list[Event] = []
        now = self._clock

        def usage(call: int, decision: Decision) -> UsageRecorded:
            return UsageRecorded(
                **caused_by(trigger, now(), step_ids.planner_usage(trigger.event_id, call)),
                service="planner",
                model=model,
                usage=decision.usage,
                step=f"planner:{trigger.event_id[:12]}:call{call}",
                offline=model == OFFLINE_MODEL,
            )

        def key(call: int) -> str:
            return derived_id(trigger.mission_id, "planner-call", trigger.event_id, call)

        try:
            decision = await self._model.call(
                key=key(1), model=model, context=context, mission=text, plan_only=plan_only
            )
            out.append(usage(1, decision))
            problems = self._problems(decision, mission, plan_only)
            if problems:
                log.warning("model reply rejected; asking once more", extra={"errors": problems})
                decision = await self._model.call(
                    key=key(2),
                    model=model,
                    context=context,
                    mission=text,
                    plan_only=plan_only,
                    correction=(decision.message, "\n".join(f"- {p}" for p in problems)),
                )
                out.append(usage(2, decision))
                problems = self._problems(decision, mission, plan_only)
                if problems:
                    raise InvalidPlan(problems)
        except InvalidPlan as invalid:
            reason = "the model's plan was rejected twice: " + "; ".join(invalid.errors)
            return [*out, self._failed(trigger, reason)]
        except ModelUnavailable as error:
            return [*out, self._failed(trigger, str(error))]
        return [*out, self._outcome(trigger, mission, decision, model)]

    def _problems(self, decision: Decision, mission: MissionPlanning, plan_only: bool) -> list[str]:
        if decision.kind == "none":
            return [decision.problem or "no usable reply"]
        if plan_only and decision.kind != "plan":
            return ["a plan is required now: call submit_plan"]
        if decision.kind == "plan":
            assert decision.submission is not None
            try:
                validate_plan(decision.submission, mission.request.max_tasks)
            except InvalidPlan as invalid:
                return invalid.errors
        return []

    def _outcome(
        self, trigger: Event, mission: MissionPlanning, decision: Decision, model: str
    ) -> Event:
        offline = model == OFFLINE_MODEL
        meta = caused_by(trigger, self._clock(), step_ids.planner_outcome(trigger.event_id))
        if decision.kind == "questions":
            assert decision.questions is not None
            log.info("asking clarifying questions", extra={"questions": len(decision.questions)})
            metrics.OUTCOMES.labels("questions").inc()
            return PlanClarificationRequested(
                **meta, questions=decision.questions, model=model, offline=offline
            )
        if decision.kind == "answer":
            assert decision.answer is not None
            metrics.OUTCOMES.labels("answer").inc()
            return MissionAnswered(**meta, answer=decision.answer, model=model, offline=offline)
        assert decision.submission is not None
        tasks, repairs = validate_plan(decision.submission, mission.request.max_tasks)
        version = mission.latest_version + 1
        metrics.OUTCOMES.labels("plan").inc()
        metrics.PLAN_TASKS.observe(len(tasks))
        log.info(
            "plan produced",
            extra={"version": version, "tasks": len(tasks), "model": model, "offline": offline},
        )
        return PlanProduced(
            **meta,
            version=version,
            tasks=tasks,
            rationale=decision.submission.rationale,
            model=model,
            offline=offline,
            repairs=repairs,
        )

    def _failed(self, trigger: Event, reason: str) -> PlanFailed:
        mission = self.projection.state.missions[trigger.mission_id]
        meta = caused_by(trigger, self._clock(), step_ids.planner_outcome(trigger.event_id))
        metrics.OUTCOMES.labels("failed").inc()
        return PlanFailed(**meta, reason=reason, version=mission.latest_version + 1)

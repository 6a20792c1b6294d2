"""Planner handlers: on RepositoryPrepared, plan once; publish usage and the plan."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from aether_events import (
    Event,
    EventPublisher,
    PlanFailed,
    PlanProduced,
    RepositoryPrepared,
    Usage,
    UsageRecorded,
    caused_by,
)
from aether_llm import OFFLINE_MODEL, LLMSettings
from aether_planner.adapters.model import ModelUnavailable, PlannerModel
from aether_planner.domain import InvalidPlan, State, needs_first_plan, validate_plan
from aether_runtime import Delivery, Projection

log = logging.getLogger("aether.planner")


class Handlers:
    def __init__(
        self,
        projection: Projection[State],
        publisher: Callable[[], EventPublisher],
        model: PlannerModel,
        llm: LLMSettings,
        tier: str = "complex",
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.projection = projection
        self._publisher = publisher
        self._model = model
        self._llm = llm
        self._tier = tier
        self._clock = clock

    async def handle(self, event: Event, delivery: Delivery) -> None:
        self.projection.apply(event)
        if isinstance(event, RepositoryPrepared) and needs_first_plan(
            self.projection.state, event.mission_id
        ):
            async with delivery.keep_alive():
                decided = await self._first_plan(event)
            for out in decided:
                await self._publisher().publish(out)
                self.projection.apply(out)

    async def _first_plan(self, prepared: RepositoryPrepared) -> list[Event]:
        mission = self.projection.state.missions[prepared.mission_id]
        request = mission.request
        model = self._llm.model_for(self._tier, request.model_overrides)  # type: ignore[arg-type]
        offline = model == OFFLINE_MODEL
        out: list[Event] = []

        def usage_event(call: int, attempt_usage: Usage) -> UsageRecorded:
            return UsageRecorded(
                **caused_by(prepared, self._clock(), "usage", "plan", 1, call),
                service="planner",
                model=model,
                usage=attempt_usage,
                step="plan:v1" + (f":correction{call - 1}" if call > 1 else ""),
                offline=offline,
            )

        try:
            attempt = await self._model.plan(model, request, prepared)
            out.append(usage_event(1, attempt.usage))
            errors = [attempt.decode_error] if attempt.decode_error else []
            tasks = repairs = None
            if attempt.submission is not None:
                try:
                    tasks, repairs = validate_plan(attempt.submission, request.max_tasks)
                except InvalidPlan as invalid:
                    errors = invalid.errors
            if tasks is None:
                log.warning("plan rejected; asking once more", extra={"errors": errors})
                retry = await self._model.plan(
                    model, request, prepared, correction=(attempt.message, "\n".join(errors))
                )
                out.append(usage_event(2, retry.usage))
                attempt = retry
                if retry.submission is None:
                    raise InvalidPlan([retry.decode_error or "no plan"])
                tasks, repairs = validate_plan(retry.submission, request.max_tasks)
        except InvalidPlan as invalid:
            reason = "the model's plan was invalid twice: " + "; ".join(invalid.errors)
            return [*out, self._failed(prepared, reason)]
        except ModelUnavailable as error:
            return [*out, self._failed(prepared, str(error))]
        assert attempt.submission is not None
        assert repairs is not None
        log.info("plan produced", extra={"tasks": len(tasks), "model": model, "offline": offline})
        produced = PlanProduced(
            **caused_by(prepared, self._clock(), "plan_produced", 1),
            version=1,
            tasks=tasks,
            rationale=attempt.submission.rationale,
            model=model,
            offline=offline,
            repairs=repairs,
        )
        return [*out, produced]

    def _failed(self, prepared: RepositoryPrepared, reason: str) -> PlanFailed:
        return PlanFailed(**caused_by(prepared, self._clock(), "plan_failed", 1), reason=reason)

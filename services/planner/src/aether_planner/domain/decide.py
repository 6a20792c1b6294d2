"""The planner's rules for one trigger, free of I/O: when to ask the model, what to ask,
when to ask again, and which event answers the trigger.

The handler drives a short loop: ``decide`` says ``AskModel`` (with the correction to send,
if any), the handler calls the model and hands the reply back, until ``decide`` returns
the outcome event. Clock, model name and the replies are arguments, so every rule here is
testable with a few lines of "given this mission, when the model replies this, then".

- **Clarification**: the model may ask questions at most ``MAX_CLARIFICATION_ROUNDS``
  times per mission; after that, and whenever a plan is being revised, only a plan will do.
- **Retry**: a reply that is unusable (nothing decoded, not a plan when a plan is required,
  a plan that cannot be repaired) is sent back once with the problems listed; a second
  unusable reply fails the planning.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from aether_events import (
    Event,
    MissionAnswered,
    PlanClarificationRequested,
    PlanFailed,
    PlanProduced,
    PlanRevisionRequested,
    RepositoryPrepared,
    Usage,
    caused_by,
    step_ids,
)
from aether_planner.domain.state import MissionPlanning
from aether_planner.domain.validation import InvalidPlan, PlanSubmission, validate_plan

# Rounds of questions the planner may ask before it must propose a plan.
MAX_CLARIFICATION_ROUNDS = 2
# Model calls per trigger: the first answer and one corrected retry.
MAX_MODEL_CALLS = 2

Outcome = PlanProduced | PlanClarificationRequested | MissionAnswered | PlanFailed


class Reply(Protocol):
    """What the decision needs of one model reply (the adapter's ``Decision``)."""

    @property
    def kind(self) -> str: ...  # "plan", "questions", "answer" or "none" (did not decode)
    @property
    def usage(self) -> Usage: ...
    @property
    def submission(self) -> PlanSubmission | None: ...
    @property
    def questions(self) -> list[str] | None: ...
    @property
    def answer(self) -> str | None: ...
    @property
    def problem(self) -> str | None: ...


@dataclass(frozen=True)
class AskModel:
    """Call the model. ``correction`` lists the problems of the previous reply, to be sent
    back with it; ``None`` on the first call."""

    revising: bool
    plan_only: bool
    correction: str | None = None


def revising(mission: MissionPlanning, trigger: Event) -> bool:
    """Whether ``trigger`` asks for a new version of an existing plan (feedback on it or
    an answer after a plan), rather than for the first one."""
    if isinstance(trigger, RepositoryPrepared):
        return False
    if isinstance(trigger, PlanRevisionRequested) and not mission.plans:
        return False
    return bool(mission.plans)


def plan_required(mission: MissionPlanning, trigger: Event) -> bool:
    """Whether only a plan is an acceptable reply: when revising one, or once the planner
    has used its rounds of questions."""
    return revising(mission, trigger) or mission.clarification_rounds >= MAX_CLARIFICATION_ROUNDS


def problems(
    reply: Reply, mission: MissionPlanning, plan_only: bool, roles: Collection[str] = ()
) -> list[str]:
    """Why ``reply`` cannot be used, each a sentence for the model; [] when it can.
    ``roles``: the repository's role names, the only ones a task may take on."""
    if reply.kind == "none":
        return [reply.problem or "no usable reply"]
    if plan_only and reply.kind != "plan":
        return ["a plan is required now: call submit_plan"]
    if reply.kind == "plan":
        if reply.submission is None:
            return ["the plan did not decode"]
        try:
            validate_plan(reply.submission, mission.request.max_tasks, roles)
        except InvalidPlan as invalid:
            return invalid.errors
    return []


def decide(
    mission: MissionPlanning,
    trigger: Event,
    replies: Sequence[Reply],
    now: datetime,
    *,
    model: str,
    offline: bool,
    roles: Collection[str] = (),
    warnings: Sequence[str] = (),
    requirement: str | None = None,
) -> AskModel | Outcome:
    """The next step for ``trigger``, given the model's replies to it so far. ``roles``:
    the repository's role names; ``warnings``: about its role templates that cannot be
    used (and the command the mission invoked), reported with a plan's repairs;
    ``requirement``: what the mission's repository command made of its requirement."""
    ask = AskModel(revising=revising(mission, trigger), plan_only=plan_required(mission, trigger))
    if not replies:
        return ask
    found = problems(replies[-1], mission, ask.plan_only, roles)
    if not found:
        return outcome(
            mission,
            trigger,
            replies[-1],
            now,
            model=model,
            offline=offline,
            roles=roles,
            warnings=warnings,
            requirement=requirement,
        )
    if len(replies) < MAX_MODEL_CALLS:
        return AskModel(ask.revising, ask.plan_only, "\n".join(f"- {p}" for p in found))
    return failed(mission, trigger, now, "the model's plan was rejected twice: " + "; ".join(found))


def outcome(
    mission: MissionPlanning,
    trigger: Event,
    reply: Reply,
    now: datetime,
    *,
    model: str,
    offline: bool,
    roles: Collection[str] = (),
    warnings: Sequence[str] = (),
    requirement: str | None = None,
) -> PlanProduced | PlanClarificationRequested | MissionAnswered:
    """The event a usable reply becomes: questions, an answer, or the next plan version."""
    meta = caused_by(trigger, now, step_ids.planner_outcome(trigger.event_id))
    if reply.kind == "questions" and reply.questions is not None:
        return PlanClarificationRequested(
            **meta, questions=reply.questions, model=model, offline=offline
        )
    if reply.kind == "answer" and reply.answer is not None:
        return MissionAnswered(**meta, answer=reply.answer, model=model, offline=offline)
    if reply.kind != "plan" or reply.submission is None:
        raise ValueError(f"not a usable reply: {reply.kind}")
    tasks, repairs = validate_plan(reply.submission, mission.request.max_tasks, roles)
    return PlanProduced(
        **meta,
        version=mission.latest_version + 1,
        tasks=tasks,
        rationale=reply.submission.rationale,
        model=model,
        offline=offline,
        repairs=[*warnings, *repairs],
        requirement=requirement,
    )


def failed(mission: MissionPlanning, trigger: Event, now: datetime, reason: str) -> PlanFailed:
    """The planning of ``trigger`` given up, with the reason people will read."""
    return PlanFailed(
        **caused_by(trigger, now, step_ids.planner_outcome(trigger.event_id)),
        reason=reason,
        version=mission.latest_version + 1,
    )

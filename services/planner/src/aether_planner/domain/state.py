"""The planner's memory of each mission: the request, the repository, the conversation.

A *trigger* is an event the planner answers with one model decision: the repository being
prepared (the first plan), a person's message answering the planner's questions, or a
revision request (feedback on a plan; the gateway turns a message about a plan into one).
Every outcome (a plan version, questions, an answer, a failure) names its trigger as its
cause, so a trigger seen again after a crash is recognised as handled.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from aether_events import (
    TERMINAL_TYPES,
    Event,
    MissionAnswered,
    MissionMessagePosted,
    MissionRequested,
    PlanApproved,
    PlanClarificationRequested,
    PlanFailed,
    PlanProduced,
    PlanRevisionRequested,
    RepositoryPrepared,
    is_terminal,
)

Turn = tuple[Literal["questions", "answer", "plan", "feedback"], str]
OUTCOMES = (PlanProduced, PlanClarificationRequested, MissionAnswered, PlanFailed)
# Every event type ``evolve`` folds and every trigger; any other leaves the state as it is
# and asks for nothing, so the planner's consumer is filtered to these.
FOLDED: tuple[type[Event], ...] = (
    MissionRequested,
    RepositoryPrepared,
    PlanClarificationRequested,
    MissionMessagePosted,
    PlanRevisionRequested,
    PlanProduced,
    PlanApproved,
    PlanFailed,
    *sorted(TERMINAL_TYPES, key=lambda cls: cls.__name__),
)


@dataclass(frozen=True)
class MissionPlanning:
    request: MissionRequested
    prepared: RepositoryPrepared | None = None
    plans: dict[int, PlanProduced] = field(default_factory=dict)
    # The conversation so far, oldest first: what the planner asked or proposed, and what
    # people answered or asked to change.
    turns: tuple[Turn, ...] = ()
    handled: frozenset[str] = frozenset()
    # Messages that answered the planner's questions (other messages are conversation for
    # people; plan feedback arrives as PlanRevisionRequested).
    answers: frozenset[str] = frozenset()
    # Revision requests (each a trigger, answered once).
    revisions: frozenset[str] = frozenset()
    waiting_for_answer: bool = False
    clarification_rounds: int = 0
    approved: bool = False
    ended: bool = False

    @property
    def latest_version(self) -> int:
        return max(self.plans, default=0)


@dataclass(frozen=True)
class State:
    missions: dict[str, MissionPlanning] = field(default_factory=dict)


def evolve(state: State, event: Event) -> State:
    if isinstance(event, MissionRequested):
        if event.mission_id in state.missions:
            return state
        return State({**state.missions, event.mission_id: MissionPlanning(request=event)})
    mission = state.missions.get(event.mission_id)
    if mission is None:
        return state
    updated = _mission(mission, event)
    if isinstance(event, OUTCOMES) and event.causation_id:
        updated = replace(updated, handled=updated.handled | {event.causation_id})
    return State({**state.missions, event.mission_id: updated})


def _mission(m: MissionPlanning, event: Event) -> MissionPlanning:
    match event:
        case RepositoryPrepared():
            return replace(m, prepared=event)
        case PlanClarificationRequested():
            questions = "\n".join(f"- {q}" for q in event.questions)
            return replace(
                m,
                turns=(*m.turns, ("questions", questions)),
                waiting_for_answer=True,
                clarification_rounds=m.clarification_rounds + 1,
            )
        case MissionMessagePosted():
            if not m.waiting_for_answer:
                return m
            return replace(
                m,
                turns=(*m.turns, ("answer", event.text)),
                answers=m.answers | {event.event_id},
                waiting_for_answer=False,
            )
        case PlanRevisionRequested():
            return replace(
                m,
                turns=(*m.turns, ("feedback", event.feedback)),
                revisions=m.revisions | {event.event_id},
            )
        case PlanProduced():
            summary = "\n".join(
                f"- {t.id}: {t.title} (files: {', '.join(t.files) or 'none'}; "
                f"after: {', '.join(t.depends_on) or 'nothing'})"
                for t in event.tasks
            )
            return replace(
                m,
                plans={**m.plans, event.version: event},
                turns=(*m.turns, ("plan", f"Plan version {event.version}:\n{summary}")),
                waiting_for_answer=False,
            )
        case PlanApproved():
            return replace(m, approved=True)
        case PlanFailed():
            return replace(m, ended=True)
        case _ if is_terminal(event):
            return replace(m, ended=True)
    return m


def wants_model(state: State, trigger: Event) -> bool:
    """Whether ``trigger`` asks the planner for a model decision it has not made yet."""
    mission = state.missions.get(trigger.mission_id)
    if mission is None or mission.prepared is None or mission.ended or mission.approved:
        return False
    if trigger.event_id in mission.handled:
        return False
    if isinstance(trigger, RepositoryPrepared):
        return not mission.plans and mission.clarification_rounds == 0
    if isinstance(trigger, MissionMessagePosted):
        return trigger.event_id in mission.answers
    return isinstance(trigger, PlanRevisionRequested)


def pending(state: State) -> list[str]:
    """The ids of every trigger the planner still owes a model decision, judged from the
    whole state: exactly the folded events for which ``wants_model`` says yes. What a
    planner starting up must answer, whenever the trigger was published."""
    due: list[str] = []
    for mission in state.missions.values():
        if mission.prepared is None or mission.ended or mission.approved:
            continue
        triggers = set(mission.answers | mission.revisions)
        if not mission.plans and mission.clarification_rounds == 0:
            triggers.add(mission.prepared.event_id)
        due.extend(sorted(triggers - mission.handled))
    return due

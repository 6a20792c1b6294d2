"""Planner handlers: a trigger in, one model decision out, published with its usage."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime

import msgspec

from aether_events import (
    Event,
    MissionAnswered,
    PlanClarificationRequested,
    PlanFailed,
    PlanProduced,
    Publisher,
    Tier,
    UsageRecorded,
    caused_by,
    derived_id,
    publish_in_order,
    step_ids,
)
from aether_llm import OFFLINE_MODEL, LLMSettings
from aether_llm.commands import Invocation, expand, invocation
from aether_llm.roles import InvalidRole, is_role_path, parse_role
from aether_llm.skills import MAX_SKILLS, is_skill_path, parse_skill
from aether_planner import metrics
from aether_planner.adapters.model import Decision, ModelUnavailable
from aether_planner.context import files_to_read, render
from aether_planner.domain import MissionPlanning, State, wants_model
from aether_planner.domain.decide import AskModel, Outcome, decide, failed
from aether_planner.ports import PlanningModel, RepositoryReader
from aether_planner.prompt import mission_text
from aether_runtime import Delivery, Projection, stored_sequence
from aether_runtime.broker_read import BrokerReadFailed

log = logging.getLogger("aether.planner")

# Between two tries to read a repository's files from a broker that did not answer.
FIRST_READ_RETRY_SECONDS = 0.25
LONGEST_READ_RETRY_SECONDS = 4.0


class Handlers:
    def __init__(
        self,
        projection: Projection[State],
        publisher: Callable[[], Publisher],
        model: PlanningModel,
        llm: LLMSettings,
        files: RepositoryReader,
        tier: Tier = "complex",
        context_tokens: int = 24_000,
        read_wait_seconds: float = 30.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.projection = projection
        self._publisher = publisher
        self._model = model
        self._files = files
        self._read_wait_seconds = read_wait_seconds
        self._llm = llm
        self._tier = tier
        self._context_tokens = context_tokens
        self._clock = clock
        self._contexts: dict[str, str] = {}
        # Per mission: the repository's role names, and warnings about its bad templates.
        self._roles: dict[str, tuple[list[str], list[str]]] = {}
        # Per mission invoking a repository command: the requirement it makes (None when
        # there is no such command), and the plan's notes about it.
        self._commands: dict[str, tuple[str | None, list[str]]] = {}
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
            self._commands.pop(event.mission_id, None)
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
            called = invocation(mission.request.requirement)
            command_paths = [called.path] if called is not None else []
            paths = files_to_read(prepared, mission.request.requirement)
            role_paths = [f.path for f in prepared.files if is_role_path(f.path)]
            skill_paths = [f.path for f in prepared.files if is_skill_path(f.path)]
            skill_paths = sorted(skill_paths)[:MAX_SKILLS]
            texts, warnings = await self._read(
                mission, [*paths, *role_paths, *skill_paths, *command_paths]
            )
            if called is not None:
                self._commands[prepared.mission_id] = _command(called, texts)
            cached = render(
                prepared, {p: texts[p] for p in paths if p in texts}, self._context_tokens
            )
            roles, role_warnings, block = self._discover_roles(role_paths, texts)
            cached += block
            cached += self._skills_block(skill_paths, texts)
            self._roles[prepared.mission_id] = (roles, [*warnings, *role_warnings])
            self._contexts[prepared.mission_id] = cached  # the same text keeps the cache warm
        return cached

    async def _read(
        self, mission: MissionPlanning, paths: list[str]
    ) -> tuple[dict[str, str], list[str]]:
        """The text of ``paths`` at the mission's base commit, read through the git broker,
        and a warning for the plan when they could not be read (it is then planned from
        the file list). A broker that does not answer is asked again for
        ``read_wait_seconds`` (a broker restarting); one that refuses is not."""
        prepared = mission.prepared
        assert prepared is not None
        if not paths:
            return {}, []
        delay = FIRST_READ_RETRY_SECONDS
        deadline = asyncio.get_running_loop().time() + self._read_wait_seconds
        while True:
            try:
                found = await self._files.files(
                    mission.request.repository, prepared.base_sha, paths
                )
                return found.files, []
            except BrokerReadFailed as failed:
                left = deadline - asyncio.get_running_loop().time()
                if failed.answered or left <= 0:
                    warning = (
                        f"the repository's files could not be read ({failed.reason}); "
                        "planned from the file list alone"
                    )
                    log.warning(
                        "repository files not read; planning from the file list",
                        extra={"reason": failed.reason, "status": failed.status},
                    )
                    return {}, [warning]
                await asyncio.sleep(min(delay, left))
                delay = min(delay * 2, LONGEST_READ_RETRY_SECONDS)

    @staticmethod
    def _discover_roles(
        paths: list[str], texts: dict[str, str]
    ) -> tuple[list[str], list[str], str]:
        """The repository's roles (``.claude/agents/*.md`` at ``paths``, read into
        ``texts``), warnings about templates that cannot be used, and the block that
        offers the roles to the model."""
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

    @staticmethod
    def _skills_block(paths: list[str], texts: dict[str, str]) -> str:
        """The block that tells the model of the repository's skills (each agent is told
        of them too, and reads one when its task calls for it)."""
        skills = []
        for path in paths:
            if path not in texts:
                continue
            try:
                skills.append(parse_skill(texts[path], path))
            except InvalidRole as error:
                log.info("not a skill", extra={"path": path, "error": str(error)})
        if not skills:
            return ""
        lines = "\n".join(f"- {skill.name}: {skill.description}" for skill in skills)
        return f"\n\n<skills>\n{lines}\n</skills>"

    async def _answer(self, trigger: Event) -> list[Event]:
        """Ask the model until ``decide`` (the domain's rules) names the outcome."""
        mission = self.projection.state.missions[trigger.mission_id]
        request = mission.request
        model = self._llm.model_for(self._tier, request.model_overrides)
        offline = model == OFFLINE_MODEL
        context = await self._context(mission)
        roles, warnings = self._roles.get(trigger.mission_id, ([], []))
        requirement, notes = self._commands.get(trigger.mission_id, (None, []))
        warnings = [*warnings, *notes]
        if requirement is not None:
            request = msgspec.structs.replace(request, requirement=requirement)
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
                requirement=requirement,
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


def _command(called: Invocation, texts: dict[str, str]) -> tuple[str | None, list[str]]:
    """The requirement a repository command makes of the mission (``None`` when the
    repository has no such command, or one that cannot be used), and the plan's notes."""
    text = texts.get(called.path)
    if text is None:
        return None, [
            f"the repository has no command /{called.name} ({called.path}); "
            "planned from the requirement as written"
        ]
    try:
        expanded = expand(text, called)
    except InvalidRole as error:
        return None, [
            f"the command /{called.name} ({called.path}) cannot be used: {error}; "
            "planned from the requirement as written"
        ]
    return expanded.text, expanded.notes


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

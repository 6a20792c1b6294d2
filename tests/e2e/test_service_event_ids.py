"""A mission completes although an attempt's credential took its services' next ids first.

The ids of the services' own events were derived from public parts (decision 0004): with
any attempt's credential, a message stored first on the attempt's own subject under the id
of a service's next event (the git broker's ``BranchMerged``, the scheduler's
``TaskReady`` or ``MissionCompleted``) had that event acknowledged as a duplicate, never
stored and taken for done, and the mission stalled. The services now key those ids with
the deployment's event id secret, which no runner holds (decision 0031). Here, on the
package's stack (every service its own process, the NATS of ``aether up`` with its
callout), attempt b/1's credential stores the old ids of every step of the mission still
to come while b's agent waits on its slow model reply; the mission completes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest

from aether.stack import Stack
from aether_agent_runner.domain import decide
from aether_events import (
    MISSIONS_STREAM,
    AgentStarted,
    BranchMerged,
    MissionCompleted,
    PlanApproved,
    Usage,
    encode,
    public_step_event_id,
    service_id_key,
    step_ids,
    subject_for,
)
from aether_events.ids import keyed_id
from aether_runtime.attempt_auth import AttemptKey
from tests.e2e.test_mission_flow import submit_and_approve
from tests.escape.test_attempt_credentials import Attempt
from tests.escape.test_attempt_event_ids import ready

pytestmark = pytest.mark.e2e


async def test_a_mission_completes_although_an_attempt_took_its_services_old_ids_first(
    running: Stack, repo: Path
) -> None:
    mission_id, log, nc = await submit_and_approve(running, repo)
    attempt = Attempt()
    try:
        # b's agent waits on its slow model reply: b/1 is open, its merge and everything
        # after it still to come.
        await log.wait_for(
            lambda log: any(e.task_id == "b" for e in log.of_type(AgentStarted)), timeout=60
        )
        own = AttemptKey(mission_id, "b", 1)
        await attempt.open(running, own, runner=running.runner_name)
        assert attempt.nc is not None
        js = attempt.nc.jetstream()
        steps = [
            step_ids.branch_merged("b", 1),
            step_ids.task_ready("c", 1),
            step_ids.workspace_ready("c", 1),
            step_ids.branch_merged("c", 1),
            step_ids.wave_completed(1),
            step_ids.mission_completed(),
        ]
        for turn, step in enumerate(steps, start=1000):
            # A usage report of its own attempt (costing nothing), under the old id. (The
            # credential the runner holds for b/1: a thief of its connection has it.)
            old_id = public_step_event_id(mission_id, step)
            usage = decide.usage_recorded(
                ready(own), datetime.now(UTC), turn, Usage(), offline=True
            )
            squatting = msgspec.structs.replace(usage, event_id=old_id)
            ack = await js.publish(
                subject_for(squatting),
                encode(squatting),
                headers={"Nats-Msg-Id": old_id},
                timeout=10.0,
            )
            assert ack.stream == MISSIONS_STREAM and not ack.duplicate, step
        await log.completion(timeout=120)
    finally:
        await attempt.close()
        await log.stop()
        await nc.close()
    assert sorted(e.task_id for e in log.of_type(BranchMerged)) == ["a", "b", "c"]
    assert len(log.of_type(MissionCompleted)) == 1
    # Stored under the ids keyed with the secret ``aether up`` handed every service: the
    # gateway's approval (a person's) as the scheduler's automatic one would be.
    key = service_id_key(running.load_event_id_secret())
    (merged_b,) = [e for e in log.of_type(BranchMerged) if e.task_id == "b"]
    public = public_step_event_id(mission_id, step_ids.branch_merged("b", 1))
    assert merged_b.event_id == keyed_id(key, public)
    (approved,) = log.of_type(PlanApproved)
    public = public_step_event_id(mission_id, step_ids.plan_approved(1))
    assert approved.event_id == keyed_id(key, public) and not approved.automatic

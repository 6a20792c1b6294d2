"""A mission's status, as a pure function of its row and the next event.

The rules are ``aether_events.status`` (shared with the scheduler and the command line);
this module only reads the facts they need from the read model's row.
"""

from __future__ import annotations

from aether_events import Event, MissionProgress, MissionStatus
from aether_events.status import next_status as _next_status
from aether_events.status import resumed_status as _resumed_status
from aether_gateway.domain.model import Mission


def progress_of(mission: Mission) -> MissionProgress:
    """The status rules' view of a mission row."""
    return MissionProgress(
        status=mission.status,
        prepared=mission.integration_branch is not None,
        plan_version=mission.plan_version,
        approved_version=mission.approved_version,
        asking=bool(mission.questions),
    )


def resumed_status(mission: Mission) -> MissionStatus:
    """Where a paused mission goes back to, judged from how far it had come."""
    return _resumed_status(progress_of(mission))


def next_status(mission: Mission, event: Event) -> MissionStatus:
    """The mission's status after ``event``, given its row with ``event`` folded in."""
    return _next_status(progress_of(mission), event)

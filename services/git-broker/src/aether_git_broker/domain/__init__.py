"""The git broker's projection and decisions, free of I/O.

``evolve`` (``state``) folds the mission events the broker cares about into
``BrokerState``. ``decide`` (``decisions``) turns an incoming event into one ``Action`` for
the adapters, ``pending`` says which folded triggers still ask for work and ``sweep`` what
to remove at start-up. The ``*_event`` builders (``outcomes``) turn the adapters'
outcomes into the events to publish, and ``failure_event`` (``failures``) says what a
failed step becomes. ``markers`` finds the conflict markers a merge would add.
"""

from aether_git_broker.domain.decisions import (
    Action,
    FailWorkspace,
    FinishMission,
    Ignore,
    MergeTask,
    Policy,
    PrepareRepository,
    PrepareWorkspace,
    Push,
    RejectMission,
    Sweep,
    decide,
    pending,
    sweep,
    withheld_reason,
)
from aether_git_broker.domain.failures import (
    PUSH_ATTEMPTS,
    DiskFailed,
    Failure,
    Refused,
    after_push_failure,
    failure_event,
)
from aether_git_broker.domain.outcomes import (
    MergeKind,
    MergeOutcome,
    RepositoryOutcome,
    WorkspaceOutcome,
    delivered_event,
    delivery_failed_event,
    merge_event,
    mission_failed_event,
    repository_prepared_event,
    workspace_failed_event,
    workspace_ready_event,
)
from aether_git_broker.domain.state import (
    FOLDED,
    BrokerState,
    MissionView,
    PreparedRepo,
    TaskKey,
    Workspace,
    cancel_reason,
    evolve,
)

__all__ = [
    "FOLDED",
    "PUSH_ATTEMPTS",
    "Action",
    "BrokerState",
    "DiskFailed",
    "FailWorkspace",
    "Failure",
    "FinishMission",
    "Ignore",
    "MergeKind",
    "MergeOutcome",
    "MergeTask",
    "MissionView",
    "Policy",
    "PrepareRepository",
    "PrepareWorkspace",
    "PreparedRepo",
    "Push",
    "Refused",
    "RejectMission",
    "RepositoryOutcome",
    "Sweep",
    "TaskKey",
    "Workspace",
    "WorkspaceOutcome",
    "after_push_failure",
    "cancel_reason",
    "decide",
    "delivered_event",
    "delivery_failed_event",
    "evolve",
    "failure_event",
    "merge_event",
    "mission_failed_event",
    "pending",
    "repository_prepared_event",
    "sweep",
    "withheld_reason",
    "workspace_failed_event",
    "workspace_ready_event",
]

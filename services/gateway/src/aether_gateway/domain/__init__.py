"""The gateway's pure core: read-model rows, how events fold into them, the task graph,
what commands become, and who may run them. Imports only the standard library,
msgspec and the event catalogue."""

from aether_gateway.domain.carried import carries, unfolded
from aether_gateway.domain.fold import Changes, MissionView, fold, session_update, tasks_read
from aether_gateway.domain.graph import Edge, Graph, task_graph
from aether_gateway.domain.model import (
    MISSION_STATUSES,
    TASK_STATUSES,
    TERMINAL_STATUSES,
    AgentSession,
    BudgetAlert,
    Delivery,
    Mission,
    MissionMessage,
    MissionStatus,
    Plan,
    ProjectionFailure,
    SessionUpdate,
    Task,
    TaskStatus,
    UsageEntry,
)
from aether_gateway.domain.salvage import (
    placeholder_mission,
    salvage,
    sanitised,
    scrub,
    scrub_text,
)
from aether_gateway.domain.status import next_status, resumed_status

__all__ = [
    "MISSION_STATUSES",
    "TASK_STATUSES",
    "TERMINAL_STATUSES",
    "AgentSession",
    "BudgetAlert",
    "Changes",
    "Delivery",
    "Edge",
    "Graph",
    "Mission",
    "MissionMessage",
    "MissionStatus",
    "MissionView",
    "Plan",
    "ProjectionFailure",
    "SessionUpdate",
    "Task",
    "TaskStatus",
    "UsageEntry",
    "carries",
    "fold",
    "next_status",
    "placeholder_mission",
    "resumed_status",
    "salvage",
    "sanitised",
    "scrub",
    "scrub_text",
    "session_update",
    "task_graph",
    "tasks_read",
    "unfolded",
]

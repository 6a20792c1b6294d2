"""What each service does on the bus: the one table the NATS permissions come from.

A service's role names the event types it publishes, the durable consumers it owns (and
on which stream), whether it declares the streams, and the key-value buckets it keeps.
Everything a service may do on the bus is derived from this table (``bus_auth``): the
subjects it may publish, the JetStream API calls it may make, the inbox it reads replies
on. A new event type or consumer is added here, once; a service that publishes an event
its role does not list is refused by the server.

"The work a runner holds" changes every minute while a static user's permissions do not,
so a static user cannot be limited to it. The agent runner's own user therefore
publishes no agent event: ``attempt_publishes`` are published with a credential per
attempt that the scheduler's authorizer grants while the attempt is open
(``attempt_auth``), limited to that attempt's subjects, which name its mission, task
and attempt (``aether_events.subjects``; see docs/security.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from aether_events import (
    ATTEMPT_TYPES,
    MISSIONS_STREAM,
    TELEMETRY_STREAM,
    BranchMerged,
    BranchPushed,
    BranchPushFailed,
    BudgetExceeded,
    BudgetRaised,
    BudgetWarning,
    DeliveryRetryRequested,
    Event,
    MergeConflicted,
    MergeWithheld,
    MissionAnswered,
    MissionCancelled,
    MissionCompleted,
    MissionFailed,
    MissionMessagePosted,
    MissionPaused,
    MissionRequested,
    MissionResumed,
    PlanApproved,
    PlanClarificationRequested,
    PlanFailed,
    PlanProduced,
    PlanRevisionRequested,
    RepositoryPrepared,
    StepFailed,
    StepRecovered,
    StepRetryRequested,
    TaskEscalated,
    TaskReady,
    TaskRetried,
    TaskRetryRequested,
    TaskSkipped,
    TaskTimedOut,
    UsageRecorded,
    WaveCompleted,
    WaveStarted,
    WorkspaceFailed,
    WorkspaceReady,
)
from aether_runtime.runners import RUNNERS_BUCKET

# The leases of the services that run one active process among several (``lease``).
LEASES_BUCKET = "AETHER_LEASES"

# Every service with consumers records its failed steps and their recoveries (``steps``).
_STEP_RECORDS: frozenset[type[Event]] = frozenset({StepFailed, StepRecovered})


# What an agent runner reports on one attempt: published with the attempt's credential,
# on subjects that name the attempt.
ATTEMPT_EVENTS: frozenset[type[Event]] = ATTEMPT_TYPES


@dataclass(frozen=True)
class Role:
    """One service's part on the bus."""

    service: str
    publishes: frozenset[type[Event]]
    # (stream, durable) of every durable consumer the service creates and pulls from.
    durables: tuple[tuple[str, str], ...]
    declares_streams: bool = False
    kv_buckets: tuple[str, ...] = ()
    # Key-value buckets it only reads (stream info and direct gets of their entries).
    reads_buckets: tuple[str, ...] = ()
    # Published only with an attempt's own credential (``attempt_auth``), never the user's.
    attempt_publishes: frozenset[type[Event]] = frozenset()
    # Answers the server's authorization requests for attempt users (the scheduler).
    authorizes_attempts: bool = False

    @property
    def inbox_prefix(self) -> str:
        """Where the service's replies arrive: its own, so no other service reads them."""
        return f"_INBOX.{self.service}"


def _role(
    service: str,
    publishes: set[type[Event]],
    durables: list[tuple[str, str]],
    *,
    declares_streams: bool = False,
    kv_buckets: tuple[str, ...] = (),
    reads_buckets: tuple[str, ...] = (),
    attempt_publishes: frozenset[type[Event]] = frozenset(),
    authorizes_attempts: bool = False,
) -> Role:
    # The runtime gives every service a consumer of retry requests for its failed steps.
    retries = (MISSIONS_STREAM, f"{service}-step-retries")
    return Role(
        service=service,
        publishes=frozenset(publishes) | _STEP_RECORDS,
        durables=(*durables, retries),
        declares_streams=declares_streams,
        kv_buckets=kv_buckets,
        reads_buckets=reads_buckets,
        attempt_publishes=attempt_publishes,
        authorizes_attempts=authorizes_attempts,
    )


ROLES: dict[str, Role] = {
    role.service: role
    for role in (
        _role(
            "gateway",
            # The commands of people: every one of them goes through the gateway's checks.
            {
                MissionRequested,
                PlanRevisionRequested,
                MissionMessagePosted,
                PlanApproved,
                MissionPaused,
                MissionResumed,
                MissionCancelled,
                BudgetRaised,
                TaskRetryRequested,
                TaskSkipped,
                StepRetryRequested,
                DeliveryRetryRequested,
            },
            [(MISSIONS_STREAM, "gateway"), (TELEMETRY_STREAM, "gateway-telemetry")],
            # Which runtimes the live runners have: a mission naming another is refused.
            reads_buckets=(RUNNERS_BUCKET,),
        ),
        _role(
            "planner",
            {PlanProduced, PlanFailed, PlanClarificationRequested, MissionAnswered, UsageRecorded},
            [(MISSIONS_STREAM, "planner")],
            kv_buckets=("AETHER_PLANNER_CALLS",),
        ),
        _role(
            "scheduler",
            {
                PlanApproved,  # automatic approval
                MissionCompleted,
                MissionFailed,
                BudgetWarning,
                BudgetExceeded,
                TaskReady,
                TaskRetried,
                TaskTimedOut,
                TaskEscalated,
                WaveStarted,
                WaveCompleted,
            },
            [(MISSIONS_STREAM, "scheduler"), (TELEMETRY_STREAM, "scheduler-telemetry")],
            # The scheduler is the one active instance that every mission needs: the streams
            # are its to create and update (replicas, duplicate window, age limit), and so
            # are the buckets (``DECLARED_BUCKETS``): the live runners', which no static user
            # writes (each runner writes its own entry with its own credential), and the
            # leases, which only it writes.
            declares_streams=True,
            # It knows which attempts are open: it grants their credentials.
            authorizes_attempts=True,
            # Which of its processes is the active one (``lease``): any number may run.
            kv_buckets=(LEASES_BUCKET,),
        ),
        _role(
            "agent-runner",
            set(),
            [(MISSIONS_STREAM, "agent-runner")],
            attempt_publishes=ATTEMPT_EVENTS,
            # Which runtimes the other runners have: an attempt on a runtime it lacks goes
            # on to one of them. Its own entry it writes with a credential of its own.
            reads_buckets=(RUNNERS_BUCKET,),
        ),
        _role(
            "git-broker",
            {
                RepositoryPrepared,
                MissionFailed,
                WorkspaceReady,
                WorkspaceFailed,
                BranchMerged,
                MergeConflicted,
                MergeWithheld,
                BranchPushed,
                BranchPushFailed,
            },
            [(MISSIONS_STREAM, "git-broker")],
        ),
    )
}

STREAMS: tuple[str, ...] = (MISSIONS_STREAM, TELEMETRY_STREAM)
# The buckets the role that declares the streams creates too.
DECLARED_BUCKETS: tuple[str, ...] = (RUNNERS_BUCKET, LEASES_BUCKET)


def role_of(service: str) -> Role:
    """The role of ``service`` (KeyError for a name the table does not know)."""
    return ROLES[service]


def only_published_by(service: str) -> frozenset[type[Event]]:
    """The event types ``service`` publishes and no other service (nor an attempt) does.

    A service that applies each of its own events once the stream has stored it (with
    the stored sequence) and, when a publish failed, decides and publishes it again
    under the same id, has no use for them coming back through its consumer: there each
    would only be skipped as applied already, after a decode and a confirmed ack, and
    would hold up the delivery queued behind it. Its start-up replay still reads them."""
    others = frozenset(
        cls
        for role in ROLES.values()
        if role.service != service
        for cls in role.publishes | role.attempt_publishes
    )
    return ROLES[service].publishes - others

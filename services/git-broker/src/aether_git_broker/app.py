"""Wiring: the runtime ``Service`` with the broker's projection, handlers and consumer."""

from __future__ import annotations

from dataclasses import dataclass

from nats.js import JetStreamContext

from aether_events import ALL_MISSION_EVENTS, Event, type_subjects
from aether_git_broker.adapters.cancels import follow_cancels
from aether_git_broker.adapters.git import GitRepositories
from aether_git_broker.adapters.readapi import ReadApi
from aether_git_broker.adapters.remote import Remotes
from aether_git_broker.adapters.smarthttp import (
    Attempt,
    GitHttpApp,
    GitHttpServer,
    PushTokens,
    Served,
)
from aether_git_broker.adapters.verify import Verifier
from aether_git_broker.config import SERVICE_NAME, GitBrokerSettings
from aether_git_broker.domain import FOLDED, BrokerState, evolve, pending
from aether_git_broker.handlers import Handlers
from aether_runtime import ConsumerSpec, Projection, Service
from aether_runtime.metrics import service_at_zero
from aether_runtime.roles import only_published_by

DURABLE = "git-broker"
# What the consumer delivers: every folded type but the broker's own, which each handler
# applies as the stream stores it (``Handlers._publish``); its BranchMerged delivered back
# held up the TaskReady the merge freed, queued behind it. The replay reads them all.
DELIVERED: tuple[type[Event], ...] = tuple(
    cls for cls in FOLDED if cls not in only_published_by(SERVICE_NAME)
)


@dataclass
class GitBroker:
    """The service and the parts tests and operators look at."""

    service: Service
    handlers: Handlers
    git: GitRepositories
    http: GitHttpServer | None


@dataclass
class Adapters:
    """The broker's real parts, built by ``bootstrap`` from the settings."""

    git: GitRepositories
    remotes: Remotes
    verifier: Verifier
    # Signs each attempt's push token when repositories are served over smart HTTP.
    push_tokens: PushTokens | None


def wire(settings: GitBrokerSettings, adapters: Adapters) -> GitBroker:
    """The git broker: one durable consumer on every mission event, one event at a time.

    A single worker is the point: the broker is the only writer of the repositories, and
    merges into an integration branch must happen one after another. Before the first
    delivery (right after the projection is rebuilt) it removes what a crash left behind.
    """
    service = Service(name=SERVICE_NAME, settings=settings.runtime)
    # One at a time (Recreate): what a killed predecessor held is handed back at start.
    service.single_writer = True
    projection: Projection[BrokerState] = Projection(BrokerState(), evolve)
    git, tokens = adapters.git, adapters.push_tokens
    naming = settings.naming
    # What the gateway reads through the broker (task diffs, default branches).
    service.routes.update(
        ReadApi(settings.read_token, settings.repository_roots, adapters.remotes).routes()
    )
    handlers = Handlers(
        projection,
        git,
        naming,
        publisher=lambda: service.publisher,
        keepalive_seconds=settings.ack_wait_seconds / 3,
        policy=settings.policy,
        remotes=adapters.remotes,
        verifier=adapters.verifier,
        push_tokens=tokens,
    )

    async def rebuild(js: JetStreamContext) -> int:
        last = await projection.rebuild(
            js,
            SERVICE_NAME,
            due=lambda state: pending(state, naming, settings.policy),
            types=FOLDED,
        )
        await handlers.start_up()
        # Cancels stored from here on are heard as they are stored, not when the ordered
        # consumer reaches them: a merge of a cancelled mission must not land meanwhile.
        follower = await follow_cancels(js, last, handlers.hear_cancel, service.reconnects)
        service.on_stopping.append(follower.stop)
        return last

    service.rebuild_with(rebuild)
    service.bound(projection)
    service.consume(
        ConsumerSpec(
            durable=DURABLE,
            subject=ALL_MISSION_EVENTS,
            types=DELIVERED,
            handler=handlers.handle,
            max_workers=1,
            ack_wait_seconds=settings.ack_wait_seconds,
            # A message delivered again does nothing here: the projection holds what was
            # prepared, merged or refused (folded as it is published), and ``decide``
            # ignores a trigger already acted on. So settlements are sent without
            # waiting for the server's answer, a message and a wake-up less a delivery,
            # two a task; one lost with the server is sent again at the reconnect, or its
            # message settled again with no work when it comes back
            # (``aether_runtime.service``).
            confirm_settlements=False,
            # Created after the replay, the consumer starts at the first trigger still
            # owed (a mission requested before the broker first started, say).
            first_due=lambda: projection.first_due,
        )
    )
    service_at_zero(service.name, [subject for cls in DELIVERED for subject in type_subjects(cls)])

    http = None
    if settings.git_http_port is not None and tokens is not None:

        def served(attempt: Attempt) -> Served | None:
            view = projection.state.mission(attempt.mission_id)
            key = (attempt.task_id, attempt.attempt)
            if view is None or view.prepared is None:
                return None
            if view.attempt_live(key):
                branch = view.workspaces[key].branch
            else:
                # Its WorkspaceReady reached the runner before the broker had its ack back.
                announced = handlers.announcing.get((attempt.mission_id, *key))
                if announced is None or view.terminal or key in view.ended:
                    return None
                branch = announced.branch
            return Served(
                path=view.prepared.path,
                integration_branch=view.prepared.integration_branch,
                task_branch=branch,
            )

        http = GitHttpServer(
            GitHttpApp(
                served,
                tokens,
                max_push_bytes=settings.git_http_max_push_bytes,
                max_object_bytes=settings.merge_max_blob_bytes,
            ),
            settings.git_http_host or settings.runtime.host,
            settings.git_http_port,
        )

    async def start_http() -> None:
        if http is not None:
            http.start()

    async def stop() -> None:
        if http is not None:
            http.stop()
        git.close()

    service.on_started.append(start_http)
    service.on_stopping.append(stop)
    return GitBroker(service=service, handlers=handlers, git=git, http=http)

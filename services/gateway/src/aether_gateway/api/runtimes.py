"""Which agent runtimes the live runners have (the bus's registry of runners), and the
check of a mission request's runtimes against them."""

from __future__ import annotations

import logging

from litestar import get
from litestar.di import NamedDependency
from litestar.exceptions import ClientException

from aether_events import TIERS
from aether_gateway.api.auth import READ
from aether_gateway.api.bodies import RuntimeList, RuntimeOffer
from aether_gateway.api.context import GatewayContext
from aether_gateway.api.errors import (
    RUNNERS_RETRY_SECONDS,
    bad_request,
    error_responses,
    service_unavailable,
)
from aether_gateway.domain.commands import runtimes_missing
from aether_runtime.runners import RunnerEntry

log = logging.getLogger("aether.gateway.api")


def offers(runners: list[RunnerEntry]) -> list[RuntimeOffer]:
    """Each runtime some runner has, with the runners that have it, by name."""
    by_name: dict[str, list[str]] = {}
    for runner in runners:
        for name in dict.fromkeys(runner.runtimes):
            by_name.setdefault(name, []).append(runner.runner_id)
    return [RuntimeOffer(name=name, runners=by_name[name]) for name in sorted(by_name)]


async def check_runtimes(ctx: GatewayContext, asked: list[str]) -> str | None:
    """Refuse (400) runtimes no live runner has; None when they were checked, else the
    warning the answer carries: with no runner announced, or the registry unreadable,
    the mission is kept rather than refused (a mission asked for at start-up must never
    be lost) and its task fails its first attempt if no runner has the runtime then."""
    if not asked:
        return None
    try:
        runners = await ctx.runners.live()
    except Exception as error:
        log.warning("the registry of runners could not be read", extra={"error": repr(error)})
        return (
            f"the agent runtimes asked for ({', '.join(asked)}) were not checked: the "
            "registry of runners could not be read; a task whose runtime no runner has "
            "fails its first attempt"
        )
    if not runners:
        return (
            f"no agent runner has announced itself, so the runtimes asked for "
            f"({', '.join(asked)}) were not checked; a task whose runtime no runner has "
            "fails its first attempt"
        )
    missing = runtimes_missing(asked, [runner.runtimes for runner in runners])
    if missing:
        have = [offer.name for offer in offers(runners)]
        raise refused_runtimes(missing, have)
    return None


def refused_runtimes(missing: list[str], have: list[str]) -> ClientException:
    names = ", ".join(repr(name) for name in missing)
    return bad_request(
        f"no live agent runner has the runtime {names}; the runners have: {', '.join(have)}",
        unknown_runtimes=missing,
        available_runtimes=have,
    )


@get(
    "/runtimes",
    summary="The agent runtimes the live runners have, and the runners",
    guards=[READ],
    responses=error_responses(401, 403, 503),
    tags=["agents"],
)
async def list_runtimes(ctx: NamedDependency[GatewayContext]) -> RuntimeList:
    """Each live agent runner keeps an entry on the bus while it runs (refreshed every
    third of ``AETHER_RUNNER_ENTRY_SECONDS``, gone that long after it died, deleted when
    it stops); a mission naming a runtime none has is refused. Read at most every two
    seconds: a runner started within them may not show yet. The model tiers come with
    them, so a client can offer a runtime per tier (``runtime_overrides``)."""
    try:
        runners = await ctx.runners.live()
    except Exception as error:
        raise service_unavailable(
            "the registry of runners could not be read; try again",
            RUNNERS_RETRY_SECONDS,
            reason=type(error).__name__,
        ) from error
    return RuntimeList(runtimes=offers(runners), runners=runners, tiers=list(TIERS))


RUNTIME_ROUTES = [list_runtimes]

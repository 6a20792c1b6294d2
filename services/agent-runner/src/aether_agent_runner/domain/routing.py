"""Where an attempt whose runtime this runner lacks goes: on to a runner that has it, or,
once no live runner has had it for a while, to its failure.

The runners share one work consumer, so an attempt reaches whichever runner has a free
lane. A runner without the attempt's runtime neither starts nor fails it while the
registry of live runners (``aether_runtime.runners``) shows another runner with that
runtime: it hands the delivery back with a short delay, and the delivery comes to another
lane. Only when no live runner has had the runtime for ``patience`` seconds (the
registry's entry age: a runner restarting deletes its entry and writes it again within
it) is the attempt failed, with a reason naming the runtime and what the live runners
have.

Pure: the registry's entries come in as ``runner id -> runtimes``, and the clock as
``now`` (seconds, monotonic).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# The delay of the first hand-back of a delivery, doubled at each further one up to
# ``HAND_BACK_MAX_SECONDS``: short while a runner with the runtime has a free lane (the
# delivery reaches it within a few hand-backs), and a delivery every few seconds at most
# while every such lane is busy (a task waits for one, as it would for any free runner).
HAND_BACK_FIRST_SECONDS = 0.25
HAND_BACK_MAX_SECONDS = 5.0


@dataclass(frozen=True)
class HandOn:
    """Another live runner has the runtime (``runners``), or none has had it for less than
    the patience yet (``runners`` empty): hand the delivery back after ``delay``."""

    runners: tuple[str, ...]
    delay: float


@dataclass(frozen=True)
class Missing:
    """No live runner has had the runtime for the patience: fail the attempt for ``reason``."""

    reason: str


Route = HandOn | Missing


@dataclass
class Absences:
    """Since when each runtime has been missing from every other live runner, as this
    runner saw it (monotonic seconds). A runtime seen on a runner is forgotten here; one
    not looked at for longer than the patience starts over (nobody watched meanwhile)."""

    since: dict[str, float]
    looked: dict[str, float]

    @classmethod
    def empty(cls) -> Absences:
        return cls({}, {})


def hand_back_delay(deliveries: int) -> float:
    """The delay of a delivery's hand-back, by how many times it was delivered."""
    exponent = min(max(deliveries - 1, 0), 16)
    return min(HAND_BACK_MAX_SECONDS, HAND_BACK_FIRST_SECONDS * float(2**exponent))


def route(
    runtime: str,
    runners: Mapping[str, Sequence[str]] | None,
    me: str,
    absences: Absences,
    now: float,
    patience: float,
    deliveries: int,
) -> Route:
    """Where an attempt on ``runtime``, which this runner (``me``) lacks, goes.
    ``runners``: the live runners' runtimes, or None when the registry could not be read
    (counted as no runner having it: the wait stays bounded). Updates ``absences``."""
    having = tuple(
        sorted(rid for rid, names in (runners or {}).items() if rid != me and runtime in names)
    )
    delay = hand_back_delay(deliveries)
    previous = absences.looked.get(runtime)
    absences.looked[runtime] = now
    if having:
        absences.since.pop(runtime, None)
        return HandOn(having, delay)
    since = absences.since.get(runtime)
    if since is None or previous is None or now - previous > patience:
        since = absences.since[runtime] = now
    waited = now - since
    if waited >= patience:
        return Missing(missing_reason(runtime, runners, waited))
    return HandOn((), min(delay, patience - waited))


def missing_reason(runtime: str, runners: Mapping[str, Sequence[str]] | None, waited: float) -> str:
    """Why an attempt on ``runtime`` fails: no live runner has it, and what they have."""
    head = f"no live agent runner has the runtime {runtime!r} (waited {waited:.0f} s for one)"
    if runners is None:
        return f"{head}; the registry of runners could not be read"
    if not runners:
        return f"{head}; no runner has announced itself"
    by_name: dict[str, list[str]] = {}
    for rid in sorted(runners):
        for name in dict.fromkeys(runners[rid]):
            by_name.setdefault(name, []).append(rid)
    have = "; ".join(f"{name} ({', '.join(by_name[name])})" for name in sorted(by_name))
    return f"{head}; the live runners have: {have}"

"""Small pure rules: waves, file-scope overlap, retry backoff, estimates."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from aether_events import PlannedTask
from aether_events.estimates import estimate_for as shared_estimate_for
from aether_scheduler.domain.model import Config


def waves_of(tasks: list[PlannedTask]) -> dict[str, int]:
    """Each task's wave: 0 without dependencies, else 1 + the deepest dependency."""
    by_id = {t.id: t for t in tasks}
    waves: dict[str, int] = {}

    def wave(task_id: str, trail: frozenset[str]) -> int:
        if task_id in waves:
            return waves[task_id]
        deps = [d for d in by_id[task_id].depends_on if d in by_id and d not in trail]
        value = 1 + max((wave(d, trail | {task_id}) for d in deps), default=-1)
        waves[task_id] = value
        return value

    for task in tasks:
        wave(task.id, frozenset())
    return waves


def _claims(path: str) -> tuple[str, bool]:
    """A scope entry as (normalised path, is a directory prefix)."""
    clean = path.strip().strip("/") if path.strip() not in ("", "/", ".") else ""
    return clean, path.endswith("/") or clean == ""


def scopes_overlap(a: Iterable[str], b: Iterable[str]) -> bool:
    """Whether two file scopes may touch the same file.

    A path ending in ``/`` claims everything below it. Empty scopes claim nothing (the
    planner said nothing about them, so waiting would be arbitrary).
    """
    left = [_claims(p) for p in a]
    right = [_claims(p) for p in b]
    for path_a, dir_a in left:
        for path_b, dir_b in right:
            if path_a == path_b:
                return True
            if dir_a and (path_a == "" or path_b.startswith(path_a + "/")):
                return True
            if dir_b and (path_b == "" or path_a.startswith(path_b + "/")):
                return True
    return False


def backoff_seconds(mission_id: str, task_id: str, attempt: int, config: Config) -> float:
    """Exponential backoff with jitter before ``attempt`` (2, 3, …).

    The jitter is derived from the ids, not drawn at random, so deciding twice gives the
    same delay (and the same event).
    """
    exponent = max(0, attempt - 2)
    base = min(config.retry_max_seconds, config.retry_base_seconds * float(2**exponent))
    digest = hashlib.sha256(f"{mission_id}/{task_id}/{attempt}".encode()).digest()
    jitter = int.from_bytes(digest[:4], "big") / float(2**32)  # in [0, 1)
    return round(base * (0.5 + jitter / 2), 3)


def estimate_for(tier: str, config: Config) -> float:
    # The rule is shared with the gateway and the command line, which show the estimate.
    return shared_estimate_for(tier, config.estimate_usd)

"""How large the text one event carries from another may be, and the attempt's message cap.

An attempt (or a model) chooses the text of its events: a failure's reason, a summary, the
paths of its commit. A service that carries such text into an event of its own (the
scheduler's next ``TaskReady`` context, ``TaskEscalated``, ``MissionFailed``; the git
broker's ``MergeConflicted`` and ``BranchMerged``) cuts it first (``bounded``,
``bounded_paths``), so an attempt publishing within its own limits can never make a
service's event larger than the bus takes: the service's publish would fail on every
delivery and its step end in ``StepFailed``, the mission stalled by hostile input.

Sizes are UTF-8 bytes, the unit the bus counts. JSON may write a byte as up to six
(``\\u0001``), so a text of ``CARRIED_TEXT_BYTES`` takes at most six times that in a
message: still a few tens of KB.
"""

from __future__ import annotations

from collections.abc import Iterable

# The most bytes of one text a service carries from an attempt's or a model's event.
CARRIED_TEXT_BYTES = 4 * 1024
# The most bytes of paths a service lists from an attempt's commit in one field.
CARRIED_PATHS_BYTES = 32 * 1024
# The most bytes of one path so listed.
CARRIED_PATH_BYTES = 1024

# The largest message an attempt's credential may publish (its JWT's ``payload``): the
# runner keeps every event of an attempt under ``ATTEMPT_EVENT_BYTES`` (transcript
# batches sized by their encoded bytes, texts and lists cut), and the cap leaves room for
# headers and for JSON's escapes beyond that. Well under the server's ``max_payload``
# (1 MiB by default), so a deployment that raises that does not raise it for attempts.
ATTEMPT_EVENT_BYTES = 192 * 1024
ATTEMPT_MAX_PAYLOAD = 256 * 1024


def _marker(cut: int) -> str:
    return f"\n… [{cut:,} bytes cut] …\n"


def bounded(text: str, limit: int = CARRIED_TEXT_BYTES) -> str:
    """``text`` kept to about ``limit`` bytes of UTF-8: its start and end, with a marker
    in between saying how many bytes were cut; unchanged when it fits. Never splits a
    character (the result encodes as UTF-8 whatever the cut met)."""
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return text
    cut = len(data) - limit
    marker = _marker(cut)
    room = max(limit - len(marker.encode()), 0)
    head = room * 2 // 3
    tail = room - head
    # A character cut at either edge is left out: ``ignore`` drops only its bytes.
    start = data[:head].decode("utf-8", "ignore")
    end = data[len(data) - tail :].decode("utf-8", "ignore") if tail else ""
    return start + marker + end


def bounded_paths(
    paths: Iterable[str],
    limit: int = CARRIED_PATHS_BYTES,
    each: int = CARRIED_PATH_BYTES,
) -> list[str]:
    """``paths`` kept while they fit in ``limit`` bytes (each cut to ``each``), then one
    last entry saying how many more were left out."""
    out: list[str] = []
    used = 0
    listed = list(paths)
    for index, path in enumerate(listed):
        kept = bounded(path, each)
        size = len(kept.encode("utf-8", "surrogatepass")) + 4
        if used + size > limit:
            out.append(f"… and {len(listed) - index:,} more not listed")
            return out
        out.append(kept)
        used += size
    return out

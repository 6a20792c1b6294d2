"""What the provider last said about opaque tokens: a small bounded cache.

The token itself is never kept: entries are keyed by its SHA-256 (``token_hash``), so a
memory dump does not hand out bearer tokens. An entry lives at most the cache's time and
never past the token's own expiry; when full, the entry used longest ago goes first.
The clock is the caller's (``now``, monotonic seconds), so the rules are tested without
waiting.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

Answer = TypeVar("Answer")


class AnswerCache(Generic[Answer]):
    """Answers keyed by a token's hash, each until its own deadline."""

    def __init__(self, *, seconds: float, size: int) -> None:
        self.seconds = seconds
        self.size = size
        self._entries: OrderedDict[str, tuple[float, Answer]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str, now: float) -> Answer | None:
        found = self._entries.get(key)
        if found is None:
            return None
        until, answer = found
        if now >= until:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return answer

    def put(self, key: str, answer: Answer, now: float, *, expires_in: float | None) -> None:
        """Keep ``answer`` for the cache's time, or until the token expires
        (``expires_in`` seconds from ``now``; None: the token names no expiry)."""
        keep = self.seconds if expires_in is None else min(self.seconds, expires_in)
        if keep <= 0 or self.size <= 0:
            self._entries.pop(key, None)
            return
        self._entries[key] = (now + keep, answer)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

"""Prefix-cache accounting as the Messages API documents it, for the local server.

With a ``PromptCache`` the local Messages API server (``aether_llm.messages_server``)
reports ``cache_creation_input_tokens``, ``cache_read_input_tokens`` and ``input_tokens``
the way Anthropic's prompt caching computes them, so a caller's breakpoint placement can
be tested and measured without the real API. The rules (Anthropic's "Prompt caching"
guide, platform.claude.com/docs/en/build-with-claude/prompt-caching):

- The prompt is one sequence of blocks rendered in the order tools → system → messages
  (a string system or message content is one text block). A ``cache_control`` on a block
  (or the request's top-level ``cache_control``, which marks the last block) is a
  breakpoint: the prefix up to and including that block can be cached. The marker itself
  is not part of the prefix, so a block keeps its identity when its marker moves.
- At most four breakpoints per request (400 otherwise); a one-hour (``"ttl": "1h"``)
  breakpoint may not come after a five-minute one.
- Reading: from the last breakpoint the system checks that position and the 19 block
  boundaries before it (20 positions) for a live cache entry, longest first; with none
  it moves to the previous breakpoint and does the same. Entries exist only where an
  earlier request put a breakpoint: a prefix is never cached at a position nobody marked.
- Writing: every breakpoint after the prefix that was read writes an entry, if its
  prefix reaches the model's minimum cacheable length; shorter prefixes are not cached
  and are billed as plain input.
- Usage: ``cache_read_input_tokens`` is the prefix read; ``cache_creation_input_tokens``
  the tokens after it up to the last breakpoint that wrote (split by lifetime in
  ``cache_creation``); ``input_tokens`` the rest, so the three add up to the prompt.
- An entry lives five minutes (or an hour with ``"ttl": "1h"``) from its last use: a
  read refreshes it for free.
- Entries are per model. ``tool_choice`` and ``thinking`` are rendered at the start of
  the messages, so changing them keeps a tools and system entry but not a message one.

Token counts are an approximation (about four characters a token, from the block's JSON
without its marker): consistent from call to call, which is what cache accounting needs,
but not the real tokenizer's counts.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

JSON = dict[str, Any]
Key = tuple[str, str]

MAX_BREAKPOINTS = 4
LOOKBACK_BLOCKS = 20
TTL_SECONDS = {"5m": 300.0, "1h": 3600.0}

# The documented minimum cacheable prompt length of the models the guide lists; a model
# not listed takes 2,048 tokens when it is a Haiku and 1,024 otherwise.
MINIMUM_TOKENS = {
    "claude-opus-4-6": 4096,
    "claude-opus-4-5": 4096,
    "claude-haiku-4-5": 4096,
    "claude-sonnet-4-6": 1024,
    "claude-sonnet-4-5": 1024,
    "claude-opus-4-1": 1024,
    "claude-opus-4": 1024,
    "claude-sonnet-4": 1024,
    "claude-3-7-sonnet": 1024,
    "claude-3-5-haiku": 2048,
    "claude-3-haiku": 2048,
}


def minimum_cacheable_tokens(model: str, table: dict[str, int] | None = None) -> int:
    """The shortest prefix ``model`` caches (a dated snapshot id takes its alias's)."""
    table = MINIMUM_TOKENS if table is None else table
    base, _, suffix = model.rpartition("-")
    name = base if suffix.isdigit() and len(suffix) == 8 else model
    if name in table:
        return table[name]
    return 2048 if "haiku" in name else 1024


def approximate_tokens(block: JSON) -> int:
    """About four characters a token, over the block's JSON without its marker."""
    text = json.dumps(_unmarked(block), sort_keys=True, ensure_ascii=False)
    return max(1, math.ceil(len(text) / 4))


class CacheRequestError(Exception):
    """The request breaks a caching rule; the API answers 400 ``invalid_request_error``."""


@dataclass(frozen=True)
class Block:
    """One rendered block: its tokens, the digest of the prefix ending with it, and its
    breakpoint's lifetime ("5m", "1h") when it carries one."""

    tokens: int
    digest: str
    ttl: str | None = None


@dataclass
class Accounting:
    """What one request reads and writes; ``commit`` stores the writes and refreshes once
    the reply is sent (an error reply writes nothing)."""

    input_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    ephemeral_5m_input_tokens: int
    ephemeral_1h_input_tokens: int
    _writes: list[tuple[Key, str, int]] = field(default_factory=list, repr=False)
    _refreshes: list[Key] = field(default_factory=list, repr=False)
    _used: list[Key] = field(default_factory=list, repr=False)
    _cache: PromptCache | None = field(default=None, repr=False)

    def usage(self) -> JSON:
        return {
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "cache_creation": {
                "ephemeral_5m_input_tokens": self.ephemeral_5m_input_tokens,
                "ephemeral_1h_input_tokens": self.ephemeral_1h_input_tokens,
            },
        }

    def commit(self) -> None:
        if self._cache is not None:
            self._cache._store(self._writes, self._refreshes, self._used)
            self._cache = None


@dataclass
class PromptCache:
    """The cache entries of one server: (model, prefix digest) → expiry time."""

    clock: Callable[[], float] = time.monotonic
    count_tokens: Callable[[JSON], int] = approximate_tokens
    minimum_tokens: dict[str, int] | None = None
    lookback: int = LOOKBACK_BLOCKS

    def __post_init__(self) -> None:
        # (model, prefix digest) → (expiry time, lifetime in seconds)
        self._entries: dict[Key, tuple[float, float]] = {}
        # Tokens written, and those written to an entry no request has read since.
        self._written = 0
        self._unread: dict[Key, int] = {}
        self._lock = threading.Lock()

    def account(self, request: JSON) -> Accounting:
        """The usage of ``request`` against the entries now live (raises
        ``CacheRequestError`` when its breakpoints break a rule)."""
        model = str(request.get("model", ""))
        blocks = render(request, self.count_tokens)
        marks = [i for i, block in enumerate(blocks) if block.ttl is not None]
        if len(marks) > MAX_BREAKPOINTS:
            raise CacheRequestError(
                f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided. "
                f"Found {len(marks)}."
            )
        ttls = [blocks[i].ttl for i in marks]
        if "5m" in ttls and "1h" in ttls[ttls.index("5m") :]:
            raise CacheRequestError(
                "a cache_control block with ttl='1h' must not come after one with ttl='5m'"
            )
        prefix = list(itertools.accumulate(block.tokens for block in blocks))
        total = prefix[-1] if prefix else 0
        minimum = minimum_cacheable_tokens(model, self.minimum_tokens)
        now = self.clock()
        with self._lock:
            live = {key for key, (expiry, _) in self._entries.items() if expiry > now}
            unread = set(self._unread)
        hit = self._lookup(model, blocks, marks, live)
        # Reading a prefix reads every entry written inside it.
        used = [(model, b.digest) for b in blocks[: hit + 1] if (model, b.digest) in unread]
        read = prefix[hit] if hit >= 0 else 0
        # A read refreshes the entry it read and the marked ones inside it.
        refreshes = [
            (model, blocks[i].digest)
            for i in {*(i for i in marks if i < hit), hit}
            if i >= 0 and (model, blocks[i].digest) in live
        ]
        writes: list[tuple[Key, str, int]] = []
        written = {"5m": 0, "1h": 0}
        end = read
        for i in marks:
            ttl = blocks[i].ttl or "5m"
            if i <= hit or prefix[i] < minimum:
                continue  # read already, or too short to cache: billed as plain input
            writes.append(((model, blocks[i].digest), ttl, prefix[i] - end))
            written[ttl] += prefix[i] - end
            end = prefix[i]
        creation = end - read
        return Accounting(
            input_tokens=total - read - creation,
            cache_creation_input_tokens=creation,
            cache_read_input_tokens=read,
            ephemeral_5m_input_tokens=written["5m"],
            ephemeral_1h_input_tokens=written["1h"],
            _writes=writes,
            _refreshes=refreshes,
            _used=used,
            _cache=self,
        )

    def _lookup(self, model: str, blocks: list[Block], marks: list[int], live: set[Key]) -> int:
        """The last block of the longest live prefix the lookback finds, or -1."""
        for mark in reversed(marks):
            for i in range(mark, max(mark - self.lookback, -1), -1):
                if (model, blocks[i].digest) in live:
                    return i
        return -1

    def _store(
        self, writes: list[tuple[Key, str, int]], refreshes: list[Key], used: list[Key]
    ) -> None:
        now = self.clock()
        with self._lock:
            for key in refreshes:
                if key in self._entries:
                    _, lifetime = self._entries[key]
                    self._entries[key] = (now + lifetime, lifetime)
            for key in used:
                self._unread.pop(key, None)
            for key, ttl, tokens in writes:  # only prefixes with no live entry are written
                self._entries[key] = (now + TTL_SECONDS[ttl], TTL_SECONDS[ttl])
                self._written += tokens
                self._unread[key] = self._unread.get(key, 0) + tokens

    def writes(self) -> tuple[int, int]:
        """Tokens written to the cache so far, and how many of them no request has read
        (a write is read when a later request reads a prefix that holds it)."""
        with self._lock:
            return self._written, sum(self._unread.values())

    def entries(self) -> int:
        """How many entries are live now."""
        now = self.clock()
        with self._lock:
            return sum(1 for expiry, _ in self._entries.values() if expiry > now)


def render(request: JSON, count_tokens: Callable[[JSON], int] = approximate_tokens) -> list[Block]:
    """The request's blocks in cache order, each with the digest of the prefix it ends."""
    parts: list[tuple[str, JSON]] = []
    for tool in request.get("tools") or []:
        parts.append(("tool", tool))
    system = request.get("system")
    if isinstance(system, str):
        if system:
            parts.append(("system", {"type": "text", "text": system}))
    elif isinstance(system, list):
        parts.extend(("system", block) for block in system)
    settings = {key: request.get(key) for key in ("tool_choice", "thinking")}
    first_message = True
    for message in request.get("messages") or []:
        content = message.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        for index, block in enumerate(blocks or []):
            tag = f"{message.get('role')}:{'start' if index == 0 else 'more'}"
            if first_message:
                tag += ":" + json.dumps(settings, sort_keys=True)
                first_message = False
            parts.append((tag, block))
    marks = [_ttl(block) for _, block in parts]
    automatic = request.get("cache_control")
    if isinstance(automatic, dict) and parts and marks[-1] is None:
        marks[-1] = str(automatic.get("ttl") or "5m")
    state = hashlib.sha256(str(request.get("model", "")).encode())
    out = []
    for (tag, block), ttl in zip(parts, marks, strict=True):
        if ttl is not None and _empty_text(block):
            raise CacheRequestError("cache_control cannot be set for empty text blocks")
        state.update(tag.encode() + b"\0")
        state.update(json.dumps(_unmarked(block), sort_keys=True).encode() + b"\0")
        out.append(Block(count_tokens(block), state.copy().hexdigest(), ttl))
    return out


def _ttl(block: Any) -> str | None:
    marker = block.get("cache_control") if isinstance(block, dict) else None
    if not isinstance(marker, dict):
        return None
    if marker.get("type") != "ephemeral":
        raise CacheRequestError(f"cache_control.type must be 'ephemeral': {marker!r}")
    ttl = marker.get("ttl") or "5m"
    if ttl not in TTL_SECONDS:
        raise CacheRequestError(f"cache_control.ttl must be '5m' or '1h': {ttl!r}")
    return str(ttl)


def _empty_text(block: JSON) -> bool:
    return block.get("type") == "text" and not block.get("text")


def _unmarked(block: Any) -> Any:
    if isinstance(block, dict) and "cache_control" in block:
        return {key: value for key, value in block.items() if key != "cache_control"}
    return block

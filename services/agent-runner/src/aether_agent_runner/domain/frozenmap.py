"""An immutable mapping that a fold can change cheaply.

Folding an event returns a new state; a plain dict copied on every event makes a replay
quadratic in the number of missions the stream holds. ``FrozenMap`` keeps its entries in
a fixed number of shards and ``set`` copies only the shard the key falls in (and the
tuple of shards), sharing every other shard with the map it came from.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Mapping
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

SHARDS = 256
# Shared by every empty shard; never written to (shards are only ever replaced).
_EMPTY: dict[object, object] = {}


class FrozenMap(Mapping[K, V], Generic[K, V]):
    """A mapping no one can change; ``set`` returns a new one."""

    __slots__ = ("_shards", "_size")

    def __init__(self) -> None:
        self._shards: tuple[dict[K, V], ...] = (_EMPTY,) * SHARDS  # type: ignore[assignment]
        self._size = 0

    def __getitem__(self, key: K) -> V:
        return self._shards[hash(key) % SHARDS][key]

    def __contains__(self, key: object) -> bool:
        return key in self._shards[hash(key) % SHARDS]

    def __iter__(self) -> Iterator[K]:
        for shard in self._shards:
            yield from shard

    def __len__(self) -> int:
        return self._size

    def __repr__(self) -> str:
        return f"FrozenMap({dict(self.items())!r})"

    def set(self, key: K, value: V) -> FrozenMap[K, V]:
        """This map with ``key`` bound to ``value``."""
        index = hash(key) % SHARDS
        shard = dict(self._shards[index])
        grown = key not in shard
        shard[key] = value
        changed: FrozenMap[K, V] = FrozenMap.__new__(FrozenMap)
        changed._shards = (*self._shards[:index], shard, *self._shards[index + 1 :])
        changed._size = self._size + grown
        return changed

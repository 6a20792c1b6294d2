"""The batcher alone, with a plain fold function: runs in order, one at a time, errors
reaching only the event at fault, a database away retried in place."""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest

from aether_gateway.adapters.batches import Batcher, InOrder


class Folds:
    """Records the runs it is given; fails for the items in ``bad`` (when in a run)
    and, ``away`` times, as a lost database would."""

    def __init__(self, bad: frozenset[int] = frozenset(), away: int = 0) -> None:
        self.runs: list[list[int]] = []
        self.folded: list[int] = []
        self.bad = bad
        self.away = away
        self.in_flight = 0

    async def __call__(self, items: list[int]) -> None:
        self.in_flight += 1
        assert self.in_flight == 1, "two runs in flight at once"
        try:
            await asyncio.sleep(0)
            self.runs.append(list(items))
            if self.away:
                self.away -= 1
                raise psycopg.OperationalError("the server closed the connection")
            if self.bad & set(items):
                raise RuntimeError(f"cannot fold {sorted(self.bad & set(items))}")
            self.folded.extend(items)
        finally:
            self.in_flight -= 1


async def test_what_waits_during_a_fold_is_folded_next_together_in_order() -> None:
    folds = Folds()
    batcher: Batcher[int] = Batcher(folds, name="test")
    first = batcher.submit(0)
    await asyncio.sleep(0)  # the first run is in flight
    rest = [batcher.submit(n) for n in range(1, 10)]
    await asyncio.gather(first, *rest)
    assert folds.runs == [[0], list(range(1, 10))]
    assert folds.folded == list(range(10))
    assert (batcher.runs, batcher.items) == (2, 10)


async def test_runs_are_no_longer_than_the_limit() -> None:
    folds = Folds()
    batcher: Batcher[int] = Batcher(folds, name="test", limit=4)
    await asyncio.gather(*[batcher.submit(n) for n in range(10)])
    assert folds.runs == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


async def test_an_error_reaches_only_the_event_at_fault() -> None:
    folds = Folds(bad=frozenset({3}))
    batcher: Batcher[int] = Batcher(folds, name="test")
    waiting = [batcher.submit(n) for n in range(6)]
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert [n for n, r in enumerate(results) if isinstance(r, Exception)] == [3]
    assert isinstance(results[3], RuntimeError)
    # The run failed whole, then each event alone, in order.
    assert folds.runs[0] == list(range(6))
    assert folds.runs[1:] == [[n] for n in range(6)]
    assert folds.folded == [0, 1, 2, 4, 5]


async def test_a_database_away_is_retried_in_place_in_order() -> None:
    folds = Folds(away=2)
    batcher: Batcher[int] = Batcher(folds, name="test")
    await asyncio.gather(*[batcher.submit(n) for n in range(5)])
    assert folds.runs == [list(range(5))] * 3
    assert folds.folded == list(range(5))


async def test_a_database_away_at_a_stop_reaches_the_handlers() -> None:
    """Stopping, nothing is retried here: the runtime hands the messages back."""
    folds = Folds(away=4)
    batcher: Batcher[int] = Batcher(folds, name="test", stopping=lambda: True)
    waiting = [batcher.submit(n) for n in range(3)]
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(r, psycopg.OperationalError) for r in results)
    assert folds.runs == [[0, 1, 2], [0], [1], [2]]
    assert folds.folded == []


async def test_close_cancels_whoever_still_waits() -> None:
    started = asyncio.Event()
    never = asyncio.Event()

    async def stuck(items: list[int]) -> None:
        started.set()
        await never.wait()

    batcher: Batcher[int] = Batcher(stuck, name="test")
    waiting = [batcher.submit(n) for n in range(3)]
    await started.wait()
    late = batcher.submit(3)
    await batcher.close()
    for done in [*waiting, late]:
        with pytest.raises(asyncio.CancelledError):
            await done


class Item:
    def __init__(self, seq: int) -> None:
        self.seq = seq

    def __repr__(self) -> str:
        return f"Item({self.seq})"


class Stored:
    """A position another replica may move: ``moves`` says to what, call by call."""

    def __init__(self, position: int, moves: dict[int, int] | None = None) -> None:
        self.value = position
        self.moves = moves or {}
        self.asked = 0
        self.folded: list[list[int]] = []

    async def position(self) -> int:
        self.asked += 1
        self.value = self.moves.get(self.asked, self.value)
        return self.value

    async def fold(self, items: list[Item]) -> None:
        self.folded.append([item.seq for item in items])
        self.value = max(self.value, items[-1].seq)


async def test_consecutive_runs_never_look_at_the_position_again() -> None:
    stored = Stored(0)
    in_order: InOrder[Item] = InOrder(stored.fold, stored.position)
    await in_order([Item(1), Item(2)])
    await in_order([Item(3)])
    await in_order([Item(4), Item(5), Item(6)])
    assert stored.folded == [[1, 2], [3], [4, 5, 6]]
    assert stored.asked == 1  # once, at the first run


async def test_a_run_with_a_hole_waits_for_another_replica_to_fold_it() -> None:
    # Another replica holds 3: the position reaches it at the third look.
    stored = Stored(0, moves={3: 3})
    in_order: InOrder[Item] = InOrder(stored.fold, stored.position, grace=60.0)
    await in_order([Item(1), Item(2), Item(4), Item(5)])
    assert stored.folded == [[1, 2], [4, 5]]
    assert stored.asked == 3
    assert in_order.waits == 2


async def test_a_hole_nobody_fills_is_folded_over_after_the_grace() -> None:
    stored = Stored(0)
    in_order: InOrder[Item] = InOrder(stored.fold, stored.position, grace=0.02)
    await in_order([Item(1), Item(3)])
    assert stored.folded == [[1], [3]]
    assert stored.value == 3


async def test_a_lingering_batcher_folds_what_comes_meanwhile_with_the_first() -> None:
    """Told to linger (mission events), an idle batcher waits for company before it folds:
    items handed over one after another go in one run. Without it, the first goes alone."""
    eager, lingering = Folds(), Folds()
    for folds, linger in ((eager, 0.0), (lingering, 0.5)):
        batcher: Batcher[int] = Batcher(folds, name="test", linger=linger)
        first = batcher.submit(0)
        await asyncio.sleep(0)  # the drainer has started: folding, or lingering
        await asyncio.sleep(0)
        rest = [batcher.submit(n) for n in range(1, 4)]
        await asyncio.gather(first, *rest)
    assert eager.runs == [[0], [1, 2, 3]]
    assert lingering.runs == [[0, 1, 2, 3]]
    assert lingering.folded == [0, 1, 2, 3]


async def test_a_spaced_batcher_starts_a_run_no_sooner_than_the_spacing_after_the_last() -> None:
    """Given a spacing, a busy batcher folds what came during the spacing in one run
    that starts no sooner than that after the one before; after a quiet spell longer
    than the spacing, an item is folded at once."""
    spacing = 0.6
    folds = Folds()
    starts: list[float] = []

    async def timed(items: list[int]) -> None:
        starts.append(time.monotonic())
        await folds(items)

    batcher: Batcher[int] = Batcher(timed, name="test", spacing=spacing)
    began = time.monotonic()
    await batcher.submit(0)
    rest = [batcher.submit(n) for n in range(1, 4)]
    await asyncio.gather(*rest)
    assert folds.runs == [[0], [1, 2, 3]]
    assert starts[0] - began < spacing / 2
    assert starts[1] - starts[0] >= spacing

    await asyncio.sleep(spacing)  # a quiet spell
    handed = time.monotonic()
    await batcher.submit(4)
    assert folds.runs[-1] == [4]
    assert starts[2] - handed < spacing / 2


async def test_hurried_a_spaced_batcher_folds_what_waits_at_once() -> None:
    """Someone waiting on the read model hurries the runs: what waits out the spacing
    is folded now; with nothing queued, a hurry changes nothing."""
    spacing = 30.0
    folds = Folds()
    batcher: Batcher[int] = Batcher(folds, name="test", spacing=spacing)
    batcher.hurry()  # nothing queued
    await batcher.submit(0)  # folded at once: the batcher was idle
    waiting = batcher.submit(1)
    await asyncio.sleep(0)  # the drainer waits out the spacing
    assert not waiting.done()
    began = time.monotonic()
    batcher.hurry()
    await waiting
    assert time.monotonic() - began < spacing / 2
    assert folds.runs == [[0], [1]]
    await batcher.close()

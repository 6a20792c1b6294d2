"""A test process collects garbage as the root conftest set it up after collection:
what collection left in memory frozen out of the collector's sight, and the first
generation collected less often (``pytest_collection_finish``)."""

from __future__ import annotations

import gc

from conftest import TEST_GC_THRESHOLDS


def test_what_collection_left_is_frozen_and_collections_are_rarer() -> None:
    # Every test module imported and every item collected: thousands of objects.
    assert gc.get_freeze_count() > 10_000
    assert gc.get_threshold() == TEST_GC_THRESHOLDS
    assert TEST_GC_THRESHOLDS[0] > 700  # the interpreter's default

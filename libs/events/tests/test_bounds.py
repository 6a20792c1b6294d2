"""Cutting what one event carries of another's text: by UTF-8 bytes, marked, never
through a character."""

from __future__ import annotations

import pytest

from aether_events import bounded, bounded_paths


@pytest.mark.parametrize("character", ["x", "é", "€", "😀", "\x01"])
@pytest.mark.parametrize("limit", [64, 1000, 4096])
def test_a_long_text_is_cut_to_its_bytes_keeping_its_start_and_end(
    character: str, limit: int
) -> None:
    text = "<" + character * 10_000 + ">"
    kept = bounded(text, limit)
    assert len(kept.encode()) <= limit
    assert kept.startswith("<") and kept.endswith(">")
    cut = len(text.encode()) - limit
    assert f"[{cut:,} bytes cut]" in kept
    # Every character kept is whole: the text is the original's start and end.
    head, _, tail = kept.partition("\n… [")
    assert text.startswith(head)
    assert text.endswith(tail.partition("] …\n")[2])


def test_a_text_that_fits_is_left_as_it_is() -> None:
    text = "😀" * 1024  # 4096 bytes
    assert bounded(text, 4096) is text


def test_paths_are_listed_while_they_fit_then_counted() -> None:
    paths = [f"dir/{n}-{'é' * 100}.txt" for n in range(1000)]
    kept = bounded_paths(paths, limit=8192, each=64)
    assert kept[:-1] == [bounded(p, 64) for p in paths[: len(kept) - 1]]
    assert kept[-1] == f"… and {1000 - len(kept) + 1:,} more not listed"
    assert sum(len(p.encode()) for p in kept) <= 8192 + 64
    assert bounded_paths(paths[:3]) == paths[:3]

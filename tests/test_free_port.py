"""Free ports in a parallel test run: each pytest-xdist worker draws from its own slice."""

from __future__ import annotations

import pytest

from aether.infra import PRIVATE_PORTS_START, _ephemeral_low, _port_slice, free_port


def test_outside_a_parallel_run_the_whole_range_is_drawn_from(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT", raising=False)
    assert _port_slice(20000, 32768) == (20000, 32768)


def test_each_worker_has_its_own_slice_and_together_they_cover_the_range(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slices = []
    for index in range(3):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", f"gw{index}")
        monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "3")
        slices.append(_port_slice(20000, 32768))
    assert slices == [(20000, 24256), (24256, 28512), (28512, 32768)]
    ports = [set(range(start, stop)) for start, stop in slices]
    assert not (ports[0] & ports[1]) and not (ports[1] & ports[2]) and not (ports[0] & ports[2])


@pytest.mark.parametrize(
    ("worker", "count"), [("gw3", "3"), ("master", "2"), ("gw", "2"), ("gw1", ""), ("gw1", "x")]
)
def test_a_worker_name_or_count_that_makes_no_sense_means_the_whole_range(
    monkeypatch: pytest.MonkeyPatch, worker: str, count: str
) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", count)
    assert _port_slice(20000, 32768) == (20000, 32768)


def test_this_process_draws_only_from_its_own_slice() -> None:
    start, stop = _port_slice(PRIVATE_PORTS_START, _ephemeral_low())
    ports = [free_port() for _ in range(100)]
    assert len(set(ports)) == len(ports)
    assert all(start <= port < stop for port in ports)

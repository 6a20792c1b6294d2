"""An embedded NATS server is ready when *it* answers, not when its port does."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from aether.infra import EmbeddedNats, NatsExited, free_port, wait_for_nats


def test_a_server_whose_port_another_server_holds_is_not_taken_for_it(tmp_path: Path) -> None:
    other = EmbeddedNats(tmp_path / "other").start()
    try:
        # Given the other's port, the new server cannot bind it and exits; the other
        # server's answer on that port must not pass for it.
        with pytest.raises(NatsExited, match=f"port {other.port}"):
            EmbeddedNats(tmp_path / "second", port=other.port).start()
    finally:
        other.stop()


def test_a_server_is_known_by_its_name_across_a_restart(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "nats").start()
    try:
        port, name = server.port, server.name
        server.kill()
        server.start()
        assert (server.port, server.name) == (port, name)
        assert server.process is not None
        wait_for_nats(server.port, server.name, server.process, timeout=30.0)
    finally:
        server.stop()


def test_two_servers_have_different_names(tmp_path: Path) -> None:
    assert EmbeddedNats(tmp_path / "a").name != EmbeddedNats(tmp_path / "b").name


@pytest.mark.parametrize(("given", "expected"), [(None, 1), ("2", 2)])
def test_the_server_runs_go_on_one_thread_unless_told_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given: str | None, expected: int
) -> None:
    """It shares the machine with the services: one thread running Go code (docs/
    benchmarks.md), unless ``GOMAXPROCS`` is set, which the server then follows."""
    if given is None:
        monkeypatch.delenv("GOMAXPROCS", raising=False)
    else:
        monkeypatch.setenv("GOMAXPROCS", given)
    server = EmbeddedNats(tmp_path / "nats", monitor_port=free_port()).start()
    try:
        varz = httpx.get(f"http://127.0.0.1:{server.monitor_port}/varz", timeout=10).json()
        assert varz["gomaxprocs"] == expected
    finally:
        server.stop()

"""An embedded NATS server is ready when *it* answers, not when its port does."""

from __future__ import annotations

from pathlib import Path

import pytest

from aether.infra import EmbeddedNats, NatsExited, wait_for_nats


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

"""A service's port is bound before anything else starts; a taken port ends the process."""

from __future__ import annotations

import logging
import socket

import pytest

from aether_runtime.listen import EXIT_PORT_TAKEN, bind_or_exit


def test_a_free_port_is_bound_and_handed_over() -> None:
    sock = bind_or_exit("127.0.0.1", 0)
    try:
        host, port = sock.getsockname()
        assert host == "127.0.0.1" and port > 0
        assert sock.get_inheritable()
    finally:
        sock.close()


def test_a_taken_port_exits_with_its_own_status_and_says_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exited:
            bind_or_exit("127.0.0.1", port)
    assert exited.value.code == EXIT_PORT_TAKEN
    assert f"cannot listen on 127.0.0.1:{port}: address already in use" in caplog.text

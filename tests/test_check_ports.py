"""`aether up`'s port check: what it says when a port of the stack is taken."""

from __future__ import annotations

import re
import socket

import pytest

from aether.infra import free_port_run, port_is_free
from aether.supervise import PORT_OFFSETS, StackError, check_ports, plan_ports


def test_a_taken_port_suggests_a_port_base_other_than_the_one_that_failed() -> None:
    base = free_port_run(len(PORT_OFFSETS))
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", base))
        holder.listen()
        with pytest.raises(StackError) as raised:
            check_ports(plan_ports(PORT_OFFSETS, base))
    message = str(raised.value)
    assert f"port {base} (gateway) is in use" in message
    suggested = re.search(r"`aether up --port-base (\d+)`", message)
    assert suggested is not None, message
    other = int(suggested.group(1))
    assert other != base
    assert all(port_is_free(other + offset) for offset in PORT_OFFSETS.values())

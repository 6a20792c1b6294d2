"""A delivery's sequence, count, pending and stored time, read off its reply subject as
nats-py reads them, in both forms the server writes."""

from __future__ import annotations

import pytest
from nats.aio.msg import Msg
from nats.errors import NotJSMessageError

from aether_runtime.service import delivered_as

REPLIES = [
    # stream, consumer, delivered, stream seq, consumer seq, ns, pending
    "$JS.ACK.AETHER_MISSIONS.scheduler.3.1234.567.1733372000123456789.42",
    # with a domain and an account hash, and the random token at the end
    "$JS.ACK.hub.ACCHASH.AETHER_MISSIONS.scheduler.1.98765.4321.1733372000987654321.0.rnd",
    # with them and without the random token
    "$JS.ACK._.ACCHASH.AETHER_MISSIONS.gateway-read.7.5.5.1733372000000000001.12",
]


@pytest.mark.parametrize("reply", REPLIES)
def test_the_fields_are_those_nats_py_reads(reply: str) -> None:
    msg = Msg(_client=None, subject="aether.missions.m1.mission.paused", reply=reply)  # type: ignore[arg-type]
    meta = Msg(_client=None, subject=msg.subject, reply=reply).metadata  # type: ignore[arg-type]
    sequence, delivered, pending, stored_ns = delivered_as(msg)
    assert (sequence, delivered, pending) == (
        meta.sequence.stream,
        meta.num_delivered,
        meta.num_pending,
    )
    assert abs(stored_ns / 1e9 - meta.timestamp.timestamp()) < 1e-6


def test_a_message_that_is_no_delivery_is_refused_as_nats_py_refuses_it() -> None:
    msg = Msg(_client=None, subject="x", reply="_INBOX.abc.def")  # type: ignore[arg-type]
    with pytest.raises(NotJSMessageError):
        delivered_as(msg)

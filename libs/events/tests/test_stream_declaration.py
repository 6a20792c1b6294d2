"""Declaring the streams through a moment the real cluster shows only under load: a
stream just added is "not found" for a while. These drive ``ensure_streams`` with a
stand-in for the JetStream API that answers that way (the concurrent declaration itself
runs on a real three-node cluster in ``libs/runtime/tests/test_streams.py``)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pytest
from nats.js import JetStreamContext
from nats.js.errors import BadRequestError, NotFoundError

from aether_events import streams
from aether_events.streams import StreamSettings, ensure_streams


class JustAddedElsewhere:
    """Another service added each stream a moment ago: our look finds nothing, our add
    is refused as a duplicate, and the stream then shows only after ``unseen`` more
    looks, without a leader for one look more."""

    def __init__(self, unseen: int, add_error: Exception | None = None) -> None:
        self.unseen = unseen
        self.add_error = add_error or BadRequestError(description="stream name already in use")
        self.looks: dict[str, int] = {}

    async def stream_info(self, name: str) -> Any:
        self.looks[name] = self.looks.get(name, 0) + 1
        look = self.looks[name]
        if look <= 1 + self.unseen:
            raise NotFoundError(description="stream not found")
        leader = "n1" if look > 2 + self.unseen else None
        return SimpleNamespace(cluster=SimpleNamespace(leader=leader))

    async def add_stream(self, config: Any) -> Any:
        raise self.add_error


async def test_a_stream_another_service_just_added_is_waited_for_not_failed_on() -> None:
    js = JustAddedElsewhere(unseen=3)
    await ensure_streams(cast(JetStreamContext, js), StreamSettings(replicas=3))
    # Each stream was looked for until it showed with a leader.
    assert set(js.looks.values()) == {1 + 3 + 2}


async def test_a_stream_that_never_shows_fails_with_why_our_add_was_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(streams, "UNSEEN_GRACE_SECONDS", 0.3)
    refusal = BadRequestError(description="insufficient resources")
    js = JustAddedElsewhere(unseen=10_000, add_error=refusal)
    with pytest.raises(BadRequestError, match="insufficient resources"):
        await ensure_streams(cast(JetStreamContext, js), StreamSettings(replicas=3))

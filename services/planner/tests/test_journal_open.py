"""The planner's journal bucket is opened at its start; a cluster electing a leader as
the planner starts does not answer the first requests, and the start must wait it out
rather than fail (the planner exited 3 in a three-server test when it asked once)."""

from __future__ import annotations

from typing import Any, cast

import nats.errors
import pytest
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, ServiceUnavailableError

from aether_planner.adapters.journal import BUCKET, CallJournal
from aether_runtime import unanswered
from aether_runtime.testing import Unanswering


class Electing(Unanswering):
    """Unanswered for ``silent`` requests (timeouts and 503s), then a cluster without the
    bucket, which makes it."""

    def __init__(self, silent: int) -> None:
        super().__init__(silent)
        self.made: list[Any] = []

    async def key_value(self, bucket: str) -> Any:
        self.answer()
        raise BucketNotFoundError(description=f"bucket {bucket} not found")

    async def create_key_value(self, config: Any) -> Any:
        self.answer()
        self.made.append(config)
        return object()


async def test_the_journal_bucket_is_asked_for_again_while_the_cluster_does_not_answer() -> None:
    js = Electing(silent=3)
    await CallJournal.open(cast(JetStreamContext, js), replicas=3)
    assert [(c.bucket, c.replicas) for c in js.made] == [(BUCKET, 3)]
    assert js.requests == 5  # three unanswered, then looked up and made


async def test_a_cluster_that_never_answers_fails_the_planners_start_in_the_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(unanswered, "PATIENCE_SECONDS", 0.5)
    js = Electing(silent=10_000)
    with pytest.raises((nats.errors.TimeoutError, ServiceUnavailableError)):
        await CallJournal.open(cast(JetStreamContext, js))
    assert js.requests > 1 and js.made == []

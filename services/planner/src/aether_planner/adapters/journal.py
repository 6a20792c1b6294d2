"""A journal of model replies, so a redelivered trigger never pays for the same call twice.

Each reply is stored in a NATS key-value bucket under the id of its step before anything
is published; a planner that died after the call and before its events finds the reply
there and goes on from it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from aether_runtime.unanswered import asked_again

if TYPE_CHECKING:
    from anthropic.types import Message

log = logging.getLogger("aether.planner.journal")

BUCKET = "AETHER_PLANNER_CALLS"


class CallJournal:
    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    @classmethod
    async def open(cls, js: JetStreamContext, replicas: int = 1) -> CallJournal:
        """The bucket, made if missing; asked again while the server does not answer (a
        cluster electing a leader as the planner starts: asked once, the start failed)."""
        return cls(await asked_again(lambda: _bucket(js, replicas), f"the bucket {BUCKET}"))

    async def get(self, key: str) -> Message | None:
        try:
            entry = await self._kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            return None
        if entry.value is None:
            return None
        # Imported for a reply to replay, not with the planner (``aether_llm.client``).
        from anthropic.types import Message

        return Message.model_validate_json(entry.value)

    async def put(self, key: str, message: Message) -> None:
        await self._kv.put(key, message.model_dump_json().encode())


async def _bucket(js: JetStreamContext, replicas: int) -> KeyValue:
    try:
        return await js.key_value(BUCKET)
    except nats.js.errors.BucketNotFoundError:
        # Made twice (a request answered after it timed out) is the same bucket.
        return await js.create_key_value(
            KeyValueConfig(
                bucket=BUCKET,
                description="Model replies of the planner, by step",
                ttl=7 * 24 * 3600,
                storage=StorageType.FILE,
                replicas=replicas,
            )
        )

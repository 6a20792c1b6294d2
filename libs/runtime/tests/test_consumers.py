"""The one consumer helper: where a durable starts, how many messages it may have in
flight, which subjects it filters, and how an existing durable is brought to its spec
without moving."""

from __future__ import annotations

from nats.aio.client import Client as NatsClient
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from aether_events import (
    ALL_MISSION_EVENTS,
    MISSIONS_STREAM,
    Event,
    EventPublisher,
    MissionPaused,
    MissionRequested,
    ensure_streams,
    type_subject,
)
from aether_runtime import ConsumerSpec, Delivery, ensure_consumer
from aether_runtime.consumers import creation_config

from .test_bus_restart import requested


async def ignore(event: Event, delivery: Delivery) -> None:
    return None


def spec(durable: str = "c", **overrides: object) -> ConsumerSpec:
    return ConsumerSpec(
        durable=durable,
        subject=ALL_MISSION_EVENTS,
        handler=ignore,
        **overrides,  # type: ignore[arg-type]
    )


def test_a_fresh_durable_starts_right_after_the_replay_or_at_due_work() -> None:
    assert creation_config(spec(), 0).deliver_policy == DeliverPolicy.ALL
    config = creation_config(spec(), 41)
    assert (config.deliver_policy, config.opt_start_seq) == (DeliverPolicy.BY_START_SEQUENCE, 42)
    config = creation_config(spec(first_due=lambda: 7), 41)
    assert (config.deliver_policy, config.opt_start_seq) == (DeliverPolicy.BY_START_SEQUENCE, 7)
    config = creation_config(spec(start_at_new=True, first_due=lambda: 7), 41)
    assert (config.deliver_policy, config.opt_start_seq) == (DeliverPolicy.NEW, None)


def test_the_pending_limit_keeps_an_ordered_consumer_in_order() -> None:
    assert creation_config(spec(), 0).max_ack_pending == 1
    assert creation_config(spec(hand_offs=8), 0).max_ack_pending == 9
    assert creation_config(spec(max_workers=4), 0).max_ack_pending == 1000
    assert creation_config(spec(ack_pending=4096), 0).max_ack_pending == 4096


def test_the_types_a_service_folds_are_its_filter_subjects() -> None:
    config = creation_config(spec(types=(MissionRequested, MissionPaused)), 0)
    assert config.filter_subject is None
    assert config.filter_subjects == sorted(
        [type_subject(MissionRequested), type_subject(MissionPaused)]
    )
    assert creation_config(spec(), 0).filter_subject == ALL_MISSION_EVENTS


async def test_a_durable_created_at_due_work_delivers_from_there(nc: NatsClient) -> None:
    js = nc.jetstream()
    await ensure_streams(js)
    publisher = EventPublisher(js)
    for mission in ("m-1", "m-2", "m-3"):
        await publisher.publish(requested(mission))
    await ensure_consumer(js, spec(durable="due", first_due=lambda: 2), 3)
    sub = await js.pull_subscribe_bind("due", stream=MISSIONS_STREAM)
    (msg,) = await sub.fetch(1, timeout=10)
    assert msg.metadata.sequence.stream == 2
    await sub.unsubscribe()


async def test_a_shared_durable_gets_its_named_limit_and_keeps_its_place(
    nc: NatsClient,
) -> None:
    """The runner's work consumer as an older build made it, two messages in flight at
    most: its spec names the limit every runner process shares, and the durable takes
    it, with what it delivered and had acknowledged untouched."""
    js = nc.jetstream()
    await ensure_streams(js)
    await js.add_consumer(
        MISSIONS_STREAM,
        ConsumerConfig(
            durable_name="work",
            name="work",
            filter_subject=ALL_MISSION_EVENTS,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=10.0,
            max_deliver=20,
            max_ack_pending=2,
        ),
    )
    publisher = EventPublisher(js)
    for mission in ("m-1", "m-2", "m-3"):
        await publisher.publish(requested(mission))
    sub = await js.pull_subscribe_bind("work", stream=MISSIONS_STREAM)
    (first,) = await sub.fetch(1, timeout=10)
    await first.ack_sync()
    await sub.unsubscribe()

    shared = spec(durable="work", ack_wait_seconds=10.0, ack_pending=4096)
    await ensure_consumer(js, shared, 3)
    info = await js.consumer_info(MISSIONS_STREAM, "work")
    assert info.config.max_ack_pending == 4096
    assert info.ack_floor is not None and info.ack_floor.stream_seq == 1
    assert info.num_pending == 2

    # A lane bound to it with no limit of its own does not take the room away.
    await ensure_consumer(js, spec(durable="work", ack_wait_seconds=10.0), 3)
    assert (await js.consumer_info(MISSIONS_STREAM, "work")).config.max_ack_pending == 4096

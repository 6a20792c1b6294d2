"""``aether backup`` and ``aether restore`` on a deployment's servers (``--nats-url`` and
``--database-url``): real nats-server (one, or a cluster of three) and PostgreSQL.

- a stream of thousands of events, more than one read batch and many publish windows,
  comes back message for message: the same sequences, subjects, data and headers (the
  ``Nats-Expected-*`` conditions left out, and no header added: a restore that published
  through nats-py's ``stream=`` stored a ``Nats-Expected-Stream`` on every message), and
  the stream's duplicate window knows the restored ``Nats-Msg-Id`` values; the backup
  reads it in a few requests, not one for each message;
- a restore into an empty stream that a service reads is refused (nothing written), and
  goes on with ``--while-running``, the reading service then given every event in order;
- ``--replicas`` makes the restored stream replicated on a cluster;
- a backup records a fingerprint of its deployment's event id secret (not the secret), and
  a restore where the services key their ids with another one is refused before anything
  is published (the stream not even made); a fingerprint missing on either side is a
  warning.

The backup and the restore print how long they took (``-s``), not asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import msgspec
import nats
import psycopg
import pytest
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from aether import archive
from aether.backup import (
    PUBLISH_WINDOW,
    READ_BATCH,
    RESTORING,
    EventIdKey,
    Refused,
    Servers,
    Stopped,
    backup,
    check_event_id_key,
    run_backup,
    run_restore,
)
from aether.credentials import event_id_fingerprint
from aether.infra import EmbeddedNats, EmbeddedNatsCluster, free_port, wait_for_jetstream
from aether_events import MISSIONS_STREAM, MissionMessagePosted, ensure_streams
from aether_events.codec import encode
from aether_events.subjects import subject_for
from tests.e2e.test_mission_flow import create_database

Stored = tuple[int, str, bytes, dict[str, str]]


@pytest.fixture
def servers() -> Iterator[tuple[EmbeddedNats, EmbeddedNats]]:
    """Two nats-servers: the one backed up, the one restored into."""
    data = Path(tempfile.mkdtemp(prefix="aether-test-backup-"))
    first = EmbeddedNats(data / "a", monitor_port=free_port()).start()
    second = EmbeddedNats(data / "b").start()
    try:
        yield first, second
    finally:
        first.stop()
        second.stop()
        shutil.rmtree(data, ignore_errors=True)


async def fill(url: str, missions: int, events: int) -> int:
    """``missions`` missions of ``events`` events each, with their ``Nats-Msg-Id``, a
    trace header, and (on the first) an expected-sequence condition; how many."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        now = datetime.now(UTC)
        pending = []
        for m in range(missions):
            for e in range(events):
                event = MissionMessagePosted(
                    event_id=f"m{m}-e{e}",
                    mission_id=f"m{m}",
                    occurred_at=now,
                    correlation_id=f"m{m}",
                    text="a person's answer to the planner, of a typical length " * 3,
                )
                headers = {"Nats-Msg-Id": event.event_id, "traceparent": f"00-{m:032x}-{e:016x}-01"}
                if e == 0:  # its subject holds nothing yet
                    headers["Nats-Expected-Last-Subject-Sequence"] = "0"
                pending.append(js.publish(subject_for(event), encode(event), headers=headers))
                if len(pending) >= 500:
                    await asyncio.gather(*pending)
                    pending = []
        await asyncio.gather(*pending)
        return missions * events
    finally:
        await nc.close()


async def stored(url: str) -> list[Stored]:
    """Every message of the stream at ``url`` by its sequence, as the get API gives it."""
    nc = await nats.connect(url)
    try:
        js: JetStreamContext = nc.jetstream()
        info = await js.stream_info(MISSIONS_STREAM)
        found = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            raw = await js.get_msg(MISSIONS_STREAM, seq)
            headers = {str(k): str(v) for k, v in (raw.headers or {}).items()}
            found.append((seq, str(raw.subject), raw.data or b"", headers))
        return found
    finally:
        await nc.close()


def received(server: EmbeddedNats) -> int:
    """How many messages the server has received from its clients (``/varz``): requests
    to its JetStream API among them."""
    answer = httpx.get(f"http://127.0.0.1:{server.monitor_port}/varz", timeout=10)
    return int(answer.json()["in_msgs"])


def without_conditions(messages: list[Stored]) -> list[Stored]:
    return [
        (seq, subject, data, {k: v for k, v in h.items() if not k.startswith("Nats-Expected-")})
        for seq, subject, data, h in messages
    ]


def restore_args(
    path: Path, nats_url: str, database_url: str, **flags: object
) -> argparse.Namespace:
    return argparse.Namespace(
        file=str(path),
        nats_url=nats_url,
        database_url=database_url,
        while_running=flags.get("while_running", False),
        replicas=flags.get("replicas"),
    )


def backed_up(nats_url: str, database_url: str, path: Path) -> archive.Header:
    found = Servers(nats_url, database_url, where="--nats-url and --database-url")
    began = time.perf_counter()
    header = asyncio.run(backup(found, path))
    print(f"backup of {header.counts.messages} events: {time.perf_counter() - began:.2f}s")
    return header


def test_a_stream_of_thousands_of_events_comes_back_message_for_message(
    servers: tuple[EmbeddedNats, EmbeddedNats], database_url: str, tmp_path: Path
):
    source, target = servers
    count = asyncio.run(fill(source.url, missions=300, events=9))
    assert count > READ_BATCH and count > 4 * PUBLISH_WINDOW
    path = tmp_path / "aether.backup"
    database = create_database(database_url)
    before = received(source)
    header = backed_up(source.url, database, path)
    # Read in batches: a few requests to the server, not one for each message.
    assert received(source) - before < count / 100
    assert header.counts.messages == count and header.counts.missions == 300
    records = [r for r in archive.records(path) if isinstance(r, archive.Message)]
    assert [r.seq for r in records] == list(range(1, count + 1))
    assert all(r.time is not None for r in records)

    began = time.perf_counter()
    args = restore_args(path, target.url, create_database(database_url))
    assert run_restore(args) == 0
    print(f"restore of {count} events: {time.perf_counter() - began:.2f}s")

    original = asyncio.run(stored(source.url))
    assert asyncio.run(stored(target.url)) == without_conditions(original)
    assert any("Nats-Expected-Last-Subject-Sequence" in h for *_, h in original)

    async def republished() -> bool:
        nc = await nats.connect(target.url)
        try:
            event = MissionMessagePosted(
                event_id="m7-e3",
                mission_id="m7",
                occurred_at=datetime.now(UTC),
                correlation_id="m7",
                text="again",
            )
            ack = await nc.jetstream().publish(
                subject_for(event), encode(event), headers={"Nats-Msg-Id": event.event_id}
            )
            return bool(ack.duplicate)
        finally:
            await nc.close()

    assert asyncio.run(republished())  # the duplicate window holds the restored ids


SOURCE_SECRET = "the source deployment's event id secret"


def test_a_restore_under_another_event_id_secret_is_refused_before_anything_is_published(
    servers: tuple[EmbeddedNats, EmbeddedNats],
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
):
    """The services' event ids are keyed with the deployment's secret (decision 0031):
    restored where the services key with another, a step they take again gets another id
    and is stored again. The backup records the source's fingerprint (from
    ``AETHER_EVENT_ID_SECRET``, the secret itself nowhere in the file); a restore with
    another secret is refused with the way out, before the stream is even made or the
    tokens' table touched; with the source's secret it restores, with no warning."""
    source, target = servers
    asyncio.run(fill(source.url, missions=3, events=4))
    path = tmp_path / "aether.backup"
    monkeypatch.setenv("AETHER_EVENT_ID_SECRET", SOURCE_SECRET)
    made = argparse.Namespace(
        file=str(path), nats_url=source.url, database_url=create_database(database_url)
    )
    assert run_backup(made) == 0
    assert "recorded by its fingerprint" in capsys.readouterr().out
    header = archive.verify(path)
    assert header.event_id_key == event_id_fingerprint(SOURCE_SECRET)
    assert header.event_id_key != event_id_fingerprint("another deployment's event id secret")
    assert SOURCE_SECRET.encode() not in gzip.decompress(path.read_bytes())

    database = create_database(database_url)
    monkeypatch.setenv("AETHER_EVENT_ID_SECRET", "the target deployment's own secret")
    with pytest.raises(Refused) as refused:
        run_restore(restore_args(path, target.url, database))
    said = str(refused.value)
    assert "another than the one the backup's events were stored under" in said, said
    assert "take those steps again" in said and "give it as AETHER_EVENT_ID_SECRET" in said
    assert said.endswith("nothing was restored"), said

    async def has_stream() -> bool:
        nc = await nats.connect(target.url)
        try:
            await nc.jetstream().stream_info(MISSIONS_STREAM)
            return True
        except NotFoundError:
            return False
        finally:
            await nc.close()

    assert not asyncio.run(has_stream())
    with psycopg.connect(database) as conn:
        assert conn.execute("SELECT to_regclass('api_tokens')").fetchone() == (None,)

    monkeypatch.setenv("AETHER_EVENT_ID_SECRET", SOURCE_SECRET)
    capsys.readouterr()
    assert run_restore(restore_args(path, target.url, database)) == 0
    assert "warning" not in capsys.readouterr().err
    assert asyncio.run(stored(target.url)) == without_conditions(asyncio.run(stored(source.url)))


def test_an_event_id_fingerprint_missing_on_either_side_is_a_warning_not_a_refusal(
    capsys: pytest.CaptureFixture[str],
):
    """An older backup (no fingerprint), or services whose secret is not known here (no
    ``AETHER_EVENT_ID_SECRET`` given with ``--nats-url``): the restore goes on, saying
    it could not check. An ``aether up`` home with no secret yet would make a new one:
    refused."""
    older = archive.Header(
        format=archive.FORMAT,
        version=archive.VERSION,
        created_at=datetime.now(UTC),
        stream=archive.StreamPart(name=MISSIONS_STREAM, config={}, first_seq=1, last_seq=1),
        counts=archive.Counts(messages=1, missions=1, tokens=0),
        sha256="",
    )
    fingerprint = event_id_fingerprint(SOURCE_SECRET)
    check_event_id_key(older, EventIdKey(fingerprint, "AETHER_EVENT_ID_SECRET"))
    assert "the backup records no fingerprint" in capsys.readouterr().err
    recorded = msgspec.structs.replace(older, event_id_key=fingerprint)
    check_event_id_key(recorded, EventIdKey(None, "AETHER_EVENT_ID_SECRET is not set here"))
    assert "not checked that it is the backup's" in capsys.readouterr().err
    check_event_id_key(recorded, EventIdKey(fingerprint, "AETHER_EVENT_ID_SECRET"))
    assert capsys.readouterr().err == ""
    new_home = EventIdKey(None, "/srv/new has no event id secret yet", none_yet=True)
    with pytest.raises(Refused, match="its first start would make a new one"):
        check_event_id_key(recorded, new_home)


def test_a_restore_while_a_service_reads_is_refused_unless_while_running(
    servers: tuple[EmbeddedNats, EmbeddedNats], database_url: str, tmp_path: Path
):
    """On a deployment (``--nats-url``) the running check is the stream's consumers: a
    service reading the empty stream makes the restore refuse, writing nothing;
    ``--while-running`` restores into the stream as it is (its consumers kept), and the
    reading service is given every restored event, in order."""
    source, target = servers
    count = asyncio.run(fill(source.url, missions=20, events=5))
    path = tmp_path / "aether.backup"
    backed_up(source.url, create_database(database_url), path)
    database = create_database(database_url)

    async def scenario() -> list[int]:
        nc = await nats.connect(target.url)
        try:
            js = nc.jetstream()
            await ensure_streams(js)
            received: list[int] = []
            all_in = asyncio.Event()

            async def take(msg: nats.aio.msg.Msg) -> None:
                received.append(msg.metadata.sequence.stream)
                await msg.ack()
                if len(received) == count:
                    all_in.set()

            await js.subscribe("aether.mission.>", durable="reader", cb=take, manual_ack=True)
            with pytest.raises(Refused, match=r"services are reading .*consumers reader"):
                await asyncio.to_thread(run_restore, restore_args(path, target.url, database))
            assert (await js.stream_info(MISSIONS_STREAM)).state.messages == 0
            args = restore_args(path, target.url, database, while_running=True)
            assert await asyncio.to_thread(run_restore, args) == 0
            await asyncio.wait_for(all_in.wait(), 30)
            assert [c.name for c in await js.consumers_info(MISSIONS_STREAM)] == ["reader"]
            return received
        finally:
            await nc.close()

    assert asyncio.run(scenario()) == list(range(1, count + 1))
    assert asyncio.run(stored(target.url)) == without_conditions(asyncio.run(stored(source.url)))
    with psycopg.connect(database) as conn:  # the gateway's schema made for the tokens
        assert conn.execute("SELECT count(*) FROM api_tokens").fetchone() == (0,)


def test_replicas_makes_the_restored_stream_replicated(
    servers: tuple[EmbeddedNats, EmbeddedNats], database_url: str, tmp_path: Path
):
    """A backup of a one-server stream restored with ``--replicas 3`` onto a cluster of
    three: the stream is replicated (a leader and two peers) and holds every message."""
    source, _ = servers
    count = asyncio.run(fill(source.url, missions=10, events=5))
    path = tmp_path / "aether.backup"
    header = backed_up(source.url, create_database(database_url), path)
    assert header.stream.config["num_replicas"] == 1
    data = Path(tempfile.mkdtemp(prefix="aether-test-backup-cluster-"))
    cluster = EmbeddedNatsCluster(data).start()
    try:
        asyncio.run(wait_for_jetstream(cluster.url))
        args = restore_args(path, cluster.url, create_database(database_url), replicas=3)
        assert run_restore(args) == 0

        async def info() -> tuple[int, int, int]:
            nc = await nats.connect(cluster.url)
            try:
                found = await nc.jetstream().stream_info(MISSIONS_STREAM)
                peers = len(found.cluster.replicas or []) if found.cluster else 0
                return found.config.num_replicas or 0, peers, found.state.messages
            finally:
                await nc.close()

        assert asyncio.run(info()) == (3, 2, count)
        assert asyncio.run(stored(cluster.url)) == without_conditions(
            asyncio.run(stored(source.url))
        )
    finally:
        cluster.stop()
        shutil.rmtree(data, ignore_errors=True)


def test_a_restore_stopped_by_a_refused_publish_goes_on_from_there_when_run_again(
    database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    """The server restored into has too little JetStream storage: a publish is refused
    part way. The restore stops, saying which event it stopped at; the stream holds the
    backup's events before it and nothing after (what was published behind it and
    stored is taken back). With room made, the same restore run again checks that the
    stream is the start of this backup and goes on after it: every event once, in
    order, the same sequences, and the stream's mark of an unfinished restore gone."""
    data = Path(tempfile.mkdtemp(prefix="aether-test-backup-full-"))
    source = EmbeddedNats(data / "source").start()
    config = data / "target.conf"
    config.write_text("jetstream { max_file_store: 512KB }\n")
    target = EmbeddedNats(data / "target", config=config).start()
    try:
        count = asyncio.run(fill(source.url, missions=300, events=9))
        path = tmp_path / "aether.backup"
        backed_up(source.url, create_database(database_url), path)
        records = [r for r in archive.records(path) if isinstance(r, archive.Message)]
        database = create_database(database_url)

        with pytest.raises(Stopped) as stopped:
            run_restore(restore_args(path, target.url, database))
        said = str(stopped.value)
        reached = re.search(r"stopped at the backup's event #(\d+)", said)
        assert reached is not None, said
        at = int(reached.group(1))
        assert 1 < at < count and f"go on from #{at}" in said, said
        assert "insufficient" in said, said
        held = asyncio.run(stored(target.url))
        original = without_conditions(asyncio.run(stored(source.url)))
        assert held == original[: at - 1]  # the start of the backup, nothing after

        # Storage made bigger; the same restore again.
        target.stop()
        config.write_text("jetstream { max_file_store: 64MB }\n")
        target.start()
        capsys.readouterr()
        assert run_restore(restore_args(path, target.url, database)) == 0
        out = capsys.readouterr().out
        assert f"holds the first {at - 1} events of this backup" in out, out
        assert f"restored {count} events" in out and f"{at - 1} of them by an earlier run" in out
        assert asyncio.run(stored(target.url)) == original
        assert len({h["Nats-Msg-Id"] for *_, h in original}) == len(records) == count

        async def marked() -> dict[str, str]:
            nc = await nats.connect(target.url)
            try:
                info = await nc.jetstream().stream_info(MISSIONS_STREAM)
                return dict(info.config.metadata or {})
            finally:
                await nc.close()

        assert RESTORING not in asyncio.run(marked())
        # Finished, the stream is no restore's to go on in: a third run is refused.
        with pytest.raises(Refused, match="not the start of this backup"):
            run_restore(restore_args(path, target.url, database))
    finally:
        source.stop()
        target.stop()
        shutil.rmtree(data, ignore_errors=True)

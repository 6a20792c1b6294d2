"""The bus over TLS: a service's connection and an attempt's own connection both reach a
nats-server that speaks only TLS, checking its certificate against the CA they are
given; without that CA, or over a plain URL, nothing connects."""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from nats.aio.msg import Msg

from aether.infra import EmbeddedNats
from aether_events import ALL_MISSION_EVENTS, MissionRequested
from aether_runtime import ConsumerSpec, RuntimeSettings, Service
from aether_runtime.attempt_auth import AttemptCredentials, AttemptKey
from aether_runtime.bus_auth import ATTEMPT_KEY_REQUESTS
from aether_runtime.settings import SettingsError

from .test_bus_restart import Recorder, requested


def _pem(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def certificates(root: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate it signs for 127.0.0.1: the CA's file, the server's
    certificate and its key."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aether test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nats")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return (
        _pem(root / "ca.pem", ca.public_bytes(serialization.Encoding.PEM)),
        _pem(root / "server.pem", server.public_bytes(serialization.Encoding.PEM)),
        _pem(
            root / "server-key.pem",
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        ),
    )


@pytest.fixture
def tls_nats() -> Iterator[tuple[EmbeddedNats, Path]]:
    """A nats-server with JetStream that takes TLS connections only, and its CA's file."""
    root = Path(tempfile.mkdtemp(prefix="aether-test-tls-nats-"))
    ca, cert, key = certificates(root)
    config = root / "nats.conf"
    config.write_text(f'tls {{\n  cert_file: "{cert}"\n  key_file: "{key}"\n}}\n')
    server = EmbeddedNats(root / "data", config=config).start()
    try:
        yield server, ca
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


async def test_a_service_and_an_attempt_reach_a_bus_that_speaks_only_tls(
    tls_nats: tuple[EmbeddedNats, Path],
) -> None:
    server, ca = tls_nats
    url = f"tls://127.0.0.1:{server.port}"
    settings = RuntimeSettings(nats_url=url, nats_tls_ca=str(ca), port=0)
    handler = Recorder()
    svc = Service(name="tls", settings=settings, bus_poll_seconds=0)
    svc.consume(
        ConsumerSpec(
            durable="tls-ordered",
            subject=ALL_MISSION_EVENTS,
            types=(MissionRequested,),
            handler=handler,
        )
    )
    await svc.start()
    try:
        await svc.publisher.publish(requested("m-tls"))
        await handler.wait("m-tls")
    finally:
        await svc.stop()

    # An attempt's own connection, made with the same context (``AttemptCredentials``),
    # publishes into the stream the service declared. This bus calls no authorizer out,
    # so the attempt's event key (decision 0030) is answered here as the scheduler would.
    authorizer = await nats.connect(url, tls=settings.nats_tls())

    async def answer_key(msg: Msg) -> None:
        await msg.respond(base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"="))

    await authorizer.subscribe(ATTEMPT_KEY_REQUESTS, cb=answer_key)
    credentials = AttemptCredentials(
        nats_url=url, secret="s", runner_id="host", tls=settings.nats_tls()
    )
    try:
        async with credentials.scope(AttemptKey("m-tls", "t1", 1)) as publisher:
            await publisher.open()
            assert publisher.connection is not None and publisher.connection.is_connected
            ack = await publisher.publish(requested("m-tls-attempt"))
            assert ack.seq > 0
    finally:
        await authorizer.close()


async def test_nothing_connects_without_the_ca_or_over_a_plain_url(
    tls_nats: tuple[EmbeddedNats, Path],
) -> None:
    server, _ = tls_nats
    for url in (f"tls://127.0.0.1:{server.port}", server.url):
        context = RuntimeSettings(nats_url=url, port=0).nats_tls()
        with pytest.raises(Exception):  # noqa: B017, PT011 - the certificate, or TLS required
            await asyncio.wait_for(
                nats.connect(
                    url,
                    tls=context,
                    allow_reconnect=False,
                    max_reconnect_attempts=0,
                    connect_timeout=3,
                ),
                10,
            )


def test_tls_settings_are_checked_at_start(tmp_path: Path) -> None:
    assert RuntimeSettings(nats_url="nats://127.0.0.1:4222").nats_tls() is None
    assert RuntimeSettings(nats_url="nats://a:1,tls://b:2").nats_tls() is not None
    missing = RuntimeSettings(nats_url="tls://a:1", nats_tls_ca=str(tmp_path / "none.pem"))
    with pytest.raises(SettingsError, match="TLS settings cannot be loaded"):
        missing.nats_tls()

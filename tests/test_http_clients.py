"""HTTP clients' TLS contexts (``aether_runtime.tls``).

The command line's clients (``aether.http``): a client of a plain-HTTP gateway or health
endpoint is made without the trust store, talks plain HTTP, and never connects over TLS
unverified; a client of an ``https://`` gateway verifies against the trust store. The
services' clients share one verifying context per process, the trust store loaded once:
the model client, the broker's read API client and the OIDC verifier's clients use it."""

from __future__ import annotations

import contextlib
import datetime
import http.server
import ipaddress
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from aether import http as aether_http
from aether_runtime import tls


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"hello"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def _served(tls: ssl.SSLContext | None = None) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _self_signed(directory: Path) -> ssl.SSLContext:
    """A server context with a certificate for 127.0.0.1 that nobody's store trusts."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return context


def test_a_plain_http_client_talks_plain_http():
    with _served() as url:
        with aether_http.client(url, timeout=5.0) as http:
            assert http.get("/").text == "hello"
        with aether_http.client(timeout=5.0) as http:  # whole URLs, as the health polls
            assert http.get(f"{url}/").text == "hello"


def test_a_plain_http_client_never_connects_over_tls_unverified(tmp_path: Path):
    with _served(_self_signed(tmp_path)) as url:
        plain = aether_http.client(url.replace("https://", "http://"), timeout=5.0)
        with plain, pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            plain.get(f"{url}/")
        # An unverified client would have read it: the server does answer over TLS.
        with httpx.Client(verify=False, timeout=5.0) as unverified:
            assert unverified.get(f"{url}/").text == "hello"


def test_an_https_gateway_is_verified_against_the_trust_store(tmp_path: Path):
    with _served(_self_signed(tmp_path)) as url:
        verified = aether_http.client(url, timeout=5.0)
        with verified, pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            verified.get("/")
        trusting = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
        with httpx.Client(base_url=url, verify=trusting, timeout=5.0) as http:
            assert http.get("/").text == "hello"


def test_the_shared_context_is_loaded_once_and_verifies(tmp_path: Path):
    shared = tls.shared()
    assert tls.shared() is shared and tls.for_url("HTTPS://example.test/") is shared
    assert shared.verify_mode == ssl.CERT_REQUIRED and shared.check_hostname
    assert shared.cert_store_stats()["x509_ca"] > 0  # the trust store, loaded
    assert tls.for_url("http://127.0.0.1:1").cert_store_stats()["x509_ca"] == 0
    refused = pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED")
    with _served(_self_signed(tmp_path)) as url, httpx.Client(verify=shared) as http, refused:
        http.get(f"{url}/")
    with _served() as url, httpx.Client(verify=shared, timeout=5.0) as http:
        assert http.get(f"{url}/").text == "hello"  # plain HTTP through it too


async def test_the_services_clients_use_the_shared_context():
    from aether_gateway.adapters import oidc
    from aether_llm.metrics import metered_http_client
    from aether_runtime.broker_read import BrokerRead

    def context_of(client: object) -> object:
        transport = client._transport  # type: ignore[attr-defined]
        if hasattr(transport, "_inner"):  # the model client's meter, over aiohttp
            return transport._inner.ssl_context
        return transport._pool._ssl_context

    model = metered_http_client()
    broker = BrokerRead("http://127.0.0.1:1", "token", settings=("x", "y"))
    verifier = oidc._client()
    try:
        for client in (model, broker._http(), verifier):
            assert context_of(client) is tls.shared()
    finally:
        await model.aclose()
        await broker._http().aclose()
        await verifier.aclose()

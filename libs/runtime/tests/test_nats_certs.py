"""The bus's certificates for docker compose: made once, kept while good, made again when
not; the server's certificate is one a client trusting the CA accepts for ``nats``."""

from __future__ import annotations

import datetime
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest

from aether_runtime import nats_certs


def handshake(ca: Path, cert: Path, key: Path, host: str) -> str | None:
    """A TLS handshake between a server showing ``cert`` and a client trusting ``ca``
    only, asking for ``host``: None when it succeeds, else the client's error."""
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    client_context = ssl.create_default_context(cafile=str(ca))
    left, right = socket.socketpair()
    left.settimeout(10)
    right.settimeout(10)

    def serve() -> None:
        try:
            with server_context.wrap_socket(left, server_side=True) as tls:
                tls.recv(1)
        except (OSError, ssl.SSLError):
            pass

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client_context.wrap_socket(right, server_hostname=host) as tls:
            tls.sendall(b"x")
        return None
    except ssl.SSLError as error:
        return str(error)
    finally:
        right.close()
        thread.join(10)
        left.close()


def test_it_makes_a_ca_and_a_server_certificate_clients_accept_for_nats(
    tmp_path: Path,
) -> None:
    outcome = nats_certs.ensure(tmp_path / "ca", tmp_path / "server")
    assert outcome.made
    assert outcome.ca == tmp_path / "ca" / "ca.crt"
    assert sorted(p.name for p in (tmp_path / "ca").iterdir()) == ["ca.crt"]
    assert sorted(p.name for p in (tmp_path / "server").iterdir()) == ["server.crt", "server.key"]
    assert stat.S_IMODE(outcome.key.stat().st_mode) == 0o600
    assert stat.S_IMODE(outcome.ca.stat().st_mode) == 0o644
    assert b"PRIVATE KEY" not in outcome.ca.read_bytes()  # the CA's key is written nowhere
    assert handshake(outcome.ca, outcome.cert, outcome.key, "nats") is None
    refused = handshake(outcome.ca, outcome.cert, outcome.key, "elsewhere")
    assert refused is not None and "hostname" in refused.lower()
    # Another CA's clients do not accept it.
    other = nats_certs.ensure(tmp_path / "other-ca", tmp_path / "other-server")
    assert handshake(other.ca, outcome.cert, outcome.key, "nats") is not None


def test_a_good_set_is_kept_as_it_is(tmp_path: Path) -> None:
    first = nats_certs.ensure(tmp_path / "ca", tmp_path / "server")
    written = [p.read_bytes() for p in (first.ca, first.cert, first.key)]
    again = nats_certs.ensure(tmp_path / "ca", tmp_path / "server")
    assert not again.made
    assert [p.read_bytes() for p in (again.ca, again.cert, again.key)] == written


@pytest.mark.parametrize("damage", ["missing key", "foreign certificate", "garbage ca"])
def test_a_broken_set_is_made_again(tmp_path: Path, damage: str) -> None:
    first = nats_certs.ensure(tmp_path / "ca", tmp_path / "server")
    old_ca = first.ca.read_bytes()
    if damage == "missing key":
        first.key.unlink()
    elif damage == "foreign certificate":
        other = nats_certs.ensure(tmp_path / "x-ca", tmp_path / "x-server")
        first.cert.write_bytes(other.cert.read_bytes())
    else:
        first.ca.write_text("not a certificate")
    again = nats_certs.ensure(tmp_path / "ca", tmp_path / "server")
    assert again.made
    assert again.ca.read_bytes() != old_ca
    assert handshake(again.ca, again.cert, again.key, "nats") is None


def test_a_new_host_name_or_a_set_near_its_end_is_made_again(tmp_path: Path) -> None:
    nats_certs.ensure(tmp_path / "ca", tmp_path / "server")
    wider = nats_certs.ensure(tmp_path / "ca", tmp_path / "server", ("nats", "nats.internal"))
    assert wider.made
    assert handshake(wider.ca, wider.cert, wider.key, "nats.internal") is None
    late = datetime.datetime.now(datetime.UTC) + nats_certs.VALIDITY - datetime.timedelta(days=1)
    assert nats_certs.ensure(tmp_path / "ca", tmp_path / "server", ("nats",), now=late).made


def test_the_command_line_says_what_it_did(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [str(tmp_path / "ca"), str(tmp_path / "server")]
    assert nats_certs.main(args) == 0
    assert capsys.readouterr().out.startswith("made ")
    assert nats_certs.main(args) == 0
    assert capsys.readouterr().out.startswith("kept ")
    assert (tmp_path / "server" / "server.key").exists()

"""The bus's certificates where nothing else makes them (docker compose): a CA, and a
certificate it signs for the NATS server's host name.

    python -m aether_runtime.nats_certs CA_DIR SERVER_DIR [--host nats ...]

writes ``CA_DIR/ca.crt`` (what the services trust, mode 0644) and ``SERVER_DIR/server.crt``
and ``SERVER_DIR/server.key`` (the server's alone, the key mode 0600, owned by whoever runs
this). Two directories, so the services can mount the CA without the server's key.

It is idempotent: files that are there, whose certificate the CA signed for every host
asked, whose key is the certificate's, and that are valid for more than
``RENEW_BEFORE`` are kept. Anything else (a file missing, a half-written set, a new host
name, a certificate near its end) makes a new set, CA included. The CA's private key is
never written: once the server's certificate is signed it is dropped, so nothing can sign
another certificate the services would trust.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_FILE = "ca.crt"
CERT_FILE = "server.crt"
KEY_FILE = "server.key"
VALIDITY = datetime.timedelta(days=3650)
# A set this close to its end is made again by the next run (a compose `up`).
RENEW_BEFORE = datetime.timedelta(days=30)


@dataclass(frozen=True)
class Outcome:
    made: bool  # False: the set on disk was kept
    ca: Path
    cert: Path
    key: Path


def ensure(
    ca_dir: Path,
    server_dir: Path,
    hosts: tuple[str, ...] = ("nats",),
    now: datetime.datetime | None = None,
) -> Outcome:
    """Keep the set in the two directories if it is whole and good for ``hosts``,
    otherwise make a new one."""
    if not hosts:
        raise ValueError("at least one host name is needed")
    now = now or datetime.datetime.now(datetime.UTC)
    ca, cert, key = ca_dir / CA_FILE, server_dir / CERT_FILE, server_dir / KEY_FILE
    if _usable(ca, cert, key, hosts, now):
        return Outcome(made=False, ca=ca, cert=cert, key=key)
    ca_pem, cert_pem, key_pem = _make(hosts, now)
    ca_dir.mkdir(parents=True, exist_ok=True)
    server_dir.mkdir(parents=True, exist_ok=True)
    # The key and the certificate first, the CA last: a run cut short leaves a set that
    # does not verify, which the next run makes again.
    _write(key, key_pem, 0o600)
    _write(cert, cert_pem, 0o644)
    _write(ca, ca_pem, 0o644)
    return Outcome(made=True, ca=ca, cert=cert, key=key)


def _usable(
    ca: Path, cert: Path, key: Path, hosts: tuple[str, ...], now: datetime.datetime
) -> bool:
    try:
        authority = x509.load_pem_x509_certificate(ca.read_bytes())
        server = x509.load_pem_x509_certificate(cert.read_bytes())
        private = serialization.load_pem_private_key(key.read_bytes(), password=None)
        server.verify_directly_issued_by(authority)
        names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except (OSError, ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    if private.public_key() != server.public_key():
        return False
    if not set(hosts) <= set(names.value.get_values_for_type(x509.DNSName)):
        return False
    return all(
        c.not_valid_before_utc <= now and now + RENEW_BEFORE < c.not_valid_after_utc
        for c in (authority, server)
    )


def _make(hosts: tuple[str, ...], now: datetime.datetime) -> tuple[bytes, bytes, bytes]:
    """The CA's certificate, the server's, and the server's key, in PEM."""
    start, end = now - datetime.timedelta(minutes=5), now + VALIDITY
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aether bus CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in hosts]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    pem = serialization.Encoding.PEM
    return ca.public_bytes(pem), server.public_bytes(pem), key_pem


def _write(path: Path, data: bytes, mode: int) -> None:
    """Whole or not at all, with its mode from the start (a key is never readable by
    others, even for a moment)."""
    descriptor, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(descriptor, mode)
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m aether_runtime.nats_certs",
        description="Make the bus's CA and server certificate, unless a good set is there.",
    )
    parser.add_argument("ca_dir", type=Path, help="where ca.crt goes (the services mount it)")
    parser.add_argument(
        "server_dir", type=Path, help="where server.crt and server.key go (the server's)"
    )
    parser.add_argument(
        "--host",
        action="append",
        dest="hosts",
        help="a name the server is reached by (repeat for more; default: nats)",
    )
    args = parser.parse_args(argv)
    hosts = tuple(args.hosts or ["nats"])
    outcome = ensure(args.ca_dir, args.server_dir, hosts)
    verb = "made" if outcome.made else "kept"
    print(f"{verb} {outcome.ca}, {outcome.cert} and {outcome.key} for {', '.join(hosts)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The backup file of ``aether backup`` and ``aether restore``: its format, written in one
step and read back only once it is whole.

A backup is one gzip-compressed file of JSON lines (format ``aether-backup``, version 1):

1. the header: format and version, when it was made, the stream's name, configuration
   (as the server reports it) and first and last sequence, the counts (messages,
   missions, tokens) and the SHA-256 of every line after it (their bytes, newlines
   included), and the fingerprint of the deployment's event id secret when it was known
   (``event_id_key``: never the secret; a restore compares it with the target's);
2. one line per stored message of the stream, in sequence order: its sequence, subject,
   headers (``Nats-Msg-Id`` among them), store time and data (base64);
3. one line per row of the gateway's ``api_tokens`` table (digests, never secrets).

The file is written beside its destination under a temporary name and renamed into
place, so a backup interrupted half way leaves no file that looks whole. ``verify``
reads it all before anything is restored: a file cut short, edited or damaged (a bad
gzip, a line that does not decode, a count or a checksum that does not match) is refused
with what is wrong.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import zlib
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import msgspec

FORMAT = "aether-backup"
VERSION = 1


class ArchiveError(Exception):
    """The file is not a whole, intact backup this version can restore."""


class StreamPart(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    # The stream's configuration as the server reported it (``StreamConfig.as_dict``).
    config: dict[str, Any]
    first_seq: int
    last_seq: int


class Counts(msgspec.Struct, frozen=True, kw_only=True):
    messages: int
    missions: int
    tokens: int


class Header(msgspec.Struct, frozen=True, kw_only=True):
    format: str
    version: int
    created_at: datetime
    stream: StreamPart
    counts: Counts
    sha256: str
    # The fingerprint of the event id secret the deployment's services keyed their
    # events' ids with (``aether.credentials.event_id_fingerprint``: not the secret);
    # ``None``: not known when the backup was made, or a backup made before it was kept.
    event_id_key: str | None = None


class Message(msgspec.Struct, frozen=True, kw_only=True, tag="message"):
    """One stored message of the stream."""

    seq: int
    subject: str
    data: bytes
    headers: dict[str, str] | None = None
    time: datetime | None = None


class Token(msgspec.Struct, frozen=True, kw_only=True, tag="token"):
    """One row of ``api_tokens``: the token's SHA-256, never the token."""

    id: str
    name: str
    token_hash: str
    prefix: str
    scopes: list[str]
    created_at: datetime
    created_by: str | None = None
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None


Record = Message | Token

_encoder = msgspec.json.Encoder()
_header = msgspec.json.Decoder(Header)
_record = msgspec.json.Decoder(Record)


def mission_of(subject: str) -> str | None:
    """The mission id of a mission event's subject (``aether.mission.<id>.<type>…``)."""
    parts = subject.split(".")
    return parts[2] if len(parts) > 3 else None


class Writer:
    """Writes a backup to ``path`` in one step: the records go to a temporary file beside
    it while their checksum is taken; ``finish`` puts the header before them, compressed,
    and renames the result into place. Left without ``finish``, nothing is left behind."""

    def __init__(self, path: Path) -> None:
        self.path = path.resolve()
        self._body = self.path.with_name(f".{self.path.name}.{os.getpid()}.body")
        self._final = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self._out: IO[bytes] = self._body.open("wb")
        self._digest = hashlib.sha256()
        self._messages = self._tokens = 0
        self._missions: set[str] = set()

    def add(self, record: Record) -> None:
        if isinstance(record, Message):
            assert not self._tokens, "messages come before tokens"
            self._messages += 1
            mission = mission_of(record.subject)
            if mission:
                self._missions.add(mission)
        else:
            self._tokens += 1
        line = _encoder.encode(record) + b"\n"
        self._digest.update(line)
        self._out.write(line)

    def finish(
        self, stream: StreamPart, created_at: datetime, event_id_key: str | None = None
    ) -> Header:
        self._out.close()
        header = Header(
            format=FORMAT,
            version=VERSION,
            created_at=created_at,
            stream=stream,
            counts=Counts(
                messages=self._messages, missions=len(self._missions), tokens=self._tokens
            ),
            sha256=self._digest.hexdigest(),
            event_id_key=event_id_key,
        )
        with self._final.open("wb") as raw:
            with (
                gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as out,
                self._body.open("rb") as body,
            ):
                out.write(_encoder.encode(header) + b"\n")
                while chunk := body.read(1 << 20):
                    out.write(chunk)
            raw.flush()
            os.fsync(raw.fileno())
        self._final.replace(self.path)
        return header

    def close(self) -> None:
        """Remove the temporary files (after ``finish``, or instead of it)."""
        self._out.close()
        for leftover in (self._body, self._final):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _lines(path: Path) -> Iterator[bytes]:
    try:
        with gzip.open(path, "rb") as source:
            yield from source
    except FileNotFoundError:
        raise ArchiveError(f"{path}: no such file") from None
    except (OSError, EOFError, zlib.error) as error:
        # gzip's own checks: not gzip at all, a damaged block, or a file cut short.
        raise ArchiveError(
            f"{path} is damaged or cut short ({error or type(error).__name__})"
        ) from None


def verify(path: Path) -> Header:
    """Read all of ``path`` and return its header if it is a whole, intact backup of this
    format; else raise ``ArchiveError`` saying what is wrong. Nothing is written."""
    lines = _lines(path)
    first = next(lines, None)
    if first is None:
        raise ArchiveError(f"{path} is empty")
    try:
        header = _header.decode(first)
    except msgspec.DecodeError as error:
        raise ArchiveError(f"{path} is not an Aether backup (its first line: {error})") from None
    if header.format != FORMAT:
        raise ArchiveError(f"{path} is not an Aether backup (format {header.format!r})")
    if header.version != VERSION:
        raise ArchiveError(
            f"{path} is a backup of format version {header.version}; this Aether reads "
            f"version {VERSION}"
        )
    digest = hashlib.sha256()
    messages = tokens = 0
    last = 0
    for number, line in enumerate(lines, start=2):
        digest.update(line)
        try:
            record = _record.decode(line)
        except msgspec.DecodeError as error:
            raise ArchiveError(f"{path}: line {number} does not decode ({error})") from None
        if isinstance(record, Message):
            if tokens or record.seq <= last:
                raise ArchiveError(f"{path}: line {number} is out of order")
            last = record.seq
            messages += 1
        else:
            tokens += 1
    if digest.hexdigest() != header.sha256:
        raise ArchiveError(f"{path}: the checksum does not match: the file was changed or cut")
    counts = header.counts
    if (messages, tokens) != (counts.messages, counts.tokens) or (
        messages and last != header.stream.last_seq
    ):
        raise ArchiveError(
            f"{path} holds {messages} messages (to #{last}) and {tokens} tokens; its header "
            f"says {counts.messages} (to #{header.stream.last_seq}) and {counts.tokens}"
        )
    return header


def records(path: Path) -> Iterator[Record]:
    """The messages, then the tokens, of a backup ``verify`` accepted."""
    lines = _lines(path)
    next(lines, None)
    for line in lines:
        yield _record.decode(line)

"""The backup file (``aether.archive``): what is written reads back the same, and a file
edited, re-compressed after an edit, cut short or of another version is refused with
what is wrong."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime
from pathlib import Path

import pytest

from aether import archive
from aether.archive import ArchiveError, Message, StreamPart, Token

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def write(path: Path) -> archive.Header:
    stream = StreamPart(
        name="AETHER_MISSIONS", config={"name": "AETHER_MISSIONS"}, first_seq=1, last_seq=3
    )
    with archive.Writer(path) as writer:
        writer.add(
            Message(
                seq=1,
                subject="aether.mission.m-1.mission_requested",
                data=b"{}",
                headers={"Nats-Msg-Id": "a"},
            )
        )
        writer.add(Message(seq=3, subject="aether.mission.m-2.mission_requested", data=b"\x00\xff"))
        writer.add(
            Token(
                id="tok_1",
                name="ci",
                token_hash="ab" * 32,
                prefix="aet_x",
                scopes=["read"],
                created_at=NOW,
            )
        )
        return writer.finish(stream, NOW)


def test_what_is_written_reads_back_the_same(tmp_path: Path):
    path = tmp_path / "b"
    header = write(path)
    assert archive.verify(path) == header
    assert (header.counts.messages, header.counts.missions, header.counts.tokens) == (2, 2, 1)
    records = list(archive.records(path))
    assert [type(r).__name__ for r in records] == ["Message", "Message", "Token"]
    assert records[1] == Message(
        seq=3, subject="aether.mission.m-2.mission_requested", data=b"\x00\xff"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no temporary file left


def rewrite(path: Path, edit: object) -> None:
    lines = gzip.decompress(path.read_bytes()).splitlines(keepends=True)
    lines = edit(lines)  # type: ignore[operator]
    path.write_bytes(gzip.compress(b"".join(lines)))


@pytest.mark.parametrize(
    ("edit", "why"),
    [
        (lambda lines: [lines[0], lines[1].replace(b"e30=", b"e31="), *lines[2:]], "checksum"),
        (lambda lines: lines[:-1], "checksum"),
        (lambda lines: [lines[0].replace(b'"version":1', b'"version":2'), *lines[1:]], "version 2"),
        (lambda lines: [b"{}\n"], "not an Aether backup"),
    ],
)
def test_an_edited_file_is_refused(tmp_path: Path, edit: object, why: str):
    path = tmp_path / "b"
    write(path)
    rewrite(path, edit)
    with pytest.raises(ArchiveError, match=why):
        archive.verify(path)


def test_a_file_cut_short_or_damaged_is_refused(tmp_path: Path):
    path = tmp_path / "b"
    write(path)
    data = path.read_bytes()
    path.write_bytes(data[:-20])
    with pytest.raises(ArchiveError, match="damaged or cut short"):
        archive.verify(path)
    path.write_bytes(b"not gzip")
    with pytest.raises(ArchiveError, match="damaged or cut short"):
        archive.verify(path)

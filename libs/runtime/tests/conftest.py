"""Fixtures of the runtime's own tests: services run in this process against real NATS."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from aether.infra import EmbeddedNats


@pytest.fixture
def nats_server() -> Iterator[EmbeddedNats]:
    """A NATS server of the test's own, which the test may kill and start again."""
    data = Path(tempfile.mkdtemp(prefix="aether-test-nats-"))
    server = EmbeddedNats(data).start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(data, ignore_errors=True)

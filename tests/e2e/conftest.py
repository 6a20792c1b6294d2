"""The whole-system fixtures of ``test_mission_flow`` (a scripted model server, a fresh
database, a sample repository, the running stack), shared with every end-to-end test here.

The package-scoped ones are defined here only: a fixture defined in two places is two
fixtures, and each would start its own stack."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from aether.stack import Stack
from aether_llm import MessagesServer, Responder
from tests.e2e.test_mission_flow import (
    create_database,
    fresh_database,
    model_server,
    repo,
    running,
    scripted_model,
    stack_for,
)
from tests.support import ScriptedModel

__all__ = ["fresh_database", "model_server", "repo", "running"]


@pytest.fixture(scope="package")
def shared_model() -> Iterator[tuple[MessagesServer, ScriptedModel]]:
    """One scripted model server for the package: its script keys on task ids, not
    missions, so every mission of the three-task plan is answered the same way."""
    script = scripted_model(delays={"b": 4.0})
    server = MessagesServer(script).start()
    yield server, script
    server.stop()


@pytest.fixture(scope="package")
async def shared_stack(
    tmp_path_factory: pytest.TempPathFactory,
    shared_model: tuple[MessagesServer, ScriptedModel],
    database_url: str,
) -> AsyncIterator[Stack]:
    """The five services and their own NATS, started once for the package's tests that
    each run their own mission on it (starting a stack is most of such a test's time)."""
    database = create_database(database_url)
    stack = stack_for(tmp_path_factory.mktemp("shared"), shared_model[0], database)
    # The runner killed mid-mission there: its held task comes back within seconds (the
    # runner keeps a message it works on alive every 2 s; longer than the default 4 s, so
    # a worker starved on a loaded machine does not see its message delivered again).
    stack.env["AETHER_AGENT_ACK_WAIT_SECONDS"] = "6"
    # Every step reported, so a test can look for one: by default progress is sampled, one
    # report every 5 s and the first 5 s into an attempt, which these take less than.
    stack.env["AETHER_AGENT_PROGRESS_SECONDS"] = "0"
    # A killed runner's entry in the registry of runners is gone within 6 s (each live
    # runner writes its own every 2 s): test_runner_registry waits for that.
    stack.env["AETHER_RUNNER_ENTRY_SECONDS"] = "6"
    try:
        await asyncio.to_thread(stack.start)
        yield stack
    finally:
        await asyncio.to_thread(stack.stop)


@pytest.fixture
def answer_with(
    shared_model: tuple[MessagesServer, ScriptedModel],
) -> Iterator[Callable[[Responder], None]]:
    """Has the package's model server answer this test with a script of its own (another
    plan, other task scripts), so that a test needing one runs its mission on the
    package's stack rather than starting a stack for it; the package's script answers
    again afterwards. The package's tests run one at a time, each waiting for its mission
    to end, so no other mission is asking meanwhile."""
    server, script = shared_model
    try:
        yield lambda responder: setattr(server, "responder", responder)
    finally:
        server.responder = script

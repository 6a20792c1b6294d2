"""The ports the planner's handlers ask the model and read the repository through.

``PlanningModel`` is one model call for one step of planning: the repository context,
the mission text, whether only a plan is acceptable, and the rejected reply to correct.
``adapters.model.PlannerModel`` is the real adapter (the anthropic SDK, over HTTP, to the
configured Messages API endpoint); ``aether_planner.testing.ScriptedPlannerModel`` the
fake for handler tests, answering from a script. ``tests/test_model_contract.py`` runs
the same assertions against both; a behaviour it does not check is not promised.

``RepositoryReader`` reads files of a mission's repository at its base commit; its one
adapter is the runtime's client of the git broker's read API
(``aether_runtime.broker_read.BrokerRead``), and the tests serve it the broker's own read
API: there is no fake of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from aether_events.diffs import RepositoryFiles
from aether_planner.adapters.journal import CallJournal
from aether_planner.adapters.model import Decision

if TYPE_CHECKING:
    from anthropic.types import Message


class PlanningModel(Protocol):
    """Asks the model once per step and decodes its reply into a ``Decision``.

    A reply that calls no tool, an unknown tool, or a tool whose input does not fit its
    schema is a ``Decision`` of kind ``none`` with the ``problem``; a model that cannot be
    reached, or answers with an error, raises ``ModelUnavailable``. With a ``journal``, a
    step (``key``) already answered is replayed from it (``replayed``), not asked again.
    """

    journal: CallJournal | None

    async def call(
        self,
        *,
        key: str,
        model: str,
        context: str,
        mission: str,
        plan_only: bool,
        correction: tuple[Message, str] | None = None,
    ) -> Decision:
        """The decision for step ``key``; ``correction``: the rejected reply and why."""
        ...


class RepositoryReader(Protocol):
    """The text of files at a commit of a mission's repository (its reference as the
    mission gave it); raises ``aether_runtime.broker_read.BrokerReadFailed`` when it
    cannot say."""

    async def files(
        self, repository: str, commit: str, paths: Sequence[str]
    ) -> RepositoryFiles: ...

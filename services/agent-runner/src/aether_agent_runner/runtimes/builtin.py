"""The built-in runtime: Aether's own tool-use loop (``aether_agent_runner.adapters.model``), which
journals every step and so resumes a conversation a dead runner left."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aether_agent_runner import metrics
from aether_agent_runner.adapters.conversation import Conversation
from aether_agent_runner.adapters.git import GitDir, reset_to, tree_listing
from aether_agent_runner.adapters.journal import Journal
from aether_agent_runner.adapters.model import Agent, Outcome
from aether_agent_runner.adapters.search import SKIPPED_DIRECTORIES
from aether_agent_runner.domain import Limits
from aether_agent_runner.runtimes import BUILTIN, FreshStart, Job
from aether_agent_runner.runtimes.prompt import (
    MAX_MAP_ENTRIES,
    SYSTEM,
    repository_view,
    task_prompt,
)
from aether_agent_runner.runtimes.roles import role_prompt
from aether_events import WorkspaceReady
from aether_llm.client import LazyClient, client_of
from aether_llm.streamed import UnreadableToolInput

if TYPE_CHECKING:
    import anthropic
    from anthropic.types import TextBlockParam

log = logging.getLogger("aether.agent-runner")

# How far back from its journal's last reply a resumed attempt emits the replies' usage
# again: far longer than the attempt's stream holds one (``TRANSCRIPT_LINGER``), however
# slowly the machine ran; a usage stored already is a duplicate the stream drops.
RESENT_USAGE_SECONDS = 5.0


@dataclass
class BuiltinRuntime:
    # A ``LazyClient`` is built at the first attempt, the anthropic SDK imported with it.
    client: anthropic.AsyncAnthropic | LazyClient
    max_output_tokens: int = 8192
    name: str = BUILTIN

    async def run(self, job: Job) -> Outcome:
        records = job.records
        if records is None:
            records = await asyncio.to_thread(job.journal.read)
        # Begun by the runner in its preparation hand-off: the journal held nothing of
        # this attempt's then (``begin_fresh``).
        fresh = job.fresh
        resumed = None if fresh is not None else Conversation.from_records(records, job.identity)
        if resumed is None:
            if records:
                log.warning("the journal in the worktree is not this attempt's; starting over")
            if fresh is None:
                fresh = await asyncio.to_thread(_start_over, job)
            discarded, conversation, begin = fresh.discarded, fresh.conversation, fresh.begin
            if discarded:
                log.warning("restarting cleanly: discarded changes no transcript accounts for")
            if job.transcript is not None:
                await job.transcript.journaled(begin, 0)
        else:
            conversation = resumed
            metrics.RESUMED.inc()
            log.info(
                "resuming the attempt from its journal",
                extra={"turns": conversation.turns, "tool_calls": conversation.tool_calls},
            )
            # The last calls' usage may not have been published before the crash (the
            # attempt's stream holds it a moment: ``adapters.stream``); the same event id
            # makes a repeat a duplicate the stream drops.
            for turn, usage in conversation.last_replies(RESENT_USAGE_SECONDS):
                await job.observer.model_called(turn, usage)
            if job.transcript is not None:
                # Entries published before the stop may not all have reached the stream;
                # the same sequences (so ids) make the repeats ones the gateway drops.
                for index, record in enumerate(records):
                    await job.transcript.journaled(record, index)
        job.toolbox.workspace.changed = list(conversation.changed)
        client = await client_of(self.client)
        import anthropic  # imported with the client: here only to name its errors

        agent = Agent(
            client=client,
            model=job.ready.model,
            system=system_for(job),
            toolbox=job.toolbox,
            limits=job.limits,
            journal=job.journal.write,
            journal_syncs=job.journal.syncs,
            sync=job.journal.sync,
            observer=job.observer,
            has_changes=job.has_changes,
            changes_now=job.changes_now,
            max_output_tokens=self.max_output_tokens,
            on_record=job.transcript.journaled if job.transcript is not None else None,
        )
        try:
            return await agent.run(conversation)
        except anthropic.APIStatusError as error:
            retry = error.status_code in (408, 409, 429) or error.status_code >= 500
            reason = f"model call failed: {error.status_code} {_api_message(error)}"
            return Outcome(False, reason=reason, retryable=retry)
        except anthropic.APIError as error:
            return Outcome(False, reason=f"model call failed: {error}", retryable=True)
        except UnreadableToolInput as error:
            # A reply is the model's to make; another attempt (the scheduler's retries
            # are bounded) may read otherwise. The arguments themselves are left out.
            reason = f"the model's reply could not be read: {str(error).split('. JSON: ')[0]}"
            return Outcome(False, reason=reason[:1000], retryable=True)


def _start_over(job: Job) -> FreshStart:
    return begin_fresh(job.git, job.ready, job.limits, job.journal, job.identity)


def begin_fresh(
    git: GitDir,
    ready: WorkspaceReady,
    limits: Limits,
    journal: Journal,
    me: dict[str, Any],
    *,
    checked_out: bool = False,
) -> FreshStart:
    """Reset the worktree to the attempt's base, then begin the conversation and its
    journal, in the caller's thread: one worker thread's work (under load each hand-off
    costs a few milliseconds), the runner's own preparation hand-off when it can tell a
    fresh built-in attempt in advance. Blocking; the attempt's lock must be held.

    ``checked_out``: the worktree is as the git broker checked it out at the base, with
    nothing run in it since (``Attempts._prepare`` says when): not scanned again."""
    discarded = False if checked_out else reset_to(git, ready.base_sha)
    # A checkout holds exactly the base's tree: its map is read from the tree.
    listing = (
        tree_listing(git, ready.base_sha, MAX_MAP_ENTRIES, SKIPPED_DIRECTORIES)
        if checked_out
        else None
    )
    repo_map, skills = repository_view(git.worktree, listing)
    conversation = Conversation.fresh(task_prompt(ready, repo_map, limits, skills))
    begin = conversation.begin_record(me)
    journal.start(begin)
    return FreshStart(discarded, conversation, begin, checked_out)


def system_for(job: Job) -> list[TextBlockParam]:
    """The standing instructions, then the task's role (both cached: they do not change
    during the attempt)."""
    if job.role is None:
        return SYSTEM
    text = SYSTEM[0]["text"] + "\n" + role_prompt(job.role)
    return [{"type": "text", "text": text, "cache_control": {"type": "ephemeral"}}]


def _api_message(error: anthropic.APIStatusError) -> str:
    with contextlib.suppress(Exception):
        body = error.body
        if isinstance(body, dict):
            inner = body.get("error")
            if isinstance(inner, dict) and inner.get("message"):
                return str(inner["message"])
    return error.message

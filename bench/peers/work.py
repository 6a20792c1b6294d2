"""The git work of one task, shared by every orchestrator the peers benchmark runs.

Exactly what ``bench/overhead.py``'s plain loop does per task, with the adapters the
services use: a task branch and worktree at the integration head (git broker), one file
written and committed (agent runner), a merge into the integration branch and the worktree
removed (git broker). The broker's adapter serialises its own operations, as the one git
broker does; the commit runs outside it, as an agent runner's does.

With an ``agent`` (``ModelCalls``), each task also makes ``bench/overhead.py``'s no-work
agent's two model calls, one before the write and one after the commit, so every system
does the same agent work as well as the same git work.

Imported both by the product's environment and by the peers' own (which has the product's
packages installed beside LangGraph and Prefect).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import anthropic

from aether_agent_runner.adapters.git import GitDir, commit_all
from aether_git_broker.adapters.git import GitRepositories

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model_call import agent_request

INTEGRATION = "bench/integration"


class ModelCalls:
    """One model call as the built-in loop makes it: the request streamed through the
    anthropic SDK and every event's data decoded (``aether_llm.streamed`` folds them the
    same way), here with the SDK's synchronous client, which threads may share."""

    def __init__(self, url: str) -> None:
        self._client = anthropic.Anthropic(api_key="bench", base_url=url, max_retries=0)
        self._request = agent_request()

    def __call__(self) -> int:
        events = 0
        with self._client.messages.with_streaming_response.create(
            **self._request, stream=True
        ) as response:
            for line in response.iter_lines():
                if line.startswith("data:"):
                    json.loads(line[5:])
                    events += 1
        return events


@dataclass
class GitWork:
    """One repository's integration branch, and the tasks' work on it."""

    repository: Path
    worktrees: Path
    git: GitRepositories
    base_sha: str
    agent: Callable[[], object] | None = None

    @classmethod
    def prepare(
        cls, repository: Path, worktrees: Path, agent: Callable[[], object] | None = None
    ) -> GitWork:
        git = GitRepositories()
        outcome = git.prepare_repository(str(repository), "main", INTEGRATION)
        return cls(repository, worktrees, git, outcome.base_sha, agent)

    def task(self, number: int) -> str:
        """Branch, write, commit, merge, clean up; returns the integration head."""
        task_id = f"t{number}"
        ws = self.git.prepare_workspace(
            str(self.repository),
            INTEGRATION,
            f"bench-tasks/{task_id}",
            str(self.worktrees / task_id),
        )
        if self.agent is not None:
            self.agent()
        target = Path(ws.worktree_path) / "bench" / f"f{number}.txt"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(f"{task_id}\n")
        records = GitDir.linked(Path(ws.worktree_path), Path(ws.git_dir), ws.branch)
        sha, _ = commit_all(records, f"{task_id}\n\nAether-Task: {task_id}\nAether-Attempt: 1\n")
        assert sha is not None
        if self.agent is not None:
            self.agent()
        merged = self.git.merge(
            repository_path=str(self.repository),
            integration_branch=INTEGRATION,
            since_sha=self.base_sha,
            mission_id="bench",
            task_id=task_id,
            attempt=1,
            commit_sha=sha,
            now=datetime.now(UTC),
        )
        self.git.remove_worktree(str(self.repository), ws.worktree_path)
        if merged.kind not in ("merged", "fast_forward"):
            raise RuntimeError(f"{task_id} did not merge: {merged.kind} {merged.detail}")
        return merged.sha

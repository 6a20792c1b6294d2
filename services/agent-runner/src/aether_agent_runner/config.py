"""The agent runner's settings, read from the environment."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import msgspec

from aether_agent_runner.adapters.git import CommitLimits
from aether_agent_runner.adapters.transcript import TranscriptSettings, check_patterns
from aether_agent_runner.domain import Limits
from aether_agent_runner.runtimes.spec import CommandSpec, load_specs
from aether_sandbox import SandboxSettings

# Programs the agent may run *unconfined* when AETHER_AGENT_COMMANDS is not set:
# interpreters, test runners, linters and read-only text tools. Shells, env, xargs and git
# are left out on purpose: each would run anything else or move the task branch under the
# runner. Inside a real sandbox the default is any program: an interpreter can run
# anything anyway, and the sandbox, not the list, is what confines it.
DEFAULT_COMMANDS: tuple[str, ...] = (
    "python",
    "python3",
    "pytest",
    "ruff",
    "mypy",
    "node",
    "npm",
    "make",
    "go",
    "cargo",
    "ls",
    "cat",
    "head",
    "tail",
    "wc",
    "grep",
    "diff",
    "sort",
    "echo",
)


class AgentSettings(msgspec.Struct, frozen=True, kw_only=True):
    """What bounds one agent, how many run per process, and what its commands may do.

    ``commands`` is the allow-list of program names (``None``: any program); read from
    the environment it defaults to any program inside a sandbox and to
    ``DEFAULT_COMMANDS`` when an operator runs commands unconfined. ``sandbox`` says how
    commands are confined (``AETHER_SANDBOX*``).

    ``git_url`` is the git broker's smart HTTP server (``http://broker:port``), with
    ``git_token`` its token: with it set, an attempt whose worktree path does not exist here
    (or every attempt, when ``git_fetch`` is ``"always"``) is fetched into a clone under
    ``work_dir`` and its commit pushed back to the task branch.
    """

    concurrency: int = 2
    # Short: a delivery lost with a restarting NATS server waits this long (a running
    # agent keeps its message alive with in-progress acks however long it works).
    ack_wait_seconds: float = 10.0
    max_turns: int = 40
    max_output_tokens: int = 8192
    max_tokens: int = 2_000_000
    max_seconds: float = 1800.0
    max_cost_usd: float | None = 5.0
    commands: tuple[str, ...] | None = DEFAULT_COMMANDS
    command_timeout_seconds: float = 120.0
    command_output_chars: int = 16_000
    command_env: tuple[str, ...] = ()
    search_timeout_seconds: float = 20.0
    heartbeat_seconds: float = 10.0
    progress_seconds: float = 5.0
    git_url: str | None = None
    git_token: str = ""
    git_fetch: str = "auto"
    git_timeout_seconds: float = 300.0
    work_dir: str = ""
    # The runtime of a task that names none (``aether_agent_runner.runtimes``).
    runtime: str = "builtin"
    claude_code_cli: str | None = None
    # Other CLI agents as runtimes (``AETHER_AGENT_COMMAND_RUNTIMES``: a JSON file).
    command_runtimes: tuple[CommandSpec, ...] = ()
    sandbox: SandboxSettings = msgspec.field(default_factory=SandboxSettings)
    # The most one attempt's commit may carry; above it the task fails with the reason.
    commit_max_files: int = 2_000
    commit_max_blob_bytes: int = 10_000_000
    commit_max_bytes: int = 100_000_000
    # How much of each step the transcript keeps, and what more it redacts.
    transcript: TranscriptSettings = msgspec.field(default_factory=TranscriptSettings)

    def commit_limits(self) -> CommitLimits:
        return CommitLimits(
            max_files=self.commit_max_files,
            max_blob_bytes=self.commit_max_blob_bytes,
            max_total_bytes=self.commit_max_bytes,
        )

    def fetches(self, worktree_exists: bool) -> bool:
        """Whether an attempt is fetched and pushed rather than worked in its worktree."""
        if not self.git_url:
            return False
        return self.git_fetch == "always" or not worktree_exists

    def clones_dir(self) -> Path:
        """Where fetched attempts are cloned."""
        if self.work_dir:
            return Path(self.work_dir)
        return Path(tempfile.gettempdir()) / "aether-agent-work"

    def limits(self, task_max_cost_usd: float | None) -> Limits:
        """The limits of one task. Its cost cap is the smaller of the task's own (what the
        scheduler says the mission's budget has left) and this runner's per-task cap."""
        caps = [cap for cap in (task_max_cost_usd, self.max_cost_usd) if cap is not None]
        return Limits(
            max_turns=self.max_turns,
            max_tokens=self.max_tokens,
            max_seconds=self.max_seconds,
            max_cost_usd=min(caps) if caps else None,
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AgentSettings:
        env = os.environ if env is None else env
        default = cls()

        def number(name: str, fallback: float) -> float:
            raw = env.get(name, "").strip()
            return float(raw) if raw else fallback

        def names(raw: str) -> tuple[str, ...]:
            return tuple(part for part in raw.replace(",", " ").split() if part)

        sandbox = SandboxSettings.from_env(env)
        commands: tuple[str, ...] | None = None if not sandbox.unconfined else default.commands
        raw_commands = env.get("AETHER_AGENT_COMMANDS")
        if raw_commands is not None:
            listed = names(raw_commands)
            if listed == ("*",):
                commands = None
            elif listed in ((), ("none",)):
                commands = ()
            else:
                commands = listed
        raw_cost = env.get("AETHER_AGENT_MAX_COST_USD", "").strip().lower()
        max_cost = (
            None
            if raw_cost in ("none", "off")
            else (float(raw_cost) if raw_cost else default.max_cost_usd)
        )
        git_fetch = env.get("AETHER_AGENT_GIT_FETCH", "").strip().lower() or default.git_fetch
        if git_fetch not in ("auto", "always"):
            raise ValueError(f"AETHER_AGENT_GIT_FETCH must be auto or always, not {git_fetch!r}")
        git_url = env.get("AETHER_AGENT_GIT_URL", "").strip() or None
        # Optional: the broker hands each attempt a token of its own in WorkspaceReady.
        git_token = env.get("AETHER_AGENT_GIT_TOKEN", "")
        return cls(
            concurrency=max(1, int(number("AETHER_AGENT_CONCURRENCY", default.concurrency))),
            ack_wait_seconds=number("AETHER_AGENT_ACK_WAIT_SECONDS", default.ack_wait_seconds),
            max_turns=int(number("AETHER_AGENT_MAX_TURNS", default.max_turns)),
            max_output_tokens=int(
                number("AETHER_AGENT_MAX_OUTPUT_TOKENS", default.max_output_tokens)
            ),
            max_tokens=int(number("AETHER_AGENT_MAX_TOKENS", default.max_tokens)),
            max_seconds=number("AETHER_AGENT_MAX_SECONDS", default.max_seconds),
            max_cost_usd=max_cost,
            commands=commands,
            command_timeout_seconds=number(
                "AETHER_AGENT_COMMAND_TIMEOUT_SECONDS", default.command_timeout_seconds
            ),
            command_output_chars=int(
                number("AETHER_AGENT_COMMAND_OUTPUT_CHARS", default.command_output_chars)
            ),
            command_env=names(env.get("AETHER_AGENT_COMMAND_ENV", "")),
            search_timeout_seconds=number(
                "AETHER_AGENT_SEARCH_TIMEOUT_SECONDS", default.search_timeout_seconds
            ),
            heartbeat_seconds=number("AETHER_AGENT_HEARTBEAT_SECONDS", default.heartbeat_seconds),
            progress_seconds=number("AETHER_AGENT_PROGRESS_SECONDS", default.progress_seconds),
            git_url=git_url,
            git_token=git_token,
            git_fetch=git_fetch,
            git_timeout_seconds=number(
                "AETHER_AGENT_GIT_TIMEOUT_SECONDS", default.git_timeout_seconds
            ),
            work_dir=env.get("AETHER_AGENT_WORK_DIR", "").strip(),
            runtime=env.get("AETHER_AGENT_RUNTIME", "").strip().lower() or default.runtime,
            claude_code_cli=env.get("AETHER_CLAUDE_CODE_CLI", "").strip() or None,
            command_runtimes=(
                load_specs(specs) if (specs := env.get("AETHER_AGENT_COMMAND_RUNTIMES")) else ()
            ),
            sandbox=sandbox,
            commit_max_files=int(number("AETHER_AGENT_COMMIT_MAX_FILES", default.commit_max_files)),
            commit_max_blob_bytes=int(
                number("AETHER_AGENT_COMMIT_MAX_BLOB_BYTES", default.commit_max_blob_bytes)
            ),
            commit_max_bytes=int(number("AETHER_AGENT_COMMIT_MAX_BYTES", default.commit_max_bytes)),
            transcript=TranscriptSettings(
                entry_chars=max(
                    200,
                    int(number("AETHER_AGENT_TRANSCRIPT_CHARS", default.transcript.entry_chars)),
                ),
                # Regular expressions, one a line (commas may be part of one).
                redact=check_patterns(
                    line.strip()
                    for line in env.get("AETHER_AGENT_TRANSCRIPT_REDACT", "").splitlines()
                    if line.strip()
                ),
            ),
        )

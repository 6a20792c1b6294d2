"""The agent runner's settings, read from the environment."""

from __future__ import annotations

import socket
import tempfile
from pathlib import Path
from typing import Annotated, ClassVar, Literal

import msgspec

from aether_agent_runner.adapters.git import CommitLimits
from aether_agent_runner.adapters.transcript import (
    RUN_STRIDE,
    TranscriptSettings,
    check_patterns,
)
from aether_agent_runner.domain import Limits
from aether_agent_runner.runtimes import KNOWN
from aether_agent_runner.runtimes.cli_limits import CliLimits
from aether_agent_runner.runtimes.spec import CommandSpec, load_specs
from aether_llm import LLMSettings
from aether_runtime.consumers import DEFAULT_ACK_WAIT_SECONDS
from aether_runtime.runner_secrets import retired_shared_secret
from aether_runtime.settings import (
    ENV,
    AtLeastOne,
    Env,
    EnvSettings,
    HttpUrl,
    Names,
    NonNegative,
    NonNegativeInt,
    Positive,
    RuntimeSettings,
    ServiceSettings,
    SettingsError,
    lines,
    names,
    none_or,
    setting,
)
from aether_sandbox import SandboxSettings

SERVICE_NAME = "agent-runner"

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


def commands(raw: str) -> tuple[str, ...] | None:
    """``AETHER_AGENT_COMMANDS``: program names; ``*`` any; empty or ``none``: none."""
    listed = names(raw)
    if listed == ("*",):
        return None
    if listed in ((), ("none",)):
        return ()
    return listed


def at_least_one(raw: str) -> int:
    return max(1, int(raw))


def redact_patterns(raw: str) -> tuple[str, ...]:
    """Regular expressions, one a line (commas may be part of one), each checked."""
    return check_patterns(lines(raw))


def entry_chars(raw: str) -> int:
    return max(200, int(raw))


def max_entries(raw: str) -> int:
    # Below the stride that numbers a restarted run's entries after the earlier runs'.
    return min(max(1, int(raw)), RUN_STRIDE - 1)


class TranscriptEnv(EnvSettings, frozen=True, kw_only=True):
    """How much of each step the transcript keeps, and what more it redacts."""

    entry_chars: Annotated[int, Env(parse=entry_chars)] = setting(
        "AETHER_AGENT_TRANSCRIPT_CHARS", TranscriptSettings().entry_chars
    )
    redact: Annotated[tuple[str, ...], Env(parse=redact_patterns)] = setting(
        "AETHER_AGENT_TRANSCRIPT_REDACT", ()
    )
    max_entries: Annotated[int, Env(parse=max_entries)] = setting(
        "AETHER_AGENT_TRANSCRIPT_MAX_ENTRIES", TranscriptSettings().max_entries
    )

    def settings(self) -> TranscriptSettings:
        return TranscriptSettings(
            entry_chars=self.entry_chars, redact=self.redact, max_entries=self.max_entries
        )


class AgentSettings(EnvSettings, frozen=True, kw_only=True):
    """What bounds one agent, how many run per process, and what its commands may do.

    ``commands`` is the allow-list of program names (``None``: any program); read from
    the environment it defaults to any program inside a sandbox and to
    ``DEFAULT_COMMANDS`` when an operator runs commands unconfined. ``sandbox`` says how
    commands are confined (``AETHER_SANDBOX*``).

    ``git_url`` is the git broker's smart HTTP server (``http://broker:port``), with
    ``git_token`` its token: with it set, an attempt whose worktree path does not exist here
    (or every attempt, when ``git_fetch`` is ``"always"``) is fetched into a clone under
    ``work_dir`` and its commit pushed back to the task branch. The token is optional: the
    broker hands each attempt a token of its own in WorkspaceReady.
    """

    concurrency: Annotated[int, Env(parse=at_least_one)] = setting("AETHER_AGENT_CONCURRENCY", 2)
    # Short: a delivery lost with a restarting NATS server, or held by a runner that was
    # killed, waits this long for a runner (a running agent keeps its message alive with
    # in-progress acks however long it works).
    ack_wait_seconds: Positive = setting("AETHER_AGENT_ACK_WAIT_SECONDS", DEFAULT_ACK_WAIT_SECONDS)
    max_turns: AtLeastOne = setting("AETHER_AGENT_MAX_TURNS", 40)
    max_output_tokens: AtLeastOne = setting("AETHER_AGENT_MAX_OUTPUT_TOKENS", 8192)
    max_tokens: AtLeastOne = setting("AETHER_AGENT_MAX_TOKENS", 2_000_000)
    max_seconds: Positive = setting("AETHER_AGENT_MAX_SECONDS", 1800.0)
    # ``none`` or ``off``: no cap of the runner's own (the mission's budget still caps).
    max_cost_usd: Annotated[
        NonNegative | None, Env(parse=none_or(float, words=("none", "off")))
    ] = setting("AETHER_AGENT_MAX_COST_USD", 5.0)
    commands: Annotated[tuple[str, ...] | None, Env(parse=commands, keep_empty=True)] = setting(
        "AETHER_AGENT_COMMANDS", DEFAULT_COMMANDS
    )
    command_timeout_seconds: Positive = setting("AETHER_AGENT_COMMAND_TIMEOUT_SECONDS", 120.0)
    command_output_chars: AtLeastOne = setting("AETHER_AGENT_COMMAND_OUTPUT_CHARS", 16_000)
    command_env: Names = setting("AETHER_AGENT_COMMAND_ENV", ())
    search_timeout_seconds: Positive = setting("AETHER_AGENT_SEARCH_TIMEOUT_SECONDS", 20.0)
    heartbeat_seconds: Positive = setting("AETHER_AGENT_HEARTBEAT_SECONDS", 10.0)
    # The most one of the runner's own file steps of an attempt (its preparation, its
    # commit) may take in a worker thread before the attempt fails and the runner reports
    # itself not ready (``adapters.steps``): a file system that never answers.
    step_timeout_seconds: Positive = setting("AETHER_AGENT_STEP_TIMEOUT_SECONDS", 300.0)
    progress_seconds: NonNegative = setting("AETHER_AGENT_PROGRESS_SECONDS", 5.0)
    git_url: HttpUrl | None = setting("AETHER_AGENT_GIT_URL", None)
    git_token: str = setting("AETHER_AGENT_GIT_TOKEN", "")
    git_fetch: Annotated[Literal["auto", "always"], Env(parse=str.lower)] = setting(
        "AETHER_AGENT_GIT_FETCH", "auto"
    )
    git_timeout_seconds: Positive = setting("AETHER_AGENT_GIT_TIMEOUT_SECONDS", 300.0)
    work_dir: str = setting("AETHER_AGENT_WORK_DIR", "")
    # The runtime of a task that names none (``aether_agent_runner.runtimes``).
    runtime: Annotated[str, Env(parse=str.lower)] = setting("AETHER_AGENT_RUNTIME", "builtin")
    claude_code_cli: str | None = setting("AETHER_CLAUDE_CODE_CLI", None)
    # What the Claude Code CLI, and everything it starts, may use in its sandbox: larger
    # than a command's limits (a JS runtime, for the whole attempt), never off.
    claude_code_memory_mb: Positive = setting("AETHER_CLAUDE_CODE_MEMORY_MB", 4096.0)
    claude_code_processes: AtLeastOne = setting("AETHER_CLAUDE_CODE_PROCESSES", 512)
    claude_code_cpu_seconds: AtLeastOne = setting("AETHER_CLAUDE_CODE_CPU_SECONDS", 1800)
    # Other CLI agents as runtimes (a JSON file of their specs).
    command_runtimes: Annotated[tuple[CommandSpec, ...], Env(parse=load_specs)] = setting(
        "AETHER_AGENT_COMMAND_RUNTIMES", ()
    )
    sandbox: SandboxSettings = msgspec.field(default_factory=SandboxSettings)
    # The most one attempt's commit may carry; above it the task fails with the reason.
    commit_max_files: NonNegativeInt = setting("AETHER_AGENT_COMMIT_MAX_FILES", 2_000)
    commit_max_blob_bytes: NonNegativeInt = setting(
        "AETHER_AGENT_COMMIT_MAX_BLOB_BYTES", 10_000_000
    )
    commit_max_bytes: NonNegativeInt = setting("AETHER_AGENT_COMMIT_MAX_BYTES", 100_000_000)
    # How much of each step the transcript keeps, and what more it redacts.
    transcript: TranscriptSettings = msgspec.field(default_factory=TranscriptSettings)

    def __post_init__(self) -> None:
        # A default runtime this runner does not have would fail every task that names
        # none, one by one; refuse it at start instead.
        have = (*KNOWN, *(spec.name for spec in self.command_runtimes))
        if self.runtime not in have:
            raise SettingsError(
                f"AETHER_AGENT_RUNTIME={self.runtime!r} is not valid: expected "
                f"{', '.join(have[:-1])} or {have[-1]} (a command runtime is named in "
                "AETHER_AGENT_COMMAND_RUNTIMES)"
            )

    def claude_code_limits(self) -> CliLimits:
        return CliLimits(
            memory_mb=self.claude_code_memory_mb,
            processes=self.claude_code_processes,
            cpu_seconds=self.claude_code_cpu_seconds,
        )

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
    def from_env(cls, env: ENV | None = None) -> AgentSettings:
        sandbox = SandboxSettings.from_env(env)
        # Unset, the allow-list is any program inside a sandbox (which confines it) and
        # the default list when commands run unconfined.
        confined = {} if sandbox.unconfined else {"commands": None}
        return cls.load(
            env,
            defaults=confined,
            sandbox=sandbox,
            transcript=TranscriptEnv.from_env(env).settings(),
        )


class RunnerSettings(ServiceSettings, frozen=True, kw_only=True):
    """The agent runner's settings: the runtime's, the model's and the agents'."""

    DEFAULT_PORT: ClassVar[int] = 8103

    llm: LLMSettings = msgspec.field(default_factory=LLMSettings)
    agent: AgentSettings = msgspec.field(default_factory=AgentSettings)
    # The runner's name: what its secret is derived for, the holder its attempts' and its
    # registry entry's credentials name (decision 0026); empty: its host name.
    runner_name: str = setting("AETHER_RUNNER_NAME", "")
    # Its secret for asking the bus for each attempt's own credential and its entry's
    # (decisions 0014, 0022, 0026): derived for its name from the deployment's master;
    # empty: attempts publish with the service's user (a bus without per-service users).
    runner_secret: Annotated[str, Env(file="AETHER_RUNNER_SECRET_FILE")] = setting(
        "AETHER_RUNNER_SECRET", ""
    )
    # The runners' shared secret of before: refused at start (``__post_init__``).
    retired_attempt_secret: str = setting("AETHER_ATTEMPT_SECRET", "")

    def __post_init__(self) -> None:
        if self.retired_attempt_secret:
            raise SettingsError(retired_shared_secret("agent-runner"))

    @property
    def name(self) -> str:
        """The runner's name (``AETHER_RUNNER_NAME``, else its host name)."""
        return self.runner_name or socket.gethostname()

    @classmethod
    def from_env(cls, env: ENV | None = None) -> RunnerSettings:
        return cls.load(
            env,
            runtime=RuntimeSettings.for_service(cls.DEFAULT_PORT, env),
            llm=LLMSettings.from_env(env),
            agent=AgentSettings.from_env(env),
        )

"""The agent runner's own metrics (the runtime exports the common ones)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from aether_runtime.metrics import at_zero

TOOL_OUTCOMES = ("ok", "refused", "failed")

AGENTS_RUNNING = Gauge("aether_agents_running", "Agents at work in this process")
TOOL_CALLS = Counter(
    "aether_agent_tool_calls_total",
    "Tool calls the agents made, by tool and outcome (ok, refused, failed)",
    ["tool", "outcome"],
)
MODEL_CALLS = Counter("aether_agent_model_calls_total", "Model calls the agents made")
RESULTS = Counter(
    "aether_agent_results_total",
    "Attempts ended, by result (completed, empty, ended by a limit or the model, stopped, "
    "refused: a commit over the limits, credential_refused: the bus refused the attempt's "
    "credential, stuck: its preparation or commit did not return in time)",
    ["result"],
)
HANDED_ON = Counter(
    "aether_agent_handed_on_total",
    "Deliveries of attempts this runner handed back because it lacks their runtime: to a "
    "live runner that has it (elsewhere), or while none has had it for the registry's "
    "entry age yet (waiting)",
    ["why"],
)
RESUMED = Counter(
    "aether_agent_resumed_total",
    "Attempts continued from a transcript left by an earlier runner",
)
ATTEMPT_TURNS = Histogram(
    "aether_agent_attempt_turns",
    "Model turns an attempt took, once it ended",
    buckets=(1, 2, 3, 5, 8, 12, 20, 30, 45, 60),
)
# From well under a millisecond (a file tool on a small project) to a command's minutes.
_UNDER_A_SECOND = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5)
STEP_BUCKETS = (*_UNDER_A_SECOND, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
STEPS = ("preparation", "finish_check", "commit")
STEP_SECONDS = Histogram(
    "aether_agent_step_duration_seconds",
    "Time of the runner's own steps of an attempt: preparation (from the WorkspaceReady's "
    "handling to AgentStarted: lock, journal, reset, repository map; a fetched attempt's "
    "clone), finish_check (the built-in loop's look at the worktree before a finish), "
    "commit",
    ["step"],
    buckets=STEP_BUCKETS,
)
STEPS_GIVEN_UP = Counter(
    "aether_agent_steps_given_up_total",
    "The runner's own steps of an attempt (preparation, commit) given up after "
    "AETHER_AGENT_STEP_TIMEOUT_SECONDS in a worker thread that never returned; the attempt "
    "failed, retryably",
    ["step"],
)
STEPS_STUCK = Gauge(
    "aether_agent_steps_stuck",
    "Given-up steps whose worker threads have not returned (the runner is not ready meanwhile)",
)
TOOL_SECONDS = Histogram(
    "aether_agent_tool_duration_seconds",
    "Time of one tool call, by tool (a name that is no tool of the runner's: unknown)",
    ["tool"],
    buckets=STEP_BUCKETS,
)
ATTEMPT_SECONDS = Histogram(
    "aether_agent_attempt_duration_seconds",
    "Time from an agent's start to its result, by result",
    ["result"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600),
)

at_zero(HANDED_ON, why=("elsewhere", "waiting"))
at_zero(
    RESULTS,
    result=("completed", "empty", "ended", "stopped", "refused", "credential_refused", "stuck"),
)
at_zero(ATTEMPT_SECONDS, result=("completed", "empty", "ended", "refused"))
at_zero(STEP_SECONDS, step=STEPS)
at_zero(STEPS_GIVEN_UP, step=("preparation", "commit"))

"""Which settings each service of the local stack is handed: its own, and nothing else.

``aether up`` starts every service with an environment built from this table, never with
its own whole environment: no service but the gateway sees the database URL or the admin
token, only the planner and the agent runner (whose own process calls the model) see the
model's key, and each service holds its own NATS password and no other.

A name is passed when the table lists it or it starts with one of the service's prefixes
(so a new ``AETHER_AGENT_…`` setting reaches the agent runner without an edit here). The
tests compare this table with the names each service's source reads.
"""

from __future__ import annotations

from collections.abc import Mapping

# What any Python process needs to run, find its tools and write its temporary files.
COMMON_NAMES = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "VIRTUAL_ENV",
        "PYTHONPATH",
        "PYTHONHOME",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "LOG_LEVEL",
        "AETHER_HTTP_HOST",
        "AETHER_STREAM_REPLICAS",
        # The telemetry stream's retention, applied by whichever service makes the streams.
        "AETHER_TELEMETRY_MAX_AGE_SECONDS",
        "AETHER_TELEMETRY_MAX_BYTES",
        "AETHER_LOOP_STALL_SECONDS",
        "AETHER_RUNNER_ENTRY_SECONDS",
        # TLS to a bus the stack is pointed at (files' paths, not secrets themselves).
        "NATS_TLS_CA",
        "NATS_TLS_CERT",
        "NATS_TLS_KEY",
    }
)
COMMON_PREFIXES = ("LC_",)
# The services that reach outside (the model's API, remote repositories) honour proxies.
PROXY_NAMES = frozenset(
    {"HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy"}
)
MODEL_NAMES = frozenset({"ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "AETHER_PRICES_FILE"})
MODEL_PREFIXES = ("AETHER_MODEL_",)

# The secret the services' event ids are keyed with (decision 0031): every service that
# publishes events, never the agent runner.
EVENT_ID_NAMES = frozenset({"AETHER_EVENT_ID_SECRET", "AETHER_EVENT_ID_SECRET_FILE"})

SERVICE_NAMES: dict[str, frozenset[str]] = {
    "gateway": EVENT_ID_NAMES
    | {
        "DATABASE_URL",
        "AETHER_ADMIN_TOKEN",
        "AETHER_DAILY_BUDGET_USD",
        "AETHER_MONTHLY_BUDGET_USD",
        "AETHER_AGENT_STALE_SECONDS",
        "AETHER_DEFAULT_MISSION_BUDGET_USD",
        "AETHER_PRICES_FILE",
        "AETHER_TRANSCRIPT_MAX_ENTRIES",
    },
    "planner": MODEL_NAMES | PROXY_NAMES | EVENT_ID_NAMES | {"AETHER_REPOSITORY_ROOTS"},
    "scheduler": EVENT_ID_NAMES
    | {
        "AETHER_BUDGET_WARN_FRACTION",
        "AETHER_DAILY_BUDGET_USD",
        "AETHER_MONTHLY_BUDGET_USD",
        "AETHER_GLOBAL_CONCURRENCY",
        "AETHER_HEARTBEAT_TIMEOUT_SECONDS",
        "AETHER_MAX_ATTEMPTS",
        "AETHER_RETRY_BASE_SECONDS",
        "AETHER_RETRY_MAX_SECONDS",
        "AETHER_PRICES_FILE",
        # It grants the agent runners' attempt credentials (``attempt_auth``), each
        # for the runner's own name (``runner_secrets``).
        "AETHER_ATTEMPT_ISSUER_SEED",
        "AETHER_RUNNER_MASTER_SECRET",
        "AETHER_RUNNER_MASTER_SECRET_FILE",
        # Retired: passed on so that the scheduler refuses it at start, saying why.
        "AETHER_ATTEMPT_SECRET",
        "AETHER_ATTEMPT_CREDENTIAL_SECONDS",
        "AETHER_ATTEMPT_STOP_GRACE_SECONDS",
        # It cuts an ended attempt's connection (its user of the system account).
        "AETHER_SYSTEM_NATS_PASSWORD",
        # How long its lease lasts unrenewed (one active scheduler among several).
        "AETHER_LEASE_SECONDS",
    },
    # The runner's own process calls the model; the commands it runs get none of this
    # (their environment is filtered again, and they run sandboxed).
    "agent-runner": MODEL_NAMES
    | PROXY_NAMES
    | {
        "AETHER_WORKTREES_DIR",
        "AETHER_SANDBOX",
        # Its name and the secret derived for it (never the master).
        "AETHER_RUNNER_NAME",
        "AETHER_RUNNER_SECRET",
        "AETHER_RUNNER_SECRET_FILE",
        # Retired: passed on so that the runner refuses it at start, saying why.
        "AETHER_ATTEMPT_SECRET",
    },
    "git-broker": PROXY_NAMES
    | EVENT_ID_NAMES
    | {
        "AETHER_ACK_WAIT_SECONDS",
        "AETHER_BRANCH_PREFIX",
        "AETHER_MAX_LISTED_FILES",
        "AETHER_PUSH_REMOTE",
        "AETHER_REPOSITORY_ROOTS",
        "AETHER_SANDBOX",
        "AETHER_WORKTREES_DIR",
    },
}

SERVICE_PREFIXES: dict[str, tuple[str, ...]] = {
    "gateway": (
        "AETHER_GATEWAY_",
        "AETHER_OIDC_",
        "AETHER_SSE_",
        "AETHER_MISSION_RATE_",
        "AETHER_COMMAND_RATE_",
        "AETHER_READ_RATE_",
        "AETHER_STREAM_LIMIT",
        "AETHER_SIGN_IN_RATE_",
        "AETHER_READ_MODEL_",
        "AETHER_ESTIMATE_USD_",
    ),
    "planner": ("AETHER_PLANNER_", *MODEL_PREFIXES),
    # The tiers' model ids, to choose a task's model (not the key: AETHER_MODEL_OFFLINE).
    "scheduler": ("AETHER_SCHEDULER_", "AETHER_ESTIMATE_USD_", *MODEL_PREFIXES),
    "agent-runner": ("AETHER_AGENT_", "AETHER_SANDBOX_", "AETHER_CLAUDE_CODE_", *MODEL_PREFIXES),
    "git-broker": (
        "AETHER_GIT_",
        "AETHER_MERGE_",
        "AETHER_VERIFY",
        "AETHER_WORKTREE_",
        "AETHER_SANDBOX_",
    ),
}

# Never handed to a service by name or prefix, whatever the table above says.
NEVER = frozenset({"NATS_USER", "NATS_PASSWORD", "NATS_PASSWORD_FILE", "NATS_URL", "PORT"})


def allowed(service: str, name: str) -> bool:
    """Whether ``service`` is handed the setting ``name`` from the operator's environment."""
    if name in NEVER:
        return False
    if name in COMMON_NAMES or name.startswith(COMMON_PREFIXES):
        return True
    if name in SERVICE_NAMES[service]:
        return True
    return name.startswith(SERVICE_PREFIXES[service])


def settings_for(service: str, *sources: Mapping[str, str]) -> dict[str, str]:
    """The settings of ``sources`` (later ones win) that ``service`` may see."""
    chosen: dict[str, str] = {}
    for source in sources:
        chosen.update({name: value for name, value in source.items() if allowed(service, name)})
    return chosen

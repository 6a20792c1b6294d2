"""Every setting the code reads is in the configuration reference."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "configuration.md"
# Names that look like settings but are not: JetStream streams and a key-value bucket,
# and the variable the git broker hands its own SSH askpass program.
NOT_SETTINGS = {
    "AETHER_ASKPASS_FILE",
    "AETHER_MISSIONS",
    "AETHER_TELEMETRY",
    "AETHER_PLANNER_CALLS",
    "AETHER_RUNNERS",
    "AETHER_LEASES",
}
INFRASTRUCTURE = {"NATS_URL", "DATABASE_URL", "PORT", "LOG_LEVEL", "XDG_STATE_HOME"}
_NAME = re.compile(r"[\"']((?:AETHER|ANTHROPIC)_[A-Z0-9_]+)[\"']")
# f"AETHER_MODEL_{tier.upper()}": one setting per tier.
_TEMPLATE = re.compile(r"f[\"']((?:AETHER|ANTHROPIC)_[A-Z0-9_]*)\{tier\.upper\(\)\}[\"']")
TIERS = ("SMALL", "STANDARD", "COMPLEX")


def settings_in_code() -> set[str]:
    found = set(INFRASTRUCTURE)
    sources = [*ROOT.glob("libs/*/src/**/*.py"), *ROOT.glob("services/*/src/**/*.py")]
    sources += ROOT.glob("src/**/*.py")
    for path in sources:
        text = path.read_text(encoding="utf-8")
        found |= set(_NAME.findall(text))
        found |= {prefix + tier for prefix in _TEMPLATE.findall(text) for tier in TIERS}
    # A name ending in "_" is a prefix (e.g. which settings a service is handed), not a setting.
    return {name for name in found if not name.endswith("_")} - NOT_SETTINGS


def test_every_setting_the_code_reads_is_in_the_configuration_reference():
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", REFERENCE.read_text(encoding="utf-8")))
    in_code = settings_in_code()
    assert len(in_code) > 60  # the scan sees the settings at all
    missing = sorted(in_code - documented)
    assert not missing, f"add to docs/configuration.md: {missing}"


def declared_settings() -> dict[str, str]:
    """Every variable a settings class declares (``aether_runtime.settings``), to its class."""
    from aether_agent_runner.config import RunnerSettings, TranscriptEnv
    from aether_gateway.config import GatewaySettings, OidcEnv
    from aether_git_broker.config import GitBrokerSettings
    from aether_planner.config import PlannerSettings
    from aether_runtime.settings import EnvSettings
    from aether_scheduler.config import SchedulerSettings

    classes: list[type[EnvSettings]] = [
        GatewaySettings,
        OidcEnv,
        PlannerSettings,
        SchedulerSettings,
        RunnerSettings,
        TranscriptEnv,
        GitBrokerSettings,
    ]
    seen: set[type] = set()
    declared: dict[str, str] = {}
    while classes:
        cls = classes.pop()
        if cls in seen:
            continue
        seen.add(cls)
        classes.extend(EnvSettings.__subclasses__())
        classes.extend(cls.__subclasses__())
        if cls.__module__.startswith("aether_"):  # not a test's own example
            declared.update(dict.fromkeys(cls.declared(), cls.__name__))
    return declared


def test_every_declared_setting_is_in_the_configuration_reference():
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", REFERENCE.read_text(encoding="utf-8")))
    declared = declared_settings()
    # Every service's settings class, and the runtime's, declare their variables.
    assert {"NATS_URL", "AETHER_MAX_ATTEMPTS", "AETHER_OIDC_ISSUER", "AETHER_VERIFY"} <= set(
        declared
    )
    assert {"AETHER_PLANNER_TIER", "AETHER_AGENT_MAX_TURNS"} <= set(declared)
    missing = sorted(name for name in declared if name not in documented)
    assert not missing, f"add to docs/configuration.md: {missing}"


# A bad value of each kind, for the service that reads it: not a number, below its
# range, above it, an unknown name, a malformed URL, a file that cannot be used.
BAD_VALUES = [
    ("aether_scheduler", "AETHER_MAX_ATTEMPTS", "many"),
    ("aether_scheduler", "AETHER_MAX_ATTEMPTS", "-3"),
    ("aether_scheduler", "AETHER_BUDGET_WARN_FRACTION", "2"),
    ("aether_scheduler", "AETHER_ESTIMATE_USD_SMALL", "cheap"),
    ("aether_scheduler", "AETHER_MODEL_OFFLINE", "maybe"),
    ("aether_planner", "AETHER_PLANNER_CONCURRENCY", "-1"),
    ("aether_planner", "ANTHROPIC_BASE_URL", "api.example.com"),
    ("aether_planner", "AETHER_PRICES_FILE", "/nonexistent/prices.json"),
    ("aether_gateway", "AETHER_SSE_QUEUE_SIZE", "-1"),
    ("aether_gateway", "AETHER_DEFAULT_MISSION_BUDGET_USD", "-5"),
    ("aether_gateway", "NATS_URL", "http://127.0.0.1:4222"),
    ("aether_agent_runner", "AETHER_AGENT_RUNTIME", "no-such-runtime"),
    ("aether_agent_runner", "AETHER_AGENT_MAX_TURNS", "-1"),
    ("aether_agent_runner", "AETHER_SANDBOX_MEMORY_MB", "lots"),
    ("aether_git_broker", "AETHER_SANDBOX_WARM", "maybe"),
    ("aether_agent_runner", "AETHER_SANDBOX_SECCOMP", "maybe"),
    ("aether_git_broker", "AETHER_SANDBOX_LANDLOCK", "maybe"),
    ("aether_git_broker", "AETHER_WORKTREE_POOL", "-1"),
    ("aether_git_broker", "LOG_LEVEL", "loud"),
    # The runners' shared secret of before: every runner held what the scheduler checked.
    ("aether_scheduler", "AETHER_ATTEMPT_SECRET", "the-old-shared-secret"),
    ("aether_agent_runner", "AETHER_ATTEMPT_SECRET", "the-old-shared-secret"),
    ("aether_scheduler", "AETHER_RUNNER_MASTER_SECRET", "short"),
]


@pytest.mark.parametrize(("module", "name", "value"), BAD_VALUES)
def test_a_bad_value_stops_the_service_with_one_line_naming_it(
    module: str, name: str, value: str, tmp_path: Path
) -> None:
    env = {key: val for key, val in os.environ.items() if not key.startswith("AETHER_")}
    # Whatever else the service would need is at hand, so only the bad value can stop it;
    # a bus nobody listens on keeps a service that accepts the value from doing anything.
    env |= {
        "NATS_URL": "nats://127.0.0.1:9",
        "PORT": "0",
        "AETHER_SANDBOX": "unconfined",
        "AETHER_WORKTREES_DIR": str(tmp_path / "worktrees"),
        name: value,
    }
    try:
        ran = subprocess.run(
            [sys.executable, "-m", module],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            start_new_session=True,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{module} started with {name}={value!r}")
    lines = ran.stderr.strip().splitlines()
    assert ran.returncode == 78, ran.stderr[-2000:]
    assert len(lines) == 1, ran.stderr[-2000:]  # not a traceback
    assert name in lines[0] and "cannot start" in lines[0]


def test_a_zero_that_means_something_is_not_refused() -> None:
    # 0 planner lanes: one mission at a time (the planning bench's baseline); 0 seconds
    # between progress reports: one at every step (what the end-to-end stack asks for).
    from aether_agent_runner.config import AgentSettings
    from aether_planner.config import PlannerSettings

    assert PlannerSettings.from_env({"AETHER_PLANNER_CONCURRENCY": "0"}).concurrency == 0
    agent = AgentSettings.from_env({"AETHER_AGENT_PROGRESS_SECONDS": "0"})
    assert agent.progress_seconds == 0


@pytest.mark.parametrize(
    ("module", "wanted"),
    [
        ("aether_scheduler", "AETHER_RUNNER_MASTER_SECRET to a NEW value"),
        ("aether_agent_runner", "AETHER_RUNNER_SECRET"),
    ],
)
def test_the_runners_old_shared_secret_stops_a_service_saying_what_to_set(
    module: str, wanted: str, tmp_path: Path
) -> None:
    """Kept, it would leave every runner able to act as any other: the operator is told
    what replaces it (a master for the scheduler, a secret of its own name for a runner)."""
    env = {key: val for key, val in os.environ.items() if not key.startswith("AETHER_")}
    env |= {
        "NATS_URL": "nats://127.0.0.1:9",
        "PORT": "0",
        "AETHER_SANDBOX": "unconfined",
        "AETHER_WORKTREES_DIR": str(tmp_path / "worktrees"),
        "AETHER_ATTEMPT_SECRET": "the-old-shared-secret",
        # Even beside the new settings.
        "AETHER_RUNNER_MASTER_SECRET": "a-master-of-enough-length",
        "AETHER_RUNNER_SECRET": "a-runners-secret",
    }
    ran = subprocess.run(
        [sys.executable, "-m", module],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        start_new_session=True,
    )
    assert ran.returncode == 78, ran.stderr[-2000:]
    assert wanted in ran.stderr and "aether runner-secret NAME" in ran.stderr

"""Every setting the code reads is in the configuration reference."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "configuration.md"
# Names that look like settings but are not: JetStream streams and a key-value bucket.
NOT_SETTINGS = {"AETHER_MISSIONS", "AETHER_TELEMETRY", "AETHER_PLANNER_CALLS"}
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

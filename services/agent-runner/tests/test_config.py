"""The agent runner's settings from the environment: meanings kept, bad values refused."""

from __future__ import annotations

import pytest

from aether_agent_runner.config import RunnerSettings
from aether_runtime.settings import SettingsError


def test_the_runners_settings_hold_the_runtimes_the_models_and_the_agents() -> None:
    settings = RunnerSettings.from_env(
        {
            "PORT": "9103",
            "AETHER_AGENT_CONCURRENCY": "0",
            "AETHER_AGENT_MAX_COST_USD": "off",
            "AETHER_AGENT_RUNTIME": "Claude-Code",
            "AETHER_AGENT_TRANSCRIPT_CHARS": "10",
        }
    )
    assert settings.runtime.port == 9103
    assert settings.agent.concurrency == 1  # at least one lane
    assert settings.agent.max_cost_usd is None
    assert settings.agent.runtime == "claude-code"
    assert settings.agent.transcript.entry_chars == 200  # the least an entry keeps
    assert RunnerSettings.from_env({}).runtime.port == 8103


@pytest.mark.parametrize(
    "name",
    [
        "AETHER_AGENT_MAX_TURNS",
        "AETHER_AGENT_MAX_COST_USD",
        "AETHER_AGENT_HEARTBEAT_SECONDS",
        "AETHER_AGENT_COMMIT_MAX_BYTES",
        "AETHER_AGENT_COMMAND_RUNTIMES",
    ],
)
def test_a_value_that_is_not_one_is_refused_naming_its_variable(name: str) -> None:
    with pytest.raises(SettingsError, match=name):
        RunnerSettings.from_env({name: "lots"})

"""The agent runner's settings from the environment: meanings kept, bad values refused."""

from __future__ import annotations

import pytest

from aether_agent_runner.config import RunnerSettings
from aether_runtime.consumers import DEFAULT_ACK_WAIT_SECONDS
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


def test_a_runner_that_died_holding_work_leaves_it_as_briefly_as_any_consumer() -> None:
    """The runners' shared consumer waits for a sign of life as long as every other
    consumer (it was 10 s: a runner killed holding an attempt stalled its task that long)."""
    assert RunnerSettings.from_env({}).agent.ack_wait_seconds == DEFAULT_ACK_WAIT_SECONDS == 4.0
    set_here = RunnerSettings.from_env({"AETHER_AGENT_ACK_WAIT_SECONDS": "2.5"})
    assert set_here.agent.ack_wait_seconds == 2.5


@pytest.mark.parametrize(
    "name",
    [
        "AETHER_AGENT_MAX_TURNS",
        "AETHER_AGENT_MAX_COST_USD",
        "AETHER_AGENT_HEARTBEAT_SECONDS",
        "AETHER_AGENT_COMMIT_MAX_BYTES",
        "AETHER_AGENT_COMMAND_RUNTIMES",
        "AETHER_CLAUDE_CODE_MEMORY_MB",
        "AETHER_CLAUDE_CODE_PROCESSES",
        "AETHER_CLAUDE_CODE_CPU_SECONDS",
    ],
)
def test_a_value_that_is_not_one_is_refused_naming_its_variable(name: str) -> None:
    with pytest.raises(SettingsError, match=name):
        RunnerSettings.from_env({name: "lots"})


@pytest.mark.parametrize(
    "name",
    [
        "AETHER_CLAUDE_CODE_MEMORY_MB",
        "AETHER_CLAUDE_CODE_PROCESSES",
        "AETHER_CLAUDE_CODE_CPU_SECONDS",
    ],
)
def test_the_claude_code_clis_limits_cannot_be_turned_off(name: str) -> None:
    """The CLI's limits are numbers above 0: none of them is left off, by accident or on
    purpose (0 or off would run a prompt-injected CLI unbounded)."""
    for value in ("0", "off", "-1"):
        with pytest.raises(SettingsError, match=name):
            RunnerSettings.from_env({name: value})


def test_the_claude_code_clis_limits_are_read_from_the_environment() -> None:
    limits = RunnerSettings.from_env(
        {
            "AETHER_CLAUDE_CODE_MEMORY_MB": "1536",
            "AETHER_CLAUDE_CODE_PROCESSES": "128",
            "AETHER_CLAUDE_CODE_CPU_SECONDS": "900",
        }
    ).agent.claude_code_limits()
    assert (limits.memory_mb, limits.processes, limits.cpu_seconds) == (1536, 128, 900)
    default = RunnerSettings.from_env({}).agent.claude_code_limits()
    assert (default.memory_mb, default.processes, default.cpu_seconds) == (4096, 512, 1800)

"""The agent runner starts without the anthropic SDK: its client is built, and the SDK
imported, when the built-in runtime first calls the model (``aether_llm.client.LazyClient``),
not at every start, where it cost about 1.3 s of CPU. The CLI runtimes are given the
endpoint the client would call without it being built."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from aether_agent_runner.runtimes.command import CommandRuntime
from aether_agent_runner.runtimes.registry import runtimes
from aether_agent_runner.runtimes.spec import CommandSpec
from aether_llm import LLMSettings, make_client
from aether_llm.client import LazyClient

START = """
import sys
import aether_agent_runner.__main__
from aether_agent_runner.bootstrap import bootstrap
from aether_agent_runner.config import RunnerSettings
from aether_agent_runner.runtimes.registry import runtimes
from aether_agent_runner.runtimes.spec import CommandSpec
from aether_llm.client import LazyClient

runner = bootstrap()
settings = RunnerSettings.from_env()
select = runtimes(
    LazyClient(settings.llm), commands=(CommandSpec(name="other", command=["true"]),)
)
chosen = [select(name).name for name in ("builtin", "other", "claude-code")]
print(type(runner).__name__, *chosen, 'anthropic' in sys.modules)
"""


def test_the_runner_and_its_runtimes_are_built_without_importing_the_anthropic_sdk(
    tmp_path: Path,
) -> None:
    # Without a key: the offline model, as a stack started for tests and demos runs it.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    env["AETHER_AGENT_WORK_DIR"] = str(tmp_path)
    started = subprocess.run(
        [sys.executable, "-c", START],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        cwd=tmp_path,
    )
    assert started.stdout.split() == ["AgentRunner", "builtin", "other", "claude-code", "False"]


@pytest.mark.parametrize("base_url", ["http://127.0.0.1:9", "http://127.0.0.1:9/v1/"])
def test_a_cli_runtime_is_given_the_endpoint_the_built_client_calls(base_url: str) -> None:
    settings = LLMSettings(api_key="k", base_url=base_url)
    spec = CommandSpec(name="other", command=["true"])
    lazy = runtimes(LazyClient(settings), commands=(spec,))("other")
    built = runtimes(make_client(settings), commands=(spec,))("other")
    assert isinstance(lazy, CommandRuntime)
    assert isinstance(built, CommandRuntime)
    assert (lazy.base_url, lazy.api_key) == (built.base_url, built.api_key)
    assert lazy.base_url == base_url.rstrip("/")

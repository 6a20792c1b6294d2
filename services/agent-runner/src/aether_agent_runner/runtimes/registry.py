"""Which runtime a name stands for, built once per runner."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import TYPE_CHECKING

from aether_agent_runner.runtimes import BUILTIN, CLAUDE_CODE, KNOWN, Runtime, RuntimeUnavailable
from aether_agent_runner.runtimes.builtin import BuiltinRuntime
from aether_agent_runner.runtimes.command import CommandRuntime
from aether_agent_runner.runtimes.spec import CommandSpec
from aether_llm.client import LazyClient, endpoint_of

if TYPE_CHECKING:
    import anthropic

    from aether_agent_runner.runtimes.cli_limits import CliLimits


def runtimes(
    client: anthropic.AsyncAnthropic | LazyClient,
    max_output_tokens: int = 8192,
    claude_code_cli: str | None = None,
    commands: tuple[CommandSpec, ...] = (),
    models: frozenset[str] | None = None,
    claude_code_limits: CliLimits | None = None,
) -> Callable[[str], Runtime]:
    """The runtimes this runner has. Every runtime calls the model at the client's endpoint
    with its key; Claude Code needs the ``claude-code`` extra installed; ``commands`` are
    other CLI agents by name (a ``LazyClient`` is built at the built-in runtime's first
    call, and for the CLI agents only to learn the SDK's default URL). ``models``: what a
    CLI agent's metered call may name besides its attempt's model (``None``: any).
    ``claude_code_limits``: what the Claude Code CLI may use in its sandbox."""
    builtin = BuiltinRuntime(client, max_output_tokens)
    by_name = {spec.name: spec for spec in commands}
    for name in KNOWN:
        if name in by_name:
            raise ValueError(f"a command runtime cannot be named {name!r}")

    def select(name: str) -> Runtime:
        if name == BUILTIN:
            return builtin
        if name == CLAUDE_CODE:
            try:
                from aether_agent_runner.runtimes.claude_code import ClaudeCodeRuntime
            except ImportError as error:
                raise RuntimeUnavailable(
                    "the claude-code runtime is not installed on this runner (install "
                    f"aether-agent-runner[claude-code]): {error}"
                ) from None
            base_url, api_key = endpoint_of(client)
            return ClaudeCodeRuntime(
                base_url=base_url,
                api_key=api_key,
                cli_path=claude_code_cli,
                models=models,
                cli_limits=claude_code_limits,
            )
        if name in by_name and by_name[name].protocol == "acp":
            try:
                from aether_agent_runner.runtimes.acp_client import AcpRuntime
            except ImportError as error:
                raise RuntimeUnavailable(
                    f"the {name} runtime speaks ACP, which is not installed on this runner "
                    f"(install aether-agent-runner[acp]): {error}"
                ) from None
            return AcpRuntime(by_name[name], *endpoint_of(client), models=models)
        if name in by_name:
            return CommandRuntime(by_name[name], *endpoint_of(client), models=models)
        have = ", ".join([*KNOWN, *by_name])
        raise RuntimeUnavailable(f"unknown agent runtime {name!r}; this runner has {have}")

    return select


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def available(commands: tuple[CommandSpec, ...] = ()) -> list[str]:
    """The names of the runtimes ``runtimes`` would run here, as the runner announces
    them (``aether_runtime.runners``): the built-in loop; Claude Code where its SDK is
    installed; every command runtime, an ACP one where the ACP package is installed.
    Found without importing them (the Claude Agent SDK takes a while to import)."""
    names = [BUILTIN]
    if _installed("claude_agent_sdk"):
        names.append(CLAUDE_CODE)
    acp = _installed("acp")
    names += [spec.name for spec in commands if spec.protocol != "acp" or acp]
    return names

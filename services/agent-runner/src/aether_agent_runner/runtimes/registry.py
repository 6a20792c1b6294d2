"""Which runtime a name stands for, built once per runner."""

from __future__ import annotations

from collections.abc import Callable

import anthropic

from aether_agent_runner.runtimes import BUILTIN, CLAUDE_CODE, KNOWN, Runtime, RuntimeUnavailable
from aether_agent_runner.runtimes.builtin import BuiltinRuntime


def runtimes(
    client: anthropic.AsyncAnthropic,
    max_output_tokens: int = 8192,
    claude_code_cli: str | None = None,
) -> Callable[[str], Runtime]:
    """The runtimes this runner has. Every runtime calls the model at the client's endpoint
    with its key; Claude Code needs the ``claude-code`` extra installed."""
    builtin = BuiltinRuntime(client, max_output_tokens)

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
            return ClaudeCodeRuntime(
                base_url=str(client.base_url).rstrip("/"),
                api_key=client.api_key or "",
                cli_path=claude_code_cli,
            )
        raise RuntimeUnavailable(
            f"unknown agent runtime {name!r}; this runner has {', '.join(KNOWN)}"
        )

    return select

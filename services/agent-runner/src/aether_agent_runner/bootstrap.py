"""The one place the agent runner's real parts are built from its settings."""

from __future__ import annotations

import importlib.metadata
import logging
import os
from datetime import UTC, datetime

from aether_agent_runner.app import Adapters, AgentRunner, wire
from aether_agent_runner.config import AgentSettings, RunnerSettings
from aether_agent_runner.runtimes.registry import available, runtimes
from aether_events import new_event_id
from aether_llm.client import LazyClient
from aether_runtime.attempt_auth import AttemptCredentials
from aether_runtime.runner_secrets import runner_token
from aether_sandbox import (
    Bubblewrap,
    Sandbox,
    SandboxUnavailable,
    enforcement,
    mark_logs_unconfined,
    open_sandbox,
)
from aether_sandbox.program import program_enforcement

log = logging.getLogger("aether.agent-runner")


def bootstrap(settings: RunnerSettings | None = None) -> AgentRunner:
    """The agent runner from ``settings`` (default: the environment): the model client
    (built, and the anthropic SDK imported, when the first attempt needs it) and the
    runtimes around it, and the sandbox its agents' commands run in."""
    settings = settings or RunnerSettings.from_env()
    agent = settings.agent
    client = LazyClient(settings.llm)
    adapters = Adapters(
        runtimes=runtimes(
            client,
            agent.max_output_tokens,
            agent.claude_code_cli,
            agent.command_runtimes,
            frozenset(settings.llm.tiers.values()),
            agent.claude_code_limits(),
        ),
        sandbox=confinement(agent),
        runner_id=runner_id(settings.name),
        clock=_now,
        credentials=attempt_credentials(settings),
        runtime_names=tuple(available(agent.command_runtimes)),
        version=_version(),
        runner_name=settings.name,
    )
    runner = wire(settings, adapters)
    runner.service.on_stopped.append(client.aclose)
    return runner


def attempt_credentials(settings: RunnerSettings) -> AttemptCredentials | None:
    """How attempts publish their events: with a credential of their own, asked of the
    bus with the runner's own secret (``AETHER_RUNNER_SECRET``, derived for its name,
    which the credentials name); without the secret, with the service's user (a bus
    without per-service users)."""
    if not settings.runner_secret:
        return None
    # The name is the holder: a runner restarted under the same name (a new process id)
    # takes its attempts back at once; another runner only once their credential expired.
    log.info("asking the bus for credentials as runner %r", runner_token(settings.name))
    return AttemptCredentials(
        nats_url=settings.runtime.nats_url,
        secret=settings.runner_secret,
        runner_id=settings.name,
        tls=settings.runtime.nats_tls(),
    )


def runner_id(name: str) -> str:
    """This process among the runners of its name."""
    return f"{name}-{os.getpid()}-{new_event_id()[:6]}"


def confinement(agent: AgentSettings) -> Sandbox | SandboxUnavailable:
    """The sandbox the agents' commands run in, or why none can (then they are refused)."""
    try:
        sandbox = open_sandbox(agent.sandbox)
    except SandboxUnavailable as error:
        log.error("no sandbox can start: run_command will be refused", extra={"reason": str(error)})
        return error
    if not sandbox.confined:
        mark_logs_unconfined()
        log.warning("agent commands run UNCONFINED, as the runner's own user (AETHER_SANDBOX)")
    else:
        log.info(
            "agent commands run in a sandbox",
            extra={
                "sandbox": sandbox.name,
                "network": agent.sandbox.network,
                "egress": ",".join(agent.sandbox.egress) or None,
                "warm": agent.sandbox.warm,
                "seccomp": agent.sandbox.seccomp,
                # The Landlock ABI the sandboxes' rulesets are built for, or none.
                "landlock": sandbox.landlock if isinstance(sandbox, Bubblewrap) else None,
                **{f"limit_{name}": how for name, how in enforcement(sandbox).items()},
            },
        )
        limits = agent.claude_code_limits().of(agent.sandbox.limits)
        cli = program_enforcement(limits, agent.sandbox.cgroup)
        if "cgroup" not in cli["memory"]:
            log.warning(
                "no cgroup can be made here: the Claude Code CLI's limits are per-process "
                "rlimits (memory: %s, processes: %s)",
                cli["memory"],
                cli["processes"],
            )
        log.info(
            "the Claude Code CLI runs in the sandbox with limits of its own",
            extra={f"claude_code_limit_{name}": how for name, how in cli.items()},
        )
    return sandbox


def _version() -> str:
    try:
        return importlib.metadata.version("aether-agent-runner")
    except importlib.metadata.PackageNotFoundError:
        return ""


def _now() -> datetime:
    return datetime.now(UTC)

"""What the Claude Code CLI may use in its sandbox (kept apart from the SDK's import)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from aether_sandbox import MIB, Limits


@dataclass(frozen=True)
class CliLimits:
    """The CLI's own limits (``AETHER_CLAUDE_CODE_*``): larger than a command's, since
    they hold a JS runtime and everything it starts for the whole attempt. File size,
    open files and what it may write into the worktree are the sandbox's."""

    memory_mb: float = 4096.0
    processes: int = 512
    cpu_seconds: int = 1800

    def of(self, sandbox: Limits) -> Limits:
        return replace(
            sandbox,
            memory_bytes=int(self.memory_mb * MIB),
            processes=self.processes,
            cpu_seconds=self.cpu_seconds,
        )

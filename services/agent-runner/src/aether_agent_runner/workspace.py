"""The agent's tools, confined to one worktree.

Every path the model names is resolved (symlinks followed) and must stay inside the
worktree; ``.git`` is never readable or writable.
"""

from __future__ import annotations

import os
from pathlib import Path

MAX_READ_BYTES = 200_000


class ToolError(Exception):
    """A tool call the model made that cannot be carried out; the message goes back to it."""


class Workspace:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.changed: list[str] = []

    def resolve(self, path: str) -> Path:
        """The absolute path of ``path`` inside the worktree, or ``ToolError``."""
        if not isinstance(path, str) or not path.strip():
            raise ToolError("a path is required")
        if "\x00" in path:
            raise ToolError("the path contains a NUL byte")
        candidate = Path(path)
        if candidate.is_absolute():
            raise ToolError(f"{path!r} is absolute; use a path relative to the repository root")
        resolved = (self.root / candidate).resolve()
        if resolved != self.root and self.root not in resolved.parents:
            raise ToolError(f"{path!r} is outside the repository")
        relative = resolved.relative_to(self.root)
        if relative.parts and relative.parts[0] == ".git":
            raise ToolError("the .git directory is off limits")
        return resolved

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def list_dir(self, path: str = ".") -> str:
        target = self.resolve(path or ".")
        if not target.is_dir():
            raise ToolError(f"{path!r} is not a directory")
        entries = []
        for child in sorted(target.iterdir()):
            if child.name == ".git":
                continue
            entries.append(child.name + ("/" if child.is_dir() else ""))
        return "\n".join(entries) or "(empty)"

    def read_file(self, path: str) -> str:
        target = self.resolve(path)
        if not target.is_file():
            raise ToolError(f"{path!r} is not a file")
        data = target.read_bytes()[:MAX_READ_BYTES]
        return data.decode("utf-8", errors="replace")

    def write_file(self, path: str, content: str) -> str:
        target = self.resolve(path)
        if target.is_dir():
            raise ToolError(f"{path!r} is a directory")
        if not isinstance(content, str):
            raise ToolError("content must be a string")
        target.parent.mkdir(parents=True, exist_ok=True)
        # Write through a temporary name so a crash never leaves half a file.
        temporary = target.with_name(f".{target.name}.aether-tmp")
        temporary.write_text(content, encoding="utf-8")
        os.replace(temporary, target)
        relative = self.relative(target)
        if relative not in self.changed:
            self.changed.append(relative)
        return f"wrote {len(content.encode())} bytes to {relative}"

"""The agent's file tools, confined to one worktree.

Every path the model names is resolved (``..`` and symlinks followed, a dangling symlink's
target included) and must land inside the worktree; absolute paths and any ``.git``
component are refused, so the repository's own data and everything outside stay out of
reach. Files are replaced through a temporary name, never written in place: a crash never
leaves half a file, and a hard link to a file outside cannot carry a write out.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

MAX_READ_CHARS = 100_000
MAX_LIST_ENTRIES = 400
BINARY_SNIFF_BYTES = 8192


class ToolError(Exception):
    """A tool call the model made that cannot be carried out; the message goes back to it."""


def _is_git_name(part: str) -> bool:
    # Case-insensitive: on macOS and Windows file systems ".GIT" is the same directory.
    return part.lower() == ".git"


class Workspace:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.changed: list[str] = []

    # --- confinement --------------------------------------------------------------

    def resolve(self, path: str) -> Path:
        """The real absolute path of ``path`` inside the worktree, or ``ToolError``."""
        if not isinstance(path, str) or not path.strip():
            raise ToolError("a path is required (relative to the repository root, '.' for it)")
        if "\x00" in path:
            raise ToolError("the path contains a NUL byte")
        candidate = Path(path)
        if candidate.is_absolute():
            raise ToolError(f"{path!r} is absolute; use a path relative to the repository root")
        if any(_is_git_name(part) for part in candidate.parts):
            raise ToolError("the .git directory is off limits")
        resolved = (self.root / candidate).resolve()
        if resolved != self.root and self.root not in resolved.parents:
            raise ToolError(f"{path!r} leads outside the repository")
        relative = resolved.relative_to(self.root)
        if any(_is_git_name(part) for part in relative.parts):
            raise ToolError("the .git directory is off limits")
        return resolved

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix() or "."

    def _note_change(self, target: Path) -> None:
        relative = self.relative(target)
        if relative not in self.changed:
            self.changed.append(relative)

    # --- reading ------------------------------------------------------------------

    def list_dir(self, path: str = ".", depth: int = 1) -> str:
        """Entries under ``path`` (directories end in ``/``), ``depth`` levels deep."""
        target = self.resolve(path or ".")
        if not target.is_dir():
            raise ToolError(f"{path!r} is not a directory")
        depth = max(1, min(int(depth), 5))
        lines: list[str] = []
        more = 0

        def walk(directory: Path, level: int) -> None:
            nonlocal more
            try:
                children = sorted(directory.iterdir(), key=lambda p: p.name)
            except OSError as error:
                lines.append(f"{'  ' * level}[cannot list: {error.strerror}]")
                return
            for child in children:
                if _is_git_name(child.name):
                    continue
                if len(lines) >= MAX_LIST_ENTRIES:
                    more += 1
                    continue
                indent = "  " * level
                if child.is_symlink():
                    inside = self._inside(child)
                    suffix = "" if inside else " -> (outside the repository)"
                    lines.append(
                        f"{indent}{child.name}{'/' if inside and child.is_dir() else ''}{suffix}"
                    )
                elif child.is_dir():
                    lines.append(f"{indent}{child.name}/")
                    if level + 1 < depth:
                        walk(child, level + 1)
                else:
                    lines.append(f"{indent}{child.name}")

        walk(target, 0)
        if more:
            lines.append(f"[… {more} more entries not shown]")
        return "\n".join(lines) or "(empty)"

    def _inside(self, path: Path) -> bool:
        real = path.resolve()
        return real == self.root or self.root in real.parents

    def read_file(
        self, path: str, start_line: int | None = None, end_line: int | None = None
    ) -> str:
        """The file's text; with ``start_line``/``end_line`` (1-based, inclusive) a part.

        A whole file that fits is returned exactly as stored. A part, or a file too long
        for one answer, ends with a bracketed line saying which lines were shown.
        """
        target = self.resolve(path)
        if not target.is_file():
            raise ToolError(
                f"{path!r} is not a file" + ("" if target.exists() else " (no such path)")
            )
        data = target.read_bytes()
        if b"\x00" in data[:BINARY_SNIFF_BYTES]:
            raise ToolError(f"{path!r} is a binary file ({len(data):,} bytes); it cannot be shown")
        text = data.decode("utf-8", errors="replace")
        if start_line is None and end_line is None and len(text) <= MAX_READ_CHARS:
            return text
        lines = text.splitlines(keepends=True)
        total = len(lines)
        first = 1 if start_line is None else int(start_line)
        last = total if end_line is None else min(int(end_line), total)
        if first < 1 or (total and first > total) or last < first:
            raise ToolError(f"no such line range {first}-{last} in {path!r}: it has {total} lines")
        shown: list[str] = []
        size = 0
        for number in range(first, last + 1):
            line = lines[number - 1]
            if size + len(line) > MAX_READ_CHARS and shown:
                last = number - 1
                break
            shown.append(line)
            size += len(line)
        body = "".join(shown)
        if not body.endswith("\n"):
            body += "\n"
        more = f"; read on with start_line={last + 1}" if last < total else ""
        return f"{body}[lines {first}-{last} of {total}{more}]"

    # --- writing ------------------------------------------------------------------

    def write_file(self, path: str, content: str) -> str:
        """Create or replace a file with ``content``."""
        if not isinstance(content, str):
            raise ToolError("content must be a string")
        target = self.resolve(path)
        if target == self.root or target.is_dir():
            raise ToolError(f"{path!r} is a directory")
        target.parent.mkdir(parents=True, exist_ok=True)
        self._replace(target, content.encode("utf-8"))
        self._note_change(target)
        return f"wrote {len(content.encode()):,} bytes to {self.relative(target)}"

    def edit_file(self, path: str, old_text: str, new_text: str, replace_all: bool = False) -> str:
        """Replace the exact text ``old_text`` with ``new_text``.

        ``old_text`` must occur exactly once, unless ``replace_all``; a missing or ambiguous
        ``old_text`` is refused with the reason and where it does occur.
        """
        if not isinstance(old_text, str) or not isinstance(new_text, str):
            raise ToolError("old_text and new_text must be strings")
        if old_text == "":
            raise ToolError("old_text is empty; to create or replace a whole file use write_file")
        if old_text == new_text:
            raise ToolError("old_text and new_text are the same; nothing would change")
        target = self.resolve(path)
        if not target.is_file():
            raise ToolError(
                f"{path!r} is not a file" + ("" if target.exists() else " (no such path)")
            )
        data = target.read_bytes()
        if b"\x00" in data[:BINARY_SNIFF_BYTES]:
            raise ToolError(f"{path!r} is a binary file; it cannot be edited as text")
        text = data.decode("utf-8", errors="surrogateescape")
        count = text.count(old_text)
        if count == 0 and "\r\n" in text and "\n" in old_text and "\r\n" not in old_text:
            # The model writes \n; a file with Windows line endings keeps its own.
            old_text = old_text.replace("\n", "\r\n")
            new_text = new_text.replace("\n", "\r\n")
            count = text.count(old_text)
        name = self.relative(target)
        if count == 0:
            hint = ""
            stripped = old_text.strip()
            if stripped and stripped in text:
                line = text[: text.index(stripped)].count("\n") + 1
                hint = (
                    f" The same text without its leading/trailing whitespace occurs at line "
                    f"{line}: check indentation and blank lines."
                )
            raise ToolError(
                f"old_text was not found in {name}. It must match the file exactly, "
                f"whitespace and indentation included; read the file again and copy the "
                f"lines to change.{hint}"
            )
        if count > 1 and not replace_all:
            lines = _occurrence_lines(text, old_text)
            shown = ", ".join(str(n) for n in lines[:10]) + (", …" if len(lines) > 10 else "")
            raise ToolError(
                f"old_text occurs {count} times in {name} (at lines {shown}); include more "
                f"of the surrounding lines so it matches once, or set replace_all to true"
            )
        first_line = text[: text.index(old_text)].count("\n") + 1
        updated = (
            text.replace(old_text, new_text) if replace_all else text.replace(old_text, new_text, 1)
        )
        self._replace(target, updated.encode("utf-8", errors="surrogateescape"))
        self._note_change(target)
        replaced = count if replace_all else 1
        plural = "s" if replaced > 1 else ""
        return f"replaced {replaced} occurrence{plural} in {name} (from line {first_line})"

    def delete_file(self, path: str) -> str:
        """Delete a file (or an empty directory)."""
        target = self.resolve(path)
        if target == self.root:
            raise ToolError("the repository root cannot be deleted")
        if not target.exists():
            raise ToolError(f"{path!r} does not exist")
        name = self.relative(target)
        if target.is_dir():
            if any(target.iterdir()):
                raise ToolError(f"{name} is a directory that is not empty; delete its files first")
            target.rmdir()
        else:
            target.unlink()
        self._note_change(target)
        return f"deleted {name}"

    def _replace(self, target: Path, data: bytes) -> None:
        """Write ``data`` to ``target`` through a fresh temporary file, keeping its mode."""
        mode = None
        with contextlib.suppress(FileNotFoundError):
            mode = stat.S_IMODE(target.stat().st_mode)
        # mkstemp creates the file exclusively: a planted symlink cannot redirect it.
        handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(data)
            os.chmod(temporary, mode if mode is not None else 0o644)
            os.replace(temporary, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise


def _occurrence_lines(text: str, needle: str) -> list[int]:
    lines: list[int] = []
    start = text.find(needle)
    while start != -1:
        lines.append(text.count("\n", 0, start) + 1)
        start = text.find(needle, start + 1)
    return lines

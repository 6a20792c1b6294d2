"""The agent's file tools, confined to one worktree.

Every path the model names is walked component by component from a descriptor of the
worktree (``safefs``): symlinks that stay inside are followed, anything that leads outside,
through a ``.git`` component, or to a file that is not a regular file with a single link is
refused, even while a command swaps directories for symlinks underneath. Files are replaced
through a temporary file renamed in place within the parent's descriptor, never written in
place: a crash never leaves half a file, and a hard link to a file outside cannot carry a
write out.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from aether_agent_runner.adapters.safefs import (
    Raced,
    Refused,
    Resolved,
    Tree,
    is_git_name,
    is_temporary,
    open_dir,
)

MAX_READ_CHARS = 100_000
MAX_LIST_ENTRIES = 400
BINARY_SNIFF_BYTES = 8192
# A file larger than this is not read whole into the agent's memory.
MAX_FILE_BYTES = 20_000_000
# The block a file's size is counted in, rounded up (what ``st_blocks`` shows on most
# file systems).
_BLOCK = 4096


class ToolError(Exception):
    """A tool call the model made that cannot be carried out; the message goes back to it."""


class Workspace:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.changed: list[str] = []
        # Every path a write, an edit or a deletion went for (taken before it begins, so
        # one cut short counts too), as root-relative components.
        self.touched: set[tuple[str, ...]] = set()
        self.tree = Tree(str(self.root))
        # What the writes put on disk at most so far (bytes in whole blocks, entries made),
        # for the attempt's disk cap: counted here, it is not hidden by space freed
        # elsewhere on the same file system.
        self.written_bytes = 0
        self.written_entries = 0

    def written(self) -> tuple[int, int]:
        """Bytes and entries the writes made at most so far (``DiskWatch``'s ``known``)."""
        return self.written_bytes, self.written_entries

    # --- confinement --------------------------------------------------------------

    def locate(self, path: str) -> Resolved:
        """Where ``path`` leads inside the worktree, or ``ToolError``."""
        if not isinstance(path, str) or not path.strip():
            raise ToolError("a path is required (relative to the repository root, '.' for it)")
        try:
            return self.tree.resolve(path)
        except Refused as error:
            raise ToolError(str(error)) from None

    def resolve(self, path: str) -> Path:
        """The real absolute path of ``path`` inside the worktree, or ``ToolError``.

        Only for handing a directory to a confined command; the file tools never use a
        path, only descriptors."""
        return self.root.joinpath(*self.locate(path).parts)

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix() or "."

    def _note_change(self, target: Resolved) -> None:
        if target.text not in self.changed:
            self.changed.append(target.text)

    # --- reading ------------------------------------------------------------------

    def list_dir(self, path: str = ".", depth: int = 1) -> str:
        """Entries under ``path`` (directories end in ``/``), ``depth`` levels deep."""
        target = self.locate(path or ".")
        depth = max(1, min(int(depth), 5))
        lines: list[str] = []
        more = 0

        def walk(fd: int, prefix: tuple[str, ...], level: int) -> None:
            nonlocal more
            try:
                entries = sorted(os.listdir(fd))
            except OSError as error:
                lines.append(f"{'  ' * level}[cannot list: {error.strerror}]")
                return
            for name in entries:
                if is_git_name(name):
                    continue
                if len(lines) >= MAX_LIST_ENTRIES:
                    more += 1
                    continue
                indent = "  " * level
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISLNK(st.st_mode):
                    inside = self._inside("/".join((*prefix, name)))
                    suffix = "" if inside is not None else " -> (outside the repository)"
                    lines.append(f"{indent}{name}{'/' if inside else ''}{suffix}")
                elif stat.S_ISDIR(st.st_mode):
                    lines.append(f"{indent}{name}/")
                    if level + 1 < depth:
                        try:
                            child = open_dir(fd, name)
                        except (OSError, Raced):
                            continue
                        try:
                            walk(child, (*prefix, name), level + 1)
                        finally:
                            os.close(child)
                else:
                    lines.append(f"{indent}{name}")

        try:
            with self.tree.directory(target.parts) as fd:
                walk(fd, target.parts, 0)
        except (NotADirectoryError, FileNotFoundError, Raced):
            raise ToolError(f"{path!r} is not a directory") from None
        if more:
            lines.append(f"[… {more} more entries not shown]")
        return "\n".join(lines) or "(empty)"

    def _inside(self, path: str) -> bool | None:
        """For a symlink: ``None`` when it leads outside, else whether it is a directory."""
        try:
            st = self.tree.lstat(self.tree.resolve(path))
        except Refused:
            return None
        return st is not None and stat.S_ISDIR(st.st_mode)

    def _read(self, path: str, target: Resolved) -> bytes:
        try:
            return self.tree.read(target, MAX_FILE_BYTES)
        except FileNotFoundError:
            raise ToolError(f"{path!r} is not a file (no such path)") from None
        except NotADirectoryError:
            raise ToolError(f"{path!r} is not a file") from None
        except Refused as error:
            raise ToolError(str(error)) from None

    def read_file(
        self, path: str, start_line: int | None = None, end_line: int | None = None
    ) -> str:
        """The file's text; with ``start_line``/``end_line`` (1-based, inclusive) a part.

        A whole file that fits is returned exactly as stored. A part, or a file too long
        for one answer, ends with a bracketed line saying which lines were shown.
        """
        data = self._read(path, self.locate(path))
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
        target = self.locate(path)
        if not target.parts:
            raise ToolError(f"{path!r} is a directory")
        self.touched.add(target.parts)
        self._replace(target, content.encode("utf-8"))
        self._note_change(target)
        return f"wrote {len(content.encode()):,} bytes to {target.text}"

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
        target = self.locate(path)
        data = self._read(path, target)
        if b"\x00" in data[:BINARY_SNIFF_BYTES]:
            raise ToolError(f"{path!r} is a binary file; it cannot be edited as text")
        text = data.decode("utf-8", errors="surrogateescape")
        count = text.count(old_text)
        if count == 0 and "\r\n" in text and "\n" in old_text and "\r\n" not in old_text:
            # The model writes \n; a file with Windows line endings keeps its own.
            old_text = old_text.replace("\n", "\r\n")
            new_text = new_text.replace("\n", "\r\n")
            count = text.count(old_text)
        name = target.text
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
        self.touched.add(target.parts)
        self._replace(target, updated.encode("utf-8", errors="surrogateescape"))
        self._note_change(target)
        replaced = count if replace_all else 1
        plural = "s" if replaced > 1 else ""
        return f"replaced {replaced} occurrence{plural} in {name} (from line {first_line})"

    def delete_file(self, path: str) -> str:
        """Delete a file (or an empty directory)."""
        target = self.locate(path)
        if not target.parts:
            raise ToolError("the repository root cannot be deleted")
        self.touched.add(target.parts)
        try:
            self.tree.remove(target)
        except FileNotFoundError:
            raise ToolError(f"{path!r} does not exist") from None
        except OSError as error:
            if error.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise ToolError(
                    f"{target.text} is a directory that is not empty; delete its files first"
                ) from None
            raise
        except Refused as error:
            raise ToolError(str(error)) from None
        self._note_change(target)
        return f"deleted {target.text}"

    def remove_debris(self) -> list[str]:
        """Remove the temporary files writes cut short left (``safefs.is_temporary``: the
        file layer's own names), the first step of a resumed attempt: a write interrupted
        by the runner's death would otherwise leave its file to be committed with the
        attempt's work. Not counted as the agent's changes. Returns their paths."""
        found: list[str] = []
        for directory, subdirectories, files in os.walk(self.root, followlinks=False):
            subdirectories[:] = [name for name in subdirectories if not is_git_name(name)]
            found += [
                os.path.relpath(os.path.join(directory, name), self.root)
                for name in files
                if is_temporary(name)
            ]
        removed: list[str] = []
        for path in sorted(found):
            try:
                target = self.locate(path)
                self.touched.add(target.parts)
                self.tree.remove(target)
            except (OSError, Refused, ToolError):
                continue  # gone meanwhile, or not the file it was: left as it is
            removed.append(path)
        return removed

    def _replace(self, target: Resolved, data: bytes) -> None:
        """Write ``data`` to ``target`` through a fresh temporary file, keeping its mode."""
        # Counted before it begins (one cut short wrote some of it): its blocks and one
        # more, and the file with each directory on its way (made if missing).
        self.written_bytes += -(-len(data) // _BLOCK) * _BLOCK + _BLOCK
        self.written_entries += len(target.parts)
        try:
            self.tree.replace(target, data)
        except FileExistsError:
            raise ToolError(f"{target.text!r} cannot be made: a file is in its way") from None
        except NotADirectoryError:
            raise ToolError(f"{target.text!r} cannot be made: a file is in its way") from None
        except Refused as error:
            raise ToolError(str(error)) from None


def _occurrence_lines(text: str, needle: str) -> list[int]:
    lines: list[int] = []
    start = text.find(needle)
    while start != -1:
        lines.append(text.count("\n", 0, start) + 1)
        start = text.find(needle, start + 1)
    return lines

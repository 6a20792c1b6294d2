"""Searching the worktree with a regular expression.

``search`` is plain Python. The agent runs it in a child process
(``python -m aether_agent_runner.adapters.search``) with a timeout, because a pathological pattern
can make Python's regex engine backtrack for hours and a thread cannot be stopped.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

from aether_agent_runner.adapters.safefs import Raced, Refused, is_git_name, read_in
from aether_agent_runner.adapters.scan import MAX_DEPTH
from aether_agent_runner.adapters.workspace import BINARY_SNIFF_BYTES, ToolError, Workspace

MAX_MATCHES = 100
MAX_OUTPUT_CHARS = 20_000
MAX_LINE_CHARS = 240
MAX_FILE_BYTES = 2_000_000
SKIPPED_DIRECTORIES = frozenset(
    {
        "node_modules",
        ".venv",
        "venv",
        "__pycache__",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
        ".tox",
    }
)


def search(
    root: Path,
    pattern: str,
    path: str = ".",
    glob: str | None = None,
    ignore_case: bool = False,
    max_matches: int = MAX_MATCHES,
) -> str:
    """Lines matching ``pattern`` under ``path``, as ``file:line: text``, bounded.

    Symlinks are not followed, ``.git`` and dependency/cache directories are skipped, and
    binary or very large files, and files with more than one hard link, are left out. The
    tree is walked by directory descriptors, so a directory swapped for a symlink while
    the search runs is not followed.
    """
    workspace = Workspace(root)
    start = workspace.locate(path or ".")
    if not isinstance(pattern, str) or not pattern:
        raise ToolError("a pattern is required")
    try:
        regex = re.compile(pattern, re.IGNORECASE if ignore_case else 0)
    except re.error as error:
        raise ToolError(f"invalid regular expression {pattern!r}: {error}") from None
    max_matches = max(1, min(int(max_matches), 500))
    matches: list[str] = []
    files_with_matches: set[str] = set()
    total = 0
    size = 0
    for relative, data in _files(workspace, start.parts, glob):
        for number, line in enumerate(_lines(data), start=1):
            if not regex.search(line):
                continue
            total += 1
            files_with_matches.add(relative)
            if len(matches) >= max_matches or size >= MAX_OUTPUT_CHARS:
                continue
            text = line.rstrip("\r\n")
            if len(text) > MAX_LINE_CHARS:
                text = text[:MAX_LINE_CHARS] + " […]"
            entry = f"{relative}:{number}: {text}"
            matches.append(entry)
            size += len(entry) + 1
    where = start.text
    if not total:
        return f"no matches for /{pattern}/ under {where}"
    head = f"{total} match{'es' if total != 1 else ''} in {len(files_with_matches)} file(s)"
    if len(matches) < total:
        head += f"; showing the first {len(matches)} (narrow the pattern, path or glob)"
    return head + "\n" + "\n".join(matches)


def _files(
    workspace: Workspace, start: tuple[str, ...], glob: str | None
) -> Iterator[tuple[str, bytes]]:
    """``(relative path, bytes)`` of every file to search under ``start``, in name order."""
    tree = workspace.tree
    try:
        if start:
            with tree.directory(start[:-1]) as parent:
                st = os.stat(start[-1], dir_fd=parent, follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode):
                    data = _read(parent, start[-1], "/".join(start))
                    if data is not None:
                        yield "/".join(start), data
                    return
        with tree.directory(start) as top:
            yield from _walk(top, start, glob, 0)
    except (OSError, Raced):
        return


def _walk(
    fd: int, prefix: tuple[str, ...], glob: str | None, depth: int
) -> Iterator[tuple[str, bytes]]:
    if depth > MAX_DEPTH:
        return  # deeper than any source tree: not searched (nor a stack overflowed)
    try:
        names = sorted(os.listdir(fd))
    except OSError:
        return
    directories: list[str] = []
    for name in names:
        if is_git_name(name):
            continue
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):
            if name not in SKIPPED_DIRECTORIES:
                directories.append(name)
            continue
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_FILE_BYTES:
            continue
        relative = "/".join((*prefix, name))
        if glob and not (fnmatch.fnmatch(name, glob) or fnmatch.fnmatch(relative, glob)):
            continue
        data = _read(fd, name, relative)
        if data is not None:
            yield relative, data
    for name in directories:
        try:
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
        except OSError:
            continue  # became a symlink or went away: not followed
        try:
            yield from _walk(child, (*prefix, name), glob, depth + 1)
        finally:
            os.close(child)


def _read(parent: int, name: str, shown: str) -> bytes | None:
    try:
        return read_in(parent, name, shown, MAX_FILE_BYTES)
    except (OSError, Refused):
        return None


def _lines(data: bytes) -> list[str]:
    if b"\x00" in data[:BINARY_SNIFF_BYTES]:
        return []
    return data.decode("utf-8", errors="replace").splitlines()


def main() -> None:
    """Child-process entry: a JSON request on stdin, the answer on stdout.

    Exit status 0 with the result, 2 with a message for the model.
    """
    request = json.loads(sys.stdin.read())
    try:
        output = search(
            Path(request["root"]),
            request.get("pattern", ""),
            request.get("path") or ".",
            request.get("glob") or None,
            bool(request.get("ignore_case", False)),
            int(request.get("max_matches", MAX_MATCHES)),
        )
    except ToolError as error:
        sys.stdout.write(str(error))
        sys.exit(2)
    sys.stdout.write(output)


if __name__ == "__main__":
    main()

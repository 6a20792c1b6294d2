"""Searching the worktree with a regular expression.

``search`` is plain Python. The agent runs it in a child process
(``python -m aether_agent_runner.search``) with a timeout, because a pathological pattern
can make Python's regex engine backtrack for hours and a thread cannot be stopped.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import sys
from pathlib import Path

from aether_agent_runner.workspace import BINARY_SNIFF_BYTES, ToolError, Workspace

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
    binary or very large files are left out.
    """
    workspace = Workspace(root)
    start = workspace.resolve(path or ".")
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
    for file in _files(workspace, start, glob):
        relative = workspace.relative(file)
        for number, line in enumerate(_lines(file), start=1):
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
    where = workspace.relative(start)
    if not total:
        return f"no matches for /{pattern}/ under {where}"
    head = f"{total} match{'es' if total != 1 else ''} in {len(files_with_matches)} file(s)"
    if len(matches) < total:
        head += f"; showing the first {len(matches)} (narrow the pattern, path or glob)"
    return head + "\n" + "\n".join(matches)


def _files(workspace: Workspace, start: Path, glob: str | None) -> list[Path]:
    if start.is_file():
        return [start]
    found: list[Path] = []
    for directory, subdirectories, names in os.walk(start, followlinks=False):
        subdirectories[:] = sorted(
            d for d in subdirectories if d.lower() != ".git" and d not in SKIPPED_DIRECTORIES
        )
        for name in sorted(names):
            file = Path(directory) / name
            if file.is_symlink() or name.lower() == ".git":
                continue
            if glob and not (
                fnmatch.fnmatch(name, glob) or fnmatch.fnmatch(workspace.relative(file), glob)
            ):
                continue
            found.append(file)
    return found


def _lines(file: Path) -> list[str]:
    try:
        if file.stat().st_size > MAX_FILE_BYTES:
            return []
        data = file.read_bytes()
    except OSError:
        return []
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

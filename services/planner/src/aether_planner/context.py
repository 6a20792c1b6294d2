"""The repository as the planner sees it, trimmed to a token budget (pure).

What goes in, most useful first: branch and base commit, languages, the files the
requirement mentions, README and build files, then the file tree (collapsed to
directories when it is too long). Contents come from the caller (read-only reads of the
base commit); this module only chooses and trims.
"""

from __future__ import annotations

import posixpath
import re
from collections import Counter
from collections.abc import Mapping

from aether_events import RepoFile, RepositoryPrepared

KEY_FILES = (
    "README.md", "README.rst", "README.txt", "README",
    "pyproject.toml", "setup.py", "setup.cfg", "requirements.txt",
    "package.json", "tsconfig.json", "Cargo.toml", "go.mod", "pom.xml", "build.gradle",
    "build.gradle.kts", "Gemfile", "composer.json", "CMakeLists.txt", "Makefile",
    "Dockerfile", "docker-compose.yml", "mix.exs", "deno.json",
)  # fmt: skip

LANGUAGES = {
    ".py": "Python", ".ts": "TypeScript", ".tsx": "TypeScript", ".js": "JavaScript",
    ".jsx": "JavaScript", ".go": "Go", ".rs": "Rust", ".java": "Java", ".kt": "Kotlin",
    ".rb": "Ruby", ".php": "PHP", ".c": "C", ".h": "C", ".cc": "C++", ".cpp": "C++",
    ".hpp": "C++", ".cs": "C#", ".swift": "Swift", ".scala": "Scala", ".ex": "Elixir",
    ".exs": "Elixir", ".sh": "Shell", ".sql": "SQL", ".html": "HTML", ".css": "CSS",
    ".md": "Markdown", ".toml": "TOML", ".yaml": "YAML", ".yml": "YAML", ".json": "JSON",
}  # fmt: skip

_WORD = re.compile(r"[\w./-]+")
MAX_FILE_CHARS = 6000


def estimate_tokens(text: str) -> int:
    """A rough token count (about four characters a token), enough for budgeting."""
    return len(text) // 4 + 1


def languages(files: list[RepoFile]) -> list[tuple[str, int]]:
    """Languages by number of files, most common first."""
    counts = Counter(
        LANGUAGES[ext] for f in files if (ext := posixpath.splitext(f.path)[1].lower()) in LANGUAGES
    )
    return counts.most_common()


def mentioned_files(files: list[RepoFile], requirement: str) -> list[str]:
    """Files the requirement names, by path or by a file name with an extension."""
    words = {w.strip("./,;:()'\"`") for w in _WORD.findall(requirement)}
    paths = {f.path for f in files}
    found = [w for w in words if w in paths]
    names = {w for w in words if "." in w and "/" not in w}
    found += [f.path for f in files if posixpath.basename(f.path) in names and f.path not in found]
    return sorted(dict.fromkeys(found))


def files_to_read(prepared: RepositoryPrepared, requirement: str, limit: int = 12) -> list[str]:
    """What the planner would like to read, most useful first."""
    by_name = {f.path: f for f in prepared.files}
    wanted = mentioned_files(prepared.files, requirement)
    wanted += [name for name in KEY_FILES if name in by_name]
    nested = sorted(
        f.path
        for f in prepared.files
        if f.path.count("/") == 1 and posixpath.basename(f.path) in KEY_FILES
    )
    wanted += nested
    return list(dict.fromkeys(wanted))[:limit]


def _tree(files: list[RepoFile], budget_chars: int) -> list[str]:
    lines = [f"  {f.path} ({f.size} bytes)" for f in files]
    if sum(len(line) + 1 for line in lines) <= budget_chars:
        return lines
    # Too long: directories with their file counts, plus the top-level files.
    directories: Counter[str] = Counter()
    top: list[str] = []
    for f in files:
        head, _, rest = f.path.partition("/")
        if rest:
            second = rest.split("/", 1)[0] if "/" in rest else ""
            directories[f"{head}/{second}/" if second else f"{head}/"] += 1
        else:
            top.append(f"  {f.path} ({f.size} bytes)")
    collapsed = top + [f"  {d} ({n} files)" for d, n in sorted(directories.items())]
    out: list[str] = []
    used = 0
    for line in collapsed:
        if used + len(line) + 1 > budget_chars:
            out.append(f"  … and {len(collapsed) - len(out)} more entries")
            break
        out.append(line)
        used += len(line) + 1
    return out


def render(
    prepared: RepositoryPrepared,
    contents: Mapping[str, str],
    budget_tokens: int = 24_000,
) -> str:
    """The repository context block, within ``budget_tokens``."""
    budget = budget_tokens * 4
    langs = ", ".join(f"{name} ({count})" for name, count in languages(prepared.files)[:6])
    head = [
        f"Base branch: {prepared.base_branch} at {prepared.base_sha[:12]}",
        f"Files: {prepared.file_count}" + (" (list truncated)" if prepared.files_truncated else ""),
        f"Languages: {langs or 'unknown'}",
    ]
    text = "\n".join(head)
    sections: list[str] = []
    remaining = budget - len(text)
    # Contents first (they say the most), at most half the budget; then the tree.
    content_budget = remaining // 2
    for path, body in contents.items():
        chunk = body if len(body) <= MAX_FILE_CHARS else body[:MAX_FILE_CHARS] + "\n… (truncated)"
        block = f'<file path="{path}">\n{chunk}\n</file>'
        if len(block) > content_budget:
            continue
        sections.append(block)
        content_budget -= len(block)
        remaining -= len(block)
    tree = "File tree:\n" + "\n".join(_tree(prepared.files, max(remaining - 200, 400)))
    return "<repository>\n" + "\n\n".join([text, tree, *sections]) + "\n</repository>"

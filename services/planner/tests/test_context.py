"""Choosing and trimming the repository context."""

from __future__ import annotations

from datetime import UTC, datetime

from aether_events import RepoFile, RepositoryPrepared
from aether_planner.context import estimate_tokens, files_to_read, languages, render


def prepared(files: list[RepoFile]) -> RepositoryPrepared:
    return RepositoryPrepared(
        event_id="e",
        mission_id="m",
        occurred_at=datetime.now(UTC),
        correlation_id="c",
        repository_path="/r",
        base_branch="main",
        base_sha="a" * 40,
        integration_branch="aether/m",
        files=files,
        file_count=len(files),
    )


def test_mentioned_files_come_first_then_readme_and_build_files() -> None:
    p = prepared(
        [
            RepoFile(path=x, size=1)
            for x in [
                "README.md",
                "pyproject.toml",
                "src/export.py",
                "src/other.py",
                "web/package.json",
            ]
        ]
    )
    assert files_to_read(p, "Make export.py write JSON; see src/other.py") == [
        "src/export.py",
        "src/other.py",
        "README.md",
        "pyproject.toml",
        "web/package.json",
    ]


def test_languages_are_counted_by_extension() -> None:
    p = prepared([RepoFile(path=x, size=1) for x in ["a.py", "b.py", "c.ts", "README"]])
    assert languages(p.files) == [("Python", 2), ("TypeScript", 1)]


def test_a_large_repository_fits_the_budget_with_a_collapsed_tree() -> None:
    files = [RepoFile(path=f"pkg{i % 40}/mod{i}.py", size=100) for i in range(20_000)]
    text = render(prepared(files), {"README.md": "hello\n" * 5000}, budget_tokens=4000)
    assert estimate_tokens(text) <= 4200
    assert "pkg0/ (500 files)" in text and "Languages: Python (20000)" in text
    assert '<file path="README.md">' in text and "(truncated)" in text


def test_a_small_repository_lists_every_file() -> None:
    text = render(prepared([RepoFile(path="a.py", size=3)]), {}, budget_tokens=1000)
    assert "  a.py (3 bytes)" in text

"""Planned file scopes: which changed files they cover (scope drift is the rest)."""

from __future__ import annotations

import json
from pathlib import Path

from aether_events import AgentCompleted, decode, in_scope, outside_scope


def test_a_scope_covers_its_files_and_what_is_below_its_directories() -> None:
    scope = ["src/app.py", "docs/"]
    assert in_scope("src/app.py", scope)
    assert in_scope("docs/guide/intro.md", scope)
    assert not in_scope("src/app.pyc", scope)
    assert not in_scope("docsx/a.md", scope)
    assert in_scope("anything.txt", ["/"])


def test_files_outside_the_scope_are_listed_once_and_sorted() -> None:
    files = ["README.md", "src/app.py", "LICENSE.txt", "README.md"]
    assert outside_scope(files, ["src/"]) == ["LICENSE.txt", "README.md"]
    assert outside_scope(files, ["src/", "README.md", "LICENSE.txt"]) == []


def test_an_empty_scope_records_no_drift() -> None:
    assert outside_scope(["a.py"], []) == []


def test_a_completion_stored_before_scope_drift_decodes_without_drift() -> None:
    sample = Path(__file__).parent / "samples" / "v1" / "agent_completed.json"
    assert "files_outside_scope" not in json.loads(sample.read_bytes())
    event = decode(sample.read_bytes())
    assert isinstance(event, AgentCompleted)
    assert event.files_outside_scope == []

"""The broker's three-way merge against ``git merge-tree --write-tree``, on generated merges.

A seeded sample of the cases ``bench/merges`` runs in full (see that package for how they
are made). Every case must agree with git: the same verdict, and for a clean merge the
same tree, so the same merged blobs and modes.
"""

from __future__ import annotations

from pathlib import Path

from bench.merges.cases import KINDS, Case, corpus, involves_rename, run_cases

SAMPLE = 240


def test_merges_agree_with_git_merge_tree(tmp_path: Path) -> None:
    verdicts = list(run_cases(seed=20_261_130, count=SAMPLE, scratch=tmp_path / "r"))
    # The sample covers every kind of edit the generator makes, and has both outcomes.
    assert {v.case.kind for v in verdicts} == set(KINDS)
    assert any(v.git_clean for v in verdicts) and any(not v.git_clean for v in verdicts)
    assert any(v.git_clean and v.case.kind == "near" for v in verdicts)
    assert any(v.git_clean and involves_rename(v.case) for v in verdicts)
    disagreements = [
        (v.case.number, v.case.kind, v.git_clean, v.aether_clean) for v in verdicts if not v.agrees
    ]
    assert disagreements == []


def test_a_rename_is_recognised_as_such() -> None:
    content = (b"x\n" * 5, 0o100644)
    renamed = Case(0, "rename", {"a": content}, {"b": content}, {"a": content})
    edited = Case(0, "text", {"a": content}, {"a": (b"y\n", 0o100644)}, {"a": content})
    assert involves_rename(renamed)
    assert not involves_rename(edited)
    assert corpus()  # the real text the cases are cut from is there

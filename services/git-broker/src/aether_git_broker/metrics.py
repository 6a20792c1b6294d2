"""Metrics of the git broker (the ones every service has live in aether_runtime)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

MERGES = Counter(
    "aether_merges",
    "Task merges into integration branches, by result",
    ["result"],
)
MERGE_SECONDS = Histogram(
    "aether_merge_duration_seconds",
    "Time to merge one task attempt into its integration branch",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
WORKTREES_CREATED = Counter(
    "aether_worktrees_created",
    "Task worktrees checked out",
)

# Every result is exported from the start, so rates and dashboards see zeros, not gaps.
for _result in ("merged", "fast_forward", "conflict", "already_merged"):
    MERGES.labels(_result)

"""Metrics of the git broker (the ones every service has live in aether_runtime)."""

from __future__ import annotations

from typing import get_args

from prometheus_client import Counter, Histogram

from aether_git_broker.domain.outcomes import MergeKind, VerificationResult
from aether_runtime.metrics import at_zero

_FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_SLOW = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)

MERGES = Counter(
    "aether_merges",
    "Task merges into integration branches, by result",
    ["result"],
)
MERGE_SECONDS = Histogram(
    "aether_merge_duration_seconds",
    "Time to merge one task attempt into its integration branch (verification included)",
    buckets=_FAST,
)
WORKTREES_CREATED = Counter(
    "aether_worktrees_created",
    "Task worktrees checked out",
)
WORKTREE_SECONDS = Histogram(
    "aether_worktree_create_duration_seconds",
    "Time to create a task branch and check its worktree out",
    buckets=_FAST,
)
VERIFICATIONS = Counter(
    "aether_verifications",
    "Verification commands run on merges before the integration branch moves, by result",
    ["result"],
)
VERIFY_SECONDS = Histogram(
    "aether_verify_duration_seconds",
    "Wall time of one verification command, checkout included",
    buckets=_SLOW,
)
FETCHES = Counter(
    "aether_repository_fetches",
    "Remote repositories cloned or fetched for missions, by result",
    ["result"],
)
FETCH_SECONDS = Histogram(
    "aether_repository_fetch_duration_seconds",
    "Time to clone or fetch a mission's remote repository",
    buckets=_SLOW,
)
PUSHES = Counter(
    "aether_pushes",
    "Deliveries of completed missions' integration branches to a remote, by result",
    ["result"],
)
PUSH_SECONDS = Histogram(
    "aether_push_duration_seconds",
    "Time to push one integration branch",
    buckets=_SLOW,
)
CLEANED = Counter(
    "aether_git_cleaned",
    "Worktrees, task branches and stale lock files removed, by kind and when (step, start-up)",
    ["kind", "when"],
)
GIT_HTTP_REQUESTS = Counter(
    "aether_git_http_requests",
    "Smart HTTP requests from remote agent runners, by service and outcome",
    ["service", "outcome"],
)

# Every result is exported from the start, so rates and dashboards see zeros, not gaps.
at_zero(MERGES, result=get_args(MergeKind))
at_zero(VERIFICATIONS, result=get_args(VerificationResult))
at_zero(FETCHES, result=("cloned", "fetched", "failed"))
# ``failed``: a try that failed (retried or not); ``given_up``: the last of them.
at_zero(PUSHES, result=("pushed", "already_pushed", "failed", "given_up"))
at_zero(CLEANED, kind=("worktree", "branch", "lock"), when=("step", "start"))
at_zero(
    GIT_HTTP_REQUESTS,
    service=("git-upload-pack", "git-receive-pack"),
    outcome=("ok", "401", "403"),
)
at_zero(GIT_HTTP_REQUESTS, service=("other",), outcome=("401", "404"))

GIT_READ_REQUESTS = Counter(
    "aether_git_read_requests",
    "Requests to the broker's read API (diffs, default branches, files), by request and status",
    ["request", "status"],
)
at_zero(
    GIT_READ_REQUESTS, request=("diff", "default-branch", "files"), status=("200", "401", "404")
)

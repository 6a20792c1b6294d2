"""The metric-name extraction the dashboard checks rely on."""

from __future__ import annotations

import pytest

from tests.ops.promql import (
    exported_names,
    groupings,
    metric_names,
    missing,
    selectors,
    variable_metric_names,
)


def test_names_come_from_selectors_not_functions_labels_or_keywords() -> None:
    expr = (
        'sum by (job, le) (rate(aether_handler_duration_seconds_bucket{service=~"$service"}'
        "[$__rate_interval])) / on (job) group_left (service) "
        "max without (instance) (aether_service_ready) > bool 0"
    )
    assert metric_names(expr) == {"aether_handler_duration_seconds_bucket", "aether_service_ready"}


def test_name_matchers_subqueries_and_offsets_are_read() -> None:
    expr = (
        '{__name__="aether_stream_messages"} + max_over_time(aether_tasks[1h:1m]) '
        "- aether_missions offset 1h"
    )
    assert metric_names(expr) == {"aether_stream_messages", "aether_tasks", "aether_missions"}


def test_a_query_that_does_not_parse_is_an_error() -> None:
    with pytest.raises(ValueError, match="parenthesis"):
        metric_names("sum(rate(aether_tasks[5m])")


def test_template_variable_queries() -> None:
    assert variable_metric_names("label_values(aether_service_ready{job!=''}, service)") == {
        "aether_service_ready"
    }
    assert variable_metric_names("label_values(service)") == set()


def test_exported_names_include_the_suffixes_each_type_gives() -> None:
    exposition = (
        "# HELP aether_merges_total merges\n"
        "# TYPE aether_merges_total counter\n"
        'aether_merges_total{result="merged"} 1.0\n'
        "# HELP aether_merge_duration_seconds merge time\n"
        "# TYPE aether_merge_duration_seconds histogram\n"
        "# HELP aether_sse_clients clients\n"
        "# TYPE aether_sse_clients gauge\n"
    )
    names = exported_names(exposition)
    assert {"aether_merges_total", "aether_merge_duration_seconds_bucket"} <= names
    assert {"aether_merge_duration_seconds_count", "aether_sse_clients"} <= names
    assert missing(["up", "aether_merges_total", "aether_nope"], names) == {"aether_nope"}


def test_selectors_carry_their_matchers_and_match_samples_like_prometheus() -> None:
    expr = (
        'sum(increase(aether_events_published_total{type="mission_completed", '
        'service=~"sched.*", duplicate!="true", job!~"x|y", instance=~"$instance"}[24h]))'
    )
    (selector,) = selectors(expr)
    assert selector.name == "aether_events_published_total"
    labels = {"type": "mission_completed", "service": "scheduler", "duplicate": "false"}
    assert selector.matches("aether_events_published_total", labels)
    assert selector.matches("aether_events_published_total", {**labels, "instance": "any"})
    assert not selector.matches("aether_events_published_total", {**labels, "job": "x"})
    assert not selector.matches("aether_events_published_total", {**labels, "duplicate": "true"})
    assert not selector.matches("aether_events_published_total", {**labels, "service": "a-sched"})
    assert not selector.matches("aether_events_published_created", labels)
    assert str(selector).startswith('aether_events_published_total{type="mission_completed", ')


def test_groupings_name_their_labels_and_the_metrics_beneath() -> None:
    expr = (
        "histogram_quantile(0.9, sum by (le, tier) (rate(aether_task_duration_seconds_bucket"
        "[$__rate_interval]))) / max without (instance) (aether_tasks) + sum(aether_missions)"
    )
    assert groupings(expr) == [(("le", "tier"), {"aether_task_duration_seconds_bucket"})]

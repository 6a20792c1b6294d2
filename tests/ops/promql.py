"""Metric names in PromQL expressions and in Prometheus text expositions.

Expressions are parsed with a real PromQL parser (so a query that would not run in
Prometheus fails here too) after Grafana's own variables are replaced by what Grafana
would put there; the names are the vector selectors' names, wherever they sit.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import promql_parser
from prometheus_client.parser import text_string_to_metric_families

# Series Prometheus makes itself for every target or rule, not exported by anyone.
PROMETHEUS_SERIES = frozenset(
    {
        "up",
        "scrape_duration_seconds",
        "scrape_samples_scraped",
        "scrape_samples_post_metric_relabeling",
        "scrape_series_added",
        "ALERTS",
        "ALERTS_FOR_STATE",
    }
)

# Grafana's interval variables, as they are substituted before a query is sent.
_GRAFANA_INTERVAL = re.compile(r"\$\{?__(rate_interval|interval|range)(_ms|_s)?\}?")
# label_values(metric{…}, label) in a template variable: a Grafana function, not PromQL.
_LABEL_VALUES = re.compile(r"^\s*label_values\((?P<selector>.*),\s*[a-zA-Z_]\w*\s*\)\s*$", re.S)
_QUERY_RESULT = re.compile(r"^\s*query_result\((?P<query>.*)\)\s*$", re.S)


def grafana_to_promql(expr: str) -> str:
    """``expr`` as Grafana sends it: interval variables become durations."""
    return _GRAFANA_INTERVAL.sub("5m", expr)


def metric_names(expr: str) -> set[str]:
    """Every metric an expression selects; ``ValueError`` when it does not parse."""
    tree = promql_parser.parse(grafana_to_promql(expr))
    names: set[str] = set()

    def visit(node: object) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            if node.name:
                names.add(node.name)
            for matcher in node.matchers.matchers:
                if matcher.name == "__name__" and str(matcher.op) == "MatchOp.Equal":
                    names.add(matcher.value)
        return True

    promql_parser.walk(tree, visit)
    return names


@dataclass(frozen=True)
class Selector:
    """One vector selector of an expression: a metric name and its label matchers, as
    (label, operator, value) with the operators ``=``, ``!=``, ``=~`` and ``!~``."""

    name: str
    matchers: tuple[tuple[str, str, str], ...]

    def __str__(self) -> str:
        matchers = ", ".join(f'{label}{op}"{value}"' for label, op, value in self.matchers)
        return f"{self.name}{{{matchers}}}" if matchers else self.name

    def matches(self, name: str, labels: dict[str, str]) -> bool:
        """Whether a sample of an exposition is selected. A matcher on a Grafana template
        variable (``$service``) is taken as that variable's "All", which selects anything."""
        if name != self.name:
            return False
        for label, op, value in self.matchers:
            if "$" in value:
                continue
            have = labels.get(label, "")
            # Prometheus anchors regular expressions at both ends.
            found = re.fullmatch(value, have) is not None if "~" in op else have == value
            if found != (op in ("=", "=~")):
                return False
        return True


_OPERATORS = {"Equal": "=", "NotEqual": "!=", "Re": "=~", "NotRe": "!~"}


def selectors(expr: str) -> list[Selector]:
    """Every named vector selector of an expression, with its label matchers."""
    tree = promql_parser.parse(grafana_to_promql(expr))
    found: list[Selector] = []

    def visit(node: object) -> bool:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            matchers = tuple(
                (m.name, _OPERATORS[str(m.op).rsplit(".", 1)[1]], m.value)
                for m in node.matchers.matchers
                if m.name != "__name__"
            )
            found.append(Selector(node.name, matchers))
        return True

    promql_parser.walk(tree, visit)
    return found


def groupings(expr: str) -> list[tuple[tuple[str, ...], set[str]]]:
    """Every ``by (…)`` of an aggregation: its labels and the metrics it aggregates."""
    tree = promql_parser.parse(grafana_to_promql(expr))
    found: list[tuple[tuple[str, ...], set[str]]] = []

    def visit(node: object) -> bool:
        modifier = getattr(node, "modifier", None)
        if isinstance(node, promql_parser.AggregateExpr) and str(modifier).startswith("by"):
            beneath: set[str] = set()

            def collect(inner: object) -> bool:
                if isinstance(inner, promql_parser.VectorSelector) and inner.name:
                    beneath.add(inner.name)
                return True

            promql_parser.walk(node.expr, collect)
            found.append((tuple(modifier.labels), beneath))
        return True

    promql_parser.walk(tree, visit)
    return found


def variable_metric_names(query: str) -> set[str]:
    """The metrics a Grafana template variable's query reads."""
    found = _LABEL_VALUES.match(query)
    if found:
        return metric_names(found.group("selector"))
    found = _QUERY_RESULT.match(query)
    if found:
        return metric_names(found.group("query"))
    if query.strip().startswith(("label_values(", "label_names(", "metrics(")):
        return set()  # label_values(label) and friends name no metric
    return metric_names(query)


def exported_names(exposition: str) -> set[str]:
    """Every name a scrape of ``exposition`` makes queryable: families declared with no
    samples yet count too, with the suffixes their type gives them (``_total``,
    ``_bucket``/``_sum``/``_count``, ``_created``)."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
        "summary": ("_sum", "_count", "_created"),
        "info": ("_info",),
    }
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names.add(family.name)
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names


def missing(used: Iterable[str], exported: set[str]) -> set[str]:
    """The used names that nothing exports and Prometheus does not make itself."""
    return {name for name in used if name not in exported and name not in PROMETHEUS_SERIES}

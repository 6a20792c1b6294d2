"""A mission's task graph as clients draw it: nodes, dependency edges and layers."""

from __future__ import annotations

import msgspec

from aether_gateway.domain.model import Task


class Edge(msgspec.Struct, frozen=True, kw_only=True):
    """``source`` must be merged before ``target`` starts."""

    source: str
    target: str


class Graph(msgspec.Struct, frozen=True, kw_only=True):
    """Task ids in plan order, their edges, and the layers they fall into.

    ``layers[0]`` holds the tasks with no dependencies, ``layers[n]`` those whose
    dependencies all sit in earlier layers. Tasks caught in a cycle (a plan the planner
    should never produce) form one last layer so none goes missing.
    """

    nodes: list[str]
    edges: list[Edge]
    layers: list[list[str]]


def task_graph(tasks: list[Task]) -> Graph:
    ids = [task.task_id for task in tasks]
    known = set(ids)
    deps = {task.task_id: [d for d in task.depends_on if d in known] for task in tasks}
    edges = [Edge(source=d, target=task_id) for task_id in ids for d in deps[task_id]]
    layers: list[list[str]] = []
    placed: set[str] = set()
    while len(placed) < len(ids):
        layer = [t for t in ids if t not in placed and all(d in placed for d in deps[t])]
        if not layer:
            layers.append([t for t in ids if t not in placed])
            break
        layers.append(layer)
        placed.update(layer)
    return Graph(nodes=ids, edges=edges, layers=layers)

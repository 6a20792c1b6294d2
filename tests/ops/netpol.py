"""Which connections a set of NetworkPolicies allows, evaluated the way Kubernetes does
for the subset of the API ``k8s/`` uses (label selectors, namespace selectors by name,
IP blocks, numbered and named ports), so tests can state "the planner cannot reach
PostgreSQL" instead of reading YAML."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

Doc = dict[str, Any]


@dataclass(frozen=True)
class Peer:
    """One end of a connection: a pod (labels, namespace, named ports) or an address."""

    name: str
    namespace: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    ip: str | None = None  # outside the cluster


def selects(selector: Doc | None, labels: dict[str, str]) -> bool:
    """Whether a LabelSelector matches ``labels`` (an empty selector matches all)."""
    selector = selector or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values")
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def _peer_matches(rule_peer: Doc, peer: Peer, policy_namespace: str) -> bool:
    if "ipBlock" in rule_peer:
        if peer.ip is None:
            return False
        block = rule_peer["ipBlock"]
        address = ipaddress.ip_address(peer.ip)
        if address not in ipaddress.ip_network(block["cidr"]):
            return False
        return not any(address in ipaddress.ip_network(e) for e in block.get("except") or [])
    if peer.ip is not None:
        return False
    if "namespaceSelector" in rule_peer:
        namespace_labels = {"kubernetes.io/metadata.name": peer.namespace}
        if not selects(rule_peer["namespaceSelector"], namespace_labels):
            return False
    elif peer.namespace != policy_namespace:
        return False
    return "podSelector" not in rule_peer or selects(rule_peer["podSelector"], peer.labels)


def _port_matches(rule_ports: list[Doc] | None, port: int, target: Peer) -> bool:
    if not rule_ports:
        return True
    for entry in rule_ports:
        if entry.get("protocol", "TCP") != "TCP":
            continue
        wanted = entry.get("port")
        if wanted is None:
            return True
        if isinstance(wanted, str):
            wanted = target.ports.get(wanted)
        if wanted == port:
            return True
    return False


def _allowed(
    policies: list[Doc], pod: Peer, other: Peer, port: int, target: Peer, direction: str
) -> bool:
    """Whether ``pod``'s policies of ``direction`` allow the connection with ``other``."""
    kind = "Ingress" if direction == "ingress" else "Egress"
    relevant = [
        p
        for p in policies
        if p["metadata"].get("namespace", "") == pod.namespace
        and kind in p["spec"].get("policyTypes", ["Ingress"])
        and selects(p["spec"].get("podSelector"), pod.labels)
    ]
    if not relevant:
        return True  # not isolated in this direction
    peers_key = "from" if direction == "ingress" else "to"
    for policy in relevant:
        for rule in policy["spec"].get(direction) or []:
            peers = rule.get(peers_key)
            peer_ok = not peers or any(_peer_matches(p, other, pod.namespace) for p in peers)
            if peer_ok and _port_matches(rule.get("ports"), port, target):
                return True
    return False


def can_connect(policies: list[Doc], source: Peer, destination: Peer, port: int) -> bool:
    """Whether a TCP connection from ``source`` to ``destination:port`` is allowed: the
    source's egress and the destination's ingress must both let it through."""
    egress = source.ip is not None or _allowed(
        policies, source, destination, port, destination, "egress"
    )
    ingress = destination.ip is not None or _allowed(
        policies, destination, source, port, destination, "ingress"
    )
    return egress and ingress


def pods(docs: list[Doc]) -> dict[str, Peer]:
    """A peer for each workload's pods (Deployments, StatefulSets, and CloudNativePG
    clusters, whose pods carry the cnpg.io/cluster label), by workload name."""
    out: dict[str, Peer] = {}
    for doc in docs:
        namespace = doc["metadata"].get("namespace", "")
        if doc["kind"] in ("Deployment", "StatefulSet"):
            template = doc["spec"]["template"]
            ports = {
                p["name"]: p["containerPort"]
                for c in template["spec"]["containers"]
                for p in c.get("ports", [])
                if "name" in p
            }
            out[doc["metadata"]["name"]] = Peer(
                doc["metadata"]["name"], namespace, template["metadata"]["labels"], ports
            )
        elif doc["kind"] == "Cluster":
            name = doc["metadata"]["name"]
            out[name] = Peer(name, namespace, {"cnpg.io/cluster": name}, {"postgresql": 5432})
    return out

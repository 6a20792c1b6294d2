"""The Kubernetes manifests, checked without a cluster: every overlay renders, every object
is valid against the Kubernetes schemas (and the custom resources against theirs), and the
properties the deployment relies on hold in what is actually rendered."""

from __future__ import annotations

import copy
import json
import shutil
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from kubernetes_validate import utils as kubernetes_schemas

from aether.stack import SERVICES
from aether_events import MISSIONS_STREAM
from tests.ops import kustomize
from tests.ops.netpol import Peer, can_connect, pods

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = ("local", "production")
# The oldest Kubernetes the manifests promise to work on, and the newest the bundled
# schemas know.
KUBERNETES_VERSIONS = ("1.29.0", kubernetes_schemas.latest_version())
SCHEMAS = Path(__file__).parent / "schemas"
CUSTOM_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor_monitoring.coreos.com_v1",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule_monitoring.coreos.com_v1",
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject_keda.sh_v1alpha1",
    ("postgresql.cnpg.io/v1", "Cluster"): "cluster_postgresql.cnpg.io_v1",
}
# Secrets a production cluster provides itself: created by its operators (see the
# overlay), and written by CloudNativePG for its cluster.
EXTERNAL_SECRETS = {
    "production": {"aether-secrets", "aether-nats", "aether-db-app"},
    "local": set(),
}
SINGLE_WRITERS = ("git-broker",)
# kubernetes_validate reads and parses its schema files again at every validation (the
# definitions file alone is megabytes of JSON): here each is parsed once.
kubernetes_schemas.schema_contents = cache(kubernetes_schemas.schema_contents)

Doc = dict[str, Any]


@cache
def rendered(overlay: str) -> tuple[list[Doc], str]:
    return kustomize.render(ROOT / "k8s" / "overlays" / overlay)


def objects(overlay: str, kind: str | None = None) -> list[Doc]:
    docs = rendered(overlay)[0]
    return [d for d in docs if kind is None or d["kind"] == kind]


def named(overlay: str, kind: str, name: str) -> Doc:
    found = [d for d in objects(overlay, kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"{overlay}: expected one {kind} {name}, found {len(found)}"
    return found[0]


def validate(doc: Doc) -> None:
    """Validate one object strictly: unknown fields are errors."""
    custom = CUSTOM_SCHEMAS.get((doc["apiVersion"], doc["kind"]))
    if custom is not None:
        schema = json.loads((SCHEMAS / f"{custom}.json").read_text())
        jsonschema.Draft202012Validator(schema).validate(doc)
        return
    for version in KUBERNETES_VERSIONS:
        kubernetes_schemas.validate(doc, version, strict=True)


def app_deployments(overlay: str) -> list[Doc]:
    return [d for d in objects(overlay, "Deployment") if d["metadata"]["name"] in SERVICES]


# --- rendering and schemas ---------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_every_service_and_the_bus(overlay: str) -> None:
    docs, renderer = rendered(overlay)
    print(f"{overlay} rendered by {renderer}: {len(docs)} objects")
    assert {d["metadata"]["name"] for d in app_deployments(overlay)} == set(SERVICES)
    assert named(overlay, "StatefulSet", "nats")
    assert all(d["metadata"].get("namespace") == "aether" for d in docs if d["kind"] != "Namespace")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_is_valid_against_its_schema(overlay: str) -> None:
    problems = []
    for doc in objects(overlay):
        try:
            validate(doc)
        except kubernetes_schemas.SchemaNotFoundError:
            problems.append(f"{doc['kind']} {doc['metadata']['name']}: no schema to check it")
        except (kubernetes_schemas.ValidationError, jsonschema.ValidationError) as error:
            where = "/".join(str(p) for p in error.path)
            problems.append(f"{doc['kind']} {doc['metadata']['name']}: {where}: {error.message}")
    assert not problems, "\n".join(problems)


def test_validation_rejects_a_misspelt_field_and_a_wrongly_typed_trigger() -> None:
    """The schema checks are not vacuous: a typo or a number where KEDA wants a string fails."""
    deployment = copy.deepcopy(named("production", "Deployment", "gateway"))
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(kubernetes_schemas.ValidationError):
        validate(deployment)
    scaled = copy.deepcopy(named("production", "ScaledObject", "agent-runner"))
    scaled["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 2
    with pytest.raises(jsonschema.ValidationError):
        validate(scaled)


def test_every_overlay_is_tested() -> None:
    """A new overlay directory is rendered, validated and compared like the others."""
    on_disk = {p.name for p in (ROOT / "k8s" / "overlays").iterdir() if p.is_dir()}
    assert on_disk == set(OVERLAYS)


def test_built_in_renderer_matches_kubectl() -> None:
    """Where a real kustomize exists, the fallback renderer must agree with it exactly
    (no package registry offers a kustomize 5, so a machine without one skips this)."""
    command = kustomize.real_renderer()
    if command is None:
        pytest.skip("no kustomize or kubectl here to compare the built-in renderer with")
    for overlay in OVERLAYS:
        path = ROOT / "k8s" / "overlays" / overlay
        mine = kustomize.canonical(kustomize.build(path))
        theirs = kustomize.canonical(kustomize.render_with(command, path))
        assert mine.keys() == theirs.keys(), overlay
        different = [key for key in mine if mine[key] != theirs[key]]
        assert not different, f"{overlay}: built-in renderer differs on {different}"


# --- workloads ---------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_have_probes_on_readyz_and_healthz_and_their_own_port(overlay: str) -> None:
    for deployment in app_deployments(overlay):
        name = deployment["metadata"]["name"]
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        port = {p["name"]: p["containerPort"] for p in container["ports"]}["http"]
        assert port == SERVICES[name][1], f"{name} listens on {port}"
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["PORT"] == str(port)
        assert container["command"] == ["python", "-m", SERVICES[name][0]]
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert container["startupProbe"]["httpGet"]["path"] == "/healthz"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_requests_limits_and_runs_as_non_root(overlay: str) -> None:
    for workload in objects(overlay, "Deployment") + objects(overlay, "StatefulSet"):
        name = workload["metadata"]["name"]
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] > 0, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert pod.get("automountServiceAccountToken") is False, name
        for container in pod.get("initContainers", []) + pod["containers"]:
            resources = container["resources"]
            for side in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(side, {})), (name, side)
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["capabilities"] == {"drop": ["ALL"]}, name
        for container in pod["containers"]:
            assert container.get("readinessProbe") and container.get("livenessProbe"), name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_git_broker_is_a_single_writer_replaced_not_rolled(overlay: str) -> None:
    scaled = {s["spec"]["scaleTargetRef"]["name"] for s in objects(overlay, "ScaledObject")}
    budgets = {p["metadata"]["name"] for p in objects(overlay, "PodDisruptionBudget")}
    for name in SINGLE_WRITERS:
        deployment = named(overlay, "Deployment", name)
        assert deployment["spec"]["replicas"] == 1
        assert deployment["spec"]["strategy"] == {"type": "Recreate"}
        assert name not in scaled and name not in budgets
        tolerations = deployment["spec"]["template"]["spec"]["tolerations"]
        assert {t["tolerationSeconds"] for t in tolerations} == {30}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_scheduler_runs_an_active_one_and_a_standby_rolled_one_at_a_time(
    overlay: str,
) -> None:
    """Two schedulers, one active by the lease (decision 0027): a rolling update that
    never goes below two, on different nodes where it can, one disruption at a time."""
    scaled = {s["spec"]["scaleTargetRef"]["name"] for s in objects(overlay, "ScaledObject")}
    deployment = named(overlay, "Deployment", "scheduler")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    assert "scheduler" not in scaled  # the standby is not capacity
    pod = deployment["spec"]["template"]
    (term,) = pod["spec"]["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    selected = term["podAffinityTerm"]["labelSelector"]["matchLabels"]
    assert selected.items() <= pod["metadata"]["labels"].items()
    budget = named(overlay, "PodDisruptionBudget", "scheduler")
    assert budget["spec"]["maxUnavailable"] == 1
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    # Never told it is the only one (it would take the lease from the other at start).
    env = {e["name"] for e in pod["spec"]["containers"][0].get("env", [])}
    assert "AETHER_ONE_PROCESS" not in env


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_replicated_workloads_have_disruption_budgets(overlay: str) -> None:
    budgets = {p["metadata"]["name"]: p for p in objects(overlay, "PodDisruptionBudget")}
    for name in ("gateway", "planner", "scheduler", "agent-runner", "nats"):
        assert name in budgets, name
        labels = budgets[name]["spec"]["selector"]["matchLabels"]
        kind = "StatefulSet" if name == "nats" else "Deployment"
        template = named(overlay, kind, name)["spec"]["template"]["metadata"]["labels"]
        assert labels.items() <= template.items(), name
    assert budgets["nats"]["spec"]["maxUnavailable"] == 1  # two of three keep the quorum


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_nats_is_a_three_server_jetstream_cluster_on_volumes(overlay: str) -> None:
    nats = named(overlay, "StatefulSet", "nats")
    assert nats["spec"]["replicas"] == 3
    assert nats["spec"]["podManagementPolicy"] == "Parallel"
    (claim,) = nats["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    conf = named(overlay, "ConfigMap", "nats-config")["data"]["nats.conf"]
    for index in range(3):
        assert f"nats://nats-{index}.{nats['spec']['serviceName']}:6222" in conf
    assert "jetstream" in conf and "store_dir: /data" in conf
    config = named(overlay, "ConfigMap", "aether-config")["data"]
    assert config["AETHER_STREAM_REPLICAS"] == "3"
    scheme = "tls" if overlay == "production" else "nats"
    assert config["NATS_URL"] == f"{scheme}://nats:4222"


def test_production_speaks_tls_to_the_bus_and_between_its_servers() -> None:
    """The nats-tls component: the servers take TLS only, from clients and from each
    other, with the certificate of the aether-nats-tls Secret; every service connects
    with tls:// and checks the server against the Secret's CA, mounted where
    NATS_TLS_CA says (and only the CA: no service holds the server's key)."""
    config = named("production", "ConfigMap", "nats-config")["data"]
    assert 'include "tls.conf"' in config["nats.conf"]
    assert 'include "cluster-tls.conf"' in config["nats.conf"].split("cluster {")[1]
    for name in ("tls.conf", "cluster-tls.conf"):
        for field in ("cert_file: /etc/nats-tls/tls.crt", "key_file: /etc/nats-tls/tls.key"):
            assert field in config[name]
    assert "verify: true" in config["cluster-tls.conf"]
    nats = named("production", "StatefulSet", "nats")["spec"]["template"]["spec"]
    assert {"name": "tls", "secret": {"secretName": "aether-nats-tls"}} in nats["volumes"]
    mounts = nats["containers"][0]["volumeMounts"]
    assert {"name": "tls", "mountPath": "/etc/nats-tls", "readOnly": True} in mounts
    ca = named("production", "ConfigMap", "aether-config")["data"]["NATS_TLS_CA"]
    for deployment in app_deployments("production"):
        pod = deployment["spec"]["template"]["spec"]
        (volume,) = [v for v in pod["volumes"] if v["name"] == "nats-tls"]
        assert volume["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]
        (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "nats-tls"]
        assert ca == f"{mount['mountPath']}/ca.crt" and mount["readOnly"] is True
    # The local overlay stays plain, its ConfigMap keys saying where TLS would go.
    local = named("local", "ConfigMap", "nats-config")["data"]
    assert "tls {" not in local["tls.conf"] + local["cluster-tls.conf"]


def test_production_serves_the_gateway_over_tls_through_an_ingress() -> None:
    """One Ingress, TLS for its host, to the gateway Service's named port, with event
    streams passed on unbuffered and kept open; the gateway's public URL is that host
    over https (OIDC sends browsers back there). The local overlay has none."""
    (ingress,) = objects("production", "Ingress")
    (rule,) = ingress["spec"]["rules"]
    (tls,) = ingress["spec"]["tls"]
    assert tls["hosts"] == [rule["host"]] and tls["secretName"] == "aether-gateway-tls"
    (path,) = rule["http"]["paths"]
    assert path["path"] == "/" and path["pathType"] == "Prefix"
    backend = path["backend"]["service"]
    service = named("production", "Service", backend["name"])
    assert backend["name"] == "gateway"
    assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
    notes = ingress["metadata"]["annotations"]
    assert notes["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert int(notes["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 60
    gateway = named("production", "Deployment", "gateway")["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in gateway["containers"][0]["env"]}
    assert env["AETHER_GATEWAY_PUBLIC_URL"] == f"https://{rule['host']}"
    assert objects("local", "Ingress") == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_secret_and_config_map_a_pod_reads_exists(overlay: str) -> None:
    present = {(d["kind"], d["metadata"]["name"]) for d in objects(overlay)}
    missing = set()
    for workload in objects(overlay, "Deployment") + objects(overlay, "StatefulSet"):
        pod = workload["spec"]["template"]["spec"]
        for container in pod.get("initContainers", []) + pod["containers"]:
            for env in container.get("env", []):
                ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                if ref and not ref.get("optional") and ("Secret", ref["name"]) not in present:
                    missing.add(ref["name"])
            for source in container.get("envFrom", []):
                if "configMapRef" in source and not source["configMapRef"].get("optional"):
                    assert ("ConfigMap", source["configMapRef"]["name"]) in present
        for volume in pod.get("volumes", []):
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in present
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                assert ("PersistentVolumeClaim", claim) in present
    assert missing == EXTERNAL_SECRETS[overlay]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_select_pods_and_their_named_ports(overlay: str) -> None:
    workloads = pods(objects(overlay))
    for service in objects(overlay, "Service"):
        selector = service["spec"]["selector"]
        chosen = [p for p in workloads.values() if selector.items() <= p.labels.items()]
        assert chosen, f"Service {service['metadata']['name']} selects no pods"
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            if isinstance(target, str):
                assert all(target in p.ports for p in chosen), (service["metadata"], target)


# --- network policies --------------------------------------------------------------------

INTERNET = Peer("internet", ip="203.0.113.10")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_allow_each_service_only_what_it_needs(overlay: str) -> None:
    policies = objects(overlay, "NetworkPolicy")
    workloads = pods(objects(overlay))
    database = workloads["postgres" if overlay == "local" else "aether-db"]
    nats = workloads["nats"]

    def can(source: Peer, destination: Peer, port: int) -> bool:
        return can_connect(policies, source, destination, port)

    for name in SERVICES:
        assert can(workloads[name], nats, 4222), f"{name} must reach NATS"
        assert not can(workloads[name], nats, 8222), f"{name} has no business on NATS monitoring"
    assert can(nats, workloads["nats"], 6222), "NATS servers must route to each other"
    assert can(workloads["gateway"], database, 5432)
    for name in ("planner", "scheduler", "agent-runner", "git-broker"):
        assert not can(workloads[name], database, 5432), f"{name} must not reach PostgreSQL"
    for name in ("planner", "agent-runner"):
        assert can(workloads[name], INTERNET, 443), f"{name} must reach the model endpoint"
    for name in ("gateway", "scheduler"):
        assert not can(workloads[name], INTERNET, 443), f"{name} must not reach the internet"
    # The broker clones and pushes missions' repositories by URL: git's transports only.
    for port in (443, 22, 9418):
        assert can(workloads["git-broker"], INTERNET, port), f"the broker must reach git on {port}"
    assert not can(workloads["git-broker"], INTERNET, 80), "the broker speaks only git's transports"
    assert not can(workloads["git-broker"], database, 5432), "the broker has no database"
    assert can(INTERNET, workloads["gateway"], 8100), "clients reach the gateway"
    for name in ("planner", "scheduler", "agent-runner"):
        assert not can(workloads["gateway"], workloads[name], SERVICES[name][1])
    # The broker's read API (diffs, default branches, files): the gateway and the planner.
    for name in ("gateway", "planner"):
        assert can(workloads[name], workloads["git-broker"], SERVICES["git-broker"][1]), name
    for name in ("scheduler", "agent-runner"):
        assert not can(workloads[name], workloads["git-broker"], SERVICES["git-broker"][1])
    assert not can(INTERNET, workloads["git-broker"], SERVICES["git-broker"][1])
    assert not can(INTERNET, nats, 4222)


GIT_HTTP = 8105


def _container(overlay: str, name: str) -> Doc:
    container: Doc = named(overlay, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]
    return container


def test_production_runners_fetch_and_push_without_the_shared_volume() -> None:
    """Production's runners (remote-runners component) clone each attempt from the
    broker's smart HTTP and push it back: no worktrees volume, the broker's URL, and a
    port of the broker only they reach. The local overlay keeps the shared volume."""
    runner = named("production", "Deployment", "agent-runner")["spec"]["template"]["spec"]
    assert "worktrees" not in {v["name"] for v in runner["volumes"]}
    assert "worktrees" not in {m["name"] for m in runner["containers"][0]["volumeMounts"]}
    env = {e["name"]: e for e in runner["containers"][0]["env"]}
    assert env["AETHER_AGENT_GIT_URL"]["value"] == f"http://git-broker:{GIT_HTTP}"
    broker = _container("production", "git-broker")
    broker_env = {e["name"]: e for e in broker["env"]}
    assert broker_env["AETHER_GIT_HTTP_PORT"]["value"] == str(GIT_HTTP)
    assert broker_env["AETHER_GIT_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "aether-secrets",
        "key": "git-push-secret",
    }
    assert {"name": "git-http", "containerPort": GIT_HTTP} in broker["ports"]
    service_ports = named("production", "Service", "git-broker")["spec"]["ports"]
    assert {"name": "git-http", "port": GIT_HTTP, "targetPort": "git-http"} in service_ports

    policies = objects("production", "NetworkPolicy")
    workloads = pods(objects("production"))
    broker_pod = workloads["git-broker"]
    assert can_connect(policies, workloads["agent-runner"], broker_pod, GIT_HTTP)
    for name in ("gateway", "planner", "scheduler"):
        assert not can_connect(policies, workloads[name], broker_pod, GIT_HTTP), name
    assert not can_connect(policies, INTERNET, broker_pod, GIT_HTTP)

    local = named("local", "Deployment", "agent-runner")["spec"]["template"]["spec"]
    assert "worktrees" in {v["name"] for v in local["volumes"]}
    assert "AETHER_AGENT_GIT_URL" not in {e["name"] for e in local["containers"][0]["env"]}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_planner_reads_repositories_through_the_broker_and_mounts_none(overlay: str) -> None:
    """The planner holds the read API's token and URL, not the broker's volume; with the
    runners fetching and pushing too (production), the broker alone mounts the volume,
    which then needs no storage shared between nodes."""
    planner = named(overlay, "Deployment", "planner")["spec"]["template"]["spec"]
    assert "worktrees" not in {v["name"] for v in planner["volumes"]}
    env = {e["name"]: e for e in planner["containers"][0]["env"]}
    broker_port = SERVICES["git-broker"][1]
    assert env["AETHER_PLANNER_BROKER_URL"]["value"] == f"http://git-broker:{broker_port}"
    gateway = {e["name"]: e for e in _container(overlay, "gateway")["env"]}
    token = env["AETHER_PLANNER_BROKER_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert token == gateway["AETHER_GATEWAY_BROKER_TOKEN"]["valueFrom"]["secretKeyRef"]
    claim = named(overlay, "PersistentVolumeClaim", "aether-worktrees")["spec"]
    assert claim["accessModes"] == ["ReadWriteOnce"]
    mounting = {
        name
        for name in SERVICES
        if "worktrees"
        in {
            v["name"]
            for v in named(overlay, "Deployment", name)["spec"]["template"]["spec"].get(
                "volumes", []
            )
        }
    }
    assert mounting == (
        {"git-broker"} if overlay == "production" else {"git-broker", "agent-runner"}
    )


def test_production_lets_prometheus_scrape_and_keda_read_nats() -> None:
    policies = objects("production", "NetworkPolicy")
    workloads = pods(objects("production"))
    prometheus = Peer("prometheus", "monitoring", {"app.kubernetes.io/name": "prometheus"})
    keda = Peer("keda", "keda", {"app": "keda-operator"})
    for name, (_, port) in SERVICES.items():
        assert can_connect(policies, prometheus, workloads[name], port), name
    assert can_connect(policies, keda, workloads["nats"], 8222)
    assert not can_connect(policies, keda, workloads["nats"], 4222)
    operator = Peer("cnpg", "cnpg-system", {"app.kubernetes.io/name": "cloudnative-pg"})
    assert can_connect(policies, operator, workloads["aether-db"], 8000)


# --- autoscaling and monitoring ----------------------------------------------------------


def test_agent_runners_scale_on_their_consumers_pending_messages() -> None:
    from aether_agent_runner.app import DURABLE

    scaled = named("production", "ScaledObject", "agent-runner")
    assert scaled["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "agent-runner",
    }
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "nats-jetstream"
    metadata = trigger["metadata"]
    assert metadata["stream"] == MISSIONS_STREAM
    assert metadata["consumer"] == DURABLE
    headless = named("production", "StatefulSet", "nats")["spec"]["serviceName"]
    assert metadata["natsServerMonitoringEndpoint"] == f"{headless}.aether.svc.cluster.local:8222"
    # One replica per AETHER_AGENT_CONCURRENCY tasks pending or in flight.
    (container,) = named("production", "Deployment", "agent-runner")["spec"]["template"]["spec"][
        "containers"
    ]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert metadata["lagThreshold"] == env["AETHER_AGENT_CONCURRENCY"]
    # The autoscaler owns the count; an apply must not reset it.
    assert "replicas" not in named("production", "Deployment", "agent-runner")["spec"]


def test_service_monitor_scrapes_the_five_services_by_name() -> None:
    monitor = named("production", "ServiceMonitor", "aether")
    selector = monitor["spec"]["selector"]
    from tests.ops.netpol import selects

    chosen = {
        s["metadata"]["name"]
        for s in objects("production", "Service")
        if selects(selector, s["metadata"]["labels"])
    }
    assert chosen == set(SERVICES)
    assert monitor["spec"]["jobLabel"] == "app.kubernetes.io/name"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"], endpoint["honorLabels"]) == (
        "http",
        "/metrics",
        True,
    )


def test_prometheus_rule_carries_the_compose_alerts() -> None:
    compose = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    rule = named("production", "PrometheusRule", "aether")
    assert rule["spec"]["groups"] == compose["groups"]


def test_production_uses_a_released_image_and_local_the_one_built_here() -> None:
    for overlay, image in (
        ("production", "registry.example.com/aether:0.1.0"),
        ("local", "aether:local"),
    ):
        images = {
            c["image"]
            for d in app_deployments(overlay)
            for c in d["spec"]["template"]["spec"]["containers"]
        }
        assert images == {image}, overlay


def test_built_in_renderer_refuses_what_it_does_not_implement(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\nnamePrefix: x-\n")
    with pytest.raises(kustomize.Unsupported, match="namePrefix"):
        kustomize.build(tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        "patches:\n  - target: {kind: Deployment}\n    patch: 'spec: {replicas: 2}'\n"
    )
    with pytest.raises(kustomize.Unsupported, match="strategic merge"):
        kustomize.build(tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        "configMapGenerator:\n  - name: x\n    literals: [a=b]\n"
    )
    with pytest.raises(kustomize.Unsupported, match="configMapGenerator"):
        kustomize.build(tmp_path)


SANDBOXED = ("agent-runner", "git-broker")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_services_that_run_commands_may_start_a_sandbox(overlay: str) -> None:
    """bubblewrap needs its own user namespace, an unmasked /proc and no seccomp/AppArmor
    veto on unshare and mount: given to the two containers that run commands, and no
    capability or privilege escalation to anyone."""
    for workload in objects(overlay, "Deployment") + objects(overlay, "StatefulSet"):
        name = workload["metadata"]["name"]
        template = workload["spec"]["template"]
        (container, *_) = template["spec"]["containers"]
        context = container["securityContext"]
        annotations = template["metadata"].get("annotations") or {}
        apparmor = annotations.get(f"container.apparmor.security.beta.kubernetes.io/{name}")
        if name in SANDBOXED:
            assert template["spec"]["hostUsers"] is False, name
            assert context["procMount"] == "Unmasked", name
            assert context["seccompProfile"] == {"type": "Unconfined"}, name
            assert apparmor == "unconfined", name
        else:
            assert template["spec"].get("hostUsers", True) is True, name
            assert "procMount" not in context and "seccompProfile" not in context, name
            assert apparmor is None, name
        assert context["capabilities"] == {"drop": ["ALL"]}, name
        assert context["allowPrivilegeEscalation"] is False, name
    (namespace,) = objects(overlay, "Namespace")
    labels = namespace["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/warn"] == "restricted"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_gateway_takes_the_optional_oidc_settings(overlay: str) -> None:
    """OIDC is the cluster's choice: the settings come from an aether-oidc ConfigMap and
    the client secret from an aether-oidc Secret, both optional so a cluster without them
    starts the gateway with tokens only."""
    for deployment in app_deployments(overlay):
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        sources = [s["configMapRef"] for s in container.get("envFrom", []) if "configMapRef" in s]
        env = {e["name"]: e for e in container.get("env", [])}
        takes_oidc = {"name": "aether-oidc", "optional": True} in sources
        secret = (env.get("AETHER_OIDC_CLIENT_SECRET") or {}).get("valueFrom")
        if deployment["metadata"]["name"] == "gateway":
            assert takes_oidc
            assert secret == {
                "secretKeyRef": {"name": "aether-oidc", "key": "client-secret", "optional": True}
            }
        else:
            assert not takes_oidc, deployment["metadata"]["name"]
            assert not any(name.startswith("AETHER_OIDC_") for name in env)


def test_the_git_ssh_component_gives_the_broker_alone_its_ssh_key_and_known_hosts(
    tmp_path: Path,
) -> None:
    """Production with ``components/git-ssh`` (as an operator lists it): the Secret
    aether-git-ssh mounted read-only on the broker, outside the directories a verification
    command is shown, and named by the broker's two settings; no other pod sees it."""
    shutil.copytree(ROOT / "k8s", tmp_path / "k8s")
    overlay = tmp_path / "k8s" / "overlays" / "with-ssh"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        "resources: [../production]\ncomponents: [../../components/git-ssh]\n"
    )
    docs, _ = kustomize.render(overlay)
    for doc in docs:
        validate(doc)
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    pod = deployments["git-broker"]["spec"]["template"]["spec"]
    (volume,) = [
        v for v in pod["volumes"] if v.get("secret", {}).get("secretName") == "aether-git-ssh"
    ]
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["readOnly"] and mount["mountPath"] == "/run/secrets/aether-git-ssh"
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["AETHER_GIT_SSH_KEY"] == "/run/secrets/aether-git-ssh/ssh-key"
    assert env["AETHER_GIT_SSH_KNOWN_HOSTS"] == "/run/secrets/aether-git-ssh/known-hosts"
    for name, deployment in deployments.items():
        if name == "git-broker":
            continue
        spec = deployment["spec"]["template"]["spec"]
        assert "aether-git-ssh" not in json.dumps(spec), name
        assert "AETHER_GIT_SSH_" not in json.dumps(spec), name


def test_the_git_ssh_passphrase_component_gives_the_broker_alone_its_key_passphrase(
    tmp_path: Path,
) -> None:
    """Production with ``components/git-ssh`` and its ``passphrase`` part: the Secret's
    ``passphrase`` key mounted read-only on the broker, in a directory of its own, and
    named by ``AETHER_GIT_SSH_KEY_PASSPHRASE_FILE``; no other pod sees it. Without the
    part the broker has no such setting (it would refuse to start on a missing file)."""
    shutil.copytree(ROOT / "k8s", tmp_path / "k8s")
    overlay = tmp_path / "k8s" / "overlays" / "with-ssh-passphrase"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        "resources: [../production]\n"
        "components: [../../components/git-ssh, ../../components/git-ssh/passphrase]\n"
    )
    docs, _ = kustomize.render(overlay)
    for doc in docs:
        validate(doc)
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    pod = deployments["git-broker"]["spec"]["template"]["spec"]
    (volume,) = [
        v
        for v in pod["volumes"]
        if v.get("secret", {}).get("items") == [{"key": "passphrase", "path": "passphrase"}]
    ]
    assert volume["secret"]["secretName"] == "aether-git-ssh"
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["readOnly"] and mount["mountPath"] == "/run/secrets/aether-git-ssh-passphrase"
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["AETHER_GIT_SSH_KEY_PASSPHRASE_FILE"] == (
        "/run/secrets/aether-git-ssh-passphrase/passphrase"
    )
    assert env["AETHER_GIT_SSH_KEY"] == "/run/secrets/aether-git-ssh/ssh-key"
    for name, deployment in deployments.items():
        if name != "git-broker":
            assert "aether-git-ssh" not in json.dumps(deployment["spec"]), name
    plain = tmp_path / "k8s" / "overlays" / "with-ssh"
    plain.mkdir()
    (plain / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        "resources: [../production]\ncomponents: [../../components/git-ssh]\n"
    )
    docs, _ = kustomize.render(plain)
    (broker,) = [
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "git-broker"
    ]
    assert "PASSPHRASE" not in json.dumps(broker)

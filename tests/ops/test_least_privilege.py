"""Least privilege in every way Aether is deployed: the NATS permissions of docker compose
and Kubernetes are the ones the roles table makes, each service is handed only its own
settings and secrets, and the database role the gateway uses is not a superuser."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from aether.infra import EmbeddedPostgres
from aether.service_env import allowed
from aether.stack import SERVICES, Stack
from aether_agent_runner.config import RunnerSettings
from aether_runtime.attempt_auth import COMPOSE_RUNNER_NAME
from aether_runtime.bus_auth import password_env, static_authorization
from aether_runtime.roles import ROLES
from aether_runtime.runner_secrets import proves, runner_token
from tests.ops import kustomize

ROOT = Path(__file__).resolve().parents[2]
# Secrets only the gateway may see, and the model's key only the services calling it.
GATEWAY_ONLY = {"DATABASE_URL", "AETHER_ADMIN_TOKEN"}
MODEL_CALLERS = {"planner", "agent-runner"}
# Where each service's settings are read: its own source and the libraries it runs.
SOURCES = {
    "gateway": ["services/gateway/src", "libs/runtime/src"],
    "planner": ["services/planner/src", "libs/runtime/src", "libs/llm/src"],
    "scheduler": ["services/scheduler/src", "libs/runtime/src", "libs/llm/src"],
    "agent-runner": ["services/agent-runner/src", "libs/runtime/src", "libs/llm/src"],
    "git-broker": ["services/git-broker/src", "libs/runtime/src"],
}
# Commands of their own, not run by a service: what they read is no service's setting.
# (``runner_secrets`` derives a runner's secret from the master: the runner pod's init
# container and ``aether runner-secret`` run it; the services read their own variables.)
NOT_A_SERVICE = {"libs/runtime/src/aether_runtime/runner_secrets.py"}
# Set by the stack itself for each service, not passed through from the operator.
STACK_SET = {
    "NATS_URL",
    "PORT",
    "NATS_USER",
    "NATS_PASSWORD",
    "NATS_PASSWORD_FILE",
    "AETHER_ONE_PROCESS",
}
STACK_SET_FOR = {
    "gateway": {"DATABASE_URL", "AETHER_ADMIN_TOKEN", "AETHER_GATEWAY_PUBLIC_URL"},
    "git-broker": {"AETHER_WORKTREES_DIR"},
    "agent-runner": {"AETHER_WORKTREES_DIR"},
    "scheduler": {"AETHER_MODEL_OFFLINE"},
}
# Keys the source reads from a request's WSGI environ, not from the process environment
# (and the variable the broker sets for its own SSH askpass program).
NOT_READ_BY = {
    "git-broker": {"HTTP_AUTHORIZATION", "PATH_INFO", "QUERY_STRING", "AETHER_ASKPASS_FILE"},
    # It chooses models but never calls one: told AETHER_MODEL_OFFLINE instead of the key.
    "scheduler": {"ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"},
    # Read only to refuse it: no runner may hold the services' event id secret.
    "agent-runner": {"AETHER_EVENT_ID_SECRET", "AETHER_EVENT_ID_SECRET_FILE"},
}
# The services that publish events of their own, and so key their ids (decision 0031).
EVENT_ID_HOLDERS = set(SERVICES) - {"agent-runner"}
EVENT_ID_KEY = {"name": "aether-secrets", "key": "event-id-secret"}


def settings_read(service: str) -> set[str]:
    """Names of environment variables the service's source reads (as string literals)."""
    names: set[str] = set()
    for root in SOURCES[service]:
        for path in (ROOT / root).rglob("*.py"):
            if str(path.relative_to(ROOT)) in NOT_A_SERVICE:
                continue
            text = path.read_text(encoding="utf-8")
            names |= set(
                re.findall(r"\"((?:AETHER|ANTHROPIC|DATABASE|NATS|LOG)_[A-Z0-9_]*)\"", text)
            )
            names |= set(re.findall(r"environ(?:\.get)?[\[(]\"([A-Z_0-9]+)\"", text))
    names |= {n for n in names if n.startswith("AETHER_MODEL_")}
    # A bucket's name and the NATS server's own variables: not settings of a service.
    server = {"AETHER_PLANNER_CALLS", "AETHER_RUNNERS", "AETHER_LEASES", "NATS_ATTEMPT_ISSUER"}
    return {n for n in names if not n.startswith("NATS_PASSWORD_")} - server


@pytest.mark.parametrize("service", list(SERVICES))
def test_every_setting_a_service_reads_reaches_it(service: str) -> None:
    missing = {
        name
        for name in settings_read(service) - STACK_SET - STACK_SET_FOR.get(service, set())
        if not allowed(service, name) and name not in NOT_READ_BY.get(service, set())
    }
    assert not missing, f"aether up would not hand {service} {sorted(missing)}"


def test_secrets_reach_only_the_services_that_use_them() -> None:
    for service in SERVICES:
        for name in GATEWAY_ONLY:
            assert allowed(service, name) == (service == "gateway")
        assert allowed(service, "ANTHROPIC_API_KEY") == (service in MODEL_CALLERS)
        assert not allowed(service, "NATS_PASSWORD")


def test_with_another_nats_each_service_gets_only_the_password_given_for_it(
    tmp_path: Path,
) -> None:
    stack = Stack(
        home=tmp_path,
        env={
            "NATS_URL": "nats://nats.example:4222",
            "DATABASE_URL": "postgresql://aether:pw@db.example/aether",
            "NATS_PASSWORD_AGENT_RUNNER": "runner-secret",
            "NATS_PASSWORD_GATEWAY": "gateway-secret",
        },
    )
    runner = stack.service_env("agent-runner")
    assert (runner["NATS_USER"], runner["NATS_PASSWORD"]) == ("agent-runner", "runner-secret")
    assert "gateway-secret" not in runner.values()
    gateway = stack.service_env("gateway")
    assert gateway["NATS_PASSWORD"] == "gateway-secret"
    assert "runner-secret" not in gateway.values()
    assert "NATS_PASSWORD" not in stack.service_env("planner")


# --- NATS configuration ---------------------------------------------------------------


def test_compose_nats_permissions_are_the_roles_tables() -> None:
    conf = (ROOT / "deploy" / "nats" / "nats.conf").read_text()
    assert 'include "auth.conf"' in conf
    assert (ROOT / "deploy" / "nats" / "auth.conf").read_text() == static_authorization(), (
        "regenerate: uv run python -m aether_runtime.bus_auth > deploy/nats/auth.conf"
    )


def test_kubernetes_nats_permissions_are_the_roles_tables() -> None:
    docs = list(yaml.safe_load_all((ROOT / "k8s" / "base" / "nats.yaml").read_text()))
    config = next(d for d in docs if d and d["metadata"]["name"] == "nats-config")
    assert 'include "auth.conf"' in config["data"]["nats.conf"]
    assert config["data"]["auth.conf"] == static_authorization()


def compose_services() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return dict(data["services"])


def test_compose_hands_each_service_its_own_user_and_secrets_only() -> None:
    services = compose_services()
    nats_env = services["nats"]["environment"]
    for name in ROLES:
        assert password_env(name) in nats_env
        env = services[name]["environment"]
        assert env["NATS_USER"] == name
        assert password_env(name) in env["NATS_PASSWORD"]
        for key in env:
            assert (
                key in STACK_SET or key in STACK_SET_FOR.get(name, set()) or allowed(name, key)
            ), f"{name} is handed {key}"
        assert ("ANTHROPIC_API_KEY" in env) == (name in MODEL_CALLERS), name
        assert ("DATABASE_URL" in env) == (name == "gateway"), name
        assert ("AETHER_ADMIN_TOKEN" in env) == (name == "gateway"), name
    assert services["gateway"]["environment"]["DATABASE_URL"].startswith("postgresql://aether:")
    assert "AETHER_DB_PASSWORD" in services["gateway"]["environment"]["DATABASE_URL"]


@pytest.mark.parametrize("overlay", ["local", "production"])
def test_kubernetes_hands_each_service_its_own_user_and_secrets_only(overlay: str) -> None:
    docs, _ = kustomize.render(ROOT / "k8s" / "overlays" / overlay)
    workloads = {
        d["metadata"]["name"]: d for d in docs if d["kind"] in {"Deployment", "StatefulSet"}
    }
    nats_env = {
        e["name"] for e in workloads["nats"]["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    for name in ROLES:
        container = workloads[name]["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e for e in container["env"]}
        assert password_env(name) in nats_env
        assert env["NATS_USER"]["value"] == name
        assert env["NATS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
            "name": "aether-nats",
            "key": name,
        }
        assert ("ANTHROPIC_API_KEY" in env) == (name in MODEL_CALLERS), name
        assert ("DATABASE_URL" in env) == (name == "gateway"), name
        assert ("AETHER_ADMIN_TOKEN" in env) == (name == "gateway"), name


# --- each runner holds the secret of its own name, never the master ---------------------

MASTER_KEY = {"name": "aether-nats", "key": "runner-master-secret"}


def _env_refs(container: dict[str, Any]) -> list[dict[str, Any]]:
    return [(e.get("valueFrom") or {}).get("secretKeyRef") or {} for e in container.get("env", [])]


@pytest.mark.parametrize("overlay", ["local", "production"])
def test_kubernetes_runner_pods_derive_their_own_secret_and_never_hold_the_master(
    overlay: str, tmp_path: Path
) -> None:
    """Only the scheduler and the runner pod's init container read the master; the init
    container derives the secret of the pod's name into a memory volume, which the
    runner's container reads under the same name. The init container's own command, run
    here, writes the secret the authorizer takes for that name."""
    docs, _ = kustomize.render(ROOT / "k8s" / "overlays" / overlay)
    workloads = {
        d["metadata"]["name"]: d for d in docs if d["kind"] in {"Deployment", "StatefulSet"}
    }
    for name, workload in workloads.items():
        pod = workload["spec"]["template"]["spec"]
        for container in pod["containers"]:
            assert (MASTER_KEY in _env_refs(container)) == (name == "scheduler"), name
            assert not any("secretRef" in e for e in container.get("envFrom", [])), name
        for container in pod.get("initContainers", []):
            assert name == "agent-runner" and container["name"] == "runner-secret", name
        for volume in pod.get("volumes", []):
            assert "secret" not in volume or volume["secret"]["secretName"] != "aether-nats"
    pod = workloads["agent-runner"]["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    runner = pod["containers"][0]
    assert MASTER_KEY in _env_refs(init)
    init_env = {e["name"]: e for e in init["env"]}
    runner_env = {e["name"]: e for e in runner["env"]}
    pod_name = {"fieldRef": {"fieldPath": "metadata.name"}}
    assert init_env["AETHER_RUNNER_NAME"]["valueFrom"] == pod_name
    assert runner_env["AETHER_RUNNER_NAME"]["valueFrom"] == pod_name
    assert "AETHER_RUNNER_SECRET" not in runner_env
    secret_file = Path(runner_env["AETHER_RUNNER_SECRET_FILE"]["value"])
    (volume,) = [v for v in pod["volumes"] if v["name"] == "runner-secret"]
    assert volume["emptyDir"]["medium"] == "Memory"
    (written,) = [m for m in init["volumeMounts"] if m["name"] == "runner-secret"]
    (read,) = [m for m in runner["volumeMounts"] if m["name"] == "runner-secret"]
    assert read["mountPath"] == written["mountPath"] == str(secret_file.parent)
    assert read.get("readOnly") is True
    command = init["command"]
    assert command[:3] == ["python", "-m", "aether_runtime.runner_secrets"]
    assert command[command.index("--out") + 1] == str(secret_file)
    # The init container's command, for a pod of this name, with a master.
    master = "a-master-of-the-deployment"
    out = tmp_path / secret_file.name
    argv = [sys.executable, *command[1:-1], str(out)]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("AETHER_")}
    pod_env = {"AETHER_RUNNER_NAME": "agent-runner-7d9c-x2", "AETHER_RUNNER_MASTER_SECRET": master}
    subprocess.run(argv, env=environ | pod_env, check=True, capture_output=True)
    settings = RunnerSettings.from_env(
        {"AETHER_RUNNER_NAME": "agent-runner-7d9c-x2", "AETHER_RUNNER_SECRET_FILE": str(out)}
    )
    assert proves(master, runner_token(settings.name), settings.runner_secret)
    assert not proves(master, "agent-runner-other", settings.runner_secret)


def test_compose_gives_the_master_to_the_scheduler_and_its_runner_its_names_secret() -> None:
    services = compose_services()
    for name, service in services.items():
        env = service.get("environment") or {}
        assert ("AETHER_RUNNER_MASTER_SECRET" in env) == (name == "scheduler"), name
        assert "AETHER_ATTEMPT_SECRET" not in env, name
    runner = services["agent-runner"]["environment"]
    assert runner["AETHER_RUNNER_NAME"] == COMPOSE_RUNNER_NAME
    assert "${AETHER_RUNNER_SECRET:?" in runner["AETHER_RUNNER_SECRET"]
    # What the compose file's header says to eval: a master and the runner's secret of it.
    printed = subprocess.run(
        [sys.executable, "-m", "aether_runtime.attempt_auth"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    keys = dict(line.split("=", 1) for line in printed.splitlines())
    assert "AETHER_ATTEMPT_SECRET" not in keys
    assert proves(
        keys["AETHER_RUNNER_MASTER_SECRET"], COMPOSE_RUNNER_NAME, keys["AETHER_RUNNER_SECRET"]
    )


def test_aether_up_hands_its_runner_the_secret_of_its_name_and_the_master_to_the_scheduler(
    tmp_path: Path,
) -> None:
    stack = Stack(home=tmp_path, env={"AETHER_RUNNER_NAME": "laptop.local"})
    stack.write_nats_config()
    master = stack.runner_master_secret
    assert len(master) >= 16
    runner = stack.service_env("agent-runner")
    assert runner["AETHER_RUNNER_NAME"] == "laptop.local"
    assert proves(master, "laptop-local", runner["AETHER_RUNNER_SECRET"])
    for service in SERVICES:
        env = stack.service_env(service)
        assert (master in env.values()) == (service == "scheduler"), service
    assert stack.service_env("scheduler")["AETHER_RUNNER_MASTER_SECRET"] == master
    # Made once, kept across starts.
    stack.write_nats_config()
    assert stack.runner_master_secret == master


# --- the services' event id secret: every service that publishes events, no runner ------


def test_aether_up_makes_the_event_id_secret_once_and_gives_it_to_every_service_but_the_runner(
    tmp_path: Path,
) -> None:
    stack = Stack(home=tmp_path)
    secret = stack.load_event_id_secret()
    assert len(secret) >= 16
    for service in SERVICES:
        env = stack.service_env(service)
        assert (env.get("AETHER_EVENT_ID_SECRET") == secret) == (service in EVENT_ID_HOLDERS)
        assert (secret in env.values()) == (service in EVENT_ID_HOLDERS), service
    # Kept across starts: a new one would change the ids of steps repeated across them.
    assert Stack(home=tmp_path).load_event_id_secret() == secret
    # The operator's own, when given, for a stack on a bus of theirs (on a home that
    # keeps no other: see tests/test_up_event_id_secret.py).
    given = Stack(
        home=tmp_path / "given", env={"AETHER_EVENT_ID_SECRET": "the-operators-own-secret"}
    )
    assert given.load_event_id_secret() == "the-operators-own-secret"
    assert given.service_env("planner")["AETHER_EVENT_ID_SECRET"] == "the-operators-own-secret"


def test_compose_gives_the_event_id_secret_to_every_service_but_the_runner() -> None:
    for name, service in compose_services().items():
        env = service.get("environment") or {}
        assert ("AETHER_EVENT_ID_SECRET" in env) == (name in EVENT_ID_HOLDERS), name
        if name in EVENT_ID_HOLDERS:
            assert "${AETHER_EVENT_ID_SECRET:?" in env["AETHER_EVENT_ID_SECRET"]
    printed = subprocess.run(
        [sys.executable, "-m", "aether_runtime.attempt_auth"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    keys = dict(line.split("=", 1) for line in printed.splitlines())
    assert len(keys["AETHER_EVENT_ID_SECRET"]) >= 16


@pytest.mark.parametrize("overlay", ["local", "production"])
def test_kubernetes_gives_the_event_id_secret_to_every_service_but_the_runner(
    overlay: str,
) -> None:
    docs, _ = kustomize.render(ROOT / "k8s" / "overlays" / overlay)
    workloads = {
        d["metadata"]["name"]: d for d in docs if d["kind"] in {"Deployment", "StatefulSet"}
    }
    for name in ROLES:
        pod = workloads[name]["spec"]["template"]["spec"]
        for container in [*pod["containers"], *pod.get("initContainers", [])]:
            holds = EVENT_ID_KEY in _env_refs(container)
            assert holds == (name in EVENT_ID_HOLDERS and container in pod["containers"]), name


# --- the database role of docker compose and Kubernetes ----------------------------------


@pytest.fixture
def fresh_postgres() -> Iterator[EmbeddedPostgres]:
    data = Path(tempfile.mkdtemp(prefix="aether-test-pg-init-"))
    server = EmbeddedPostgres(data).start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(data, ignore_errors=True)


def test_init_script_makes_the_gateways_role_a_plain_owner(
    fresh_postgres: EmbeddedPostgres,
) -> None:
    """The script the postgres image runs on a new data directory (compose mounts it, the
    Kubernetes component carries the same text), run against a real server."""
    script = ROOT / "deploy" / "postgres" / "init-aether-role.sh"
    docs = yaml.safe_load_all((ROOT / "k8s/components/postgres/postgres.yaml").read_text())
    init = next(d for d in docs if d["metadata"]["name"] == "postgres-init")
    assert init["data"]["init-aether-role.sh"] == script.read_text()
    info = fresh_postgres._server.get_postmaster_info()
    import pgserver._commands as commands

    env = {
        **os.environ,
        "PATH": f"{commands.POSTGRES_BIN_PATH}:{os.environ['PATH']}",
        "POSTGRES_USER": "postgres",
        "AETHER_DB_PASSWORD": "gateway-secret",
        "PGHOST": str(info.socket_dir),
    }
    subprocess.run(["sh", str(script)], env=env, check=True, capture_output=True)
    url = f"postgresql://aether:gateway-secret@/aether?host={info.socket_dir}"
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
        assert row == (False, False, False)
        conn.execute("CREATE TABLE migrated (id int)")  # its schema is its own
    with pytest.raises(psycopg.OperationalError, match=r"(?i)permission denied"):
        psycopg.connect(url.replace("@/aether?", "@/postgres?"))

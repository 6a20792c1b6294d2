"""Least privilege in every way Aether is deployed: the NATS permissions of docker compose
and Kubernetes are the ones the roles table makes, each service is handed only its own
settings and secrets, and the database role the gateway uses is not a superuser."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
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
from aether_runtime.bus_auth import password_env, static_authorization
from aether_runtime.roles import ROLES
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
# Keys the source reads from a request's WSGI environ, not from the process environment.
NOT_READ_BY = {
    "git-broker": {"HTTP_AUTHORIZATION", "PATH_INFO", "QUERY_STRING"},
    # It chooses models but never calls one: told AETHER_MODEL_OFFLINE instead of the key.
    "scheduler": {"ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"},
}


def settings_read(service: str) -> set[str]:
    """Names of environment variables the service's source reads (as string literals)."""
    names: set[str] = set()
    for root in SOURCES[service]:
        for path in (ROOT / root).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            names |= set(
                re.findall(r"\"((?:AETHER|ANTHROPIC|DATABASE|NATS|LOG)_[A-Z0-9_]*)\"", text)
            )
            names |= set(re.findall(r"environ(?:\.get)?[\[(]\"([A-Z_0-9]+)\"", text))
    names |= {n for n in names if n.startswith("AETHER_MODEL_")}
    # A bucket's name and the NATS server's own variables: not settings of a service.
    server = {"AETHER_PLANNER_CALLS", "AETHER_RUNNERS", "NATS_ATTEMPT_ISSUER"}
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

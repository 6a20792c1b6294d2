"""docker-compose.yml run for real: the image built from the Dockerfile, NATS,
PostgreSQL and Prometheus in containers, a mission submitted through the gateway's
published port and merged into a repository on the host, with the verification command
confined by bubblewrap inside the git broker's container, the bus taking TLS only (with the
certificate the certs job made), and every service (two agent runners) scraped by
Prometheus with the alert rules loaded.

The images come from ``deploy/images/build-local.sh`` (a Debian base made with
debootstrap: no image registry). Without a Docker engine or those images the test is
skipped, except under ``CI=true``, where ``.ci/run`` builds them and a missing one fails.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
IMAGES = {
    "AETHER_IMAGE": os.environ.get("AETHER_IMAGE", "aether:local"),
    "AETHER_NATS_IMAGE": os.environ.get("AETHER_NATS_IMAGE", "aether-nats:local"),
    "AETHER_POSTGRES_IMAGE": os.environ.get("AETHER_POSTGRES_IMAGE", "aether-postgres:local"),
    "AETHER_PROMETHEUS_IMAGE": os.environ.get("AETHER_PROMETHEUS_IMAGE", "aether-prometheus:local"),
}
SERVICES = ["git-broker", "planner", "scheduler", "agent-runner", "gateway"]
REQUIREMENT = (
    "- Write docs/alpha.md about the first letter\n"
    "- Write docs/beta.md about the second letter\n"
    "- Link docs/alpha.md and docs/beta.md from README.md (after 1, 2)\n"
)
# The image's own user; a person without root runs the services as themselves.
SERVICE_UID = 10001 if os.geteuid() == 0 else os.geteuid()

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("containers")]


def _compose_command() -> list[str] | None:
    """Compose v2 (the plugin, or a docker-compose of version 2): the compose file uses
    its interpolation (``${VAR:+value}``), which version 1 refuses."""
    for command in (["docker", "compose"], ["docker-compose"]):
        if not shutil.which(command[0]):
            continue
        found = subprocess.run([*command, "version", "--short"], capture_output=True, text=True)
        major = found.stdout.strip().lstrip("v").split(".")[0]
        if found.returncode == 0 and major.isdigit() and int(major) >= 2:
            return command
    return None


def _missing() -> str | None:
    """Why the stack cannot run here, or None."""
    if not shutil.which("docker"):
        return "no docker command"
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        return "no Docker engine answers (dockerd --iptables=false starts one)"
    if _compose_command() is None:
        return "docker compose (version 2) is not installed"
    for image in IMAGES.values():
        if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode:
            return f"image {image} is missing: run deploy/images/build-local.sh"
    return None


WHY = _missing()
if WHY and os.environ.get("CI", "").lower() not in ("1", "true"):
    pytest.skip(f"{WHY}; under CI=true this test runs", allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


class ComposeStack:
    def __init__(self, home: Path) -> None:
        self.project = f"aether-test-{uuid.uuid4().hex[:8]}"
        self.repos = home / "repos"
        self.gateway_port = _free_port()
        self.prometheus_port = _free_port()
        self.admin_token = secrets.token_hex(24)
        env = dict(os.environ)
        env.update(IMAGES)
        env.update(
            AETHER_REPOS=str(self.repos),
            AETHER_GATEWAY_PORT=str(self.gateway_port),
            AETHER_PROMETHEUS_PORT=str(self.prometheus_port),
            AETHER_ADMIN_TOKEN=self.admin_token,
            AETHER_GIT_READ_TOKEN=secrets.token_hex(24),
            AETHER_UID=str(SERVICE_UID),
            AETHER_GID=str(SERVICE_UID if os.geteuid() == 0 else os.getegid()),
            POSTGRES_PASSWORD=secrets.token_hex(24),
            AETHER_DB_PASSWORD=secrets.token_hex(24),
            ANTHROPIC_API_KEY="",
            COMPOSE_PROJECT_NAME=self.project,
        )
        # A password for every NATS user the compose file asks for.
        compose_file = (ROOT / "docker-compose.yml").read_text()
        for name in set(re.findall(r"\$\{(NATS_PASSWORD_\w+):\?", compose_file)):
            env[name] = secrets.token_hex(24)
        keys = subprocess.run(
            ["python", "-m", "aether_runtime.attempt_auth"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        for line in keys.splitlines():
            name, _, value = line.partition("=")
            env[name.strip()] = value.strip()
        self.env = env
        command = _compose_command()
        assert command is not None, WHY
        self.compose = [*command, "-f", str(ROOT / "docker-compose.yml"), "-p", self.project]

    def run(self, *args: str, check: bool = True, timeout: float = 600) -> str:
        done = subprocess.run(
            [*self.compose, *args],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and done.returncode:
            raise AssertionError(f"{args} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def container(self, service: str) -> dict[str, Any]:
        ids = self.run("ps", "-q", service).split()
        assert ids, f"no container for {service}"
        found = json.loads(
            subprocess.run(
                ["docker", "inspect", ids[0]], check=True, capture_output=True, text=True
            ).stdout
        )
        info: dict[str, Any] = found[0]
        return info

    def request(self, method: str, path: str, body: object = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.gateway_port}{path}",
            data=data,
            method=method,
            headers={
                "Authorization": f"Bearer {self.admin_token}",
                "Content-Type": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status, json.loads(answer.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def prometheus(self, path: str) -> Any:
        url = f"http://127.0.0.1:{self.prometheus_port}{path}"
        with urllib.request.urlopen(url, timeout=5) as answer:
            return json.loads(answer.read())["data"]

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.gateway_port}/readyz", timeout=3
                ) as answer:
                    if answer.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(1)
        raise AssertionError(f"the gateway was not ready in {timeout} s")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeStack]:
    """One stack for the module's tests: starting it is most of their time."""
    assert WHY is None, WHY
    tmp_path = tmp_path_factory.mktemp("compose")
    stack = ComposeStack(tmp_path)
    repo = stack.repos / "demo"
    repo.mkdir(parents=True)
    _git(repo, "init", "-q", "-b", "main")
    (repo / "README.md").write_text("# Demo\n\nA project the compose stack works on.\n")
    _git(repo, "add", "README.md")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "start")
    # The services run as an unprivileged user that must own what they write.
    if os.geteuid() == 0:
        subprocess.run(
            ["chown", "-R", f"{SERVICE_UID}:{SERVICE_UID}", str(stack.repos)], check=True
        )
    try:
        # Prometheus starts once every service is healthy; two runners, as a person scales
        # them, which it finds by DNS.
        stack.run(
            "up",
            "-d",
            "--scale",
            "agent-runner=2",
            "nats",
            "postgres",
            *SERVICES,
            "prometheus",
            timeout=900,
        )
        yield stack
    finally:
        # Kept with a failed test's directory, to read.
        (tmp_path / "compose.log").write_text(stack.run("logs", "--no-color", check=False))
        stack.run("down", "-v", "--remove-orphans", check=False, timeout=300)


def test_the_compose_stack_merges_a_mission_with_its_verification_in_the_sandbox(
    stack: ComposeStack,
) -> None:
    stack.wait_ready(timeout=240)
    for service in SERVICES:
        config = stack.container(service)
        assert config["HostConfig"]["ReadonlyRootfs"] is True, service
        assert config["HostConfig"]["CapDrop"] == ["ALL"], service
        assert config["Config"]["User"].split(":")[0] == str(SERVICE_UID), service

    status, refused = stack.request("POST", "/missions", {"repository": "/repos/demo"})
    assert status == 400, refused
    status, created = stack.request(
        "POST",
        "/missions",
        {
            "repository": "/repos/demo",
            "requirement": REQUIREMENT,
            "auto_approve": True,
            # Run after each merge, in bubblewrap inside the git broker's container.
            "verify_command": "test -s README.md && git status --short",
        },
    )
    assert status == 202, created
    mission_id = created["mission_id"]
    deadline = time.monotonic() + 240
    shown: Any = None
    while time.monotonic() < deadline:
        status, shown = stack.request("GET", f"/missions/{mission_id}")
        if status == 200 and shown.get("status") in ("completed", "failed", "cancelled"):
            break
        time.sleep(1)
    assert shown is not None and shown.get("status") == "completed", shown

    repo = stack.repos / "demo"
    branch = f"aether/{mission_id}"
    files = _git(repo, "-c", "safe.directory=*", "ls-tree", "-r", "--name-only", branch).split()
    assert {"README.md", "docs/alpha.md", "docs/beta.md"} <= set(files)
    assert "docs/alpha.md" in _git(repo, "-c", "safe.directory=*", "show", f"{branch}:README.md")
    # The base branch is the person's: nothing was merged into it.
    assert _git(repo, "-c", "safe.directory=*", "ls-tree", "--name-only", "main").split() == [
        "README.md"
    ]
    # The agents' commands ran confined inside the runner's container.
    status, activity = stack.request("GET", f"/missions/{mission_id}/activity")
    assert status == 200, activity
    sandboxes = {
        entry["data"].get("sandbox")
        for entry in activity["entries"]
        if entry["type"] == "agent_started"
    }
    assert sandboxes == {"bubblewrap"}, activity


# Run in the gateway's container: the bus's port as a client without TLS sees it (the
# server's INFO, then CONNECT with the gateway's password in clear and a PING), and as the
# services see it (TLS, checked against the CA they mount).
PROBE = r"""
import asyncio, json, os, socket, ssl
import nats
plain = socket.create_connection(("nats", 4222), timeout=10)
info = json.loads(plain.makefile("rb").readline().decode().split(" ", 1)[1])
connect = {"user": os.environ["NATS_USER"], "pass": os.environ["NATS_PASSWORD"],
           "verbose": False, "pedantic": False, "protocol": 1}
reply = b""
try:
    plain.sendall(b"CONNECT " + json.dumps(connect).encode() + b"\r\nPING\r\n")
    while chunk := plain.recv(4096):
        reply += chunk
except OSError as error:
    reply += repr(error).encode()
async def tls():
    context = ssl.create_default_context(cafile=os.environ["NATS_TLS_CA"])
    client = await nats.connect(os.environ["NATS_URL"], user=os.environ["NATS_USER"],
        password=os.environ["NATS_PASSWORD"], tls=context, allow_reconnect=False,
        connect_timeout=10)
    await client.flush()
    await client.close()
    return True
print(json.dumps({"tls_required": info.get("tls_required"), "plain": reply.decode(),
                  "tls": asyncio.run(tls()), "mounted": sorted(os.listdir("/etc/nats-tls"))}))
"""


def test_the_bus_refuses_clients_without_tls_and_takes_the_services_with_it(
    stack: ComposeStack,
) -> None:
    stack.wait_ready(timeout=240)
    probe = json.loads(stack.run("exec", "-T", "gateway", "python", "-c", PROBE).strip())
    assert probe["tls_required"] is True, probe
    # No PONG: the server, waiting for a TLS handshake, closed the connection that sent a
    # CONNECT in clear (closed, not merely silent until the probe's timeout).
    assert "PONG" not in probe["plain"] and "timed out" not in probe["plain"], probe
    assert probe["tls"] is True, probe
    # The services hold the CA, not the server's key, which is the server's alone.
    assert probe["mounted"] == ["ca.crt"], probe
    key = stack.run("exec", "-T", "nats", "stat", "-c", "%a %u", "/etc/nats-tls/server.key")
    assert key.split() == ["600", "0"], key
    # The one-shot job keeps the set it made: running it again changes nothing.
    again = stack.run("run", "--rm", "--no-deps", "certs")
    assert again.startswith("kept "), again


def test_prometheus_scrapes_every_service_and_loads_the_alerts(stack: ComposeStack) -> None:
    stack.wait_ready(timeout=240)
    expected = {"gateway": 1, "scheduler": 1, "planner": 1, "agent-runner": 2, "git-broker": 1}
    deadline = time.monotonic() + 90
    up: dict[str, int] = {}
    targets: Any = None
    while time.monotonic() < deadline:
        try:
            targets = stack.prometheus("/api/v1/targets")
        except (OSError, urllib.error.URLError):
            time.sleep(1)
            continue
        up = {}
        for target in targets["activeTargets"]:
            if target["health"] == "up":
                job = target["labels"]["job"]
                up[job] = up.get(job, 0) + 1
        if all(up.get(job, 0) >= count for job, count in expected.items()):
            break
        time.sleep(1)
    assert all(up.get(job, 0) == count for job, count in expected.items()), targets
    # What the services export is what the dashboards read, under the job's name.
    query = urllib.parse.quote('aether_service_ready{job="git-broker"}')
    ready = stack.prometheus(f"/api/v1/query?query={query}")["result"]
    assert ready and ready[0]["value"][1] == "1", ready
    # Every rule of alerts.yml loaded (a rule Prometheus refuses stops it at start).
    rules = stack.prometheus("/api/v1/rules")["groups"]
    loaded = {rule["name"] for group in rules for rule in group["rules"]}
    written = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())
    names = {rule["alert"] for group in written["groups"] for rule in group["rules"]}
    assert names and names == loaded

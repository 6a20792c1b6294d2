"""docker-compose.yml, the Prometheus and Grafana configuration it mounts, and the
Dockerfile, checked without a container engine (these machines have none)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tomllib
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml

from aether.stack import SERVICES

ROOT = Path(__file__).resolve().parents[2]
INFRASTRUCTURE = {"certs", "nats", "postgres", "prometheus", "grafana"}


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def services() -> dict[str, Any]:
    found: dict[str, Any] = compose()["services"]
    return found


def volume(spec: str) -> tuple[str, str, str]:
    """``source:target[:mode]`` of a short volume syntax, ``${VAR:-default}`` included."""
    names = {}

    def hide(found: re.Match[str]) -> str:
        names[f"@{len(names)}"] = found.group(0)
        return f"@{len(names) - 1}"

    parts = re.sub(r"\$\{[^}]*\}", hide, spec).split(":")
    source, target, mode = [*parts, "rw"][:3]
    for key, value in names.items():
        source = source.replace(key, value)
    return source, target, mode


def image(service: dict[str, Any]) -> str:
    """The image a service runs unless a variable names another (``${VAR:-default}``)."""
    named: str = service.get("image", "")
    chosen = re.fullmatch(r"\$\{AETHER_(?:\w+_)?IMAGE:-([^}]+)\}", named)
    return chosen.group(1) if chosen else named


def test_images_can_be_chosen_for_a_machine_without_a_registry() -> None:
    """deploy/images/build-local.sh names its images in these variables; their defaults are
    the images a machine with a registry pulls or builds."""
    assert services()["nats"]["image"] == "${AETHER_NATS_IMAGE:-nats:2.11-alpine}"
    assert services()["postgres"]["image"] == "${AETHER_POSTGRES_IMAGE:-postgres:16-alpine}"
    assert services()["prometheus"]["image"] == "${AETHER_PROMETHEUS_IMAGE:-prom/prometheus:v3.5.0}"
    for name in [*SERVICES, "certs"]:
        assert services()[name]["image"] == "${AETHER_IMAGE:-aether:local}", name
    script = (ROOT / "deploy/images/build-local.sh").read_text()
    for variable in (
        "AETHER_IMAGE",
        "AETHER_NATS_IMAGE",
        "AETHER_POSTGRES_IMAGE",
        "AETHER_PROMETHEUS_IMAGE",
    ):
        assert f"{variable}=" in script, variable


def test_compose_runs_the_five_services_with_their_infrastructure() -> None:
    assert set(services()) == set(SERVICES) | INFRASTRUCTURE
    for name, (module, port) in SERVICES.items():
        service = services()[name]
        assert service["command"] == ["python", "-m", module], name
        assert service["environment"]["PORT"] == str(port), name
        assert service["environment"]["NATS_URL"] == "tls://nats:4222", name
        assert service["environment"]["NATS_TLS_CA"] == "/etc/nats-tls/ca.crt", name
        assert service["build"] == "." and image(service) == "aether:local", name


def test_every_service_has_a_health_check() -> None:
    for name, service in services().items():
        if name == "certs":  # runs once and exits; nats waits for it to succeed
            continue
        test = service.get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name} has no health check"
    for name in SERVICES:
        command = " ".join(services()[name]["healthcheck"]["test"])
        assert "/readyz" in command, f"{name} should be healthy only when ready"


def test_start_up_order_waits_for_health_not_just_start() -> None:
    names = set(services())
    for name, service in services().items():
        for dependency, condition in (service.get("depends_on") or {}).items():
            assert dependency in names, f"{name} depends on unknown {dependency}"
            if dependency == "certs":  # a one-shot job, not a server
                assert condition == {"condition": "service_completed_successfully"}, name
            else:
                assert condition == {"condition": "service_healthy"}, (name, dependency)
    for name in SERVICES:
        assert "nats" in services()[name]["depends_on"], name
    assert "postgres" in services()["gateway"]["depends_on"]
    assert set(services()["prometheus"]["depends_on"]) == set(SERVICES)
    assert set(services()["grafana"]["depends_on"]) == {"prometheus"}
    # The dependency graph has no cycle (compose would refuse it).
    order: list[str] = []
    pending = dict.fromkeys(names)
    while pending:
        ready = [n for n in pending if set(services()[n].get("depends_on") or {}) <= set(order)]
        assert ready, f"depends_on cycle among {sorted(pending)}"
        for n in ready:
            order.append(n)
            del pending[n]


def test_services_run_unprivileged_and_publish_only_on_localhost() -> None:
    for name in SERVICES:
        service = services()[name]
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
        assert not service["user"].startswith(("0:", "root")), name
    for name, service in services().items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond this host"


def test_postgres_is_healthy_only_when_it_answers_over_tcp() -> None:
    """The image's init-time server listens on the Unix socket only; a check over the
    socket can pass before the real server (the one the services reach over TCP) is up."""
    test = services()["postgres"]["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL"
    args = shlex.split(test[1])
    assert args[0] == "pg_isready"
    hosts = [args[i + 1] for i, arg in enumerate(args[:-1]) if arg in ("-h", "--host")]
    hosts += [arg.split("=", 1)[1] for arg in args if arg.startswith("--host=")]
    assert hosts, "pg_isready without -h checks the Unix socket"
    assert hosts[-1] in ("127.0.0.1", "localhost", "::1"), f"{hosts[-1]} is not TCP to itself"


def test_volumes_are_declared_and_images_pinned() -> None:
    declared = set(compose().get("volumes") or {})
    for name, service in services().items():
        for spec in service.get("volumes", []):
            source = volume(spec)[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
            elif not source.startswith(("/", "$")):
                assert source in declared, f"{name} mounts undeclared volume {source}"
        if "build" not in service:
            named = image(service)
            assert re.search(r":[\w.-]+$", named) and not named.endswith(":latest"), name


def test_broker_and_agents_see_repositories_and_worktrees_at_the_same_paths() -> None:
    """Agents work in worktrees the broker creates (and the journal lives beside them), so
    both must mount them at the same path; the planner reads repositories through the
    broker's read API, with its read token, and mounts none."""

    def mounts(name: str) -> dict[str, tuple[str, str]]:
        found = (volume(v) for v in services()[name].get("volumes", []))
        return {target: (source, mode) for source, target, mode in found}

    worktrees = services()["git-broker"]["environment"]["AETHER_WORKTREES_DIR"]
    assert services()["agent-runner"]["environment"]["AETHER_WORKTREES_DIR"] == worktrees
    (shared,) = [path for path in mounts("git-broker") if worktrees.startswith(path + "/")]
    assert mounts("agent-runner")[shared] == mounts("git-broker")[shared]
    roots = services()["git-broker"]["environment"]["AETHER_REPOSITORY_ROOTS"]
    assert roots == shared
    for name in ("gateway", "scheduler", "planner"):
        # The bus's CA alone (checked with the bus's TLS below).
        assert set(mounts(name)) == {"/etc/nats-tls"}, f"{name} needs no repository access"
    broker_port = services()["git-broker"]["environment"]["PORT"]
    for name, prefix in (("gateway", "AETHER_GATEWAY"), ("planner", "AETHER_PLANNER")):
        env = services()[name]["environment"]
        assert env[f"{prefix}_BROKER_URL"] == f"http://git-broker:{broker_port}"
        assert (
            env[f"{prefix}_BROKER_TOKEN"]
            == services()["git-broker"]["environment"]["AETHER_GIT_READ_TOKEN"]
        )


def test_nats_keeps_jetstream_on_a_volume_and_syncs_every_write() -> None:
    nats = services()["nats"]
    assert "/data" in [volume(v)[1] for v in nats["volumes"]]
    conf = (ROOT / "deploy" / "nats" / "nats.conf").read_text()
    assert "store_dir: /data" in conf
    assert re.search(r"^\s*sync_interval:\s*always", conf, re.M)
    assert "js-enabled-only" in " ".join(nats["healthcheck"]["test"])


def nats_conf_block(text: str, name: str) -> dict[str, str]:
    """The ``key: value`` lines of a top-level ``name { ... }`` block of a NATS config."""
    found = re.search(rf"^{name}\s*\{{(.*?)^\}}", text, re.M | re.S)
    assert found, f"no {name} block"
    pairs = (line.split(":", 1) for line in found.group(1).splitlines() if ":" in line)
    return {k.strip(): v.strip() for k, v in pairs if not k.strip().startswith("#")}


def mounts(service: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """A service's mounts: target → (source, mode)."""
    found = {}
    for spec in service.get("volumes", []):
        source, target, mode = volume(spec)
        found[target] = (source, mode)
    return found


def test_the_bus_takes_tls_only_with_a_certificate_made_for_nats(tmp_path: Path) -> None:
    """Every service's bus URL is TLS to nats, checked against the CA the certs service
    makes, mounted read-only; the server requires TLS with the certificate that service
    makes, whose key is in no container but the server's and the maker's."""
    from aether_runtime import nats_certs

    certs, nats = services()["certs"], services()["nats"]
    assert nats["depends_on"]["certs"] == {"condition": "service_completed_successfully"}
    command = certs["command"]
    assert command[:3] == ["python", "-m", "aether_runtime.nats_certs"]
    ca_dir, server_dir = command[3:5]
    made = mounts(certs)
    ca_volume, server_volume = made[ca_dir][0], made[server_dir][0]
    assert ca_volume != server_volume
    assert {ca_volume, server_volume} <= set(compose()["volumes"])
    assert not any(arg.startswith("--host") for arg in command)  # the default: nats
    # What it writes, where: the CA's certificate alone in one volume.
    outcome = nats_certs.ensure(tmp_path / "ca", tmp_path / "server")
    assert [p.name for p in (tmp_path / "ca").iterdir()] == [outcome.ca.name]

    # The server: TLS for clients, with the certificate and key from the key's volume.
    conf = (ROOT / "deploy/nats/nats.conf").read_text()
    tls = nats_conf_block(conf, "tls")
    assert "allow_non_tls" not in conf
    server_mounts = {source: target for target, (source, mode) in mounts(nats).items()}
    assert mounts(nats)[server_mounts[server_volume]][1] == "ro"
    assert tls["cert_file"] == f"{server_mounts[server_volume]}/{outcome.cert.name}"
    assert tls["key_file"] == f"{server_mounts[server_volume]}/{outcome.key.name}"
    assert nats_conf_block(conf, "jetstream")  # the parser reads the other block too
    assert "http_port: 8222" in conf  # the health check's monitoring port, as before

    for name in SERVICES:
        service = services()[name]
        url = service["environment"]["NATS_URL"]
        assert url.startswith("tls://"), name
        assert urllib.parse.urlsplit(url).hostname == "nats", name
        ca = Path(service["environment"]["NATS_TLS_CA"])
        assert ca.name == outcome.ca.name, name
        assert mounts(service)[str(ca.parent)] == (ca_volume, "ro"), name
    # The server's key: in the server and its maker only.
    for name, service in services().items():
        holds = any(source == server_volume for source, _ in mounts(service).values())
        assert holds == (name in ("nats", "certs")), name
        for key, value in (service.get("environment") or {}).items():
            assert "server.key" not in str(value), (name, key)


def test_prometheus_scrapes_every_service_under_its_name() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets: dict[str, list[str]] = {}
    for job in config["scrape_configs"]:
        found = [t for s in job.get("static_configs", []) for t in s["targets"]]
        found += [f"{n}:{s['port']}" for s in job.get("dns_sd_configs", []) for n in s["names"]]
        targets[job["job_name"]] = found
    for name, (_, port) in SERVICES.items():
        assert targets.get(name) == [f"{name}:{port}"], f"job {name} scrapes {targets.get(name)}"
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    mounts = services()["prometheus"]["volumes"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in mounts


def test_grafana_is_provisioned_with_the_datasource_and_the_dashboards() -> None:
    grafana = services()["grafana"]
    mounts = {volume(v)[1]: volume(v)[0] for v in grafana["volumes"]}
    assert mounts["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    provisioning = ROOT / "deploy" / "grafana" / "provisioning"
    providers = yaml.safe_load((provisioning / "dashboards" / "aether.yml").read_text())
    (provider,) = providers["providers"]
    dashboards_in = provider["options"]["path"]
    assert mounts[dashboards_in] == "./deploy/grafana/dashboards"
    sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (ROOT / "deploy/grafana/dashboards" / Path(home).name).is_file()


# --- the image -----------------------------------------------------------------------------


def dockerfile_stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuations joined), split into build stages."""
    text = (ROOT / "Dockerfile").read_text()
    text = re.sub(r"\\\n\s*", " ", text)
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def uv_syncs(stage: list[str]) -> list[list[str]]:
    """The arguments of every ``uv sync`` a stage runs."""
    out = []
    for line in stage:
        if line.upper().startswith("RUN ") and "uv sync" in line:
            out.append(shlex.split(line[line.index("uv sync") :])[2:])
    return out


def parser_directives() -> dict[str, str]:
    """The Dockerfile's parser directives: ``# key=value`` lines before anything else."""
    found: dict[str, str] = {}
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        directive = re.fullmatch(r"#\s*([A-Za-z]+)\s*=\s*(\S+)\s*", line)
        if directive is None:
            break  # a comment, a blank line or an instruction ends the directives
        found[directive.group(1).lower()] = directive.group(2)
    return found


# Flags of the Dockerfile frontend built into Docker's BuildKit (23.0 and later), which a
# build without a `# syntax=` line uses: anything newer would need a frontend image.
BUILT_IN_FLAGS = {
    "RUN": {"--mount", "--network"},
    "COPY": {"--from", "--chown", "--chmod", "--link"},
    "ADD": {"--chown", "--chmod", "--link"},
}


def test_image_builds_without_pulling_a_dockerfile_frontend() -> None:
    """A ``# syntax=`` directive makes BuildKit pull the named frontend image first, so
    the build fails where no registry is reachable, even with the base image at hand."""
    assert "syntax" not in parser_directives()
    used = 0
    for stage in dockerfile_stages():
        for line in stage:
            keyword, *words = line.split()
            if keyword.upper() not in BUILT_IN_FLAGS:
                continue
            flags = set()
            for word in words:  # the flags come before the command or the sources
                if not word.startswith("--"):
                    break
                flags.add(word.split("=", 1)[0])
            used += len(flags)
            unknown = flags - BUILT_IN_FLAGS[keyword.upper()]
            assert not unknown, f"{line}: {sorted(unknown)} would need a newer frontend"
    assert used  # the check reads the flags the Dockerfile does use (--mount, --from)


def test_image_is_built_from_the_lock_without_dev_tools_and_runs_as_non_root() -> None:
    build, final = dockerfile_stages()
    for args in uv_syncs(build):
        assert "--locked" in args and "--no-dev" in args, args
    assert len(uv_syncs(build)) == 2
    packages = {
        args[i + 1] for args in uv_syncs(build) for i, a in enumerate(args) if a == "--package"
    }
    assert packages == {f"aether-{name}" for name in SERVICES}
    users = [line.split()[1] for line in final if line.upper().startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert any(line.upper().startswith("HEALTHCHECK ") and "/healthz" in line for line in final)


def test_image_copies_every_workspace_member_before_installing_dependencies() -> None:
    """The dependency layer is built from pyproject files alone: a member added to the
    workspace but not to the Dockerfile would fail `uv sync --locked` in the image."""
    build, _ = dockerfile_stages()
    root = tomllib.loads((ROOT / "pyproject.toml").read_text())
    members = {
        str(path.relative_to(ROOT))
        for pattern in root["tool"]["uv"]["workspace"]["members"]
        for path in ROOT.glob(pattern)
        if (path / "pyproject.toml").is_file()
    }
    copied = {
        line.split()[1].removesuffix("/pyproject.toml")
        for line in build
        if line.upper().startswith("COPY ") and line.split()[1].endswith("/pyproject.toml")
    }
    assert copied == members


def copy_into(context: Path, item: str, destination: str) -> None:
    """``COPY item destination`` from the repository into ``context``."""
    origin, target = ROOT / item, context / destination
    if origin.is_dir():
        ignore = shutil.ignore_patterns("tests", "__pycache__", "*.pyc")
        shutil.copytree(origin, target, dirs_exist_ok=True, ignore=ignore)
        return
    if destination.endswith("/"):
        target = target / origin.name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(origin, target)


@pytest.mark.slow
def test_image_environment_runs_every_service_without_the_command_line_package(
    tmp_path: Path,
) -> None:
    """Do what the Dockerfile's build stage does (its COPYs and `uv sync`s, from the uv
    cache, offline) and import every service's entry point with the result."""
    uv = shutil.which("uv")
    if uv is None:
        pytest.fail("uv is needed to check the image's environment")
    build, _ = dockerfile_stages()
    source = tmp_path / "src"
    source.mkdir()
    environment = tmp_path / "venv"
    env = {
        **os.environ,
        "UV_PROJECT_ENVIRONMENT": str(environment),
        "UV_PYTHON_DOWNLOADS": "never",
    }
    env.pop("VIRTUAL_ENV", None)
    env.pop("UV_COMPILE_BYTECODE", None)
    for line in build:
        if line.upper().startswith("COPY "):
            *items, destination = line.split()[1:]
            for item in items:
                copy_into(source, item, destination)
        elif line.upper().startswith("RUN ") and "uv sync" in line:
            args = shlex.split(line[line.index("uv sync") :])
            done = subprocess.run(
                [uv, *args[1:], "--offline", "--no-compile-bytecode"],
                cwd=source,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            assert done.returncode == 0, done.stderr
    python = environment / "bin" / "python"
    installed = subprocess.run(
        [str(python), "-c", "import importlib.util as u; print(u.find_spec('aether') is None)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert installed.stdout.strip() == "True", "the command line package is in the image"
    # One interpreter for all five (each import costs seconds), and the command the runner
    # pod's init container runs (it derives the runner's secret); every failure is reported.
    entries = [f"{module}.__main__" for module, _ in SERVICES.values()]
    entries.append("aether_runtime.runner_secrets")
    script = (
        "import importlib, traceback\n"
        f"for module in {entries!r}:\n"
        "    try:\n"
        "        importlib.import_module(module)\n"
        "    except Exception:\n"
        "        print(module, traceback.format_exc())\n"
    )
    imported = subprocess.run(
        [str(python), "-c", script], capture_output=True, text=True, timeout=300, check=False
    )
    assert imported.returncode == 0 and not imported.stdout, imported.stdout + imported.stderr


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ``${NAME:-default}`` and ``${NAME}`` substitution, for one value."""

    def one(found: re.Match[str]) -> str:
        name, default = found.group(1), found.group(3) or ""
        return env.get(name) or (default if found.group(2) == ":-" else "")

    return re.sub(r"\$\{(\w+)(:-|:\?)?([^}]*)\}", one, value)


def test_gateway_oidc_is_off_by_default_and_wired_when_set(tmp_path: Path) -> None:
    from aether_gateway.config import OidcEnv

    environment = services()["gateway"]["environment"]
    oidc = {name: value for name, value in environment.items() if name.startswith("AETHER_OIDC_")}
    assert {"AETHER_OIDC_ISSUER", "AETHER_OIDC_CLIENT_ID"} <= set(oidc)
    assert {"AETHER_OIDC_CLIENT_SECRET", "AETHER_OIDC_CLIENT_SECRET_FILE"} <= set(oidc)
    for name, service in services().items():
        if name != "gateway":
            assert not any(key.startswith("AETHER_OIDC_") for key in service.get("environment", {}))
    # Nothing set in the operator's environment: no OIDC at all.
    assert OidcEnv.from_env({k: interpolate(v, {}) for k, v in oidc.items()}).settings() is None
    secret = tmp_path / "oidc-client-secret"
    secret.write_text("s3cret\n")
    operator = {
        "AETHER_OIDC_ISSUER": "https://idp.test",
        "AETHER_OIDC_CLIENT_ID": "aether",
        "AETHER_OIDC_CLIENT_SECRET_FILE": str(secret),
    }
    settings = OidcEnv.from_env({k: interpolate(v, operator) for k, v in oidc.items()}).settings()
    assert settings is not None
    assert (settings.issuer, settings.client_id, settings.client_secret) == (
        "https://idp.test",
        "aether",
        "s3cret",
    )
    assert settings.role_claim == "roles"
    assert settings.audience is None


def test_git_broker_ssh_is_off_by_default_and_wired_when_set(tmp_path: Path) -> None:
    from aether_git_broker.config import GitBrokerSettings

    environment = services()["git-broker"]["environment"]
    ssh = {name: value for name, value in environment.items() if name.startswith("AETHER_GIT_SSH_")}
    assert set(ssh) == {
        "AETHER_GIT_SSH_KEY",
        "AETHER_GIT_SSH_KNOWN_HOSTS",
        "AETHER_GIT_SSH_KEY_PASSPHRASE_FILE",
        "AETHER_GIT_SSH_PORTS",
    }
    for name, service in services().items():
        if name != "git-broker":  # the key is the broker's alone
            assert not any(
                key.startswith("AETHER_GIT_SSH_") for key in service.get("environment", {})
            )
    base = {"AETHER_WORKTREES_DIR": str(tmp_path / "worktrees")}
    unset = GitBrokerSettings.from_env({**base, **{k: interpolate(v, {}) for k, v in ssh.items()}})
    assert unset.ssh.problem() is not None  # SSH remotes refused, with the reason
    assert unset.ssh.passphrase_file is None
    key, known = tmp_path / "git-ssh-key", tmp_path / "git-ssh-known-hosts"
    passphrase = tmp_path / "git-ssh-passphrase"
    key.write_text("key\n")
    known.write_text("")
    passphrase.write_text("words\n")
    operator = {
        "AETHER_GIT_SSH_KEY": str(key),
        "AETHER_GIT_SSH_KNOWN_HOSTS": str(known),
        "AETHER_GIT_SSH_KEY_PASSPHRASE_FILE": str(passphrase),
        "AETHER_GIT_SSH_PORTS": "git.internal=7999",
    }
    wired = GitBrokerSettings.from_env(
        {**base, **{k: interpolate(v, operator) for k, v in ssh.items()}}
    ).ssh
    assert wired.problem() is None
    assert (wired.key, wired.known_hosts, wired.passphrase_file, wired.ports) == (
        str(key),
        str(known),
        str(passphrase),
        (("git.internal", 7999),),
    )

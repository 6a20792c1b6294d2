# One image for every service; the command chooses which one runs:
#   docker run aether python -m aether_scheduler
# No `# syntax=` line: that makes BuildKit pull a frontend image, and the build must work
# without a registry. What it uses (RUN --mount=type=cache) is in the Dockerfile frontend
# built into Docker's BuildKit since the 1.2 syntax (every Docker from 23.0 on).
# Built from uv.lock alone (`--locked` fails the build if the lock is stale), with the five
# services and their libraries only: no dev tools, and not the `aether` command line with
# its embedded NATS and PostgreSQL (a deployment runs real ones).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
RUN pip install --no-cache-dir "uv==0.13.8"
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /src
# Dependencies first, from the lock and the workspace's pyproject files only, so that
# editing code does not reinstall them.
COPY pyproject.toml uv.lock README.md ./
COPY libs/events/pyproject.toml libs/events/
COPY libs/llm/pyproject.toml libs/llm/
COPY libs/runtime/pyproject.toml libs/runtime/
COPY libs/sandbox/pyproject.toml libs/sandbox/
COPY services/agent-runner/pyproject.toml services/agent-runner/
COPY services/gateway/pyproject.toml services/gateway/
COPY services/git-broker/pyproject.toml services/git-broker/
COPY services/planner/pyproject.toml services/planner/
COPY services/scheduler/pyproject.toml services/scheduler/
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --no-install-workspace \
      --package aether-gateway --package aether-planner --package aether-scheduler \
      --package aether-agent-runner --package aether-git-broker
COPY libs ./libs
COPY services ./services
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --no-editable \
      --package aether-gateway --package aether-planner --package aether-scheduler \
      --package aether-agent-runner --package aether-git-broker

FROM ${PYTHON_IMAGE}
# bubblewrap confines every command an agent runs and every verification command (see the
# docs/security.md for what the container must be allowed for it to start); git is there
# for those commands (a verification's `git diff`, an agent's `git log`): the services
# themselves work on repositories through dulwich.
RUN apt-get update \
 && apt-get install -y --no-install-recommends bubblewrap git \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --gid 10001 aether \
 && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin aether \
 && mkdir -p /data/worktrees \
 && chown -R aether:aether /data
# Owned by root and read-only to the services: the code cannot be changed by what runs it.
COPY --from=build /app/.venv /app/.venv
ENV PATH="/app/.venv/bin:$PATH" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    AETHER_HTTP_HOST=0.0.0.0 \
    AETHER_WORKTREES_DIR=/data/worktrees
USER 10001:10001
WORKDIR /home/aether
# gateway, scheduler, planner, agent-runner, git-broker
EXPOSE 8100 8101 8102 8103 8104
# Liveness; orchestrators that order start-up ask /readyz instead (docker-compose.yml, k8s/).
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=5 \
  CMD ["python", "-c", "import os,urllib.request as u; u.urlopen(f'http://127.0.0.1:{os.environ.get(\"PORT\",\"8100\")}/healthz', timeout=2)"]
CMD ["python", "-m", "aether_gateway"]

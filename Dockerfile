# One image for every service; the command chooses which one runs.
FROM python:3.11-slim AS build
RUN pip install --no-cache-dir "uv>=0.9,<0.14"
WORKDIR /app
COPY pyproject.toml uv.lock README.md ./
COPY libs ./libs
COPY services ./services
COPY src ./src
RUN uv sync --locked --no-dev --no-editable

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 aether
COPY --from=build /app/.venv /app/.venv
ENV PATH="/app/.venv/bin:$PATH" \
    PYTHONUNBUFFERED=1 \
    AETHER_HTTP_HOST=0.0.0.0 \
    AETHER_WORKTREES_DIR=/data/worktrees
USER aether
WORKDIR /home/aether
HEALTHCHECK --interval=10s --timeout=3s --retries=5 \
  CMD python -c "import os,urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ.get(\"PORT\",\"8000\")}/healthz', timeout=2)"
CMD ["python", "-m", "aether_gateway"]

# Common tasks. Every target runs through uv in the locked environment; `make help` lists
# them. CI runs `.ci/run`, which is `setup`, `lint`, `typecheck` and `test` in one.

.DEFAULT_GOAL := help
.PHONY: help setup hooks lint fmt typecheck check test test-cpu test-unit test-e2e test-ops bench bench-suite chaos demo up ci

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

setup: ## install the workspace, exactly as locked, with its bytecode compiled
	uv sync --locked --compile-bytecode

hooks: setup ## install the pre-commit hooks (ruff, ruff format, mypy)
	uv run pre-commit install

lint: ## ruff's rules and formatting, checked (nothing is changed)
	uv run ruff check .
	uv run ruff format --check .

fmt: ## format, and apply ruff's safe fixes
	uv run ruff format .
	uv run ruff check --fix .

typecheck: ## mypy --strict over libs, services, src and bench/chaos
	uv run mypy

check: lint typecheck ## what a commit must pass

test: ## the whole suite (four workers; about four minutes on two quiet cores)
	uv run pytest

test-cpu: ## the whole suite, then where its CPU went, test file by test file
	uv run pytest -p tests.cputime

test-unit: ## the pure rules and the CLI, with no servers to start
	uv run pytest -q libs/events/tests/test_catalogue.py libs/events/tests/test_shared_rules.py \
		services/scheduler/tests/test_domain.py services/scheduler/tests/test_properties.py \
		services/gateway/tests/test_domain.py services/planner/tests/test_validation.py \
		services/agent-runner/tests/test_domain.py services/git-broker/tests/test_domain.py \
		tests/test_cli.py tests/test_one_status.py

test-e2e: ## the five services as processes, against real NATS and PostgreSQL
	uv run pytest -m e2e tests/e2e

test-ops: ## compose, Kubernetes, dashboards and alerts
	uv run pytest tests/ops

bench: ## per-task overhead of the whole pipeline, next to plain git
	uv run python bench/overhead.py

bench-suite: ## the whole suite's wall time and CPU, in units of a CPU probe run beside it
	uv run python bench/suite.py

chaos: ## 50 trials of killing a service or NATS mid-mission
	uv run python -m bench.chaos --trials 50

demo: ## a sample repository and one whole mission on it (offline model without a key)
	uv run aether demo

up: ## NATS, PostgreSQL and the five services locally; Ctrl-C stops all
	uv run aether up

ci: ## what CI runs, from a clean clone
	.ci/run

# tritonfleet — every target documents itself: `make help`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
REPO ?= model_repository
MODEL_SIZE ?= 8M

.DEFAULT_GOAL := help

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}'

setup: $(VENV)/.installed ## Create .venv, install CPU torch, the project, dev tools and perf_analyzer

$(VENV)/.installed: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh $(VENV)
	touch $@

demo: setup ## Main job: export ESM-2 (random weights, $(MODEL_SIZE)), serve it on a local tritonserver, embed a real protein
	$(PY) -m deploy.demo --model-size $(MODEL_SIZE) --model-repository $(REPO)

export: setup ## Regenerate model_repository/ (configs + weights) for the default ESM-2
	$(PY) -m export esm2 --random-init $(MODEL_SIZE) --output $(REPO)

serve: setup ## Serve model_repository/ on 127.0.0.1:8000/8001/8002 until Ctrl-C (self-healing on; docs/reliability.md)
	$(PY) -m deploy.local --model-repository $(REPO)

test: setup ## Run every test (unit + integration against a real local tritonserver)
	$(PY) -m pytest

test-unit: setup ## Run the tests that need no server
	$(PY) -m pytest -m unit

test-integration: setup ## Run the tests that start a real tritonserver
	$(PY) -m pytest -m integration

lint: setup ## ruff check + format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup ## Apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

loadtest: export ## Headless Locust run (HTTP + gRPC) against a local server; reports under reports/
	$(PY) -m loadtest.run --start-local-server --model-repository $(REPO)

perf: export ## perf_analyzer sweeps over every model in the repository; table + plots under reports/
	$(PY) -m loadtest.perf_sweep --start-local-server --model-repository $(REPO)

bench: export ## One-run benchmark: raw engine vs Triton (batching on/off) vs a hand-written FastAPI service
	$(PY) -m loadtest.bench --model-repository $(REPO)

chaos: setup ## Fault injection: SIGKILL a model instance under load, report recovery time and failures
	$(PY) -m tritonfleet.loadtest.chaos

clean: ## Remove generated weights and reports (keeps committed configs)
	git clean -fdX model_repository reports

.PHONY: help setup demo export serve test test-unit test-integration lint format loadtest perf bench chaos clean

# tritonfleet — every target documents itself: `make help`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
REPO ?= model_repository
MODEL_SIZE ?= 8M
P99_MS ?= 1500
TUNE_SMOKE_DIR := reports/tune-smoke

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

test-unit: setup ## Fast tier (about 1 min): the tests that need no server
	$(PY) -m pytest -m unit

test-fast: test-unit ## Alias of test-unit: the fast tier; `make test` is the full tier CI runs

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

bench: export ## One-run benchmark (~20 min): raw engine vs Triton vs FastAPI, int8 and fp32 rows; reports/bench.md
	$(PY) -m loadtest.bench --model-repository $(REPO)

engines: setup ## Engine study (~12 min): every ESM-2 engine variant in-process vs eager PyTorch, 8M/35M; reports/engines.md
	$(PY) -m tritonfleet.loadtest.engines

cpu-plan: setup ## CPU plan study (~8 min): instances x threads x batching for esm2_onnx vs raw ORT; reports/cpu_plan.md
	$(PY) -m tritonfleet.loadtest.cpu_plan

gpu-check: setup ## GPU path in one go (<= 8 min on one GPU): fp32/fp16 export, parity, bench c=1/16/64; reports/gpu.md
	$(PY) -m tritonfleet.loadtest.gpu_check --device cuda

tune: export ## Model Analyzer search for the best esm2_onnx config on this machine (p99 <= $(P99_MS) ms, <= 20 min); reports/tune/
	$(PY) -m tritonfleet.loadtest.tune --model-repository $(REPO) --model esm2_onnx --p99-ms $(P99_MS) --output reports/tune

tune-smoke: setup ## The make tune path on a tiny exported model: 2 configs, about 2 min; reports/tune-smoke/
	rm -rf $(TUNE_SMOKE_DIR)/repository
	$(PY) -m export torch --factory examples.my_model:build --name pooler --input-names IDS,MASK \
		--output-names EMBEDDING --gpus none --formats onnx --output $(TUNE_SMOKE_DIR)/repository
	$(PY) -m tritonfleet.loadtest.tune --preset smoke --model-repository $(TUNE_SMOKE_DIR)/repository \
		--model pooler_onnx --output $(TUNE_SMOKE_DIR)

priorities: setup ## Interactive latency and bulk throughput with and without priority levels (~15 min on 2 cores); reports/priorities.md
	$(PY) -m tritonfleet.loadtest.priorities

chaos: setup ## Fault injection: SIGKILL a model instance under load, report recovery time and failures
	$(PY) -m tritonfleet.loadtest.chaos

clean: ## Remove generated weights and reports (keeps committed configs)
	git clean -fdX model_repository reports

.PHONY: help setup demo export serve test test-unit test-fast test-integration lint format loadtest perf bench engines \
	cpu-plan gpu-check tune tune-smoke priorities chaos clean

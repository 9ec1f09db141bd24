# tritonfleet — every target documents itself: `make help`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# The one console script (`tritonfleet --help`); installed into the venv by `make setup`.
TF := $(VENV)/bin/tritonfleet
REPO ?= model_repository
MODEL_SIZE ?= 8M
P99_MS ?= 1500
TUNE_SMOKE_DIR := reports/tune-smoke
# Targets that measure export into this build folder, for this machine (TARGET=auto: its GPUs, else its cores), and
# never rewrite the committed model_repository/ (tests/unit/test_cli_make.py). EXPORT_FLAGS: extra export flags.
BUILD_REPO ?= build/model_repository
TARGET ?= auto
EXPORT_FLAGS ?=
# `make export` regenerates the committed repository with the canonical command (export/esm2/repository.py
# CANONICAL_ARGS): the same files on every machine.
CANONICAL_EXPORT := esm2 --random-init 8M --target cpu:2 --precision int8 --output model_repository
HELP_VARIABLES := MODEL_SIZE P99_MS REPO BUILD_REPO TARGET

.DEFAULT_GOAL := help

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | sed $(foreach v,$(HELP_VARIABLES),-e 's|$$($(v))|$($(v))|g') \
		| awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}'

setup: $(VENV)/.installed ## Create .venv, install CPU torch, the project, dev tools and perf_analyzer

$(VENV)/.installed: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh $(VENV)
	touch $@

demo: setup ## Main job: export ESM-2 (random weights, $(MODEL_SIZE)) into $(BUILD_REPO), serve it on a local tritonserver, embed a real protein
	$(TF) demo --random-init $(MODEL_SIZE) --model-repository $(BUILD_REPO)

export: setup ## Regenerate model_repository/ (configs + weights) with the canonical command (serving target cpu:2)
	$(TF) export $(CANONICAL_EXPORT)

build-repository: setup ## Export ESM-2 $(MODEL_SIZE) for this machine (TARGET=$(TARGET)) into $(BUILD_REPO): what the measuring targets serve
	$(TF) export esm2 --random-init $(MODEL_SIZE) --target $(TARGET) --output $(BUILD_REPO) $(EXPORT_FLAGS)

serve: setup ## Serve model_repository/ on 127.0.0.1:8000/8001/8002 until Ctrl-C (self-healing on; docs/reliability.md)
	$(TF) serve --model-repository $(REPO)

test: setup ## Run every test (unit + integration against a real local tritonserver)
	$(PY) -m pytest

test-unit: setup ## Fast tier (about 1 min): the tests that need no server
	$(PY) -m pytest -m unit

test-fast: test-unit ## Alias of test-unit: the fast tier; `make test` is the full tier CI runs

test-integration: setup ## Run the tests that start a real tritonserver
	$(PY) -m pytest -m integration

lint: setup ## ruff check + format check, and the architecture checks (import-linter layers, one home per idea)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q tests/unit/test_architecture.py

format: setup ## Apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

loadtest: build-repository ## Headless Locust run (HTTP + gRPC) against a local server on $(BUILD_REPO); reports under reports/
	$(TF) loadtest --start-local-server --model-repository $(BUILD_REPO)

perf: build-repository ## perf_analyzer sweeps over every model of $(BUILD_REPO); table + plots under reports/
	$(TF) perf --start-local-server --model-repository $(BUILD_REPO)

bench: build-repository ## One-run benchmark (~20 min) on $(BUILD_REPO): raw engine vs Triton vs FastAPI, int8 and fp32 rows; reports/bench.md
	$(TF) bench --model-repository $(BUILD_REPO)

engines: setup ## Engine study (~12 min): every ESM-2 engine variant in-process vs eager PyTorch, 8M/35M; reports/engines.md
	$(TF) engines

flagship: setup ## Flagship sizes (~10 min 150M, ~25 min 650M on 2 cores): export time + peak memory, served esm2 vs eager fp32 vs FastAPI; reports/flagship.md
	$(TF) flagship --sizes 150M 650M

cpu-plan: setup ## CPU plan study (~8 min): instances x threads x batching for esm2_onnx vs raw ORT; reports/cpu_plan.md
	$(TF) cpu-plan

gpu-check: setup ## GPU path in one go (<= 8 min on one GPU): fp32/fp16 export, parity, bench c=1/16/64; reports/gpu.md
	$(TF) gpu-check --device cuda

tune: build-repository ## Model Analyzer search for the best esm2_onnx config of $(BUILD_REPO) on this machine (p99 <= $(P99_MS) ms, <= 20 min); reports/tune/
	$(TF) tune --model-repository $(BUILD_REPO) --model esm2_onnx --p99-ms $(P99_MS) --output reports/tune

tune-smoke: setup ## The make tune path on a tiny exported model: 2 configs, about 2 min; reports/tune-smoke/
	rm -rf $(TUNE_SMOKE_DIR)/repository
	$(TF) export torch --factory examples.my_model:build --name pooler --input-names IDS,MASK \
		--output-names EMBEDDING --input-roles TOKEN_IDS,ATTENTION_MASK --output-roles EMBEDDING \
		--target cpu:$$(nproc) --formats onnx --output $(TUNE_SMOKE_DIR)/repository
	$(TF) tune --preset smoke --model-repository $(TUNE_SMOKE_DIR)/repository \
		--model pooler_onnx --output $(TUNE_SMOKE_DIR)

priorities: setup ## Interactive latency under bulk load with the shipped defaults (~12 min on 2 cores); reports/priorities.md
	$(TF) priorities

bulk: setup ## Response cache vs client dedup on a FASTA with 30 % repeats (~8 min); reports/bulk.md
	$(TF) bulk-study

chaos: setup ## Fault injection: SIGKILL a model instance under load, report recovery time and failures
	$(TF) chaos

fleet: setup ## N replicas behind HAProxy on 127.0.0.1:8000/8001 (metrics 8002, control 8003) until Ctrl-C; REPLICAS=auto
	$(PY) -m tritonfleet.deploy.fleet --model-repository $(REPO) --replicas $(or $(REPLICAS),auto)

fleet-chaos: setup ## Fleet chaos study (~8 min): kill/hang a replica, rolling update, scale, canary, throughput; reports/fleet.md
	$(PY) -m tritonfleet.loadtest.fleet_chaos --output reports/fleet.md

clean: ## Remove generated weights, reports and build/ (keeps committed configs)
	git clean -fdX model_repository reports build

.PHONY: help setup demo export build-repository serve test test-unit test-fast test-integration lint format loadtest perf bench engines flagship \
	cpu-plan gpu-check tune tune-smoke priorities bulk chaos fleet fleet-chaos clean

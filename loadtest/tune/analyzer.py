"""Model Analyzer: its profile/report YAML for a search space, and running it (local launch mode, the project's
tritonserver shim and perf_analyzer wrapper, interrupted at a time limit)."""

from __future__ import annotations

import io
import os
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tritonfleet.contract.engine_formats import format_of_config
from tritonfleet.contract.model_config import ModelConfig
from tritonfleet.deploy.local.tritonserver_exec import WORKDIR_VARIABLE
from tritonfleet.loadtest.tune.settings import LOOPBACK, RunPaths, SearchSpace, TuneError, TuneSettings

# Columns of Model Analyzer's results/metrics-model-inference.csv (`inference_output_fields` below).
INFERENCE_OUTPUT_FIELDS = [
    "model_name", "batch_size", "concurrency", "model_config_path", "instance_group", "max_batch_size",
    "satisfies_constraints", "perf_throughput", "perf_latency_avg", "perf_latency_p95", "perf_latency_p99",
    "perf_server_queue", "perf_server_compute_infer",
]  # fmt: skip
# After SIGINT Model Analyzer finishes the measurement in progress and writes its checkpoint.
INTERRUPT_GRACE_S = 180.0


def thread_parameter(config: ModelConfig) -> str | None:
    """The config parameter with the model's intra-op engine threads (None: not an engine the project knows)."""
    engine = format_of_config(config)
    return engine.intra_op_threads if engine else None


def model_config_parameters(space: SearchSpace, config: ModelConfig) -> dict[str, Any]:
    """Model Analyzer's `model_config_parameters` sweeping `space` over `config` (a list sweeps, a list of lists
    sweeps lists). Instance groups always name KIND_CPU: a group without a kind would replace the shipped one."""
    parameters: dict[str, Any] = {}
    if space.instance_counts:
        parameters["instance_group"] = [[{"kind": "KIND_CPU", "count": count}] for count in space.instance_counts]
    batching: dict[str, Any] = {}
    if space.max_queue_delays_us:
        batching["max_queue_delay_microseconds"] = list(space.max_queue_delays_us)
    if space.preferred_batch_sizes:
        largest = max(max(sizes) for sizes in space.preferred_batch_sizes)
        if largest > config.max_batch_size:
            # The serving plan caps executions (max_batch_size, often 1 on CPU) so interactive requests never wait
            # long behind bulk ones; a search over batch sizes has to lift that cap in its variants.
            parameters["max_batch_size"] = [largest]
        batching["preferred_batch_size"] = [list(sizes) for sizes in space.preferred_batch_sizes]
    if batching:
        parameters["dynamic_batching"] = batching
    if space.thread_counts:
        name = thread_parameter(config)
        if name is None:
            raise TuneError(f"{config.name}: no thread-count parameter known for platform "
                            f"{config.platform or config.backend!r}; search without thread counts")  # fmt: skip
        parameters["parameters"] = {name: {"string_value": [str(count) for count in space.thread_counts]}}
    return parameters


def profile_config(
    settings: TuneSettings, paths: RunPaths, shipped: ModelConfig, ports: tuple[int, int, int]
) -> dict[str, Any]:
    """The `model-analyzer profile -f` YAML (as a dict): local launch mode with the project's tools, CPU only."""
    http, grpc, metrics = ports
    model: dict[str, Any] = {
        "cpu_only": True,
        "parameters": {"concurrency": list(settings.space.concurrency)},
        "perf_analyzer_flags": {"input-data": str(paths.input_data(settings.model)), **settings.search_windows.flags()},
    }
    if parameters := model_config_parameters(settings.space, shipped):
        model["model_config_parameters"] = parameters
    return {
        "model_repository": str(Path(settings.model_repository).resolve()),
        "triton_launch_mode": "local",
        "triton_server_path": str(paths.server_shim),
        "triton_server_environment": {WORKDIR_VARIABLE: str(paths.server_workdir)},
        "triton_output_path": str(paths.server_log),
        "perf_analyzer_path": str(paths.perf_analyzer_wrapper),
        "triton_http_endpoint": f"{LOOPBACK}:{http}",
        "triton_grpc_endpoint": f"{LOOPBACK}:{grpc}",
        "triton_metrics_url": f"http://{LOOPBACK}:{metrics}/metrics",
        "client_protocol": "grpc",
        "gpus": [],  # no DCGM/GPU metrics (`dcgm_disable` is for remote mode only)
        "collect_cpu_metrics": False,  # it would only count tritonserver's own RAM, not the stubs holding models
        "output_model_repository_path": str(paths.variants),
        "override_output_model_repository": True,
        "checkpoint_directory": str(paths.checkpoints),
        "export_path": str(paths.root),
        "run_config_search_mode": "brute",
        "run_config_search_disable": True,  # exactly the variants listed + the default
        "perf_analyzer_max_auto_adjusts": settings.max_auto_adjusts,
        "num_configs_per_model": max(settings.candidates, 1),
        "skip_detailed_reports": True,  # `model-analyzer report` writes them (report_config)
        "objectives": {"perf_throughput": 10},
        "constraints": {"perf_latency_p99": {"max": settings.p99_ms}},
        "inference_output_fields": INFERENCE_OUTPUT_FIELDS,
        "profile_models": {settings.model: model},
    }


def report_config(paths: RunPaths, variants: Sequence[str]) -> dict[str, Any]:
    return {
        "checkpoint_directory": str(paths.checkpoints),
        "export_path": str(paths.root),
        "report_model_configs": list(variants),
    }


def default_variant(model: str) -> str:
    return f"{model}_config_default"


def model_analyzer_executable() -> Path:
    path = Path(sys.executable).parent / "model-analyzer"
    if not path.is_file():
        raise TuneError(
            "Model Analyzer is not installed in this environment: `make setup` installs it (the `tune` extra), "
            "or `pip install -e '.[tune]'`"
        )
    return path


def run_model_analyzer(args: Sequence[str], paths: RunPaths, timeout_s: float) -> tuple[int, bool]:
    """Run `model-analyzer ARGS` in `paths.work`, its output to the console and `paths.log` (appended);
    (exit status, interrupted). The launcher's work folder is set in Model Analyzer's own environment too: it also
    starts tritonserver without `triton_server_environment` (to read model configs).

    At `timeout_s` it gets SIGINT: Model Analyzer finishes the measurement in progress, writes its checkpoint and
    exits, and what it measured is still used.
    """
    command = [str(model_analyzer_executable()), *args]
    env = {**os.environ, WORKDIR_VARIABLE: str(paths.server_workdir)}
    with paths.log.open("a", encoding="utf-8") as log:
        log.write(f"$ {shlex.join(command)}\n")
        log.flush()
        process = subprocess.Popen(
            command, cwd=paths.work, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        assert process.stdout is not None
        pump = threading.Thread(target=_copy_lines, args=(process.stdout, log), daemon=True)
        pump.start()
        interrupted = False
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            interrupted = True
            print(f"model-analyzer still running after {timeout_s / 60:.1f} min: interrupting it", flush=True)
            process.send_signal(signal.SIGINT)
            _wait_or_kill(process, INTERRUPT_GRACE_S)
        except KeyboardInterrupt:
            _wait_or_kill(process, INTERRUPT_GRACE_S)  # it got the terminal's SIGINT too
            raise
        finally:
            pump.join(timeout=10)
    return process.returncode, interrupted


def _copy_lines(source: io.TextIOBase, log: io.TextIOBase) -> None:
    for line in source:
        log.write(line)
        sys.stdout.write(line)
    log.flush()
    sys.stdout.flush()


def _wait_or_kill(process: subprocess.Popen, timeout_s: float) -> None:
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=30)

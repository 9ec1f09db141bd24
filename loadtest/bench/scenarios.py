"""What the benchmark measures, on one machine with the same model, length mix and load generator:

a. the raw engine in-process (ONNX Runtime; TorchScript, also on CUDA in fp32/fp16) at each batch size;
b. Triton local with dynamic batching (esm2_onnx, esm2_torchscript, the esm2 ensemble, esm2_bls) over gRPC,
   plus the per-request server overhead at concurrency 1;
c. the same on a variant repository with dynamic batching removed (configs edited as protobuf);
d. a hand-written FastAPI + eager PyTorch + thread-pool service (loadtest/handwritten_service.py) under uvicorn.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import tritonclient.grpc as triton_grpc

from tritonfleet.contract.model_config import model_configs, write_config
from tritonfleet.loadtest.bench.engines import Engine, OnnxEngine, TorchScriptEngine, measure_engine
from tritonfleet.loadtest.bench.load import FastApiSender, LoadResult, TritonGrpcSender, closed_loop
from tritonfleet.loadtest.bench.report import (
    TRITON_MODELS,
    BenchReport,
    OverheadResult,
    ScenarioResult,
    compute_ratios,
    machine_description,
    usable_cores,
)
from tritonfleet.loadtest.devices import GpuUtilisationSampler, precisions_for, select_devices, wait_for
from tritonfleet.loadtest.server_stats import average_batch, inference_statistics, statistics_delta
from tritonfleet.loadtest.workload import (
    ModelTarget,
    generate_sequences,
    length_mix,
    percentile,
    repository_targets,
    token_length_waste,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_REPORT_DIR = PROJECT_ROOT / "reports"
# Sequence-in pipelines: their own statistics include the network they call, whose compute is what counts.
PIPELINE_MODELS = ("esm2", "esm2_bls")
ENGINE_OF_MODEL = {"esm2_onnx": "onnx", "esm2_torchscript": "torchscript"}  # the pipelines run esm2_onnx


@dataclass(frozen=True)
class BenchConfig:
    model_size: str = "8M"
    model_repository: Path | None = None
    length_mix: str = "swissprot"
    sequences: int = 256
    concurrency: int = 16
    duration_s: float = 20.0
    overhead_requests: int = 50
    batch_sizes: tuple[int, ...] = (1, 4, 16, 64)
    fastapi_batch: int = 64
    device: str = "cpu"
    report_dir: Path = DEFAULT_REPORT_DIR
    quick: bool = False

    @classmethod
    def quick_config(cls, **overrides) -> BenchConfig:
        values = dict(length_mix="short", sequences=32, concurrency=4, duration_s=4.0, overhead_requests=10,
                      batch_sizes=(1, 8), fastapi_batch=8, quick=True)  # fmt: skip
        values.update(overrides)
        return cls(**values)


def run_bench(config: BenchConfig, command: str) -> BenchReport:
    """Every group in turn (exporting ESM-2 with random weights first when no repository is given)."""
    from tritonfleet.export.esm2 import export_esm2

    sequences = generate_sequences(config.sequences, length_mix(config.length_mix))
    config_dict = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}
    config_dict["mean_length"] = float(np.mean([len(s) for s in sequences]))
    config_dict["padding_waste"] = token_length_waste(sequences)
    report = BenchReport(config=config_dict, machine=machine_description(), command=command)
    with tempfile.TemporaryDirectory(prefix="tritonfleet_bench_") as scratch:
        repository = config.model_repository
        if repository is None:
            print(f"exporting ESM-2 {config.model_size} (random weights) ...", flush=True)
            repository = Path(scratch) / "repository"
            export_esm2(repository, random_init=config.model_size, gpus="auto")
        print("a. raw engines in-process", flush=True)
        report.scenarios += raw_engine_results(config, repository, sequences)
        print("b. Triton with dynamic batching", flush=True)
        report.scenarios += triton_results(config, repository, sequences, "b", report, measure_overheads=True)
        print("c. Triton with batching off", flush=True)
        variant = Path(scratch) / "batching_off"
        if not write_batching_off_repository(repository, variant):
            report.problems.append("c: no model in the repository had dynamic_batching; c equals b")
        report.scenarios += triton_results(config, variant, sequences, "c", report, measure_overheads=False)
        print("d. hand-written FastAPI service", flush=True)
        try:
            report.scenarios += handwritten_results(config, sequences, usable_cores())
        except (RuntimeError, OSError) as error:
            report.problems.append(f"d: {error}")
    report.ratios = compute_ratios(report.scenarios)
    for scenario in report.scenarios:
        if scenario.errors:
            report.problems.append(f"{scenario.group} {scenario.name}: {scenario.errors} errors ({scenario.notes})")
    return report


# ---------------------------------------------------------------------------------------------------------------
# a. Raw engines in-process
# ---------------------------------------------------------------------------------------------------------------


def raw_engine_results(config: BenchConfig, repository: Path, sequences: Sequence[str]) -> list[ScenarioResult]:
    threads = usable_cores()
    onnx_path = repository / "esm2_onnx" / "1" / "model.onnx"
    torchscript_path = repository / "esm2_torchscript" / "1" / "model.pt"
    engines: list[Callable[[], Engine]] = [
        lambda: OnnxEngine(onnx_path, threads),
        lambda: TorchScriptEngine(torchscript_path, "cpu", "fp32", threads),
    ]
    engines += [
        lambda d=device, p=precision: TorchScriptEngine(torchscript_path, d, p)
        for device in select_devices(config.device)
        if device.startswith("cuda")
        for precision in precisions_for(device)
    ]
    results = []
    for make_engine in engines:
        engine = make_engine()
        for batch_size in config.batch_sizes:
            result = measure_engine(engine, sequences, batch_size)
            print(f"  a {result.engine:11s} {result.device}/{result.precision} batch {batch_size:3d}: "
                  f"{result.sequences_per_s:8.1f} seq/s", flush=True)  # fmt: skip
            results.append(result)
    return results


# ---------------------------------------------------------------------------------------------------------------
# b, c. Triton with batching on and off
# ---------------------------------------------------------------------------------------------------------------


def triton_results(config: BenchConfig, repository: Path, sequences: Sequence[str], group: str,
                   report: BenchReport, measure_overheads: bool) -> list[ScenarioResult]:  # fmt: skip
    from tritonfleet.deploy.local import local_server

    label = "Triton, dynamic batching" if group == "b" else "Triton, batching off"
    targets = repository_targets(repository)
    results = []
    with local_server(repository) as server, triton_grpc.InferenceServerClient(server.grpc_url) as stats_client:
        for model in TRITON_MODELS:
            if model not in targets:
                report.problems.append(f"{group}: {model} is not in {repository}")
                continue
            target = targets[model]
            before = inference_statistics(stats_client)
            with GpuUtilisationSampler() as sampler:
                load = closed_loop(lambda t=target: TritonGrpcSender(server.grpc_url, t), sequences,
                                   config.concurrency, config.duration_s)  # fmt: skip
            delta = statistics_delta(before, inference_statistics(stats_client))
            batch_models = ["esm2_onnx"] if model in PIPELINE_MODELS else [model]
            result = _served_result(group, f"{label}: {model}", ENGINE_OF_MODEL.get(model, "onnx"), load,
                                    concurrency=config.concurrency, gpu_utilisation=sampler.mean,
                                    average_server_batch=average_batch(delta, batch_models))  # fmt: skip
            print(f"  {group} {model:17s} c={config.concurrency}: {result.sequences_per_s:8.1f} seq/s  "
                  f"p50 {result.p50_ms:7.1f} ms  p99 {result.p99_ms:7.1f} ms  avg batch "
                  f"{result.average_server_batch:.2f}  errors {load.errors}", flush=True)  # fmt: skip
            results.append(result)
            if measure_overheads:
                overhead = measure_overhead(server.grpc_url, target, sequences, config.overhead_requests)
                print(f"    overhead {model}: client p50 {overhead.client_p50_ms:.2f} ms, compute p50 "
                      f"{overhead.compute_p50_ms:.2f} ms, overhead p50 {overhead.overhead_p50_ms:.2f} ms",
                      flush=True)  # fmt: skip
                report.overheads.append(overhead)
    return results


def _served_result(group: str, name: str, engine: str, load: LoadResult, **fields) -> ScenarioResult:
    """A scenario measured by the load generator (groups b, c and d)."""
    return ScenarioResult(
        group=group, name=name, engine=engine, sequences_per_s=load.sequences_per_s,
        p50_ms=percentile(load.latencies_ms, 50), p99_ms=percentile(load.latencies_ms, 99),
        requests=len(load.latencies_ms), errors=load.errors, rejections=load.rejections, notes=load.first_error,
        **fields,
    )  # fmt: skip


def measure_overhead(url: str, target: ModelTarget, sequences: Sequence[str], requests: int) -> OverheadResult:
    """Concurrency 1: per request, client latency minus the compute time (all models) from the statistics API."""
    sender = TritonGrpcSender(url, target)
    stats_client = triton_grpc.InferenceServerClient(url)
    client_ms, compute_ms, overhead_ms, server_overhead_ms = [], [], [], []
    try:
        for index in range(requests + 2):
            before = inference_statistics(stats_client)
            began = time.perf_counter()
            sender.send([sequences[index % len(sequences)]])
            latency = (time.perf_counter() - began) * 1e3
            delta = statistics_delta(before, inference_statistics(stats_client))
            if index < 2:
                continue  # warm-up
            # A pipeline's own statistics span the models it calls: count the compute of those models only.
            compute = sum(d["compute_input_ns"] + d["compute_infer_ns"] + d["compute_output_ns"]
                          for name, d in delta.items()
                          if not (name == target.name and target.name in PIPELINE_MODELS)) / 1e6  # fmt: skip
            server_request = delta.get(target.name, {}).get("request_ns", 0) / 1e6
            client_ms.append(latency)
            compute_ms.append(compute)
            overhead_ms.append(latency - compute)
            server_overhead_ms.append(server_request - compute)
    finally:
        sender.close()
        stats_client.close()
    return OverheadResult(
        model=target.name, client_p50_ms=percentile(client_ms, 50), compute_p50_ms=percentile(compute_ms, 50),
        overhead_p50_ms=percentile(overhead_ms, 50), overhead_p99_ms=percentile(overhead_ms, 99),
        server_side_overhead_p50_ms=percentile(server_overhead_ms, 50), requests=len(client_ms),
    )  # fmt: skip


def write_batching_off_repository(source: Path, destination: Path) -> list[str]:
    """A copy of `source` whose configs have dynamic_batching removed (max_batch_size kept); everything else is
    symlinked. Returns the changed models."""
    changed = []
    destination.mkdir(parents=True, exist_ok=True)
    for model_dir in sorted(path for path in source.iterdir() if path.is_dir()):
        target_dir = destination / model_dir.name
        target_dir.mkdir(exist_ok=True)
        for entry in model_dir.iterdir():
            link = target_dir / entry.name
            if entry.name != "config.pbtxt" and not link.exists():
                link.symlink_to(entry.resolve(), target_is_directory=entry.is_dir())
    for name, config in model_configs(source):
        if config.HasField("dynamic_batching"):
            config.ClearField("dynamic_batching")
            changed.append(config.name or name)
        write_config(config, destination / name)
    return changed


# ---------------------------------------------------------------------------------------------------------------
# d. The hand-written service
# ---------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def handwritten_service(config: BenchConfig, threads: int) -> Iterator[str]:
    """uvicorn serving loadtest/handwritten_service.py in its own process (its own GIL, like a real service) on a
    socket bound here to a free loopback port; yields the base URL once /health answers."""
    import requests

    env = dict(os.environ, TRITONFLEET_BASELINE_SIZE=config.model_size, TRITONFLEET_BASELINE_DEVICES=config.device,
               TRITONFLEET_BASELINE_THREADS=str(threads))  # fmt: skip
    log_path = Path(tempfile.mkdtemp(prefix="handwritten_service_")) / "uvicorn.log"
    with socket.create_server(("127.0.0.1", 0)) as listener, log_path.open("wb") as log:
        base_url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "tritonfleet.loadtest.handwritten_service:app",
             "--fd", str(listener.fileno()), "--log-level", "warning", "--no-access-log"],
            cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            pass_fds=(listener.fileno(),),
        )  # fmt: skip

        def healthy() -> bool:
            try:
                return requests.get(f"{base_url}/health", timeout=2).status_code == 200
            except requests.RequestException:
                return process.poll() is not None

        try:
            wait_for(healthy, timeout_s=180)
            if process.poll() is not None:
                raise RuntimeError(f"hand-written service exited: {log_path.read_text()[-2000:]}")
            yield base_url
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def handwritten_results(config: BenchConfig, sequences: Sequence[str], threads: int) -> list[ScenarioResult]:
    results = []
    with handwritten_service(config, threads) as base_url:
        # Client batches hold as many sequences as the other scenarios have in flight (one client): a batch of 64
        # padded to its longest sequence outlasts the measurement window on a CPU and would never be counted.
        client_batch = min(config.fastapi_batch, config.concurrency)
        for per_request, label in ((1, "one sequence per request"), (client_batch, "client batches")):
            clients = max(1, config.concurrency // per_request)
            with GpuUtilisationSampler() as sampler:
                load = closed_loop(lambda: FastApiSender(base_url), sequences, clients, config.duration_s,
                                   per_request=per_request)  # fmt: skip
            result = _served_result("d", f"FastAPI + eager PyTorch: {label}", "eager", load, batch_size=per_request,
                                    concurrency=clients, gpu_utilisation=sampler.mean)  # fmt: skip
            print(f"  d {label:25s}: {result.sequences_per_s:8.1f} seq/s  p50 {result.p50_ms:7.1f} ms  "
                  f"p99 {result.p99_ms:7.1f} ms  errors {load.errors}", flush=True)  # fmt: skip
            results.append(result)
    return results

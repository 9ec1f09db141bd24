"""One-run benchmark on one machine: does batching on Triton win? Same model, same length mix, same load generator.

    python -m loadtest.bench                 # full run (needs a quiet machine: minutes)
    python -m loadtest.bench --quick         # CI smoke: tiny mix, short windows

  a. the raw engine in-process (ONNX Runtime; TorchScript) at its best batch size: the ceiling;
  b. Triton local with dynamic batching (esm2_onnx, esm2_torchscript, the esm2 ensemble) over gRPC;
  c. Triton with dynamic batching removed (a variant repository, configs edited as protobuf; max_batch_size kept);
  d. a hand-written FastAPI + eager PyTorch + thread-pool service (loadtest/handwritten_service.py) under uvicorn.

b, c and d are driven by the same closed-loop generator (threads, one connection each, one sequence per request).
Server overhead = client latency at concurrency 1 minus the compute time Triton's statistics API reports for that
request. Writes reports/bench.md, reports/bench.json and reports/bench_*.png.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tritonfleet.contract import esm2_tokens as esm_tokenizer
from tritonfleet.loadtest.devices import GpuUtilisationSampler, precisions_for, select_devices, wait_for
from tritonfleet.loadtest.workload import (
    ModelTarget,
    generate_sequences,
    is_rejection,
    length_mix,
    percentile,
    prepare_request,
    read_model_config,
    repository_targets,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REPORT_DIR = PROJECT_ROOT / "reports"
TRITON_MODELS = ("esm2_onnx", "esm2_torchscript", "esm2", "esm2_bls")
# Sequence-in pipelines: their own statistics include the network they call, whose compute is what counts.
PIPELINE_MODELS = ("esm2", "esm2_bls")


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


@dataclass
class ScenarioResult:
    """One measured configuration."""

    group: str  # a | b | c | d
    name: str
    engine: str  # onnx | torchscript | eager
    sequences_per_s: float
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    requests: int = 0
    errors: int = 0
    rejections: int = 0
    batch_size: int = 0
    concurrency: int = 0
    average_server_batch: float = math.nan
    device: str = "cpu"
    precision: str = "fp32"
    gpu_utilisation: float | None = None
    notes: str = ""


@dataclass
class OverheadResult:
    model: str
    client_p50_ms: float
    compute_p50_ms: float
    overhead_p50_ms: float
    overhead_p99_ms: float
    server_side_overhead_p50_ms: float  # Triton request time minus compute (no client, no network)
    requests: int


@dataclass
class BenchReport:
    config: dict
    machine: dict
    scenarios: list[ScenarioResult] = field(default_factory=list)
    overheads: list[OverheadResult] = field(default_factory=list)
    ratios: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    command: str = ""


# ---------------------------------------------------------------------------------------------------------------
# Machine
# ---------------------------------------------------------------------------------------------------------------


def machine_description() -> dict:
    cpu_model = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    description = {
        "cpu_model": cpu_model,
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(),
        "os": platform.platform(),
        "gpus": [],
    }
    try:
        import onnxruntime
        import torch

        description["torch"] = torch.__version__
        description["onnxruntime"] = onnxruntime.__version__
        if torch.cuda.is_available():
            description["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        pass
    return description


# ---------------------------------------------------------------------------------------------------------------
# a. Raw engines in-process
# ---------------------------------------------------------------------------------------------------------------


def bucketed_batches(sequences: Sequence[str], batch_size: int,
                     buckets: Sequence[int] = esm_tokenizer.DEFAULT_BUCKETS) -> list[list[str]]:  # fmt: skip
    """Group sequences by token-length bucket (what the batcher can combine), then chunk by `batch_size`."""
    by_bucket: dict[int, list[str]] = {}
    for sequence in sequences:
        by_bucket.setdefault(esm_tokenizer.bucket_for(len(sequence) + 2, buckets), []).append(sequence)
    batches = []
    for bucket in sorted(by_bucket):
        members = by_bucket[bucket]
        batches.extend(members[i : i + batch_size] for i in range(0, len(members), batch_size))
    return batches


class OnnxEngine:
    name = "onnx"

    def __init__(self, model_path: Path, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_name = next(o.name for o in self.session.get_outputs() if o.name.upper().startswith("EMBEDDING"))
        self.device, self.precision = "cpu", "fp32"

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], dict(zip(self.input_names, (input_ids, attention_mask))))[0]


class TorchScriptEngine:
    name = "torchscript"

    def __init__(self, model_path: Path, device: str = "cpu", precision: str = "fp32", threads: int = 0) -> None:
        import torch

        if threads > 0:
            torch.set_num_threads(threads)
        self.torch = torch
        self.device, self.precision = device, precision
        self.module = torch.jit.load(str(model_path), map_location=device).eval()
        if precision == "fp16":
            self.module = self.module.half()

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            outputs = self.module(torch.from_numpy(input_ids).to(self.device),
                                  torch.from_numpy(attention_mask).to(self.device))  # fmt: skip
            if self.device.startswith("cuda"):
                torch.cuda.synchronize()
            return outputs[0].float().cpu().numpy()


def measure_engine(engine, sequences: Sequence[str], batch_size: int, repeats: int = 1) -> ScenarioResult:
    """Sequences/s of `engine` over all `sequences` in bucketed batches of `batch_size` (tokenization excluded)."""
    batches = [esm_tokenizer.encode_batch(batch) for batch in bucketed_batches(sequences, batch_size)]
    # Warm-up: every distinct shape twice (allocator, CUDA context, TorchScript's profiling executor specialises
    # per shape on its first runs); not measured.
    first_of_shape = {ids.shape: (ids, mask) for ids, mask in reversed(batches)}
    for ids, mask in list(first_of_shape.values()) * 2:
        engine(ids, mask)
    latencies = []
    with GpuUtilisationSampler() as sampler:
        start = time.perf_counter()
        for _ in range(repeats):
            for input_ids, attention_mask in batches:
                began = time.perf_counter()
                engine(input_ids, attention_mask)
                latencies.append((time.perf_counter() - began) * 1e3)
        elapsed = time.perf_counter() - start
    return ScenarioResult(
        group="a", name=f"raw {engine.name} in-process", engine=engine.name,
        sequences_per_s=len(sequences) * repeats / elapsed, p50_ms=percentile(latencies, 50),
        p99_ms=percentile(latencies, 99), requests=len(latencies), batch_size=batch_size, device=engine.device,
        precision=engine.precision, gpu_utilisation=sampler.mean, notes="latency per batch",
    )  # fmt: skip


def raw_engine_results(config: BenchConfig, repository: Path, sequences: Sequence[str]) -> list[ScenarioResult]:
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    results = []
    engines: list[Callable[[], object]] = [
        lambda: OnnxEngine(repository / "esm2_onnx" / "1" / "model.onnx", threads),
        lambda: TorchScriptEngine(repository / "esm2_torchscript" / "1" / "model.pt", "cpu", "fp32", threads),
    ]
    torchscript_path = repository / "esm2_torchscript" / "1" / "model.pt"
    engines += [
        lambda d=device, p=precision: TorchScriptEngine(torchscript_path, d, p)
        for device in select_devices(config.device)
        if device.startswith("cuda")
        for precision in precisions_for(device)
    ]
    for make_engine in engines:
        engine = make_engine()
        for batch_size in config.batch_sizes:
            result = measure_engine(engine, sequences, batch_size)
            print(f"  a {result.engine:11s} {result.device}/{result.precision} batch {batch_size:3d}: "
                  f"{result.sequences_per_s:8.1f} seq/s", flush=True)  # fmt: skip
            results.append(result)
    return results


# ---------------------------------------------------------------------------------------------------------------
# The load generator (b, c, d)
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class LoadResult:
    latencies_ms: list[float]
    errors: int
    rejections: int
    sequences: int
    elapsed_s: float
    first_error: str = ""

    @property
    def sequences_per_s(self) -> float:
        return self.sequences / self.elapsed_s if self.elapsed_s > 0 else 0.0


class TritonGrpcSender:
    """One gRPC connection; sends one request carrying the given sequences, embedding output only."""

    def __init__(self, url: str, target: ModelTarget) -> None:
        import tritonclient.grpc as triton_grpc

        self.grpc = triton_grpc
        self.client = triton_grpc.InferenceServerClient(url)
        self.target = target
        self.outputs = [triton_grpc.InferRequestedOutput(target.embedding_output)]

    def send(self, sequences: Sequence[str]) -> None:
        request = prepare_request(self.target, sequences)
        inputs = []
        for name, array in request.inputs.items():
            datatype = "BYTES" if array.dtype == np.object_ else "INT64"
            infer_input = self.grpc.InferInput(name, list(array.shape), datatype)
            infer_input.set_data_from_numpy(array)
            inputs.append(infer_input)
        result = self.client.infer(self.target.name, inputs, outputs=self.outputs, client_timeout=120)
        result.as_numpy(self.target.embedding_output)

    def close(self) -> None:
        self.client.close()


class FastApiSender:
    """One keep-alive HTTP connection to the hand-written service's batch endpoint."""

    def __init__(self, base_url: str) -> None:
        import requests

        self.session = requests.Session()
        self.url = f"{base_url}/embed"

    def send(self, sequences: Sequence[str]) -> None:
        response = self.session.post(self.url, json={"sequences": list(sequences)}, timeout=120)
        if response.status_code != 200:
            error = RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
            error.status_code = response.status_code  # type: ignore[attr-defined]
            raise error
        response.json()

    def close(self) -> None:
        self.session.close()


def closed_loop(make_sender: Callable[[], object], sequences: Sequence[str], concurrency: int, duration_s: float,
                per_request: int = 1, warmup_s: float = 1.0) -> LoadResult:  # fmt: skip
    """`concurrency` threads send back-to-back; requests that complete inside the `duration_s` window after
    `warmup_s` are counted (throughput = their sequences / window). Bounded in time: no request starts after the
    window and threads are joined with a timeout."""
    senders = [make_sender() for _ in range(concurrency)]
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    counters = [[0, 0, 0] for _ in range(concurrency)]  # errors, rejections, sequences
    first_error: list[str] = []
    start_measuring = time.monotonic() + warmup_s
    stop_at = start_measuring + duration_s

    def worker(index: int) -> None:
        sender = senders[index]
        position = (index * 7919) % max(1, len(sequences))
        while time.monotonic() < stop_at:
            batch = [sequences[(position + k) % len(sequences)] for k in range(per_request)]
            position += per_request
            began = time.perf_counter()
            try:
                sender.send(batch)
                ok, error = True, None
            except Exception as exc:  # noqa: BLE001 - counted; the first message is reported
                ok, error = False, exc
            elapsed_ms = (time.perf_counter() - began) * 1e3
            if not start_measuring <= time.monotonic() <= stop_at:
                continue  # completed during warm-up or after the window
            if ok:
                latencies[index].append(elapsed_ms)
                counters[index][2] += len(batch)
            elif is_rejection(error):
                counters[index][1] += 1
            else:
                counters[index][0] += 1
                if not first_error:
                    first_error.append(str(error)[:300])

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=warmup_s + duration_s + 180)
    measured = duration_s
    for sender in senders:
        with contextlib.suppress(Exception):
            sender.close()
    return LoadResult(
        latencies_ms=[v for values in latencies for v in values],
        errors=sum(c[0] for c in counters),
        rejections=sum(c[1] for c in counters),
        sequences=sum(c[2] for c in counters),
        elapsed_s=measured,
        first_error=first_error[0] if first_error else "",
    )


# ---------------------------------------------------------------------------------------------------------------
# Triton: statistics, overhead, batching-off variant
# ---------------------------------------------------------------------------------------------------------------


def _ns(stat: dict) -> int:
    return int(stat.get("ns", 0))


def inference_statistics(client) -> dict[str, dict]:
    """Per-model totals from the statistics API: counts and nanoseconds (queue, compute input/infer/output)."""
    answer = client.get_inference_statistics(as_json=True)
    totals = {}
    for model in answer.get("model_stats", []):
        stats = model.get("inference_stats", {})
        totals[model["name"]] = {
            "success_count": int(stats.get("success", {}).get("count", 0)),
            "request_ns": _ns(stats.get("success", {})),
            "queue_ns": _ns(stats.get("queue", {})),
            "compute_input_ns": _ns(stats.get("compute_input", {})),
            "compute_infer_ns": _ns(stats.get("compute_infer", {})),
            "compute_output_ns": _ns(stats.get("compute_output", {})),
            "inference_count": int(model.get("inference_count", 0)),
            "execution_count": int(model.get("execution_count", 0)),
        }
    return totals


def statistics_delta(before: dict[str, dict], after: dict[str, dict]) -> dict[str, dict]:
    return {name: {key: after[name][key] - before.get(name, {}).get(key, 0) for key in after[name]} for name in after}


def average_batch(delta: dict[str, dict], models: Sequence[str]) -> float:
    inferences = sum(delta.get(m, {}).get("inference_count", 0) for m in models)
    executions = sum(delta.get(m, {}).get("execution_count", 0) for m in models)
    return inferences / executions if executions else math.nan


def measure_overhead(url: str, target: ModelTarget, sequences: Sequence[str], requests: int) -> OverheadResult:
    """Concurrency 1: per request, client latency minus the compute time (all models) from the statistics API."""
    import tritonclient.grpc as triton_grpc

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
    """A copy of `source` whose configs have dynamic_batching removed (max_batch_size kept); weights symlinked.

    Configs are edited as model_config_pb2 messages and written back with text_format. Returns the changed models.
    """
    from google.protobuf import text_format

    changed = []
    destination.mkdir(parents=True, exist_ok=True)
    for model_dir in sorted(path for path in source.iterdir() if path.is_dir()):
        target_dir = destination / model_dir.name
        target_dir.mkdir(exist_ok=True)
        for entry in model_dir.iterdir():
            if entry.name == "config.pbtxt":
                continue
            link = target_dir / entry.name
            if not link.exists():
                link.symlink_to(entry.resolve(), target_is_directory=entry.is_dir())
        config_path = model_dir / "config.pbtxt"
        if not config_path.is_file():
            continue
        config = read_model_config(config_path)
        if config.HasField("dynamic_batching"):
            config.ClearField("dynamic_batching")
            changed.append(config.name or model_dir.name)
        (target_dir / "config.pbtxt").write_text(text_format.MessageToString(config))
    return changed


@contextlib.contextmanager
def triton_server(repository: Path) -> Iterator[object]:
    from tritonfleet.deploy.local import LocalTritonServer, ServerOptions

    with LocalTritonServer(ServerOptions(model_repository=repository, http_port=0, grpc_port=0, metrics_port=0)) as s:
        yield s


def triton_results(config: BenchConfig, repository: Path, sequences: Sequence[str], group: str,
                   report: BenchReport, measure_overheads: bool) -> list[ScenarioResult]:  # fmt: skip
    import tritonclient.grpc as triton_grpc

    label = "Triton, dynamic batching" if group == "b" else "Triton, batching off"
    targets = repository_targets(repository)
    results = []
    with triton_server(repository) as server:
        stats_client = triton_grpc.InferenceServerClient(server.grpc_url)
        for model in TRITON_MODELS:
            if model not in targets:
                report.problems.append(f"{group}: {model} is not in {repository}")
                continue
            target = targets[model]
            engine = {"esm2_onnx": "onnx", "esm2_torchscript": "torchscript"}.get(model, "onnx")
            before = inference_statistics(stats_client)
            with GpuUtilisationSampler() as sampler:
                load = closed_loop(lambda t=target: TritonGrpcSender(server.grpc_url, t), sequences,
                                   config.concurrency, config.duration_s)  # fmt: skip
            delta = statistics_delta(before, inference_statistics(stats_client))
            batch_models = ["esm2_onnx"] if model in PIPELINE_MODELS else [model]
            result = ScenarioResult(
                group=group, name=f"{label}: {model}", engine=engine, sequences_per_s=load.sequences_per_s,
                p50_ms=percentile(load.latencies_ms, 50), p99_ms=percentile(load.latencies_ms, 99),
                requests=len(load.latencies_ms), errors=load.errors, rejections=load.rejections,
                concurrency=config.concurrency, average_server_batch=average_batch(delta, batch_models),
                gpu_utilisation=sampler.mean, notes=load.first_error,
            )  # fmt: skip
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
        stats_client.close()
    return results


# ---------------------------------------------------------------------------------------------------------------
# d. The hand-written service
# ---------------------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def handwritten_service(config: BenchConfig, threads: int) -> Iterator[str]:
    import requests

    port = _free_port()
    env = dict(os.environ, TRITONFLEET_BASELINE_SIZE=config.model_size, TRITONFLEET_BASELINE_DEVICES=config.device,
               TRITONFLEET_BASELINE_THREADS=str(threads))  # fmt: skip
    log_path = Path(tempfile.mkdtemp(prefix="handwritten_service_")) / "uvicorn.log"
    log = log_path.open("wb")  # noqa: SIM115 - closed in the finally below, after the process ends
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "tritonfleet.loadtest.handwritten_service:app", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning", "--no-access-log"],
        cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    base_url = f"http://127.0.0.1:{port}"

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
        log.close()


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
            result = ScenarioResult(
                group="d", name=f"FastAPI + eager PyTorch: {label}", engine="eager",
                sequences_per_s=load.sequences_per_s, p50_ms=percentile(load.latencies_ms, 50),
                p99_ms=percentile(load.latencies_ms, 99), requests=len(load.latencies_ms), errors=load.errors,
                rejections=load.rejections, batch_size=per_request, concurrency=clients,
                gpu_utilisation=sampler.mean, notes=load.first_error,
            )  # fmt: skip
            print(f"  d {label:25s}: {result.sequences_per_s:8.1f} seq/s  p50 {result.p50_ms:7.1f} ms  "
                  f"p99 {result.p99_ms:7.1f} ms  errors {load.errors}", flush=True)  # fmt: skip
            results.append(result)
    return results


# ---------------------------------------------------------------------------------------------------------------
# Ratios and reports
# ---------------------------------------------------------------------------------------------------------------


def best(results: Sequence[ScenarioResult], group: str, engine: str | None = None, name_part: str = "") -> float:
    """Best error-free throughput of a group; `name_part` matches a scenario name's end (": esm2" not esm2_onnx)."""
    values = [r.sequences_per_s for r in results
              if r.group == group and (engine is None or r.engine == engine) and r.name.endswith(name_part)
              and r.errors == 0]  # fmt: skip
    return max(values) if values else math.nan


def _ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, NaN when the denominator is missing or zero (a scenario that completed nothing)."""
    if not denominator or math.isnan(denominator):
        return math.nan
    return numerator / denominator


def compute_ratios(results: Sequence[ScenarioResult]) -> dict[str, float]:
    """b/a per engine (raw model on Triton vs in-process ceiling), b/c per model, b/d (ensemble vs FastAPI)."""
    ratios = {}
    for engine, model in (("onnx", "esm2_onnx"), ("torchscript", "esm2_torchscript")):
        ratios[f"b/a {engine}"] = _ratio(best(results, "b", name_part=f": {model}"), best(results, "a", engine))
    onnx_ceiling = best(results, "a", "onnx")
    ratios["b/a ensemble (esm2) vs onnx ceiling"] = _ratio(best(results, "b", name_part=": esm2"), onnx_ceiling)
    ratios["b/a BLS (esm2_bls) vs onnx ceiling"] = _ratio(best(results, "b", name_part=": esm2_bls"), onnx_ceiling)
    for model in TRITON_MODELS:
        ratios[f"b/c {model}"] = _ratio(
            best(results, "b", name_part=f": {model}"), best(results, "c", name_part=f": {model}")
        )
    one_per_request = best(results, "d", name_part="one sequence per request")
    batched = best(results, "d", name_part="client batches")
    for label, model in (("ensemble", "esm2"), ("BLS", "esm2_bls")):
        pipeline = best(results, "b", name_part=f": {model}")
        ratios[f"b/d {label} vs FastAPI (same traffic: one sequence per request)"] = _ratio(pipeline, one_per_request)
        ratios[f"b/d {label} vs FastAPI with client batches"] = _ratio(pipeline, batched)
    return ratios


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}f}"


def render_markdown(report: BenchReport, plots: Sequence[Path]) -> str:
    machine = report.machine
    config = report.config
    lines = [
        "# Benchmark: batching on Triton vs the raw engine, batching off, and a hand-written service",
        "",
        f"Machine: {machine['cpu_model']}, {machine['usable_cores']} usable cores ({machine['logical_cores']} "
        f"logical), GPUs: {', '.join(machine['gpus']) or 'none'}; Python {machine['python']}, torch "
        f"{machine.get('torch', '?')}, onnxruntime {machine.get('onnxruntime', '?')}; {machine['os']}.",
        "",
        f"Reproduce: `{report.command}`",
        "",
        f"Model: ESM-2 {config['model_size']} (random weights; speed does not depend on them). Length mix "
        f"`{config['length_mix']}` ({config['sequences']} sequences, {_fmt(config.get('mean_length'))} residues on "
        f"average, {_fmt(100 * config.get('padding_waste', math.nan))} % padding when padded alone to its bucket). "
        f"Closed loop, concurrency {config['concurrency']}, {config['duration_s']:g} s per point after 1 s warm-up; "
        "outputs: the pooled EMBEDDING only. Load generator, server and engines share the same cores.",
        "",
        "## Throughput and latency",
        "",
        "| group | scenario | device | batch | conc. | seq/s | p50 ms | p99 ms | avg server batch | errors | rej. |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r.group} | {r.name} | {r.device}/{r.precision} | {r.batch_size or '—'} | {r.concurrency or '—'} | "
        f"{_fmt(r.sequences_per_s)} | {_fmt(r.p50_ms)} | {_fmt(r.p99_ms)} | {_fmt(r.average_server_batch, 2)} | "
        f"{r.errors} | {r.rejections} |"
        for r in report.scenarios
    ]
    lines += ["", "Group a latencies are per batch; b–d per request.", "", "## Ratios", "",
              "| ratio | value | target |", "|---|---:|---:|"]  # fmt: skip
    targets = {"b/a onnx": ">= 0.95", "b/a torchscript": ">= 0.95", "b/d ensemble vs FastAPI (same traffic": ">= 2"}
    for name, value in report.ratios.items():
        target = next((t for key, t in targets.items() if name.startswith(key)), "")
        lines.append(f"| {name} | {_fmt(value, 2)} | {target} |")
    lines += ["", "## Server overhead at concurrency 1 (gRPC)", "",
              "Client latency minus the compute time (input + infer + output, all composing models) reported by "
              "Triton's statistics API for that request; `server-side` is Triton's own request time minus compute.",
              "", "| model | client p50 ms | compute p50 ms | overhead p50 ms | overhead p99 ms | server-side p50 ms |",
              "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for o in report.overheads:
        lines.append(f"| {o.model} | {_fmt(o.client_p50_ms, 2)} | {_fmt(o.compute_p50_ms, 2)} | "
                     f"{_fmt(o.overhead_p50_ms, 2)} | {_fmt(o.overhead_p99_ms, 2)} | "
                     f"{_fmt(o.server_side_overhead_p50_ms, 2)} |")  # fmt: skip
    if report.problems:
        lines += ["", "## Problems", ""] + [f"- {p}" for p in report.problems]
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(lines) + "\n"


def plot_report(report: BenchReport, report_dir: Path, prefix: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"a": "#4c72b0", "b": "#55a868", "c": "#c44e52", "d": "#8172b2"}
    best_a: dict[str, ScenarioResult] = {}
    for r in report.scenarios:
        if r.group == "a" and (r.engine not in best_a or r.sequences_per_s > best_a[r.engine].sequences_per_s):
            best_a[r.engine] = r
    shown = list(best_a.values()) + [r for r in report.scenarios if r.group != "a"]
    labels = [f"{r.group}: {r.name.split(': ', 1)[-1]}" + (f" (b={r.batch_size})" if r.group == "a" else "")
              for r in shown]  # fmt: skip
    paths = []
    figure, axes = plt.subplots(figsize=(9, 0.45 * len(shown) + 1.5))
    axes.barh(labels, [r.sequences_per_s for r in shown], color=[colours[r.group] for r in shown])
    axes.invert_yaxis()
    axes.set_xlabel("sequences / s")
    axes.set_title("Throughput, same model and length mix (a = in-process ceiling)")
    figure.tight_layout()
    paths.append(report_dir / f"{prefix}_throughput.png")
    figure.savefig(paths[-1], dpi=110)
    plt.close(figure)

    served = [r for r in report.scenarios if r.group != "a" and not math.isnan(r.p99_ms)]
    if served:
        figure, axes = plt.subplots(figsize=(7, 4.5))
        for r in served:
            axes.scatter(r.sequences_per_s, r.p99_ms, color=colours[r.group], s=40)
            axes.annotate(r.name.split(": ", 1)[-1], (r.sequences_per_s, r.p99_ms), fontsize=7,
                          textcoords="offset points", xytext=(4, 2))  # fmt: skip
        axes.set_xlabel("sequences / s")
        axes.set_ylabel("p99 latency (ms)")
        axes.set_title("Throughput vs p99 (green b: batching on, red c: off, purple d: FastAPI)")
        axes.grid(True, alpha=0.3)
        figure.tight_layout()
        paths.append(report_dir / f"{prefix}_latency.png")
        figure.savefig(paths[-1], dpi=110)
        plt.close(figure)
    return paths


# ---------------------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------------------


def export_repository(model_size: str, output: Path) -> Path:
    command = [sys.executable, "-m", "tritonfleet.export", "esm2", "--random-init", model_size, "--output", str(output)]
    subprocess.run(command,
                   cwd=PROJECT_ROOT, check=True, timeout=1800, stdin=subprocess.DEVNULL)  # fmt: skip
    return output


def run_bench(config: BenchConfig, command: str) -> BenchReport:
    mix = length_mix(config.length_mix)
    sequences = generate_sequences(config.sequences, mix)
    from tritonfleet.loadtest.workload import token_length_waste

    config_dict = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}
    config_dict["mean_length"] = float(np.mean([len(s) for s in sequences]))
    config_dict["padding_waste"] = token_length_waste(sequences)
    report = BenchReport(config=config_dict, machine=machine_description(), command=command)
    threads = report.machine["usable_cores"] or 1
    with tempfile.TemporaryDirectory(prefix="tritonfleet_bench_") as scratch:
        repository = config.model_repository
        if repository is None:
            print(f"exporting ESM-2 {config.model_size} (random weights) ...", flush=True)
            repository = export_repository(config.model_size, Path(scratch) / "repository")
        print("a. raw engines in-process", flush=True)
        report.scenarios += raw_engine_results(config, repository, sequences)
        print("b. Triton with dynamic batching", flush=True)
        report.scenarios += triton_results(config, repository, sequences, "b", report, measure_overheads=True)
        print("c. Triton with batching off", flush=True)
        variant = Path(scratch) / "batching_off"
        changed = write_batching_off_repository(repository, variant)
        if not changed:
            report.problems.append("c: no model in the repository had dynamic_batching; c equals b")
        report.scenarios += triton_results(config, variant, sequences, "c", report, measure_overheads=False)
        print("d. hand-written FastAPI service", flush=True)
        try:
            report.scenarios += handwritten_results(config, sequences, threads)
        except (RuntimeError, OSError) as error:
            report.problems.append(f"d: {error}")
    report.ratios = compute_ratios(report.scenarios)
    for scenario in report.scenarios:
        if scenario.errors:
            report.problems.append(f"{scenario.group} {scenario.name}: {scenario.errors} errors ({scenario.notes})")
    return report


def write_report(report: BenchReport, report_dir: Path, prefix: str = "bench") -> Path:
    report_dir.mkdir(parents=True, exist_ok=True)
    plots = plot_report(report, report_dir, prefix)
    (report_dir / f"{prefix}.json").write_text(json.dumps(asdict(report), indent=2, default=str))
    path = report_dir / f"{prefix}.md"
    path.write_text(render_markdown(report, plots))
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke: short mix, few sequences, short windows")
    parser.add_argument("--model-size", default="8M")
    parser.add_argument("--model-repository", type=Path, default=None, help="exported repository (default: export)")
    parser.add_argument("--length-mix", default=None)
    parser.add_argument("--sequences", type=int, default=None)
    parser.add_argument("--concurrency", type=int, default=None)
    parser.add_argument("--duration", type=float, default=None, help="seconds per load point")
    parser.add_argument("--batch-sizes", default=None, help="raw-engine batch sizes to try, e.g. 1,8,32,64")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:0,cuda:1 (PyTorch paths)")
    parser.add_argument("--report-dir", type=Path, default=DEFAULT_REPORT_DIR)
    parser.add_argument("--prefix", default=None, help="report file prefix (default bench, bench_quick with --quick)")
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the servers this run started (Triton, uvicorn) are stopped on the way out.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    overrides = {key: value for key, value in (
        ("length_mix", args.length_mix), ("sequences", args.sequences), ("concurrency", args.concurrency),
        ("duration_s", args.duration),
        ("batch_sizes", tuple(int(b) for b in args.batch_sizes.split(",")) if args.batch_sizes else None),
    ) if value is not None}  # fmt: skip
    common = dict(model_size=args.model_size, model_repository=args.model_repository, report_dir=args.report_dir,
                  device=",".join(select_devices(args.device)))  # fmt: skip
    config = BenchConfig.quick_config(**common, **overrides) if args.quick else BenchConfig(**common, **overrides)
    command = "python -m loadtest.bench " + " ".join(argv if argv is not None else sys.argv[1:])
    report = run_bench(config, command.strip())
    path = write_report(report, args.report_dir, args.prefix or ("bench_quick" if args.quick else "bench"))
    print(path.read_text())
    served = [s for s in report.scenarios if s.group in "bcd"]
    return 0 if served and all(s.requests > 0 for s in served) else 1


if __name__ == "__main__":
    sys.exit(main())

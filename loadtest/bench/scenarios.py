"""What the benchmark measures, on one machine with the same model, length mix and load generator, for every engine
variant (the repository's precision, the shipped defaults, plus the other precisions exported like it):

a. the raw engines in-process (ONNX Runtime, TorchScript; eager fp32 PyTorch as the reference; TorchScript also on
   CUDA in fp32/fp16), the thread budget spent as one engine on every core or one single-threaded engine per core;
b. Triton local with the repository's shipped config (esm2_onnx, esm2_torchscript, the esm2 ensemble, esm2_bls) over
   gRPC, plus the per-request server overhead at concurrency 1;
c. the default variant's repository with dynamic batching removed (configs edited as protobuf);
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
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import tritonclient.grpc as triton_grpc

from tritonfleet.contract.esm2.pipeline import BLS_MODEL, ENSEMBLE_MODEL
from tritonfleet.contract.esm2_tokens import format_buckets
from tritonfleet.contract.model_config import read_config
from tritonfleet.export.devices import usable_cores
from tritonfleet.loadtest.bench.engines import (
    EagerEngine,
    EngineFactory,
    OnnxEngine,
    ThreadSplit,
    TorchScriptEngine,
    measure_engine,
    thread_splits,
)
from tritonfleet.loadtest.bench.load import FastApiSender, LoadResult, TritonGrpcSender, closed_loop
from tritonfleet.loadtest.bench.results import (
    RAW_AGAIN,
    TRITON_MODELS,
    BenchReport,
    OverheadResult,
    ScenarioResult,
    ceiling,
    compute_figures,
)
from tritonfleet.loadtest.bench.variants import (
    Variant,
    engine_of,
    loadable_models,
    network_plan,
    prepare_variants,
    repository_precision,  # noqa: F401 - loadtest/flagship.py imports it from here
    served_networks,
    write_batching_off_repository,
)
from tritonfleet.loadtest.devices import GpuUtilisationSampler, precisions_for, select_devices, wait_for
from tritonfleet.loadtest.server_stats import average_batch, inference_statistics, statistics_delta
from tritonfleet.loadtest.studies.header import machine_description
from tritonfleet.loadtest.workload import (
    ModelTarget,
    buckets_from_repository,
    generate_sequences,
    length_mix,
    percentile,
    repository_targets,
    token_length_waste,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_REPORT_DIR = PROJECT_ROOT / "reports"
# Sequence-in pipelines: their own statistics include the network they call, whose compute is what counts.
PIPELINE_MODELS = (ENSEMBLE_MODEL, BLS_MODEL)


@dataclass(frozen=True)
class BenchConfig:
    model_size: str = "8M"
    model_repository: Path | None = None
    length_mix: str = "swissprot"
    sequences: int = 256
    concurrency: int = 16
    duration_s: float = 20.0
    overhead_requests: int = 50
    batch_sizes: tuple[int, ...] = (1, 16)
    fastapi_batch: int = 64
    device: str = "cpu"
    report_dir: Path = DEFAULT_REPORT_DIR
    quick: bool = False
    # "auto" is the repository's precision (the export's default when the bench exports it); others are exported.
    variants: tuple[str, ...] = ("auto", "fp32")
    raw_seconds: float = 10.0  # each raw point: whole passes over the sequences for at least this long
    raw_warmup_s: float = 3.0

    @classmethod
    def quick_config(cls, **overrides) -> BenchConfig:
        values = dict(length_mix="short", sequences=32, concurrency=4, duration_s=4.0, overhead_requests=10,
                      batch_sizes=(1, 8), fastapi_batch=8, raw_seconds=2.0, raw_warmup_s=1.0, quick=True)  # fmt: skip
        values.update(overrides)
        return cls(**values)


def run_bench(config: BenchConfig, command: str) -> BenchReport:
    """Every group in turn, for every variant (exporting ESM-2 with random weights first where needed)."""
    sequences = generate_sequences(config.sequences, length_mix(config.length_mix))
    config_dict = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}
    config_dict["mean_length"] = float(np.mean([len(s) for s in sequences]))
    report = BenchReport(config=config_dict, machine=machine_description(), command=command)
    with tempfile.TemporaryDirectory(prefix="tritonfleet_bench_") as scratch:
        variants = prepare_variants(config, Path(scratch), report)
        default = variants[0]
        report.config.update(padding(sequences, default.repository))
        report.default_precision = default.precision
        report.config["variants_measured"] = [variant.precision for variant in variants]
        print("a. raw engines in-process", flush=True)
        report.scenarios += raw_engine_results(config, variants, sequences)
        print("b. Triton with the shipped config (dynamic batching)", flush=True)
        for variant in variants:
            report.scenarios += triton_results(config, variant, sequences, "b", report, measure_overheads=True)
            report.scenarios += raw_ceiling_again(config, variant, sequences, report.scenarios)
        print(f"c. Triton with batching off ({default.precision})", flush=True)
        batching_off = Variant(default.precision, Path(scratch) / "batching_off")
        if not write_batching_off_repository(default.repository, batching_off.repository):
            report.problems.append("c: no model in the repository had dynamic_batching; c equals b")
        report.scenarios += triton_results(config, batching_off, sequences, "c", report, measure_overheads=False)
        print("d. hand-written FastAPI service", flush=True)
        try:
            report.scenarios += handwritten_results(config, sequences, usable_cores())
        except (RuntimeError, OSError) as error:
            report.problems.append(f"d: {error}")
    report.figures = compute_figures(report.scenarios, report.overheads, report.default_precision)
    for scenario in report.scenarios:
        if scenario.errors:
            report.problems.append(f"{scenario.group} {scenario.name} ({scenario.precision}): {scenario.errors} "
                                   f"errors ({scenario.notes})")  # fmt: skip
    return report


def padding(sequences: Sequence[str], repository: Path) -> dict:
    """The repository's tokenizer's length buckets, and the fraction of padded tokens when each sequence is padded
    alone as that tokenizer pads it (none with exact lengths)."""
    buckets = buckets_from_repository(repository)
    return {"length_buckets": format_buckets(buckets), "padding_waste": token_length_waste(sequences, buckets)}


# ---------------------------------------------------------------------------------------------------------------
# a. Raw engines in-process
# ---------------------------------------------------------------------------------------------------------------


def raw_engine_results(
    config: BenchConfig, variants: Sequence[Variant], sequences: Sequence[str]
) -> list[ScenarioResult]:
    """Eager fp32 PyTorch, then every variant's ONNX and TorchScript files, at every thread split and batch size;
    each engine's batches padded as its repository's tokenizer pads them (the default variant's for eager PyTorch
    and the GPU engines), so that served / raw compares the same padded work."""
    splits = thread_splits(usable_cores())
    default_buckets = buckets_from_repository(variants[0].repository)
    engines: list[tuple[EngineFactory, Sequence[ThreadSplit], tuple[int, ...]]] = [
        (lambda threads: EagerEngine(config.model_size, threads), splits, default_buckets)
    ]
    for variant in variants:
        buckets = buckets_from_repository(variant.repository)
        engines += [(factory, splits, buckets) for factory in variant_engines(variant).values()]
    default_torchscript = variants[0].repository / "esm2_torchscript" / "1" / "model.pt"
    engines += [
        (
            lambda _threads, d=device, p=precision: TorchScriptEngine(default_torchscript, d, p),
            splits[:1],
            default_buckets,
        )
        for device in select_devices(config.device)
        if device.startswith("cuda") and default_torchscript.is_file()
        for precision in precisions_for(device)
    ]
    results = []
    for make_engine, engine_splits, buckets in engines:
        for split in engine_splits:
            for batch_size in config.batch_sizes:
                result = measure_engine(
                    make_engine, sequences, batch_size, split, config.raw_seconds, config.raw_warmup_s, buckets
                )
                print(f"  a {result.engine:11s} {result.device}/{result.precision} {result.threads or '':20s} batch "
                      f"{batch_size:3d}: {result.sequences_per_s:8.1f} seq/s", flush=True)  # fmt: skip
                results.append(result)
    return results


def variant_engines(variant: Variant) -> dict[str, EngineFactory]:
    """The variant's CPU engine files that exist, by engine name (onnx, torchscript)."""
    onnx_path = variant.repository / "esm2_onnx" / "1" / "model.onnx"
    torchscript_path = variant.repository / "esm2_torchscript" / "1" / "model.pt"
    factories: dict[str, EngineFactory] = {}
    if onnx_path.is_file():
        factories["onnx"] = lambda threads, p=onnx_path: OnnxEngine(p, threads, variant.precision)
    if torchscript_path.is_file():
        factories["torchscript"] = lambda threads, p=torchscript_path: TorchScriptEngine(
            p, "cpu", variant.precision, threads
        )
    return factories


def raw_ceiling_again(config: BenchConfig, variant: Variant, sequences: Sequence[str],
                      results: Sequence[ScenarioResult]) -> list[ScenarioResult]:  # fmt: skip
    """Each engine's raw ceiling (group a's fastest split and batch size) measured again right after the variant's
    served runs, as group `RAW_AGAIN`: a shared machine drifts over a run of many minutes, and served / raw takes
    the mean of the two raw measurements that bracket the served ones (`results.bracketed_ceiling`)."""
    splits = {split.label: split for split in thread_splits(usable_cores())}
    buckets = buckets_from_repository(variant.repository)
    again = []
    for engine, make_engine in variant_engines(variant).items():
        best = ceiling(results, engine, variant.precision)
        if best is None or best.threads not in splits:
            continue
        result = measure_engine(make_engine, sequences, best.batch_size, splits[best.threads], config.raw_seconds,
                                config.raw_warmup_s, buckets)  # fmt: skip
        result = replace(result, group=RAW_AGAIN, name=f"{result.name}, again after the served runs")
        print(f"  {RAW_AGAIN} {engine:11s} cpu/{variant.precision} {best.threads:20s} batch {best.batch_size:3d}: "
              f"{result.sequences_per_s:8.1f} seq/s (before: {best.sequences_per_s:.1f})", flush=True)  # fmt: skip
        again.append(result)
    return again


# ---------------------------------------------------------------------------------------------------------------
# b, c. Triton with the shipped config, and with batching off
# ---------------------------------------------------------------------------------------------------------------


def triton_results(config: BenchConfig, variant: Variant, sequences: Sequence[str], group: str,
                   report: BenchReport, measure_overheads: bool) -> list[ScenarioResult]:  # fmt: skip
    from tritonfleet.loadtest.studies.serving import serve

    label = "Triton, dynamic batching" if group == "b" else "Triton, batching off"
    targets = repository_targets(variant.repository)
    networks = served_networks(variant.repository)
    buckets = buckets_from_repository(variant.repository)
    results = []
    loadable = loadable_models(variant.repository)
    with (
        serve(variant.repository, model_control_mode="explicit", load_models=loadable) as server,
        triton_grpc.InferenceServerClient(server.grpc_url) as stats,
    ):
        for model in TRITON_MODELS:
            if model not in targets or model not in loadable:
                print(f"  {group} {model}: not in the {variant.precision} repository", flush=True)
                continue
            target, network = targets[model], networks[model]
            network_config = read_config(variant.repository / network)
            before = inference_statistics(stats)
            with GpuUtilisationSampler() as sampler:
                load = closed_loop(lambda t=target: TritonGrpcSender(server.grpc_url, t, buckets), sequences,
                                   config.concurrency, config.duration_s)  # fmt: skip
            delta = statistics_delta(before, inference_statistics(stats))
            result = _served_result(
                group, f"{label}: {model}", engine_of(network_config),
                load, concurrency=config.concurrency, gpu_utilisation=sampler.mean, precision=variant.precision,
                model=model, threads=network_plan(network_config), average_server_batch=average_batch(delta, [network]),
            )  # fmt: skip
            print(f"  {group} {variant.precision:5s} {model:17s} c={config.concurrency}: "
                  f"{result.sequences_per_s:8.1f} seq/s  p50 {result.p50_ms:7.1f} ms  p99 {result.p99_ms:7.1f} ms  "
                  f"avg batch {result.average_server_batch:.2f}  errors {load.errors}", flush=True)  # fmt: skip
            results.append(result)
            if measure_overheads:
                overhead = measure_overhead(server.grpc_url, target, sequences, config.overhead_requests,
                                            buckets, variant.precision)  # fmt: skip
                print(f"    overhead {model}: client p50 {overhead.client_p50_ms:.2f} ms, compute p50 "
                      f"{overhead.compute_p50_ms:.2f} ms, server-side p50 {overhead.server_side_overhead_p50_ms:.2f} "
                      "ms", flush=True)  # fmt: skip
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


def measure_overhead(url: str, target: ModelTarget, sequences: Sequence[str], requests: int,
                     buckets: Sequence[int], precision: str = "fp32") -> OverheadResult:  # fmt: skip
    """Concurrency 1: per request, client latency minus the compute time (all models) from the statistics API."""
    sender = TritonGrpcSender(url, target, buckets)
    stats_client = triton_grpc.InferenceServerClient(url)
    client_ms, compute_ms, overhead_ms, server_overhead_ms = [], [], [], []
    involved: set[str] = set()
    try:
        for index in range(requests + 2):
            before = inference_statistics(stats_client)
            began = time.perf_counter()
            sender.send([sequences[index % len(sequences)]])
            latency = (time.perf_counter() - began) * 1e3
            if index < 2:  # warm-up, which also tells which models one request runs
                time.sleep(0.2)
                delta = statistics_delta(before, inference_statistics(stats_client))
                involved |= {name for name, counts in delta.items() if counts["success_count"] > 0}
                continue
            delta = settled_delta(stats_client, before, involved)
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
        precision=precision,
    )  # fmt: skip


def settled_delta(stats_client, before: dict, models: set[str], timeout_s: float = 1.0) -> dict:
    """The statistics delta once every one of `models` has counted the request: a model reports its statistics
    after it has sent its response, so a reading taken as soon as the client has the answer can miss the last step
    (and count it into the next request). Bounded: after `timeout_s` the reading is taken as it is."""
    deadline = time.monotonic() + timeout_s
    while True:
        delta = statistics_delta(before, inference_statistics(stats_client))
        if all(delta.get(name, {}).get("success_count", 0) >= 1 for name in models) or time.monotonic() > deadline:
            return delta
        time.sleep(0.002)


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

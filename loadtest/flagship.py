"""Flagship study: ESM-2 150M / 650M (random weights) exported with the shipped defaults, served, and measured against
eager fp32 PyTorch (HF EsmModel, SDPA attention) and the hand-written FastAPI + HF service, in one run.

    python -m tritonfleet.loadtest.flagship --quick              # 8M, 12 proteins: the whole path in ~2 min
    nice -n 10 python -m tritonfleet.loadtest.flagship --sizes 150M
    nice -n 10 python -m tritonfleet.loadtest.flagship --sizes 650M   # results add up in reports/flagship.md

Per size: `tritonfleet export esm2 --random-init SIZE --target cpu:N` (the shipped default precision) in a child
process, its wall time and peak memory (the process tree's sampled RSS, and the kernel's high-water mark); then the
same Swiss-Prot-like proteins, each computed once per path (no response cache), through
1. served `esm2` (the README's entry point: sequences in) over gRPC with the project's client (EmbeddingClient, one
   sequence per request, EMBEDDING only) at a fixed concurrency;
2. eager fp32 PyTorch with SDPA in this process with the same N threads (one call at a time with N threads, and N
   single-threaded calls side by side): length-sorted batches padded to their longest (not at 650M, where they
   never win: DEFAULT_EAGER_BATCH), and one protein per call;
3. the hand-written FastAPI + HF service (loadtest/handwritten_service.py) under uvicorn with N torch threads, one
   sequence per request at the same concurrency.
Throughput = proteins / wall time for all of them. The served network's instances run with the export's `cpu_nice`
(bulk instances yield to the interactive copy), so before 2 and 3 this process takes the same niceness: every
engine then competes alike with whatever else runs on the machine. Weights are RANDOM: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from tritonfleet.contract.command_line import HelpFormatter
from tritonfleet.contract.esm2.pipeline import ENSEMBLE_MODEL, ONNX_MODEL
from tritonfleet.contract.esm2_tokens import encode_batch
from tritonfleet.deploy.local.backends.contract import raise_niceness
from tritonfleet.export.devices import usable_cores
from tritonfleet.loadtest.fixed_work import FixedWorkRun, send_each_once
from tritonfleet.loadtest.flagship_report import (
    ExportMeasurement,
    PathMeasurement,
    SizeResult,
    load_results,
    machine_summary,
    render,
    save_results,
)
from tritonfleet.loadtest.process_memory import PeakRssSampler, wait_with_rusage
from tritonfleet.loadtest.studies import exported_precision, git_revision, serve
from tritonfleet.loadtest.studies.header import command_line
from tritonfleet.loadtest.studies.process_cpu import cpu_delta, process_cpu_s, server_cpu
from tritonfleet.loadtest.workload import generate_sequences, percentile

ENTRY_MODEL = ENSEMBLE_MODEL  # the README's entry point: sequences in
NETWORK = ONNX_MODEL  # the network `esm2` calls in the shipped CPU export
# Proteins per size: a short run is enough to rank the paths at the large sizes (650M eager: seconds per protein).
# 650M takes 48: with 24 the last long protein ran alone on one core for ~6 % of the served run (the tail), and the
# time comes from eager's batch rows, which this size skips (DEFAULT_EAGER_BATCH).
DEFAULT_SEQUENCES = {"8M": 64, "35M": 64, "150M": 32, "650M": 48}
# Eager's length-sorted batch size per size (1: one protein per call only). At 650M batches of 8 needed 1.4x the CPU
# per protein of one protein per call (6125 vs 4305 ms, reports/flagship.md of 2026-12-07 07:03 UTC: padding, and
# attention over the padded length) and ran at about half its throughput, so they never are eager's best row there.
DEFAULT_EAGER_BATCH = {"650M": 1}
EAGER_BATCH = 8
REQUEST_TIMEOUT_S = 1800.0  # 650M on 2 cores: a queued request may wait minutes, which is not an error here
PROJECT_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class StudyConfig:
    sizes: tuple[str, ...]
    sequences: int | None  # None: DEFAULT_SEQUENCES of each size
    concurrency: int
    eager_batch: int | None  # None: DEFAULT_EAGER_BATCH of each size
    threads: int
    seed: int
    build_dir: Path
    output: Path
    reuse_export: bool

    def sequences_for(self, size: str) -> int:
        return self.sequences or DEFAULT_SEQUENCES.get(size, 24)

    def eager_batch_sizes(self, size: str) -> tuple[int, ...]:
        """Eager's rows: length-sorted batches of the size's batch (when above 1), then one protein per call."""
        batch = self.eager_batch or DEFAULT_EAGER_BATCH.get(size, EAGER_BATCH)
        return (batch, 1) if batch > 1 else (1,)


# ---------------------------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------------------------


def export_arguments(size: str, threads: int, repository: Path) -> list[str]:
    """The shipped defaults for a CPU plan of `threads` cores (precision: the export's default, auto)."""
    return ["export", "esm2", "--random-init", size, "--target", f"cpu:{threads}", "--output", str(repository)]


def measure_export(size: str, threads: int, repository: Path) -> ExportMeasurement:
    """Runs the export as a child process (`python -m tritonfleet.cli export ...`); wall time and peak memory."""
    arguments = export_arguments(size, threads, repository)
    log_path = repository.parent / f"export-{size}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        started = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-m", "tritonfleet.cli", *arguments], cwd=PROJECT_ROOT,
                                   stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)  # fmt: skip
        with PeakRssSampler(process.pid) as memory:
            exit_ = wait_with_rusage(process)
        seconds = time.perf_counter() - started
    if exit_.returncode != 0:
        raise RuntimeError(f"export of {size} failed ({exit_.returncode}); {log_path}:\n"
                           + log_path.read_text(errors="replace")[-3000:])  # fmt: skip
    return ExportMeasurement(
        command="tritonfleet " + " ".join(arguments), seconds=seconds, peak_tree_rss_bytes=memory.peak_bytes,
        max_process_rss_bytes=exit_.max_rss_bytes, repository_bytes=_tree_size(repository),
        precision=_repository_precision(repository), plan=_repository_plan(repository),
    )  # fmt: skip


def _tree_size(path: Path) -> int:
    return sum(entry.stat().st_size for entry in path.rglob("*") if entry.is_file())


def _repository_precision(repository: Path) -> str:
    return exported_precision(repository, NETWORK)


def _repository_plan(repository: Path) -> str:
    """The plan the export printed and recorded (serving_target.json)."""
    from tritonfleet.export.devices import TARGET_FILENAME

    with contextlib.suppress(OSError, ValueError):
        return str(json.loads((repository / TARGET_FILENAME).read_text()).get("plan", "unknown"))
    return "unknown"


# ---------------------------------------------------------------------------------------------------------------
# The three paths
# ---------------------------------------------------------------------------------------------------------------


def children_cpu_s() -> float:
    """CPU-seconds (user + system) of this process's descendants that are alive now (e.g. the uvicorn service)."""
    total = 0.0
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += process_cpu_s(child)
    return total


def _path(name: str, run: FixedWorkRun, peak_rss: int, **fields) -> PathMeasurement:
    return PathMeasurement(
        name=name, sequences=run.sequences, elapsed_s=run.elapsed_s, p50_ms=percentile(run.latencies_ms, 50),
        p99_ms=percentile(run.latencies_ms, 99), peak_rss_bytes=peak_rss, errors=run.errors,
        first_error=run.first_error, niceness=os.getpriority(os.PRIO_PROCESS, 0), **fields,
    )  # fmt: skip


def measure_served(repository: Path, sequences: Sequence[str], warmup: Sequence[str],
                   concurrency: int) -> PathMeasurement:  # fmt: skip
    """Served `esm2` on a local tritonserver (only it and the models it calls loaded, no response cache), through
    EmbeddingClient over gRPC: one protein per request, bulk priority (the class a request naming none gets)."""
    from tritonfleet.client import ClientConfig, EmbeddingClient, RetryPolicy

    options = {"model_control_mode": "explicit", "load_models": (ENTRY_MODEL,), "response_cache_bytes": 0,
               "startup_timeout_s": 1200.0}  # fmt: skip
    with PeakRssSampler(os.getpid(), include_root=False) as memory, serve(repository, **options) as server:
        config = ClientConfig(url=server.grpc_url, protocol="grpc", model=ENTRY_MODEL, entry_routing=False,
                              priority="bulk", timeout_s=REQUEST_TIMEOUT_S,
                              retry=RetryPolicy(max_attempts=1))  # fmt: skip
        with EmbeddingClient(config) as client:
            send_each_once(client.embed, warmup, concurrency)
            before = server_cpu(server.pid)
            run = send_each_once(client.embed, sequences, concurrency)
            used = cpu_delta(before, server_cpu(server.pid))
        niceness = network_niceness(server.pid)
    return _path(f"served `{ENTRY_MODEL}` (EmbeddingClient, gRPC, concurrency {concurrency})", run,
                 memory.peak_bytes, cpu_s=used.total, kind="served", engine_niceness=niceness)  # fmt: skip


def network_niceness(server_pid: int) -> int:
    """The niceness the served network's instances run at (the export's `cpu_nice` on top of the server's)."""
    values = [process.nice() for process in psutil.Process(server_pid).children(recursive=True)
              if _serves_network(process)]  # fmt: skip
    return max(values, default=os.getpriority(os.PRIO_PROCESS, server_pid))


def _serves_network(process: psutil.Process) -> bool:
    """A python backend stub of the network: its first argument is the model file, <repository>/<model>/<v>/<file>."""
    try:
        arguments = process.cmdline()
    except psutil.Error:
        return False
    return len(arguments) > 1 and Path(arguments[1]).parent.parent.name == NETWORK


def length_sorted_batches(sequences: Sequence[str], batch_size: int) -> list:
    """Sorted by length and chunked, each batch padded to its longest protein (what a careful user of HF does)."""
    ordered = sorted(sequences, key=len)
    return [encode_batch(ordered[i : i + batch_size], None) for i in range(0, len(ordered), batch_size)]


def measure_eager(size: str, sequences: Sequence[str], warmup: Sequence[str], threads: int,
                  batch_sizes: Sequence[int]) -> list[PathMeasurement]:  # fmt: skip
    """Eager fp32 HF EsmModel (SDPA) in this process, for each batch size and each way of spending `threads`: one
    model call at a time with `threads` torch threads, and `threads` calls side by side with one thread each (one
    module: its weights are shared; torch releases the GIL while it computes)."""
    import torch

    from tritonfleet.loadtest.bench.engines import EagerEngine, run_side_by_side, thread_splits

    results = []
    with PeakRssSampler(os.getpid()) as memory:
        engine = EagerEngine(size, threads)
        for ids, mask in length_sorted_batches(warmup, max(batch_sizes)):
            engine(ids, mask)
        for batch_size in batch_sizes:
            batches = length_sorted_batches(sequences, batch_size)
            for split in thread_splits(threads):
                torch.set_num_threads(split.threads)
                cpu_before = process_cpu_s(psutil.Process())
                run = run_side_by_side([engine] * split.engines, batches)
                cpu_s = process_cpu_s(psutil.Process()) - cpu_before
                fixed = FixedWorkRun(run.elapsed_s, run.latencies_ms, run.sequences, 0, "")
                label = f"length-sorted batches of {batch_size}" if batch_size > 1 else "one protein per call"
                results.append(_path(f"eager fp32 PyTorch, SDPA ({label}, {split.label})", fixed, 0, kind="eager",
                                     batch_size=batch_size, cpu_s=cpu_s))  # fmt: skip
                print(f"  {results[-1].name}: {results[-1].sequences_per_s:.2f} seq/s", flush=True)
        del engine
        gc.collect()
    for result in results:
        result.peak_rss_bytes = memory.peak_bytes
    return results


def measure_handwritten(size: str, sequences: Sequence[str], warmup: Sequence[str], threads: int,
                        concurrency: int) -> PathMeasurement:  # fmt: skip
    """The hand-written FastAPI + HF service in its own uvicorn process, one protein per request."""
    import requests

    from tritonfleet.loadtest.bench.scenarios import BenchConfig, handwritten_service

    local = threading.local()

    service = handwritten_service(BenchConfig(model_size=size, device="cpu"), threads)
    with PeakRssSampler(os.getpid(), include_root=False) as memory, service as base_url:

        def call(batch: list[str]) -> None:
            if not hasattr(local, "session"):
                local.session = requests.Session()
            response = local.session.post(f"{base_url}/embed", json={"sequences": batch}, timeout=REQUEST_TIMEOUT_S)
            response.raise_for_status()
            response.json()

        send_each_once(call, warmup, concurrency)
        cpu_before = children_cpu_s()
        run = send_each_once(call, sequences, concurrency)
        cpu_s = children_cpu_s() - cpu_before
    return _path(f"FastAPI + HF eager (hand-written service, concurrency {concurrency})", run, memory.peak_bytes,
                 kind="fastapi", cpu_s=cpu_s)  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# The study
# ---------------------------------------------------------------------------------------------------------------


def study_size(config: StudyConfig, size: str, previous: SizeResult | None) -> SizeResult:
    repository = config.build_dir / size / "repository"
    reuse = config.reuse_export and (repository / "serving_target.json").is_file()
    if reuse and previous is not None and previous.export is not None:
        export, export_note = previous.export, "reused from an earlier run (--reuse-export)"
    elif reuse:
        export, export_note = None, "--reuse-export served a repository exported earlier"
    else:
        print(f"{size}: exporting ({' '.join(export_arguments(size, config.threads, repository))}) ...", flush=True)
        export, export_note = measure_export(size, config.threads, repository), ""
        print(f"  export {export.seconds:.0f} s, peak {export.peak_tree_rss_bytes / 2**30:.2f} GiB", flush=True)
    count = config.sequences_for(size)
    sequences = generate_sequences(count, "swissprot", config.seed)
    warmup = generate_sequences(2, "short", config.seed + 1)
    started = time.perf_counter()
    print(f"{size}: served `{ENTRY_MODEL}` ...", flush=True)
    served = measure_served(repository, sequences, warmup, config.concurrency)
    print(f"  {served.sequences_per_s:.2f} seq/s", flush=True)
    raise_niceness(served.engine_niceness)
    print(f"{size}: eager (niceness {os.getpriority(os.PRIO_PROCESS, 0)}) ...", flush=True)
    eager = measure_eager(size, sequences, warmup, config.threads, config.eager_batch_sizes(size))
    print(f"{size}: hand-written FastAPI service ...", flush=True)
    fastapi = measure_handwritten(size, sequences, warmup, config.threads, config.concurrency)
    print(f"  {fastapi.sequences_per_s:.2f} seq/s", flush=True)
    return SizeResult(
        size=size, sequences=count, residues=sum(map(len, sequences)), longest=max(map(len, sequences)),
        concurrency=config.concurrency, threads=config.threads, seed=config.seed, export=export,
        export_note=export_note, paths=[served, *eager, fastapi], measured_s=time.perf_counter() - started,
        finished_utc=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), load_average=os.getloadavg()[0],
    )  # fmt: skip


def _child_arguments(config: StudyConfig, size: str) -> list[str]:
    arguments = ["--sizes", size, "--concurrency", str(config.concurrency), "--threads", str(config.threads),
                 "--seed", str(config.seed), "--build-dir", str(config.build_dir),
                 "--output", str(config.output)]  # fmt: skip
    if config.sequences:
        arguments += ["--sequences", str(config.sequences)]
    if config.eager_batch:
        arguments += ["--eager-batch", str(config.eager_batch)]
    return arguments + (["--reuse-export"] if config.reuse_export else [])


def main(argv: list[str] | None = None, prog: str = "python -m tritonfleet.loadtest.flagship") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["150M", "650M"], help="ESM-2 sizes, random weights")
    parser.add_argument("--sequences", type=int, help="proteins per path (default: "
                        + ", ".join(f"{k} {v}" for k, v in DEFAULT_SEQUENCES.items()) + ")")  # fmt: skip
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight (served and FastAPI)")
    parser.add_argument("--eager-batch", type=int, help="eager's length-sorted batch size; 1: one protein per "
                        f"call only (default: {EAGER_BATCH}, "
                        + ", ".join(f"{k} {v}" for k, v in DEFAULT_EAGER_BATCH.items()) + ")")  # fmt: skip
    parser.add_argument("--threads", type=int, default=usable_cores(), help="the thread budget (export --target "
                        "cpu:N, eager's torch threads, the FastAPI service's torch threads)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="workload seed")
    parser.add_argument("--build-dir", type=Path, default=Path("build/flagship"), help="exports go here")
    parser.add_argument("--output", type=Path, help="the report (results kept next to it as .json, merged by size; "
                        "default: reports/flagship.md, or build/flagship-quick/flagship.md with --quick)")  # fmt: skip
    parser.add_argument("--reuse-export", action="store_true", help="serve an existing export of a size instead of "
                        "exporting again (its earlier export figures are kept)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="8M, 12 proteins, concurrency 4, eager batch 4 (a smoke "
                        "run of the whole path, ~2 min)")  # fmt: skip
    parser.add_argument("--in-this-process", action="store_true", help=argparse.SUPPRESS)  # the per-size child
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.sequences = ["8M"], args.sequences or 12
        args.concurrency, args.eager_batch = min(args.concurrency, 4), min(args.eager_batch or 4, 4)
        args.build_dir = args.build_dir if args.build_dir != Path("build/flagship") else Path("build/flagship-quick")
    output = args.output or (args.build_dir / "flagship.md" if args.quick else Path("reports/flagship.md"))
    eager_batch = 1 if args.eager_batch is None else args.eager_batch
    if min(args.concurrency, eager_batch, args.threads, args.sequences or 1) < 1:
        parser.error("--sequences, --concurrency, --eager-batch and --threads must be >= 1")
    config = StudyConfig(tuple(args.sizes), args.sequences, args.concurrency, args.eager_batch, args.threads,
                         args.seed, args.build_dir, output, args.reuse_export)  # fmt: skip
    if not args.in_this_process:
        # One child process per size: a size's eager and FastAPI runs take the served network's niceness, which a
        # process cannot give back (not for the next size's export and server, nor for a caller such as pytest).
        for size in config.sizes:
            subprocess.run([sys.executable, "-m", "tritonfleet.loadtest.flagship", *_child_arguments(config, size),
                            "--in-this-process"], check=True)  # fmt: skip
        return 0
    results_path = output.with_suffix(".json")
    results = load_results(results_path)
    command = command_line(prog, argv)
    for size in config.sizes:
        result = study_size(config, size, results.get(size))
        result.command, result.revision = command, git_revision()
        results[size] = result
        save_results(results_path, results)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(render(results, machine_summary()), encoding="utf-8")
        print(f"wrote {output} ({size})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

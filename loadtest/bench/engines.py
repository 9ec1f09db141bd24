"""The raw engines in-process (group a, the ceilings): ONNX Runtime and TorchScript on the exported files, and eager
PyTorch (SDPA attention) as the reference every engine variant is compared with.

The thread budget (the usable cores) is spent two ways, as a served network can spend it: one engine with a thread
per core, and one single-threaded engine per core run side by side from as many Python threads (ONNX Runtime and
TorchScript release the GIL while they compute; eager PyTorch between its Python steps). The better of the two is
the ceiling that served / raw is taken against (loadtest/cpu_plan.py takes it the same way).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from tritonfleet.contract import esm2_tokens as esm_tokenizer
from tritonfleet.contract.engines import EngineOptions, open_engine
from tritonfleet.contract.esm2.pipeline import ESM2
from tritonfleet.contract.pipeline import Role
from tritonfleet.loadtest.bench.report import ScenarioResult
from tritonfleet.loadtest.devices import GpuUtilisationSampler
from tritonfleet.loadtest.workload import percentile

Batch = tuple[np.ndarray, np.ndarray]  # (input_ids, attention_mask), int64 [N, T]


class Engine(Protocol):
    """(input_ids, attention_mask) -> pooled embeddings, on `device` in `precision`."""

    name: str
    device: str
    precision: str

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray: ...


# threads -> a new engine using that many intra-op threads
EngineFactory = Callable[[int], Engine]


class OnnxEngine:
    """An ONNX file on ONNX Runtime's CPU provider (intra-op `threads`, inter-op 1, sequential, all graph
    optimisations), returning the pooled embeddings."""

    name = "onnx"

    def __init__(self, model_path: Path, threads: int, precision: str = "fp32") -> None:
        self.engine = open_engine(model_path, "onnx", threads, "cpu", precision, EngineOptions(inter_threads=1))
        self.input_names = self.engine.input_names
        self.output_name = next(name for name in self.engine.output_names if ESM2.tensor_role(name) is Role.EMBEDDING)
        self.device, self.precision = "cpu", precision

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feeds = dict(zip(self.input_names, (input_ids, attention_mask)))
        return self.engine.run(feeds, [self.output_name])[self.output_name]


class TorchScriptEngine:
    """A TorchScript file as exported: fp32, int8 (dynamically quantized) or bf16 (autocast traced in); `precision`
    fp16 halves the module (CUDA only). Threads are torch's process-wide intra-op setting."""

    name = "torchscript"

    def __init__(self, model_path: Path, device: str = "cpu", precision: str = "fp32", threads: int = 0) -> None:
        self.engine = open_engine(model_path, "torchscript", threads, device, precision)
        self.output_name = self.engine.output_names[0]
        self.device, self.precision = device, precision

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feeds = dict(zip(self.engine.input_names, (input_ids, attention_mask)))
        return self.engine.run(feeds, [self.output_name])[self.output_name].astype(np.float32, copy=False)


class EagerEngine:
    """Eager fp32 PyTorch with SDPA attention (`build_esm2`, the export's reference), random weights of `size`."""

    name = "eager"

    def __init__(self, size: str, threads: int = 0) -> None:
        import torch

        from tritonfleet.export.esm2.model import build_esm2

        if threads > 0:
            torch.set_num_threads(threads)
        self.torch = torch
        self.device, self.precision = "cpu", "fp32"
        self.module = build_esm2(random_init=size)

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            return self.module(self.torch.from_numpy(input_ids), self.torch.from_numpy(attention_mask))[0].numpy()


@dataclass(frozen=True)
class ThreadSplit:
    """How one engine spends the thread budget: `engines` side by side with `threads` intra-op threads each."""

    engines: int
    threads: int

    @property
    def label(self) -> str:
        engines = "engine" if self.engines == 1 else "engines"
        return f"{self.engines} {engines} x {self.threads} thread{'' if self.threads == 1 else 's'}"


def thread_splits(cores: int) -> tuple[ThreadSplit, ...]:
    """One engine on every core, and one single-threaded engine per core (the same when there is one core)."""
    return (ThreadSplit(1, cores),) if cores <= 1 else (ThreadSplit(1, cores), ThreadSplit(cores, 1))


def bucketed_batches(sequences: Sequence[str], batch_size: int,
                     buckets: Sequence[int] | None = esm_tokenizer.DEFAULT_BUCKETS) -> list[list[str]]:  # fmt: skip
    """Group sequences by token-length bucket (what the batcher can combine), then chunk by `batch_size`. With exact
    lengths (`()` or None) the sequences are sorted by length and chunked: each batch then pads to its own longest
    sequence, the least padding any batch of that size can carry."""
    if not buckets:
        ordered = sorted(sequences, key=len)
        return [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]
    by_bucket: dict[int, list[str]] = {}
    for sequence in sequences:
        by_bucket.setdefault(
            esm_tokenizer.bucket_for(len(sequence) + esm_tokenizer.SPECIAL_TOKENS_PER_SEQUENCE, buckets), []
        ).append(sequence)
    batches = []
    for bucket in sorted(by_bucket):
        members = by_bucket[bucket]
        batches.extend(members[i : i + batch_size] for i in range(0, len(members), batch_size))
    return batches


def encoded_batches(
    sequences: Sequence[str],
    batch_size: int,
    seed: int = 0,
    buckets: Sequence[int] | None = esm_tokenizer.DEFAULT_BUCKETS,
) -> list[Batch]:
    """The `bucketed_batches` tokenized as the tokenizer pads them (`buckets`: the repository's; `()`: exact lengths,
    each batch padded to its own longest sequence), in a fixed shuffled order (so that no engine ends on a run of
    the longest batches while the others idle, and any prefix is a fair sample of the mix)."""
    batches = [esm_tokenizer.encode_batch(batch, buckets) for batch in bucketed_batches(sequences, batch_size, buckets)]
    random.Random(seed).shuffle(batches)
    return batches


def warm_up(engine: Engine, batches: Sequence[Batch], budget_s: float) -> None:
    """Distinct shapes, cheapest first, twice each (allocator arenas; TorchScript's profiling executor specialises
    per shape on its first runs), until `budget_s` is spent: the first shape always runs."""
    shapes: dict[tuple[int, ...], Batch] = {}
    for ids, mask in batches:
        shapes.setdefault(ids.shape, (ids, mask))
    started = time.perf_counter()
    for ids, mask in sorted(shapes.values(), key=lambda batch: batch[0].size):
        engine(ids, mask)
        engine(ids, mask)
        if time.perf_counter() - started > budget_s:
            return


@dataclass
class SideBySideRun:
    sequences: int
    elapsed_s: float
    latencies_ms: list[float]
    cpu_s: float = 0.0  # this process's CPU time over the run (the engines' threads; the caller only waits)
    outputs: list[np.ndarray] = field(default_factory=list)  # with keep_outputs: each batch's, in `batches` order

    @property
    def sequences_per_s(self) -> float:
        return self.sequences / self.elapsed_s if self.elapsed_s > 0 else 0.0


def run_side_by_side(engines: Sequence[Callable[..., np.ndarray]], batches: Sequence[tuple[np.ndarray, ...]],
                     min_seconds: float = 0.0, keep_outputs: bool = False) -> SideBySideRun:  # fmt: skip
    """Each engine on its own thread takes the next batch of the shared list; whole passes over `batches` (every
    batch once per pass: the same work for every engine and split) are run until `min_seconds` have passed, at least
    one. Throughput counts every batch over the time until the last engine finished. A batch is the arrays an
    engine is called with, the first one's rows counting its sequences; `keep_outputs` keeps what each batch's last
    run returned."""
    if not batches:
        raise ValueError("no batches to run")
    lock = threading.Lock()
    cursor, stopped = [0], [False]
    done = [0] * len(engines)
    latencies: list[list[float]] = [[] for _ in engines]
    outputs: list = [None] * len(batches) if keep_outputs else []
    failures: list[BaseException] = []

    def next_batch() -> int | None:
        with lock:
            index = cursor[0]
            # A new pass starts only while the minimum time has not passed.
            if stopped[0] or (index and index % len(batches) == 0 and time.perf_counter() >= deadline):
                stopped[0] = True
                return None
            cursor[0] += 1
        return index % len(batches)

    def worker(index: int) -> None:
        try:
            while (position := next_batch()) is not None:
                batch = batches[position]
                began = time.perf_counter()
                output = engines[index](*batch)
                latencies[index].append((time.perf_counter() - began) * 1e3)
                done[index] += batch[0].shape[0]
                if keep_outputs:
                    outputs[position] = output
        except Exception as error:  # noqa: BLE001 - re-raised in the calling thread
            stopped[0] = True
            failures.append(error)

    started, cpu_started = time.perf_counter(), time.process_time()
    deadline = started + min_seconds
    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(len(engines))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
    return SideBySideRun(
        sum(done), time.perf_counter() - started, [v for values in latencies for v in values],
        time.process_time() - cpu_started, outputs,
    )  # fmt: skip


def measure_engine(make_engine: EngineFactory, sequences: Sequence[str], batch_size: int, split: ThreadSplit,
                   min_seconds: float = 0.0, warmup_s: float = 3.0,
                   buckets: Sequence[int] | None = esm_tokenizer.DEFAULT_BUCKETS) -> ScenarioResult:  # fmt: skip
    """Sequences/s of `split.engines` engines with `split.threads` threads each over `sequences` in batches of
    `batch_size` padded as a tokenizer with `buckets` pads them (`encoded_batches`; pass the measured repository's,
    `workload.buckets_from_repository`), whole passes for at least `min_seconds` (tokenization excluded)."""
    batches = encoded_batches(sequences, batch_size, buckets=buckets)
    engines = [make_engine(split.threads) for _ in range(split.engines)]
    for engine in engines:
        warm_up(engine, batches, warmup_s)
    with GpuUtilisationSampler() as sampler:
        run = run_side_by_side(engines, batches, min_seconds)
    engine = engines[0]
    return ScenarioResult(
        group="a", name=f"raw {engine.name} in-process", engine=engine.name, sequences_per_s=run.sequences_per_s,
        p50_ms=percentile(run.latencies_ms, 50), p99_ms=percentile(run.latencies_ms, 99),
        requests=len(run.latencies_ms), batch_size=batch_size, device=engine.device, precision=engine.precision,
        threads=split.label if engine.device == "cpu" else "", gpu_utilisation=sampler.mean,
        notes="latency per batch",
    )  # fmt: skip


def raw_ceiling(model_path: Path, sequences: Sequence[str], cores: int, seconds: float,
                buckets: Sequence[int] | None) -> dict[str, float]:  # fmt: skip
    """Sequences/s of the ONNX engine in-process on the served requests (one sequence each, padded as the tokenizer
    with `buckets` pads it: the served repository's, `workload.buckets_from_repository`) for every split of `cores`
    (ThreadSplit.label -> seq/s), each for whole passes over them of at least `seconds`."""
    return {
        split.label: measure_engine(
            lambda threads: OnnxEngine(model_path, threads), sequences, 1, split, seconds, buckets=buckets
        ).sequences_per_s
        for split in thread_splits(cores)
    }

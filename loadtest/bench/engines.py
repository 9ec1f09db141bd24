"""The raw engines in-process (group a, the ceiling): ONNX Runtime and TorchScript on the exported files."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from tritonfleet.contract import esm2_tokens as esm_tokenizer
from tritonfleet.loadtest.bench.report import ScenarioResult
from tritonfleet.loadtest.devices import GpuUtilisationSampler
from tritonfleet.loadtest.workload import percentile


class Engine(Protocol):
    """(input_ids, attention_mask) -> pooled embeddings, on `device` in `precision`."""

    name: str
    device: str
    precision: str

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray: ...


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


def measure_engine(engine: Engine, sequences: Sequence[str], batch_size: int, repeats: int = 1) -> ScenarioResult:
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

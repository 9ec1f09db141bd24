"""`make gpu-check`'s packed step: the served `esm2_onnx_packed` against `esm2_onnx` on one running server.

Parity: a Swiss-Prot-like set sent at once, one unpadded sequence per request, to the packed model (Triton packs
the waiting requests into executions), against the padded network's EMBEDDING of each sequence sent alone.
Throughput: the same closed loop (one sequence per request, `concurrency` in flight over gRPC) against the padded
network (ids padded to the tokenizer's buckets, as the ensemble sends them) and the packed one, in one run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from tritonfleet.contract.esm2_tokens import DEFAULT_BUCKETS, encode_batch
from tritonfleet.export.esm2.packed import EMBEDDING, packed_model_name
from tritonfleet.loadtest.bench.load import send_all
from tritonfleet.loadtest.workload import PreparedRequest

PADDED_MODEL = "esm2_onnx"
PACKED_MODEL = packed_model_name(PADDED_MODEL)
# fp32 on CPU is batch invariant (export.parity.INVARIANCE_TOLERANCE); CUDA picks GEMM kernels (TF32 by default in
# ONNX Runtime's CUDA EP) by shape, so on GPU the bound is the one fp32 served parity uses there.
TOLERANCE = {"cpu": 1e-5, "cuda": 1e-3}
PARITY_SEQUENCES = 16


@dataclass(frozen=True)
class PackedCheck:
    sequences: int
    parity_sequences: int
    max_abs_diff: float
    tolerance: float
    padded_seq_per_s: float
    packed_seq_per_s: float

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    def markdown(self, precision: str) -> list[str]:
        return [
            "",
            f"## Packed batches ({precision}): `{PACKED_MODEL}` vs `{PADDED_MODEL}`",
            "",
            f"{self.sequences} sequences, one per request over gRPC. EMBEDDING of packed batches vs each sequence "
            f"alone ({self.parity_sequences} sequences sent at once): max abs diff {self.max_abs_diff:.1e} "
            f"({'ok' if self.passed else 'FAILED'}, <= {self.tolerance:.0e}). "
            f"Closed loop: padded (bucketed) {self.padded_seq_per_s:.1f} seq/s, packed {self.packed_seq_per_s:.1f} "
            f"seq/s ({self.packed_seq_per_s / max(self.padded_seq_per_s, 1e-9):.2f}x).",
        ]


def _padded_request(sequence: str) -> PreparedRequest:
    ids, mask = encode_batch([sequence], DEFAULT_BUCKETS)
    return PreparedRequest({"INPUT_IDS": ids, "ATTENTION_MASK": mask}, 1, len(sequence))


def _packed_request(sequence: str) -> PreparedRequest:
    ids, _ = encode_batch([sequence], buckets=None)
    return PreparedRequest({"INPUT_IDS": ids}, 1, len(sequence))


def _closed_loop(url: str, model: str, sequences: list[str], concurrency: int) -> tuple[float, list[np.ndarray]]:
    """seq/s of `concurrency` clients each sending the next sequence (tokenized beforehand) as soon as its last one
    answered, and each sequence's EMBEDDING."""
    prepare = _packed_request if model == PACKED_MODEL else _padded_request
    requests = [prepare(sequence) for sequence in sequences]
    answers: list = [None] * len(requests)
    started = time.perf_counter()
    send_all(url.removeprefix("grpc://"), model, requests, concurrency, EMBEDDING, answers)
    return len(sequences) / (time.perf_counter() - started), [answer[0] for answer in answers]


def served_packed_check(url: str, sequences: list[str], device: str = "cpu", concurrency: int = 16) -> PackedCheck:
    """Parity of the packed model against each sequence alone, then padded vs packed throughput."""
    parity_set = sequences[:PARITY_SEQUENCES]
    _, alone = _closed_loop(url, PADDED_MODEL, parity_set, concurrency=1)
    _, packed = _closed_loop(url, PACKED_MODEL, parity_set, concurrency=len(parity_set))
    difference = max(float(np.abs(a - b).max()) for a, b in zip(alone, packed))
    padded_rate, _ = _closed_loop(url, PADDED_MODEL, sequences, concurrency)
    packed_rate, _ = _closed_loop(url, PACKED_MODEL, sequences, concurrency)
    tolerance = TOLERANCE["cpu" if device == "cpu" else "cuda"]
    return PackedCheck(len(sequences), len(parity_set), difference, tolerance, padded_rate, packed_rate)

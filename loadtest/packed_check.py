"""`make gpu-check`'s packed step: the served `esm2_onnx_packed` against `esm2_onnx` on one running server.

Parity: a Swiss-Prot-like set sent at once, one unpadded sequence per request, to the packed model (Triton packs
the waiting requests into executions), against the padded network's EMBEDDING of each sequence sent alone.
Throughput: the same closed loop (one sequence per request, `concurrency` in flight over gRPC) against the padded
network (ids padded to the tokenizer's buckets, as the ensemble sends them) and the packed one, in one run.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass

import numpy as np
import tritonclient.grpc as grpcclient

from tritonfleet.contract.esm2_tokens import DEFAULT_BUCKETS, encode_batch
from tritonfleet.export.esm2.packed import EMBEDDING, packed_model_name

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


def _padded_inputs(sequence: str) -> list[grpcclient.InferInput]:
    ids, mask = encode_batch([sequence], DEFAULT_BUCKETS)
    inputs = []
    for name, array in (("INPUT_IDS", ids), ("ATTENTION_MASK", mask)):
        tensor = grpcclient.InferInput(name, list(array.shape), "INT64")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def _packed_inputs(sequence: str) -> list[grpcclient.InferInput]:
    ids, _ = encode_batch([sequence], buckets=None)
    tensor = grpcclient.InferInput("INPUT_IDS", list(ids.shape), "INT64")
    tensor.set_data_from_numpy(ids)
    return [tensor]


def _closed_loop(url: str, model: str, sequences: list[str], concurrency: int) -> tuple[float, list[np.ndarray]]:
    """seq/s of `concurrency` clients each sending the next sequence as soon as its last one answered."""
    work: queue.SimpleQueue[int] = queue.SimpleQueue()
    for index in range(len(sequences)):
        work.put(index)
    make_inputs = _packed_inputs if model == PACKED_MODEL else _padded_inputs
    answers: list[np.ndarray | None] = [None] * len(sequences)
    errors: list[BaseException] = []

    def client_loop() -> None:
        client = grpcclient.InferenceServerClient(url.removeprefix("grpc://"))
        try:
            while True:
                try:
                    index = work.get_nowait()
                except queue.Empty:
                    return
                outputs = [grpcclient.InferRequestedOutput(EMBEDDING)]
                result = client.infer(model, make_inputs(sequences[index]), outputs=outputs)
                answers[index] = result.as_numpy(EMBEDDING)[0]
        except BaseException as error:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(error)
        finally:
            client.close()

    threads = [threading.Thread(target=client_loop) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    if errors:
        raise errors[0]
    return len(sequences) / seconds, [answer for answer in answers if answer is not None]


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

"""Benchmark (not a test): our client's per-call overhead against bare tritonclient at concurrency 1.

    python -m tritonfleet.loadtest.client_overhead --http-url 127.0.0.1:8000 --grpc-url 127.0.0.1:8001
    python -m tritonfleet.loadtest.client_overhead ... --shm  # also: HTTP binary vs system shared memory, large batch

Both sides send the identical request (same sequences, same model, only the EMBEDDING output, binary tensors on
HTTP) one at a time; calls alternate between the two so drift on a shared machine hits both equally. The reported
ratio is median(ours) / median(bare) from this one run (and the median of per-pair ratios, which is steadier on a
shared machine); the target is <= 1.05. `client_side_work` times what our client adds (validation, batch planning,
reassembly) without the network.

`--shm` compares, for one large local request (default 64 sequences of 1000 residues, RESIDUE_EMBEDDINGS out), bare
tritonclient HTTP with binary tensors against the same call with input and output in system shared memory.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tritonclient.grpc as grpc_client
import tritonclient.http as http_client
from tritonclient.utils import serialize_byte_tensor

from tritonfleet.client import ClientConfig, EmbeddingClient
from tritonfleet.client.core import sequence_array
from tritonfleet.client.transport import infer_inputs, requested_outputs
from tritonfleet.contract.esm2.pipeline import EMBEDDING, ENSEMBLE_MODEL, RESIDUE_EMBEDDINGS, SEQUENCE
from tritonfleet.contract.esm2_tokens import random_proteins


@dataclass(frozen=True)
class Timing:
    """Latencies of one side, in milliseconds."""

    samples_ms: list[float]

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def p90_ms(self) -> float:
        return float(np.percentile(self.samples_ms, 90))


def bare_call(protocol: str, url: str, model: str, sequences: list[str]) -> tuple[Callable[[], np.ndarray], object]:
    """The request built with tritonclient alone (no validation, planning or retries), as a bare-library user would."""
    module = http_client if protocol == "http" else grpc_client
    triton = module.InferenceServerClient(url)
    arrays = {SEQUENCE.name: sequence_array(sequences)}

    def call() -> np.ndarray:
        outputs = requested_outputs(protocol, [EMBEDDING.name])
        result = triton.infer(model, infer_inputs(protocol, arrays), outputs=outputs)
        return result.as_numpy(EMBEDDING.name)

    return call, triton


def interleaved(first: Callable[[], object], second: Callable[[], object], iterations: int) -> tuple[Timing, Timing]:
    a, b = [], []
    for index in range(iterations):
        order = ((first, a), (second, b)) if index % 2 == 0 else ((second, b), (first, a))
        for function, samples in order:
            started = time.perf_counter()
            function()
            samples.append((time.perf_counter() - started) * 1e3)
    return Timing(a), Timing(b)


def measure_overhead(args: argparse.Namespace, protocol: str, url: str, sequences: list[str]) -> dict[str, object]:
    bare, triton = bare_call(protocol, url, args.model, sequences)
    ours_client = EmbeddingClient(ClientConfig(url=url, protocol=protocol, model=args.model, max_in_flight=1))
    try:
        ours = lambda: ours_client.embed(sequences)  # noqa: E731
        np.testing.assert_array_equal(ours(), bare())  # same request, same answer
        interleaved(bare, ours, args.warmup)
        bare_timing, ours_timing = interleaved(bare, ours, args.iterations)
    finally:
        ours_client.close()
        triton.close()
    return {
        "protocol": protocol,
        "bare_median_ms": round(bare_timing.median_ms, 3),
        "ours_median_ms": round(ours_timing.median_ms, 3),
        "bare_p90_ms": round(bare_timing.p90_ms, 3),
        "ours_p90_ms": round(ours_timing.p90_ms, 3),
        "ratio": round(ours_timing.median_ms / bare_timing.median_ms, 4),
        # Calls alternate, so pair i saw the same machine load on both sides; robust on a shared machine.
        "paired_ratio_median": round(
            statistics.median(o / b for o, b in zip(ours_timing.samples_ms, bare_timing.samples_ms)), 4
        ),
    }


def measure_shared_memory(args: argparse.Namespace) -> dict[str, object]:
    """Bare HTTP, binary tensors vs system shared memory, for one large request."""
    import tritonclient.utils.shared_memory as shm

    sequences = random_proteins(args.shm_batch, np.random.default_rng(1), args.shm_length, args.shm_length)
    array = sequence_array(sequences)
    triton = http_client.InferenceServerClient(args.http_url, network_timeout=600, connection_timeout=600)

    def binary() -> np.ndarray:
        inputs = infer_inputs("http", {SEQUENCE.name: array})
        result = triton.infer(args.model, inputs, outputs=requested_outputs("http", [RESIDUE_EMBEDDINGS.name]))
        return result.as_numpy(RESIDUE_EMBEDDINGS.name)

    reference = binary()
    serialized = serialize_byte_tensor(array)  # BYTES go to shared memory length-prefixed, as on the wire
    input_bytes = len(serialized.item())
    output_bytes = reference.nbytes
    key = f"/tritonfleet_overhead_{time.monotonic_ns()}"
    input_region = shm.create_shared_memory_region("tf_in", key + "_in", input_bytes)
    output_region = shm.create_shared_memory_region("tf_out", key + "_out", output_bytes)
    try:
        shm.set_shared_memory_region(input_region, [serialized])
        triton.register_system_shared_memory("tf_in", key + "_in", input_bytes)
        triton.register_system_shared_memory("tf_out", key + "_out", output_bytes)

        def shared() -> np.ndarray:
            infer_input = http_client.InferInput(SEQUENCE.name, list(array.shape), "BYTES")
            infer_input.set_shared_memory("tf_in", input_bytes)
            output = http_client.InferRequestedOutput(RESIDUE_EMBEDDINGS.name, binary_data=True)
            output.set_shared_memory("tf_out", output_bytes)
            result = triton.infer(args.model, [infer_input], outputs=[output])
            meta = result.get_output(RESIDUE_EMBEDDINGS.name)
            return shm.get_contents_as_numpy(output_region, np.float32, meta["shape"]).copy()

        np.testing.assert_array_equal(shared(), reference)
        binary_timing, shared_timing = interleaved(binary, shared, args.shm_iterations)
    finally:
        for name in ("tf_in", "tf_out"):  # only our regions: the server may serve others
            _unregister_quietly(triton, name)
        shm.destroy_shared_memory_region(input_region)
        shm.destroy_shared_memory_region(output_region)
        triton.close()
    return {
        "batch": args.shm_batch,
        "residues": args.shm_length,
        "output_mib": round(output_bytes / 2**20, 1),
        "binary_median_ms": round(binary_timing.median_ms, 2),
        "shm_median_ms": round(shared_timing.median_ms, 2),
        "shm_speedup": round(binary_timing.median_ms / shared_timing.median_ms, 3),
    }


def _unregister_quietly(triton: http_client.InferenceServerClient, name: str) -> None:
    with contextlib.suppress(Exception):  # best-effort clean-up of a benchmark
        triton.unregister_system_shared_memory(name)


def measure_client_side_work(sequences: list[str], embedding_dim: int, iterations: int = 2000) -> dict[str, float]:
    """The work our client adds around the tritonclient call (validate, plan, build, reassemble), no network.

    On a loaded machine the end-to-end ratio is dominated by server noise; this isolates the part we add.
    """
    from tritonfleet.client import core
    from tritonfleet.client.model import ModelSpec

    config = {
        "name": ENSEMBLE_MODEL,
        "max_batch_size": 64,
        "input": [{"name": SEQUENCE.name, "data_type": "TYPE_STRING", "dims": [1]}],
        "output": [{"name": EMBEDDING.name, "data_type": "TYPE_FP32", "dims": [embedding_dim]}],
    }
    spec = ModelSpec.from_config(config)
    fake_output = np.zeros((len(sequences), embedding_dim), dtype=np.float32)
    samples = []
    for _ in range(iterations):
        started = time.perf_counter()
        call = core.plan_call(core.normalize_sequences(sequences), spec.max_batch_size)
        core.build_input_arrays(spec, core.batch_texts(call, call.batches[0]))
        core.assemble_embeddings(spec, call, [fake_output])
        samples.append((time.perf_counter() - started) * 1e6)
    return {"client_side_median_us": round(statistics.median(samples), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--http-url", default="127.0.0.1:8000")
    parser.add_argument("--grpc-url", default="127.0.0.1:8001")
    parser.add_argument("--model", default=ENSEMBLE_MODEL)
    parser.add_argument("--batch", type=int, default=8, help="sequences per request")
    parser.add_argument("--length", type=int, default=100, help="residues per sequence")
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--shm", action="store_true", help="also measure system shared memory vs binary HTTP")
    parser.add_argument("--shm-batch", type=int, default=64)
    parser.add_argument("--shm-length", type=int, default=1000)
    parser.add_argument("--shm-iterations", type=int, default=10)
    args = parser.parse_args()

    sequences = random_proteins(args.batch, np.random.default_rng(0), args.length, args.length)
    report: dict[str, object] = {"batch": args.batch, "length": args.length, "iterations": args.iterations}
    report["overhead"] = [
        measure_overhead(args, "http", args.http_url, sequences),
        measure_overhead(args, "grpc", args.grpc_url, sequences),
    ]
    with EmbeddingClient(ClientConfig(url=args.http_url, model=args.model)) as probe:
        embedding_dim = probe.model_spec().embedding_dim
    report["client_side_work"] = measure_client_side_work(sequences, embedding_dim)
    if args.shm:
        report["shared_memory"] = measure_shared_memory(args)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

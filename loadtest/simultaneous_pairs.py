"""Two requests sent together, again and again: how much later the second answer comes than the first.

With every instance busy, the second request of a pair waits for one execution. Triton 24.10's dynamic batcher with
priority levels or a queue policy can idle an instance between executions instead, until the next arrival or
~500 ms (`contract/batching_plan.py` `BatchingPlan.for_unordered_model`): on a one-instance model some pairs then
answer their second request ~500 ms late. `gpu_check` measures the shipped networks (two instances per GPU) and
a one-instance copy of each with it; a pair is *late* when its gap exceeds a lone request's median latency by
`LATE_MS`. A measurement for reports, not a pass/fail test.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import tritonclient.grpc as grpc_client

from tritonfleet.client.transport import infer_inputs, requested_outputs

LATE_MS = 250.0
CALL_TIMEOUT_S = 60.0
WARM_UP_CALLS = 5


@dataclass(frozen=True)
class PairGaps:
    """`gaps_ms`: per pair, the second answer's arrival minus the first's; `alone_ms`: median of lone requests."""

    model: str
    instances: int
    alone_ms: float
    gaps_ms: tuple[float, ...]

    @property
    def late_pairs(self) -> int:
        return sum(gap > self.alone_ms + LATE_MS for gap in self.gaps_ms)

    @property
    def median_gap_ms(self) -> float:
        return statistics.median(self.gaps_ms)

    def markdown_row(self, precision: str) -> str:
        return (
            f"| {precision} | {self.model} | {self.instances} | {self.alone_ms:.1f} | {self.median_gap_ms:.1f} | "
            f"{max(self.gaps_ms):.1f} | {self.late_pairs} of {len(self.gaps_ms)} |"
        )


MARKDOWN_HEADER = [
    "| precision | model | instances | alone p50 ms | gap p50 ms | gap max ms | late pairs |",
    "|---|---|---:|---:|---:|---:|---|",
]


def simultaneous_pairs(
    url: str, model: str, arrays: Mapping[str, np.ndarray], output: str, pairs: int, instances: int
) -> PairGaps:
    """`pairs` times: the same request (`arrays`) sent to `model` from two gRPC clients released together."""
    if pairs < 1:
        raise ValueError("pairs must be >= 1")
    clients = [grpc_client.InferenceServerClient(url) for _ in range(2)]
    wanted = requested_outputs("grpc", [output])
    inputs = [infer_inputs("grpc", arrays) for _ in clients]  # one set per client: the two calls overlap

    def call(index: int) -> float:
        clients[index].infer(model, inputs[index], outputs=wanted, client_timeout=CALL_TIMEOUT_S)
        return time.perf_counter()

    try:
        alone = []
        for _ in range(WARM_UP_CALLS):
            began = time.perf_counter()
            alone.append((call(0) - began) * 1e3)
        gaps = [_one_pair(model, call) for _ in range(pairs)]
    finally:
        for client in clients:
            client.close()
    return PairGaps(model, instances, statistics.median(alone), tuple(gaps))


def _one_pair(model: str, call: Callable[[int], float]) -> float:
    """Runs `call(0)` and `call(1)` released together; the gap between their finishing times, ms."""
    barrier = threading.Barrier(2, timeout=CALL_TIMEOUT_S)
    finished = [0.0, 0.0]
    failures: list[BaseException] = []

    def send(index: int) -> None:
        try:
            barrier.wait()
            finished[index] = call(index)
        except Exception as error:  # noqa: BLE001 - re-raised below
            failures.append(error)

    threads = [threading.Thread(target=send, args=(index,), daemon=True) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(2 * CALL_TIMEOUT_S)
    if failures or any(thread.is_alive() for thread in threads):
        raise RuntimeError(f"{model}: a pair failed: {failures[0] if failures else 'timed out'}")
    return abs(finished[1] - finished[0]) * 1e3

"""Fixed work: every item in its own request, a set number in flight, until none is left; the run ends when the
last answer is in (so a slow path is timed over the same work as a fast one, tail included)."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass
class FixedWorkRun:
    elapsed_s: float
    latencies_ms: list[float]
    sequences: int
    errors: int
    first_error: str


def send_each_once(call: Callable[[list[str]], object], sequences: Sequence[str], concurrency: int) -> FixedWorkRun:
    """Every protein in its own request, `concurrency` worker threads calling `call([protein])` back to back until
    none is left; the run ends when the last answer is in. Failed requests are counted, not retried."""
    work: queue.SimpleQueue = queue.SimpleQueue()
    for sequence in sequences:
        work.put(sequence)
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        while True:
            try:
                sequence = work.get_nowait()
            except queue.Empty:
                return
            began = time.perf_counter()
            try:
                call([sequence])
            except Exception as error:  # noqa: BLE001 - counted and reported
                with lock:
                    errors.append(str(error)[:300])
                continue
            with lock:
                latencies.append((time.perf_counter() - began) * 1e3)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(max(1, concurrency))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return FixedWorkRun(time.perf_counter() - started, latencies, len(latencies), len(errors),
                        errors[0] if errors else "")  # fmt: skip

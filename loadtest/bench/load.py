"""The closed-loop load generator of groups b, c and d, and what it sends with (Triton over gRPC, the FastAPI service).

Threads, one connection each, send back-to-back; only requests that complete inside the measurement window count.
`send_all` sends a fixed set of prepared requests once each instead (the served-overhead study).
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import tritonclient.grpc as grpc_client

from tritonfleet.client.transport import infer_inputs, requested_outputs
from tritonfleet.loadtest.workload import ModelTarget, is_rejection, prepare_request

REQUEST_TIMEOUT_S = 120


class Sender(Protocol):
    """One connection that sends one request carrying the given sequences and waits for its answer."""

    def send(self, sequences: Sequence[str]) -> None: ...

    def close(self) -> None: ...


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
    """One gRPC connection; sends one request carrying the given sequences, embedding output only; token ids are
    padded as the served repository's tokenizer pads (`buckets`: () = exact lengths), so a network fed token ids
    directly does the work its ensemble does."""

    def __init__(self, url: str, target: ModelTarget, buckets: Sequence[int]) -> None:
        import tritonclient.grpc as triton_grpc

        self.client = triton_grpc.InferenceServerClient(url)
        self.target = target
        self.buckets = tuple(buckets)
        self.outputs = requested_outputs("grpc", [target.embedding_output])

    def send(self, sequences: Sequence[str]) -> None:
        inputs = infer_inputs("grpc", prepare_request(self.target, sequences, self.buckets).inputs)
        result = self.client.infer(self.target.name, inputs, outputs=self.outputs, client_timeout=REQUEST_TIMEOUT_S)
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
        response = self.session.post(self.url, json={"sequences": list(sequences)}, timeout=REQUEST_TIMEOUT_S)
        if response.status_code != 200:
            error = RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
            error.status_code = response.status_code  # type: ignore[attr-defined]
            raise error
        response.json()

    def close(self) -> None:
        self.session.close()


def closed_loop(make_sender: Callable[[], Sender], sequences: Sequence[str], concurrency: int, duration_s: float,
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
        thread.join(timeout=warmup_s + duration_s + REQUEST_TIMEOUT_S + 60)
    for sender in senders:
        with contextlib.suppress(Exception):
            sender.close()
    return LoadResult(
        latencies_ms=[v for values in latencies for v in values],
        errors=sum(c[0] for c in counters),
        rejections=sum(c[1] for c in counters),
        sequences=sum(c[2] for c in counters),
        elapsed_s=duration_s,
        first_error=first_error[0] if first_error else "",
    )


def send_all(url: str, model: str, requests: Sequence, concurrency: int, output: str,
             answers: list | None = None) -> list[float]:  # fmt: skip
    """Every prepared request once, `concurrency` at a time (one gRPC client per worker thread); latencies in ms.
    `answers` (one slot per request), when given, receives each request's `output` array in its slot."""
    work: queue.Queue = queue.Queue()
    for index, request in enumerate(requests):
        work.put((index, request))
    latencies: list[float] = []
    failures: list[BaseException] = []
    lock = threading.Lock()

    def worker() -> None:
        client = grpc_client.InferenceServerClient(url)
        wanted = requested_outputs("grpc", [output])
        try:
            while not failures:
                try:
                    index, request = work.get_nowait()
                except queue.Empty:
                    return
                inputs = infer_inputs("grpc", request.inputs)
                began = time.perf_counter()
                result = client.infer(model, inputs, outputs=wanted)
                with lock:
                    latencies.append((time.perf_counter() - began) * 1e3)
                if answers is not None:
                    answers[index] = result.as_numpy(output)
        except Exception as error:  # noqa: BLE001 - re-raised in the caller
            failures.append(error)
        finally:
            client.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"{model}: {failures[0]}") from failures[0]
    return latencies

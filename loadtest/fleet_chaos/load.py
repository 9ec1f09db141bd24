"""Closed-loop load on a fleet: `FleetLoad` workers (plain tritonclient or the client stack) and their stats."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tritonfleet.client.config import ClientConfig, RetryPolicy
from tritonfleet.client.errors import is_connection_failure
from tritonfleet.client.retry import call_with_retry
from tritonfleet.client.transport import Transport, infer_inputs, requested_outputs
from tritonfleet.loadtest.fleet_chaos.model import (
    Workload,
)


@dataclass
class WorkerStats:
    ok: int = 0
    failed: int = 0
    errors: Counter = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    versions: Counter = field(default_factory=Counter)


class FleetLoad:
    """Closed-loop load: `workers` of (protocol, mode) against `url_for(protocol)`; `plain` gRPC workers share one
    channel (one HTTP/2 connection) when `shared_grpc_channel`."""

    def __init__(
        self,
        urls: dict[str, str | list[str]],
        workers: list[tuple[str, str]],
        batch: int = 1,
        retry: RetryPolicy | None = None,
        shared_grpc_channel: bool = True,
        timeout_s: float = 60.0,
        workload: Workload | None = None,
    ) -> None:
        self.workload = workload or Workload.tiny()
        self.urls = urls
        self.workers = workers
        self.batch = batch
        self.retry = retry or RetryPolicy(max_attempts=8, initial_delay_s=0.1, max_elapsed_s=60)
        self.shared_grpc_channel = shared_grpc_channel
        self.timeout_s = timeout_s
        self.stats: dict[tuple[str, str], WorkerStats] = {key: WorkerStats() for key in set(workers)}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._shared: dict[str, Any] = {}

    def __enter__(self) -> FleetLoad:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> FleetLoad:
        for index, (protocol, mode) in enumerate(self.workers):
            thread = threading.Thread(target=self._run, args=(index, protocol, mode), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> dict[tuple[str, str], WorkerStats]:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout_s + 10)
        for client in self._shared.values():
            with contextlib.suppress(Exception):
                client.close()
        return self.stats

    def total(self) -> int:
        with self._lock:
            return sum(s.ok + s.failed for s in self.stats.values())

    def wait_requests(self, count: int, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        start = self.total()
        while self.total() - start < count and time.monotonic() < deadline:
            time.sleep(0.05)

    def _url(self, protocol: str, index: int) -> str:
        url = self.urls[protocol]
        return url[index % len(url)] if isinstance(url, list) else url

    def _run(self, index: int, protocol: str, mode: str) -> None:
        url = self._url(protocol, index)
        arrays = self.workload.requests[index % len(self.workload.requests)]
        stats = self.stats[(protocol, mode)]
        call = (
            self._project_call(protocol, url, arrays) if mode == "project" else self._plain_call(protocol, url, arrays)
        )
        while not self._stop.is_set():
            started = time.perf_counter()
            try:
                version = call()
            except Exception as error:  # noqa: BLE001 - every failure is counted, by kind
                with self._lock:
                    stats.failed += 1
                    stats.errors[_describe(error)] += 1
                continue
            with self._lock:
                stats.ok += 1
                stats.latencies_ms.append((time.perf_counter() - started) * 1000)
                stats.versions[version] += 1

    def _project_call(self, protocol: str, url: str, arrays: dict[str, np.ndarray]) -> Any:
        model, output = self.workload.model, self.workload.output
        config = ClientConfig(url=url, protocol=protocol, model=model, timeout_s=self.timeout_s, retry=self.retry)
        holder: dict[str, Transport | None] = {"transport": None}

        def attempt() -> str:
            transport = holder["transport"] or Transport(config)
            holder["transport"] = transport
            try:
                transport.infer(model, "", arrays, [output])
            except Exception as error:
                if is_connection_failure(error):
                    holder["transport"] = None  # as EmbeddingClient does: pooled sockets to a dead peer are dead
                    with contextlib.suppress(Exception):
                        transport.close()
                raise
            return ""

        return lambda: call_with_retry(attempt, self.retry, f"infer {model} at {protocol}://{url}")

    def _plain_call(self, protocol: str, url: str, arrays: dict[str, np.ndarray]) -> Any:
        model, output = self.workload.model, self.workload.output
        if protocol == "grpc":
            if self.shared_grpc_channel:
                client = self._shared.setdefault(f"grpc:{url}", grpcclient.InferenceServerClient(url))
            else:
                client = grpcclient.InferenceServerClient(url)
            inputs = infer_inputs("grpc", arrays)
            outputs = requested_outputs("grpc", [output])

            def grpc_call() -> str:
                result = client.infer(model, inputs, outputs=outputs, client_timeout=self.timeout_s)
                return result.get_response().model_version

            return grpc_call
        holder = {"client": None}
        inputs = infer_inputs("http", arrays)
        outputs = requested_outputs("http", [output])

        def http_call() -> str:
            if holder["client"] is None:  # one connection per worker, as a plain user's client holds
                holder["client"] = httpclient.InferenceServerClient(
                    url, connection_timeout=self.timeout_s, network_timeout=self.timeout_s
                )
            try:
                result = holder["client"].infer(model, inputs, outputs=outputs)
            except Exception:
                with contextlib.suppress(Exception):
                    holder["client"].close()
                holder["client"] = None
                raise
            return str(result.get_response().get("model_version", ""))

        return http_call


def _describe(error: BaseException) -> str:
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}"[:160]


def summarize(stats: dict[tuple[str, str], WorkerStats]) -> dict[str, Any]:
    out = {}
    for (protocol, mode), s in sorted(stats.items()):
        out[f"{protocol}/{mode}"] = {
            "ok": s.ok,
            "failed": s.failed,
            "errors": dict(s.errors.most_common(5)),
            "p99_ms": round(float(np.percentile(s.latencies_ms, 99)), 2) if s.latencies_ms else None,
        }
    return out

"""Fleet chaos study (`make fleet-chaos` -> reports/fleet.md): a fleet of local replicas behind HAProxy under
closed-loop load, while a replica is killed (SIGKILL) or hung (SIGSTOP), every replica is updated one at a time, the
fleet scales 2 -> 3 -> 2, and a deliberately broken canary is rolled out; plus throughput through the front against
the same replicas driven directly, per-replica shares (over one gRPC connection too) and a real Prometheus scraping
HAProxy's exporter with deploy/monitoring's rules, where the `FleetReplicaDown` alert must fire and resolve.

Load: `FleetLoad` workers, each in one of two modes:
- `project`: the project's client stack (`tritonfleet.client` Transport + its retry policy), the client a user runs;
- `plain`: a bare tritonclient without retries, which sees every failure the balancer lets through.

The quick mode (`--quick`) runs every scenario shorter, on the tiny ONNX model; the full run uses the same model
(the fleet's behaviour, not the model's speed, is measured) with longer load windows and 3 throughput rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import np_to_triton_dtype

from tritonfleet.client.config import ClientConfig, RetryPolicy
from tritonfleet.client.errors import is_connection_failure
from tritonfleet.client.retry import call_with_retry
from tritonfleet.client.transport import Transport

LOGGER = logging.getLogger(__name__)
MODEL = "tiny"
FEATURES = 4
INPUTS = ("INPUT0", "INPUT1")
OUTPUT = "OUTPUT0"


# -- test model -------------------------------------------------------------------------------------------------------


CONFIG = """name: "tiny"
platform: "onnxruntime_onnx"
max_batch_size: 16
input { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] }
input { name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] }
output { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 3 ] }
output { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 1 ] }
instance_group { kind: KIND_CPU count: 1 }
dynamic_batching { max_queue_delay_microseconds: 2000 }
"""


def build_repository(root: Path) -> Path:
    """`tiny` (two FP32 [4] inputs -> [3] and [1], ONNX, like tests/support/tiny_models.py's), version 1."""
    (root / MODEL / "1").mkdir(parents=True, exist_ok=True)
    (root / MODEL / "config.pbtxt").write_text(CONFIG)
    _write_onnx(root / MODEL / "1" / "model.onnx", broken=False)
    return root


def add_version(repository: Path, version: int, broken: bool = False, model: str = MODEL) -> Path:
    """A new immutable version directory: a copy of version 1, or (`broken`) an ONNX graph that fails every request
    at run time (a Reshape no input fits), as a bad export would."""
    target = repository / model / str(version)
    if target.exists():
        return target
    staging = repository / model / f".staging-{version}"
    shutil.rmtree(staging, ignore_errors=True)
    if broken:
        staging.mkdir(parents=True)
        _write_onnx(staging / "model.onnx", broken=True)
    else:
        shutil.copytree(repository / model / "1", staging)
    staging.rename(target)  # appears whole: a replica never sees a half-written version
    return target


def _write_onnx(path: Path, broken: bool) -> None:
    """OUTPUT0 = (INPUT0 + INPUT1) @ W + b, OUTPUT1 = sum(INPUT0 * INPUT1); `broken`: OUTPUT0 is a Reshape of the
    sum to rows of 3, which no request fits, so every request fails at run time (HTTP 500 / gRPC INTERNAL)."""
    import onnx
    from onnx import TensorProto, helper

    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", FEATURES]) for name in INPUTS]
    outputs = [
        helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", 3]),
        helper.make_tensor_value_info("OUTPUT1", TensorProto.FLOAT, ["batch", 1]),
    ]
    rng = np.random.default_rng(0)
    weights = helper.make_tensor("W", TensorProto.FLOAT, [FEATURES, 3], rng.standard_normal(FEATURES * 3).tolist())
    bias = helper.make_tensor("B", TensorProto.FLOAT, [3], rng.standard_normal(3).tolist())
    rows_of_3 = helper.make_tensor("rows_of_3", TensorProto.INT64, [2], [-1, 3])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    nodes = [helper.make_node("Add", list(INPUTS), ["sum"])]
    if broken:
        nodes.append(helper.make_node("Reshape", ["sum", "rows_of_3"], ["OUTPUT0"]))
    else:
        nodes += [helper.make_node("MatMul", ["sum", "W"], ["mm"]), helper.make_node("Add", ["mm", "B"], ["OUTPUT0"])]
    nodes += [
        helper.make_node("Mul", list(INPUTS), ["product"]),
        helper.make_node("ReduceSum", ["product", "axes"], ["OUTPUT1"], keepdims=1),
    ]
    graph = helper.make_graph(nodes, MODEL, inputs, outputs, initializer=[weights, bias, rows_of_3, axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def request_arrays(batch: int = 1) -> dict[str, np.ndarray]:
    return {name: np.ones((batch, FEATURES), dtype=np.float32) for name in INPUTS}


@dataclass(frozen=True)
class Workload:
    """What each request asks: `model`, one of `requests` (input arrays; worker i sends requests[i % n]) and
    `output`."""

    model: str
    requests: tuple[dict[str, np.ndarray], ...]
    output: str

    @classmethod
    def tiny(cls) -> Workload:
        return cls(MODEL, (request_arrays(),), OUTPUT)

    @classmethod
    def esm2(cls, count: int = 16) -> Workload:
        """One protein per request to the `esm2` ensemble, Swiss-Prot-like lengths."""
        from tritonfleet.loadtest.workload import generate_sequences

        sequences = generate_sequences(count, "swissprot")
        requests = tuple({"SEQUENCE": np.array([[seq.encode()]], dtype=object)} for seq in sequences)
        return cls("esm2", requests, "EMBEDDING")


# -- load -------------------------------------------------------------------------------------------------------------


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
            inputs = []
            for name, array in arrays.items():
                tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
                tensor.set_data_from_numpy(array)
                inputs.append(tensor)
            outputs = [grpcclient.InferRequestedOutput(output)]

            def grpc_call() -> str:
                result = client.infer(model, inputs, outputs=outputs, client_timeout=self.timeout_s)
                return result.get_response().model_version

            return grpc_call
        holder = {"client": None}
        inputs = []
        for name, array in arrays.items():
            tensor = httpclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        outputs = [httpclient.InferRequestedOutput(output)]

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


# -- Prometheus -------------------------------------------------------------------------------------------------------

PROJECT_ROOT = Path(__file__).resolve().parents[1]
RULES_DIR = PROJECT_ROOT / "deploy" / "monitoring" / "prometheus" / "rules"
BALANCER_JOB = "tritonfleet-balancer"  # the job name deploy/monitoring's fleet alerts select
ALERT = "FleetReplicaDown"


class Prometheus:
    """A real Prometheus (Debian's `prometheus`) scraping the balancer's exporter every second with the project's
    rules, evaluated every second."""

    def __init__(self, target: str, workdir: Path) -> None:
        self.binary = shutil.which("prometheus")
        self.workdir = workdir
        self.target = target
        self.url = ""
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> Prometheus:
        if self.binary is None:
            raise FileNotFoundError("prometheus not found: install Debian's prometheus (scripts/setup.sh does)")
        from tritonfleet.deploy.local.server import _free_port

        port = _free_port("127.0.0.1", exclude=set())
        self.url = f"http://127.0.0.1:{port}"
        config = self.workdir / "prometheus.yml"
        rules = sorted(str(path) for path in RULES_DIR.glob("*.yml"))
        config.write_text(
            json.dumps(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": rules,
                    "scrape_configs": [{"job_name": BALANCER_JOB, "static_configs": [{"targets": [self.target]}]}],
                }
            )
        )
        log = (self.workdir / "prometheus.log").open("ab")
        self._process = subprocess.Popen(
            [
                self.binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                tail = (self.workdir / "prometheus.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"prometheus exited:\n{tail}")
            with contextlib.suppress(OSError), urllib.request.urlopen(self.url + "/-/ready", timeout=2) as answer:
                if answer.status == 200:
                    return self
            time.sleep(0.2)
        raise RuntimeError("prometheus not ready after 60 s")

    def firing(self, alert: str = ALERT) -> list[dict[str, str]]:
        with urllib.request.urlopen(self.url + "/api/v1/alerts", timeout=5) as answer:
            alerts = json.loads(answer.read())["data"]["alerts"]
        return [a["labels"] for a in alerts if a["labels"].get("alertname") == alert and a["state"] == "firing"]

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=15)
            if self._process.poll() is None:
                self._process.kill()


# -- scenarios --------------------------------------------------------------------------------------------------------

LOAD_WORKERS = [("grpc", "plain")] * 2 + [("http", "plain")] * 2 + [("grpc", "project")] * 2 + [("http", "project")] * 2


@dataclass(frozen=True)
class StudyConfig:
    quick: bool
    settle_s: float
    round_s: float
    rounds: int = 3

    @classmethod
    def make(cls, quick: bool) -> StudyConfig:
        return cls(quick=quick, settle_s=2.0 if quick else 10.0, round_s=4.0 if quick else 20.0)


def _wait(condition: Any, timeout_s: float, poll_s: float = 0.02) -> float | None:
    """Seconds until `condition()` held, or None if it did not within `timeout_s`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if condition():
            return time.monotonic() - start
        time.sleep(poll_s)
    return None


def _front_load(fleet: Any, workers: list[tuple[str, str]] | None = None) -> FleetLoad:
    return FleetLoad({"http": fleet.http_url, "grpc": fleet.grpc_url}, workers or LOAD_WORKERS)


def _failures(load: FleetLoad) -> dict[str, int]:
    return {f"{p}/{m}": s.failed for (p, m), s in sorted(load.stats.items())}


def _requests(load: FleetLoad) -> int:
    return sum(s.ok + s.failed for s in load.stats.values())


def scenario_kill(fleet: Any, config: StudyConfig) -> dict[str, Any]:
    from tritonfleet.deploy.fleet.processes import http_ready

    victim = fleet.replicas["r1"]
    with _front_load(fleet) as load:
        load.wait_requests(200)
        pid = victim.tritonserver_pid()
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        out_s = _wait(lambda: "r1" not in fleet.in_rotation(), 30)
        ready_s = _wait(lambda: http_ready(victim.host, victim.http_port, timeout_s=0.5), 180, poll_s=0.05)
        ready_at = time.monotonic()
        back_s = _wait(lambda: "r1" in fleet.in_rotation(), 60)
        back_after_ready = None if back_s is None else round(time.monotonic() - ready_at, 2)
        time.sleep(config.settle_s)  # load keeps running on the whole fleet again (a measurement window)
    return {
        "out_of_rotation_s": None if out_s is None else round(out_s, 2),
        "replica_ready_again_s": None if ready_s is None else round(time.monotonic() - killed, 1),
        "back_after_ready_s": back_after_ready,
        "requests": _requests(load),
        "failed": _failures(load),
        "summary": summarize(load.stats),
    }


def scenario_hang(fleet: Any, config: StudyConfig, prometheus: Prometheus | None) -> dict[str, Any]:
    victim = fleet.replicas["r2"]
    alert: dict[str, Any] = {}
    with _front_load(fleet) as load:
        load.wait_requests(200)
        pid = victim.tritonserver_pid()
        os.kill(pid, signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            out_s = _wait(lambda: "r2" not in fleet.in_rotation(), 30)
            if prometheus is not None:
                fired = _wait(lambda: any(a.get("server") == "r2" for a in prometheus.firing()), 90, poll_s=0.5)
                alert["fired_after_s"] = None if fired is None else round(time.monotonic() - stopped, 1)
            else:
                time.sleep(config.settle_s)
            held_s = round(time.monotonic() - stopped, 1)
        finally:
            os.kill(pid, signal.SIGCONT)
        resumed = time.monotonic()
        back_s = _wait(lambda: "r2" in fleet.in_rotation(), 60)
        if prometheus is not None:
            resolved = _wait(lambda: not any(a.get("server") == "r2" for a in prometheus.firing()), 120, poll_s=0.5)
            alert["resolved_after_resume_s"] = None if resolved is None else round(time.monotonic() - resumed, 1)
        time.sleep(config.settle_s)
    return {
        "marked_down_s": None if out_s is None else round(out_s, 2),
        "held_stopped_s": held_s,
        "back_after_resume_s": None if back_s is None else round(back_s, 2),
        "requests": _requests(load),
        "failed": _failures(load),
        "summary": summarize(load.stats),
        "alert": alert,
    }


def scenario_rolling(fleet: Any, repository: Path, config: StudyConfig) -> dict[str, Any]:
    add_version(repository, 2)
    with _front_load(fleet) as load:
        load.wait_requests(100)
        started = time.monotonic()
        fleet.rolling_update(MODEL, "2")
        update_s = time.monotonic() - started
        load.wait_requests(100)
        started = time.monotonic()
        rolled_back_to = fleet.rollback(MODEL)
        rollback_s = time.monotonic() - started
        load.wait_requests(100)
    versions = Counter()
    for stats in load.stats.values():
        versions.update({v: n for v, n in stats.versions.items() if v})
    return {
        "update_s": round(update_s, 1),
        "rollback_s": round(rollback_s, 1),
        "rolled_back_to": rolled_back_to,
        "versions_answered": dict(versions),
        "requests": _requests(load),
        "failed": _failures(load),
    }


def scenario_scale(fleet: Any, config: StudyConfig) -> dict[str, Any]:
    with _front_load(fleet) as load:
        load.wait_requests(100)
        started = time.monotonic()
        fleet.scale_to(3)
        out_s = time.monotonic() - started
        before = _sent_by_replica(fleet)
        time.sleep(config.settle_s)  # a measurement window with 3 replicas
        third = _sent_by_replica(fleet).get("r3", 0) - before.get("r3", 0)
        started = time.monotonic()
        fleet.scale_to(2)
        in_s = time.monotonic() - started
        load.wait_requests(100)
    return {
        "scale_out_s": round(out_s, 1),
        "scale_in_s": round(in_s, 1),
        "requests_to_r3_while_in": third,
        "requests": _requests(load),
        "failed": _failures(load),
    }


def scenario_canary(fleet: Any, repository: Path, weight: float) -> dict[str, Any]:
    add_version(repository, 3, broken=True)
    with _front_load(fleet) as load:
        load.wait_requests(100)
        before = _requests(load)
        report = fleet.canary(MODEL, "3", weight_percent=weight)
        window_requests = _requests(load) - before
        failed = sum(s.failed for s in load.stats.values())
    return {
        "decision": report.decision,
        "reason": report.reason,
        "figures": report.figures,
        "seconds": report.seconds,
        "weight_percent": weight,
        "haproxy_weight": report.weight,
        "window_requests": window_requests,
        "failed": _failures(load),
        "failed_ratio": round(failed / max(1, window_requests), 5),
        "served_version_after": fleet.served_version(MODEL),
    }


def _sent_by_replica(fleet: Any, backends: tuple[str, ...] | None = None) -> dict[str, int]:
    from tritonfleet.deploy.fleet.haproxy import BACKENDS

    sent: Counter = Counter()
    for row in fleet.api.stats():
        if row.backend in (backends or BACKENDS):
            sent[row.name] += row.total
    return dict(sent)


def _measure(load_factory: Any, seconds: float) -> tuple[float, list[float], FleetLoad]:
    load = load_factory()
    with load:
        load.wait_requests(50)
        start_ok = sum(s.ok for s in load.stats.values())
        marks = {key: len(s.latencies_ms) for key, s in load.stats.items()}
        started = time.monotonic()
        time.sleep(seconds)  # the measurement window itself
        elapsed = time.monotonic() - started
        done = sum(s.ok for s in load.stats.values()) - start_ok
        latencies = [v for key, s in load.stats.items() for v in s.latencies_ms[marks[key] :]]
    return done / elapsed, latencies, load


def scenario_throughput(fleet: Any, config: StudyConfig, workload: Workload | None = None) -> dict[str, Any]:
    workers = [("grpc", "plain")] * 4 + [("http", "plain")] * 4
    replicas = list(fleet.replicas.values())
    direct_urls = {
        "grpc": [f"{r.host}:{r.grpc_port}" for r in replicas],
        "http": [f"{r.host}:{r.http_port}" for r in replicas],
    }
    rounds = []
    front_latencies: list[float] = []
    direct_latencies: list[float] = []
    shares: Counter = Counter()
    for index in range(config.rounds):
        before = _sent_by_replica(fleet)
        front, latencies, _ = _measure(
            lambda: FleetLoad(
                {"http": fleet.http_url, "grpc": fleet.grpc_url}, workers, shared_grpc_channel=False, workload=workload
            ),
            config.round_s,
        )
        after = _sent_by_replica(fleet)
        shares.update({name: after[name] - before.get(name, 0) for name in fleet.replicas})
        front_latencies += latencies
        direct, latencies, _ = _measure(
            lambda: FleetLoad(direct_urls, workers, shared_grpc_channel=False, workload=workload), config.round_s
        )
        direct_latencies += latencies
        rounds.append({"round": index + 1, "front_rps": round(front, 1), "direct_rps": round(direct, 1)})
    before = _sent_by_replica(fleet, ("triton_grpc",))
    single, latencies, _ = _measure(
        lambda: FleetLoad(
            {"grpc": fleet.grpc_url}, [("grpc", "plain")] * 6, shared_grpc_channel=True, workload=workload
        ),
        config.round_s,
    )
    after = _sent_by_replica(fleet, ("triton_grpc",))
    single_shares = {name: after[name] - before.get(name, 0) for name in fleet.replicas}
    front_total = sum(r["front_rps"] for r in rounds)
    direct_total = sum(r["direct_rps"] for r in rounds)
    return {
        "model": (workload or Workload.tiny()).model,
        "rounds": rounds,
        "front_over_direct": round(front_total / max(direct_total, 1e-9), 3),
        "share": _share(shares),
        "single_grpc_connection_rps": round(single, 1),
        "single_grpc_connection_share": _share(single_shares),
        "front_p99_ms": round(float(np.percentile(front_latencies, 99)), 2) if front_latencies else None,
        "front_p50_ms": round(float(np.percentile(front_latencies, 50)), 2) if front_latencies else None,
        "direct_p99_ms": round(float(np.percentile(direct_latencies, 99)), 2) if direct_latencies else None,
        "single_connection_p99_ms": round(float(np.percentile(latencies, 99)), 2) if latencies else None,
    }


def scenario_spread(fleet: Any, config: StudyConfig) -> dict[str, Any]:
    """Each replica's share of uniform requests (the tiny model: every request costs the same, so an even share is
    the expectation): 4 gRPC (own channels) + 4 HTTP workers, then 6 workers on one gRPC channel."""
    workers = [("grpc", "plain")] * 4 + [("http", "plain")] * 4
    before = _sent_by_replica(fleet)
    _measure(
        lambda: FleetLoad({"http": fleet.http_url, "grpc": fleet.grpc_url}, workers, shared_grpc_channel=False),
        config.round_s,
    )
    after = _sent_by_replica(fleet)
    mixed = {name: after[name] - before.get(name, 0) for name in fleet.replicas}
    before = _sent_by_replica(fleet, ("triton_grpc",))
    _measure(lambda: FleetLoad({"grpc": fleet.grpc_url}, [("grpc", "plain")] * 6), config.round_s)
    after = _sent_by_replica(fleet, ("triton_grpc",))
    single = {name: after[name] - before.get(name, 0) for name in fleet.replicas}
    return {"model": MODEL, "share": _share(mixed), "single_grpc_connection_share": _share(single)}


def _share(counts: dict[str, int]) -> dict[str, Any]:
    total = sum(counts.values()) or 1
    even = 1 / max(1, len(counts))
    return {
        name: {"requests": n, "share": round(n / total, 3), "vs_even": f"{(n / total - even) / even:+.1%}"}
        for name, n in sorted(counts.items())
    }


# -- report -----------------------------------------------------------------------------------------------------------


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    haproxy = subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout.splitlines()[:1]
    prometheus = shutil.which("prometheus")
    prom_version = (
        subprocess.run([prometheus, "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
        if prometheus
        else ["not installed"]
    )
    return (
        f"{cpu}, {len(os.sched_getaffinity(0))} usable core(s), {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}; {' '.join(haproxy)}; {' '.join(prom_version)}"
    )


def _shares_text(shares: dict[str, dict[str, Any]]) -> str:
    return ", ".join(f"{name} {figures['vs_even']}" for name, figures in shares.items())


def _mark(ok: bool) -> str:
    return "met" if ok else "**not met**"


def _fails(result: dict[str, Any], mode: str) -> int:
    return sum(n for key, n in result["failed"].items() if key.endswith("/" + mode))


def render_report(results: dict[str, Any], command: str, quick: bool) -> str:
    kill, hang, rolling = results["kill"], results["hang"], results["rolling"]
    scale, canary, tput = results["scale"], results["canary"], results["throughput"]
    lines = [
        "# Fleet chaos study" + (" (quick mode: shorter windows, not the committed figures)" if quick else ""),
        "",
        f"- Machine: {results['machine']}",
        f"- Command: `{command}`",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; wall time {results['wall_s']} s",
        "- Fleet: 2 replicas of the local launcher (self-healing on), one core each, behind HAProxy 2.6 "
        "(deploy/fleet/haproxy.py); scale-out adds a third on a shared core (`--oversubscribe`: this machine has 2).",
        "- Model: `tiny` (ONNX, 2 x FP32[4] -> FP32[3], FP32[1]) through the project's Python-based onnxruntime "
        "backend: the fleet's behaviour is measured, not ESM-2's speed.",
        "- Load: closed loop, 8 workers: 2 plain gRPC (no retries, one shared channel), 2 plain HTTP (no retries, "
        "one keep-alive connection each), 2 gRPC + 2 HTTP through the project's client stack "
        "(`tritonfleet.client` Transport + its retry policy).",
        "",
        "## Targets",
        "",
        "| target | measured | |",
        "|---|---|---|",
    ]
    plain_kill = _fails(kill, "plain")
    lines += [
        f"| kill -9: 0 failed as a plain tritonclient sees them (HTTP and gRPC) | {kill['failed']} "
        f"of {kill['requests']} | {_mark(plain_kill == 0)} |",
        f"| kill -9: 0 failed through the project's client | {_fails(kill, 'project')} | "
        f"{_mark(_fails(kill, 'project') == 0)} |",
        f"| kill -9: out of rotation <= 2 s | {kill['out_of_rotation_s']} s | "
        f"{_mark(kill['out_of_rotation_s'] is not None and kill['out_of_rotation_s'] <= 2)} |",
        f"| kill -9: back <= 10 s after the restarted replica is ready | {kill['back_after_ready_s']} s "
        f"(restarted and ready {kill['replica_ready_again_s']} s after the kill) | "
        f"{_mark(kill['back_after_ready_s'] is not None and kill['back_after_ready_s'] <= 10)} |",
        f"| SIGSTOP: marked down <= 3 s | {hang['marked_down_s']} s | "
        f"{_mark(hang['marked_down_s'] is not None and hang['marked_down_s'] <= 3)} |",
        f"| SIGSTOP: 0 failed through the project's client | {_fails(hang, 'project')} (plain clients: "
        f"{_fails(hang, 'plain')}) of {hang['requests']} | {_mark(_fails(hang, 'project') == 0)} |",
        f"| rolling update of every replica (and rollback) under load: 0 failed | {rolling['failed']} of "
        f"{rolling['requests']} | {_mark(sum(rolling['failed'].values()) == 0)} |",
        f"| scale 2 -> 3 -> 2 under load: 0 failed | {scale['failed']} of {scale['requests']} | "
        f"{_mark(sum(scale['failed'].values()) == 0)} |",
        f"| broken canary rolled back automatically | {canary['decision']}: {canary['reason']} | "
        f"{_mark(canary['decision'] == 'rollback')} |",
        f"| broken canary: failed <= 0.5 % of the traffic in its window | {canary['failed_ratio']:.2%} "
        f"({sum(canary['failed'].values())} of {canary['window_requests']}) | "
        f"{_mark(canary['failed_ratio'] <= 0.005)} |",
        f"| throughput through the front >= 0.95x direct round-robin ({len(tput['rounds'])} interleaved rounds, "
        f"model `{tput['model']}`) | "
        f"{tput['front_over_direct']}x | {_mark(tput['front_over_direct'] >= 0.95)} |",
    ]
    spread = results["spread"]
    even = all(abs(float(v["vs_even"].rstrip("%"))) <= 10 for v in spread["share"].values())
    single_even = all(
        abs(float(v["vs_even"].rstrip("%"))) <= 10 for v in spread["single_grpc_connection_share"].values()
    )
    lines += [
        f"| each replica's share within +-10 % of even (uniform requests, model `{spread['model']}`) | "
        f"{_shares_text(spread['share'])} | {_mark(even)} |",
        f"| ... over a single gRPC connection | "
        f"{_shares_text(spread['single_grpc_connection_share'])} | "
        f"{_mark(single_even)} |",
        f"| fleet-wide p99 (load generator, through the front) | {tput['front_p99_ms']} ms "
        f"(p50 {tput['front_p50_ms']} ms; direct p99 {tput['direct_p99_ms']} ms) | reported |",
    ]
    alert = hang.get("alert", {})
    if alert:
        fired, resolved = alert.get("fired_after_s"), alert.get("resolved_after_resume_s")
        lines.append(
            f"| Prometheus: `{ALERT}` fires and resolves | fired {fired} s after SIGSTOP, resolved {resolved} s "
            f"after SIGCONT | {_mark(fired is not None and resolved is not None)} |"
        )
    else:
        lines.append(
            f"| Prometheus: `{ALERT}` fires and resolves | Prometheus not run: {results.get('prometheus')} | "
            "**not met** |"
        )
    lines += [
        "",
        "## Details",
        "",
        f"Throughput rounds (model `{tput['model']}`, one request = "
        + ("one protein to the `esm2` ensemble" if tput["model"] == "esm2" else "one row to the tiny model")
        + "; requests/s, 4 gRPC + 4 HTTP plain workers):",
        "",
        "| round | through the front | direct round-robin |",
        "|---|---|---|",
        *[f"| {r['round']} | {r['front_rps']} | {r['direct_rps']} |" for r in tput["rounds"]],
        "",
        f"Single gRPC connection (6 workers on one channel): {tput['single_grpc_connection_rps']} requests/s, "
        f"p99 {tput['single_connection_p99_ms']} ms. Requests per replica in these rounds: "
        f"{_shares_text(tput['share'])} (one channel: {_shares_text(tput['single_grpc_connection_share'])}); with "
        "requests of unequal cost, least-outstanding-requests sends more of them to the replica that finishes "
        "sooner, so request counts need not be even there.",
        "",
        "Canary figures at the decision (error counts: the larger of HAProxy's 5xx and Triton's failure counter per "
        "replica; p99 from Triton's summaries):",
        "",
        "```json",
        json.dumps(canary, indent=2, default=str),
        "```",
        "",
        "Every scenario's raw figures:",
        "",
        "```json",
        json.dumps({k: v for k, v in results.items() if k not in ("machine",)}, indent=2, default=str),
        "```",
        "",
        "## Notes",
        "",
        "- What HAProxy 2.6 cannot replay: a request that died with a replica is replayed only while HAProxy still "
        "holds the whole request (`option http-buffer-request`, `tune.bufsize` above the largest request) and no "
        "byte of the answer has reached the client. A gRPC answer already under way when the replica died ends as "
        "`UNKNOWN: Stream removed (Data frame with END_STREAM flag received)` (about one per kill under this load, "
        "when it happens to be mid-answer); a stream HAProxy reset before any answer ends as `UNAVAILABLE: Stream "
        "removed (RST_STREAM error code 7)` (REFUSED_STREAM). Both are the client's to retry (inference is "
        'idempotent): the project\'s client (client/errors.py) retries both, and "Socket closed" / "Connection '
        'reset" alike. This is the one retry budget HAProxy and the client share: HAProxy replays what never reached '
        "a replica's answer (at most once, on another replica), the client retries the rest within its deadline.",
        f"- Machine load: load average {results.get('load_before')} at the start, {results.get('load_after')} at the "
        "end (this 2-core machine is shared: the balancer, 2-3 replicas and the load generator compete for the same "
        "cores, so every extra hop waits for a core; the throughput ratio is only meaningful on an otherwise idle "
        "machine).",
        "- The passive observation does not mark a replica down at its first connection error (`on-error "
        "fastinter`, not `mark-down`): marked down at once, `on-marked-down shutdown-sessions` cut the other "
        "requests that died with the replica before HAProxy replayed them (1 HTTP and 2 gRPC plain-client failures "
        "per kill in a trial); with fast re-checks the replica is out in about a second and nothing is cut.",
        "- A hung replica's requests are ended when the checks mark it down (`shutdown-sessions`); the project's "
        "client retries them (a plain client may see them fail).",
        "- Fleet-wide p99 comes from the load generator: per-replica Triton summaries cannot be merged.",
    ]
    return "\n".join(lines) + "\n"


def _export_esm2(output: Path, results: dict[str, Any]) -> Path | None:
    """ESM-2 8M with random weights (ONNX, fp32) for the throughput rounds; None (and why, in `results`) on failure."""
    try:
        from tritonfleet.export.esm2 import export_esm2

        if not (output / "esm2").is_dir():
            export_esm2(output, random_init="8M", gpus="none", precision="fp32", formats=("onnx",))
        return output
    except Exception as error:  # noqa: BLE001 - the study goes on with the tiny model and says so
        results["esm2_export_error"] = f"{type(error).__name__}: {error}"
        LOGGER.warning("ESM-2 export failed, throughput on the tiny model: %s", error)
        return None


def run_study(args: argparse.Namespace) -> dict[str, Any]:
    from tritonfleet.deploy.fleet import CanaryPolicy, Fleet, FleetOptions

    config = StudyConfig.make(args.quick)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="tritonfleet-fleet-chaos-"))
    repository = build_repository(workdir / "repository")
    options = FleetOptions(
        repository,
        replicas=2,
        http_port=0,
        grpc_port=0,
        metrics_port=0,
        control_port=None,
        oversubscribe=True,
        max_replicas=4,
        startup_timeout_s=180,
        exit_timeout_s=5,
        canary=CanaryPolicy(),
        workdir=workdir / "fleet",
    )
    started = time.monotonic()
    results: dict[str, Any] = {"machine": machine(), "load_before": [round(v, 1) for v in os.getloadavg()]}
    throughput_repository = args.throughput_repository
    if throughput_repository is None and not args.quick:
        throughput_repository = _export_esm2(workdir / "esm2-repository", results)
    if throughput_repository is not None:
        LOGGER.info("throughput rounds on ESM-2 (%s)", throughput_repository)
        esm2_options = dataclasses.replace(options, model_repository=throughput_repository, workdir=workdir / "esm2")
        with Fleet(esm2_options) as fleet:
            results["throughput"] = scenario_throughput(fleet, config, Workload.esm2())
    with Fleet(options) as fleet:
        prometheus = None
        try:
            prometheus = Prometheus(fleet.metrics_url.split("//", 1)[1].split("/", 1)[0], workdir).start()
        except (FileNotFoundError, RuntimeError) as error:
            results["prometheus"] = str(error)
            LOGGER.warning("no Prometheus: %s", error)
        try:
            if "throughput" not in results:
                LOGGER.info("throughput rounds on the tiny model")
                results["throughput"] = scenario_throughput(fleet, config)
            LOGGER.info("per-replica shares")
            results["spread"] = scenario_spread(fleet, config)
            LOGGER.info("kill -9")
            results["kill"] = scenario_kill(fleet, config)
            LOGGER.info("SIGSTOP")
            results["hang"] = scenario_hang(fleet, config, prometheus)
            LOGGER.info("rolling update")
            results["rolling"] = scenario_rolling(fleet, repository, config)
            LOGGER.info("scale 2 -> 3 -> 2")
            results["scale"] = scenario_scale(fleet, config)
            LOGGER.info("broken canary")
            results["canary"] = scenario_canary(fleet, repository, args.canary_weight)
            results["events"] = fleet.events
        finally:
            if prometheus is not None:
                prometheus.stop()
    results["wall_s"] = round(time.monotonic() - started)
    results["load_after"] = [round(v, 1) for v in os.getloadavg()]
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tritonfleet.loadtest.fleet_chaos",
        description="Fleet chaos study: kill/hang a replica, rolling update, scale, broken canary, throughput "
        "through the front vs direct, Prometheus alert; writes a markdown report.",
    )
    parser.add_argument("--quick", action="store_true", help="short windows (about 3 min): a smoke run")
    parser.add_argument("--output", type=Path, default=None, help="default: reports/fleet.md (quick: fleet_quick.md)")
    parser.add_argument("--canary-weight", type=float, default=10.0, help="broken canary's traffic share, percent")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument(
        "--throughput-repository",
        type=Path,
        default=None,
        help="an exported ESM-2 repository for the throughput rounds (default: export ESM-2 8M; --quick: tiny model)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    output = args.output or PROJECT_ROOT / "reports" / ("fleet_quick.md" if args.quick else "fleet.md")
    command = "python -m tritonfleet.loadtest.fleet_chaos " + " ".join(argv if argv is not None else sys.argv[1:])
    results = run_study(args)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render_report(results, command.strip(), args.quick))
    print(f"report: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

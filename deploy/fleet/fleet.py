"""A fleet of local tritonservers behind HAProxy, and its operations: drain, rolling update, rollback, canary with
automatic promote/rollback, scale out/in, restart of a dead replica, passive ejection on 500/502/504.

`Fleet(FleetOptions(...)).start()` runs N replicas (the local launcher each, self-healing on) and HAProxy in front;
every operation here is also reachable through the fleet's loopback control API (`deploy.fleet.control`) and
`python -m deploy.fleet ctl ...`.

Model versions are immutable directories: an update serves another version directory (a config override with a
`specific` version policy, loaded through each replica's repository API); nothing is edited in place.

Each CPU replica has its own CPU plan for its core set (`deploy.fleet.replica_plan`): it serves a shadow of the
repository under the run directory (links to the version directories, configs with its instance and thread counts);
GPU replicas serve the repository as it is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tritonclient.http as httpclient

from tritonfleet.deploy.fleet.haproxy import (
    DEFAULT_MAX_REQUEST_BYTES,
    HTTP_BACKEND,
    BalancerSpec,
    ReplicaAddress,
    haproxy_binary,
)
from tritonfleet.deploy.fleet.processes import BalancerProcess, FleetStartError, ReplicaProcess
from tritonfleet.deploy.fleet.replica_plan import ReplicaPlan, build_replica_repository, sync_replica_repository
from tritonfleet.deploy.fleet.runtime_api import RuntimeApi, ServerStats
from tritonfleet.deploy.local.server import LOOPBACK, ServingAddresses, _free_port, _port_is_free

LOGGER = logging.getLogger(__name__)
FULL_WEIGHT = 100
SUMMARY_FLAG = "--metrics-config=summary_latencies=true"
HUNG_AFTER_S = 0.5


class FleetError(RuntimeError):
    """An operation the fleet refuses or could not complete (one line, says why)."""


# -- planning ---------------------------------------------------------------------------------------------------------


def visible_gpus() -> tuple[int, ...]:
    """GPU ids this process may use: CUDA_VISIBLE_DEVICES when set, else what `nvidia-smi -L` lists."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return tuple(int(part) for part in env.split(",") if part.strip().isdigit())
    if shutil.which("nvidia-smi") is None:
        return ()
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return tuple(range(sum(1 for line in listing.splitlines() if line.startswith("GPU "))))


def usable_cores() -> tuple[int, ...]:
    return tuple(sorted(os.sched_getaffinity(0)))


def auto_replicas(cores: int, gpus: int) -> int:
    """One replica per GPU; on CPU one per 2 cores (each replica keeps room for its engines and stubs), at least 1."""
    return gpus if gpus else max(1, min(cores // 2, 8))


def plan_cores(replicas: int, cores: tuple[int, ...], oversubscribe: bool = False) -> list[tuple[int, ...]]:
    """Disjoint core sets, one per replica, covering `cores`; more replicas than cores only with `oversubscribe`."""
    if replicas < 1:
        raise FleetError(f"--replicas must be >= 1, got {replicas}")
    if replicas > len(cores):
        if not oversubscribe:
            raise FleetError(
                f"{replicas} replicas on {len(cores)} core(s) would oversubscribe them: use at most {len(cores)} "
                "replicas, or pass --oversubscribe"
            )
        return [(cores[i % len(cores)],) for i in range(replicas)]
    share, extra = divmod(len(cores), replicas)
    plans, start = [], 0
    for i in range(replicas):
        size = share + (1 if i < extra else 0)
        plans.append(tuple(cores[start : start + size]))
        start += size
    return plans


# -- options ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CanaryPolicy:
    """When a canary is promoted or rolled back (issue 17): after `min_requests` canary requests or `max_window_s`,
    roll back when its error ratio > max(`max_error_ratio`, `error_ratio_factor` x the rest's) or its p99 >
    `p99_factor` x the rest's (median of the other replicas' p99, from Triton's summaries); promote otherwise. A
    canary that has already failed `abort_failures` requests with an error ratio above the limit is rolled back at
    once (a broken version need not burn the whole window)."""

    min_requests: int = 200
    max_window_s: float = 60.0
    max_error_ratio: float = 0.01
    error_ratio_factor: float = 2.0
    p99_factor: float = 1.5
    abort_failures: int = 3
    poll_s: float = 0.1


@dataclass(frozen=True)
class FleetOptions:
    """How to run a fleet (`python -m deploy.fleet --help` names the same knobs).

    Attributes:
        replicas: replica count, or "auto" (one per GPU; on CPU one per 2 cores).
        max_replicas: balancer slots (the most replicas scale-out can reach without a reload); None: max(8, 2 x N).
        gpus: GPU ids, one replica each; None: detect (CUDA_VISIBLE_DEVICES / nvidia-smi); (): CPU only.
        oversubscribe: allow more replicas than cores (they then share cores; tests and the chaos study on 2 cores).
        launcher_args: extra `deploy.local` arguments for every replica (tritonserver flags, cache flags, ...).
        control_port: the loopback control API (None: none).
        eject_min_errors / eject_error_ratio: passive ejection of a replica answering 500/502/504 (HTTP).
    """

    model_repository: Path
    replicas: int | str = "auto"
    host: str = LOOPBACK
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    control_port: int | None = 8003
    max_replicas: int | None = None
    gpus: tuple[int, ...] | None = None
    oversubscribe: bool = False
    launcher_args: tuple[str, ...] = ()
    startup_timeout_s: float = 300.0
    exit_timeout_s: int = 10
    drain_timeout_s: float = 60.0
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    check_interval_ms: int = 1000
    restart_dead_replicas: bool = True
    eject_min_errors: int = 5
    eject_error_ratio: float = 0.5
    canary: CanaryPolicy = field(default_factory=CanaryPolicy)
    workdir: Path | None = None


@dataclass
class CanaryReport:
    model: str
    version: str
    previous: str
    replica: str
    weight: int
    decision: str = "running"
    reason: str = ""
    figures: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


# -- the fleet --------------------------------------------------------------------------------------------------------


class Fleet(ServingAddresses):
    """N replicas behind HAProxy; a context manager. See the module docstring."""

    def __init__(self, options: FleetOptions) -> None:
        repository = Path(options.model_repository)
        if not repository.is_dir():
            raise FleetError(f"model repository {repository} does not exist or is not a directory")
        options = _with_free_ports(options)
        self.options = options
        self.gpus = visible_gpus() if options.gpus is None else options.gpus
        self.cores = usable_cores()
        if options.replicas == "auto":
            self.initial_replicas = auto_replicas(len(self.cores), len(self.gpus))
        else:
            self.initial_replicas = int(options.replicas)
        if self.gpus and self.initial_replicas > len(self.gpus):
            raise FleetError(f"{self.initial_replicas} replicas but {len(self.gpus)} GPU(s): one replica per GPU")
        self.slots = options.max_replicas or max(8, 2 * self.initial_replicas)
        if self.slots < self.initial_replicas:
            raise FleetError(f"--max-replicas {self.slots} is below --replicas {self.initial_replicas}")
        self.workdir = Path(options.workdir or tempfile.mkdtemp(prefix="tritonfleet-fleet-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.replicas: dict[str, ReplicaProcess] = {}  # active slots only
        self.replica_plans: dict[str, ReplicaPlan] = {}  # CPU replicas' own plans (GPU replicas: none)
        self.balancer: BalancerProcess | None = None
        self.events: list[dict[str, Any]] = []
        self.canaries: list[CanaryReport] = []
        self.versions: dict[str, list[str]] = {}  # model -> versions served fleet-wide, oldest first
        self._lock = threading.RLock()
        self._ops_lock = threading.Lock()
        self._stop = threading.Event()
        self._stopping: set[str] = set()
        self._down_busy: dict[tuple[str, str], float] = {}
        # Processes die with the thread that started them (PR_SET_PDEATHSIG): start them all from one long-lived one.
        self._spawner = ThreadPoolExecutor(1, thread_name_prefix="fleet-spawner")
        self._monitor: threading.Thread | None = None
        self.control = None

    # -- addresses (http_url, grpc_url, metrics_url: ServingAddresses) ------------------------------------------------
    @property
    def api(self) -> RuntimeApi:
        assert self.balancer is not None
        return self.balancer.api

    def slot_names(self) -> list[str]:
        return [f"r{i}" for i in range(1, self.slots + 1)]

    # -- lifecycle ---------------------------------------------------------------------------------------------------
    def start(self) -> Fleet:
        haproxy_binary()  # a one-line error naming haproxy before any replica starts
        core_plans = plan_cores(self.initial_replicas, self.cores, self.options.oversubscribe)
        for what in ("http_port", "grpc_port", "metrics_port", "control_port"):
            port = getattr(self.options, what)
            if port is not None and not _port_is_free(self.options.host, port):
                flag = "--" + what.replace("_", "-")
                raise FleetError(f"{flag} {port} is already in use on {self.options.host} (another fleet or server?)")
        names = self.slot_names()
        try:
            for i in range(self.initial_replicas):
                gpu = self.gpus[i] if self.gpus else None
                self.replicas[names[i]] = self._new_replica(names[i], core_plans[i], gpu)
            self._spawn_all(list(self.replicas.values()))
            for replica in self.replicas.values():
                replica.wait_ready()
            self.balancer = BalancerProcess(self._spec(), self.workdir)
            self._run_in_spawner(self.balancer.start)
            self._wait_in_rotation(list(self.replicas), timeout_s=30)
        except BaseException:
            self.stop()
            raise
        self._log("started", replicas=list(self.replicas), slots=self.slots, cores=self.cores, gpus=self.gpus)
        self._monitor = threading.Thread(target=self._monitor_loop, name="fleet-monitor", daemon=True)
        self._monitor.start()
        if self.options.control_port is not None:
            from tritonfleet.deploy.fleet.control import ControlServer

            self.control = ControlServer(self, LOOPBACK, self.options.control_port).start()
        return self

    def stop(self) -> None:
        """Drain: the front stops taking connections and lets open requests finish, then every replica stops."""
        self._stop.set()
        if self.control is not None:
            self.control.stop()
        if self._monitor is not None:
            self._monitor.join(timeout=5)
        if self.balancer is not None:
            # Soft stop: the listeners close, open requests (and their connections' next ones) are still served.
            self.balancer.stop(grace_s=self.options.drain_timeout_s)
        with self._lock:
            replicas = list(self.replicas.values())
        threads = [threading.Thread(target=replica.stop) for replica in replicas]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self._spawner.shutdown(wait=False)

    def __enter__(self) -> Fleet:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- status ------------------------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        stats: dict[str, dict[str, ServerStats]] = {}
        with contextlib.suppress(Exception):
            for row in self.api.stats():
                stats.setdefault(row.name, {})[row.backend] = row
        replicas = {}
        with self._lock:
            for name, replica in self.replicas.items():
                http = stats.get(name, {}).get(HTTP_BACKEND)
                replicas[name] = {
                    "http": f"{replica.host}:{replica.http_port}",
                    "grpc": f"{replica.host}:{replica.grpc_port}",
                    "metrics": f"{replica.host}:{replica.metrics_port}",
                    "launcher_pid": replica.launcher_pid,
                    "tritonserver_pid": replica.tritonserver_pid(),
                    "cores": list(replica.cores),
                    "gpu": replica.gpu,
                    "plan": self._plan_status(name, replica),
                    "balancer_status": http.status if http else None,
                    "weight": http.weight if http else None,
                    "in_flight": sum(row.current for row in stats.get(name, {}).values()),
                    "log": str(replica.log_path),
                }
        return {
            "http": self.http_url,
            "grpc": self.grpc_url,
            "metrics": self.metrics_url,
            "replicas": replicas,
            "versions": self.versions,
            "canaries": [canary.__dict__ for canary in self.canaries],
        }

    def _plan_status(self, name: str, replica: ReplicaProcess) -> dict[str, Any]:
        plan = self.replica_plans.get(name)
        if plan is not None:
            return plan.as_dict()
        what = f"GPU {replica.gpu}" if replica.gpu is not None else "no core set"
        return {"cores": len(replica.cores), "plan": f"{what}: the repository's configs unchanged", "models": {}}

    def in_rotation(self) -> list[str]:
        """Replicas the balancer sends new requests to, on HTTP and gRPC alike (each backend checks on its own)."""
        rows = self.api.stats()
        out = {row.name for row in rows if not row.in_rotation}
        return [row.name for row in rows if row.backend == HTTP_BACKEND and row.name not in out]

    # -- drain -------------------------------------------------------------------------------------------------------
    def drain(self, name: str, wait: bool = True) -> None:
        """No new requests to `name`; with `wait`, returns once its in-flight requests have finished."""
        self._replica(name)
        self.api.set_state(name, "drain")
        self._log("drain", replica=name)
        if wait:
            self._wait_idle(name)

    def undrain(self, name: str) -> None:
        self._replica(name)
        self.api.set_state(name, "ready")
        self._log("undrain", replica=name)

    def _wait_idle(self, name: str) -> None:
        deadline = time.monotonic() + self.options.drain_timeout_s
        while time.monotonic() < deadline:
            if sum(row.current for row in self.api.server_stats(name).values()) == 0:
                return
            time.sleep(0.05)
        raise FleetError(f"replica {name} still had requests in flight after {self.options.drain_timeout_s}s")

    # -- versions ----------------------------------------------------------------------------------------------------
    def serve_version(self, name: str, model: str, version: str) -> None:
        """Load `model` version `version` on one replica (its only served version) and wait until it is ready."""
        self._check_version_dir(model, version)
        replica = self._replica(name)
        if name in self.replica_plans:  # its shadow repository links the new version directory
            sync_replica_repository(Path(self.options.model_repository), Path(replica.model_repository))
        client = httpclient.InferenceServerClient(
            f"{replica.host}:{replica.http_port}", connection_timeout=60, network_timeout=300
        )
        try:
            config = client.get_model_config(model)
            config["version_policy"] = {"specific": {"versions": [int(version)]}}
            client.load_model(model, config=json.dumps(config))
            deadline = time.monotonic() + self.options.startup_timeout_s
            while not client.is_model_ready(model, version):
                if time.monotonic() > deadline:
                    raise FleetError(f"{model} version {version} not ready on {name}")
                time.sleep(0.1)
        finally:
            client.close()

    def served_version(self, model: str) -> str | None:
        history = self.versions.get(model)
        if history:
            return history[-1]
        return self._initial_version(model)

    def rolling_update(self, model: str, version: str, replicas: list[str] | None = None) -> None:
        """One replica at a time: drain, serve `version`, ready, undrain (back in rotation before the next)."""
        self._check_version_dir(model, version)
        with self._ops_lock:
            self._rolling_update(model, version, replicas)

    def _rolling_update(self, model: str, version: str, replicas: list[str] | None = None) -> None:
        previous = self.served_version(model)
        for name in replicas if replicas is not None else list(self.replicas):
            self.drain(name)
            try:
                self.serve_version(name, model, version)
            finally:
                self.undrain(name)
            self._wait_in_rotation([name], timeout_s=30)
            self._log("updated", replica=name, model=model, version=version)
        history = self.versions.setdefault(model, [previous] if previous else [])
        if replicas is None and (not history or history[-1] != version):
            history.append(version)

    def rollback(self, model: str) -> str:
        """Serve the version that was served before the last update, fleet-wide (rolling). Returns it."""
        history = self.versions.get(model, [])
        if len(history) < 2:
            raise FleetError(f"no earlier version of {model} to roll back to")
        previous = history[-2]
        with self._ops_lock:
            self._rolling_update(model, previous)
            history = self.versions[model]
            del history[-2:]
            history.append(previous)
        self._log("rolled back", model=model, version=previous)
        return previous

    # -- canary ------------------------------------------------------------------------------------------------------
    def canary(
        self, model: str, version: str, weight_percent: float, policy: CanaryPolicy | None = None
    ) -> CanaryReport:
        """Put `version` on one replica with `weight_percent` of the traffic, compare, then promote or roll back."""
        policy = policy or self.options.canary
        self._check_version_dir(model, version)
        if not 0 < weight_percent < 100:
            raise FleetError(f"--canary-weight must be in (0, 100) percent, got {weight_percent}")
        with self._ops_lock:
            names = list(self.replicas)
            if len(names) < 2:
                raise FleetError("a canary needs at least 2 replicas (one canary, one to compare with)")
            previous = self.served_version(model) or ""
            canary_name, rest = names[-1], names[:-1]
            weight = max(1, min(256, round(weight_percent * FULL_WEIGHT * len(rest) / (100 - weight_percent))))
            report = CanaryReport(model, version, previous, canary_name, weight)
            self.canaries.append(report)
            started = time.monotonic()
            self.drain(canary_name)
            try:
                self.serve_version(canary_name, model, version)
                self.api.set_weight(canary_name, weight)
                # Judged from its first request on: checks passing while still drained, counters read before undrain.
                self._wait_checked_up(canary_name, timeout_s=30)
                baseline = {name: self._counts(name, model) for name in names}
            finally:
                self.undrain(canary_name)
            window_start = time.monotonic()
            self._log("canary started", replica=canary_name, model=model, version=version, weight=weight)
            while True:
                time.sleep(policy.poll_s)
                decision, reason, figures = self._judge(model, canary_name, rest, baseline, window_start, policy)
                report.figures = figures
                if decision:
                    break
            report.decision, report.reason = decision, reason
            self._log(f"canary {decision}", replica=canary_name, model=model, version=version, reason=reason, **figures)
            if decision == "rollback":
                self.drain(canary_name)
                try:
                    if previous:
                        self.serve_version(canary_name, model, previous)
                    self.api.set_weight(canary_name, FULL_WEIGHT)
                finally:
                    self.undrain(canary_name)
            else:
                self.api.set_weight(canary_name, FULL_WEIGHT)
                self._rolling_update(model, version, rest)
                history = self.versions.setdefault(model, [previous] if previous else [])
                history.append(version)
            report.seconds = round(time.monotonic() - started, 2)
            return report

    def _judge(
        self,
        model: str,
        canary: str,
        rest: list[str],
        baseline: dict[str, tuple[int, int, int, int, float | None]],
        window_start: float,
        policy: CanaryPolicy,
    ) -> tuple[str, str, dict[str, Any]]:
        def delta(name: str) -> tuple[int, int, float | None]:
            # Errors as the balancer saw them (HTTP 5xx) or as Triton counted them (gRPC errors travel inside a 200,
            # and the Python-based backends' failures are counted as successes by Triton): the larger of the two.
            now, base = self._counts(name, model), baseline.get(name, (0, 0, 0, 0, None))
            triton_total = (now[0] - base[0]) + (now[1] - base[1])
            total = max(triton_total, now[2] - base[2])
            failed = min(total, max(now[1] - base[1], now[3] - base[3]))
            return total - failed, failed, now[4]

        canary_ok, canary_failed, canary_p99 = delta(canary)
        rest_figures = [delta(name) for name in rest]
        rest_ok = sum(f[0] for f in rest_figures)
        rest_failed = sum(f[1] for f in rest_figures)
        rest_p99s = [f[2] for f in rest_figures if f[2] is not None]
        rest_p99 = statistics.median(rest_p99s) if rest_p99s else None
        canary_total, rest_total = canary_ok + canary_failed, rest_ok + rest_failed
        canary_ratio = canary_failed / canary_total if canary_total else 0.0
        rest_ratio = rest_failed / rest_total if rest_total else 0.0
        ratio_limit = max(policy.max_error_ratio, policy.error_ratio_factor * rest_ratio)
        elapsed = time.monotonic() - window_start
        figures = {
            "canary_requests": canary_total,
            "canary_failed": canary_failed,
            "canary_error_ratio": round(canary_ratio, 4),
            "rest_requests": rest_total,
            "rest_failed": rest_failed,
            "rest_error_ratio": round(rest_ratio, 4),
            "error_ratio_limit": round(ratio_limit, 4),
            "canary_p99_ms": None if canary_p99 is None else round(canary_p99 / 1000, 2),
            "rest_p99_ms": None if rest_p99 is None else round(rest_p99 / 1000, 2),
            "window_s": round(elapsed, 1),
        }
        if canary_ratio > ratio_limit and canary_failed >= policy.abort_failures:
            return "rollback", f"error ratio {canary_ratio:.2%} > {ratio_limit:.2%} ({canary_failed} failed)", figures
        if not self._canary_in_service(canary):
            return "rollback", "the canary replica left the balancer's rotation", figures
        if canary_total < policy.min_requests and elapsed < policy.max_window_s:
            return "", "", figures
        if canary_ratio > ratio_limit:
            return "rollback", f"error ratio {canary_ratio:.2%} > {ratio_limit:.2%}", figures
        if canary_p99 is not None and rest_p99 is not None and canary_p99 > policy.p99_factor * rest_p99:
            reason = f"p99 {canary_p99 / 1000:.1f} ms > {policy.p99_factor} x {rest_p99 / 1000:.1f} ms"
            return "rollback", reason, figures
        return (
            "promote",
            f"error ratio {canary_ratio:.2%} <= {ratio_limit:.2%}, p99 within {policy.p99_factor}x",
            figures,
        )

    def _canary_in_service(self, name: str) -> bool:
        rows = self.api.server_stats(name)
        row = rows.get(HTTP_BACKEND)
        return row is None or row.up

    def _counts(self, name: str, model: str) -> tuple[int, int, int, int, float | None]:
        """(Triton successes, Triton failures of `model`, balancer requests, balancer 5xx answers, p99 us or None)
        of one replica, from its Triton metrics and HAProxy's per-server counters."""
        replica = self._replica(name)
        rows = self.api.server_stats(name).values()
        sent, errors = sum(row.total for row in rows), sum(row.http_5xx for row in rows)
        try:
            with urllib.request.urlopen(f"http://{replica.host}:{replica.metrics_port}/metrics", timeout=5) as answer:
                text = answer.read().decode()
        except OSError:
            return 0, 0, sent, errors, None
        ok, failed, p99 = parse_triton_counts(text, model)
        return ok, failed, sent, errors, p99

    # -- scaling -----------------------------------------------------------------------------------------------------
    def scale_to(self, count: int) -> list[str]:
        """Add or remove replicas until `count` run (new ones join once ready; removed ones are drained first)."""
        if count < 1:
            raise FleetError(f"a fleet needs at least one replica, got {count}")
        if count > self.slots:
            raise FleetError(f"{count} replicas exceed the balancer's {self.slots} slots (--max-replicas)")
        with self._ops_lock:
            while len(self.replicas) < count:
                self._add_replica()
            while len(self.replicas) > count:
                self._remove_replica(list(self.replicas)[-1])
            return list(self.replicas)

    def _add_replica(self) -> str:
        name = next(slot for slot in self.slot_names() if slot not in self.replicas)
        gpu = None
        if self.gpus:
            used = {replica.gpu for replica in self.replicas.values()}
            free = [gpu for gpu in self.gpus if gpu not in used]
            if not free:
                raise FleetError(f"every GPU already has a replica ({len(self.gpus)})")
            gpu = free[0]
        used_cores = [core for replica in self.replicas.values() for core in replica.cores]
        free_cores = tuple(core for core in self.cores if core not in used_cores)
        if not free_cores:
            if not self.options.oversubscribe:
                raise FleetError(
                    "no free core for another replica: it would oversubscribe (start with --oversubscribe)"
                )
            free_cores = (min(self.cores, key=used_cores.count),)
        replica = self._new_replica(name, free_cores, gpu)
        self._spawn_all([replica])
        replica.wait_ready()
        model_versions = {model: history[-1] for model, history in self.versions.items() if history}
        for model, version in model_versions.items():
            self.serve_version_on(replica, model, version)
        with self._lock:
            self.replicas[name] = replica
        self.api.set_address(name, replica.host, replica.http_port, replica.grpc_port)
        self.api.set_weight(name, FULL_WEIGHT)
        self.api.set_state(name, "ready")
        self._wait_in_rotation([name], timeout_s=30)
        self._log("scaled out", replica=name, cores=list(replica.cores), gpu=gpu)
        return name

    def serve_version_on(self, replica: ReplicaProcess, model: str, version: str) -> None:
        with self._lock:
            self.replicas.setdefault(replica.name, replica)
        self.serve_version(replica.name, model, version)

    def _remove_replica(self, name: str) -> None:
        self.drain(name)
        self.api.set_state(name, "maint")
        with self._lock:
            self._stopping.add(name)
            replica = self.replicas.pop(name)
        replica.stop()
        self._stopping.discard(name)
        self._log("scaled in", replica=name)

    # -- monitor: restart dead replicas, eject replicas that answer only errors -------------------------------------
    def _monitor_loop(self) -> None:
        while not self._stop.wait(0.25):
            self._monitor_once()

    def _monitor_once(self) -> None:
        try:
            self._restart_dead()
            self._cut_hung()
            self._eject_failing()
        except Exception:  # noqa: BLE001 - the monitor must outlive one bad poll
            if not self._stop.is_set():
                LOGGER.exception("fleet monitor poll failed")

    def _cut_hung(self) -> None:
        """End the requests of a replica the checks marked down once they have not ended within `HUNG_AFTER_S`: a
        hung (stopped, deadlocked) replica's would wait out `timeout server`. A killed replica's requests end at once
        (HAProxy replays them), so nothing of it is cut."""
        now = time.monotonic()
        seen = set()
        for row in self.api.stats():
            key = (row.backend, row.name)
            if not row.status.startswith("DOWN") or row.current == 0:
                continue
            seen.add(key)
            first = self._down_busy.setdefault(key, now)
            if now - first >= HUNG_AFTER_S:
                self.api.shutdown_sessions(row.backend, row.name)
                self._log("cut requests of a replica marked down", replica=row.name, backend=row.backend,
                          requests=row.current)  # fmt: skip
                del self._down_busy[key]
        for key in list(self._down_busy):
            if key not in seen:
                del self._down_busy[key]

    def _restart_dead(self) -> None:
        if not self.options.restart_dead_replicas:
            return
        with self._lock:
            dead = [r for n, r in self.replicas.items() if n not in self._stopping and not r.is_running()]
        for replica in dead:
            self._log("replica exited; restarting", replica=replica.name, log=replica.log_tail(5))
            replica.stop(timeout_s=5)
            replica._process = None
            self._run_in_spawner(replica.start)
            threading.Thread(target=self._after_restart, args=(replica,), daemon=True).start()

    def _after_restart(self, replica: ReplicaProcess) -> None:
        try:
            replica.wait_ready()
            for model, history in list(self.versions.items()):
                if history:
                    self.serve_version(replica.name, model, history[-1])
            self._log("replica back", replica=replica.name)
        except Exception as error:  # noqa: BLE001
            self._log("replica restart failed", replica=replica.name, error=str(error))

    def _eject_failing(self) -> None:
        counts = self.api.error_counts(HTTP_BACKEND)
        for name, (errors, requests) in counts.items():
            if name not in self.replicas or name in self._stopping:
                continue
            if errors >= self.options.eject_min_errors and errors >= self.options.eject_error_ratio * max(requests, 1):
                row = self.api.server_stats(name).get(HTTP_BACKEND)
                if row is None or not row.in_rotation:
                    continue
                if not set(self.in_rotation()) - {name}:
                    continue  # ejecting the last replica in rotation would turn errors into 503s for everyone
                if any(canary.decision == "running" and canary.replica == name for canary in self.canaries):
                    # A canary's errors are its judge's business (it rolls back), not a restart's.
                    self.api.set_state(name, "maint")
                    self._log("ejected canary", replica=name, errors=errors, requests=requests)
                    continue
                self._log("ejected", replica=name, errors=errors, requests=requests, action="restart")
                self.api.set_state(name, "maint")
                replica = self.replicas[name]
                with self._lock:
                    self._stopping.add(name)
                threading.Thread(target=self._restart_ejected, args=(replica,), daemon=True).start()

    def _restart_ejected(self, replica: ReplicaProcess) -> None:
        try:
            replica.stop(timeout_s=10)
            replica._process = None
            self._run_in_spawner(replica.start)
            replica.wait_ready()
            for model, history in list(self.versions.items()):
                if history:
                    self.serve_version(replica.name, model, history[-1])
            self.api.set_state(replica.name, "ready")
            self._log("replica back after ejection", replica=replica.name)
        finally:
            with self._lock:
                self._stopping.discard(replica.name)

    # -- internals ---------------------------------------------------------------------------------------------------
    def _new_replica(self, name: str, cores: tuple[int, ...], gpu: int | None) -> ReplicaProcess:
        args = tuple(self.options.launcher_args)
        if not any(arg.startswith("--metrics-config") and "summary_latencies" in arg for arg in args):
            args += (SUMMARY_FLAG,)
        repository = Path(self.options.model_repository)
        self.replica_plans.pop(name, None)
        if gpu is None and cores:
            plan = build_replica_repository(repository, self.workdir / "repositories" / name, len(cores))
            self.replica_plans[name] = plan
            repository = Path(plan.repository or repository)
            self._log("replica plan", replica=name, cores=list(cores), plan=plan.describe())
        return ReplicaProcess(
            name=name,
            model_repository=repository,
            cores=cores,
            gpu=gpu,
            launcher_args=args,
            startup_timeout_s=self.options.startup_timeout_s,
            exit_timeout_s=self.options.exit_timeout_s,
            log_path=self.workdir / f"{name}.log",
        )

    def _spec(self) -> BalancerSpec:
        entries = []
        for slot in self.slot_names():
            replica = self.replicas.get(slot)
            if replica is not None:
                entries.append(ReplicaAddress(slot, replica.host, replica.http_port, replica.grpc_port))
            else:  # a spare slot; `_add_replica` points it at a new replica
                entries.append(ReplicaAddress(slot, LOOPBACK, 9, 9, weight=FULL_WEIGHT, enabled=False))
        return BalancerSpec(
            replicas=tuple(entries),
            bind_host=self.options.host,
            http_port=self.options.http_port,
            grpc_port=self.options.grpc_port,
            metrics_port=self.options.metrics_port,
            stats_socket=self.workdir / "haproxy.sock",
            max_request_bytes=self.options.max_request_bytes,
            check_interval_ms=self.options.check_interval_ms,
            # One thread forwards far more than local replicas serve; a second one only competes with them for cores.
            nbthread=1 if len(self.cores) <= 4 else 2,
            shutdown_sessions_on_down=False,  # `_cut_hung` does it without racing HAProxy's replays
        )

    def _spawn_all(self, replicas: list[ReplicaProcess]) -> None:
        for replica in replicas:
            self._run_in_spawner(replica.start)

    def _run_in_spawner(self, function: Any) -> Any:
        return self._spawner.submit(function).result()

    def _wait_in_rotation(self, names: list[str], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if set(names) <= set(self.in_rotation()):
                return
            time.sleep(0.1)
        raise FleetStartError(f"replica(s) {names} not in the balancer's rotation after {timeout_s}s")

    def _wait_checked_up(self, name: str, timeout_s: float) -> None:
        """Until the health checks of every backend pass for `name` (drained or not)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            rows = self.api.server_stats(name).values()
            if rows and all(row.up for row in rows):
                return
            time.sleep(0.05)
        raise FleetStartError(f"replica {name} did not pass its health checks within {timeout_s}s")

    def _replica(self, name: str) -> ReplicaProcess:
        with self._lock:
            replica = self.replicas.get(name)
        if replica is None:
            raise FleetError(f"no replica named {name!r} (running: {', '.join(self.replicas) or 'none'})")
        return replica

    def _check_version_dir(self, model: str, version: str) -> None:
        if not str(version).isdigit():
            raise FleetError(f"a model version is a positive integer directory name, got {version!r}")
        path = Path(self.options.model_repository) / model / str(version)
        if not path.is_dir():
            raise FleetError(f"{path} does not exist: add the new version as a new directory first")

    def _initial_version(self, model: str) -> str | None:
        """The version the replicas serve now (asked from the first replica)."""
        for replica in list(self.replicas.values()):
            with contextlib.suppress(Exception):
                client = httpclient.InferenceServerClient(f"{replica.host}:{replica.http_port}")
                try:
                    versions = [
                        entry.get("version")
                        for entry in client.get_model_repository_index()
                        if entry.get("name") == model and entry.get("state") == "READY"
                    ]
                finally:
                    client.close()
                if versions:
                    return str(max(int(v) for v in versions if v))
        return None

    def _log(self, event: str, **fields: Any) -> None:
        entry = {"time": round(time.time(), 3), "event": event, **fields}
        self.events.append(entry)
        LOGGER.info("%s %s", event, json.dumps(fields, default=str))


def _with_free_ports(options: FleetOptions) -> FleetOptions:
    """Ports given as 0 replaced by free loopback ports (tests, studies)."""
    taken: set[int] = set()
    ports = {}
    for name in ("http_port", "grpc_port", "metrics_port", "control_port"):
        port = getattr(options, name)
        if port == 0:
            port = _free_port(options.host, exclude=taken)
        if port is not None:
            taken.add(port)
        ports[name] = port
    return dataclasses.replace(options, **ports)


_METRIC_LINE = re.compile(
    r"^(nv_inference_request_(?:success|failure)|nv_inference_request_summary_us)\{([^}]*)\} (\S+)"
)


def parse_triton_counts(text: str, model: str) -> tuple[int, int, float | None]:
    """(successes, failures, p99 request latency in us or None) of `model`, all versions, from Triton's /metrics."""
    ok = failed = 0
    p99s = []
    for line in text.splitlines():
        match = _METRIC_LINE.match(line)
        if not match:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2)))
        if labels.get("model") != model:
            continue
        value = float(match.group(3))
        if match.group(1) == "nv_inference_request_success":
            ok += int(value)
        elif match.group(1) == "nv_inference_request_failure":
            failed += int(value)
        elif labels.get("quantile") == "0.99" and value == value:  # NaN when no request in the window
            p99s.append(value)
    return ok, failed, max(p99s) if p99s else None

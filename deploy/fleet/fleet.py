"""A fleet of local tritonservers behind HAProxy, and its operations: drain, rolling update, rollback, canary with
automatic promote/rollback, scale out/in, restart of a dead replica, passive ejection on 500/502/504.

`Fleet(FleetOptions(...)).start()` runs N replicas (the local launcher each, self-healing on) and HAProxy in front;
every operation here is also reachable through the fleet's loopback control API (`deploy.fleet.control`) and
`tritonfleet fleet ctl ...`.

Model versions are immutable directories: an update serves another version directory (a config override with a
`specific` version policy, loaded through each replica's repository API); nothing is edited in place.

Each CPU replica has its own CPU plan for its core set (`deploy.fleet.replica_plan`): it serves a shadow of the
repository under the run directory (links to the version directories, configs with its instance and thread counts);
GPU replicas serve the repository as it is.

This module holds the replicas' lifecycle, status, drain and scaling; the versions and the canary are
`deploy.fleet.rollout`, the monitor (restart, ejection) `deploy.fleet.monitor`, the options `deploy.fleet.options`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tritonfleet.deploy.fleet.haproxy import HTTP_BACKEND, BalancerSpec, ReplicaAddress, haproxy_binary
from tritonfleet.deploy.fleet.monitor import MonitorMixin
from tritonfleet.deploy.fleet.options import (
    FULL_WEIGHT,
    CanaryPolicy,
    CanaryReport,
    FleetError,
    FleetOptions,
    _with_free_ports,
    auto_replicas,
    plan_cores,
    usable_cores,
    visible_gpus,
)
from tritonfleet.deploy.fleet.processes import BalancerProcess, FleetStartError, ReplicaProcess
from tritonfleet.deploy.fleet.replica_plan import ReplicaPlan, build_replica_repository
from tritonfleet.deploy.fleet.rollout import RolloutMixin
from tritonfleet.deploy.fleet.runtime_api import RuntimeApi, ServerStats
from tritonfleet.deploy.local.server import LOOPBACK, ServingAddresses, _port_is_free

__all__ = [
    "CanaryPolicy",
    "CanaryReport",
    "Fleet",
    "FleetError",
    "FleetOptions",
    "auto_replicas",
    "plan_cores",
    "usable_cores",
    "visible_gpus",
]

LOGGER = logging.getLogger(__name__)


# -- the fleet --------------------------------------------------------------------------------------------------------


class Fleet(RolloutMixin, MonitorMixin, ServingAddresses):
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

    # -- internals ---------------------------------------------------------------------------------------------------
    def _new_replica(self, name: str, cores: tuple[int, ...], gpu: int | None) -> ReplicaProcess:
        # The launcher's tritonserver flags (deploy.server_flags) include the latency summaries the canary reads.
        args = tuple(self.options.launcher_args)
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

    def _log(self, event: str, **fields: Any) -> None:
        entry = {"time": round(time.time(), 3), "event": event, **fields}
        self.events.append(entry)
        LOGGER.info("%s %s", event, json.dumps(fields, default=str))

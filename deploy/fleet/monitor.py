"""The fleet's monitor: restart a dead replica, cut a hung one's requests, eject (and restart) a replica that
answers only errors. A mixin of `deploy.fleet.fleet.Fleet`."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from tritonfleet.deploy.fleet.haproxy import HTTP_BACKEND
from tritonfleet.deploy.fleet.options import CanaryReport, FleetOptions

if TYPE_CHECKING:
    from tritonfleet.deploy.fleet.processes import ReplicaProcess
    from tritonfleet.deploy.fleet.runtime_api import RuntimeApi

LOGGER = logging.getLogger(__name__)
HUNG_AFTER_S = 0.5


class MonitorMixin:
    """The monitor thread's polls; the replicas and the balancer's runtime API come from `Fleet`."""

    options: FleetOptions
    replicas: dict[str, ReplicaProcess]
    versions: dict[str, list[str]]
    canaries: list[CanaryReport]
    _lock: threading.RLock
    _stop: threading.Event
    _stopping: set[str]
    _down_busy: dict[tuple[str, str], float]

    if TYPE_CHECKING:

        @property
        def api(self) -> RuntimeApi: ...
        def in_rotation(self) -> list[str]: ...
        def serve_version(self, name: str, model: str, version: str) -> None: ...
        def _run_in_spawner(self, function: Any) -> Any: ...
        def _log(self, event: str, **fields: Any) -> None: ...

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

"""Self-healing for a local tritonserver: find dead or hung python-backend stubs and reload their model.

Why: Triton 24.10 does not restart a crashed python-backend stub. Every request to that model then fails with
HTTP 500 "Stub process '<model>_0_0' is not healthy." while `/v2/health/ready` keeps answering 200, and stopping the
server waits the whole --exit-timeout-secs. Locally every model runs in a stub (our onnxruntime/pytorch backends are
Python-based), so one SIGKILL'd or OOM-killed process takes a model down for good.

How (needs `--model-control-mode=explicit`, i.e. the repository API):
- Detect. Every `poll_interval_s` the supervisor compares, for each READY python-run model version, the instance
  count its served config declares with the live stubs among the server's children (`deploy.local.stubs`). A stub
  that is gone, a zombie or stopped counts as missing; a deficit seen on `confirm_scans` consecutive scans is a
  fault. Optional inference probes (`InferenceProbe`) catch stubs that are alive but hung: a probe that times out or
  answers 5xx (503 excepted: that is back-pressure) `probe_failures_to_repair` times in a row is a fault.
- Repair. Remaining stubs of the model are SIGKILLed when it hangs (so the unload cannot block on a stuck execute),
  then the model is unloaded and loaded again with the config it was served with (a rolled-out version policy
  survives the repair). Unload/load rather than a background reload so that readiness tells the truth: while the
  model is being repaired Triton itself reports it (and its ensembles) not ready, `/v2/health/ready` answers 400
  while it loads, and requests fail fast with "has no available versions" instead of waiting on a dead stub.
- Report. `is_ready()` is false while any model is broken or being repaired (also in the short window between the
  crash and the start of the repair, where Triton still says ready); `repairs` records each repair with its timing.
  `SupervisorHealthServer` (`deploy.local.health`) serves that truth as `/ready` and `/live` for a load balancer.

Calls to Triton go through `deploy.local.triton_admin` (tritonclient.http). In Kubernetes the kubelet does this job
instead: see docs/reliability.md.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from tritonclient.grpc import model_config_pb2 as mc

from tritonfleet.deploy.local.health import SupervisorHealthServer
from tritonfleet.deploy.local.stubs import (
    ModelVersion,
    expected_instance_count,
    kill_model_stubs,
    list_stub_processes,
    missing_instances,
    model_named_in_error,
    runs_in_stub,
)
from tritonfleet.deploy.local.supervisor_options import (
    OVERLOADED_STATUSES,
    Fault,
    InferenceProbe,
    ProbeInput,
    Repair,
    SupervisorOptions,
    _ProbeState,
)
from tritonfleet.deploy.local.triton_admin import TritonAdmin, TritonCallError

__all__ = [
    "Fault",
    "InferenceProbe",
    "ModelSupervisor",
    "ProbeInput",
    "Repair",
    "SupervisorHealthServer",
    "SupervisorOptions",
    "list_stub_processes",  # importable from here for the chaos tool (loadtest/chaos.py)
]

LOGGER = logging.getLogger(__name__)


# -- the supervisor ----------------------------------------------------------------------------------------------------


class ModelSupervisor:
    """Watches one tritonserver (explicit model control) and reloads models whose stubs died or hang.

    Example:
        with ModelSupervisor(server.http_url, server.pid) as supervisor:
            ...
            supervisor.is_ready()  # False while a model is broken or being repaired
    """

    def __init__(self, http_url: str, server_pid: int, options: SupervisorOptions | None = None) -> None:
        self.options = options or SupervisorOptions()
        self.triton = TritonAdmin(http_url, self.options.request_timeout_s)
        self.server_pid = server_pid
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._broken: dict[str, str] = {}  # model -> reason, while broken or under repair
        self._given_up: dict[str, str] = {}
        self._repairs: list[Repair] = []
        self._deficit_streak: dict[ModelVersion, int] = {}
        self._config_cache: dict[ModelVersion, mc.ModelConfig] = {}
        self._probe_states = {probe.model: _ProbeState() for probe in self.options.probes}
        self._pending_faults: dict[str, Fault] = {}
        self._repair_lock = threading.Lock()

    # -- lifecycle -----------------------------------------------------------------------------------------------------
    def start(self) -> ModelSupervisor:
        if self._threads:
            raise RuntimeError("supervisor already started")
        self._stop.clear()
        self._threads = [threading.Thread(target=self._scan_loop, name="supervisor-scan", daemon=True)]
        if self.options.probes:
            self._threads.append(threading.Thread(target=self._probe_loop, name="supervisor-probe", daemon=True))
        for thread in self._threads:
            thread.start()
        LOGGER.info("supervisor watching tritonserver pid %s at %s", self.server_pid, self.triton.url)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=timeout_s)
        self._threads = []

    @property
    def running(self) -> bool:
        return bool(self._threads)

    def __enter__(self) -> ModelSupervisor:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- state ---------------------------------------------------------------------------------------------------------
    @property
    def repairs(self) -> list[Repair]:
        with self._lock:
            return list(self._repairs)

    @property
    def broken_models(self) -> dict[str, str]:
        """Models known broken (crashed, hung, under repair or given up) -> reason."""
        with self._lock:
            return {**self._broken, **self._given_up}

    def is_ready(self) -> bool:
        """Truthful readiness: Triton ready and no model broken or under repair."""
        return not self.broken_models and self.triton.is_ready()

    def is_live(self) -> bool:
        """Live unless the server is gone or a model could not be repaired (a restart is then the remedy)."""
        with self._lock:
            if self._given_up:
                return False
        return self.triton.is_live()

    def wait_until_whole(self, timeout_s: float) -> bool:
        """Block until no model is broken and Triton is ready; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.is_ready():
                return True
            time.sleep(0.05)
        return False

    def status(self) -> dict[str, Any]:
        with self._lock:
            broken, given_up = dict(self._broken), dict(self._given_up)
            repairs = [
                {"model": r.model, "reason": r.reason, "duration_s": r.duration_s, "succeeded": r.succeeded}
                for r in self._repairs[-20:]
            ]
        return {"broken": broken, "given_up": given_up, "repairs": repairs}

    # -- detection -----------------------------------------------------------------------------------------------------
    def scan_once(self) -> dict[ModelVersion, int]:
        """One stub scan; returns confirmed deficits (model version -> missing instances) and records them."""
        expected = self._expected_stubs()
        deficits = missing_instances(expected, list_stub_processes(self.server_pid))
        confirmed: dict[ModelVersion, int] = {}
        for key in list(self._deficit_streak):
            if key not in deficits:
                del self._deficit_streak[key]
        for key, missing in deficits.items():
            streak = self._deficit_streak.get(key, 0) + 1
            self._deficit_streak[key] = streak
            if streak == 1:
                self._config_cache.pop(key, None)  # re-read the config: the instance count may have changed
            if streak >= self.options.confirm_scans:
                confirmed[key] = missing
        if confirmed:
            stopped = {stub.model for stub in list_stub_processes(self.server_pid) if not stub.serving}
            for (model, version), missing in confirmed.items():
                reason = f"{missing} stub process(es) of version {version} gone or stopped"
                self._report_fault(Fault(model, reason, kill_stubs=model in stopped))
        return confirmed

    def probe_once(self, probe: InferenceProbe) -> str | None:
        """Run one probe; returns None when healthy (or merely overloaded), else the failure text."""
        timeout = self.options.probe_timeout_s
        inputs = [(entry.name, entry.datatype, entry.array()) for entry in probe.inputs]
        try:
            self.triton.infer(probe.model, inputs, timeout_s=timeout)
        except TritonCallError as error:
            if error.status is None:
                return f"probe of {probe.model!r} did not complete in {timeout}s: {error}"
            if error.status in OVERLOADED_STATUSES:
                return None
            if error.status >= 500:
                return f"probe of {probe.model!r} answered {error.status}: {str(error)[:300]}"
            LOGGER.warning("probe of %r answered %s (probe misconfigured?): %s", probe.model, error.status, error)
        return None

    def _expected_stubs(self) -> dict[ModelVersion, int]:
        try:
            ready = self.triton.ready_versions()
        except TritonCallError as error:
            LOGGER.debug("repository index unavailable: %s", error)
            return {}
        for key in list(self._config_cache):
            if key not in ready:
                del self._config_cache[key]
        expected = {}
        for key in ready:
            if key not in self._config_cache:
                config = self.triton.served_config(*key)
                if config is None:
                    continue
                self._config_cache[key] = config
            count = expected_instance_count(self._config_cache[key])
            if count:
                expected[key] = count
        return expected

    def _report_fault(self, fault: Fault) -> None:
        with self._lock:
            if fault.model in self._broken or fault.model in self._given_up:
                return
            self._broken[fault.model] = fault.reason
            self._pending_faults[fault.model] = fault
        LOGGER.warning("model %r is broken: %s", fault.model, fault.reason)

    # -- loops ---------------------------------------------------------------------------------------------------------
    def _scan_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.scan_once()
                self._repair_pending()
            except Exception:  # noqa: BLE001 - the watcher must outlive any single failure
                LOGGER.exception("supervisor scan failed")
            self._stop.wait(self.options.poll_interval_s)

    def _probe_loop(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            for probe in self.options.probes:
                state = self._probe_states[probe.model]
                if now < state.next_due or self._stop.is_set():
                    continue
                state.next_due = now + self.options.probe_interval_s
                if self.broken_models:
                    state.consecutive_failures = 0
                    continue
                failure = self.probe_once(probe)
                if failure is None:
                    state.consecutive_failures = 0
                    continue
                state.consecutive_failures += 1
                LOGGER.warning("%s (%d in a row)", failure, state.consecutive_failures)
                if state.consecutive_failures >= self.options.probe_failures_to_repair:
                    state.consecutive_failures = 0
                    for model in self._models_to_repair(probe, failure):
                        self._report_fault(Fault(model, failure, kill_stubs=True))
            self._stop.wait(0.05)

    def _models_to_repair(self, probe: InferenceProbe, failure: str) -> list[str]:
        named = model_named_in_error(failure)
        if named:
            return [named]
        if probe.repair_models:
            return list(probe.repair_models)
        config = self.triton.served_config(probe.model)
        steps = list(dict.fromkeys(step.model_name for step in config.ensemble_scheduling.step)) if config else []
        if not steps:
            return [probe.model]
        in_stubs = [step for step in steps if (served := self.triton.served_config(step)) and runs_in_stub(served)]
        return in_stubs or steps

    # -- repair --------------------------------------------------------------------------------------------------------
    def _repair_pending(self) -> None:
        with self._lock:
            pending, self._pending_faults = self._pending_faults, {}
        for fault in pending.values():
            if self._stop.is_set():
                return
            self.repair(fault.model, fault.reason, kill_stubs=fault.kill_stubs)

    def repair(self, model: str, reason: str, kill_stubs: bool = False) -> Repair:
        """Unload and load `model` with its served config; retried with backoff, then given up (logged).

        `kill_stubs` SIGKILLs the model's remaining stubs first, so that an unload cannot wait on a hung execute.
        """
        with self._repair_lock:
            record = Repair(model, reason, detected_at=time.time())
            with self._lock:
                self._broken[model] = reason
                self._repairs.append(record)
            backoff = self.options.retry_backoff_s
            while record.attempts < self.options.max_repair_attempts and not self._stop.is_set():
                record.attempts += 1
                try:
                    self._reload(model, kill_stubs=kill_stubs)
                except TritonCallError as error:
                    record.error = str(error)
                    LOGGER.warning("repair of %r, attempt %d failed: %s", model, record.attempts, error)
                    self._stop.wait(backoff)
                    backoff *= 2
                    continue
                record.succeeded, record.error = True, None
                break
            record.finished_at = time.time()
            with self._lock:
                self._broken.pop(model, None)
                if not record.succeeded:
                    self._given_up[model] = f"repair failed after {record.attempts} attempt(s): {record.error}"
            self._deficit_streak = {key: n for key, n in self._deficit_streak.items() if key[0] != model}
            self._config_cache = {key: c for key, c in self._config_cache.items() if key[0] != model}
            if record.succeeded:
                LOGGER.warning("model %r repaired in %.2fs (%s)", model, record.duration_s or 0.0, reason)
            else:
                LOGGER.error("giving up on model %r: %s", model, record.error)
            return record

    def _reload(self, model: str, kill_stubs: bool) -> None:
        served = self.triton.served_config(model)
        if kill_stubs:
            kill_model_stubs(self.server_pid, model)
        try:
            self.triton.unload(model)
        except TritonCallError as error:
            raise TritonCallError(f"unload of {model!r}: {error}", error.status) from error
        timeout = self.options.load_timeout_s
        try:
            self.triton.load(model, served, timeout_s=timeout)
        except TritonCallError as error:
            if served is None or error.status is None:
                raise TritonCallError(f"load of {model!r}: {error}", error.status) from error
            LOGGER.warning("load of %r with its served config answered %s; loading it from disk", model, error.status)
            try:
                self.triton.load(model, timeout_s=timeout)
            except TritonCallError as retry_error:
                raise TritonCallError(f"load of {model!r}: {retry_error}", retry_error.status) from retry_error

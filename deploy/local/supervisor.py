"""Self-healing for a local tritonserver: find dead or hung python-backend stubs and reload their model.

Why: Triton 24.10 does not restart a crashed python-backend stub. Every request to that model then fails with
HTTP 500 "Stub process '<model>_0_0' is not healthy." while `/v2/health/ready` keeps answering 200, and stopping the
server waits the whole --exit-timeout-secs. Locally every model runs in a stub (our onnxruntime/pytorch backends are
Python-based), so one SIGKILL'd or OOM-killed process takes a model down for good.

How (needs `--model-control-mode=explicit`, i.e. the repository API):
- Detect. Every `poll_interval_s` the supervisor compares, for each READY python-run model version, the instance
  count its served config declares with the live `triton_python_backend_stub` children of the server process (their
  argv names `<repository>/<model>/<version>/<file>`). A stub that is gone, a zombie or stopped counts as missing; a
  deficit seen on `confirm_scans` consecutive scans is a fault. Optional inference probes (`InferenceProbe`) catch
  stubs that are alive but hung: a probe that times out or answers 5xx (503 excepted: that is back-pressure)
  `probe_failures_to_repair` times in a row is a fault.
- Repair. Remaining stubs of the model are SIGKILLed when it hangs (so the unload cannot block on a stuck execute),
  then the model is unloaded and loaded again with the config it was served with (a rolled-out version policy
  survives the repair). Unload/load rather than a background reload so that readiness tells the truth: while the
  model is being repaired Triton itself reports it (and its ensembles) not ready, `/v2/health/ready` answers 400
  while it loads, and requests fail fast with "has no available versions" instead of waiting on a dead stub.
- Report. `is_ready()` is false while any model is broken or being repaired (also in the short window between the
  crash and the start of the repair, where Triton still says ready); `repairs` records each repair with its timing.
  `SupervisorHealthServer` serves that truth as `/ready` and `/live` for a load balancer.

In Kubernetes the kubelet does this job instead: see docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

LOGGER = logging.getLogger(__name__)
STUB_EXECUTABLE = "triton_python_backend_stub"
# Process states that cannot serve: zombie, dead, stopped (SIGSTOP), traced.
NOT_SERVING_STATES = frozenset("ZXxTt")
# Probe answers that mean "busy", not "broken": queue full (503) and rate limited (429).
OVERLOADED_STATUSES = frozenset({429, 503})


# -- configuration ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeInput:
    """One input of a probe request in KServe v2 JSON form (`data` flattened, row-major)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: tuple[Any, ...]

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape), "data": list(self.data)}


@dataclass(frozen=True)
class InferenceProbe:
    """A real inference run periodically to catch a model that is loaded and has its stubs but does not answer.

    Attributes:
        model: model to call (an ensemble is fine).
        inputs: the request's inputs.
        repair_models: what to reload when the probe fails without naming the broken stub (a timeout); empty means
            the model itself, or for an ensemble its python-run composing models.
    """

    model: str
    inputs: tuple[ProbeInput, ...]
    repair_models: tuple[str, ...] = ()

    @classmethod
    def for_sequence_model(cls, model: str = "esm2", sequence: str = "MKTAYIAKQRQISFVKSHFSRQ") -> InferenceProbe:
        """A probe for a model with the ESM-2 `SEQUENCE` BYTES [1] input (docs/design.md)."""
        return cls(model, (ProbeInput("SEQUENCE", "BYTES", (1, 1), (sequence,)),))

    def request_body(self) -> bytes:
        return json.dumps({"inputs": [entry.as_json() for entry in self.inputs]}).encode()


@dataclass(frozen=True)
class SupervisorOptions:
    """How the supervisor watches and repairs.

    Attributes:
        poll_interval_s: period of the stub scan.
        confirm_scans: consecutive scans a stub must be missing before the model is repaired (guards against
            races with loads and unloads started by someone else).
        probes: inference probes (none by default: the stub scan alone needs no knowledge of the models).
        probe_interval_s: period of each probe.
        probe_timeout_s: a probe taking longer has failed (the model hangs).
        probe_failures_to_repair: consecutive probe failures before a repair.
        request_timeout_s: timeout of the supervisor's own status calls to Triton.
        load_timeout_s: timeout of one load call during a repair.
        max_repair_attempts: attempts per fault before the supervisor gives up on a model (readiness stays false).
        retry_backoff_s: pause after a failed repair attempt (doubled each time).
    """

    poll_interval_s: float = 0.1
    confirm_scans: int = 2
    probes: tuple[InferenceProbe, ...] = ()
    probe_interval_s: float = 1.0
    probe_timeout_s: float = 3.0
    probe_failures_to_repair: int = 2
    request_timeout_s: float = 5.0
    load_timeout_s: float = 300.0
    max_repair_attempts: int = 3
    retry_backoff_s: float = 1.0

    def __post_init__(self) -> None:
        if self.poll_interval_s <= 0 or self.probe_interval_s <= 0 or self.probe_timeout_s <= 0:
            raise ValueError("supervisor intervals and timeouts must be > 0")
        if self.confirm_scans < 1 or self.probe_failures_to_repair < 1 or self.max_repair_attempts < 1:
            raise ValueError("confirm_scans, probe_failures_to_repair and max_repair_attempts must be >= 1")


# -- pure helpers (unit-tested) ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StubProcess:
    """A python-backend stub: one model instance of one model version."""

    pid: int
    model: str
    version: str
    instance: str
    state: str

    @property
    def serving(self) -> bool:
        return self.state not in NOT_SERVING_STATES


ModelVersion = tuple[str, str]


def parse_stub_argv(argv: Sequence[str]) -> tuple[str, str, str] | None:
    """(model, version, instance name) from a stub's argv, or None when it is not a model-instance stub.

    The python backend starts `triton_python_backend_stub <repo>/<model>/<version>/<file> <shm region> <shm size>
    <shm growth> <parent pid> <backend dir> <ipc size> <instance name> <runtime dir>` (stub_launcher.cc).
    """
    if len(argv) < 9 or not argv[0].endswith(STUB_EXECUTABLE):
        return None
    model_file = Path(argv[1])
    if len(model_file.parts) < 3:
        return None
    return model_file.parent.parent.name, model_file.parent.name, argv[8]


def list_stub_processes(server_pid: int, proc_root: Path = Path("/proc")) -> list[StubProcess]:
    """The stub processes whose parent is `server_pid` (read from /proc; processes vanishing meanwhile are skipped)."""
    stubs = []
    for entry in proc_root.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        # stat: "pid (comm) state ppid ..."; comm may contain spaces and parentheses, so split after the last ')'.
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) < 2 or int(fields[1]) != server_pid:
            continue
        parsed = parse_stub_argv(argv)
        if parsed is not None:
            stubs.append(StubProcess(int(entry.name), *parsed, state=fields[0]))
    return stubs


def runs_in_stub(config: Mapping[str, Any]) -> bool:
    """Whether the model's instances are python-backend stubs (python models and our Python-based backends)."""
    return config.get("backend") == "python" or config.get("runtime") == "model.py"


def expected_instance_count(config: Mapping[str, Any]) -> int:
    """Stub processes a loaded python-run model version has: per instance group, `count` (times its GPUs)."""
    if not runs_in_stub(config):
        return 0
    total = 0
    for group in config.get("instance_group", []):
        count = int(group.get("count", 1))
        gpus = group.get("gpus") or []
        total += count * len(gpus) if group.get("kind") == "KIND_GPU" and gpus else count
    return total


def missing_instances(expected: Mapping[ModelVersion, int], stubs: Iterable[StubProcess]) -> dict[ModelVersion, int]:
    """How many instances each model version lacks (only versions with a deficit)."""
    serving: dict[ModelVersion, int] = {}
    for stub in stubs:
        if stub.serving:
            serving[(stub.model, stub.version)] = serving.get((stub.model, stub.version), 0) + 1
    return {key: count - serving.get(key, 0) for key, count in expected.items() if serving.get(key, 0) < count}


def model_named_in_error(message: str) -> str | None:
    """The model of the stub named in "Stub process '<model>_<group>_<instance>' is not healthy", if any."""
    marker = "Stub process '"
    start = message.find(marker)
    if start < 0:
        return None
    instance = message[start + len(marker) :].split("'", 1)[0]
    parts = instance.rsplit("_", 2)
    return parts[0] if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit() else None


# -- records -----------------------------------------------------------------------------------------------------------


@dataclass
class Repair:
    """One repair: why, when (time.time() stamps), how long it took and whether the model came back."""

    model: str
    reason: str
    detected_at: float
    finished_at: float | None = None
    attempts: int = 0
    succeeded: bool = False
    error: str | None = None

    @property
    def duration_s(self) -> float | None:
        return None if self.finished_at is None else self.finished_at - self.detected_at


@dataclass(frozen=True)
class Fault:
    """A model found broken: why, and whether its remaining stubs must be killed before the unload (hung ones)."""

    model: str
    reason: str
    kill_stubs: bool = False


@dataclass
class _ProbeState:
    next_due: float = 0.0
    consecutive_failures: int = 0
    last_error: str = ""


class TritonCallError(RuntimeError):
    """A repository/health call to Triton failed; `status` is the HTTP status (None for transport errors)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


# -- the supervisor ----------------------------------------------------------------------------------------------------


class ModelSupervisor:
    """Watches one tritonserver (explicit model control) and reloads models whose stubs died or hang.

    Example:
        with ModelSupervisor(server.http_url, server.pid) as supervisor:
            ...
            supervisor.is_ready()  # False while a model is broken or being repaired
    """

    def __init__(
        self,
        http_url: str,
        server_pid: int,
        options: SupervisorOptions | None = None,
        stub_lister: Callable[[int], list[StubProcess]] = list_stub_processes,
    ) -> None:
        self.base_url = http_url if "://" in http_url else f"http://{http_url}"
        self.server_pid = server_pid
        self.options = options or SupervisorOptions()
        self._list_stubs = stub_lister
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._broken: dict[str, str] = {}  # model -> reason, while broken or under repair
        self._given_up: dict[str, str] = {}
        self._repairs: list[Repair] = []
        self._deficit_streak: dict[ModelVersion, int] = {}
        self._config_cache: dict[ModelVersion, dict[str, Any]] = {}
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
        LOGGER.info("supervisor watching tritonserver pid %s at %s", self.server_pid, self.base_url)
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
        if self.broken_models:
            return False
        try:
            return self._call("GET", "/v2/health/ready")[0] == 200
        except TritonCallError:
            return False

    def is_live(self) -> bool:
        """Live unless the server is gone or a model could not be repaired (a restart is then the remedy)."""
        with self._lock:
            if self._given_up:
                return False
        try:
            return self._call("GET", "/v2/health/live")[0] == 200
        except TritonCallError:
            return False

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
        deficits = missing_instances(expected, self._list_stubs(self.server_pid))
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
            stopped = {stub.model for stub in self._list_stubs(self.server_pid) if not stub.serving}
            for (model, version), missing in confirmed.items():
                reason = f"{missing} stub process(es) of version {version} gone or stopped"
                self._report_fault(Fault(model, reason, kill_stubs=model in stopped))
        return confirmed

    def probe_once(self, probe: InferenceProbe) -> str | None:
        """Run one probe; returns None when healthy (or merely overloaded), else the failure text."""
        try:
            status, body = self._call(
                "POST", f"/v2/models/{probe.model}/infer", probe.request_body(), timeout_s=self.options.probe_timeout_s
            )
        except TritonCallError as error:
            return f"probe of {probe.model!r} did not complete in {self.options.probe_timeout_s}s: {error}"
        if status == 200 or status in OVERLOADED_STATUSES:
            return None
        text = body.decode(errors="replace")[:300]
        if status >= 500:
            return f"probe of {probe.model!r} answered {status}: {text}"
        LOGGER.warning("probe of %r answered %s (probe misconfigured?): %s", probe.model, status, text)
        return None

    def _expected_stubs(self) -> dict[ModelVersion, int]:
        try:
            _, body = self._call("POST", "/v2/repository/index", b"{}")
            index = json.loads(body)
        except (TritonCallError, ValueError) as error:
            LOGGER.debug("repository index unavailable: %s", error)
            return {}
        ready = {(entry["name"], str(entry.get("version", ""))) for entry in index if entry.get("state") == "READY"}
        for key in list(self._config_cache):
            if key not in ready:
                del self._config_cache[key]
        expected = {}
        for key in ready:
            if key not in self._config_cache:
                config = self._served_config(*key)
                if config is None:
                    continue
                self._config_cache[key] = config
            count = expected_instance_count(self._config_cache[key])
            if count:
                expected[key] = count
        return expected

    def _served_config(self, model: str, version: str = "") -> dict[str, Any] | None:
        path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/config"
        try:
            status, body = self._call("GET", path)
        except TritonCallError:
            return None
        return json.loads(body) if status == 200 else None

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
                state.last_error = failure
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
        config = self._served_config(probe.model) or {}
        steps = [step["model_name"] for step in config.get("ensemble_scheduling", {}).get("step", [])]
        if not steps:
            return [probe.model]
        return [step for step in dict.fromkeys(steps) if runs_in_stub(self._served_config(step) or {})] or steps

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
        served = self._served_config(model)
        if kill_stubs:
            self._kill_stubs(model)
        status, body = self._call("POST", f"/v2/repository/models/{model}/unload", b"{}")
        if status != 200:
            raise TritonCallError(f"unload of {model!r} answered {status}: {body.decode(errors='replace')[:300]}")
        load_body = b"{}" if served is None else json.dumps({"parameters": {"config": json.dumps(served)}}).encode()
        timeout = self.options.load_timeout_s
        status, body = self._call("POST", f"/v2/repository/models/{model}/load", load_body, timeout_s=timeout)
        if status != 200 and served is not None:
            LOGGER.warning("load of %r with its served config answered %s; loading it from disk", model, status)
            status, body = self._call("POST", f"/v2/repository/models/{model}/load", b"{}", timeout_s=timeout)
        if status != 200:
            raise TritonCallError(f"load of {model!r} answered {status}: {body.decode(errors='replace')[:300]}", status)

    def _kill_stubs(self, model: str) -> None:
        for stub in self._list_stubs(self.server_pid):
            if stub.model == model:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(stub.pid, signal.SIGKILL)
                    LOGGER.warning("killed hung stub %s (pid %d)", stub.instance, stub.pid)

    # -- HTTP ----------------------------------------------------------------------------------------------------------
    def _call(
        self, method: str, path: str, body: bytes | None = None, timeout_s: float | None = None
    ) -> tuple[int, bytes]:
        request = urllib.request.Request(self.base_url + path, data=body, method=method)
        if body is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s or self.options.request_timeout_s) as response:  # noqa: S310
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()
        except (urllib.error.URLError, OSError) as error:
            raise TritonCallError(f"{method} {path}: {error}") from error


# -- truthful health endpoint ------------------------------------------------------------------------------------------


class SupervisorHealthServer:
    """Serves the supervisor's readiness on `GET /ready` and liveness on `GET /live` (200 or 503, JSON status)."""

    def __init__(self, supervisor: ModelSupervisor, host: str = "127.0.0.1", port: int = 0) -> None:
        self.supervisor = supervisor
        handler = _health_handler(supervisor)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="supervisor-health", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> SupervisorHealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def _health_handler(supervisor: ModelSupervisor) -> type[BaseHTTPRequestHandler]:
    class HealthHandler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            checks = {"/ready": supervisor.is_ready, "/live": supervisor.is_live}
            check = checks.get(self.path.split("?", 1)[0])
            if check is None:
                self.send_error(404, "use /ready or /live")
                return
            healthy = check()
            payload = json.dumps({"ok": healthy, **supervisor.status()}).encode()
            self.send_response(200 if healthy else 503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base class
            LOGGER.debug("health endpoint: " + format, *args)

    return HealthHandler


__all__ = [
    "InferenceProbe",
    "ModelSupervisor",
    "ProbeInput",
    "Repair",
    "StubProcess",
    "SupervisorHealthServer",
    "SupervisorOptions",
    "expected_instance_count",
    "list_stub_processes",
    "missing_instances",
    "model_named_in_error",
    "parse_stub_argv",
    "runs_in_stub",
]

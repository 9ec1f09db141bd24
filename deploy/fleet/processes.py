"""The processes of a fleet: replicas (each the local launcher, `python -m tritonfleet.deploy.local`, self-healing on)
and the HAProxy in front of them."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from tritonfleet.deploy.fleet.haproxy import HAPROXY_ENVIRONMENT, BalancerSpec, haproxy_binary, render_config
from tritonfleet.deploy.fleet.runtime_api import RuntimeApi
from tritonfleet.deploy.local.server import LOOPBACK, _free_port, start_in_own_session, terminate_with_parent

LOGGER = logging.getLogger(__name__)


class FleetStartError(RuntimeError):
    """A replica or the balancer did not start; the message says which and why."""


def http_ready(host: str, port: int, timeout_s: float = 1.0, path: str = "/v2/health/ready") -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=timeout_s) as answer:
            return answer.status == 200
    except (OSError, urllib.error.URLError):
        return False


@dataclass
class ReplicaProcess:
    """One replica: the local launcher on its own ports, cores (affinity) and GPU (`CUDA_VISIBLE_DEVICES`).

    Attributes:
        name: server name in the balancer (`r1`, `r2`, ...).
        cores: CPU cores it may run on (empty: no affinity).
        gpu: GPU id it sees alone (None: no GPU).
        launcher_args: extra arguments for `deploy.local` (self-healing flags, tritonserver flags, ...).
    """

    name: str
    model_repository: Path
    cores: tuple[int, ...] = ()
    gpu: int | None = None
    launcher_args: tuple[str, ...] = ()
    host: str = LOOPBACK
    http_port: int = 0
    grpc_port: int = 0
    metrics_port: int = 0
    startup_timeout_s: float = 300.0
    exit_timeout_s: int = 10
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    log_path: Path | None = None

    def __post_init__(self) -> None:
        taken: set[int] = set()
        for port_name in ("http_port", "grpc_port", "metrics_port"):
            if getattr(self, port_name) == 0:
                port = _free_port(self.host, exclude=taken)
                setattr(self, port_name, port)
            taken.add(getattr(self, port_name))

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "tritonfleet.deploy.local",
            f"--model-repository={Path(self.model_repository).resolve()}",
            f"--host={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            f"--exit-timeout-secs={self.exit_timeout_s}",
            f"--startup-timeout-secs={self.startup_timeout_s}",
            *self.launcher_args,
        ]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = str(self.gpu)
        if self.cores:
            # Engines that size their thread pools from the environment see this replica's share only.
            env["OMP_NUM_THREADS"] = str(len(self.cores))
        return env

    def start(self) -> None:
        """Start the launcher (returns at once; `wait_ready` blocks)."""
        if self.is_running():
            raise RuntimeError(f"replica {self.name} is already running")
        if self.log_path is None:
            self.log_path = Path(tempfile.mkdtemp(prefix=f"tritonfleet-{self.name}-")) / "launcher.log"
        cores = set(self.cores)

        def before_exec() -> None:
            terminate_with_parent()
            if cores:
                os.sched_setaffinity(0, cores)

        LOGGER.info("starting replica %s (cores %s, gpu %s): %s", self.name, self.cores, self.gpu, self.command())
        self._process = start_in_own_session(self.command(), self.log_path, self.environment(), before_exec=before_exec)

    def wait_ready(self, timeout_s: float | None = None) -> None:
        deadline = time.monotonic() + (timeout_s or self.startup_timeout_s)
        while time.monotonic() < deadline:
            if not self.is_running():
                raise FleetStartError(
                    f"replica {self.name} exited before it was ready; its log says:\n{self.log_tail()}"
                )
            if http_ready(self.host, self.http_port):
                return
            time.sleep(0.2)
        raise FleetStartError(f"replica {self.name} not ready after {timeout_s}s; its log says:\n{self.log_tail()}")

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def is_ready(self) -> bool:
        return self.is_running() and http_ready(self.host, self.http_port)

    @property
    def launcher_pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def tritonserver_pid(self) -> int | None:
        """The replica's tritonserver process (a child of the launcher)."""
        if not self.is_running():
            return None
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.launcher_pid).children(recursive=True):
                if child.name() == "tritonserver":
                    return child.pid
        return None

    def stop(self, timeout_s: float | None = None) -> int | None:
        """SIGTERM the launcher (it stops tritonserver gracefully), SIGKILL the group as a last resort."""
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout_s if timeout_s is not None else self.exit_timeout_s + 20)
            except subprocess.TimeoutExpired:
                LOGGER.warning("replica %s did not stop in time; killing it", self.name)
        self._kill_group(process.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
        return process.returncode

    def _kill_group(self, pid: int) -> None:
        # The launcher's session holds tritonserver's own session leader as a child: kill both groups.
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(pid).children(recursive=True):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


class BalancerProcess:
    """HAProxy in the foreground (`-db`) with the rendered configuration, its runtime API on a private socket."""

    def __init__(self, spec: BalancerSpec, workdir: Path) -> None:
        self.workdir = workdir
        self.spec = spec
        self.config_path = workdir / "haproxy.cfg"
        self.log_path = workdir / "haproxy.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def api(self) -> RuntimeApi:
        assert self.spec.stats_socket is not None
        return RuntimeApi(self.spec.stats_socket)

    def start(self, timeout_s: float = 20.0) -> None:
        binary = haproxy_binary()
        self.config_path.write_text(render_config(self.spec))
        command = [binary, "-db", "-f", str(self.config_path)]
        self._process = start_in_own_session(command, self.log_path, {**os.environ, **HAPROXY_ENVIRONMENT})
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise FleetStartError(f"haproxy exited with {self._process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(OSError):
                self.api.command("show info")
                if http_ready(self.spec.client_host, self.spec.metrics_port, path="/stats;csv"):
                    return
            time.sleep(0.1)
        raise FleetStartError(f"haproxy did not start in {timeout_s}s:\n{self.log_tail()}")

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self, grace_s: float = 30.0) -> None:
        """Soft stop (SIGUSR1: stop listening, let open requests finish), then SIGTERM."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGUSR1)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

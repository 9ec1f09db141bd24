"""Start, supervise and stop a real local tritonserver (the binary from the nvidia-pytriton wheel)."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tritonfleet.deploy.local.runtime import TritonRuntime
from tritonfleet.deploy.local.supervisor import ModelSupervisor, SupervisorOptions
from tritonfleet.deploy.local.triton_admin import TritonAdmin
from tritonfleet.deploy.server_flags import DEFAULT_EXIT_TIMEOUT_S, DEFAULT_RESPONSE_CACHE_BYTES, TritonServerFlags

LOGGER = logging.getLogger(__name__)
LOOPBACK = "127.0.0.1"
PR_SET_PDEATHSIG = 1  # <sys/prctl.h>
# glog error/fatal lines ("E1122 07:58:01.123 ...") and Triton's own load failures.
_ERROR_LINE = re.compile(r"^[EF]\d{4} |failed to load|error:|Address already in use", re.IGNORECASE)


class TritonStartError(RuntimeError):
    """tritonserver did not become ready; the message carries Triton's own error lines."""


class PortInUseError(TritonStartError):
    """A requested port is already bound by another process."""


@dataclass(frozen=True)
class ServerOptions:
    """How to start a local tritonserver.

    Ports set to 0 are replaced by free ephemeral ports. `model_control_mode="explicit"` loads `load_models` at
    start-up (default `*`: all) and enables the repository API (load/unload), which the self-healing supervisor
    uses to reload a broken model. `response_cache_bytes` sizes Triton's local response cache (0: none; ignored when
    `extra_args` carry their own `--cache-config`). `self_heal=True` (explicit mode only) starts that supervisor
    (`deploy.local.supervisor`, options in `supervisor`) once the server is ready and stops it before the server.
    The server's work folder (its backend directory and log) is removed when it stops cleanly; a server that failed
    or exited non-zero keeps its log for reading, and `keep_log=True` keeps it always (`serve` prints its path).
    """

    model_repository: Path
    host: str = LOOPBACK
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    model_control_mode: str = "none"
    load_models: tuple[str, ...] = ("*",)
    exit_timeout_s: int = DEFAULT_EXIT_TIMEOUT_S
    startup_timeout_s: float = 300.0
    log_verbose: int = 0
    extra_args: tuple[str, ...] = field(default_factory=tuple)
    response_cache_bytes: int = DEFAULT_RESPONSE_CACHE_BYTES
    self_heal: bool = False
    supervisor: SupervisorOptions = field(default_factory=SupervisorOptions)
    keep_log: bool = False


class ServingAddresses:
    """The client-side addresses of something listening on `options.host` and `options.{http,grpc,metrics}_port`
    (one tritonserver, or the fleet's balancer front): a wildcard bind is reached through loopback."""

    options: Any

    @property
    def http_url(self) -> str:
        return f"{self._client_host}:{self.options.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self._client_host}:{self.options.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self._client_host}:{self.options.metrics_port}/metrics"

    @property
    def _client_host(self) -> str:
        return LOOPBACK if self.options.host in ("0.0.0.0", "::", "") else self.options.host


class LocalTritonServer(ServingAddresses):
    """A tritonserver process serving one model repository; usable as a context manager.

    Example:
        with LocalTritonServer(ServerOptions(Path("model_repository"), http_port=0)) as server:
            print(server.http_url)
    """

    def __init__(self, options: ServerOptions, runtime: TritonRuntime | None = None) -> None:
        if options.self_heal and options.model_control_mode != "explicit":
            raise ValueError("self_heal needs model_control_mode='explicit' (it reloads models via the repository API)")
        self.options = _with_free_ports(options)
        self.runtime = runtime or TritonRuntime.discover()
        # Named now (the command line shows it), created by `start`: a server never started leaves nothing behind.
        self._workdir = Path(tempfile.gettempdir()) / f"tritonfleet-server-{uuid.uuid4().hex[:12]}"
        self.log_path = self._workdir / "tritonserver.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._start_failed = False
        self.supervisor: ModelSupervisor | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    # -- lifecycle -----------------------------------------------------------------------------------------------
    def command(self) -> list[str]:
        """The tritonserver command line (also useful to print for debugging)."""
        return tritonserver_command(self.options, self.runtime, self._workdir / "backends")

    def environment(self) -> dict[str, str]:
        """The server's environment (see `tritonserver_environment`)."""
        return tritonserver_environment(self.runtime)

    def start(self) -> LocalTritonServer:
        """Start tritonserver and block until it is ready, or raise TritonStartError with its error lines."""
        if self._process is not None:
            raise RuntimeError("server already started")
        try:
            repository = Path(self.options.model_repository)
            if not repository.is_dir():
                raise TritonStartError(f"model repository {repository} does not exist or is not a directory")
            self._check_ports_free()
            self._workdir.mkdir(mode=0o700)
            self.runtime.assemble_backend_directory(self._workdir / "backends")
            LOGGER.info("starting tritonserver: %s", " ".join(self.command()))
            self._process = start_in_own_session(self.command(), self.log_path, self.environment(), append=False)
        except BaseException:
            self._remove_workdir(keep_log=False)  # nothing ran: nothing to read
            raise
        self._wait_until_ready()
        if self.options.self_heal:
            assert self._process is not None
            self.supervisor = ModelSupervisor(self.http_url, self._process.pid, self.options.supervisor).start()
        return self

    def stop(self, timeout_s: float | None = None) -> int | None:
        """SIGTERM, let in-flight requests finish (up to --exit-timeout-secs), then SIGKILL as a last resort."""
        process = self._process
        if process is None:
            return None
        if self.supervisor is not None:
            self.supervisor.stop()  # no repairs of models that are going away
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout_s if timeout_s is not None else self.options.exit_timeout_s + 15)
            except subprocess.TimeoutExpired:
                LOGGER.warning("tritonserver did not stop in time; killing it")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=15)
        self._kill_leftover_stubs(process.pid)
        self._remove_workdir(keep_log=self.options.keep_log or self._start_failed or process.returncode != 0)
        return process.returncode

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> LocalTritonServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- health and logs -----------------------------------------------------------------------------------------
    def is_ready(self, timeout_s: float = 2.0) -> bool:
        return TritonAdmin(self.http_url, timeout_s).is_ready()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def error_lines(self, limit: int = 20) -> list[str]:
        """Triton's own error lines from its log, most relevant first (the last ones)."""
        lines = [line for line in self.log_text().splitlines() if _ERROR_LINE.search(line)]
        return lines[-limit:]

    # -- internals -----------------------------------------------------------------------------------------------
    def _check_ports_free(self) -> None:
        opts = self.options
        for name, port in (("HTTP", opts.http_port), ("gRPC", opts.grpc_port), ("metrics", opts.metrics_port)):
            if not _port_is_free(opts.host, port):
                raise PortInUseError(
                    f"{name} port {opts.host}:{port} is already in use (another tritonserver?); "
                    f"stop it or choose another port (0 picks a free one)"
                )

    def _wait_until_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.options.startup_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self._kill_leftover_stubs(self._process.pid)
                self._remove_workdir(keep_log=True)
                raise TritonStartError(self._failure_message(f"tritonserver exited with {self._process.returncode}"))
            if self.is_ready(timeout_s=1.0):
                LOGGER.info(
                    "tritonserver ready: http=%s grpc=%s metrics=%s", self.http_url, self.grpc_url, self.metrics_url
                )
                return
            time.sleep(0.25)
        message = self._failure_message(f"tritonserver not ready after {self.options.startup_timeout_s}s")
        self._start_failed = True
        self.stop()
        raise TritonStartError(message)

    def _failure_message(self, headline: str) -> str:
        errors = self.error_lines()
        details = "\n".join(errors) if errors else "\n".join(self.log_text().splitlines()[-20:])
        return f"{headline}; its log ({self.log_path}) says:\n{details}"

    def _remove_workdir(self, keep_log: bool) -> None:
        # The backend directory holds a copy of the stub (~3 MB a start); only the log is worth keeping.
        shutil.rmtree(self._workdir / "backends", ignore_errors=True)
        if not keep_log:
            shutil.rmtree(self._workdir, ignore_errors=True)

    @staticmethod
    def _kill_leftover_stubs(server_pid: int) -> None:
        # Stubs run in the server's session; a server killed hard can leave them behind holding shared memory.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(server_pid, signal.SIGKILL)


def tritonserver_command(options: ServerOptions, runtime: TritonRuntime, backend_directory: Path) -> list[str]:
    """tritonserver's command line for `options`, with `backend_directory` (see
    `TritonRuntime.assemble_backend_directory`): shared by `LocalTritonServer` and the exec launcher
    (`deploy.local.tritonserver_exec`) that tools such as Model Analyzer start instead of the bare binary. A flag in
    `options.extra_args` replaces the project's own setting of it (a `--cache-config` the whole cache setting)."""
    flags = local_flags(options, runtime, backend_directory)
    return [str(runtime.server_binary), *flags.args(overridden_by=options.extra_args), *options.extra_args]


def local_flags(options: ServerOptions, runtime: TritonRuntime, backend_directory: Path) -> TritonServerFlags:
    """The project's tritonserver flags (`deploy.server_flags`) for a local server; how they differ from the
    containers' by design is `LOCAL_DIFFERENCES`."""
    return TritonServerFlags(
        model_repository=str(Path(options.model_repository).resolve()),
        model_control_mode=options.model_control_mode,
        load_models=options.load_models,
        host=options.host,
        http_port=options.http_port,
        grpc_port=options.grpc_port,
        metrics_port=options.metrics_port,
        exit_timeout_s=options.exit_timeout_s,
        allow_gpu_metrics=False,
        response_cache_bytes=options.response_cache_bytes,
        cache_directory=str(caches_directory(runtime)),
        backend_directory=str(backend_directory),
        admin_key=None,
        log_format=None,
        log_verbose=options.log_verbose,
    )


def caches_directory(runtime: TritonRuntime) -> Path:
    """The wheel's cache implementations (`pytriton/tritonserver/caches/local/libtritoncache_local.so`), beside
    `bin/`; Triton's default `/opt/tritonserver/caches` does not exist outside its container."""
    return runtime.server_binary.parent.parent / "caches"


def tritonserver_environment(runtime: TritonRuntime) -> dict[str, str]:
    """The server's environment, set here rather than inherited so another activated venv cannot leak in.

    The python stub's embedded interpreter takes its prefix from the `python3` it finds on PATH (PYTHONPATH does not
    redirect it), so this interpreter's bin directory goes first on PATH: the stub then imports what this
    interpreter imports, the hook of an editable tritonfleet install included.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONPATH", "VIRTUAL_ENV")}
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = f"{venv_bin}:{env.get('PATH', '/usr/bin:/bin')}"
    env["VIRTUAL_ENV"] = sys.prefix
    env["LD_LIBRARY_PATH"] = ":".join(
        part for part in (runtime.library_path(), os.environ.get("LD_LIBRARY_PATH", "")) if part
    )
    return env


@contextlib.contextmanager
def local_server(model_repository: Path | str, **options: Any) -> Iterator[LocalTritonServer]:
    """A ready tritonserver for `model_repository` on free loopback ports, stopped on exit.

    The one way tests, benchmarks, the demo and the chaos run start a server: `options` are `ServerOptions` fields;
    ports default to 0 (a free port each) and the shutdown grace to 10 s.

    Example:
        with local_server("model_repository") as server:
            print(server.grpc_url)
    """
    for port in ("http_port", "grpc_port", "metrics_port"):
        options.setdefault(port, 0)
    options.setdefault("exit_timeout_s", 10)
    with LocalTritonServer(ServerOptions(model_repository=Path(model_repository), **options)) as server:
        yield server


def terminate_with_parent() -> None:
    """In the child before exec: SIGTERM tritonserver if its launcher dies, even by SIGKILL (Linux only).

    The server runs in its own session (so a Ctrl-C in the terminal reaches only the launcher, which then stops it
    gracefully); without this, a launcher killed hard would leave an orphaned server holding the ports. Linux sends
    the signal when the *thread* that started the server exits, so start servers from long-lived threads.
    """
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def start_in_own_session(
    command: list[str],
    log_path: Path,
    env: dict[str, str],
    append: bool = True,
    before_exec: Callable[[], None] = terminate_with_parent,
) -> subprocess.Popen[bytes]:
    """A child in its own session (a Ctrl-C in the terminal reaches only us; stopping it is ours to do), its stdout
    and stderr in `log_path`, no stdin, dying with this process (`before_exec` is `terminate_with_parent` or calls
    it): tritonserver, the fleet's replicas and HAProxy, the chaos study's Prometheus."""
    with log_path.open("ab" if append else "wb") as log:
        return subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
            preexec_fn=before_exec,
        )


def _with_free_ports(options: ServerOptions) -> ServerOptions:
    ports = {}
    taken: set[int] = set()
    for name in ("http_port", "grpc_port", "metrics_port"):
        port = getattr(options, name)
        if port == 0:
            port = _free_port(options.host, exclude=taken)
        taken.add(port)
        ports[name] = port
    return ServerOptions(**{**options.__dict__, **ports})


def _free_port(host: str, exclude: set[int]) -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host or LOOPBACK, 0))
            port = sock.getsockname()[1]
        if port not in exclude:
            return port
    raise PortInUseError("could not find a free port")


def _port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As tritonserver binds: a port whose old connections linger in TIME_WAIT is free to reuse.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host or LOOPBACK, port))
        except OSError:
            return False
    return True

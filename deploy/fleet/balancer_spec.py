"""The balancer's typed spec: its replicas (static addresses or DNS discovery), its ports and limits, and the
administration APIs the front refuses. `deploy.fleet.haproxy` renders it into haproxy.cfg."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

HTTP_BACKEND = "triton_http"
GRPC_BACKEND = "triton_grpc"
BACKENDS = (HTTP_BACKEND, GRPC_BACKEND)
READY_PATH = "/v2/health/ready"
# HTTP paths of the per-server administration APIs (KServe v2 extensions in Triton).
DENIED_HTTP_PATH_PREFIXES = (
    "/v2/repository",
    "/v2/systemsharedmemory",
    "/v2/cudasharedmemory",
    "/v2/trace",
    "/v2/logging",
)
DENIED_HTTP_PATH_REGEX = r"^/v2/models/[^/]+(/versions/[^/]+)?/trace"
# gRPC methods of the same APIs (inference.GRPCInferenceService in grpc_service.proto).
DENIED_GRPC_METHODS = (
    "RepositoryIndex",
    "RepositoryModelLoad",
    "RepositoryModelUnload",
    "SystemSharedMemoryStatus",
    "SystemSharedMemoryRegister",
    "SystemSharedMemoryUnregister",
    "CudaSharedMemoryStatus",
    "CudaSharedMemoryRegister",
    "CudaSharedMemoryUnregister",
    "TraceSetting",
    "LogSettings",
)
GRPC_SERVICE_PATH = "/inference.GRPCInferenceService/"
DEFAULT_MAX_REQUEST_BYTES = 1 << 20
# glibc serves allocations >= 128 KiB with a fresh mmap (zeroed pages, a page fault per 4 KiB) and unmaps them on
# free: with buffers of `tune.bufsize` (> 1 MiB here, to replay requests) every request paid that, and one replica
# behind HAProxy served 500 instead of 1,900 requests/s (measured, 8 closed-loop HTTP clients, 2 cores). Raising the
# threshold keeps the buffers on the heap: 1,530 requests/s with 1 MiB buffers. Set it in the balancer's environment
# wherever it runs on glibc (the Debian package, the official haproxy image); musl-based images need no such knob.
HAPROXY_ENVIRONMENT = {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=67108864"}
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


class HaproxyConfigError(ValueError):
    """The spec cannot be rendered, or `haproxy -c` rejected the rendered configuration."""


@dataclass(frozen=True)
class ReplicaAddress:
    """One tritonserver behind the balancer (static mode).

    Attributes:
        name: server name in both backends (`set server triton_http/<name> ...`), letters, digits, `-`, `_`.
        host: address of the replica (an IP or a name resolved once at start).
        http_port / grpc_port: the replica's own ports; the gRPC server is health-checked on `http_port`.
        weight: HAProxy weight 0..256 (relative share under leastconn; 0 = no new requests).
        enabled: False renders a spare slot in maintenance (fill it at runtime with `set server ... addr`).
    """

    name: str
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    weight: int = 100
    enabled: bool = True


@dataclass(frozen=True)
class DnsDiscovery:
    """Replicas found through DNS (Kubernetes headless Service): `slots` server-template entries named
    `<prefix>1..<prefix><slots>`, filled with the Service's A records.

    Attributes:
        service: the name to resolve, e.g. `triton-replicas.default.svc.cluster.local`.
        slots: most replicas the balancer can hold (spare slots stay in maintenance until a record fills them).
        http_port / grpc_port: the replicas' ports (the same in every pod).
        nameservers: `host:port` of DNS servers; empty: `parse-resolv-conf` (the pod's own resolver).
        hold_valid_s: how long a resolution stays valid (how soon a new pod is seen).
        prefix: server-name prefix of the slots.
    """

    service: str
    slots: int = 8
    http_port: int = 8000
    grpc_port: int = 8001
    nameservers: tuple[str, ...] = ()
    hold_valid_s: int = 5
    prefix: str = "replica"


@dataclass(frozen=True)
class BalancerSpec:
    """Everything the rendered configuration depends on; exactly one of `replicas` / `discovery`.

    Attributes:
        replicas: static replicas (local fleet), spare slots included.
        discovery: DNS discovery (Kubernetes).
        bind_host: address the fronts bind ("0.0.0.0" in a pod; loopback locally).
        http_port / grpc_port: the fronts (KServe v2 HTTP and gRPC, exactly like one tritonserver).
        metrics_port: Prometheus exporter `/metrics` and stats page `/stats`.
        stats_socket: path of the admin runtime API socket (None: no socket).
        check_interval_ms: active health-check period per replica; `fastinter` (while a check fails) is a fifth.
        check_timeout_ms: answer time allowed to one check.
        fall / rise: consecutive failed / passed checks to mark a replica down / up.
        retries: replays of a failed request (each on another replica: `option redispatch 1`).
        retry_http_503: also replay HTTP requests a replica refused with 503 (back-pressure) on another replica.
        max_request_bytes: largest request body the client sends; `tune.bufsize` is set above it, or HAProxy
            cannot replay the request.
        connect_timeout_ms / server_timeout_s / client_timeout_s / queue_timeout_s: HAProxy timeouts.
        error_window_s: window of the per-server 500/502/504 counters (stick tables) the fleet controller reads.
        maxconn: global connection limit.
        nbthread: HAProxy threads (None: HAProxy's default, one per usable core).
        shutdown_sessions_on_down: `on-marked-down shutdown-sessions`: a replica marked down has its requests cut at
            once (a hung replica's would otherwise wait out `timeout server`). The local fleet turns it off and cuts
            them itself once a down replica's requests have not ended within half a second: marking down races with
            HAProxy's replays of requests that died with a killed replica, and cutting at that instant fails them.
    """

    replicas: tuple[ReplicaAddress, ...] = ()
    discovery: DnsDiscovery | None = None
    bind_host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8404
    stats_socket: Path | None = None
    check_interval_ms: int = 1000
    check_timeout_ms: int = 800
    fall: int = 2
    rise: int = 1
    retries: int = 1
    retry_http_503: bool = True
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    connect_timeout_ms: int = 1000
    server_timeout_s: int = 300
    client_timeout_s: int = 300
    queue_timeout_s: int = 30
    error_window_s: int = 10
    maxconn: int = 4096
    nbthread: int | None = None
    shutdown_sessions_on_down: bool = True
    extra_global: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if bool(self.replicas) == (self.discovery is not None):
            raise HaproxyConfigError("a balancer spec needs either static replicas or DNS discovery (exactly one)")
        names = [replica.name for replica in self.replicas]
        if len(set(names)) != len(names):
            raise HaproxyConfigError(f"replica names must be unique, got {names}")
        for replica in self.replicas:
            if not _NAME.match(replica.name):
                raise HaproxyConfigError(f"bad replica name {replica.name!r} (letters, digits, '-', '_')")
            if not 0 <= replica.weight <= 256:
                raise HaproxyConfigError(f"weight of {replica.name} must be 0..256, got {replica.weight}")
            for port in (replica.http_port, replica.grpc_port):
                _check_port(port, f"replica {replica.name}")
        if self.discovery is not None:
            if self.discovery.slots < 1:
                raise HaproxyConfigError("discovery needs at least one slot")
            if not _NAME.match(self.discovery.prefix):
                raise HaproxyConfigError(f"bad server-template prefix {self.discovery.prefix!r}")
        ports = (self.http_port, self.grpc_port, self.metrics_port)
        for port in ports:
            _check_port(port, "balancer")
        if len(set(ports)) != len(ports):
            raise HaproxyConfigError(f"the balancer's HTTP, gRPC and metrics ports must differ, got {ports}")
        if self.retries < 0 or self.fall < 1 or self.rise < 1:
            raise HaproxyConfigError("retries must be >= 0, fall and rise >= 1")
        if self.check_timeout_ms >= self.check_interval_ms * 2 or self.check_interval_ms < 100:
            raise HaproxyConfigError("check interval must be >= 100 ms and the check timeout below twice it")
        if self.max_request_bytes < 1024:
            raise HaproxyConfigError("max_request_bytes must be >= 1024")

    @property
    def bufsize(self) -> int:
        """`tune.bufsize`: the largest request plus room for headers, rounded up to 16 KiB."""
        size = self.max_request_bytes + 32 * 1024
        return -(-size // 16384) * 16384

    @property
    def client_host(self) -> str:
        """Where a client on this machine reaches the fronts."""
        return "127.0.0.1" if self.bind_host in ("0.0.0.0", "::", "") else self.bind_host

    @property
    def server_names(self) -> tuple[str, ...]:
        if self.discovery is not None:
            return tuple(f"{self.discovery.prefix}{i}" for i in range(1, self.discovery.slots + 1))
        return tuple(replica.name for replica in self.replicas)


def _check_port(port: int, what: str) -> None:
    if not 1 <= port <= 65535:
        raise HaproxyConfigError(f"{what}: port {port} is not in 1..65535")

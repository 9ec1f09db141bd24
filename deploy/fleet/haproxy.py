"""HAProxy 2.6 configuration for a fleet of tritonservers, rendered from a typed spec.

One module renders both deployments of the balancer:

- static replicas (`BalancerSpec.replicas`): the local fleet (`python -m deploy.fleet`), every replica a
  `ReplicaAddress` on loopback; spare slots (`enabled=False`) are rendered in maintenance so a replica can be added at
  runtime through the runtime API without a reload (a reload would leave long-lived gRPC channels on the old worker);
- DNS discovery (`BalancerSpec.discovery`): Kubernetes, `server-template` slots filled from a headless Service's
  A records through a `resolvers` section.

What the configuration does (docs/deploy.md, "Fleet"):
- `mode http` everywhere, `balance leastconn`: balancing per request (per HTTP/2 stream on the gRPC front, whose bind
  and servers speak `proto h2`), so one gRPC channel spreads over every replica;
- active checks of `/v2/health/ready` every `check_interval_ms` (the gRPC servers are checked on the replica's HTTP
  port over HTTP/1.1: `check port <http> check-proto h1`), `on-marked-down shutdown-sessions` so the requests of a
  hung replica end when it is marked down;
- passive observation: `observe layer4 error-limit 1 on-error fastinter`: a connection error or timeout makes the
  next checks come every `fastinter`, so a dead replica is out within about 1.2 s. It does not mark the server down
  at once on purpose: `on-marked-down shutdown-sessions` would then cut the other requests that died with the
  replica before HAProxy replays them (measured: 1 HTTP and 2 gRPC requests failed per kill that way, 0 without).
  `observe layer7` is not used: it counts 503, the back-pressure answer of a healthy Triton, as an error. HTTP
  500/502/504 per server are counted in a stick table (the backend's own, key `srv_id`, `gpc0` = such responses)
  that the fleet controller reads through the runtime API to eject a replica answering errors;
- replay of requests that died with a replica: `retry-on conn-failure empty-response junk-response` (+ `503` on the
  HTTP backend when `retry_http_503`), `retries` (default 1) with `option redispatch 1`, so a replayed request goes
  to another replica and nothing is retried twice on the same one; `option http-buffer-request` and `tune.bufsize`
  above the largest request make the request replayable (HAProxy replays only what it still holds in its buffer);
- the front answers `/v2/health/ready` itself: 200 while at least one replica is up, else 503;
- repository (load/unload), shared-memory, trace and logging APIs reach only one replica: refused at the front
  (HTTP 403; gRPC PERMISSION_DENIED as a trailers-only answer);
- a metrics port with the built-in Prometheus exporter (`/metrics`) and the stats page (`/stats`), and an admin
  runtime API socket (drain, weights, addresses).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
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


def render_config(spec: BalancerSpec) -> str:
    """The complete haproxy.cfg text for `spec`."""
    lines: list[str] = []
    lines += _global_section(spec)
    lines += _defaults_section(spec)
    if spec.discovery is not None:
        lines += _resolvers_section(spec.discovery)
    lines += _http_frontend(spec)
    lines += _grpc_frontend(spec)
    lines += _metrics_frontend(spec)
    lines += _backend(spec, HTTP_BACKEND, grpc=False)
    lines += _backend(spec, GRPC_BACKEND, grpc=True)
    return "\n".join(lines) + "\n"


def _global_section(spec: BalancerSpec) -> list[str]:
    lines = [
        "# Rendered by tritonfleet.deploy.fleet.haproxy: edit the spec, not this file.",
        "global",
        f"    maxconn {spec.maxconn}",
        f"    tune.bufsize {spec.bufsize}",
        "    tune.maxrewrite 8192",
        # One gRPC stream may carry a whole request: a large window keeps it from stalling on flow control.
        "    tune.h2.initial-window-size 1048576",
        "    hard-stop-after 30s",
        "    log stderr format short local0 notice",
    ]
    if spec.nbthread:
        lines.append(f"    nbthread {spec.nbthread}")
    if spec.stats_socket is not None:
        lines.append(f"    stats socket {spec.stats_socket} mode 600 level admin")
        lines.append("    stats timeout 30s")
    lines += [f"    {line}" for line in spec.extra_global]
    return [*lines, ""]


def _defaults_section(spec: BalancerSpec) -> list[str]:
    return [
        "defaults",
        "    mode http",
        "    log global",
        "    option dontlognull",
        f"    timeout connect {spec.connect_timeout_ms}ms",
        f"    timeout client {spec.client_timeout_s}s",
        f"    timeout server {spec.server_timeout_s}s",
        f"    timeout queue {spec.queue_timeout_s}s",
        "    timeout http-request 30s",
        "    timeout http-keep-alive 60s",
        f"    timeout check {spec.check_timeout_ms}ms",
        "",
    ]


def _resolvers_section(discovery: DnsDiscovery) -> list[str]:
    lines = ["resolvers cluster_dns"]
    if discovery.nameservers:
        lines += [f"    nameserver dns{i} {server}" for i, server in enumerate(discovery.nameservers, 1)]
    else:
        lines.append("    parse-resolv-conf")
    lines += [
        "    resolve_retries 3",
        "    timeout resolve 1s",
        "    timeout retry 1s",
        f"    hold valid {discovery.hold_valid_s}s",
        "    hold other 5s",
        "    hold refused 5s",
        "    hold nx 5s",
        "    hold timeout 5s",
        "    hold obsolete 5s",
        "    accepted_payload_size 8192",
        "",
    ]
    return lines


def _http_frontend(spec: BalancerSpec) -> list[str]:
    denied = " ".join(DENIED_HTTP_PATH_PREFIXES)
    return [
        "frontend fleet_http",
        f"    bind {spec.bind_host}:{spec.http_port}",
        "    option http-buffer-request",
        f"    acl denied_api path_beg {denied}",
        f"    acl denied_api path_reg {DENIED_HTTP_PATH_REGEX}",
        "    http-request deny deny_status 403 if denied_api",
        # Ready while at least one replica is: answered here, not by whichever replica the request would reach.
        f"    http-request return status 200 if {{ path {READY_PATH} }} {{ nbsrv({HTTP_BACKEND}) gt 0 }}",
        f"    http-request return status 503 if {{ path {READY_PATH} }}",
        f"    default_backend {HTTP_BACKEND}",
        "",
    ]


def _grpc_frontend(spec: BalancerSpec) -> list[str]:
    methods = " ".join(GRPC_SERVICE_PATH + method for method in DENIED_GRPC_METHODS)
    return [
        "frontend fleet_grpc",
        f"    bind {spec.bind_host}:{spec.grpc_port} proto h2",
        "    option http-buffer-request",
        f"    acl denied_rpc path {methods}",
        # A trailers-only gRPC answer: status 7 = PERMISSION_DENIED, with the reason in grpc-message.
        "    http-request return status 200 hdr content-type application/grpc hdr grpc-status 7 "
        'hdr grpc-message "refused at the fleet front: administer replicas with python -m deploy.fleet ctl" '
        "if denied_rpc",
        f"    default_backend {GRPC_BACKEND}",
        "",
    ]


def _metrics_frontend(spec: BalancerSpec) -> list[str]:
    return [
        "frontend fleet_metrics",
        f"    bind {spec.bind_host}:{spec.metrics_port}",
        "    http-request use-service prometheus-exporter if { path /metrics }",
        "    stats enable",
        "    stats uri /stats",
        "    stats refresh 5s",
        "    no log",
        "",
    ]


def _backend(spec: BalancerSpec, name: str, grpc: bool) -> list[str]:
    retry_on = "conn-failure empty-response junk-response"
    if not grpc and spec.retry_http_503:
        retry_on += " 503"
    fastinter = max(100, spec.check_interval_ms // 5)
    lines = [
        f"backend {name}",
        "    balance leastconn",
        "    option httpchk",
        f"    http-check send meth GET uri {READY_PATH} ver HTTP/1.1 hdr Host fleet-check",
        "    http-check expect status 200",
        f"    retries {spec.retries}",
        f"    retry-on {retry_on}",
        "    option redispatch 1",
        # Per-server 500/502/504 counters for the fleet controller's passive ejection (503 is back-pressure).
        f"    stick-table type integer size 1k expire {spec.error_window_s * 3}s "
        f"store gpc0,gpc0_rate({spec.error_window_s}s),http_req_rate({spec.error_window_s}s)",
        "    http-response track-sc0 srv_id",
        "    http-response sc-inc-gpc0(0) if { status 500 } || { status 502 } || { status 504 }",
        f"    default-server inter {spec.check_interval_ms}ms fastinter {fastinter}ms "
        f"downinter {spec.check_interval_ms}ms fall {spec.fall} rise {spec.rise} "
        "observe layer4 error-limit 1 on-error fastinter"
        + (" on-marked-down shutdown-sessions" if spec.shutdown_sessions_on_down else "")
        + (" proto h2" if grpc else ""),
    ]
    if spec.discovery is not None:
        d = spec.discovery
        port = d.grpc_port if grpc else d.http_port
        check = f" port {d.http_port} check-proto h1" if grpc else ""
        lines.append(
            f"    server-template {d.prefix} 1-{d.slots} {d.service}:{port} check{check} "
            "resolvers cluster_dns resolve-prefer ipv4 init-addr none"
        )
    else:
        for replica in spec.replicas:
            port = replica.grpc_port if grpc else replica.http_port
            check = f" port {replica.http_port} check-proto h1" if grpc else ""
            disabled = "" if replica.enabled else " disabled"
            lines.append(
                f"    server {replica.name} {replica.host}:{port} check{check} weight {replica.weight}{disabled}"
            )
    return [*lines, ""]


def haproxy_binary() -> str:
    """Path of the `haproxy` executable, or a one-line error naming how to install it."""
    path = shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if Path(p).is_file()), None
    )
    if path is None:
        raise FileNotFoundError(
            "haproxy not found: install it (Debian: apt-get install haproxy, as scripts/setup.sh does as root)"
        )
    return path


def check_config(text: str, binary: str | None = None) -> None:
    """Validate `text` with `haproxy -c`; raises HaproxyConfigError with HAProxy's own messages."""
    with tempfile.TemporaryDirectory(prefix="tritonfleet-haproxy-check-") as tmp:
        path = Path(tmp) / "haproxy.cfg"
        path.write_text(text)
        result = subprocess.run(
            [binary or haproxy_binary(), "-c", "-q", "-f", str(path)], capture_output=True, text=True, timeout=30
        )
    if result.returncode != 0:
        raise HaproxyConfigError(f"haproxy -c rejected the configuration:\n{result.stdout}{result.stderr}".strip())

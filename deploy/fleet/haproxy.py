"""HAProxy 2.6 configuration for a fleet of tritonservers, rendered from a typed spec.

One module renders both deployments of the balancer:

- static replicas (`BalancerSpec.replicas`): the local fleet (`tritonfleet fleet`), every replica a
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

import shutil
import subprocess
import tempfile
from pathlib import Path

from tritonfleet.deploy.fleet.balancer_spec import (
    BACKENDS,
    DEFAULT_MAX_REQUEST_BYTES,
    DENIED_GRPC_METHODS,
    DENIED_HTTP_PATH_PREFIXES,
    DENIED_HTTP_PATH_REGEX,
    GRPC_BACKEND,
    GRPC_SERVICE_PATH,
    HAPROXY_ENVIRONMENT,
    HTTP_BACKEND,
    READY_PATH,
    BalancerSpec,
    DnsDiscovery,
    HaproxyConfigError,
    ReplicaAddress,
)

__all__ = [
    "BACKENDS",
    "DEFAULT_MAX_REQUEST_BYTES",
    "DENIED_GRPC_METHODS",
    "GRPC_BACKEND",
    "HAPROXY_ENVIRONMENT",
    "HTTP_BACKEND",
    "BalancerSpec",
    "DnsDiscovery",
    "HaproxyConfigError",
    "ReplicaAddress",
    "check_config",
    "haproxy_binary",
    "render_config",
]


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
        'hdr grpc-message "refused at the fleet front: administer replicas with tritonfleet fleet ctl" '
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

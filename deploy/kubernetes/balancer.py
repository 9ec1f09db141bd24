"""The Kubernetes balancer's haproxy.cfg: deploy/fleet/haproxy.py in DNS-discovery mode, committed as rendered files.

The balancer Deployment (deploy/kubernetes/base/balancer/) runs HAProxy with the same configuration as the local
fleet, except that its replicas are `server-template` slots filled from the headless Service's DNS records:
`replica1..replicaN` from `tritonfleet-triton` (the stable track) and, with the canary component,
`canary1..canaryM` from `tritonfleet-triton-canary` with a lower weight. The namespace comes from the pod's
`POD_NAMESPACE` variable at start (HAProxy expands `"${VAR}"`), so one rendering serves every namespace.

Under `balance leastconn` a server's outstanding requests follow its weight: under load, with S stable pods of weight
STABLE_WEIGHT and C canary pods of weight W, the canary track carries about C*W / (S*STABLE_WEIGHT + C*W) of them.

    python -m deploy.kubernetes.balancer            # rewrite the committed files after changing the spec
    python -m deploy.kubernetes.balancer --check    # exit 1 if a committed file differs from a fresh render
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tritonfleet.deploy.fleet.haproxy import BalancerSpec, DnsDiscovery, HaproxyConfigError, render_config

KUBERNETES = Path(__file__).resolve().parent
STABLE_SERVICE = "tritonfleet-triton"
CANARY_SERVICE = "tritonfleet-triton-canary"
CLUSTER_DOMAIN = "cluster.local"
STABLE_SLOTS = 16  # most stable pods one balancer can hold (>= the HPA's maxReplicas)
CANARY_SLOTS = 4
STABLE_WEIGHT = 100
CANARY_WEIGHT = 10  # one canary pod gets a tenth of a stable pod's share
HTTP_PORT, GRPC_PORT, METRICS_PORT = 8000, 8001, 8404
STATS_SOCKET = Path("/var/run/haproxy/admin.sock")
OUTPUTS = {
    "stable": KUBERNETES / "base/balancer/haproxy.cfg",
    "canary": KUBERNETES / "components/canary/haproxy.cfg",
}


def service_name(service: str) -> str:
    """The Service's FQDN with the namespace taken from the environment when HAProxy starts (quoted: expanded)."""
    return f'"{service}.${{POD_NAMESPACE}}.svc.{CLUSTER_DOMAIN}"'


def spec(service: str, prefix: str, slots: int, **overrides) -> BalancerSpec:
    """The Kubernetes BalancerSpec for one track. `overrides` (tests) replace BalancerSpec fields, or DnsDiscovery's
    `nameservers`, `hold_valid_s` and, as `replica_http_port`/`replica_grpc_port`, its ports."""
    renamed = {"replica_http_port": "http_port", "replica_grpc_port": "grpc_port"}
    discovery_fields = {*renamed, "nameservers", "hold_valid_s"}
    discovery = {"http_port": HTTP_PORT, "grpc_port": GRPC_PORT}
    discovery.update({renamed.get(k, k): v for k, v in overrides.items() if k in discovery_fields})
    balancer = {
        "bind_host": "0.0.0.0",
        "http_port": HTTP_PORT,
        "grpc_port": GRPC_PORT,
        "metrics_port": METRICS_PORT,
        "stats_socket": STATS_SOCKET,
    }
    balancer.update({k: v for k, v in overrides.items() if k not in discovery_fields})
    return BalancerSpec(discovery=DnsDiscovery(service=service, slots=slots, prefix=prefix, **discovery), **balancer)


def _templates(text: str) -> list[str]:
    lines = [line for line in text.splitlines() if line.lstrip().startswith("server-template ")]
    if len(lines) != 2:  # one per backend (HTTP, gRPC)
        raise HaproxyConfigError(f"expected 2 server-template lines, found {len(lines)}")
    return lines


def render(
    canary_weight: int | None = None,
    stable_service: str = service_name(STABLE_SERVICE),
    canary_service: str = service_name(CANARY_SERVICE),
    **overrides,
) -> str:
    """haproxy.cfg for the stable track alone, or with the canary track's slots at `canary_weight`.
    `overrides` (tests: loopback ports, a local DNS server) go to `spec`."""
    text = render_config(spec(stable_service, "replica", STABLE_SLOTS, **overrides))
    stable = _templates(text)
    weighted = [f"{line} weight {STABLE_WEIGHT}" for line in stable]
    if canary_weight is not None:
        if not 0 <= canary_weight <= 256:
            raise HaproxyConfigError(f"canary weight must be 0..256, got {canary_weight}")
        canary = _templates(render_config(spec(canary_service, "canary", CANARY_SLOTS, **overrides)))
        weighted = [f"{s}\n{c} weight {canary_weight}" for s, c in zip(weighted, canary, strict=True)]
    for old, new in zip(stable, weighted, strict=True):
        text = text.replace(old + "\n", new + "\n", 1)
    header = (
        "# Kubernetes balancer, rendered by `python -m deploy.kubernetes.balancer` (test: a fresh render equals it)."
    )
    return f"{header}\n{text}"


def renders() -> dict[str, str]:
    return {"stable": render(), "canary": render(CANARY_WEIGHT)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed files instead of writing")
    args = parser.parse_args(argv)
    stale = []
    for name, text in renders().items():
        path = OUTPUTS[name]
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print(f"stale (run python -m deploy.kubernetes.balancer): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

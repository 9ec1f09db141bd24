"""A fleet of local tritonservers behind HAProxy (issue 17): `tritonfleet fleet`, `Fleet`, the HAProxy config."""

from tritonfleet.deploy.fleet.fleet import CanaryPolicy, CanaryReport, Fleet, FleetError, FleetOptions
from tritonfleet.deploy.fleet.haproxy import BalancerSpec, DnsDiscovery, ReplicaAddress, render_config

__all__ = [
    "BalancerSpec",
    "CanaryPolicy",
    "CanaryReport",
    "DnsDiscovery",
    "Fleet",
    "FleetError",
    "FleetOptions",
    "ReplicaAddress",
    "render_config",
]

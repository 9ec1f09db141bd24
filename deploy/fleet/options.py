"""A fleet's options and its planning: replica count, core sets, GPUs, the canary policy (`deploy.fleet.fleet`)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tritonfleet.deploy.fleet.haproxy import DEFAULT_MAX_REQUEST_BYTES
from tritonfleet.deploy.local.server import LOOPBACK, _free_port

FULL_WEIGHT = 100


class FleetError(RuntimeError):
    """An operation the fleet refuses or could not complete (one line, says why)."""


# -- planning ---------------------------------------------------------------------------------------------------------


def visible_gpus() -> tuple[int, ...]:
    """GPU ids this process may use: CUDA_VISIBLE_DEVICES when set, else what `nvidia-smi -L` lists."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return tuple(int(part) for part in env.split(",") if part.strip().isdigit())
    if shutil.which("nvidia-smi") is None:
        return ()
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return tuple(range(sum(1 for line in listing.splitlines() if line.startswith("GPU "))))


def usable_cores() -> tuple[int, ...]:
    return tuple(sorted(os.sched_getaffinity(0)))


def auto_replicas(cores: int, gpus: int) -> int:
    """One replica per GPU; on CPU one per 2 cores (each replica keeps room for its engines and stubs), at least 1."""
    return gpus if gpus else max(1, min(cores // 2, 8))


def plan_cores(replicas: int, cores: tuple[int, ...], oversubscribe: bool = False) -> list[tuple[int, ...]]:
    """Disjoint core sets, one per replica, covering `cores`; more replicas than cores only with `oversubscribe`."""
    if replicas < 1:
        raise FleetError(f"--replicas must be >= 1, got {replicas}")
    if replicas > len(cores):
        if not oversubscribe:
            raise FleetError(
                f"{replicas} replicas on {len(cores)} core(s) would oversubscribe them: use at most {len(cores)} "
                "replicas, or pass --oversubscribe"
            )
        return [(cores[i % len(cores)],) for i in range(replicas)]
    share, extra = divmod(len(cores), replicas)
    plans, start = [], 0
    for i in range(replicas):
        size = share + (1 if i < extra else 0)
        plans.append(tuple(cores[start : start + size]))
        start += size
    return plans


# -- options ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CanaryPolicy:
    """When a canary is promoted or rolled back (issue 17): after `min_requests` canary requests or `max_window_s`,
    roll back when its error ratio > max(`max_error_ratio`, `error_ratio_factor` x the rest's) or its p99 is both >
    `p99_factor` x the rest's (median of the other replicas' p99, from Triton's summaries) and more than
    `p99_slack_ms` above it; promote otherwise. The slack keeps a few milliseconds of scheduling noise on a fast
    model (7 vs 5 ms) from rolling back a good version. A canary that has already failed `abort_failures` requests
    with an error ratio above the limit is rolled back at once (a broken version need not burn the whole window)."""

    min_requests: int = 200
    max_window_s: float = 60.0
    max_error_ratio: float = 0.01
    error_ratio_factor: float = 2.0
    p99_factor: float = 1.5
    p99_slack_ms: float = 10.0
    abort_failures: int = 3
    poll_s: float = 0.1

    def error_ratio_limit(self, rest_error_ratio: float) -> float:
        return max(self.max_error_ratio, self.error_ratio_factor * rest_error_ratio)


@dataclass(frozen=True)
class FleetOptions:
    """How to run a fleet (`tritonfleet fleet --help` names the same knobs).

    Attributes:
        replicas: replica count, or "auto" (one per GPU; on CPU one per 2 cores).
        max_replicas: balancer slots (the most replicas scale-out can reach without a reload); None: max(8, 2 x N).
        gpus: GPU ids, one replica each; None: detect (CUDA_VISIBLE_DEVICES / nvidia-smi); (): CPU only.
        oversubscribe: allow more replicas than cores (they then share cores; tests and the chaos study on 2 cores).
        launcher_args: extra `tritonfleet serve` arguments for every replica (tritonserver flags, cache flags, ...).
        control_port: the loopback control API (None: none).
        eject_min_errors / eject_error_ratio: passive ejection of a replica answering 500/502/504 (HTTP).
    """

    model_repository: Path
    replicas: int | str = "auto"
    host: str = LOOPBACK
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    control_port: int | None = 8003
    max_replicas: int | None = None
    gpus: tuple[int, ...] | None = None
    oversubscribe: bool = False
    launcher_args: tuple[str, ...] = ()
    startup_timeout_s: float = 300.0
    exit_timeout_s: int = 10
    drain_timeout_s: float = 60.0
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    check_interval_ms: int = 1000
    restart_dead_replicas: bool = True
    eject_min_errors: int = 5
    eject_error_ratio: float = 0.5
    canary: CanaryPolicy = field(default_factory=CanaryPolicy)
    workdir: Path | None = None


@dataclass
class CanaryReport:
    model: str
    version: str
    previous: str
    replica: str
    weight: int
    decision: str = "running"
    reason: str = ""
    figures: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def _with_free_ports(options: FleetOptions) -> FleetOptions:
    """Ports given as 0 replaced by free loopback ports (tests, studies)."""
    taken: set[int] = set()
    ports = {}
    for name in ("http_port", "grpc_port", "metrics_port", "control_port"):
        port = getattr(options, name)
        if port == 0:
            port = _free_port(options.host, exclude=taken)
        if port is not None:
            taken.add(port)
        ports[name] = port
    return dataclasses.replace(options, **ports)

"""Fleet chaos study (`make fleet-chaos` -> reports/fleet.md): a fleet of local replicas behind HAProxy under
closed-loop load, while a replica is killed (SIGKILL) or hung (SIGSTOP), every replica is updated one at a time, the
fleet scales 2 -> 3 -> 2, and a deliberately broken canary is rolled out; plus throughput through the front against
the same replicas driven directly, per-replica shares (over one gRPC connection too) and a real Prometheus scraping
HAProxy's exporter with deploy/monitoring's rules, where the `FleetReplicaDown` alert must fire and resolve.

Load: `FleetLoad` workers, each in one of two modes:
- `project`: the project's client stack (`tritonfleet.client` Transport + its retry policy), the client a user runs;
- `plain`: a bare tritonclient without retries, which sees every failure the balancer lets through.

The quick mode (`--quick`) runs every scenario shorter, on the tiny ONNX model; the full run uses the same model
(the fleet's behaviour, not the model's speed, is measured) with longer load windows and 3 throughput rounds.
"""

from tritonfleet.loadtest.fleet_chaos.load import FleetLoad, WorkerStats, summarize
from tritonfleet.loadtest.fleet_chaos.model import (
    FEATURES,
    INPUTS,
    MODEL,
    OUTPUT,
    Workload,
    add_version,
    build_repository,
)
from tritonfleet.loadtest.fleet_chaos.report import render_report
from tritonfleet.loadtest.fleet_chaos.scenarios import StudyConfig
from tritonfleet.loadtest.fleet_chaos.study import main, run_study

__all__ = [
    "FEATURES", "INPUTS", "MODEL", "OUTPUT", "FleetLoad", "StudyConfig", "WorkerStats", "Workload", "add_version",
    "build_repository", "main", "render_report", "run_study", "summarize",
]  # fmt: skip

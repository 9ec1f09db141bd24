"""The fleet chaos study run end to end and its command line."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from tritonfleet.contract.command_line import HelpFormatter
from tritonfleet.loadtest.fleet_chaos.model import (
    Workload,
    build_repository,
)
from tritonfleet.loadtest.fleet_chaos.prometheus import Prometheus
from tritonfleet.loadtest.fleet_chaos.report import machine, render_report
from tritonfleet.loadtest.fleet_chaos.scenarios import (
    StudyConfig,
    scenario_canary,
    scenario_hang,
    scenario_kill,
    scenario_rolling,
    scenario_scale,
    scenario_spread,
    scenario_throughput,
)
from tritonfleet.loadtest.studies.header import command_line
from tritonfleet.loadtest.studies.repository import export_esm2_repository

LOGGER = logging.getLogger("tritonfleet.loadtest.fleet_chaos")
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _export_esm2(output: Path, results: dict[str, Any]) -> Path | None:
    """ESM-2 8M with random weights (ONNX, fp32) for the throughput rounds; None (and why, in `results`) on failure."""
    try:
        if not (output / "esm2").is_dir():
            export_esm2_repository(output, "8M", gpus="none", precision="fp32", formats=("onnx",))
        return output
    except Exception as error:  # noqa: BLE001 - the study goes on with the tiny model and says so
        results["esm2_export_error"] = f"{type(error).__name__}: {error}"
        LOGGER.warning("ESM-2 export failed, throughput on the tiny model: %s", error)
        return None


def run_study(args: argparse.Namespace) -> dict[str, Any]:
    from tritonfleet.deploy.fleet import CanaryPolicy, Fleet, FleetOptions

    config = StudyConfig.make(args.quick)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="tritonfleet-fleet-chaos-"))
    repository = build_repository(workdir / "repository")
    options = FleetOptions(
        repository,
        replicas=2,
        http_port=0,
        grpc_port=0,
        metrics_port=0,
        control_port=None,
        oversubscribe=True,
        max_replicas=4,
        startup_timeout_s=180,
        exit_timeout_s=5,
        canary=CanaryPolicy(),
        workdir=workdir / "fleet",
    )
    started = time.monotonic()
    results: dict[str, Any] = {"machine": machine(), "load_before": [round(v, 1) for v in os.getloadavg()]}
    throughput_repository = args.throughput_repository
    if throughput_repository is None and not args.quick:
        throughput_repository = _export_esm2(workdir / "esm2-repository", results)
    if throughput_repository is not None:
        LOGGER.info("throughput rounds on ESM-2 (%s)", throughput_repository)
        esm2_options = dataclasses.replace(options, model_repository=throughput_repository, workdir=workdir / "esm2")
        with Fleet(esm2_options) as fleet:
            results["throughput"] = scenario_throughput(fleet, config, Workload.esm2())
    with Fleet(options) as fleet:
        prometheus = None
        try:
            prometheus = Prometheus(fleet.metrics_url.split("//", 1)[1].split("/", 1)[0], workdir).start()
        except (FileNotFoundError, RuntimeError) as error:
            results["prometheus"] = str(error)
            LOGGER.warning("no Prometheus: %s", error)
        try:
            if "throughput" not in results:
                LOGGER.info("throughput rounds on the tiny model")
                results["throughput"] = scenario_throughput(fleet, config)
            LOGGER.info("per-replica shares")
            results["spread"] = scenario_spread(fleet, config)
            LOGGER.info("kill -9")
            results["kill"] = scenario_kill(fleet, config)
            LOGGER.info("SIGSTOP")
            results["hang"] = scenario_hang(fleet, config, prometheus)
            LOGGER.info("rolling update")
            results["rolling"] = scenario_rolling(fleet, repository, config)
            LOGGER.info("scale 2 -> 3 -> 2")
            results["scale"] = scenario_scale(fleet, config)
            LOGGER.info("broken canary")
            results["canary"] = scenario_canary(fleet, repository, args.canary_weight)
            results["events"] = fleet.events
        finally:
            if prometheus is not None:
                prometheus.stop()
    results["wall_s"] = round(time.monotonic() - started)
    results["load_after"] = [round(v, 1) for v in os.getloadavg()]
    return results


def main(argv: list[str] | None = None, prog: str = "python -m tritonfleet.loadtest.fleet_chaos") -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Fleet chaos study: kill/hang a replica, rolling update, scale, broken canary, throughput "
        "through the front vs direct, Prometheus alert; writes a markdown report.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="short windows (about 3 min): a smoke run")
    parser.add_argument("--output", type=Path, default=None, help="default: reports/fleet.md (quick: fleet_quick.md)")
    parser.add_argument("--canary-weight", type=float, default=10.0, help="broken canary's traffic share, percent")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument(
        "--throughput-repository",
        type=Path,
        default=None,
        help="an exported ESM-2 repository for the throughput rounds (default: export ESM-2 8M; --quick: tiny model)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    output = args.output or PROJECT_ROOT / "reports" / ("fleet_quick.md" if args.quick else "fleet.md")
    command = command_line(prog, argv)
    results = run_study(args)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render_report(results, command.strip(), args.quick))
    print(f"report: {output}")
    return 0

"""One-run measurement of priorities: interactive latency and bulk throughput with and without priority levels.

    python -m tritonfleet.loadtest.priorities            # (make priorities) ~15 min on 2 cores -> reports/priorities.md

Three phases of the Locust mixed scenario (loadtest/locustfile.py) against the `esm2` ensemble, each on its own
local server:

1. idle: interactive users only, on the repository with priorities;
2. without priorities: bulk users (64-sequence requests of long proteins, back to back) saturate the server while
   interactive users send single short proteins; the repository has one first-come queue per model (the
   configs before priorities: `--no-priorities`);
3. with priorities: the same load on the default configs (interactive level 1, bulk level 2).

Both repositories hold the same exported network (random ESM-2 weights); only the configs differ. Interactive
users start after the bulk backlog has formed, throughput is counted after a warm-up, and every run drains (the
stop timeout exceeds the client timeout), so each request ends answered: ok, refused (UNAVAILABLE: queue full or
its queue-wait budget / deadline ran out) or an error; `unanswered` counts any that never got an answer.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tritonfleet.contract.model_config import CONFIG_FILENAME, read_config
from tritonfleet.deploy.local import local_server
from tritonfleet.export.devices import plan_devices
from tritonfleet.export.model_config import BatchingOptions, PriorityQueues, default_batching
from tritonfleet.loadtest.bench.report import machine_description
from tritonfleet.loadtest.run import PROJECT_ROOT, LoadRunConfig, MixedScenario, run_locust
from tritonfleet.loadtest.slo import SloPolicy
from tritonfleet.loadtest.workload import percentile

SERVED_MODELS = ("esm2_tokenizer", "esm2_onnx", "esm2")
TARGET_P99_RATIO = 0.3  # interactive p99 with priorities / without, at most
TARGET_THROUGHPUT_RATIO = 0.9  # bulk throughput with priorities / without, at least


@dataclass(frozen=True)
class PrioritiesBenchConfig:
    """What one measurement does (defaults sized for a 2-core CPU, where one 64-sequence bulk request of the `long`
    mix runs 5-15 s on one instance).

    Attributes:
        run_time_s: time each loaded condition runs, split over `rounds` alternating runs (idle: `idle_time_s`).
        interactive_budget_ms: the interactive queue-wait budget of the priority repository; large here so the
            latency of every interactive request is measured instead of refused (on 2 cores a running bulk
            request holds an instance for ~10 s; with the default 1 s budget most would be refused).
        warmup_s: the interactive users' start delay and the part of each phase left out of the throughput.
    """

    scenario: MixedScenario = field(
        default_factory=lambda: MixedScenario(
            interactive_users=6, bulk_users=10, bulk_batch=64, interactive_think_s=1.0, protocol="grpc"
        )
    )
    run_time_s: float = 300.0
    rounds: int = 2
    idle_time_s: float = 60.0
    warmup_s: float = 30.0
    timeout_s: float = 600.0
    interactive_budget_ms: float = 60_000.0
    model_size: str = "8M"
    precision: str = "auto"
    cpu_cores: int | None = None
    report_dir: Path = PROJECT_ROOT / "reports"
    name: str = "priorities"

    @property
    def run_slice_s(self) -> float:
        """Length of one run of a loaded condition (`run_time_s` split over `rounds`)."""
        return self.run_time_s / self.rounds

    def with_quick_settings(self) -> PrioritiesBenchConfig:
        """A smoke-sized run (a minute or two): few users, short phases, short bulk requests."""
        scenario = dataclasses.replace(self.scenario, interactive_users=2, bulk_users=4, bulk_batch=16)
        return dataclasses.replace(
            self, scenario=scenario, run_time_s=60.0, idle_time_s=10.0, warmup_s=5.0, timeout_s=120.0,
            name=f"{self.name}_quick",
        )  # fmt: skip


@dataclass(frozen=True)
class PhaseResult:
    """One condition's Locust summary (pooled over its runs) and the 1-minute load average at each run's start and
    end (this process's load included)."""

    name: str
    summary: dict
    loads: tuple[tuple[float, float], ...]

    def row(self, traffic_class: str) -> dict:
        return self.summary.get("by_class", {}).get(traffic_class, {})

    def p(self, traffic_class: str, quantile: int) -> float:
        return float(self.row(traffic_class).get("latency_ms", {}).get(f"p{quantile}", math.nan))

    def throughput(self, traffic_class: str) -> float:
        return float(self.row(traffic_class).get("sequences_per_s", math.nan))


def export_repositories(config: PrioritiesBenchConfig, work_dir: Path) -> tuple[Path, Path]:
    """The ESM-2 repository with priorities (the bench's interactive budget) and a copy with one queue per model."""
    from tritonfleet.export.esm2 import export_esm2

    devices = plan_devices("none", cpu_cores=config.cpu_cores)
    budget_us = round(config.interactive_budget_ms * 1000)

    def batching(priorities: PriorityQueues | None) -> dict[str, BatchingOptions]:
        return {
            "batching": dataclasses.replace(default_batching(devices), priorities=priorities),
            "tokenizer_batching": dataclasses.replace(default_batching(devices, tokenizer=True), priorities=priorities),
        }

    with_priorities, without = work_dir / "with_priorities", work_dir / "without_priorities"
    export_esm2(
        with_priorities,
        random_init=config.model_size,
        precision=config.precision,
        devices=devices,
        formats=("onnx",),
        parity_samples=0,
        **batching(PriorityQueues(interactive_budget_us=budget_us)),
    )
    shutil.copytree(with_priorities, without)
    export_esm2(
        without,
        random_init=config.model_size,
        precision=config.precision,
        devices=devices,
        configs_only=True,
        formats=("onnx",),
        **batching(None),
    )
    return with_priorities, without


def run_phase(
    name: str, repository: Path, config: PrioritiesBenchConfig, scenario: MixedScenario, run_time_s: float
) -> PhaseResult:
    load_before = os.getloadavg()[0]
    print(f"== {name}: {repository.name}, load average {load_before:.2f}", flush=True)
    with local_server(repository, model_control_mode="explicit", load_models=SERVED_MODELS) as server:
        run = LoadRunConfig(
            http_url=server.http_url,
            grpc_url=server.grpc_url,
            model="esm2",
            run_time_s=run_time_s,
            report_dir=config.report_dir / f"{config.name}_runs",
            name=name,
            mixed=scenario,
            timeout_s=config.timeout_s,
            stop_timeout_s=config.timeout_s + 10,
            measure_after_s=config.warmup_s,
        )
        run_locust(run, SloPolicy(p99_latency_ms=config.timeout_s * 1000))
    summary_path = run.report_dir / f"{name}_summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    return PhaseResult(name, summary, ((load_before, os.getloadavg()[0]),))


COUNTS = ("requests", "successes", "errors", "rejections", "expired", "sequences", "measured_sequences", "unanswered")


def pool_runs(name: str, runs: Sequence[PhaseResult]) -> PhaseResult:
    """One condition measured in several runs: counts added, latencies pooled before taking percentiles, throughput
    over the summed measurement windows."""
    measured_s = sum(float(run.summary.get("measured_s", 0.0)) for run in runs)
    classes = sorted({name for run in runs for name in run.summary.get("by_class", {})})
    by_class = {}
    for traffic_class in classes:
        rows = [run.row(traffic_class) for run in runs if run.row(traffic_class)]
        latencies = [value for row in rows for value in row.get("latencies_ms", [])]
        pooled = {key: sum(int(row.get(key, 0)) for row in rows) for key in COUNTS}
        pooled["sequences_per_s"] = pooled["measured_sequences"] / measured_s if measured_s > 0 else math.nan
        pooled["latency_ms"] = {f"p{q}": percentile(latencies, q) for q in (50, 90, 99)}
        by_class[traffic_class] = pooled
    summary = {
        "runs": len(runs),
        "per_run": [
            {
                "name": run.name,
                "bulk_sequences_per_s": run.throughput("bulk"),
                "interactive_p99_ms": run.p("interactive", 99),
            }
            for run in runs
        ],
        "measured_s": measured_s,
        "errors": sum(int(run.summary.get("errors", 0)) for run in runs),
        "unanswered": sum(int(run.summary.get("unanswered", 0)) for run in runs) if runs else "n/a",
        "by_class": by_class,
    }
    if not all(run.summary for run in runs):
        summary["missing_runs"] = sum(1 for run in runs if not run.summary)
    return PhaseResult(name, summary, tuple(load for run in runs for load in run.loads))


def run_bench(config: PrioritiesBenchConfig, work_dir: Path) -> tuple[PrioritiesBenchConfig, list[PhaseResult]]:
    """Runs the phases; returns the config with its precision resolved ("auto" -> what was exported).

    The loaded conditions alternate in `rounds` runs each, ordered without/with, with/without, ... so a change in
    the machine's background load during the measurement hits both alike; each condition's runs are pooled.
    """
    with_priorities, without = export_repositories(config, work_dir)
    network = read_config(with_priorities / "esm2_onnx" / CONFIG_FILENAME)
    config = dataclasses.replace(config, precision=network.parameters["precision"].string_value)
    idle = dataclasses.replace(config.scenario, bulk_users=0, interactive_start_delay_s=0.0)
    loaded = dataclasses.replace(config.scenario, interactive_start_delay_s=config.warmup_s)
    phases = [run_phase("idle", with_priorities, dataclasses.replace(config, warmup_s=0.0), idle, config.idle_time_s)]
    runs: dict[str, list[PhaseResult]] = {"without_priorities": [], "with_priorities": []}
    conditions = [("without_priorities", without), ("with_priorities", with_priorities)]
    for round_number in range(1, config.rounds + 1):
        for name, repository in conditions if round_number % 2 else reversed(conditions):
            runs[name].append(run_phase(f"{name}_{round_number}", repository, config, loaded, config.run_slice_s))
    return config, phases + [pool_runs(name, results) for name, results in runs.items()]


def _loads(phase: PhaseResult) -> str:
    return ", ".join(f"{start:.1f}-{end:.1f}" for start, end in phase.loads)


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator and not math.isnan(denominator) else math.nan


def _ms(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:,.0f}"


def verdicts(phases: Sequence[PhaseResult]) -> dict[str, float | bool]:
    by_name = {phase.name: phase for phase in phases}
    without, with_ = by_name["without_priorities"], by_name["with_priorities"]
    p99_ratio = _ratio(with_.p("interactive", 99), without.p("interactive", 99))
    throughput_ratio = _ratio(with_.throughput("bulk"), without.throughput("bulk"))
    unanswered = sum(int(phase.summary.get("unanswered", 0)) for phase in phases)
    errors = sum(int(phase.summary.get("errors", 0)) for phase in phases)
    return {
        "interactive_p99_ratio": p99_ratio,
        "bulk_throughput_ratio": throughput_ratio,
        "p99_target_met": p99_ratio <= TARGET_P99_RATIO,
        "throughput_target_met": throughput_ratio >= TARGET_THROUGHPUT_RATIO,
        "unanswered": unanswered,
        "errors": errors,
        "every_request_answered": unanswered == 0
        and errors == 0
        and all(phase.summary and not phase.summary.get("missing_runs") for phase in phases),
    }


def render_markdown(config: PrioritiesBenchConfig, phases: Sequence[PhaseResult], command: str) -> str:
    result = verdicts(phases)
    scenario = config.scenario
    machine = machine_description()
    lines = [
        "# Priorities: interactive latency and bulk throughput on one server",
        "",
        f"Command: `{command}` ({time.strftime('%Y-%m-%d')}). Machine: {machine['cpu_model']}, "
        f"{machine['usable_cores']} usable cores, no GPU; ESM-2 {config.model_size} with random weights "
        f"({config.precision}), CPU plan "
        "(one single-threaded `esm2_onnx` instance per core), Locust mixed scenario against the `esm2` ensemble "
        f"over {scenario.protocol}.",
        "",
        f"Load: {scenario.bulk_users} bulk users send {scenario.bulk_batch}-sequence requests of long proteins "
        f"(length mix `{scenario.bulk_length_mix}`, length-sorted as `embed-fasta` sends them) back to back; "
        f"{scenario.interactive_users} interactive users send one short protein (mix "
        f"`{scenario.interactive_length_mix}`) and pause {0.5 * scenario.interactive_think_s:g}-"
        f"{1.5 * scenario.interactive_think_s:g} s (uniform) between answers, starting {config.warmup_s:g} s after "
        f"the bulk users. Each loaded condition runs {config.rounds} x {config.run_slice_s:g} s on a fresh server, "
        "alternating (without, with, with, without, ...) so that changes in the machine's background load hit both "
        f"alike; its runs are pooled (idle: {config.idle_time_s:g} s). Bulk throughput counts sequences answered "
        f"from {config.warmup_s:g} s into a run until its users stop; every run then drains its in-flight requests. "
        "Load avg: the 1-minute load average at the start and end of each run, this run's own processes included "
        "(its two busy instances alone make about 2); more means other work shared the 2 cores.",
        "",
        "| phase | interactive p50 ms | interactive p99 ms | interactive ok / rejected / expired / errors | "
        "bulk seq/s | bulk p50 ms | bulk ok / rejected / expired / errors | unanswered | load avg per run |",
        "|---|---:|---:|---|---:|---:|---|---:|---|",
    ]
    for phase in phases:
        interactive, bulk = phase.row("interactive"), phase.row("bulk")

        def outcomes(row: dict) -> str:
            if not row:
                return "-"
            return " / ".join(str(row.get(key, 0)) for key in ("successes", "rejections", "expired", "errors"))

        bulk_rate = f"{phase.throughput('bulk'):.2f}" if bulk else "-"
        bulk_p50 = _ms(phase.p("bulk", 50)) if bulk else "-"
        lines.append(
            f"| {phase.name.replace('_', ' ')} | {_ms(phase.p('interactive', 50))} | {_ms(phase.p('interactive', 99))} "
            f"| {outcomes(interactive)} | {bulk_rate} | {bulk_p50} | {outcomes(bulk)} | "
            f"{phase.summary.get('unanswered', 'n/a')} | {_loads(phase)} |"
        )
    per_run = [
        f"{phase.name.replace('_', ' ')}: "
        + ", ".join(f"{run['bulk_sequences_per_s']:.1f} / {_ms(run['interactive_p99_ms'])}" for run in runs)
        for phase in phases
        if (runs := phase.summary.get("per_run"))
    ]
    if per_run:
        lines += ["", "Each run (bulk seq/s / interactive p99 ms): " + "; ".join(per_run) + "."]
    lines += [
        "",
        "| target | measured | met |",
        "|---|---:|---|",
        f"| interactive p99 with priorities <= {TARGET_P99_RATIO}x without | {result['interactive_p99_ratio']:.3f}x | "
        f"{'yes' if result['p99_target_met'] else 'NO'} |",
        f"| bulk throughput with priorities >= {TARGET_THROUGHPUT_RATIO}x without | "
        f"{result['bulk_throughput_ratio']:.3f}x | {'yes' if result['throughput_target_met'] else 'NO'} |",
        f"| every request answered (ok, UNAVAILABLE or expired; none hangs) | {result['unanswered']} unanswered, "
        f"{result['errors']} errors | {'yes' if result['every_request_answered'] else 'NO'} |",
        "",
        *_what_bounds_it(config, phases),
        f"The priority repository's interactive queue-wait budget was {config.interactive_budget_ms:g} ms for this "
        "run (the export default is 1000 ms): on this CPU a running 64-sequence bulk request holds an instance for "
        "seconds and Triton does not preempt it, so with the default budget most interactive requests would be "
        "refused rather than measured. Per-phase Locust CSV/HTML and summaries: "
        f"`reports/{config.name}_runs/` (not committed).",
    ]
    return "\n".join(lines) + "\n"


def _what_bounds_it(config: PrioritiesBenchConfig, phases: Sequence[PhaseResult]) -> list[str]:
    """The paragraph that explains the interactive latencies from the bulk execution time measured in the run."""
    by_name = {phase.name: phase for phase in phases}
    without, with_ = by_name.get("without_priorities"), by_name.get("with_priorities")
    if without is None or with_ is None or not without.throughput("bulk") > 0:
        return []
    scenario = config.scenario
    instances = plan_devices("none", cpu_cores=config.cpu_cores).total_instances
    execution_s = scenario.bulk_batch * instances / without.throughput("bulk")
    return [
        "What bounds the interactive latency: Triton does not preempt a running execution, so even first in line an "
        f"interactive request waits for one of the {instances} instances to finish its current bulk request; "
        f"{scenario.bulk_batch} sequences hold an instance for about {execution_s:.1f} s on average here "
        f"({scenario.bulk_batch} x {instances} instances / {without.throughput('bulk'):.2f} sequences/s), against an "
        f"interactive p99 of {with_.p('interactive', 99) / 1000:.1f} s with priorities. Without them it also waits "
        f"for the bulk requests queued ahead ({scenario.bulk_users} bulk users keep about "
        f"{max(0, scenario.bulk_users - instances)} queued): p99 {without.p('interactive', 99) / 1000:.1f} s. "
        "Smaller bulk requests or faster instances (GPUs) lower the first figure; more bulk users raise only the "
        "second.",
        "",
    ]


def build_parser() -> argparse.ArgumentParser:
    defaults = PrioritiesBenchConfig()
    parser = argparse.ArgumentParser(
        prog="python -m tritonfleet.loadtest.priorities", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="smoke-sized run (a minute or two)")
    parser.add_argument(
        "--run-time-s", type=float, default=None, help=f"per loaded phase (default {defaults.run_time_s:g})"
    )
    parser.add_argument("--bulk-users", type=int, default=None)
    parser.add_argument("--interactive-users", type=int, default=None)
    parser.add_argument("--interactive-budget-ms", type=float, default=None)
    parser.add_argument("--cpu-cores", type=int, default=None, help="CPU plan cores (default: this process's)")
    parser.add_argument("--precision", default=defaults.precision, help="export precision (default: %(default)s)")
    parser.add_argument("--report-dir", type=Path, default=defaults.report_dir)
    parser.add_argument("--work-dir", type=Path, default=None, help="where the repositories go (default: a temp dir)")
    return parser


def config_from_args(args: argparse.Namespace) -> PrioritiesBenchConfig:
    config = PrioritiesBenchConfig(report_dir=args.report_dir, cpu_cores=args.cpu_cores, precision=args.precision)
    if args.quick:
        config = config.with_quick_settings()
    users = {key: value for key, value in (("bulk_users", args.bulk_users),
             ("interactive_users", args.interactive_users)) if value is not None}  # fmt: skip
    overrides = {key: value for key, value in (("run_time_s", args.run_time_s),
                 ("interactive_budget_ms", args.interactive_budget_ms)) if value is not None}  # fmt: skip
    return dataclasses.replace(config, scenario=dataclasses.replace(config.scenario, **users), **overrides)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))  # stop the servers on the way out
    config = config_from_args(args)
    command = "python -m tritonfleet.loadtest.priorities " + " ".join(argv if argv is not None else sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="priorities-") as temporary:
        work_dir = args.work_dir or Path(temporary)
        config, phases = run_bench(config, work_dir)
    config.report_dir.mkdir(parents=True, exist_ok=True)
    report = config.report_dir / f"{config.name}.md"
    report.write_text(render_markdown(config, phases, command.strip()))
    (config.report_dir / f"{config.name}.json").write_text(
        json.dumps(
            {
                "verdicts": verdicts(phases),
                "phases": {p.name: p.summary for p in phases},
                "load_average": {p.name: p.loads for p in phases},
            },
            indent=2,
            default=float,
        )
    )
    print(report.read_text())
    return 0 if verdicts(phases)["every_request_answered"] else 1


if __name__ == "__main__":
    sys.exit(main())

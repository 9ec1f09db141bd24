"""CPU plan study: which instance count x engine threads x batching policy serves `esm2_onnx` best on this machine,
and how close served comes to the raw engine at the same thread budget.

    python -m tritonfleet.loadtest.cpu_plan [--precision int8] [--output reports/cpu_plan.md]

One run, one machine, one exported model (ESM-2 8M, random weights; the export's default precision unless
`--precision`). Each plan is loaded into one running server through the repository API (the same weights, only
the config changes) and measured by perf_analyzer over gRPC at a fixed concurrency, on two workloads: every
sequence 126 residues (128 tokens) and the Swiss-Prot-like length mix (one sequence per request, padded as the
exported repository's tokenizer pads it: exact lengths for CPU exports, else to its bucket). The raw engine runs the
same padded requests in-process with the same cores:
one session with every core as threads, and one single-threaded session per core side by side; the better of the
two is the ceiling `served / raw` is taken against. perf_analyzer shares the cores with the server, as any load
generator on one machine would.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import tritonclient.http as httpclient

from tritonfleet.contract.command_line import HelpFormatter
from tritonfleet.contract.esm2_tokens import format_buckets
from tritonfleet.contract.model_config import config_to_json, read_config
from tritonfleet.contract.serving_plan import ServingPlan, plan_cpu
from tritonfleet.deploy.local import local_server
from tritonfleet.loadtest.bench.engines import raw_ceiling
from tritonfleet.loadtest.perf_sweep import PerfPoint, measure_point, repository_input_data
from tritonfleet.loadtest.studies.header import ReportHeader, command_line
from tritonfleet.loadtest.workload import buckets_from_repository, generate_sequences

MODEL = "esm2_onnx"
WORKLOADS = {"fixed 128 tokens": "fixed-126", "Swiss-Prot mix": "swissprot"}


@dataclass(frozen=True)
class Plan:
    """One serving configuration of the network."""

    label: str
    instances: int
    threads: int  # intra-op threads per instance; 0: ONNX Runtime's default (every core)
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 0

    def serving_plan(self, exported: ServingPlan) -> ServingPlan:
        """The exported network's plan with this plan's instances, threads and batching; preferred sizes raise
        max_batch_size to the largest of them (Triton refuses preferred sizes above it, and CPU exports cap it)."""
        batching = dataclasses.replace(
            exported.batching,
            max_batch_size=max((exported.batching.max_batch_size, *self.preferred_batch_sizes)),
            preferred_batch_sizes=self.preferred_batch_sizes,
            max_queue_delay_us=self.max_queue_delay_us,
        )
        return dataclasses.replace(exported, batching=batching).with_cpu(self.instances, self.threads)

    def apply(self, config) -> dict:
        """The config JSON with this plan's instance group, thread parameters and batching (a load override)."""
        return config_to_json(self.serving_plan(ServingPlan.from_config(config)).apply(config))

    def describe(self) -> str:
        threads = f"{self.threads} thread(s)" if self.threads else "ORT default threads"
        batching = (
            f"delay {self.max_queue_delay_us} us, preferred {','.join(map(str, self.preferred_batch_sizes))}"
            if self.preferred_batch_sizes or self.max_queue_delay_us
            else "no delay"
        )
        return f"{self.instances} x {threads}, {batching}"


def plans(cores: int) -> list[Plan]:
    """The grid: the old shipped config, every split of the cores into instances x threads (and one oversubscribed),
    the planned split with the old batching policy."""
    old = Plan("old default (1 instance, all-core ORT, 2 ms delay)", 1, 0, (8, 16, 32, 64), 2000)
    splits = [Plan(f"{n} x {cores // n}", n, cores // n) for n in range(1, cores + 1) if cores % n == 0]
    oversubscribed = Plan(f"{2 * cores} x 1 (oversubscribed)", 2 * cores, 1)
    planned = Plan(f"{cores} x 1 with 2 ms delay + preferred sizes", cores, 1, (8, 16, 32, 64), 2000)
    return [old, *splits, oversubscribed, planned]


@dataclass
class Result:
    workload: str
    label: str
    describe: str
    points: dict[int, PerfPoint] = field(default_factory=dict)  # concurrency -> point


def padded_workload(repository: Path, sequences: Sequence[str], path: Path) -> tuple[Path, tuple[int, ...]]:
    """perf_analyzer's input data for MODEL (one sequence per request) at `path`, padded as the repository's tokenizer
    pads it (`workload.buckets_from_repository`: exact lengths for CPU exports), and those buckets, which the raw
    ceiling pads the same requests to."""
    return repository_input_data(repository, MODEL, sequences, path), buckets_from_repository(repository)


def render(results: list[Result], raw: dict[str, dict[str, float]], chosen: str, header: ReportHeader,
           context: dict) -> str:  # fmt: skip
    lines = [
        "# CPU plan: instances x threads x batching for esm2_onnx on this machine",
        "",
        *header.markdown(f"; wall time {context['minutes']:.1f} min"),
        "",
        f"Model: ESM-2 8M, RANDOM weights, precision {context['precision']} (the export's default here), ONNX graph "
        f"`{context['graph']}`. perf_analyzer over gRPC, concurrency {context['concurrency']} (and 1 for latency), "
        "sharing the cores with the server. Load average "
        f"at the end: {os.getloadavg()[0]:.2f}. Requests (served and raw) padded as the repository's tokenizer pads "
        f"them: length buckets {context.get('length_buckets', '?')}.",
        "",
        "## Raw engine in-process (the ceiling at the same thread budget)",
        "",
        "| workload | " + " | ".join(next(iter(raw.values()))) + " |",
        "|---|" + "---:|" * len(next(iter(raw.values()))),
    ]
    for workload, figures in raw.items():
        lines.append(f"| {workload} | " + " | ".join(f"{value:.1f} seq/s" for value in figures.values()) + " |")
    concurrency = context["concurrency"]
    lines += [
        "",
        f"## Served esm2_onnx, concurrency {concurrency}",
        "",
        "| workload | plan | seq/s | served / raw ceiling | p50 ms | p99 ms | server queue ms | compute infer ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        point = result.points.get(concurrency)
        if point is None:
            lines.append(f"| {result.workload} | {result.describe} | failed | | | | | |")
            continue
        ceiling = max(raw[result.workload].values())
        marker = " **(shipped)**" if result.label == chosen else ""
        lines.append(
            f"| {result.workload} | {result.describe}{marker} | {point.throughput:.1f} | "
            f"{point.throughput / ceiling:.2f} | {point.p50_us / 1e3:.1f} | {point.p99_us / 1e3:.1f} | "
            f"{point.server_queue_us / 1e3:.2f} | {point.server_compute_infer_us / 1e3:.1f} |"
        )
    lines += [
        "",
        "## Concurrency 1: latency and server-side overhead",
        "",
        "Server-side overhead = Triton's queue + compute input + compute output (what Triton adds around the engine "
        "call, p50 not available per stage: these are means).",
        "",
        "| workload | plan | p50 ms | queue us | compute input us | compute output us | overhead us |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        point = result.points.get(1)
        if point is not None:
            overhead = point.server_queue_us + point.server_compute_input_us + point.server_compute_output_us
            lines.append(
                f"| {result.workload} | {result.describe} | {point.p50_us / 1e3:.1f} | {point.server_queue_us:.0f} | "
                f"{point.server_compute_input_us:.0f} | {point.server_compute_output_us:.0f} | {overhead:.0f} |"
            )
    lines += ["", "## What was chosen and why", "", *context["conclusion"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None, prog: str = "python -m tritonfleet.loadtest.cpu_plan") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("--precision", default="auto", help="export precision (default: the export's default)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--sequences", type=int, default=64)
    parser.add_argument("--interval-ms", type=int, default=5000)
    parser.add_argument("--raw-seconds", type=float, default=10.0)
    parser.add_argument("--output", type=Path, default=Path("reports/cpu_plan.md"))
    args = parser.parse_args(argv)
    from tritonfleet.export.devices import usable_cores
    from tritonfleet.export.esm2 import export_esm2

    started = time.perf_counter()
    cores = usable_cores()
    planned_instances, planned_threads = plan_cpu(cores)
    chosen = f"{planned_instances} x {planned_threads}"
    results: list[Result] = []
    raw: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="cpu-plan-") as tmp:
        workdir = Path(tmp)
        report = export_esm2(workdir / "repository", random_init="8M", precision=args.precision, formats=("onnx",))
        model_path = workdir / "repository" / MODEL / "1" / "model.onnx"
        base_config = read_config(workdir / "repository" / MODEL)
        with local_server(workdir / "repository", model_control_mode="explicit", load_models=(MODEL,)) as server:
            admin = httpclient.InferenceServerClient(server.http_url)
            for workload, mix in WORKLOADS.items():
                sequences = generate_sequences(args.sequences, mix)
                data, buckets = padded_workload(workdir / "repository", sequences, workdir / f"{mix}.json")
                raw[workload] = raw_ceiling(model_path, sequences, cores, args.raw_seconds, buckets)
                print(f"{workload}: raw {raw[workload]}", flush=True)
                for plan in plans(cores):
                    config = read_config(workdir / "repository" / MODEL)
                    admin.load_model(MODEL, config=json.dumps(plan.apply(config)))
                    result = Result(workload, plan.label, plan.describe())
                    loads = (
                        (args.concurrency, 1) if plan.label in (chosen, plans(cores)[0].label) else (args.concurrency,)
                    )
                    for concurrency in loads:
                        csv_path = workdir / f"point_{concurrency}.csv"
                        point = measure_point(server.grpc_url, MODEL, data, concurrency, csv_path, args.interval_ms)
                        if point is not None:
                            result.points[concurrency] = point
                            print(f"  {plan.describe()} c={concurrency}: {point.throughput:.1f} seq/s", flush=True)
                    results.append(result)
            admin.close()
    best = {
        workload: max(
            (r for r in results if r.workload == workload and args.concurrency in r.points),
            key=lambda r: r.points[args.concurrency].throughput,
        )  # fmt: skip
        for workload in WORKLOADS
    }
    conclusion = [
        f"- Planned by `contract.serving_plan.plan_cpu` for {cores} cores: **{chosen}** (two single-threaded instances "
        "per core, up to 8: an instance waiting whenever Triton's batcher looks), no batching delay, no preferred "
        "sizes (`export.model_config.CPU_BATCHING`).",
        *(f"- Best measured for {workload}: {result.describe}." for workload, result in best.items()),
        "- Why one thread per instance: a single-threaded engine does more work per core than one spread over the "
        "cores (compare the raw columns), and instances that each spin on every core oversubscribe them together "
        "with the python stubs and Triton. Why no delay: on CPU the network is compute-bound (a batch runs no faster "
        "per sequence), so waiting for batch-mates only adds latency; requests queued while instances are busy "
        "still run together.",
    ]
    context = {
        "minutes": (time.perf_counter() - started) / 60,
        "precision": report.precision,
        "graph": base_config.parameters["onnx_graph"].string_value,
        "concurrency": args.concurrency,
        "length_buckets": format_buckets(buckets),
        "conclusion": conclusion,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    header = ReportHeader.collect(command_line(prog, argv))
    args.output.write_text(render(results, raw, chosen, header, context), encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

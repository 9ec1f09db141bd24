"""Served-path overhead study: CPU-seconds per sequence, served vs the raw engine, and where the server spends them.

    tritonfleet export esm2 --random-init 8M --target cpu:2 --precision int8 --output model_repository
    python -m tritonfleet.loadtest.served_overhead --quick        # 48 proteins per path, ~3 min on 2 busy cores
    python -m tritonfleet.loadtest.served_overhead                # 256 per path (~8 min); reports/served_overhead.md

The machine this project runs on is shared and noisy, so wall-clock throughput alone says little. This study
measures CPU time instead: `psutil` cpu_times (user + system) of tritonserver and of each python stub process (one
per model instance), and of this process (the load generator), before and after sending the same proteins (the
Swiss-Prot-like length mix, one sequence per request, each sent once per model so the response cache never answers)
at a fixed concurrency over gRPC, asking only for EMBEDDING. The raw engine runs the same requests in-process
(`esm2_onnx`'s model.onnx, 2 sessions x 1 thread, batch 1, as tokenized and bucket-padded by the tokenizer); its
CPU time is this process's. Triton's own statistics (/v2/models/<m>/stats: queue, compute input/infer/output) give
the per-model split. Throughput ratios come from the same run (noisy: the machine is shared; the CPU figures are the
ones to compare).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import tritonclient.grpc as grpc_client

from tritonfleet.client.transport import infer_inputs, requested_outputs
from tritonfleet.contract import esm2_tokens as esm_tokens
from tritonfleet.contract.command_line import HelpFormatter
from tritonfleet.contract.esm2.pipeline import BLS_MODEL, EMBEDDING_MODEL, ENSEMBLE_MODEL, ONNX_MODEL
from tritonfleet.loadtest.bench.engines import OnnxEngine, encoded_batches, run_side_by_side, warm_up
from tritonfleet.loadtest.bench.load import send_all
from tritonfleet.loadtest.server_stats import inference_statistics, statistics_delta
from tritonfleet.loadtest.studies import copy_repository, machine_description, scratch_folder, serve
from tritonfleet.loadtest.studies.header import command_line
from tritonfleet.loadtest.studies.process_cpu import CpuReading, cpu_delta, process_cpu_s, server_cpu
from tritonfleet.loadtest.workload import (
    buckets_from_repository,
    generate_sequences,
    percentile,
    prepare_request,
    repository_targets,
)

NETWORK = ONNX_MODEL
DEFAULT_MODELS = (ONNX_MODEL, ENSEMBLE_MODEL, EMBEDDING_MODEL, BLS_MODEL)


@dataclass
class Scenario:
    name: str
    sequences: int
    elapsed_s: float
    server_cpu: CpuReading
    client_cpu_s: float
    latencies_ms: list[float]
    stats: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def sequences_per_s(self) -> float:
        return self.sequences / self.elapsed_s if self.elapsed_s else 0.0

    @property
    def cpu_ms_per_sequence(self) -> float:
        return 1e3 * self.server_cpu.total / self.sequences

    @property
    def overhead_ms_per_sequence(self) -> float:
        """CPU outside the network's own stubs (tritonserver, tokenizer, BLS): what serving adds around the engine."""
        outside = sum(v for k, v in self.server_cpu.seconds.items() if not k.startswith(f"{NETWORK}_"))
        return 1e3 * outside / self.sequences


def measure_raw(
    model_path: Path, sequences: Sequence[str], warmup_sequences: Sequence[str], buckets: Sequence[int]
) -> Scenario:
    """2 sessions x 1 thread, batch 1, in this process, padded as the repository's tokenizer pads (`buckets`): CPU time
    of this process over whole passes."""
    batches = encoded_batches(list(sequences), 1, buckets=buckets)
    engines = [OnnxEngine(model_path, 1) for _ in range(2)]
    for engine in engines:
        warm_up(engine, encoded_batches(list(warmup_sequences), 1, buckets=buckets), 3.0)
    me = psutil.Process()
    before = process_cpu_s(me)
    run = run_side_by_side(engines, batches)
    used = process_cpu_s(me) - before
    return Scenario("raw ORT in-process (2 x 1 thread, batch 1)", run.sequences, run.elapsed_s,
                    CpuReading({"in-process engine": used}), 0.0, run.latencies_ms)  # fmt: skip


def combined(first: Scenario, second: Scenario) -> Scenario:
    """Two runs of one path as one (sequences, time and CPU added up)."""
    cpu = CpuReading({k: first.server_cpu.seconds.get(k, 0.0) + second.server_cpu.seconds.get(k, 0.0)
                      for k in {*first.server_cpu.seconds, *second.server_cpu.seconds}})  # fmt: skip
    return Scenario(f"{first.name}, run before and after the served paths", first.sequences + second.sequences,
                    first.elapsed_s + second.elapsed_s, cpu, first.client_cpu_s + second.client_cpu_s,
                    first.latencies_ms + second.latencies_ms)  # fmt: skip


def measure_served(server, model: str, sequences: Sequence[str], warmup: Sequence[str], concurrency: int,
                   buckets: Sequence[int], targets: dict) -> Scenario:  # fmt: skip
    target = targets[model]
    output = target.embedding_output
    requests = [prepare_request(target, [sequence], buckets) for sequence in sequences]
    send_all(server.grpc_url, model, [prepare_request(target, [s], buckets) for s in warmup], concurrency, output)
    stats_client = grpc_client.InferenceServerClient(server.grpc_url)
    stats_before = inference_statistics(stats_client)
    me = psutil.Process()
    server_before, client_before = server_cpu(server.pid), process_cpu_s(me)
    started = time.perf_counter()
    latencies = send_all(server.grpc_url, model, requests, concurrency, output)
    elapsed = time.perf_counter() - started
    server_after, client_after = server_cpu(server.pid), process_cpu_s(me)
    stats = statistics_delta(stats_before, inference_statistics(stats_client))
    stats_client.close()
    return Scenario(f"served `{model}`", len(sequences), elapsed, cpu_delta(server_before, server_after),
                    client_after - client_before, latencies, stats)  # fmt: skip


@dataclass
class PairedLatency:
    """Concurrency 1, one short protein: each entry model alternated with the network fed token ids."""

    model: str
    p50_ms: float
    network_p50_ms: float
    p50_of_differences_ms: float
    server_side_ms: float  # the entry's mean request time minus its network calls' (Triton's statistics)


def paired_latency(server, models: Sequence[str], targets: dict, buckets: Sequence[int], pairs: int) -> list:
    """p50 latency of each sequence-in model against `esm2_onnx` fed the same tokenized protein, alternating one
    request of each so that the machine's drift hits both alike."""
    protein = generate_sequences(1, "fixed-126", 7)[0]
    client = grpc_client.InferenceServerClient(server.grpc_url)

    prepared = {
        model: (
            infer_inputs("grpc", prepare_request(targets[model], [protein], buckets).inputs),
            requested_outputs("grpc", [targets[model].embedding_output]),
        )
        for model in dict.fromkeys([*models, NETWORK])
    }

    def call(model: str) -> float:
        inputs, wanted = prepared[model]
        began = time.perf_counter()
        client.infer(model, inputs, outputs=wanted)
        return (time.perf_counter() - began) * 1e3

    results = []
    for model in dict.fromkeys(m for m in models if m != NETWORK):
        for _ in range(5):
            call(model), call(NETWORK)
        before = inference_statistics(client)
        own, network = [], []
        for _ in range(pairs):
            own.append(call(model))
            network.append(call(NETWORK))
        delta = statistics_delta(before, inference_statistics(client))
        entry, inner = delta.get(model, {}), delta.get(NETWORK, {})
        # The network's statistics hold both the direct calls and the entry's calls: the direct ones are `pairs`.
        inner_ms = inner.get("request_ns", 0) / max(inner.get("success_count", 0), 1) / 1e6
        results.append(PairedLatency(
            model, percentile(own, 50), percentile(network, 50),
            percentile([a - b for a, b in zip(own, network)], 50),
            entry.get("request_ns", 0) / max(entry.get("success_count", 0), 1) / 1e6 - inner_ms,
        ))  # fmt: skip
    client.close()
    return results


@dataclass
class FixedCost:
    """Concurrency 1, one 126-residue protein (128 tokens), N calls in a row: CPU per call, where a request's fixed
    costs weigh most. `raw` is the in-process engine (1 thread) on the same tokens."""

    model: str
    cpu_ms_per_call: float
    outside_network_ms_per_call: float


def fixed_costs(server, models: Sequence[str], targets: dict, buckets: Sequence[int], calls: int) -> list:
    protein = generate_sequences(1, "fixed-126", 7)[0]
    engine = OnnxEngine(Path(server.options.model_repository) / NETWORK / "1" / "model.onnx", 1)
    input_ids, attention_mask = esm_tokens.encode_batch([protein], buckets)
    me = psutil.Process()
    for _ in range(10):
        engine(input_ids, attention_mask)
    before = process_cpu_s(me)
    for _ in range(calls):
        engine(input_ids, attention_mask)
    results = [FixedCost("raw in-process (1 thread)", 1e3 * (process_cpu_s(me) - before) / calls, 0.0)]
    for model in dict.fromkeys(models):
        request = prepare_request(targets[model], [protein], buckets)
        send_all(server.grpc_url, model, [request] * 10, 1, targets[model].embedding_output)
        reading = server_cpu(server.pid)
        send_all(server.grpc_url, model, [request] * calls, 1, targets[model].embedding_output)
        used = cpu_delta(reading, server_cpu(server.pid))
        outside = sum(v for k, v in used.seconds.items() if not k.startswith(f"{NETWORK}_"))
        results.append(FixedCost(f"`{model}`", 1e3 * used.total / calls, 1e3 * outside / calls))
    return results


def _per_request_ms(stats: dict[str, int], key: str) -> float:
    count = stats.get("success_count", 0)
    return stats.get(key, 0) / count / 1e6 if count else float("nan")


def render(raw: Scenario, served: list[Scenario], paired: list[PairedLatency], fixed: list[FixedCost],
           context: dict) -> str:  # fmt: skip
    lines = [
        "# Served-path overhead: CPU per sequence, served vs raw engine",
        "",
        f"Command: `{context['command']}`  ",
        f"Machine: {context['machine']}  ",
        f"Workload: {context['count']} proteins (Swiss-Prot-like lengths, seed {context['seed']}), one per request, "
        f"gRPC, concurrency {context['concurrency']}, only EMBEDDING requested; each sequence sent once per model "
        "(no response-cache hits). Repository: the export's int8 ESM-2 8M (random weights).  ",
        f"Run took {context['seconds']:.0f} s. The machine is shared with other work: seq/s figures are noisy, "
        "CPU-seconds per sequence (user + system of tritonserver and every stub) are the figures to compare. "
        "Raw = this process's CPU; served = the server's processes only (the load generator's own CPU is listed "
        "apart).",
        "",
        "| path | seq/s | vs raw | server CPU ms/seq | vs raw | of which outside the network stubs | "
        "client CPU ms/seq | p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines.extend(
        f"| {scenario.name} | {scenario.sequences_per_s:.1f} | {scenario.sequences_per_s / raw.sequences_per_s:.2f}"
        f" | {scenario.cpu_ms_per_sequence:.2f} | {scenario.cpu_ms_per_sequence / raw.cpu_ms_per_sequence:.2f}"
        f" | {scenario.overhead_ms_per_sequence if scenario is not raw else 0.0:.2f}"
        f" | {1e3 * scenario.client_cpu_s / scenario.sequences:.2f}"
        f" | {percentile(scenario.latencies_ms, 50):.1f} | {percentile(scenario.latencies_ms, 99):.1f} |"
        for scenario in [raw, *served]
    )
    lines += [
        "",
        "## Where the server's CPU goes (ms of CPU per sequence, by process)",
        "",
        "| path | process | CPU ms/seq |",
        "|---|---|---:|",
    ]
    for scenario in served:
        for name, seconds in sorted(scenario.server_cpu.seconds.items(), key=lambda item: -item[1]):
            if seconds * 1e3 / scenario.sequences >= 0.05:
                lines.append(f"| {scenario.name} | {name} | {1e3 * seconds / scenario.sequences:.2f} |")
    lines += [
        "",
        "## Triton's statistics (per request, ms; executions = model executions, batch = inferences / executions)",
        "",
        "| path | model | requests | executions | mean batch | request | queue | compute input | infer | output |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for scenario in served:
        for model, stats in sorted(scenario.stats.items()):
            if not stats.get("success_count"):
                continue
            executions = stats.get("execution_count", 0)
            batch = stats.get("inference_count", 0) / executions if executions else float("nan")
            lines.append(
                f"| {scenario.name} | {model} | {stats['success_count']} | {executions} | {batch:.2f} | "
                + " | ".join(
                    f"{_per_request_ms(stats, key):.2f}"
                    for key in ("request_ns", "queue_ns", "compute_input_ns", "compute_infer_ns", "compute_output_ns")
                )
                + " |"
            )
    lines += [
        "",
        f"## Added latency at concurrency 1 (one 126-residue protein, {context['pairs']} requests alternated with "
        f"`{NETWORK}` fed its token ids)",
        "",
        "| entry | p50 ms | network p50 ms | p50 of differences ms | server-side, entry minus network (mean ms; rough: "
        "the network's mean mixes direct and inner calls) |",
        "|---|---:|---:|---:|---:|",
    ]
    lines.extend(
        f"| `{item.model}` | {item.p50_ms:.2f} | {item.network_p50_ms:.2f} | {item.p50_of_differences_ms:.2f} | "
        f"{item.server_side_ms:.2f} |"
        for item in paired
    )
    if fixed:
        lines += [
            "",
            f"## Fixed cost per request: concurrency 1, one 126-residue protein, {context['calls']} calls in a row",
            "",
            "| path | CPU ms per call | vs raw | of which outside the network stubs |",
            "|---|---:|---:|---:|",
        ]
        lines.extend(
            f"| {item.model} | {item.cpu_ms_per_call:.2f} | {item.cpu_ms_per_call / fixed[0].cpu_ms_per_call:.2f} | "
            f"{item.outside_network_ms_per_call:.2f} |"
            for item in fixed
        )
    bls = next((s for s in served if s.name == "served `esm2_bls`"), None)
    if bls is not None and NETWORK in bls.stats and "esm2_bls" in bls.stats:
        own = sum(_per_request_ms(bls.stats["esm2_bls"], f"compute_{key}_ns") for key in ("input", "infer", "output"))
        overhead = own - _per_request_ms(bls.stats[NETWORK], "request_ns")
        lines += [
            "",
            f"`esm2_bls` server-side overhead under load: its compute time per request minus the request time of its "
            f"`{NETWORK}` calls = {overhead:.2f} ms (mean; the BLS model's own queue excluded).",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None, prog: str = "python -m tritonfleet.loadtest.served_overhead") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    parser.add_argument("--model-repository", type=Path, default=Path("model_repository"),
                        help="an exported repository (with model.onnx), served from a temporary copy")  # fmt: skip
    parser.add_argument("--output", type=Path, default=Path("reports/served_overhead.md"), help="the report")
    parser.add_argument("--sequences", type=int, default=256, help="proteins per path (each sent once)")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    parser.add_argument("--models", help="served entry models to measure, comma-separated (default: those of "
                        f"{','.join(DEFAULT_MODELS)} that the repository has)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="workload seed")
    parser.add_argument("--quick", action="store_true", help="48 proteins per path (a smoke run)")
    args = parser.parse_args(argv)
    count = 48 if args.quick else args.sequences
    if count < 1 or args.concurrency < 1:
        parser.error("--sequences and --concurrency must be >= 1")
    repository = args.model_repository
    if not (repository / NETWORK / "1" / "model.onnx").is_file():
        parser.error(f"{repository / NETWORK / '1' / 'model.onnx'} not found: export a repository first")
    targets = repository_targets(repository)
    if args.models is None:
        models = [name for name in DEFAULT_MODELS if name in targets]
    else:
        models = [name for name in args.models.split(",") if name]
    missing = [name for name in models if name not in targets]
    if missing:
        parser.error(f"not in {repository}: {', '.join(missing)}")
    started = time.perf_counter()
    sequences = generate_sequences(count, "swissprot", args.seed)
    warmup = generate_sequences(min(count, 32), "swissprot", args.seed + 1)
    buckets = buckets_from_repository(repository)
    with scratch_folder("served-overhead-") as workdir:
        copy = copy_repository(repository, workdir / "repository")
        raw_before = measure_raw(copy / NETWORK / "1" / "model.onnx", sequences, warmup, buckets)
        served = []
        # No response cache: every request is computed (the overhead is what is measured here).
        server_options = {"model_control_mode": "explicit", "load_models": tuple(dict.fromkeys(models))}
        with serve(copy, response_cache_bytes=0, **server_options) as server:
            paired = paired_latency(server, models, targets, buckets, 24 if args.quick else 100)
            fixed = fixed_costs(server, models, targets, buckets, 100 if args.quick else 300)
            for model in models:
                served.append(measure_served(server, model, sequences, warmup, args.concurrency, buckets, targets))
                print(f"{model}: {served[-1].sequences_per_s:.1f} seq/s, {served[-1].cpu_ms_per_sequence:.2f} "
                      f"CPU ms/seq (raw {raw_before.cpu_ms_per_sequence:.2f})", flush=True)  # fmt: skip
        # Raw again after the served runs: the machine's load drifts; the report uses both runs together.
        raw = combined(raw_before, measure_raw(copy / NETWORK / "1" / "model.onnx", sequences, warmup, buckets))
    context = {
        "command": command_line(prog, argv),
        "machine": ", ".join(f"{key} {value}" for key, value in machine_description().items()),
        "count": count, "seed": args.seed, "pairs": 24 if args.quick else 100,
        "calls": 100 if args.quick else 300, "concurrency": args.concurrency,
        "seconds": time.perf_counter() - started,
    }  # fmt: skip
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(render(raw, served, paired, fixed, context))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

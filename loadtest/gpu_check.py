"""`make gpu-check`: the GPU path in one go, sized for at most 8 minutes on one GPU; results to reports/gpu.md.

    python -m tritonfleet.loadtest.gpu_check [--model-size 150M] [--output reports/gpu.md]
    python -m tritonfleet.loadtest.gpu_check --device cpu --quick     # the same path on CPU (what CI exercises)

For fp32 and fp16: export ESM-2 with `--gpus auto` (random weights of `--model-size`), serve it on the local runtime
(ONNX Runtime's CUDA execution provider when onnxruntime-gpu is installed, TorchScript on cuda:N), check the served
embeddings against eager PyTorch on the same device (fp32: max abs diff; fp16: cosine against eager fp32), then
measure esm2_onnx, esm2_torchscript and the esm2 ensemble with perf_analyzer at concurrency 1/16/64, with the
networks' dynamic batching on (the GPU plan: preferred sizes within 2 ms) and off (no dynamic_batching: one request
per execution), sampling GPU utilisation with nvidia-smi during every point.
Packed step (fp32 GPU repositories also serve `esm2_onnx_packed`): its EMBEDDING of packed batches against
`esm2_onnx` alone, and both measured in one closed loop (loadtest/packed_check.py).
Last, the fleet step: the first precision's repository served by `deploy.fleet` with one replica per GPU (on CPU: one
per core, at most 2) behind HAProxy, embedded through the gRPC front; the report lists each replica's share.

Needs on the GPU host: CUDA torch, onnxruntime-gpu for the ONNX rows (`make setup ORT_EXTRA=gpu`; without it the
check serves TorchScript only and says so), nvidia-pytriton and perf_analyzer as `make setup` installs them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient

from tritonfleet.client import ClientConfig, EmbeddingClient
from tritonfleet.contract import esm2_tokens
from tritonfleet.contract.command_line import HelpFormatter, add_deprecated
from tritonfleet.contract.model_config import config_to_json, read_config
from tritonfleet.contract.serving_plan import ServingPlan
from tritonfleet.deploy.local import local_server
from tritonfleet.loadtest.devices import GpuUtilisationSampler, cuda_device_count
from tritonfleet.loadtest.packed_check import PACKED_MODEL, served_packed_check
from tritonfleet.loadtest.perf_sweep import PerfPoint, measure_point, repository_input_data
from tritonfleet.loadtest.simultaneous_pairs import MARKDOWN_HEADER as PAIRS_HEADER
from tritonfleet.loadtest.simultaneous_pairs import PairGaps, simultaneous_pairs
from tritonfleet.loadtest.studies.header import ReportHeader, command_line
from tritonfleet.loadtest.workload import (
    buckets_from_repository,
    generate_sequences,
    prepare_request,
    repository_targets,
)

NETWORKS = {"onnx": "esm2_onnx", "torchscript": "esm2_torchscript"}
PARITY_SEQUENCES = 8


@dataclass(frozen=True)
class ServedParity:
    precision: str
    model: str
    max_abs_diff: float
    min_cosine: float
    passed: bool


@dataclass(frozen=True)
class Point:
    precision: str
    model: str
    batching: str
    concurrency: int
    perf: PerfPoint
    gpu_utilisation: float | None


def onnx_on_gpu() -> bool:
    from tritonfleet.contract.engines import runner_for

    return runner_for("onnx").cuda_available()


def eager_embeddings(size: str, sequences: list[str], device: str) -> np.ndarray:
    """Pooled embeddings of eager fp32 PyTorch on `device` (the reference of both precisions)."""
    import torch

    from tritonfleet.export.esm2.model import build_esm2

    module = build_esm2(random_init=size).to(device)
    ids, mask = esm2_tokens.encode_batch(sequences)
    with torch.no_grad():
        embedding, _ = module(torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device))
    return embedding.float().cpu().numpy()


def served_parity(url: str, model: str, precision: str, sequences: list[str], eager: np.ndarray) -> ServedParity:
    with EmbeddingClient(ClientConfig(url=url, protocol="grpc", model=model)) as client:
        served = client.embed(sequences)
    difference = float(np.abs(served - eager).max())
    cosines = np.sum(served * eager, axis=1) / (np.linalg.norm(served, axis=1) * np.linalg.norm(eager, axis=1))
    passed = difference <= 1e-3 if precision == "fp32" else float(cosines.min()) >= 0.999
    return ServedParity(precision, model, difference, float(cosines.min()), passed)


def set_batching(admin, repository: Path, models: list[str], on: bool) -> None:
    """Reloads the networks with their exported dynamic batching (on) or none at all (off), same weights."""
    for model in models:
        config = read_config(repository / model)
        plan = ServingPlan.from_config(config)
        if not on:
            plan = dataclasses.replace(plan, batching=plan.batching.without_dynamic())
        admin.load_model(model, config=json.dumps(config_to_json(plan.apply(config))))


def run_precision(args, precision: str, device: str, workdir: Path) -> tuple[list[ServedParity], list[Point], dict]:
    from tritonfleet.export.esm2 import export_esm2

    formats = ("onnx", "torchscript") if device == "cpu" or onnx_on_gpu() else ("torchscript",)
    repository = workdir / precision
    started = time.perf_counter()
    report = export_esm2(
        repository,
        random_init=args.model_size,
        precision=precision,
        gpus="auto" if device != "cpu" else "none",
        formats=formats,
        ensemble_target=formats[0],
    )
    export = {"seconds": time.perf_counter() - started, "parity": report.parity, "similarity": report.similarity}
    sequences = generate_sequences(PARITY_SEQUENCES, "swissprot")
    eager = eager_embeddings(args.model_size, sequences, device)
    networks = [NETWORKS[fmt] for fmt in formats]
    mix = generate_sequences(args.sequences, "swissprot")
    points = []
    with local_server(repository, model_control_mode="explicit") as server:
        parities = [served_parity(server.grpc_url, model, precision, sequences, eager) for model in ("esm2", *networks)]
        if (repository / PACKED_MODEL).is_dir():  # GPU plans serve packed batches too (export/esm2/packed.py)
            export["packed"] = served_packed_check(server.grpc_url, mix, device)
        admin = httpclient.InferenceServerClient(server.http_url)
        try:
            for batching in ("on", "off"):
                set_batching(admin, repository, networks, on=batching == "on")
                for model in (*networks, "esm2"):
                    data = repository_input_data(repository, model, mix, workdir / f"{model}.json")
                    for concurrency in args.concurrencies:
                        with GpuUtilisationSampler() as sampler:
                            perf = measure_point(
                                server.grpc_url, model, data, concurrency, workdir / "point.csv",
                                args.interval_ms, args.request_count,
                            )  # fmt: skip
                        if perf is not None:
                            points.append(Point(precision, model, batching, concurrency, perf, sampler.mean))
                            print(f"{precision} {model} batching {batching} c={concurrency}: "
                                  f"{perf.throughput:.1f} seq/s", flush=True)  # fmt: skip
            export["pairs"] = measure_pairs(admin, server.grpc_url, repository, networks, 3 if args.quick else 15)
        finally:
            admin.close()
    return parities, points, export


def measure_pairs(admin, url: str, repository: Path, networks: list[str], pairs: int) -> list[PairGaps]:
    """Simultaneous pairs (loadtest/simultaneous_pairs.py) on each network as exported, then on a one-instance copy
    (same queues); the exported configs are loaded again afterwards."""
    targets, buckets = repository_targets(repository), buckets_from_repository(repository)
    protein = generate_sequences(1, "fixed-126", 7)[0]
    results = []
    set_batching(admin, repository, networks, on=True)
    for model in networks:
        arrays = prepare_request(targets[model], [protein], buckets).inputs
        exported = read_config(repository / model)
        plan = ServingPlan.from_config(exported)
        for count in dict.fromkeys((plan.instances.count, 1)):
            served = plan.with_instance_count(count)
            admin.load_model(model, config=json.dumps(config_to_json(served.apply(exported))))
            instances = served.instances.total
            results.append(simultaneous_pairs(url, model, arrays, targets[model].embedding_output, pairs, instances))
            print(f"{model} x {instances} instance(s): {results[-1].late_pairs} of {pairs} pairs late", flush=True)
    set_batching(admin, repository, networks, on=True)
    return results


def run_fleet_step(repository: Path, device: str, requests: int) -> dict:
    """Serve `repository` with `deploy.fleet` (one replica per GPU; CPU: one per core, at most 2) and embed `requests`
    sequences through the gRPC front from 8 threads; returns replicas, GPUs, seq/s, failures and per-replica shares."""
    from concurrent.futures import ThreadPoolExecutor

    from tritonfleet.deploy.fleet import Fleet, FleetOptions
    from tritonfleet.deploy.fleet.fleet import usable_cores, visible_gpus

    gpus = visible_gpus() if device != "cpu" else ()
    replicas = len(gpus) if gpus else min(2, len(usable_cores()))
    options = FleetOptions(
        repository, replicas=replicas, gpus=gpus, http_port=0, grpc_port=0, metrics_port=0, control_port=None,
        exit_timeout_s=5,
    )  # fmt: skip
    sequences = generate_sequences(requests, "swissprot")
    with Fleet(options) as fleet, EmbeddingClient(ClientConfig(url=fleet.grpc_url, protocol="grpc")) as client:
        before = {row.name: row.total for row in fleet.api.stats() if row.backend == "triton_grpc"}
        started = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda sequence: _embed_or_error(client, sequence), sequences))
        seconds = time.perf_counter() - started
        after = {row.name: row.total for row in fleet.api.stats() if row.backend == "triton_grpc"}
        shares = {name: after[name] - before.get(name, 0) for name in fleet.replicas}
        placement = {name: replica.gpu for name, replica in fleet.replicas.items()}
    failed = [result for result in results if isinstance(result, str)]
    return {
        "replicas": replicas,
        "placement": placement,
        "requests": requests,
        "failed": len(failed),
        "first_error": failed[0] if failed else "",
        "seq_per_s": requests / seconds,
        "shares": shares,
    }


def _embed_or_error(client: EmbeddingClient, sequence: str):
    try:
        return client.embed([sequence])
    except Exception as error:  # noqa: BLE001 - counted and reported
        return f"{type(error).__name__}: {error}"


def render_fleet(fleet: dict) -> list[str]:
    total = sum(fleet["shares"].values()) or 1
    shares = ", ".join(f"{name} {count / total:.0%}" for name, count in fleet["shares"].items())
    placement = ", ".join(f"{name} on {'GPU ' + str(gpu) if gpu is not None else 'CPU'}" for name, gpu in
                          fleet["placement"].items())  # fmt: skip
    return [
        "",
        "## Fleet (one replica per GPU behind HAProxy)",
        "",
        f"`deploy.fleet`: {fleet['replicas']} replica(s) ({placement}); {fleet['requests']} sequences through the gRPC "
        f"front from 8 threads: {fleet['seq_per_s']:.1f} seq/s, {fleet['failed']} failed"
        + (f" (first: {fleet['first_error']})" if fleet["failed"] else "")
        + f"; requests per replica: {shares}.",
    ]


def report_header(command: str, device: str) -> ReportHeader:
    """The report's header, its machine named by its GPUs first, then the CPU and the engines' versions."""
    header = ReportHeader.collect(command)
    machine = header.details
    gpus = ", ".join(machine["gpus"]) or f"no GPU (device {device})"
    return dataclasses.replace(
        header, machine=f"{gpus}; CPU {machine['cpu_model']}, {machine['usable_cores']} usable core(s); torch "
        f"{machine.get('torch')}, onnxruntime {machine.get('onnxruntime')}",
    )  # fmt: skip


def render(args, header: ReportHeader, exports: dict, parities: list[ServedParity], points: list[Point],
           minutes: float) -> str:  # fmt: skip
    lines = [
        "# GPU check",
        "",
        *header.markdown(f"; wall time {minutes:.1f} min"),
        "",
        f"ESM-2 {args.model_size}, RANDOM weights; Swiss-Prot-like length mix, one sequence per request; "
        "perf_analyzer over gRPC sharing the host's CPU with the server.",
        "",
        "## Export and served parity",
        "",
        "| precision | export s | export gate | served model | max abs diff vs eager fp32 | min cosine | verdict |",
        "|---|---:|---|---|---:|---:|---|",
    ]
    for parity in parities:
        export = exports[parity.precision]
        gate = ", ".join(f"{fmt} {diff:.1e}" for fmt, diff in export["parity"].items()) or ", ".join(
            f"{fmt} cos {min(values.values()):.4f}" for fmt, values in export["similarity"].items()
        )
        lines.append(
            f"| {parity.precision} | {export['seconds']:.0f} | {gate} | {parity.model} | {parity.max_abs_diff:.2e} | "
            f"{parity.min_cosine:.5f} | {'ok' if parity.passed else 'FAILED'} |"
        )
    lines += [
        "",
        "## Throughput, batching on and off",
        "",
        "| precision | model | batching | concurrency | seq/s | p50 ms | p99 ms | queue ms | compute ms | GPU util % |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for point in points:
        perf = point.perf
        compute = perf.server_compute_input_us + perf.server_compute_infer_us + perf.server_compute_output_us
        utilisation = "—" if point.gpu_utilisation is None else f"{point.gpu_utilisation:.0f}"
        lines.append(
            f"| {point.precision} | {point.model} | {point.batching} | {point.concurrency} | {perf.throughput:.1f} | "
            f"{perf.p50_us / 1e3:.1f} | {perf.p99_us / 1e3:.1f} | {perf.server_queue_us / 1e3:.2f} | "
            f"{compute / 1e3:.1f} | {utilisation} |"
        )
    pairs = [(precision, gaps) for precision, export in exports.items() for gaps in export.get("pairs", [])]
    if pairs:
        lines += [
            "",
            "## Two requests at once (loadtest/simultaneous_pairs.py)",
            "",
            "One 126-residue protein sent by two clients released together, again and again, to each network as "
            "exported and to a one-instance copy with the same queues; gap: the second answer's arrival minus the "
            "first's; late: a gap above a lone request's p50 + 250 ms (Triton's batcher idling an instance, "
            "`contract/batching_plan.py` `for_unordered_model`).",
            "",
            *PAIRS_HEADER,
            *(gaps.markdown_row(precision) for precision, gaps in pairs),
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None, prog: str = "python -m tritonfleet.loadtest.gpu_check") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0], formatter_class=HelpFormatter)
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--random-init", dest="model_size", help="ESM-2 size (default: 150M on GPU, 8M on CPU)")
    add_deprecated(parser, "--model-size", "--random-init", dest="model_size")
    parser.add_argument("--precisions", default="fp32,fp16")
    parser.add_argument("--concurrencies", default="1,16,64")
    parser.add_argument("--sequences", type=int, default=128, help="requests in the perf_analyzer input data")
    parser.add_argument("--interval-ms", type=int, default=3000)
    parser.add_argument("--request-count", type=int, default=0, help="> 0: measure exactly this many requests")
    parser.add_argument("--quick", action="store_true", help="tiny settings (the CPU test of this path)")
    parser.add_argument("--output", type=Path, default=Path("reports/gpu.md"))
    args = parser.parse_args(argv)
    device = "cuda:0" if args.device in ("auto", "cuda") and cuda_device_count() else "cpu"
    if args.device == "cuda" and device == "cpu":
        parser.error("--device cuda: no CUDA device here (torch.cuda.is_available() is false)")
    if device == "cpu" and args.device == "auto":
        print("no CUDA device: running the GPU check's path on CPU (use --device cpu to say so)", flush=True)
    args.model_size = args.model_size or ("150M" if device != "cpu" else "8M")
    args.concurrencies = [int(value) for value in args.concurrencies.split(",")]
    if args.quick:
        args.concurrencies, args.sequences, args.request_count = [2], 4, 4
    started = time.perf_counter()
    exports, parities, points = {}, [], []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        for precision in args.precisions.split(","):
            served, measured, exports[precision] = run_precision(args, precision, device, Path(tmp))
            parities += served
            points += measured
        first = args.precisions.split(",")[0]
        fleet = run_fleet_step(Path(tmp) / first, device, 8 if args.quick else 256)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    header = report_header(command_line(prog, argv), device)
    text = render(args, header, exports, parities, points, (time.perf_counter() - started) / 60)
    packed = {precision: export["packed"] for precision, export in exports.items() if "packed" in export}
    text += "".join(line + "\n" for precision, check in packed.items() for line in check.markdown(precision))
    args.output.write_text(text + "\n".join(render_fleet(fleet)) + "\n")
    print(f"wrote {args.output}")
    passed = parities and all(parity.passed for parity in parities) and all(c.passed for c in packed.values())
    return 0 if passed and not fleet["failed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""perf_analyzer sweeps over every model of a repository: concurrency and request-rate, HTTP and gRPC.

    tritonfleet perf --start-local-server --model-repository model_repository
    tritonfleet perf --http-url 127.0.0.1:8000 --grpc-url 127.0.0.1:8001 --models esm2,esm2_onnx

For each model it writes valid `--input-data` JSON built from the model config (BYTES sequences for models with a
BYTES input such as the `esm2` ensemble and `esm2_tokenizer`; bucket-padded token ids from the ESM alphabet for the
raw `esm2_onnx` / `esm2_torchscript`), runs perf_analyzer once per sweep point with `-f <csv>`, then merges the CSVs
into `reports/perf_sweep.md` (+ `perf_sweep.csv`) and one throughput-vs-p99 plot per model
(`reports/perf_sweep_<model>.png`).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tritonfleet.contract.command_line import (
    HelpFormatter,
    add_deprecated,
    add_server_url,
    server_urls,
    url_values,
    warn_python_m,
)
from tritonfleet.loadtest.studies.header import command_line
from tritonfleet.loadtest.studies.perf import PerfPoint, failure_tail, parse_perf_csv, run_until_stable
from tritonfleet.loadtest.studies.serving import serve
from tritonfleet.loadtest.workload import (
    ModelTarget,
    buckets_from_repository,
    generate_sequences,
    length_mix,
    repository_targets,
    tokenize,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REPORT_DIR = PROJECT_ROOT / "reports"


# ---------------------------------------------------------------------------------------------------------------
# --input-data JSON
# ---------------------------------------------------------------------------------------------------------------


def build_input_data(target: ModelTarget, sequences: Sequence[str], buckets: Sequence[int]) -> dict:
    """perf_analyzer `--input-data` JSON: one data step per sequence, shapes without the batch dimension."""
    steps = []
    for sequence in sequences:
        if target.takes_sequences:
            steps.append({target.sequence_input: {"content": [sequence], "shape": [1]}})
            continue
        input_ids, attention_mask = tokenize(sequence, buckets)
        steps.append({
            target.ids_input: {"content": input_ids.tolist(), "shape": [int(input_ids.shape[0])]},
            target.mask_input: {"content": attention_mask.tolist(), "shape": [int(attention_mask.shape[0])]},
        })  # fmt: skip
    return {"data": steps}


def write_input_data(target: ModelTarget, sequences: Sequence[str], buckets: Sequence[int], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(build_input_data(target, sequences, buckets)))
    return path


def repository_input_data(repository: Path, model: str, sequences: Sequence[str], path: Path) -> Path:
    """perf_analyzer's input data for one model of `repository` at `path`, one sequence per request; a network's
    token ids padded as the repository's tokenizer pads them (`workload.buckets_from_repository`: exact lengths for
    CPU exports)."""
    target = repository_targets(repository)[model]
    return write_input_data(target, sequences, buckets_from_repository(repository), path)


def measure_point(
    url: str,
    model: str,
    input_data: Path,
    concurrency: int,
    csv_path: Path,
    interval_ms: int = 5000,
    request_count: int = 0,
) -> PerfPoint | None:
    """One perf_analyzer point over gRPC at `concurrency`: stabilising windows (or exactly `request_count` requests),
    falling back to a fixed count on a noisy (shared) CPU that never stabilises; None (reason printed) on failure."""
    csv_path.unlink(missing_ok=True)
    base = ["-m", model, "-u", url.split("://", 1)[-1], "-i", "grpc", "--input-data", str(input_data),
            "-f", str(csv_path), "--concurrency-range", str(concurrency),
            "--warmup-request-count", str(2 * concurrency)]  # fmt: skip
    measure = ["--request-count", str(request_count)] if request_count else [
        "--measurement-interval", str(interval_ms), "-s", "15", "--max-trials", "6"]  # fmt: skip
    # A noisy (shared) CPU that never stabilises: a fixed count of requests instead.
    completed = run_until_stable(base + measure, retry_args=base + ["--request-count", str(max(40, 8 * concurrency))])
    if completed.returncode != 0 or not csv_path.exists():
        print(f"  perf_analyzer failed: {failure_tail(completed)}", flush=True)
        return None
    points = parse_perf_csv(csv_path.read_text(), model, "grpc")
    return points[0] if points else None


# ---------------------------------------------------------------------------------------------------------------
# Sweeps
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepConfig:
    http_url: str
    grpc_url: str
    models: tuple[str, ...]
    protocols: tuple[str, ...] = ("http", "grpc")
    concurrencies: tuple[int, ...] = (1, 2, 4, 8)
    request_rates: tuple[float, ...] = ()  # empty: derived from the best concurrency throughput
    request_rate_fractions: tuple[float, ...] = (0.5, 0.9, 1.2)
    measurement_interval_ms: int = 3000
    stability_percentage: int = 30
    max_trials: int = 5
    length_mix: str = "swissprot"
    sequences: int = 64
    report_dir: Path = DEFAULT_REPORT_DIR
    point_timeout_s: float = 300.0
    request_count: int = 0  # > 0: measure exactly this many requests instead of stabilising windows
    warmup_requests: int = 2


@dataclass
class SweepResult:
    points: list[PerfPoint] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def perf_analyzer_args(config: SweepConfig, model: str, protocol: str, input_data: Path, csv_path: Path,
                       mode: str, load: float, request_count: int = 0) -> list[str]:  # fmt: skip
    url = config.http_url if protocol == "http" else config.grpc_url
    args = [
        "-m", model, "-u", url.split("://", 1)[-1], "-i", protocol, "--input-data", str(input_data),
        "-f", str(csv_path), "--warmup-request-count", str(config.warmup_requests),
    ]  # fmt: skip
    if request_count > 0:
        args += ["--request-count", str(request_count)]
    else:
        args += ["--measurement-interval", str(config.measurement_interval_ms), "-s", str(config.stability_percentage),
                 "--max-trials", str(config.max_trials)]  # fmt: skip
    if mode == "concurrency":
        args += ["--concurrency-range", str(int(load))]
    else:
        args += ["--request-rate-range", f"{load:g}", "--request-distribution", "poisson"]
    return args


def run_point(config: SweepConfig, model: str, protocol: str, input_data: Path, mode: str, load: float,
              result: SweepResult) -> list[PerfPoint]:  # fmt: skip
    raw_dir = config.report_dir / "perf"
    raw_dir.mkdir(parents=True, exist_ok=True)
    csv_path = raw_dir / f"{model}_{protocol}_{mode}_{load:g}.csv"
    csv_path.unlink(missing_ok=True)
    args = perf_analyzer_args(config, model, protocol, input_data, csv_path, mode, load, config.request_count)
    print(f"perf_analyzer {' '.join(args)}", flush=True)
    try:
        # Noisy (shared) CPU: fall back to a fixed number of requests rather than losing the point.
        fallback = max(16, round(load * 8))
        completed = run_until_stable(
            args,
            retry_args=perf_analyzer_args(config, model, protocol, input_data, csv_path, mode, load, fallback),
            retries=1 if config.request_count == 0 else 0,
            timeout=config.point_timeout_s,
            note=f"  unstable; measuring a fixed {fallback} requests instead",
        )
    except Exception as error:  # noqa: BLE001 - a failed point is reported and the sweep goes on
        result.failures.append(f"{model} {protocol} {mode}={load:g}: {error}")
        return []
    (raw_dir / f"{csv_path.stem}.log").write_text(completed.stdout + completed.stderr)
    if completed.returncode != 0 or not csv_path.is_file():
        last = (completed.stderr or completed.stdout).strip().splitlines()[-3:]
        result.failures.append(f"{model} {protocol} {mode}={load:g}: exit {completed.returncode}: {' | '.join(last)}")
        return []
    points = parse_perf_csv(csv_path.read_text(), model, protocol)
    result.points.extend(points)
    return points


def run_sweep(config: SweepConfig, targets: dict[str, ModelTarget], buckets: Sequence[int]) -> SweepResult:
    result = SweepResult()
    sequences = generate_sequences(config.sequences, length_mix(config.length_mix))
    for model in config.models:
        input_data = write_input_data(targets[model], sequences, buckets, config.report_dir / "perf" / f"{model}.json")
        for protocol in config.protocols:
            best = 0.0
            for concurrency in config.concurrencies:
                for point in run_point(config, model, protocol, input_data, "concurrency", concurrency, result):
                    best = max(best, point.throughput)
            rates = config.request_rates or tuple(
                round(best * fraction, 2) for fraction in config.request_rate_fractions if best > 0
            )
            for rate in rates:
                if rate > 0:
                    run_point(config, model, protocol, input_data, "request_rate", rate, result)
    return result


# ---------------------------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------------------------


def markdown_table(points: Sequence[PerfPoint]) -> str:
    header = (
        "| model | protocol | mode | load | infer/s | p50 ms | p99 ms | queue ms | compute infer ms | overhead ms |\n"
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    rows = []
    for p in sorted(points, key=lambda p: (p.model, p.protocol, p.mode, p.load)):
        compute = p.server_compute_input_us + p.server_compute_infer_us + p.server_compute_output_us
        overhead = p.client_send_us + p.network_server_us + p.client_recv_us  # what is neither queue nor compute
        rows.append(
            f"| {p.model} | {p.protocol} | {p.mode} | {p.load:g} | {p.throughput:.1f} | {p.p50_us / 1e3:.2f} | "
            f"{p.p99_us / 1e3:.2f} | {p.server_queue_us / 1e3:.2f} | {compute / 1e3:.2f} | {overhead / 1e3:.2f} |"
        )
    return header + "\n".join(rows) + "\n"


def plot_points(points: Sequence[PerfPoint], report_dir: Path) -> list[Path]:
    """One PNG per model: throughput (x) vs p99 latency (y), a line per protocol and mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for model in sorted({p.model for p in points}):
        figure, axes = plt.subplots(figsize=(7, 4.5))
        for protocol in ("http", "grpc"):
            for mode, marker in (("concurrency", "o-"), ("request_rate", "s--")):
                series = sorted((p for p in points if (p.model, p.protocol, p.mode) == (model, protocol, mode)),
                                key=lambda p: p.load)  # fmt: skip
                if series:
                    axes.plot([p.throughput for p in series], [p.p99_us / 1e3 for p in series], marker,
                              label=f"{protocol} {mode.replace('_', ' ')}")  # fmt: skip
                    for p in series:
                        axes.annotate(f"{p.load:g}", (p.throughput, p.p99_us / 1e3), fontsize=7,
                                      textcoords="offset points", xytext=(3, 3))  # fmt: skip
        axes.set_xlabel("throughput (inferences/s)")
        axes.set_ylabel("p99 latency (ms)")
        axes.set_title(f"perf_analyzer: {model} (labels: concurrency or requests/s)")
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=8)
        figure.tight_layout()
        path = report_dir / f"perf_sweep_{model}.png"
        figure.savefig(path, dpi=110)
        plt.close(figure)
        written.append(path)
    return written


def write_reports(result: SweepResult, config: SweepConfig, command: str) -> Path:
    config.report_dir.mkdir(parents=True, exist_ok=True)
    with (config.report_dir / "perf_sweep.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(PerfPoint.__dataclass_fields__))
        writer.writeheader()
        writer.writerows(asdict(point) for point in result.points)
    plots = plot_points(result.points, config.report_dir) if result.points else []
    failures = "\n".join(f"- {failure}" for failure in result.failures) or "- none"
    text = (
        "# perf_analyzer sweep\n\n"
        f"Command: `{command}`\n\n"
        f"Length mix `{config.length_mix}` ({config.sequences} sequences), one sequence per request, "
        f"measurement interval {config.measurement_interval_ms} ms.\n"
        "`overhead` = client send + network/server send-recv + client recv (neither queue nor compute).\n\n"
        + markdown_table(result.points)
        + "\nPlots: " + ", ".join(f"`{path.name}`" for path in plots) + "\n\nFailed points:\n" + failures + "\n"
    )  # fmt: skip
    path = config.report_dir / "perf_sweep.md"
    path.write_text(text)
    return path


@contextlib.contextmanager
def _server(args) -> Iterator[tuple[str, str]]:
    """(http url, grpc url) of the server to sweep: one started for the run, or the one given."""
    if not args.start_local_server:
        yield args.urls["http"], args.urls["grpc"]
        return
    with serve(args.model_repository) as server:
        yield server.http_url, server.grpc_url


def _csv_list(text: str, cast=str) -> tuple:
    return tuple(cast(part) for part in text.split(",") if part.strip())


PROGRAM = "python -m tritonfleet.loadtest.perf_sweep"


def main(argv: Sequence[str] | None = None, prog: str = PROGRAM) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--start-local-server", action="store_true", help="serve --model-repository for the sweep")
    add_server_url(parser, "--http-url")
    parser.add_argument("--models", default="", help="comma-separated; default: every model in the repository")
    parser.add_argument("--protocol", choices=("http", "grpc", "both"), default="both", help="protocols to sweep")
    add_deprecated(parser, "--protocols", "--protocol http|grpc|both", dest="protocols")
    parser.add_argument("--concurrency", default="1,2,4,8", help="comma-separated concurrency points")
    parser.add_argument("--request-rates", default="", help="comma-separated req/s; default: from concurrency")
    parser.add_argument("--measurement-interval-ms", type=int, default=3000)
    parser.add_argument("--max-trials", type=int, default=5)
    parser.add_argument("--length-mix", default="swissprot")
    parser.add_argument("--sequences", type=int, default=64, help="distinct sequences in the input data")
    parser.add_argument("--quick", action="store_true", help="CI smoke: concurrency 1 only, short windows")
    parser.add_argument("--output", type=Path, default=Path("reports"), metavar="DIR", help="report folder")
    add_deprecated(parser, "--report-dir", "--output", type=Path)
    args = parser.parse_args(argv)
    protocols = _csv_list(getattr(args, "protocols", "")) or (
        ("http", "grpc") if args.protocol == "both" else (args.protocol,)
    )
    try:
        args.urls = server_urls([], ("http", "grpc")) | server_urls(url_values(args), protocols)
    except argparse.ArgumentTypeError as error:
        parser.error(str(error))

    targets = repository_targets(args.model_repository)
    if not targets:
        parser.error(f"no models (*/config.pbtxt) in {args.model_repository}")
    models = _csv_list(args.models) or tuple(targets)
    unknown = [model for model in models if model not in targets]
    if unknown:
        parser.error(f"models not in the repository: {unknown}")
    quick = args.quick
    with _server(args) as (http_url, grpc_url):
        config = SweepConfig(
            http_url=http_url,
            grpc_url=grpc_url,
            models=models,
            protocols=protocols,
            concurrencies=(1,) if quick else _csv_list(args.concurrency, int),
            request_rates=_csv_list(args.request_rates, float),
            request_rate_fractions=() if quick else SweepConfig.request_rate_fractions,
            measurement_interval_ms=args.measurement_interval_ms,
            max_trials=args.max_trials,
            length_mix="short" if quick else args.length_mix,
            sequences=8 if quick else args.sequences,
            report_dir=args.output,
            request_count=8 if quick else 0,
        )
        result = run_sweep(config, targets, buckets_from_repository(args.model_repository))
    command = command_line(prog, argv)
    report = write_reports(result, config, command)
    print(report.read_text())
    return 0 if result.points and not result.failures else 1


if __name__ == "__main__":
    warn_python_m(__spec__.name if __spec__ else None, "perf")
    sys.exit(main())

"""What a benchmark run produced and how it is written: results, the machine, ratios, markdown, JSON and plots."""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

# The served models measured in groups b and c; the pipelines take sequences and call esm2_onnx.
TRITON_MODELS = ("esm2_onnx", "esm2_torchscript", "esm2", "esm2_bls")


@dataclass
class ScenarioResult:
    """One measured configuration."""

    group: str  # a | b | c | d
    name: str
    engine: str  # onnx | torchscript | eager
    sequences_per_s: float
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    requests: int = 0
    errors: int = 0
    rejections: int = 0
    batch_size: int = 0
    concurrency: int = 0
    average_server_batch: float = math.nan
    device: str = "cpu"
    precision: str = "fp32"
    gpu_utilisation: float | None = None
    notes: str = ""


@dataclass
class OverheadResult:
    model: str
    client_p50_ms: float
    compute_p50_ms: float
    overhead_p50_ms: float
    overhead_p99_ms: float
    server_side_overhead_p50_ms: float  # Triton request time minus compute (no client, no network)
    requests: int


@dataclass
class BenchReport:
    config: dict
    machine: dict
    scenarios: list[ScenarioResult] = field(default_factory=list)
    overheads: list[OverheadResult] = field(default_factory=list)
    ratios: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    command: str = ""


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def machine_description() -> dict:
    cpu_model = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    description = {
        "cpu_model": cpu_model,
        "logical_cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "python": platform.python_version(),
        "os": platform.platform(),
        "gpus": [],
    }
    try:
        import onnxruntime
        import torch

        description["torch"] = torch.__version__
        description["onnxruntime"] = onnxruntime.__version__
        if torch.cuda.is_available():
            description["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        pass
    return description


# ---------------------------------------------------------------------------------------------------------------
# Ratios
# ---------------------------------------------------------------------------------------------------------------


def best(results: Sequence[ScenarioResult], group: str, engine: str | None = None, name_part: str = "") -> float:
    """Best error-free throughput of a group; `name_part` matches a scenario name's end (": esm2" not esm2_onnx)."""
    values = [r.sequences_per_s for r in results
              if r.group == group and (engine is None or r.engine == engine) and r.name.endswith(name_part)
              and r.errors == 0]  # fmt: skip
    return max(values) if values else math.nan


def _ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, NaN when the denominator is missing or zero (a scenario that completed nothing)."""
    if not denominator or math.isnan(denominator):
        return math.nan
    return numerator / denominator


def compute_ratios(results: Sequence[ScenarioResult]) -> dict[str, float]:
    """b/a per engine (raw model on Triton vs in-process ceiling), b/c per model, b/d (ensemble vs FastAPI)."""
    ratios = {}
    for engine, model in (("onnx", "esm2_onnx"), ("torchscript", "esm2_torchscript")):
        ratios[f"b/a {engine}"] = _ratio(best(results, "b", name_part=f": {model}"), best(results, "a", engine))
    onnx_ceiling = best(results, "a", "onnx")
    ratios["b/a ensemble (esm2) vs onnx ceiling"] = _ratio(best(results, "b", name_part=": esm2"), onnx_ceiling)
    ratios["b/a BLS (esm2_bls) vs onnx ceiling"] = _ratio(best(results, "b", name_part=": esm2_bls"), onnx_ceiling)
    for model in TRITON_MODELS:
        ratios[f"b/c {model}"] = _ratio(
            best(results, "b", name_part=f": {model}"), best(results, "c", name_part=f": {model}")
        )
    one_per_request = best(results, "d", name_part="one sequence per request")
    batched = best(results, "d", name_part="client batches")
    for label, model in (("ensemble", "esm2"), ("BLS", "esm2_bls")):
        pipeline = best(results, "b", name_part=f": {model}")
        ratios[f"b/d {label} vs FastAPI (same traffic: one sequence per request)"] = _ratio(pipeline, one_per_request)
        ratios[f"b/d {label} vs FastAPI with client batches"] = _ratio(pipeline, batched)
    return ratios


# ---------------------------------------------------------------------------------------------------------------
# Markdown, JSON and plots
# ---------------------------------------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}f}"


def render_markdown(report: BenchReport, plots: Sequence[Path]) -> str:
    machine = report.machine
    config = report.config
    lines = [
        "# Benchmark: batching on Triton vs the raw engine, batching off, and a hand-written service",
        "",
        f"Machine: {machine['cpu_model']}, {machine['usable_cores']} usable cores ({machine['logical_cores']} "
        f"logical), GPUs: {', '.join(machine['gpus']) or 'none'}; Python {machine['python']}, torch "
        f"{machine.get('torch', '?')}, onnxruntime {machine.get('onnxruntime', '?')}; {machine['os']}.",
        "",
        f"Reproduce: `{report.command}`",
        "",
        f"Model: ESM-2 {config['model_size']} (random weights; speed does not depend on them). Length mix "
        f"`{config['length_mix']}` ({config['sequences']} sequences, {_fmt(config.get('mean_length'))} residues on "
        f"average, {_fmt(100 * config.get('padding_waste', math.nan))} % padding when padded alone to its bucket). "
        f"Closed loop, concurrency {config['concurrency']}, {config['duration_s']:g} s per point after 1 s warm-up; "
        "outputs: the pooled EMBEDDING only. Load generator, server and engines share the same cores.",
        "",
        "## Throughput and latency",
        "",
        "| group | scenario | device | batch | conc. | seq/s | p50 ms | p99 ms | avg server batch | errors | rej. |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r.group} | {r.name} | {r.device}/{r.precision} | {r.batch_size or '—'} | {r.concurrency or '—'} | "
        f"{_fmt(r.sequences_per_s)} | {_fmt(r.p50_ms)} | {_fmt(r.p99_ms)} | {_fmt(r.average_server_batch, 2)} | "
        f"{r.errors} | {r.rejections} |"
        for r in report.scenarios
    ]
    lines += ["", "Group a latencies are per batch; b–d per request.", "", "## Ratios", "",
              "| ratio | value | target |", "|---|---:|---:|"]  # fmt: skip
    targets = {"b/a onnx": ">= 0.95", "b/a torchscript": ">= 0.95", "b/d ensemble vs FastAPI (same traffic": ">= 2"}
    for name, value in report.ratios.items():
        target = next((t for key, t in targets.items() if name.startswith(key)), "")
        lines.append(f"| {name} | {_fmt(value, 2)} | {target} |")
    lines += ["", "## Server overhead at concurrency 1 (gRPC)", "",
              "Client latency minus the compute time (input + infer + output, all composing models) reported by "
              "Triton's statistics API for that request; `server-side` is Triton's own request time minus compute.",
              "", "| model | client p50 ms | compute p50 ms | overhead p50 ms | overhead p99 ms | server-side p50 ms |",
              "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for o in report.overheads:
        lines.append(f"| {o.model} | {_fmt(o.client_p50_ms, 2)} | {_fmt(o.compute_p50_ms, 2)} | "
                     f"{_fmt(o.overhead_p50_ms, 2)} | {_fmt(o.overhead_p99_ms, 2)} | "
                     f"{_fmt(o.server_side_overhead_p50_ms, 2)} |")  # fmt: skip
    if report.problems:
        lines += ["", "## Problems", ""] + [f"- {p}" for p in report.problems]
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(lines) + "\n"


def plot_report(report: BenchReport, report_dir: Path, prefix: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"a": "#4c72b0", "b": "#55a868", "c": "#c44e52", "d": "#8172b2"}
    best_a: dict[str, ScenarioResult] = {}
    for r in report.scenarios:
        if r.group == "a" and (r.engine not in best_a or r.sequences_per_s > best_a[r.engine].sequences_per_s):
            best_a[r.engine] = r
    shown = list(best_a.values()) + [r for r in report.scenarios if r.group != "a"]
    labels = [f"{r.group}: {r.name.split(': ', 1)[-1]}" + (f" (b={r.batch_size})" if r.group == "a" else "")
              for r in shown]  # fmt: skip
    paths = []
    figure, axes = plt.subplots(figsize=(9, 0.45 * len(shown) + 1.5))
    axes.barh(labels, [r.sequences_per_s for r in shown], color=[colours[r.group] for r in shown])
    axes.invert_yaxis()
    axes.set_xlabel("sequences / s")
    axes.set_title("Throughput, same model and length mix (a = in-process ceiling)")
    figure.tight_layout()
    paths.append(report_dir / f"{prefix}_throughput.png")
    figure.savefig(paths[-1], dpi=110)
    plt.close(figure)

    served = [r for r in report.scenarios if r.group != "a" and not math.isnan(r.p99_ms)]
    if served:
        figure, axes = plt.subplots(figsize=(7, 4.5))
        for r in served:
            axes.scatter(r.sequences_per_s, r.p99_ms, color=colours[r.group], s=40)
            axes.annotate(r.name.split(": ", 1)[-1], (r.sequences_per_s, r.p99_ms), fontsize=7,
                          textcoords="offset points", xytext=(4, 2))  # fmt: skip
        axes.set_xlabel("sequences / s")
        axes.set_ylabel("p99 latency (ms)")
        axes.set_title("Throughput vs p99 (green b: batching on, red c: off, purple d: FastAPI)")
        axes.grid(True, alpha=0.3)
        figure.tight_layout()
        paths.append(report_dir / f"{prefix}_latency.png")
        figure.savefig(paths[-1], dpi=110)
        plt.close(figure)
    return paths


def write_report(report: BenchReport, report_dir: Path, prefix: str = "bench") -> Path:
    """Writes `<prefix>.md`, `<prefix>.json` and the plots under `report_dir`; returns the markdown's path."""
    report_dir.mkdir(parents=True, exist_ok=True)
    plots = plot_report(report, report_dir, prefix)
    (report_dir / f"{prefix}.json").write_text(json.dumps(asdict(report), indent=2, default=str))
    path = report_dir / f"{prefix}.md"
    path.write_text(render_markdown(report, plots))
    return path

"""What a benchmark run produced and how it is written: results, the machine, the figures against their targets
(issue 10: P1 serving efficiency, P2 Triton vs the hand-written service, P3 server-side overhead), markdown, JSON
and plots.

Two questions are kept apart:
1. serving efficiency: a served model / the raw engine it runs, same engine file, same thread budget;
2. engine gain: an engine variant's raw speed / eager fp32 PyTorch's, same threads, same sequences.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tritonfleet.export.devices import usable_cores

# The served models measured in groups b and c; the pipelines take sequences and call a network.
TRITON_MODELS = ("esm2_onnx", "esm2_torchscript", "esm2", "esm2_bls")
ENTRY_POINT = "esm2"  # the README's default entry point

SERVING = "serving efficiency"
ENGINE_GAIN = "engine gain"
VS_FASTAPI = "Triton vs FastAPI"
BATCHING = "batching on / off"
OVERHEAD = "server-side overhead"


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
    precision: str = "fp32"  # the engine variant (group a, b, c) or the baseline's precision (d)
    model: str = ""  # the served model (b, c)
    threads: str = ""  # how the cores are spent: a thread split (a) or the served network's plan (b, c)
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
    precision: str = "fp32"


@dataclass(frozen=True)
class Target:
    """A target of issue 10: `label` (P1-P3) wants the figure `comparison` (">=" or "<=") `threshold`."""

    label: str
    comparison: str
    threshold: float

    def met(self, value: float) -> bool | None:
        if math.isnan(value):
            return None
        return value >= self.threshold if self.comparison == ">=" else value <= self.threshold

    def __str__(self) -> str:
        return f"{self.label}: {self.comparison} {self.threshold:g}"


P1 = Target("P1", ">=", 0.95)  # served esm2_onnx / raw ONNX Runtime at the same thread budget
P2_DEFAULT = Target("P2", ">=", 1.5)  # the entry point, shipped CPU defaults / FastAPI + eager
P2_FP32 = Target("P2", ">=", 1.0)  # the same, both fp32
P3 = Target("P3", "<=", 1.0)  # server-side overhead p50 at concurrency 1, ms


@dataclass
class Figure:
    """One derived figure: `numerator / denominator` (or a value in ms for the overhead), maybe with a target."""

    question: str
    name: str
    precision: str
    value: float
    target: Target | None = None
    numerator: float = math.nan
    denominator: float = math.nan
    basis: str = ""  # where the numerator and denominator come from

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.target.met(self.value)


@dataclass
class BenchReport:
    config: dict
    machine: dict
    scenarios: list[ScenarioResult] = field(default_factory=list)
    overheads: list[OverheadResult] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    command: str = ""
    default_precision: str = "fp32"  # the repository's precision: the shipped defaults


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
# Figures
# ---------------------------------------------------------------------------------------------------------------


def ceiling(results: Sequence[ScenarioResult], engine: str, precision: str) -> ScenarioResult | None:
    """The fastest error-free raw CPU row (group a) of `engine` in `precision`: any thread split, any batch size."""
    rows = [r for r in results if r.group == "a" and r.engine == engine and r.precision == precision
            and r.device == "cpu" and r.errors == 0 and r.sequences_per_s > 0]  # fmt: skip
    return max(rows, key=lambda r: r.sequences_per_s, default=None)


def served(results: Sequence[ScenarioResult], group: str, model: str, precision: str) -> ScenarioResult | None:
    """The error-free served row of `model` in `precision` (groups b, c)."""
    rows = [r for r in results if r.group == group and r.model == model and r.precision == precision
            and r.errors == 0]  # fmt: skip
    return max(rows, key=lambda r: r.sequences_per_s, default=None)


def fastapi(results: Sequence[ScenarioResult], per_request: int | None = 1) -> ScenarioResult | None:
    """The hand-written service's row: one sequence per request (1), or client batches (None: any other size)."""
    rows = [r for r in results if r.group == "d" and r.errors == 0
            and (r.batch_size == 1 if per_request == 1 else r.batch_size != 1)]  # fmt: skip
    return max(rows, key=lambda r: r.sequences_per_s, default=None)


def _rate(row: ScenarioResult | None) -> float:
    return row.sequences_per_s if row is not None else math.nan


def _ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, NaN when either is missing or the denominator is zero (completed nothing)."""
    if not denominator or math.isnan(denominator) or math.isnan(numerator):
        return math.nan
    return numerator / denominator


def _where(row: ScenarioResult | None) -> str:
    """How a raw row spent the cores, e.g. '2 engines x 1 thread, batch 1'."""
    return "not measured" if row is None else f"{row.threads or row.device}, batch {row.batch_size}"


def _figure(question: str, name: str, precision: str, numerator: ScenarioResult | None,
            denominator: ScenarioResult | None, target: Target | None = None, basis: str = "") -> Figure:  # fmt: skip
    top, bottom = _rate(numerator), _rate(denominator)
    return Figure(question, name, precision, _ratio(top, bottom), target, top, bottom, basis)


def _ordered_precisions(results: Sequence[ScenarioResult], groups: str, default_precision: str) -> list[str]:
    seen = [default_precision]
    for r in results:
        if r.group in groups and r.engine != "eager" and r.precision not in seen:
            seen.append(r.precision)
    return seen


def compute_figures(results: Sequence[ScenarioResult], overheads: Sequence[OverheadResult],
                    default_precision: str) -> list[Figure]:  # fmt: skip
    """Every figure of the report, question by question (see the module docstring); NaN where a side is missing."""
    figures = []
    for precision in _ordered_precisions(results, "ab", default_precision):
        for model in TRITON_MODELS:
            row = served(results, "b", model, precision)
            if row is None:
                continue
            raw = ceiling(results, row.engine, precision)
            figures.append(_figure(SERVING, f"{model} / raw {row.engine}", precision, row, raw,
                                   P1 if model == "esm2_onnx" else None, f"raw: {_where(raw)}"))  # fmt: skip
    eager = ceiling(results, "eager", "fp32")
    for precision in _ordered_precisions(results, "a", default_precision):
        for engine in ("onnx", "torchscript"):
            raw = ceiling(results, engine, precision)
            if raw is not None:
                figures.append(_figure(ENGINE_GAIN, f"raw {engine} / raw eager fp32", precision, raw, eager,
                                       basis=f"{engine}: {_where(raw)}; eager: {_where(eager)}"))  # fmt: skip
    one_per_request, client_batches = fastapi(results, 1), fastapi(results, None)
    entry = served(results, "b", ENTRY_POINT, default_precision)
    figures.append(_figure(VS_FASTAPI, f"{ENTRY_POINT} (shipped defaults) / FastAPI + eager fp32", default_precision,
                           entry, one_per_request, P2_DEFAULT, "same traffic: one sequence per request"))  # fmt: skip
    figures.append(_figure(VS_FASTAPI, f"{ENTRY_POINT} fp32 / FastAPI + eager fp32", "fp32",
                           served(results, "b", ENTRY_POINT, "fp32"), one_per_request, P2_FP32,
                           "same traffic: one sequence per request"))  # fmt: skip
    figures.append(_figure(VS_FASTAPI, "esm2_bls (shipped defaults) / FastAPI + eager fp32", default_precision,
                           served(results, "b", "esm2_bls", default_precision), one_per_request,
                           basis="same traffic: one sequence per request"))  # fmt: skip
    figures.append(_figure(VS_FASTAPI, f"{ENTRY_POINT} (shipped defaults) / FastAPI with client batches",
                           default_precision, entry, client_batches,
                           basis=f"FastAPI: {client_batches.batch_size if client_batches else '?'} sequences per "
                           "request"))  # fmt: skip
    for model in TRITON_MODELS:
        on, off = served(results, "b", model, default_precision), served(results, "c", model, default_precision)
        if on is not None and off is not None:
            figures.append(_figure(BATCHING, f"{model}: dynamic batching on / off", default_precision, on, off))
    figures += [
        Figure(OVERHEAD, f"{o.model} server-side overhead p50 (ms)", o.precision, o.server_side_overhead_p50_ms, P3,
               basis=f"Triton request time minus compute, concurrency 1, {o.requests} requests")
        for o in overheads
        if o.precision == default_precision
    ]  # fmt: skip
    return figures


# ---------------------------------------------------------------------------------------------------------------
# Markdown, JSON and plots
# ---------------------------------------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}f}"


def _met(figure: Figure) -> str:
    return {True: "**met**", False: "missed", None: "—"}[figure.met]


def _target(figure: Figure) -> str:
    return str(figure.target) if figure.target else ""


def limiting_notes(report: BenchReport) -> list[str]:
    """What limits the figures, from this run's own numbers."""
    results, default = report.scenarios, report.default_precision
    cores = report.machine.get("usable_cores", "?")
    notes = []
    raw_onnx = [r for r in results if r.group == "a" and r.engine == "onnx" and r.precision == default]
    best = ceiling(results, "onnx", default)
    single = [r for r in raw_onnx if best is not None and r.threads == best.threads and r.batch_size == 1]
    if best is not None and single and best.batch_size != 1:
        gain = _ratio(best.sequences_per_s, single[0].sequences_per_s)
        notes.append(f"Batching in the engine: raw ONNX Runtime ({default}) at batch {best.batch_size} runs "
                     f"{gain:.2f}x its batch-1 speed ({best.threads}); "
                     + ("the network is compute-bound on these cores, so dynamic batching has little to win."
                        if gain < 1.15 else "the served path gets this only when requests queue up."))  # fmt: skip
    elif best is not None:
        notes.append(f"Batching in the engine: batch 1 was the fastest raw ONNX Runtime batch ({default}): the "
                     "network is compute-bound on these cores, so dynamic batching has nothing to win.")  # fmt: skip
    served_onnx = served(results, "b", "esm2_onnx", default)
    if best is not None and served_onnx is not None:
        notes.append(f"Thread budget: the raw ceiling came from {best.threads}; the served network runs "
                     f"{served_onnx.threads} (the repository's CPU plan).")  # fmt: skip
    notes.append(
        f"Shared cores: the served rows share the {cores} cores with the load generator "
        f"({report.config.get('concurrency', '?')} gRPC client threads in the benchmark's process), Triton's "
        "own threads and the python stubs (tokenizer, BLS); the raw rows have the cores to themselves."
    )
    overhead = {o.model: o for o in report.overheads if o.precision == default}
    if ENTRY_POINT in overhead:
        o = overhead[ENTRY_POINT]
        notes.append(f"Per-request cost at concurrency 1 ({ENTRY_POINT}): {o.overhead_p50_ms:.2f} ms p50 between the "
                     f"client and the engines, {o.server_side_overhead_p50_ms:.2f} ms of it inside Triton (P3), "
                     f"against {o.compute_p50_ms:.1f} ms of compute.")  # fmt: skip
    entry, eager = served(results, "b", ENTRY_POINT, default), ceiling(results, "eager", "fp32")
    engine_raw = ceiling(results, entry.engine, default) if entry is not None else None
    baseline = fastapi(results, 1)
    if None not in (entry, eager, engine_raw, baseline):
        serving = _ratio(entry.sequences_per_s, engine_raw.sequences_per_s)
        gain = _ratio(engine_raw.sequences_per_s, eager.sequences_per_s)
        own = _ratio(eager.sequences_per_s, baseline.sequences_per_s)
        notes.append(f"P2 ({default}) decomposes as {ENTRY_POINT} / raw {entry.engine} (serving efficiency "
                     f"{serving:.2f}) x raw {entry.engine} / raw eager (engine gain {gain:.2f}) x raw eager / FastAPI "
                     f"(what the baseline service loses against its own engine, {own:.2f}) = "
                     f"{serving * gain * own:.2f}. The FastAPI service runs eager PyTorch in one uvicorn process, one "
                     "request at a time per replica, with every core as intra-op threads.")  # fmt: skip
    return notes


def render_markdown(report: BenchReport, plots: Sequence[Path]) -> str:
    machine, config = report.machine, report.config
    precisions = ", ".join(config.get("variants_measured", [report.default_precision]))
    lines = [
        "# Benchmark: engine variants served by Triton vs raw, vs eager PyTorch, vs a hand-written service",
        "",
        f"Machine: {machine['cpu_model']}, {machine['usable_cores']} usable cores ({machine['logical_cores']} "
        f"logical), GPUs: {', '.join(machine['gpus']) or 'none'}; Python {machine['python']}, torch "
        f"{machine.get('torch', '?')}, onnxruntime {machine.get('onnxruntime', '?')}; {machine['os']}.",
        "",
        f"Reproduce: `{report.command}`",
        "",
        f"Model: ESM-2 {config['model_size']} (random weights; speed does not depend on them). Engine variants: "
        f"{precisions}; the shipped defaults are **{report.default_precision}** "
        f"({config.get('default_source', 'the repository')}), every other variant is exported with the same device "
        f"plan ({config.get('device_plan', '?')}). Length mix `{config['length_mix']}` ({config['sequences']} "
        f"sequences, {_fmt(config.get('mean_length'))} residues on average, "
        f"{_fmt(100 * config.get('padding_waste', math.nan))} % padding when padded alone to its bucket). Served: "
        f"closed loop over gRPC, one sequence per request, concurrency {config['concurrency']}, "
        f"{config['duration_s']:g} s per point after 1 s warm-up, the pooled EMBEDDING only. Raw (group a): the "
        "engine in-process on the same sequences in bucketed batches (whole passes, at least "
        f"{config.get('raw_seconds', 0):g} s per point), the thread budget spent as one engine on every core or one "
        "single-threaded engine per core; the ceiling is the best of those.",
        "",
        "## Targets",
        "",
        "| target | figure | variant | measured | wanted | |",
        "|---|---|---|---:|---:|---|",
    ]
    lines += [
        f"| {f.target.label} | {f.name} | {f.precision} | {_fmt(f.value, 2)} | {f.target.comparison} "
        f"{f.target.threshold:g} | {_met(f)} |"
        for f in report.figures
        if f.target is not None
    ]
    by_question = {question: [f for f in report.figures if f.question == question]
                   for question in (SERVING, ENGINE_GAIN, VS_FASTAPI, BATCHING)}  # fmt: skip
    lines += [
        "",
        "## 1. Serving efficiency: served / raw, same engine file, same thread budget",
        "",
        "| variant | served / raw | served seq/s | raw ceiling seq/s | raw ceiling from | ratio | target |",
        "|---|---|---:|---:|---|---:|---|",
    ]
    lines += [
        f"| {f.precision} | {f.name} | {_fmt(f.numerator)} | {_fmt(f.denominator)} | {f.basis.removeprefix('raw: ')} "
        f"| {_fmt(f.value, 2)} | {_target(f)} |"
        for f in by_question[SERVING]
    ]
    lines += [
        "",
        "## 2. Engine gain: raw variant / raw eager fp32 PyTorch (SDPA), same threads, same sequences",
        "",
        "| variant | engine | raw seq/s | eager fp32 seq/s | gain | best splits |",
        "|---|---|---:|---:|---:|---|",
    ]
    lines += [
        f"| {f.precision} | {f.name.split(' / ')[0]} | {_fmt(f.numerator)} | {_fmt(f.denominator)} | "
        f"{_fmt(f.value, 2)} | {f.basis} |"
        for f in by_question[ENGINE_GAIN]
    ]
    lines += [
        "",
        "## 3. Triton vs the hand-written FastAPI + eager service (concurrency "
        f"{config['concurrency']}, `{config['length_mix']}` mix)",
        "",
        "| comparison | variant | Triton seq/s | FastAPI seq/s | ratio | target | basis |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    lines += [
        f"| {f.name} | {f.precision} | {_fmt(f.numerator)} | {_fmt(f.denominator)} | {_fmt(f.value, 2)} | "
        f"{_target(f)} | {f.basis} |"
        for f in by_question[VS_FASTAPI] + by_question[BATCHING]
    ]
    lines += [
        "",
        "## Throughput and latency",
        "",
        "| group | scenario | variant | device | threads | batch | conc. | seq/s | p50 ms | p99 ms | avg server batch "
        "| errors | rej. |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r.group} | {r.name} | {r.precision} | {r.device} | {r.threads or '—'} | {r.batch_size or '—'} | "
        f"{r.concurrency or '—'} | {_fmt(r.sequences_per_s)} | {_fmt(r.p50_ms)} | {_fmt(r.p99_ms)} | "
        f"{_fmt(r.average_server_batch, 2)} | {r.errors} | {r.rejections} |"
        for r in report.scenarios
    ]
    lines += [
        "",
        "Groups: a raw engine in-process (latency per batch), b Triton with the repository's shipped config "
        "(dynamic batching), c the same with dynamic batching removed (default variant), d the hand-written FastAPI "
        "+ eager PyTorch service (latency per request).",
        "",
        "## Server overhead at concurrency 1 (gRPC)",
        "",
        "Client latency minus the compute time (input + infer + output, all composing models) reported by Triton's "
        "statistics API for that request; `server-side` is Triton's own request time minus compute (P3: <= 1 ms).",
        "",
        "| variant | model | client p50 ms | compute p50 ms | overhead p50 ms | overhead p99 ms | server-side p50 ms "
        "| P3 |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for o in report.overheads:
        verdict = {True: "**met**", False: "missed", None: "—"}[P3.met(o.server_side_overhead_p50_ms)]
        lines.append(f"| {o.precision} | {o.model} | {_fmt(o.client_p50_ms, 2)} | {_fmt(o.compute_p50_ms, 2)} | "
                     f"{_fmt(o.overhead_p50_ms, 2)} | {_fmt(o.overhead_p99_ms, 2)} | "
                     f"{_fmt(o.server_side_overhead_p50_ms, 2)} | {verdict} |")  # fmt: skip
    lines += ["", "## What limits these figures", ""] + [f"- {note}" for note in limiting_notes(report)]
    if report.problems:
        lines += ["", "## Problems", ""] + [f"- {p}" for p in report.problems]
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(lines) + "\n"


def _label(r: ScenarioResult) -> str:
    if r.group == "a":
        return f"a: raw {r.engine} {r.precision} ({r.threads or r.device}, b={r.batch_size})"
    if r.group == "d":
        return f"d: {r.name.split(': ', 1)[-1]}"
    return f"{r.group}: {r.model} {r.precision}"


def plot_report(report: BenchReport, report_dir: Path, prefix: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"a": "#4c72b0", "b": "#55a868", "c": "#c44e52", "d": "#8172b2"}
    ceilings = {(r.engine, r.precision): r for r in report.scenarios if r.group == "a"}
    ceilings = {key: ceiling(report.scenarios, *key) or row for key, row in ceilings.items()}
    shown = list(ceilings.values()) + [r for r in report.scenarios if r.group != "a"]
    paths = []
    figure, axes = plt.subplots(figsize=(9, 0.45 * len(shown) + 1.5))
    axes.barh([_label(r) for r in shown], [r.sequences_per_s for r in shown], color=[colours[r.group] for r in shown])
    axes.invert_yaxis()
    axes.set_xlabel("sequences / s")
    axes.set_title("Throughput, same model and length mix (a: raw ceiling per engine variant)", fontsize=10)
    figure.tight_layout()
    paths.append(report_dir / f"{prefix}_throughput.png")
    figure.savefig(paths[-1], dpi=110)
    plt.close(figure)

    served_rows = [r for r in report.scenarios if r.group != "a" and not math.isnan(r.p99_ms)]
    if served_rows:
        figure, axes = plt.subplots(figsize=(7, 4.5))
        for r in served_rows:
            axes.scatter(r.sequences_per_s, r.p99_ms, color=colours[r.group], s=40)
            axes.annotate(_label(r).split(": ", 1)[-1], (r.sequences_per_s, r.p99_ms), fontsize=7,
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

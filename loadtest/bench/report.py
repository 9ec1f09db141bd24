"""How a benchmark run is written: markdown (the figures against their targets, the machine, the limits), JSON and
plots (the results and figures themselves are in `results`)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from tritonfleet.loadtest.bench.results import (
    BATCHING,
    ENGINE_GAIN,
    ENTRY_POINT,
    P3,
    RAW_AGAIN,
    RAW_GROUPS,
    SERVING,
    VS_FASTAPI,
    BenchReport,
    Figure,
    ScenarioResult,
    _ratio,
    ceiling,
    fastapi,
    served,
)
from tritonfleet.loadtest.studies.header import machine_description  # noqa: F401 - studies outside H4 import it here

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
    unbatched_onnx = served(results, "c", "esm2_onnx", default)
    if served_onnx is not None and unbatched_onnx is not None:
        with_queues, without = served_onnx.sequences_per_s, unbatched_onnx.sequences_per_s
        notes.append(f"Queue policies: the shipped networks keep two priority levels, bounded queues and deadlines; "
                     "with them Triton 24.10's batcher does not prefetch, and the wake-up at an execution's end comes "
                     "before the instance is back waiting, so a closed loop loses about one round trip per execution "
                     "(`contract/batching_plan.py` `for_unordered_model`): esm2_onnx served "
                     f"{with_queues:.1f} seq/s with them, {without:.1f} without dynamic batching "
                     f"({_ratio(with_queues, without):.2f}x).")  # fmt: skip
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
        f"{_fmt(100 * config.get('padding_waste', math.nan))} % padding when padded alone as the repository's "
        f"tokenizer pads it, length buckets {config.get('length_buckets', '?')}). Served: "
        f"closed loop over gRPC, one sequence per request, concurrency {config['concurrency']}, "
        f"{config['duration_s']:g} s per point after 1 s warm-up, the pooled EMBEDDING only. Raw (group a): the "
        "engine in-process on the same sequences, batched and padded as its repository's tokenizer pads them "
        "(exact lengths: length-sorted batches, each padded to its own longest sequence; else bucketed batches), "
        f"whole passes, at least {config.get('raw_seconds', 0):g} s per point; the thread budget spent as one "
        "engine on every core or one single-threaded engine per core; the ceiling is the best of those. Served / "
        "raw divides by the mean of that ceiling and its repeat right after the variant's served runs (group "
        f"{RAW_AGAIN}): the machine's speed drifts over a run of many minutes.",
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
    shown = list(ceilings.values()) + [r for r in report.scenarios if r.group not in RAW_GROUPS]
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

    served_rows = [r for r in report.scenarios if r.group not in RAW_GROUPS and not math.isnan(r.p99_ms)]
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

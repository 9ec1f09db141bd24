"""The flagship study's results (one SizeResult per model size, kept as JSON so that runs of different sizes add up)
and reports/flagship.md rendered from them."""

from __future__ import annotations

import json
import math
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from tritonfleet.export.esm2.sizes import ESM2_SIZES

GIB = 2**30
# Issue 19's targets: the served entry point against eager fp32 PyTorch with SDPA (650M) and the FastAPI service.
EAGER_TARGET = {"650M": 3.0}
FASTAPI_TARGET = 2.0
BUSY_LOAD_PER_THREAD = 1.5  # a load average above this many per thread at the end: other work shared the cores
LSCPU_FIELDS = ("Model name", "CPU(s)", "Thread(s) per core", "Core(s) per socket", "L2 cache", "L3 cache")
NOTABLE_FLAGS = ("avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


@dataclass
class ExportMeasurement:
    command: str
    seconds: float
    peak_tree_rss_bytes: int  # sampled sum over the export's process tree
    max_process_rss_bytes: int  # the kernel's high-water mark (ru_maxrss) of the export process
    repository_bytes: int
    precision: str
    plan: str


@dataclass
class PathMeasurement:
    name: str
    kind: str  # served | eager | fastapi
    sequences: int
    elapsed_s: float
    p50_ms: float
    p99_ms: float
    peak_rss_bytes: int
    niceness: int
    errors: int = 0
    first_error: str = ""
    batch_size: int = 1
    cpu_s: float | None = None  # CPU-seconds of the engine's processes (served: tritonserver and its stubs)
    engine_niceness: int | None = None  # served: the network instances' niceness

    @property
    def sequences_per_s(self) -> float:
        return self.sequences / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def cores_busy(self) -> float:
        """CPU-seconds per wall second: how many cores the path kept busy on average (at most the thread budget
        when nothing else counts; below it, cores idled, e.g. in a run's tail or for other work on the machine)."""
        return self.cpu_s / self.elapsed_s if self.cpu_s is not None and self.elapsed_s > 0 else math.nan

    @property
    def cpu_ms_per_sequence(self) -> float:
        return 1e3 * self.cpu_s / self.sequences if self.cpu_s is not None and self.sequences else math.nan


@dataclass
class SizeResult:
    size: str
    sequences: int
    residues: int
    longest: int
    concurrency: int
    threads: int
    seed: int
    export: ExportMeasurement | None
    export_note: str
    paths: list[PathMeasurement]
    measured_s: float
    finished_utc: str
    load_average: float
    command: str = ""
    revision: str = ""

    def path(self, kind: str, batch_size: int | None = None) -> PathMeasurement | None:
        return next((p for p in self.paths if p.kind == kind and batch_size in (None, p.batch_size)), None)

    @property
    def best_eager(self) -> PathMeasurement | None:
        """The eager row with the highest throughput."""
        eager = [p for p in self.paths if p.kind == "eager"]
        return max(eager, key=lambda p: p.sequences_per_s) if eager else None

    @property
    def leanest_eager(self) -> PathMeasurement | None:
        """The eager row that needed the least CPU per protein."""
        eager = [p for p in self.paths if p.kind == "eager" and not math.isnan(p.cpu_ms_per_sequence)]
        return min(eager, key=lambda p: p.cpu_ms_per_sequence) if eager else None


def _from_dict(data: dict) -> SizeResult:
    export = ExportMeasurement(**data["export"]) if data.get("export") else None
    paths = [PathMeasurement(**path) for path in data["paths"]]
    return SizeResult(**{**data, "export": export, "paths": paths})


def load_results(path: Path) -> dict[str, SizeResult]:
    if not path.is_file():
        return {}
    return {size: _from_dict(data) for size, data in json.loads(path.read_text()).items()}


def save_results(path: Path, results: dict[str, SizeResult]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({size: asdict(result) for size, result in results.items()}, indent=1) + "\n")


def machine_summary() -> str:
    """lscpu's main lines, the CPU flags that decide int8/bf16 speed, memory, torch and onnxruntime versions."""
    import psutil

    from tritonfleet.loadtest.studies.header import machine_description

    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        lscpu = ""
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    parts = [f"{name}: {fields[name].strip()}" for name in LSCPU_FIELDS if name in fields]
    flags = set(fields.get("Flags", "").split())
    parts.append("flags: " + (" ".join(flag for flag in NOTABLE_FLAGS if flag in flags) or "none of " + ", ".join(
        NOTABLE_FLAGS)))  # fmt: skip
    machine = machine_description()
    parts.append(f"usable cores {machine['usable_cores']}, RAM {psutil.virtual_memory().total / GIB:.1f} GiB")
    parts.append(f"torch {machine.get('torch')}, onnxruntime {machine.get('onnxruntime')} (in-process; the server runs "
                 "the local runtime's)")  # fmt: skip
    return "; ".join(parts)


def _ratio(numerator: PathMeasurement | None, denominator: PathMeasurement | None) -> float:
    if numerator is None or denominator is None or not denominator.sequences_per_s:
        return math.nan
    return numerator.sequences_per_s / denominator.sequences_per_s


def _number(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.0f}"


def _cores(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.2f}"


def _x(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.2f}x"


def _cpu_ratio(served: PathMeasurement | None, other: PathMeasurement | None) -> float:
    """How many times less CPU per protein the served path needs than `other` (robust to a busy machine)."""
    if served is None or other is None:
        return math.nan
    return other.cpu_ms_per_sequence / served.cpu_ms_per_sequence


def _verdict(value: float, target: float | None) -> str:
    if target is None:
        return "no target at this size"
    if math.isnan(value):
        return "not measured"
    return f"target >= {target:g}x: {'met' if value >= target else 'NOT met'}"


def _size_order(size: str) -> int:
    return list(ESM2_SIZES).index(size) if size in ESM2_SIZES else len(ESM2_SIZES)


def render(results: dict[str, SizeResult], machine: str) -> str:
    ordered = sorted(results.values(), key=lambda result: _size_order(result.size))
    lines = [
        "# Flagship sizes: ESM-2 150M / 650M exported, served and measured on this machine",
        "",
        "Generated by `loadtest/flagship.py` (`make flagship`, `tritonfleet flagship`). RANDOM weights built from each "
        "size's architecture config (speed and memory do not depend on them). Every path computes the same "
        "Swiss-Prot-like proteins once each (no response cache); seq/s = proteins / wall time for all of them.",
        "",
        f"Machine: {machine}.",
        "",
        "Two figures per comparison: throughput (wall time; the machine is shared with other work, so this is "
        "noisy) and CPU per protein (CPU-seconds of the engine's processes; little affected by other load). On an "
        "otherwise idle machine where every path keeps the cores busy the two agree.",
        "",
        "| size | export s | export peak GiB (tree / largest process) | served `esm2` seq/s | eager fp32 SDPA best "
        "seq/s | FastAPI seq/s | served / eager (seq/s; CPU) | served / FastAPI (seq/s; CPU) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result in ordered:
        served, eager, fastapi = result.path("served"), result.best_eager, result.path("fastapi")
        export = result.export
        export_cells = (f"{export.seconds:.0f} | {export.peak_tree_rss_bytes / GIB:.2f} / "
                        f"{export.max_process_rss_bytes / GIB:.2f}") if export else "— | —"  # fmt: skip
        lines.append(
            f"| {result.size} | {export_cells} | {_seq(served)} | {_seq(eager)} | {_seq(fastapi)} | "
            f"{_x(_ratio(served, eager))}; {_x(_cpu_ratio(served, result.leanest_eager))} | "
            f"{_x(_ratio(served, fastapi))}; {_x(_cpu_ratio(served, fastapi))} |"
        )
    for result in ordered:
        lines += ["", *_size_section(result)]
    return "\n".join(lines) + "\n"


def _seq(path: PathMeasurement | None) -> str:
    return "—" if path is None else f"{path.sequences_per_s:.2f}"


def _size_section(result: SizeResult) -> list[str]:
    served, eager, fastapi = result.path("served"), result.best_eager, result.path("fastapi")
    lines = [
        f"## ESM-2 {result.size} (random weights)",
        "",
        f"Command: `{result.command}`; revision {result.revision or 'unknown'}; finished {result.finished_utc}, the "
        f"paths took {result.measured_s / 60:.1f} min; load average at the end {result.load_average:.2f} (the machine "
        "is shared: other work may have run).  ",
        f"Workload: {result.sequences} proteins, Swiss-Prot-like lengths (seed {result.seed}), {result.residues} "
        f"residues, mean {result.residues / max(result.sequences, 1):.0f}, longest {result.longest}. Thread budget "
        f"{result.threads} (export `--target cpu:{result.threads}`; eager and FastAPI with {result.threads} torch "
        f"threads); served and FastAPI at concurrency {result.concurrency}, one protein per request.",
        "",
        "### Export (the shipped defaults, a child process)",
        "",
    ]
    if result.load_average > BUSY_LOAD_PER_THREAD * result.threads:
        lines[3:3] = [
            f"**Busy machine**: load average {result.load_average:.2f} at the end, over {BUSY_LOAD_PER_THREAD:g} x the "
            "thread budget (this run alone adds about one per thread): other work shared the cores, so the seq/s "
            "figures and their ratios say little; compare CPU per protein, or measure this size again on a quiet "
            f"machine (`tritonfleet flagship --sizes {result.size} --reuse-export`).",
            "",
        ]
    if result.export is None:
        lines.append(f"Not measured: {result.export_note}.")
    else:
        export = result.export
        lines += [
            f"`{export.command}`" + (f" ({result.export_note})" if result.export_note else ""),
            "",
            "| wall time | peak RSS, process tree (sampled every 0.1 s) | peak RSS, export process (kernel high-water "
            "mark) | repository on disk | precision (the export's default here) | served network's plan |",
            "|---:|---:|---:|---:|---|---|",
            f"| {export.seconds:.0f} s | {export.peak_tree_rss_bytes / GIB:.2f} GiB | "
            f"{export.max_process_rss_bytes / GIB:.2f} GiB | {export.repository_bytes / GIB:.2f} GiB | "
            f"{export.precision} | {export.plan} |",
        ]
    lines += [
        "",
        "### Throughput",
        "",
        "| path | seq/s | served `esm2` ÷ this | CPU ms per protein | this ÷ served `esm2` (CPU) | cores busy | "
        "p50 ms | p99 ms | peak RSS GiB | niceness | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for path in result.paths:
        nice = f"{path.niceness}" + (f" (network {path.engine_niceness})" if path.engine_niceness is not None else "")
        lines.append(
            f"| {path.name} | {path.sequences_per_s:.2f} | {_x(_ratio(served, path))} | "
            f"{_number(path.cpu_ms_per_sequence)} | {_x(_cpu_ratio(served, path))} | {_cores(path.cores_busy)} | "
            f"{path.p50_ms:.0f} | "
            f"{path.p99_ms:.0f} | {path.peak_rss_bytes / GIB:.2f} | {nice} | {path.errors} |"
        )
    vs_eager, vs_fastapi = _ratio(served, eager), _ratio(served, fastapi)
    leanest = result.leanest_eager
    cpu_vs_eager, cpu_vs_fastapi = _cpu_ratio(served, leanest), _cpu_ratio(served, fastapi)
    lines += [
        "",
        "Latency of eager rows is per batch"
        + (
            ""
            if any(p.kind == "eager" and p.batch_size > 1 for p in result.paths)
            else " (one protein per call only at this size: length-sorted batches never win here, loadtest/flagship.py "
            "DEFAULT_EAGER_BATCH)"
        )  # fmt: skip
        + ". CPU: served = tritonserver and its stubs (the client's CPU not counted); eager = this process; FastAPI "
        "= the uvicorn process. Cores busy = CPU-seconds / wall seconds (of the thread budget; less: cores idled, "
        "or other work on the machine took them). Peak RSS: served = tritonserver and its "
        "stubs; eager = this process "
        "(the load generator's Python included); FastAPI = the uvicorn process. Niceness: the served network's "
        "instances run with the export's `cpu_nice` on top of the server's; eager and FastAPI were run at the same "
        "niceness, so that other load on the machine hits every engine alike.",
        "",
        f"- served `esm2` / eager fp32 PyTorch with SDPA, throughput (its fastest row, "
        f"{eager.name if eager else '—'}): **{_x(vs_eager)}** ({_verdict(vs_eager, EAGER_TARGET.get(result.size))})",
        f"- the same by CPU per protein (eager's leanest row, {leanest.name if leanest else '—'}): "
        f"**{_x(cpu_vs_eager)}** ({_verdict(cpu_vs_eager, EAGER_TARGET.get(result.size))})",
        f"- served `esm2` / hand-written FastAPI + HF service: throughput **{_x(vs_fastapi)}**, CPU per protein "
        f"**{_x(cpu_vs_fastapi)}** ({_verdict(min(vs_fastapi, cpu_vs_fastapi), FASTAPI_TARGET)} by both)",
    ]
    problems = [f"{p.name}: {p.errors} failed requests, first: {p.first_error}" for p in result.paths if p.errors]
    lines += [f"- PROBLEM {problem}" for problem in problems]
    return lines

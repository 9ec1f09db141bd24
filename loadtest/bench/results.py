"""What a benchmark run produced: its results and the figures against their targets (issue 10: P1 serving
efficiency, P2 Triton vs the hand-written service, P3 server-side overhead); `report` writes them.

Two questions are kept apart:
1. serving efficiency: a served model / the raw engine it runs, same engine file, same thread budget;
2. engine gain: an engine variant's raw speed / eager fp32 PyTorch's, same threads, same sequences.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from tritonfleet.contract.esm2.pipeline import BLS_MODEL, ENSEMBLE_MODEL, ONNX_MODEL, TORCHSCRIPT_MODEL

# The served models measured in groups b and c; the pipelines take sequences and call a network.
TRITON_MODELS = (ONNX_MODEL, TORCHSCRIPT_MODEL, ENSEMBLE_MODEL, BLS_MODEL)
ENTRY_POINT = ENSEMBLE_MODEL  # the README's default entry point

RAW_AGAIN = "a2"  # group: a raw ceiling measured again after the served runs (bracketing them with group a)
RAW_GROUPS = ("a", RAW_AGAIN)  # the in-process rows; every other group is served (b, c) or the baseline (d)
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


# ---------------------------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------------------------


def ceiling(results: Sequence[ScenarioResult], engine: str, precision: str) -> ScenarioResult | None:
    """The fastest error-free raw CPU row (group a) of `engine` in `precision`: any thread split, any batch size."""
    rows = [r for r in results if r.group == "a" and r.engine == engine and r.precision == precision
            and r.device == "cpu" and r.errors == 0 and r.sequences_per_s > 0]  # fmt: skip
    return max(rows, key=lambda r: r.sequences_per_s, default=None)


def bracketed_ceiling(results: Sequence[ScenarioResult], engine: str,
                      precision: str) -> tuple[ScenarioResult | None, str]:  # fmt: skip
    """The `ceiling` row with the mean rate of its two measurements around the served runs (group a's, before, and
    its repeat in group `RAW_AGAIN`, after), and how it was taken; the row as it is when it was not repeated."""
    before = ceiling(results, engine, precision)
    if before is None:
        return None, ""
    after = [r for r in results if r.group == RAW_AGAIN and r.engine == engine and r.precision == precision
             and r.threads == before.threads and r.batch_size == before.batch_size and r.errors == 0
             and r.sequences_per_s > 0]  # fmt: skip
    if not after:
        return before, ""
    rate = (before.sequences_per_s + after[0].sequences_per_s) / 2
    how = f"mean of {before.sequences_per_s:.1f} before and {after[0].sequences_per_s:.1f} after the served runs"
    return replace(before, sequences_per_s=rate), how


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
            raw, how = bracketed_ceiling(results, row.engine, precision)
            basis = f"raw: {_where(raw)}" + (f" ({how})" if how else "")
            figures.append(_figure(SERVING, f"{model} / raw {row.engine}", precision, row, raw,
                                   P1 if model == "esm2_onnx" else None, basis))  # fmt: skip
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

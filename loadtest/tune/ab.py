"""The same-run comparison: candidates and the shipped config re-measured interleaved on one server; the choice."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tritonfleet.contract.model_config import ModelConfig
from tritonfleet.deploy.local.triton_admin import TritonAdmin
from tritonfleet.loadtest.studies.perf import failure_tail, read_points, run_until_stable
from tritonfleet.loadtest.studies.serving import serve
from tritonfleet.loadtest.tune.settings import MIN_GAIN, TuneError, TuneSettings

# Even at stability 999 % perf_analyzer can refuse a point (a window caught in the python backend's ~500 ms stalls on a
# busy host); the re-measurement then repeats that point, at most this often.
UNSTABLE_RETRIES = 2


@dataclass(frozen=True)
class Remeasurement:
    round: int
    variant: str
    throughput: float
    p50_ms: float
    p99_ms: float


@dataclass(frozen=True)
class Comparison:
    """A config's medians over the interleaved rounds."""

    variant: str
    throughput: float
    p99_ms: float
    throughputs: tuple[float, ...]


def summarize(measurements: Sequence[Remeasurement]) -> list[Comparison]:
    order = list(dict.fromkeys(m.variant for m in measurements))
    summaries = []
    for variant in order:
        mine = [m for m in measurements if m.variant == variant]
        summaries.append(
            Comparison(
                variant,
                statistics.median(m.throughput for m in mine),
                statistics.median(m.p99_ms for m in mine),
                tuple(m.throughput for m in mine),
            )
        )
    return summaries


@dataclass(frozen=True)
class Decision:
    winner: Comparison
    reason: str
    reason: str


def choose(comparisons: Sequence[Comparison], default: str, p99_ms: float) -> Decision:
    """The config to adopt. The fastest (median) config within the p99 budget replaces the shipped one only when it
    beat it in every interleaved round and by at least MIN_GAIN in the median: on a shared machine a single lucky
    round is not evidence. With nothing within the budget, the lowest p99."""
    shipped = next(c for c in comparisons if c.variant == default)
    within = [c for c in comparisons if c.p99_ms <= p99_ms]
    if not within:
        return Decision(min(comparisons, key=lambda c: c.p99_ms), "no config met the p99 budget: the lowest p99")
    best = max(within, key=lambda c: c.throughput)
    if best.variant == default:
        return Decision(shipped, "the shipped config had the highest median throughput")
    if shipped.p99_ms > p99_ms:
        return Decision(best, "the shipped config broke the p99 budget")
    won_every_round = all(mine > theirs for mine, theirs in zip(best.throughputs, shipped.throughputs))
    gain = best.throughput / shipped.throughput if shipped.throughput > 0 else math.inf
    if won_every_round and gain >= MIN_GAIN:
        return Decision(best, f"it beat the shipped config in every round, by {gain:.2f}x in the median")
    shortfall = "lost at least one round" if not won_every_round else f"by less than {MIN_GAIN:.2f}x"
    return Decision(
        shipped,
        f"{best.variant} was faster in the median ({gain:.2f}x) but {shortfall}, within this machine's noise: "
        "the shipped config stays",
    )


def remeasure(
    settings: TuneSettings, configs: dict[str, ModelConfig], input_data: Path, work: Path
) -> list[Remeasurement]:
    """Every config of `configs` loaded in turn (repository API + config override, as Model Analyzer's local mode
    does) on one server and measured by perf_analyzer, `ab_rounds` times, interleaved."""
    measurements = []
    work.mkdir(parents=True, exist_ok=True)
    with serve(settings.model_repository, model_control_mode="explicit", load_models=(), exit_timeout_s=5) as server:
        admin = TritonAdmin(server.http_url, timeout_s=300)
        for round_index in range(settings.ab_rounds):
            for variant, config in configs.items():
                admin.load(settings.model, config)
                csv_path = work / f"{variant}_round{round_index}.csv"
                csv_path.unlink(missing_ok=True)
                args = [
                    "-m", settings.model, "-u", server.grpc_url, "-i", "grpc", "--input-data", str(input_data),
                    "--concurrency-range", str(settings.comparison_concurrency), "-f", str(csv_path),
                    *(f"--{name}={value}" for name, value in settings.ab_windows.flags().items()),
                ]  # fmt: skip
                completed = run_until_stable(
                    args,
                    retries=UNSTABLE_RETRIES,
                    note=f"  {variant}: perf_analyzer found no stable window (a busy host); again",
                )
                points = read_points(csv_path, settings.model, "grpc")
                if completed.returncode != 0 or not points:
                    raise TuneError(f"perf_analyzer failed on {variant} (exit {completed.returncode}):\n"
                                    f"{failure_tail(completed, 1500)}")  # fmt: skip
                point = points[0]
                measurements.append(
                    Remeasurement(round_index, variant, point.throughput, point.p50_us / 1000, point.p99_us / 1000)
                )
                print(f"  round {round_index + 1}: {variant:32s} {point.throughput:7.2f} infer/s  "
                      f"p99 {point.p99_us / 1000:8.1f} ms", flush=True)  # fmt: skip
    return measurements

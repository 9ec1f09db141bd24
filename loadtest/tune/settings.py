"""A tuning run's settings: the search space, perf_analyzer's windows, presets and where a run writes."""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUTPUT = PROJECT_ROOT / "reports" / "tune"
LOOPBACK = "127.0.0.1"
RESULTS_CSV = Path("results") / "metrics-model-inference.csv"
# Rough costs for the up-front estimate: a server restart + model load per config, perf_analyzer's drain per point.
SERVER_CYCLE_S = 10.0
POINT_OVERHEAD_S = 3.0
# A re-measured config must beat the shipped one by this factor (median) and in every round to replace it.
MIN_GAIN = 1.05


class TuneError(RuntimeError):
    """The tuning run cannot go on; the message says why and what to do."""


@dataclass(frozen=True)
class SearchSpace:
    """The model-config variants of Model Analyzer's manual brute search (the cartesian product of the non-empty
    axes; an empty axis keeps the shipped value), each measured at every `concurrency`."""

    instance_counts: tuple[int, ...] = (1, 2)
    max_queue_delays_us: tuple[int, ...] = (0, 2000)
    preferred_batch_sizes: tuple[tuple[int, ...], ...] = ((2, 4), (8, 16, 32, 64))
    thread_counts: tuple[int, ...] = (1, 2)
    concurrency: tuple[int, ...] = (4, 8)

    @property
    def variants(self) -> int:
        """Variants Model Analyzer generates besides the shipped (default) config."""
        axes = [self.instance_counts, self.max_queue_delays_us, self.preferred_batch_sizes, self.thread_counts]
        return math.prod(len(axis) for axis in axes if axis) if any(axes) else 0


@dataclass(frozen=True)
class Windows:
    """A perf_analyzer measurement of `trials` fixed time windows, accepted as measured (stability 999 %): bounded
    time per point on a noisy shared machine, where stabilising windows may never converge."""

    interval_ms: int
    trials: int = 3

    @property
    def seconds(self) -> float:
        return self.trials * self.interval_ms / 1000 + POINT_OVERHEAD_S

    def flags(self) -> dict[str, int | str]:
        return {"measurement-mode": "time_windows", "measurement-interval": self.interval_ms,
                "stability-percentage": 999, "max-trials": self.trials}  # fmt: skip


@dataclass(frozen=True)
class TuneSettings:
    """One tuning run. `candidates`: how many of Model Analyzer's best configs are re-measured against the shipped
    one, `ab_rounds` times each, interleaved, at `ab_concurrency` (default: the highest searched concurrency)."""

    model_repository: Path
    model: str
    output: Path = DEFAULT_OUTPUT
    p99_ms: int = 1500
    length_mix: str = "short"
    sequences: int = 32
    space: SearchSpace = field(default_factory=SearchSpace)
    search_windows: Windows = field(default_factory=lambda: Windows(3000))
    max_auto_adjusts: int = 2
    candidates: int = 3
    ab_rounds: int = 3
    ab_windows: Windows = field(default_factory=lambda: Windows(4000))
    ab_concurrency: int | None = None
    profile_timeout_s: float = 14 * 60

    @property
    def comparison_concurrency(self) -> int:
        return self.ab_concurrency or max(self.space.concurrency)

    def estimate_s(self) -> tuple[float, float]:
        """(search, re-measurement) seconds, roughly."""
        configs = self.space.variants + 1
        search = configs * (SERVER_CYCLE_S + len(self.space.concurrency) * self.search_windows.seconds)
        comparison = SERVER_CYCLE_S + (self.candidates + 1) * self.ab_rounds * (self.ab_windows.seconds + 3.0)
        return search, comparison


PRESETS: dict[str, dict[str, Any]] = {
    # make tune: 16 variants + the default at 2 concurrencies, then the top 3 vs the default, 3 rounds (~15 min).
    "full": {},
    # make tune-smoke: the default + one variant at one concurrency, one comparison round (~1 min after export).
    # The variant differs from what export writes on CPU in every swept knob, so the two configs really differ.
    "smoke": {
        "sequences": 8,
        "space": SearchSpace(
            instance_counts=(1,),
            max_queue_delays_us=(1000,),
            preferred_batch_sizes=(),
            thread_counts=(2,),
            concurrency=(2,),
        ),
        "search_windows": Windows(2000),
        "max_auto_adjusts": 1,
        "candidates": 1,
        "ab_rounds": 1,
        "ab_windows": Windows(1000),
        "profile_timeout_s": 150.0,
        "output": PROJECT_ROOT / "reports" / "tune-smoke",
    },
}


@dataclass(frozen=True)
class RunPaths:
    """Where one run writes. Model Analyzer's export path is `root`: results/, reports/, plots/ land there."""

    root: Path

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def profile_config(self) -> Path:
        return self.root / "model-analyzer.yaml"

    @property
    def report_config(self) -> Path:
        return self.work / "model-analyzer-report.yaml"

    @property
    def log(self) -> Path:
        return self.root / "model-analyzer.log"

    @property
    def server_log(self) -> Path:
        return self.root / "tritonserver.log"

    @property
    def checkpoints(self) -> Path:
        return self.work / "checkpoints"

    @property
    def variants(self) -> Path:
        return self.work / "output_model_repository"

    @property
    def server_workdir(self) -> Path:
        return self.work / "server"

    @property
    def server_shim(self) -> Path:
        return self.work / "bin" / "tritonserver"

    @property
    def perf_analyzer_wrapper(self) -> Path:
        return self.work / "bin" / "perf_analyzer"

    def input_data(self, model: str) -> Path:
        return self.work / "input" / f"{model}.json"

    @property
    def results_csv(self) -> Path:
        return self.root / RESULTS_CSV

    @property
    def best_repository(self) -> Path:
        return self.root / "best_repository"

    @property
    def comparison_csv(self) -> Path:
        return self.root / "comparison.csv"

    @property
    def run_json(self) -> Path:
        return self.root / "tune.json"

    @property
    def summary(self) -> Path:
        return self.root / "summary.md"

    def clean(self) -> None:
        """Remove a previous run's outputs (Model Analyzer refuses another search's checkpoint); summary.md stays
        until this run writes its own."""
        for name in ("work", "results", "reports", "plots", "best_repository"):
            shutil.rmtree(self.root / name, ignore_errors=True)
        for path in (self.profile_config, self.log, self.server_log, self.comparison_csv, self.run_json):
            path.unlink(missing_ok=True)

"""Tune one model's Triton config for this machine with NVIDIA Model Analyzer, against the local runtime.

    python -m tritonfleet.loadtest.tune --model-repository model_repository --model esm2_onnx --p99-ms 1500
    python -m tritonfleet.loadtest.tune --preset smoke --model-repository REPO --model pooler_onnx --output DIR

`make tune` / `make tune-smoke`. Model Analyzer (the `tune` extra, `triton-model-analyzer`) runs in `local` launch
mode with the project's own tools: `triton_server_path` is a shim for `deploy.local.tritonserver_exec` (the binary,
backend directory and stub environment of `python -m deploy.local`), `perf_analyzer_path` a wrapper around the
project's perf_analyzer install, and perf_analyzer's `--input-data` is the project's protein workload. One run:

1. brute search over the model-config variants of `SearchSpace` (instance count x max_queue_delay x preferred batch
   sizes x backend thread count, each `KIND_CPU`) plus the shipped config, at each concurrency; objective: highest
   throughput whose p99 stays within `--p99-ms` (`model-analyzer profile`, bounded by `--profile-timeout-min`);
2. Model Analyzer's detailed reports for its best configs and the default (`model-analyzer report`);
3. its best `--candidates` re-measured against the shipped config on one server, interleaved round by round
   (A B C A B C ...), so a shared machine's load drifts hit every config alike; the winner comes from this
   same-run comparison, not from Model Analyzer's ranking alone;
4. the winner written as a ready repository (a copy of the input with the winner's config.pbtxt), the
   `python -m export` flags that reproduce it, and `summary.md`.

Everything lands under `--output` (default reports/tune/); `summary.md` is the one file meant to be committed.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import io
import json
import math
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from tritonfleet.contract.command_line import HelpFormatter
from tritonfleet.contract.model_config import CONFIG_FILENAME, ModelConfig, instance_count, read_config, write_config
from tritonfleet.deploy.local import local_server
from tritonfleet.deploy.local.triton_admin import TritonAdmin
from tritonfleet.deploy.local.tritonserver_exec import WORKDIR_VARIABLE, write_shim
from tritonfleet.loadtest.perf_analyzer import PerfAnalyzerNotInstalledError, run_perf_analyzer, write_wrapper
from tritonfleet.loadtest.perf_sweep import parse_perf_csv, write_input_data
from tritonfleet.loadtest.workload import buckets_from_repository, generate_sequences, length_mix, repository_targets

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = PROJECT_ROOT / "reports" / "tune"
LOOPBACK = "127.0.0.1"
# The backend parameter that sets a model's compute threads, by platform/backend (native names, which our
# Python-based backends honour too).
THREAD_PARAMETERS = {
    "onnxruntime_onnx": "intra_op_thread_count",
    "onnxruntime": "intra_op_thread_count",
    "pytorch_libtorch": "INTRA_OP_THREAD_COUNT",
    "pytorch": "INTRA_OP_THREAD_COUNT",
}
# Columns of Model Analyzer's results/metrics-model-inference.csv (`inference_output_fields` below).
INFERENCE_OUTPUT_FIELDS = [
    "model_name", "batch_size", "concurrency", "model_config_path", "instance_group", "max_batch_size",
    "satisfies_constraints", "perf_throughput", "perf_latency_avg", "perf_latency_p95", "perf_latency_p99",
    "perf_server_queue", "perf_server_compute_infer",
]  # fmt: skip
RESULTS_CSV = Path("results") / "metrics-model-inference.csv"
# After SIGINT Model Analyzer finishes the measurement in progress and writes its checkpoint.
INTERRUPT_GRACE_S = 180.0
# Rough costs for the up-front estimate: a server restart + model load per config, perf_analyzer's drain per point.
SERVER_CYCLE_S = 10.0
POINT_OVERHEAD_S = 3.0
# A re-measured config must beat the shipped one by this factor (median) and in every round to replace it.
MIN_GAIN = 1.05


class TuneError(RuntimeError):
    """The tuning run cannot go on; the message says why and what to do."""


# ---------------------------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------------------------


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


# Even at stability 999 % perf_analyzer can refuse a point whose windows differ by more than 11x (a window caught in
# the python backend's ~500 ms stalls on a busy host); the re-measurement then repeats that point, at most this often.
UNSTABLE_MESSAGE = "Failed to obtain stable measurement"
UNSTABLE_RETRIES = 2


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


# ---------------------------------------------------------------------------------------------------------------
# Model Analyzer configs
# ---------------------------------------------------------------------------------------------------------------


def thread_parameter(config: ModelConfig) -> str | None:
    return THREAD_PARAMETERS.get(config.platform) or THREAD_PARAMETERS.get(config.backend)


def model_config_parameters(space: SearchSpace, config: ModelConfig) -> dict[str, Any]:
    """Model Analyzer's `model_config_parameters` sweeping `space` over `config` (a list sweeps, a list of lists
    sweeps lists). Instance groups always name KIND_CPU: a group without a kind would replace the shipped one."""
    parameters: dict[str, Any] = {}
    if space.instance_counts:
        parameters["instance_group"] = [[{"kind": "KIND_CPU", "count": count}] for count in space.instance_counts]
    batching: dict[str, Any] = {}
    if space.max_queue_delays_us:
        batching["max_queue_delay_microseconds"] = list(space.max_queue_delays_us)
    if space.preferred_batch_sizes:
        largest = max(max(sizes) for sizes in space.preferred_batch_sizes)
        if largest > config.max_batch_size:
            # The serving plan caps executions (max_batch_size, often 1 on CPU) so interactive requests never wait
            # long behind bulk ones; a search over batch sizes has to lift that cap in its variants.
            parameters["max_batch_size"] = [largest]
        batching["preferred_batch_size"] = [list(sizes) for sizes in space.preferred_batch_sizes]
    if batching:
        parameters["dynamic_batching"] = batching
    if space.thread_counts:
        name = thread_parameter(config)
        if name is None:
            raise TuneError(f"{config.name}: no thread-count parameter known for platform "
                            f"{config.platform or config.backend!r}; search without thread counts")  # fmt: skip
        parameters["parameters"] = {name: {"string_value": [str(count) for count in space.thread_counts]}}
    return parameters


def profile_config(
    settings: TuneSettings, paths: RunPaths, shipped: ModelConfig, ports: tuple[int, int, int]
) -> dict[str, Any]:
    """The `model-analyzer profile -f` YAML (as a dict): local launch mode with the project's tools, CPU only."""
    http, grpc, metrics = ports
    model: dict[str, Any] = {
        "cpu_only": True,
        "parameters": {"concurrency": list(settings.space.concurrency)},
        "perf_analyzer_flags": {"input-data": str(paths.input_data(settings.model)), **settings.search_windows.flags()},
    }
    if parameters := model_config_parameters(settings.space, shipped):
        model["model_config_parameters"] = parameters
    return {
        "model_repository": str(Path(settings.model_repository).resolve()),
        "triton_launch_mode": "local",
        "triton_server_path": str(paths.server_shim),
        "triton_server_environment": {WORKDIR_VARIABLE: str(paths.server_workdir)},
        "triton_output_path": str(paths.server_log),
        "perf_analyzer_path": str(paths.perf_analyzer_wrapper),
        "triton_http_endpoint": f"{LOOPBACK}:{http}",
        "triton_grpc_endpoint": f"{LOOPBACK}:{grpc}",
        "triton_metrics_url": f"http://{LOOPBACK}:{metrics}/metrics",
        "client_protocol": "grpc",
        "gpus": [],  # no DCGM/GPU metrics (`dcgm_disable` is for remote mode only)
        "collect_cpu_metrics": False,  # it would only count tritonserver's own RAM, not the stubs holding models
        "output_model_repository_path": str(paths.variants),
        "override_output_model_repository": True,
        "checkpoint_directory": str(paths.checkpoints),
        "export_path": str(paths.root),
        "run_config_search_mode": "brute",
        "run_config_search_disable": True,  # exactly the variants listed + the default
        "perf_analyzer_max_auto_adjusts": settings.max_auto_adjusts,
        "num_configs_per_model": max(settings.candidates, 1),
        "skip_detailed_reports": True,  # `model-analyzer report` writes them (report_config)
        "objectives": {"perf_throughput": 10},
        "constraints": {"perf_latency_p99": {"max": settings.p99_ms}},
        "inference_output_fields": INFERENCE_OUTPUT_FIELDS,
        "profile_models": {settings.model: model},
    }


def report_config(paths: RunPaths, variants: Sequence[str]) -> dict[str, Any]:
    return {
        "checkpoint_directory": str(paths.checkpoints),
        "export_path": str(paths.root),
        "report_model_configs": list(variants),
    }


def default_variant(model: str) -> str:
    return f"{model}_config_default"


# ---------------------------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResultRow:
    """One row of Model Analyzer's metrics-model-inference.csv."""

    variant: str
    concurrency: int
    throughput: float
    p99_ms: float
    satisfies_constraints: bool


def parse_results_csv(text: str) -> list[ResultRow]:
    rows = []
    for row in csv.DictReader(io.StringIO(text)):
        row = {key.strip(): (value or "").strip() for key, value in row.items() if key}
        if not row.get("Model Config Path"):
            continue
        rows.append(
            ResultRow(
                variant=row["Model Config Path"],
                concurrency=int(float(row["Concurrency"])),
                throughput=float(row["Throughput (infer/sec)"]),
                p99_ms=float(row["p99 Latency (ms)"]),
                satisfies_constraints=row["Satisfies Constraints"].lower() == "yes",
            )
        )
    return rows


@dataclass(frozen=True)
class RankedConfig:
    """A config's measurements; `best` is its highest-throughput row within the p99 budget (None: none was)."""

    variant: str
    rows: tuple[ResultRow, ...]
    best: ResultRow | None


def rank_configs(rows: Sequence[ResultRow]) -> list[RankedConfig]:
    """Configs best first: those with a row within the budget by that row's throughput, then the others by their
    lowest p99."""
    by_variant: dict[str, list[ResultRow]] = {}
    for row in rows:
        by_variant.setdefault(row.variant, []).append(row)
    ranked = []
    for variant, measured in by_variant.items():
        feasible = [row for row in measured if row.satisfies_constraints]
        best = max(feasible, key=lambda row: row.throughput) if feasible else None
        ranked.append(RankedConfig(variant, tuple(sorted(measured, key=lambda row: row.concurrency)), best))

    def order(config: RankedConfig) -> tuple[int, float]:
        if config.best is not None:
            return (0, -config.best.throughput)
        return (1, min(row.p99_ms for row in config.rows))

    return sorted(ranked, key=order)


@dataclass(frozen=True)
class VariantSettings:
    """The tuned knobs of one config."""

    instances: int
    max_queue_delay_us: int
    preferred_batch_sizes: tuple[int, ...]
    threads: str  # "" = the backend's default

    @classmethod
    def of(cls, config: ModelConfig) -> VariantSettings:
        name = thread_parameter(config)
        threads = config.parameters[name].string_value if name and name in config.parameters else ""
        return cls(
            instances=instance_count(config),
            max_queue_delay_us=config.dynamic_batching.max_queue_delay_microseconds,
            preferred_batch_sizes=tuple(config.dynamic_batching.preferred_batch_size),
            threads=threads,
        )


def export_flags(shipped: ModelConfig, chosen: ModelConfig) -> tuple[list[str], list[str]]:
    """(`python -m export` flags that turn the shipped config into the chosen one, changes no export flag covers).

    The flags are those of export's CPU plan and batcher (`--cpu-instances`, `--cpu-threads`,
    `--max-queue-delay-us`, `--preferred-batch-sizes`); they apply to every network model of the export.
    """
    before, after = VariantSettings.of(shipped), VariantSettings.of(chosen)
    flags: list[str] = []
    manual: list[str] = []
    if after.instances != before.instances:
        flags += ["--cpu-instances", str(after.instances)]
    if after.threads != before.threads:
        if after.threads:
            flags += ["--cpu-threads", after.threads]
        else:
            manual.append(f"no {thread_parameter(shipped)} parameter (the backend's default thread count)")
    if after.max_queue_delay_us != before.max_queue_delay_us:
        flags += ["--max-queue-delay-us", str(after.max_queue_delay_us)]
    if after.preferred_batch_sizes != before.preferred_batch_sizes:
        if after.preferred_batch_sizes:
            flags += ["--preferred-batch-sizes", ",".join(map(str, after.preferred_batch_sizes))]
        else:
            manual.append("no preferred_batch_size in dynamic_batching")
    return flags, manual


_CANONICAL_COMMAND = re.compile(
    r"^#.*Canonical command[^:]*:\s*((?:tritonfleet export|python -m export) .+)$", re.MULTILINE
)


def export_command(config_text: str, flags: Sequence[str]) -> str | None:
    """The export command in the shipped config's header with `flags` added; None when the header names none."""
    match = _CANONICAL_COMMAND.search(config_text)
    return " ".join([match.group(1).strip(), *flags]) if match else None


# ---------------------------------------------------------------------------------------------------------------
# Same-run comparison (interleaved re-measurement)
# ---------------------------------------------------------------------------------------------------------------


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
    with local_server(
        settings.model_repository, model_control_mode="explicit", load_models=(), exit_timeout_s=5
    ) as server:
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
                for _attempt in range(UNSTABLE_RETRIES + 1):
                    completed = run_perf_analyzer(args, timeout=600)
                    if UNSTABLE_MESSAGE not in completed.stdout + completed.stderr:
                        break
                    print(f"  {variant}: perf_analyzer found no stable window (a busy host); again", flush=True)
                points = parse_perf_csv(csv_path.read_text(), settings.model, "grpc") if csv_path.is_file() else []
                if completed.returncode != 0 or not points:
                    tail = (completed.stderr or completed.stdout).strip()[-1500:]
                    raise TuneError(f"perf_analyzer failed on {variant} (exit {completed.returncode}):\n{tail}")
                point = points[0]
                measurements.append(
                    Remeasurement(round_index, variant, point.throughput, point.p50_us / 1000, point.p99_us / 1000)
                )
                print(f"  round {round_index + 1}: {variant:32s} {point.throughput:7.2f} infer/s  "
                      f"p99 {point.p99_us / 1000:8.1f} ms", flush=True)  # fmt: skip
    return measurements


# ---------------------------------------------------------------------------------------------------------------
# Running Model Analyzer
# ---------------------------------------------------------------------------------------------------------------


def model_analyzer_executable() -> Path:
    path = Path(sys.executable).parent / "model-analyzer"
    if not path.is_file():
        raise TuneError(
            "Model Analyzer is not installed in this environment: `make setup` installs it (the `tune` extra), "
            "or `pip install -e '.[tune]'`"
        )
    return path


def free_ports(count: int) -> tuple[int, ...]:
    """`count` distinct free loopback ports (all sockets held open together, so no port is picked twice)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind((LOOPBACK, 0))
        return tuple(sock.getsockname()[1] for sock in sockets)


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def run_model_analyzer(args: Sequence[str], paths: RunPaths, timeout_s: float) -> tuple[int, bool]:
    """Run `model-analyzer ARGS` in `paths.work`, its output to the console and `paths.log` (appended);
    (exit status, interrupted). The launcher's work folder is set in Model Analyzer's own environment too: it also
    starts tritonserver without `triton_server_environment` (to read model configs).

    At `timeout_s` it gets SIGINT: Model Analyzer finishes the measurement in progress, writes its checkpoint and
    exits, and what it measured is still used.
    """
    command = [str(model_analyzer_executable()), *args]
    env = {**os.environ, WORKDIR_VARIABLE: str(paths.server_workdir)}
    with paths.log.open("a", encoding="utf-8") as log:
        log.write(f"$ {shlex.join(command)}\n")
        log.flush()
        process = subprocess.Popen(
            command, cwd=paths.work, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        assert process.stdout is not None
        pump = threading.Thread(target=_copy_lines, args=(process.stdout, log), daemon=True)
        pump.start()
        interrupted = False
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            interrupted = True
            print(f"model-analyzer still running after {timeout_s / 60:.1f} min: interrupting it", flush=True)
            process.send_signal(signal.SIGINT)
            _wait_or_kill(process, INTERRUPT_GRACE_S)
        except KeyboardInterrupt:
            _wait_or_kill(process, INTERRUPT_GRACE_S)  # it got the terminal's SIGINT too
            raise
        finally:
            pump.join(timeout=10)
    return process.returncode, interrupted


def _copy_lines(source: io.TextIOBase, log: io.TextIOBase) -> None:
    for line in source:
        log.write(line)
        sys.stdout.write(line)
    log.flush()
    sys.stdout.flush()


def _wait_or_kill(process: subprocess.Popen, timeout_s: float) -> None:
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=30)


# ---------------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class TuneResult:
    settings: TuneSettings
    ports: tuple[int, int, int]
    ranking: list[RankedConfig]
    variant_settings: dict[str, VariantSettings]
    comparisons: list[Comparison]
    winner: Comparison
    reason: str
    export_flags: list[str]
    manual_changes: list[str]
    export_command: str | None
    search_s: float
    total_s: float
    interrupted: bool
    ports_free_after: bool
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    started: str
    summary_report: Path | None = None


def prepare(settings: TuneSettings, paths: RunPaths) -> tuple[ModelConfig, tuple[int, int, int]]:
    """Clean the output, write the tools, the input data and the profile config; (shipped config, ports)."""
    repository = Path(settings.model_repository)
    config_path = repository / settings.model / CONFIG_FILENAME
    if not config_path.is_file():
        raise TuneError(f"no {config_path}: is --model right, and was the repository exported (`make export`)?")
    shipped = read_config(config_path)
    shipped.name = shipped.name or settings.model
    if any(character in str(paths.root.resolve()) for character in " ="):
        raise TuneError(f"--output {paths.root} must not contain spaces or '=' (Model Analyzer splits perf_analyzer "
                        "flags at both)")  # fmt: skip
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.clean()
    paths.work.mkdir(parents=True)
    write_shim(paths.server_shim)
    try:
        write_wrapper(paths.perf_analyzer_wrapper)
    except PerfAnalyzerNotInstalledError as error:
        raise TuneError(str(error)) from error
    target = repository_targets(repository)[settings.model]
    sequences = generate_sequences(settings.sequences, length_mix(settings.length_mix))
    write_input_data(target, sequences, buckets_from_repository(repository), paths.input_data(settings.model))
    ports = free_ports(3)
    paths.profile_config.write_text(yaml.safe_dump(profile_config(settings, paths, shipped, ports), sort_keys=False))
    return shipped, ports


def variant_config(paths: RunPaths, variant: str, shipped: ModelConfig) -> ModelConfig:
    """The config Model Analyzer generated for `variant` (the shipped one for the default), named as the model."""
    path = paths.variants / variant / CONFIG_FILENAME
    config = read_config(path) if path.is_file() else copy_config(shipped)
    config.name = shipped.name
    return config


def copy_config(config: ModelConfig) -> ModelConfig:
    return ModelConfig.FromString(config.SerializeToString())


def tune(settings: TuneSettings) -> TuneResult:
    started = datetime.datetime.now(datetime.timezone.utc)
    clock = time.monotonic()
    load_before = os.getloadavg()
    paths = RunPaths(Path(settings.output).resolve())
    shipped, ports = prepare(settings, paths)
    search_s, comparison_s = settings.estimate_s()
    print(f"Model Analyzer: {settings.space.variants} variants + the default of {settings.model} at concurrency "
          f"{list(settings.space.concurrency)} (~{search_s / 60:.0f} min, at most "
          f"{settings.profile_timeout_s / 60:.0f}), then the best {settings.candidates} vs the default "
          f"(~{comparison_s / 60:.0f} min); load average now {load_before[0]:.2f}", flush=True)  # fmt: skip

    search_start = time.monotonic()
    status, interrupted = run_model_analyzer(
        ["profile", "-f", str(paths.profile_config)], paths, settings.profile_timeout_s
    )
    search_elapsed = time.monotonic() - search_start
    if not paths.results_csv.is_file():
        raise TuneError(f"model-analyzer profile exited {status} without {paths.results_csv}; see {paths.log}")
    ranking = rank_configs(parse_results_csv(paths.results_csv.read_text()))
    if not ranking:
        raise TuneError(f"model-analyzer profile measured nothing (exit {status}); see {paths.log}")
    if status != 0 and not interrupted:
        print(f"warning: model-analyzer profile exited {status}; using the {len(ranking)} configs it measured")
    ports_free = all(port_is_free(port) for port in ports)

    default = default_variant(settings.model)
    candidates = [config.variant for config in ranking if config.variant != default][: settings.candidates]
    paths.report_config.write_text(yaml.safe_dump(report_config(paths, [default, *candidates]), sort_keys=False))
    report_status, _ = run_model_analyzer(["report", "-f", str(paths.report_config)], paths, 600)
    if report_status != 0:
        print(f"warning: model-analyzer report exited {report_status}; see {paths.log}")

    # The default is measured with the shipped config.pbtxt itself; the candidates with Model Analyzer's variants.
    configs = {
        default: copy_config(shipped),
        **{variant: variant_config(paths, variant, shipped) for variant in candidates},
    }
    print(f"Re-measuring {', '.join(configs)} interleaved ({settings.ab_rounds} rounds, concurrency "
          f"{settings.comparison_concurrency})", flush=True)  # fmt: skip
    measurements = remeasure(settings, configs, paths.input_data(settings.model), paths.work / "comparison")
    write_comparison_csv(paths.comparison_csv, measurements)
    comparisons = summarize(measurements)
    decision = choose(comparisons, default, settings.p99_ms)
    winner = decision.winner

    chosen = configs[winner.variant]
    flags, manual = export_flags(shipped, chosen)
    command = export_command((Path(settings.model_repository) / settings.model / CONFIG_FILENAME).read_text(), flags)
    write_best_repository(settings, paths, chosen, winner.variant, flags, manual)
    variant_settings = {
        config.variant: VariantSettings.of(variant_config(paths, config.variant, shipped)) for config in ranking
    }
    summaries = sorted((paths.root / "reports" / "summaries" / settings.model).glob("result_summary.*"))
    return TuneResult(
        settings=settings,
        ports=ports,
        ranking=ranking,
        variant_settings=variant_settings,
        comparisons=comparisons,
        winner=winner,
        reason=decision.reason,
        export_flags=flags,
        manual_changes=manual,
        export_command=command,
        search_s=search_elapsed,
        total_s=time.monotonic() - clock,
        interrupted=interrupted,
        ports_free_after=ports_free,
        load_before=load_before,
        load_after=os.getloadavg(),
        started=started.strftime("%Y-%m-%d %H:%M UTC"),
        summary_report=summaries[0] if summaries else None,
    )


def write_comparison_csv(path: Path, measurements: Sequence[Remeasurement]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(asdict(measurements[0])))
        writer.writeheader()
        writer.writerows(asdict(m) for m in measurements)


def write_best_repository(
    settings: TuneSettings, paths: RunPaths, chosen: ModelConfig, variant: str, flags: list[str], manual: list[str]
) -> Path:
    """A copy of the input repository (weights included) with the chosen config.pbtxt: ready to serve."""
    target = paths.best_repository
    shutil.copytree(settings.model_repository, target, ignore=shutil.ignore_patterns("__pycache__"))
    header = (
        f"# Chosen by `python -m tritonfleet.loadtest.tune` (Model Analyzer variant {variant}) for the machine it "
        "ran on.\n"
        f"# python -m export flags: {' '.join(flags) or '(none)'}"
        + (f"; not covered by a flag: {'; '.join(manual)}" if manual else "")
        + "\n"
    )
    write_config(chosen, target / settings.model, header)
    return target


# ---------------------------------------------------------------------------------------------------------------
# summary.md
# ---------------------------------------------------------------------------------------------------------------


def _describe(settings: VariantSettings | None) -> list[str]:
    if settings is None:
        return ["?"] * 4
    return [
        str(settings.instances),
        settings.threads or "backend default",
        str(settings.max_queue_delay_us),
        ",".join(map(str, settings.preferred_batch_sizes)) or "-",
    ]


def _shown(path: Path) -> str:
    """`path` relative to the working directory when it is below it (as a user typed it), else absolute."""
    path = Path(path).resolve()
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"


def summary_markdown(result: TuneResult, command: str) -> str:
    settings, space = result.settings, result.settings.space
    default = default_variant(settings.model)
    by_variant = {c.variant: c for c in result.comparisons}
    shipped = by_variant[default]
    winner = result.winner
    lines = [
        f"# Model Analyzer tuning: `{settings.model}` on this machine",
        "",
        f"Run {result.started}: `{command}` ({_minutes(result.total_s)} in all, Model Analyzer's search "
        f"{_minutes(result.search_s)}{', interrupted at its time limit' if result.interrupted else ''}). "
        f"Host: {os.cpu_count()} CPUs, load average {result.load_before[0]:.2f} before and "
        f"{result.load_after[0]:.2f} after. Workload: perf_analyzer over gRPC, batch 1, {settings.sequences} "
        f"sequences of the `{settings.length_mix}` length mix. Objective: highest throughput with p99 <= "
        f"{settings.p99_ms} ms.",
        "",
        "## Chosen config vs the shipped default (same run, interleaved)",
        "",
        f"Model Analyzer's best {len(result.comparisons) - 1} and the shipped config, re-measured on one server in "
        f"{settings.ab_rounds} interleaved round(s) at concurrency {settings.comparison_concurrency} "
        f"({settings.ab_windows.trials} x {settings.ab_windows.interval_ms / 1000:g} s windows each); medians:",
        "",
        "| config | instances | threads | max_queue_delay µs | preferred batch sizes | infer/s | p99 ms "
        "| infer/s per round |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for comparison in result.comparisons:
        name = "shipped default" if comparison.variant == default else comparison.variant
        if comparison.variant == winner.variant:
            name = f"**{name}** (chosen)"
        cells = [
            name,
            *_describe(result.variant_settings.get(comparison.variant)),
            f"{comparison.throughput:.2f}",
            f"{comparison.p99_ms:.0f}",
            ", ".join(f"{throughput:.2f}" for throughput in comparison.throughputs),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if winner.variant == default:
        lines.append(f"**Chosen: the shipped config** ({result.reason}).")
    else:
        ratio = f" ({winner.throughput / shipped.throughput:.2f}x)" if shipped.throughput > 0 else ""
        lines.append(
            f"**Chosen: {winner.variant}** ({result.reason}): {winner.throughput:.2f} vs {shipped.throughput:.2f} "
            f"infer/s{ratio}, p99 {winner.p99_ms:.0f} vs {shipped.p99_ms:.0f} ms."
        )
    lines.append("")
    if result.export_command:
        lines.append(f"Reproduce: `{result.export_command}`")
    elif result.export_flags:
        lines.append(f"Export flags: `{' '.join(result.export_flags)}`")
    if result.manual_changes:
        lines.append(f"No export flag for: {'; '.join(result.manual_changes)} (edit config.pbtxt).")
    lines += [
        f"Ready repository: `{_shown(settings.output)}/best_repository/` (the input repository with the chosen "
        "config.pbtxt; for reports/tune/ the configs are committed, the weights are not).",
        "",
        "## Model Analyzer's ranking (best row per config within the p99 budget)",
        "",
        f"Brute search: {space.variants} variants + the default, concurrency {list(space.concurrency)}, "
        f"{settings.search_windows.trials} x {settings.search_windows.interval_ms / 1000:g} s windows per point. "
        "Configs were measured one after another, so on a loaded machine the ranking also reflects load drift.",
        "",
        "| rank | config | instances | threads | max_queue_delay µs | preferred batch sizes | concurrency | infer/s "
        "| p99 ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for rank, config in enumerate(result.ranking, start=1):
        row = config.best or min(config.rows, key=lambda r: r.p99_ms)
        name = "shipped default" if config.variant == default else config.variant
        budget = "" if config.best else " (over budget)"
        cells = [
            str(rank),
            name,
            *_describe(result.variant_settings.get(config.variant)),
            str(row.concurrency),
            f"{row.throughput:.2f}",
            f"{row.p99_ms:.0f}{budget}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    report = result.summary_report.relative_to(settings.output.resolve()) if result.summary_report else None
    lines += [
        "",
        "## Files (under the output folder; for reports/tune/ the CSVs and configs are committed)",
        "",
        f"- `{RESULTS_CSV}`: every measurement; `{report or 'reports/summaries/'}`: Model Analyzer's summary; "
        "`reports/detailed/`: its detailed reports",
        "- `comparison.csv`: the interleaved re-measurement; `model-analyzer.yaml`, `model-analyzer.log`, "
        "`tritonserver.log`; `tune.json`: this summary as data",
        "",
    ]
    return "\n".join(lines)


def write_outputs(result: TuneResult, command: str) -> Path:
    paths = RunPaths(Path(result.settings.output).resolve())
    data = {
        "model": result.settings.model,
        "ports": list(result.ports),
        "ports_free_after": result.ports_free_after,
        "interrupted": result.interrupted,
        "search_s": round(result.search_s, 1),
        "total_s": round(result.total_s, 1),
        "ranking": [asdict(config) for config in result.ranking],
        "variants": {name: asdict(settings) for name, settings in result.variant_settings.items()},
        "comparison": [asdict(comparison) for comparison in result.comparisons],
        "winner": result.winner.variant,
        "reason": result.reason,
        "export_flags": result.export_flags,
        "export_command": result.export_command,
        "manual_changes": result.manual_changes,
    }
    paths.run_json.write_text(json.dumps(data, indent=2, default=str))
    paths.summary.write_text(summary_markdown(result, command), encoding="utf-8")
    return paths.summary


# ---------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


def _int_lists(text: str) -> tuple[tuple[int, ...], ...]:
    return tuple(_ints(group) for group in text.split("/") if group.strip())


# Command-line option (argparse dest) -> TuneSettings / SearchSpace field; options not given keep the preset's value.
_SETTING_OPTIONS = {
    **{name: name for name in ("output", "p99_ms", "length_mix", "sequences", "candidates")},
    "rounds": "ab_rounds",
    "comparison_concurrency": "ab_concurrency",
}
_SPACE_OPTIONS = {
    name: name
    for name in ("instance_counts", "max_queue_delays_us", "preferred_batch_sizes", "thread_counts", "concurrency")
}


def _given(args: argparse.Namespace, options: dict[str, str]) -> dict[str, Any]:
    return {field: getattr(args, dest) for dest, field in options.items() if getattr(args, dest) is not None}


def settings_from_args(args: argparse.Namespace) -> TuneSettings:
    settings = replace(TuneSettings(model_repository=args.model_repository, model=args.model), **PRESETS[args.preset])
    overrides = _given(args, _SETTING_OPTIONS)
    if args.profile_timeout_min is not None:
        overrides["profile_timeout_s"] = args.profile_timeout_min * 60
    return replace(settings, space=replace(settings.space, **_given(args, _SPACE_OPTIONS)), **overrides)


PROGRAM = "python -m tritonfleet.loadtest.tune"


def build_parser(prog: str = PROGRAM) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--model", default="esm2_onnx", help="the model to tune (default: esm2_onnx)")
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), default="full", help="full: `make tune`; smoke: default + 1 variant"
    )
    parser.add_argument("--output", type=Path, help="output folder (default: reports/tune, smoke: reports/tune-smoke)")
    parser.add_argument("--p99-ms", type=int, help="p99 latency budget in ms (default: 1500)")
    parser.add_argument(
        "--length-mix",
        help="protein length mix of the input data (default: short = the Swiss-Prot bins up to 300 aa; the full "
        "`swissprot` mix reaches 1022 aa, runs at 1-3 infer/s on 2 cores and gives too few requests per window "
        "for a bounded search; use it on bigger machines)",
    )
    parser.add_argument("--sequences", type=int, help="distinct sequences in the input data (default: 32)")
    space = parser.add_argument_group("search space (comma-separated values; an empty value keeps the shipped one)")
    space.add_argument("--instance-counts", type=_ints, help="default: 1,2")
    space.add_argument("--max-queue-delays-us", type=_ints, help="default: 0,2000")
    space.add_argument("--preferred-batch-sizes", type=_int_lists, help="sets split by '/'; default: 2,4/8,16,32,64")
    space.add_argument("--thread-counts", type=_ints, help="backend intra-op threads; default: 1,2")
    space.add_argument("--concurrency", type=_ints, help="default: 4,8")
    check = parser.add_argument_group("re-measurement against the default")
    check.add_argument("--candidates", type=int, help="Model Analyzer's best N re-measured (default: 3)")
    check.add_argument("--rounds", type=int, help="interleaved rounds (default: 3)")
    check.add_argument("--comparison-concurrency", type=int, help="default: the highest searched concurrency")
    parser.add_argument("--profile-timeout-min", type=float, help="interrupt the search after this (default: 14)")
    parser.add_argument(
        "--prepare-only",
        action="store_true",
        help="write the tools, input data and model-analyzer.yaml; print the command",
    )
    return parser


def main(argv: Sequence[str] | None = None, prog: str = PROGRAM) -> int:
    args = build_parser(prog).parse_args(argv)
    settings = settings_from_args(args)
    command = f"{prog} " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    try:
        if args.prepare_only:
            paths = RunPaths(Path(settings.output).resolve())
            prepare(settings, paths)
            print(f"cd {paths.work} && {WORKDIR_VARIABLE}={paths.server_workdir} {model_analyzer_executable()} "
                  f"profile -f {paths.profile_config}")  # fmt: skip
            return 0
        result = tune(settings)
    except TuneError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    summary = write_outputs(result, command)
    print(f"\n{summary.read_text()}")
    if result.export_command or result.export_flags:
        print(f"export flags for the chosen config: {result.export_command or ' '.join(result.export_flags)}")
    if not result.ports_free_after:
        print(f"error: a server still holds one of Model Analyzer's ports {result.ports}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One perf_analyzer runner for every study: run a point, retry it when perf_analyzer finds no stable window, parse
its `-f` CSV.

On a busy (shared) host perf_analyzer can refuse a point ("Failed to obtain stable measurement", exit status 2) even
with generous stability settings. Studies then either repeat the point as it was or measure a fixed number of
requests instead (`retry_args`); either way the retry lives here, once.
"""

from __future__ import annotations

import csv
import math
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tritonfleet.loadtest.perf_analyzer import run_perf_analyzer

UNSTABLE_EXIT_CODE = 2  # perf_analyzer's STABILITY_ERROR
UNSTABLE_MESSAGE = "Failed to obtain stable measurement"

Runner = Callable[..., "subprocess.CompletedProcess[str]"]


@dataclass(frozen=True)
class PerfPoint:
    """One perf_analyzer measurement (latencies in microseconds, as perf_analyzer writes them)."""

    model: str
    protocol: str
    mode: str  # "concurrency" | "request_rate"
    load: float  # concurrency or requests/s asked for
    throughput: float  # inferences/s
    p50_us: float
    p90_us: float
    p95_us: float
    p99_us: float
    client_send_us: float = 0.0
    network_server_us: float = 0.0
    server_queue_us: float = 0.0
    server_compute_input_us: float = 0.0
    server_compute_infer_us: float = 0.0
    server_compute_output_us: float = 0.0
    client_recv_us: float = 0.0


_COLUMN_FIELDS = {
    "Client Send": "client_send_us",
    "Network+Server Send/Recv": "network_server_us",
    "Server Queue": "server_queue_us",
    "Server Compute Input": "server_compute_input_us",
    "Server Compute Infer": "server_compute_infer_us",
    "Server Compute Output": "server_compute_output_us",
    "Client Recv": "client_recv_us",
}


def _number(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan


def parse_perf_csv(text: str, model: str, protocol: str) -> list[PerfPoint]:
    """Parse perf_analyzer's `-f` CSV (first table only; `--collect-metrics` GPU columns are ignored)."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return []
    header = [name.strip() for name in next(csv.reader([lines[0]]))]
    if "Inferences/Second" not in header:
        raise ValueError(f"not a perf_analyzer CSV (no Inferences/Second column): {lines[0][:200]}")
    mode, load_column = ("request_rate", "Request Rate") if "Request Rate" in header else ("concurrency", "Concurrency")
    points = []
    for row_values in csv.reader(lines[1:]):
        if len(row_values) < len(header) or not row_values[0].strip():
            break  # a blank line or a second table (e.g. per-model metrics) ends the first one
        row = dict(zip(header, (value.strip() for value in row_values)))
        load = _number(row.get(load_column))
        if math.isnan(load):
            break
        extras = {attr: _number(row.get(column)) for column, attr in _COLUMN_FIELDS.items() if column in row}
        points.append(
            PerfPoint(
                model=model,
                protocol=protocol,
                mode=mode,
                load=load,
                throughput=_number(row.get("Inferences/Second")),
                p50_us=_number(row.get("p50 latency")),
                p90_us=_number(row.get("p90 latency")),
                p95_us=_number(row.get("p95 latency")),
                p99_us=_number(row.get("p99 latency")),
                **extras,
            )
        )
    return points


def is_unstable(completed: subprocess.CompletedProcess[str]) -> bool:
    """Whether perf_analyzer gave up on a point for want of a stable window (its exit status or its message)."""
    output = (completed.stdout or "") + (completed.stderr or "")
    return completed.returncode == UNSTABLE_EXIT_CODE or UNSTABLE_MESSAGE in output


def failure_tail(completed: subprocess.CompletedProcess[str], characters: int = 300) -> str:
    """The end of what perf_analyzer said, for an error message."""
    return (completed.stderr or completed.stdout or "").strip()[-characters:]


def run_until_stable(
    args: Sequence[str],
    *,
    retry_args: Sequence[str] | None = None,
    retries: int = 1,
    timeout: float = 600,
    note: str = "",
    run: Runner = run_perf_analyzer,
) -> subprocess.CompletedProcess[str]:
    """perf_analyzer with `args`; while it finds no stable window, up to `retries` more runs with `retry_args` (default:
    `args` again), printing `note` before each. The caller checks the last run's exit status."""
    completed = run(list(args), timeout=timeout)
    for _ in range(retries):
        if not is_unstable(completed):
            break
        if note:
            print(note, flush=True)
        completed = run(list(retry_args if retry_args is not None else args), timeout=timeout)
    return completed


def read_points(csv_path: Path, model: str, protocol: str) -> list[PerfPoint]:
    """The points of a perf_analyzer `-f` CSV; none when perf_analyzer wrote no file."""
    return parse_perf_csv(csv_path.read_text(), model, protocol) if csv_path.is_file() else []

"""The flagship study's pieces (loadtest/flagship.py): fixed-work sending, eager batches, the export's measured memory,
niceness matching, and the report rendered from results that add up across runs."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from tritonfleet.contract.esm2_tokens import PAD_ID
from tritonfleet.loadtest.fixed_work import send_each_once
from tritonfleet.loadtest.flagship import export_arguments, length_sorted_batches, main
from tritonfleet.loadtest.flagship_report import (
    ExportMeasurement,
    PathMeasurement,
    SizeResult,
    load_results,
    render,
    save_results,
)
from tritonfleet.loadtest.process_memory import PeakRssSampler, tree_rss_bytes, wait_with_rusage

MIB = 2**20


def test_every_protein_is_sent_once_and_failures_are_counted():
    seen: list[str] = []
    lock = threading.Lock()

    def call(batch: list[str]) -> None:
        assert len(batch) == 1
        with lock:
            seen.append(batch[0])
        if batch[0] == "BAD":
            raise ValueError("refused")

    run = send_each_once(call, ["AAA", "CC", "BAD", "DDDD", "E"], concurrency=3)
    assert sorted(seen) == sorted(["AAA", "CC", "BAD", "DDDD", "E"])
    assert run.sequences == 4 and len(run.latencies_ms) == 4
    assert run.errors == 1 and run.first_error == "refused"


def test_eager_batches_are_length_sorted_and_padded_to_their_longest():
    proteins = ["A" * 30, "C" * 5, "D" * 12, "E" * 7, "F" * 20]
    batches = length_sorted_batches(proteins, 2)
    assert [ids.shape for ids, _ in batches] == [(2, 7 + 2), (2, 20 + 2), (1, 30 + 2)]
    ids, mask = batches[0]
    assert mask.sum(axis=1).tolist() == [5 + 2, 7 + 2]
    assert (ids[0, 7:] == PAD_ID).all() and (ids[1] != PAD_ID).all()
    assert all(ids.dtype == np.int64 for ids, _ in batches)


def test_the_export_command_is_the_shipped_default_for_the_cores(tmp_path):
    arguments = export_arguments("650M", 2, tmp_path / "repository")
    assert arguments == ["export", "esm2", "--random-init", "650M", "--target", "cpu:2", "--output",
                         str(tmp_path / "repository")]  # fmt: skip
    assert "--precision" not in arguments  # the export's default (auto) decides


def test_memory_of_a_child_is_seen_by_the_sampler_and_the_kernel():
    script = "import sys; block = bytearray(160 * 2**20); print('ready', flush=True); sys.stdin.readline()"
    child = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        with PeakRssSampler(child.pid) as memory:
            assert tree_rss_bytes(child.pid) >= 150 * MIB
        assert memory.peak_bytes >= 150 * MIB
        assert PeakRssSampler(os.getpid(), include_root=False).peak_bytes == 0  # not entered: nothing sampled
        child.stdin.write("\n")
        child.stdin.flush()
        exited = wait_with_rusage(child)
    finally:
        if child.returncode is None:
            child.kill()
            child.wait()
    assert exited.returncode == 0 and child.returncode == 0
    assert exited.max_rss_bytes >= 150 * MIB


def test_taking_a_niceness_reaches_every_thread_and_later_ones():
    """In a child process: niceness cannot be lowered again without privileges."""
    script = """
import os, threading
from tritonfleet.deploy.local.backends.contract import raise_niceness
start = os.getpriority(os.PRIO_PROCESS, 0)
ready, done, seen = threading.Event(), threading.Event(), {}
def early():
    ready.set(); done.wait(); seen["early"] = os.getpriority(os.PRIO_PROCESS, 0)
thread = threading.Thread(target=early); thread.start(); ready.wait()
raise_niceness(start + 3)
raise_niceness(start + 1)  # never lowers
later = threading.Thread(target=lambda: seen.update(later=os.getpriority(os.PRIO_PROCESS, 0)))
later.start(); later.join(); done.set(); thread.join()
print(start, seen["early"], seen["later"], os.getpriority(os.PRIO_PROCESS, 0))
"""
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    start, early, later, main_thread = map(int, completed.stdout.split())
    target = min(19, start + 3)
    assert (early, later, main_thread) == (target, target, target)


def _path(kind: str, seq_per_s: float, cpu_ms: float, batch_size: int = 1, **fields) -> PathMeasurement:
    sequences = 24
    return PathMeasurement(name=f"{kind} {batch_size}", kind=kind, sequences=sequences, elapsed_s=sequences / seq_per_s,
                           p50_ms=100.0, p99_ms=200.0, peak_rss_bytes=3 * 2**30, niceness=10, batch_size=batch_size,
                           cpu_s=cpu_ms * sequences / 1e3, **fields)  # fmt: skip


def _result(size: str, served: float, eager: float, fastapi: float, export: bool = True) -> SizeResult:
    paths = [
        _path("served", served, 2000.0 / served, engine_niceness=19),
        _path("eager", eager, 2000.0 / eager, batch_size=8),
        _path("eager", eager / 2, 2000.0 / eager, batch_size=1),
        _path("fastapi", fastapi, 2000.0 / fastapi),
    ]
    measured = ExportMeasurement("tritonfleet export esm2 ...", 335.0, 9 * 2**30, 8 * 2**30, 4 * 2**30, "int8",
                                 "CPU: 2 instance(s) x 1 intra-op thread(s) each") if export else None  # fmt: skip
    return SizeResult(size=size, sequences=24, residues=8000, longest=1000, concurrency=16, threads=2, seed=0,
                      export=measured, export_note="" if export else "reused", paths=paths,
                      measured_s=600.0, finished_utc="2026-12-07 06:30 UTC", load_average=2.0,
                      command="tritonfleet flagship --sizes 650M")  # fmt: skip


def test_results_add_up_across_runs_and_the_report_judges_the_targets(tmp_path):
    path = tmp_path / "flagship.json"
    save_results(path, {"650M": _result("650M", served=1.5, eager=0.4, fastapi=0.3)})
    results = load_results(path)
    results["150M"] = _result("150M", served=4.0, eager=2.5, fastapi=2.5, export=False)
    results["150M"].load_average = 3.8  # over 1.5 per thread at the end: other work shared the cores
    save_results(path, results)
    again = load_results(path)
    assert list(again) == ["650M", "150M"]
    assert again["650M"] == results["650M"]
    assert math.isclose(again["650M"].path("served").sequences_per_s, 1.5)
    assert again["650M"].best_eager.batch_size == 8

    report = render(again, "a test machine")
    assert report.index("## ESM-2 150M") < report.index("## ESM-2 650M")  # by size, not by run
    assert "| 650M | 335 | 9.00 / 8.00 | 1.50 | 0.40 | 0.30 | 3.75x; 3.75x | 5.00x; 5.00x |" in report
    assert "**3.75x** (target >= 3x: met)" in report
    assert "(target >= 2x: met by both)" in report
    assert "Not measured: reused." in report
    assert "**1.60x**, CPU per protein **1.60x** (target >= 2x: NOT met by both)" in report  # 150M: 4.0 / 2.5
    assert "no target at this size" in report  # 150M against eager
    assert report.count("**Busy machine**: load average 3.80") == 1
    assert "`tritonfleet flagship --sizes 150M --reuse-export`" in report


def test_quick_mode_refuses_nonsense_counts(capsys):
    with pytest.raises(SystemExit):
        main(["--quick", "--concurrency", "0", "--build-dir", str(Path("/nonexistent"))])
    assert "must be >= 1" in capsys.readouterr().err


def test_several_sizes_run_one_child_process_each_with_the_same_settings(tmp_path):
    from tritonfleet.loadtest.flagship import StudyConfig, _child_arguments

    config = StudyConfig(("150M", "650M"), None, 16, 8, 2, 0, tmp_path / "build", tmp_path / "flagship.md", True)
    arguments = _child_arguments(config, "650M")
    assert arguments[:2] == ["--sizes", "650M"] and arguments[-1] == "--reuse-export"
    assert "--sequences" not in arguments  # each size keeps its own default count
    assert arguments[arguments.index("--output") + 1] == str(tmp_path / "flagship.md")  # results add up in one report
    assert arguments[arguments.index("--eager-batch") + 1] == "8"
    per_size = StudyConfig(("150M", "650M"), None, 16, None, 2, 0, tmp_path, tmp_path / "flagship.md", True)
    assert "--eager-batch" not in _child_arguments(per_size, "650M")  # each size keeps its own eager rows


def test_eager_rows_per_size_skip_batches_where_they_never_win(tmp_path):
    from tritonfleet.loadtest.flagship import StudyConfig

    def config(eager_batch: int | None) -> StudyConfig:
        return StudyConfig(("650M",), None, 16, eager_batch, 2, 0, tmp_path, tmp_path / "flagship.md", False)

    assert config(None).eager_batch_sizes("150M") == (8, 1)
    assert config(None).eager_batch_sizes("650M") == (1,)  # one protein per call only: no duplicate rows
    assert config(4).eager_batch_sizes("650M") == (4, 1)  # asked for: measured
    assert config(1).eager_batch_sizes("150M") == (1,)
    assert config(None).sequences_for("650M") > config(None).sequences_for("150M") // 2


def test_the_report_says_how_many_cores_each_path_kept_busy():
    result = _result("650M", served=1.5, eager=0.4, fastapi=0.3)
    served = result.path("served")
    assert math.isclose(served.cores_busy, served.cpu_s / served.elapsed_s)
    result.paths = [path for path in result.paths if path.batch_size == 1]
    report = render({"650M": result}, "a test machine")
    assert "| cores busy |" in report and f"| {served.cores_busy:.2f} |" in report
    assert "one protein per call only at this size" in report  # no batch rows: the report says why
    assert "one protein per call only" not in render({"650M": _result("650M", 1.5, 0.4, 0.3)}, "a test machine")

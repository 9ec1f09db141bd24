"""The flagship study's three paths against real processes (a local tritonserver, eager PyTorch, the uvicorn service),
on the session's 8M repository and a few short proteins; and the whole `--quick` study (slow)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tritonfleet.loadtest.flagship import main, measure_eager, measure_handwritten, measure_served
from tritonfleet.loadtest.flagship_report import load_results
from tritonfleet.loadtest.workload import generate_sequences

PROTEINS = generate_sequences(3, "short", 5)
WARMUP = generate_sequences(1, "short", 6)


def test_served_entry_point_computes_every_protein_and_counts_the_server_cpu(esm2_repository: Path):
    served = measure_served(esm2_repository, PROTEINS, WARMUP, concurrency=2)
    assert (served.kind, served.sequences, served.errors) == ("served", 3, 0)
    assert served.cpu_s > 0 and served.peak_rss_bytes > 0
    assert served.engine_niceness >= served.niceness  # the network instances never run ahead of the server


def test_eager_rows_cover_both_thread_splits_for_each_batch_size():
    rows = measure_eager("8M", PROTEINS, WARMUP, threads=2, batch_sizes=(2, 1))
    assert [(row.batch_size, row.name.split("(")[1].split(",")[0]) for row in rows] == [
        (2, "length-sorted batches of 2"), (2, "length-sorted batches of 2"),
        (1, "one protein per call"), (1, "one protein per call"),
    ]  # fmt: skip
    assert all(row.sequences == 3 and row.cpu_s > 0 for row in rows)
    assert {"1 engine x 2 threads", "2 engines x 1 thread"} == {
        row.name.split(", ")[-1].rstrip(")") for row in rows[:2]
    }


@pytest.mark.slow  # uvicorn imports torch and builds the model in its own process
def test_handwritten_service_answers_one_protein_per_request():
    fastapi = measure_handwritten("8M", PROTEINS, WARMUP, threads=1, concurrency=2)
    assert (fastapi.kind, fastapi.sequences, fastapi.errors) == ("fastapi", 3, 0)
    assert fastapi.cpu_s > 0 and fastapi.peak_rss_bytes > 0


@pytest.mark.slow
def test_quick_study_exports_serves_and_writes_the_report(tmp_path: Path):
    output = tmp_path / "flagship.md"
    niceness = os.getpriority(os.PRIO_PROCESS, 0)
    assert main(["--quick", "--sequences", "3", "--build-dir", str(tmp_path / "build"), "--output", str(output)]) == 0
    assert os.getpriority(os.PRIO_PROCESS, 0) == niceness  # the eager rows' niceness stays in the study's child
    result = load_results(output.with_suffix(".json"))["8M"]
    assert result.export.seconds > 0 and result.export.max_process_rss_bytes > 0
    assert result.export.precision in ("int8", "fp32")
    assert [path.kind for path in result.paths] == ["served", "eager", "eager", "eager", "eager", "fastapi"]
    report = output.read_text()
    assert "## ESM-2 8M (random weights)" in report and "tritonfleet export esm2 --random-init 8M" in report

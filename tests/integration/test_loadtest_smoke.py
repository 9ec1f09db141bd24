"""Smoke runs of each load tool against a real local tritonserver (127.0.0.1). No timing assertions.

Locust runs 10 s headless over both protocols: enough for every user to connect, fire request events and for the
summary / CSV / HTML reports and the SLO verdict to be written, which is what this test checks; throughput is the
benchmark's job, not CI's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tritonfleet.loadtest.perf_analyzer import run_perf_analyzer
from tritonfleet.loadtest.perf_sweep import SweepConfig, SweepResult, run_point, write_input_data
from tritonfleet.loadtest.run import EXIT_RUN_FAILED
from tritonfleet.loadtest.run import main as run_main
from tritonfleet.loadtest.workload import buckets_from_repository, generate_sequences, repository_targets

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def test_locust_over_http_and_grpc(esm2_server, tmp_path: Path) -> None:
    exit_code = run_main([
        "--host", esm2_server.http_url, "--grpc-url", esm2_server.grpc_url, "--protocol", "both",
        "-u", "2", "-r", "2", "-t", "10s", "--length-mix", "short", "--report-dir", str(tmp_path),
        "--slo-p99-ms", "600000",
    ])  # fmt: skip
    assert exit_code != EXIT_RUN_FAILED
    summary = json.loads((tmp_path / "locust_summary.json").read_text())
    assert summary["errors"] == 0, summary
    assert set(summary["by_protocol"]) == {"HTTP", "gRPC"}
    for protocol, row in summary["by_protocol"].items():
        assert row["successes"] > 0, protocol
    assert summary["slo"]["passed"] is (exit_code == 0)
    stats_csv = (tmp_path / "locust_stats.csv").read_text()
    assert "esm2" in stats_csv and "gRPC" in stats_csv
    assert (tmp_path / "locust.html").stat().st_size > 0


def test_perf_analyzer_one_point(esm2_server, esm2_repository: Path, tmp_path: Path) -> None:
    version = run_perf_analyzer(["--version"], timeout=60)
    assert "Perf Analyzer" in version.stdout + version.stderr
    targets = repository_targets(esm2_repository)
    config = SweepConfig(http_url=esm2_server.http_url, grpc_url=esm2_server.grpc_url, models=("esm2_onnx",),
                         report_dir=tmp_path, request_count=4, warmup_requests=1)  # fmt: skip
    input_data = write_input_data(
        targets["esm2_onnx"],
        generate_sequences(4, "short"),
        buckets_from_repository(esm2_repository),
        tmp_path / "esm2_onnx.json",
    )
    result = SweepResult()
    points = run_point(config, "esm2_onnx", "grpc", input_data, "concurrency", 1, result)
    assert not result.failures, result.failures
    assert len(points) == 1 and points[0].throughput > 0 and points[0].p50_us > 0


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_bench_quick(esm2_repository: Path, tmp_path: Path) -> None:
    """The quick bench on the session's fp32 repository (the default variant) plus an int8 variant it exports itself:
    every group runs, both variants are served, and every target has its figure."""
    completed = subprocess.run(
        [sys.executable, "-m", "tritonfleet.loadtest.bench", "--quick", "--model-repository", str(esm2_repository),
         "--variants", "auto,int8", "--sequences", "12", "--duration", "2", "--report-dir", str(tmp_path)],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=1400, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    report = json.loads((tmp_path / "bench_quick.json").read_text())
    scenarios = report["scenarios"]
    assert {scenario["group"] for scenario in scenarios} == {"a", "a2", "b", "c", "d"}  # a2: raw again after b
    assert all(s["requests"] > 0 and s["errors"] == 0 for s in scenarios), report["problems"]
    assert report["default_precision"] == "fp32"
    assert {s["engine"] for s in scenarios if s["group"] == "a"} == {"eager", "onnx", "torchscript"}
    served_variants = {s["precision"] for s in scenarios if s["group"] == "b"}
    # int8 is exported by the bench; a machine whose int8 fails its quality gate reports that instead of a row
    refused = any(problem.startswith("variant int8 not measured") for problem in report["problems"])
    assert served_variants == ({"fp32"} if refused else {"fp32", "int8"}), report["problems"]
    p1 = [f for f in report["figures"] if f["target"] and f["target"]["label"] == "P1" and f["precision"] == "fp32"]
    assert "before and" in p1[0]["basis"], p1  # served / raw bracketed by the raw ceiling measured again
    targets = {(f["target"]["label"], f["precision"]) for f in report["figures"] if f["target"]}
    assert {("P1", "fp32"), ("P2", "fp32"), ("P3", "fp32")} <= targets
    text = (tmp_path / "bench_quick.md").read_text()
    assert text.startswith("# Benchmark") and "## Targets" in text and "## What limits these figures" in text
    assert (tmp_path / "bench_quick_throughput.png").stat().st_size > 0

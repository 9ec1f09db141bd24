"""The study library (loadtest/studies): report header, the perf_analyzer runner's unstable-point retry on captured
perf_analyzer output, and the exported-repository fixture on a tiny model (a real export, no server)."""

from __future__ import annotations

import re
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from tritonfleet.contract.model_config import CONFIG_FILENAME, read_config
from tritonfleet.loadtest.studies import (
    ReportHeader,
    cpu_model,
    export_factory_repository,
    git_revision,
    is_unstable,
    parse_perf_csv,
    read_points,
    run_until_stable,
    scratch_folder,
)
from tritonfleet.loadtest.studies.header import command_line
from tritonfleet.loadtest.studies.serving import free_ports, port_is_free

PROJECT_ROOT = Path(__file__).resolve().parents[2]

# `lscpu` on a 2-core VM (head of its output).
LSCPU = """\
Architecture:                         x86_64
CPU op-mode(s):                       32-bit, 64-bit
Address sizes:                        46 bits physical, 48 bits virtual
CPU(s):                               2
Vendor ID:                            GenuineIntel
Model name:                           Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
CPU family:                           6
"""

# perf_analyzer 2.x on a busy host: the point never stabilised (exit status 2).
UNSTABLE_OUTPUT = """\
*** Measurement Settings ***
  Batch size: 1
  Service Kind: TRITON
  Using "time_windows" mode for stabilization
  Stabilizing using p95 latency and throughput
  Measurement window: 3000 msec
  Using synchronous calls for inference

Request concurrency: 4
  Pass [1] throughput: 6.66 infer/sec. p95 latency: 812345 usec
  Pass [2] throughput: 1.33 infer/sec. p95 latency: 2893456 usec
  Pass [3] throughput: 5.99 infer/sec. p95 latency: 901234 usec
Failed to obtain stable measurement within 3 measurement windows for concurrency 4. Please try to increase the \
--measurement-interval.
"""
STABLE_OUTPUT = """\
Request concurrency: 2
  Client:
    Request count: 60
    Throughput: 6.66 infer/sec
    p99 latency: 412000 usec
Inferences/Second vs. Client p95 Batch Latency
Concurrency: 2, throughput: 6.66 infer/sec, latency 398000 usec
"""
PERF_CSV = """\
Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,\
Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency
2,6.66,40,900,120000,30,180000,20,10,300000,380000,398000,412000
"""


def completed(returncode: int, stdout: str, stderr: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.CompletedProcess(["perf_analyzer"], returncode, stdout, stderr)


class Recorded:
    """Plays back captured perf_analyzer runs in order and records the arguments each was asked for."""

    def __init__(self, *runs: subprocess.CompletedProcess[str]) -> None:
        self.runs = list(runs)
        self.calls: list[list[str]] = []

    def __call__(self, args: Sequence[str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
        self.calls.append(list(args))
        return self.runs.pop(0)


# -- report header ----------------------------------------------------------------------------------------------------


def test_cpu_model_is_lscpus_model_name() -> None:
    assert cpu_model(LSCPU) == "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz"


def test_cpu_model_without_lscpu_falls_back_to_the_kernels_name() -> None:
    assert cpu_model("Architecture: x86_64\n")  # /proc/cpuinfo or platform: never empty


def test_git_revision_of_the_checkout_and_outside_one(tmp_path: Path) -> None:
    if not (PROJECT_ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    assert re.fullmatch(r"[0-9a-f]{7,40}(\+dirty)?", git_revision(PROJECT_ROOT))
    assert git_revision(tmp_path) == "unknown"


def test_report_header_names_command_machine_date_and_revision() -> None:
    header = ReportHeader.collect("tritonfleet priorities --quick")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", header.date)
    assert header.day == header.date[:10]
    assert header.details["cpu_model"] in header.machine
    assert header.markdown() == [
        f"- Machine: {header.machine}",
        "- Command: `tritonfleet priorities --quick`",
        f"- Date: {header.date}; revision {header.revision}",
    ]
    assert ReportHeader.collect("x", machine="my box").machine == "my box"
    assert header.markdown("; wall time 12 s")[-1].endswith(f"revision {header.revision}; wall time 12 s")
    assert header.dated() == f"({header.day}, revision {header.revision})"


def test_command_line_names_the_arguments_as_typed() -> None:
    assert command_line("python -m tritonfleet.loadtest.cpu_plan", []) == "python -m tritonfleet.loadtest.cpu_plan"
    assert command_line("prog", ["--output", "my report.md"]) == "prog --output 'my report.md'"


def test_cpu_plan_and_gpu_check_reports_open_with_the_shared_header() -> None:
    import argparse

    from tritonfleet.loadtest import cpu_plan, gpu_check

    header = ReportHeader("prog --quick", "Test CPU, 2 usable core(s)", "2026-12-07 09:00 UTC", "abc1234")
    context = {"minutes": 1.5, "precision": "int8", "graph": "fused attention", "concurrency": 16, "conclusion": [],
               "length_buckets": "exact"}  # fmt: skip
    text = cpu_plan.render([], {"fixed 128 tokens": {"2 engines x 1 thread": 100.0}}, "2 x 1", header, context)
    lines = text.splitlines()
    assert lines[2:5] == header.markdown("; wall time 1.5 min")
    assert lines[6].startswith("Model: ESM-2 8M, RANDOM weights, precision int8")
    assert lines[6].endswith("padded as the repository's tokenizer pads them: length buckets exact.")
    text = gpu_check.render(argparse.Namespace(model_size="8M"), header, {}, [], [], 2.0)
    assert text.splitlines()[2:5] == header.markdown("; wall time 2.0 min")
    collected = gpu_check.report_header("prog", "cpu")
    gpus = ", ".join(collected.details["gpus"]) or "no GPU (device cpu)"
    assert collected.machine.startswith(f"{gpus}; CPU ") and "onnxruntime" in collected.machine


# -- perf_analyzer runner ---------------------------------------------------------------------------------------------


def test_unstable_is_recognised_by_exit_status_or_message() -> None:
    assert is_unstable(completed(2, UNSTABLE_OUTPUT))
    assert is_unstable(completed(1, "", UNSTABLE_OUTPUT))  # the message alone
    assert is_unstable(completed(2, ""))  # the status alone
    assert not is_unstable(completed(0, STABLE_OUTPUT))
    assert not is_unstable(completed(1, "error: failed to get model metadata"))


def test_an_unstable_point_is_measured_again_with_the_retry_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    runner = Recorded(completed(2, UNSTABLE_OUTPUT), completed(0, STABLE_OUTPUT))
    result = run_until_stable(["-m", "m", "-s", "15"], retry_args=["-m", "m", "--request-count", "40"],
                              note="unstable; a fixed count instead", run=runner)  # fmt: skip
    assert result.returncode == 0
    assert runner.calls == [["-m", "m", "-s", "15"], ["-m", "m", "--request-count", "40"]]
    assert "unstable; a fixed count instead" in capsys.readouterr().out


def test_retries_repeat_the_point_and_stop_at_their_limit() -> None:
    runner = Recorded(*(completed(2, UNSTABLE_OUTPUT) for _ in range(3)))
    result = run_until_stable(["-m", "m"], retries=2, run=runner)
    assert is_unstable(result)
    assert runner.calls == [["-m", "m"]] * 3


def test_a_stable_or_failed_point_is_not_retried() -> None:
    for first in (completed(0, STABLE_OUTPUT), completed(1, "error: connection refused")):
        runner = Recorded(first)
        assert run_until_stable(["-m", "m"], retries=2, run=runner) is first
        assert len(runner.calls) == 1


def test_points_are_read_from_the_csv_perf_analyzer_wrote(tmp_path: Path) -> None:
    assert read_points(tmp_path / "missing.csv", "m", "grpc") == []
    (tmp_path / "point.csv").write_text(PERF_CSV)
    [point] = read_points(tmp_path / "point.csv", "m", "grpc")
    assert point == parse_perf_csv(PERF_CSV, "m", "grpc")[0]
    assert (point.load, point.throughput, point.p99_us, point.server_queue_us) == (2, 6.66, 412000, 120000)


# -- exported repositories --------------------------------------------------------------------------------------------


def test_scratch_folder_is_removed_unless_kept(tmp_path: Path) -> None:
    with scratch_folder("study-") as folder:
        (folder / "file").write_text("x")
    assert not folder.exists()
    with scratch_folder("study-", keep=tmp_path / "kept") as kept:
        (kept / "file").write_text("x")
    assert (tmp_path / "kept" / "file").is_file()


def test_a_tiny_model_is_exported_into_a_throwaway_repository(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    with scratch_folder("study-") as folder:
        repository = export_factory_repository(
            folder / "repository", "examples.my_model:build", "pooler", input_names=("IDS", "MASK"),
            output_names=("EMBEDDING",), formats=("onnx",), onnx_exporter="legacy",
        )  # fmt: skip
        config = read_config(repository / "pooler_onnx" / CONFIG_FILENAME)
        assert config.name == "pooler_onnx"
        assert [tensor.name for tensor in config.output] == ["EMBEDDING"]
        assert (repository / "pooler_onnx" / "1" / "model.onnx").stat().st_size > 0
    assert not repository.exists()


def test_free_ports_are_distinct_loopback_ports_nobody_holds() -> None:
    ports = free_ports(3)
    assert len(set(ports)) == 3
    assert all(port_is_free(port) for port in ports)
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        assert not port_is_free(held.getsockname()[1])

"""`make gpu-check`'s path on CPU: fp32 and fp16 exports served by the local runtime, served parity against eager,
perf_analyzer points with the networks' batching on and off, simultaneous pairs, and the report. On a GPU host the
same code runs on CUDA (no GPU is needed, or used, here)."""

from __future__ import annotations

import pytest

from tritonfleet.loadtest import gpu_check

pytestmark = pytest.mark.slow


def test_the_gpu_check_path_runs_on_cpu_and_reports_every_point(tmp_path):
    report = tmp_path / "gpu.md"
    assert gpu_check.main(["--device", "cpu", "--quick", "--output", str(report)]) == 0
    text = report.read_text()
    for precision in ("fp32", "fp16"):
        for model in ("esm2", "esm2_onnx", "esm2_torchscript"):
            assert f"| {precision} | {model} | on | 2 |" in text and f"| {precision} | {model} | off | 2 |" in text
    assert text.count("| ok |") == 6 and "FAILED" not in text
    # simultaneous pairs on each network as exported and on a one-instance copy (figures, not verdicts)
    assert "## Two requests at once" in text
    for precision in ("fp32", "fp16"):
        for model in ("esm2_onnx", "esm2_torchscript"):
            assert f"| {precision} | {model} | 1 |" in text

"""The served-overhead study's bookkeeping (CPU readings, combined runs, the report) and its bad-input errors."""

from __future__ import annotations

import pytest

from tritonfleet.loadtest.served_overhead import (
    CpuReading,
    FixedCost,
    PairedLatency,
    Scenario,
    combined,
    cpu_delta,
    main,
    render,
)


def test_cpu_delta_is_per_process_and_counts_new_processes_whole():
    before = CpuReading({"tritonserver": 1.0, "esm2_onnx_0_0": 10.0})
    after = CpuReading({"tritonserver": 1.5, "esm2_onnx_0_0": 14.0, "esm2_bls_0_0": 0.25})
    assert cpu_delta(before, after).seconds == {"tritonserver": 0.5, "esm2_onnx_0_0": 4.0, "esm2_bls_0_0": 0.25}


def _scenario(name: str, cpu: dict[str, float], stats: dict | None = None) -> Scenario:
    return Scenario(name, 10, 2.0, CpuReading(cpu), 0.01, [10.0, 20.0], stats or {})


def test_combined_runs_add_up_and_overhead_excludes_the_network_stubs():
    raw = combined(_scenario("raw", {"engine": 0.5}), _scenario("raw", {"engine": 0.7}))
    assert (raw.sequences, raw.elapsed_s, raw.server_cpu.total) == (20, 4.0, pytest.approx(1.2))
    served = _scenario("served `esm2`", {"esm2_onnx_0_0": 0.6, "tritonserver": 0.02, "esm2_tokenizer_0_0": 0.01})
    assert served.cpu_ms_per_sequence == pytest.approx(63.0)
    assert served.overhead_ms_per_sequence == pytest.approx(3.0)


def test_report_has_ratios_and_the_bls_overhead():
    raw = _scenario("raw", {"engine": 0.6})
    stats = {
        "esm2_bls": {"success_count": 10, "request_ns": 0, "compute_input_ns": 10**6, "compute_infer_ns": 150 * 10**6,
                     "compute_output_ns": 10**6, "queue_ns": 0, "inference_count": 10, "execution_count": 10},
        "esm2_onnx": {"success_count": 10, "request_ns": 145 * 10**6, "compute_input_ns": 0, "compute_infer_ns": 0,
                      "compute_output_ns": 0, "queue_ns": 0, "inference_count": 10, "execution_count": 10},
    }  # fmt: skip
    bls = _scenario("served `esm2_bls`", {"esm2_onnx_0_0": 0.63, "esm2_bls_0_0": 0.01}, stats)
    context = {
        "command": "x",
        "machine": "m",
        "count": 10,
        "seed": 0,
        "concurrency": 8,
        "seconds": 1.0,
        "pairs": 3,
        "calls": 5,
    }
    fixed = [FixedCost("raw", 12.0, 0.0), FixedCost("`esm2_bls`", 15.0, 1.5)]
    text = render(raw, [bls], [PairedLatency("esm2_bls", 15.0, 14.0, 1.0, 0.9)], fixed, context)
    assert "| served `esm2_bls` | 5.0 | 1.00 | 64.00 | 1.07 | 1.00 |" in text
    assert "= 0.70 ms" in text  # per request: 0.1 + 15 + 0.1 - 14.5
    assert "| `esm2_bls` | 15.00 | 14.00 | 1.00 | 0.90 |" in text
    assert "| `esm2_bls` | 15.00 | 1.25 | 1.50 |" in text


def test_a_repository_without_the_network_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["--model-repository", str(tmp_path), "--output", str(tmp_path / "r.md")], prog="served-overhead")
    assert stopped.value.code == 2
    assert "model.onnx not found: export a repository first" in capsys.readouterr().err
    assert not (tmp_path / "r.md").exists()

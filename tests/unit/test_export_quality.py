"""The quality gate of reduced-precision variants (int8, bf16) and the machine facts that pick a precision."""

from __future__ import annotations

import numpy as np
import pytest

from tritonfleet.contract.tensors import TensorSpec
from tritonfleet.export.devices import DevicePlan, cpu_has_vnni, default_precision
from tritonfleet.export.parity import (
    MIN_COSINE_PER_TOKEN,
    MIN_COSINE_POOLED,
    ParityCase,
    ParityError,
    check_similarity,
    cosine_threshold,
    min_cosine,
)

POOLED = TensorSpec("EMBEDDING", "float32", (4,))
PER_TOKEN = TensorSpec("RESIDUE_EMBEDDINGS", "float32", ("sequence", 4))
CASES = [ParityCase("case", (np.zeros((2, 3), dtype=np.int64),))]


def _runner(*outputs: np.ndarray):
    return lambda *inputs: outputs


def test_cosine_of_scaled_vectors_is_one_and_of_orthogonal_ones_zero():
    vectors = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 4.0]])
    assert min_cosine(vectors, 3.0 * vectors) == pytest.approx(1.0)
    assert min_cosine(np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])) == pytest.approx(0.0)


def test_rows_that_are_zero_in_eager_are_padding_and_skipped():
    want = np.array([[[1.0, 0.0], [0.0, 0.0]]])  # second position is padding
    got = np.array([[[1.0, 0.0], [5.0, 5.0]]])
    assert min_cosine(want, got) == pytest.approx(1.0)


def test_thresholds_follow_the_output_rank():
    assert cosine_threshold(POOLED) == MIN_COSINE_POOLED == 0.999
    assert cosine_threshold(PER_TOKEN) == MIN_COSINE_PER_TOKEN == 0.99


def test_a_variant_close_to_eager_passes_with_its_figures():
    rng = np.random.default_rng(0)
    pooled = rng.normal(size=(2, 4)).astype(np.float32)
    per_token = rng.normal(size=(2, 3, 4)).astype(np.float32)
    noise = 1e-3 * rng.normal(size=per_token.shape).astype(np.float32)
    result = check_similarity(
        "int8 onnx",
        _runner(pooled, per_token),
        _runner(pooled * 1.01, per_token + noise),
        CASES,
        [POOLED, PER_TOKEN],
    )
    assert result.passed and result.min_cosine["EMBEDDING"] == pytest.approx(1.0, abs=1e-6)
    assert MIN_COSINE_PER_TOKEN < result.min_cosine["RESIDUE_EMBEDDINGS"] < 1.0
    assert "OK" in result.describe()


def test_a_variant_below_its_gate_is_refused_with_the_figures():
    pooled = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]], dtype=np.float32)
    drifted = pooled + np.array([[0.0, 0.1, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]], dtype=np.float32)  # cosine 0.995
    with pytest.raises(ParityError) as refused:
        check_similarity("int8 torchscript", _runner(pooled), _runner(drifted), CASES, [POOLED])
    message = str(refused.value)
    assert "REFUSED" in message and "EMBEDDING 0.99504 < 0.999" in message and "--precision fp32" in message


def test_non_finite_or_reshaped_outputs_are_refused():
    pooled = np.ones((2, 4), dtype=np.float32)
    with pytest.raises(ParityError, match="non-finite"):
        check_similarity("bf16 torchscript", _runner(pooled), _runner(np.full_like(pooled, np.nan)), CASES, [POOLED])
    with pytest.raises(ParityError, match="shape"):
        check_similarity("bf16 torchscript", _runner(pooled), _runner(pooled[:1]), CASES, [POOLED])


def test_vnni_comes_from_the_cpu_flags(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni avx512_bf16\n")
    assert cpu_has_vnni(cpuinfo)
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2\n")
    assert not cpu_has_vnni(cpuinfo)
    assert not cpu_has_vnni(tmp_path / "missing")


def test_auto_precision_is_fp32_on_gpus_and_int8_only_with_vnni():
    assert default_precision(DevicePlan("KIND_GPU", (0,))) == "fp32"
    expected = "int8" if cpu_has_vnni() else "fp32"
    assert default_precision(DevicePlan("KIND_CPU", cpu_instances=2, cpu_threads=1)) == expected

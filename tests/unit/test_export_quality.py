"""The quality gates (similarity of reduced-precision variants, batch invariance of fp32/int8), the per-row int8
quantizer, and the machine facts that pick a precision."""

from __future__ import annotations

import numpy as np
import pytest

from tritonfleet.contract.tensors import TensorSpec
from tritonfleet.export.devices import DevicePlan, cpu_has_vnni, default_precision
from tritonfleet.export.esm2.recipe import Esm2Recipe
from tritonfleet.export.network import describe_precisions, engine_precisions
from tritonfleet.export.parity import (
    INVARIANCE_TOLERANCE,
    MIN_COSINE_PER_TOKEN,
    MIN_COSINE_POOLED,
    InvarianceCase,
    InvarianceGateError,
    ParityCase,
    ParityError,
    QualityGateError,
    check_invariance,
    check_similarity,
    cosine_threshold,
    min_cosine,
    row_invariance_cases,
)
from tritonfleet.export.signature import ExportError

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


# --- batch invariance: a sample's outputs alone and inside a batch (export.parity.check_invariance) ---


def _rowwise(*inputs: np.ndarray):
    """A row-independent model: each row scaled by its own absmax."""
    (x,) = inputs
    return (x / np.max(np.abs(x), axis=-1, keepdims=True),)


def _per_tensor(*inputs: np.ndarray):
    """A model whose rows depend on the batch: one int8 scale for the whole tensor, like dynamic quantization."""
    (x,) = inputs
    scale = np.max(np.abs(x)) / 127
    return (np.round(x / scale) * scale,)


ROWS = TensorSpec("OUTPUT0", "float32", (4,))


def _row_cases() -> list[InvarianceCase]:
    rng = np.random.default_rng(3)
    batch = rng.normal(size=(5, 4)).astype(np.float32)
    batch[2] *= 40.0  # a loud neighbour
    return row_invariance_cases([ParityCase("batch 5", (batch,)), ParityCase("batch 1", (batch[:1],))])


def test_row_cases_take_every_row_of_batches_of_several():
    cases = _row_cases()
    assert len(cases) == 1 and [row for row, _ in cases[0].members] == [0, 1, 2, 3, 4]
    assert all(inputs[0].shape == (1, 4) for _, inputs in cases[0].members)


def test_a_row_independent_engine_passes_the_invariance_gate():
    result = check_invariance("int8 onnx", _rowwise, _row_cases(), [ROWS])
    assert result.invariant and result.worst == 0.0 and "OK" in result.describe()


def test_an_engine_whose_rows_depend_on_the_batch_is_refused_with_the_figure():
    with pytest.raises(InvarianceGateError) as refused:
        check_invariance("int8 onnx", _per_tensor, _row_cases(), [ROWS])
    message = str(refused.value)
    assert "batch invariance int8 onnx" in message and "REFUSED (> 1e-05)" in message
    assert "OUTPUT0 " in message and "--precision fp32" in message
    assert isinstance(refused.value, QualityGateError)  # --precision auto falls back to fp32 on it


def test_bf16_figures_are_reported_and_marked_not_invariant_without_refusal():
    result = check_invariance("bf16 torchscript", _per_tensor, _row_cases(), [ROWS], enforced=False)
    assert not result.invariant and result.worst > INVARIANCE_TOLERANCE
    assert "NOT INVARIANT" in result.describe() and "response cache" in result.describe()


def test_members_alone_are_compared_over_their_own_length():
    """A protein alone is padded to its own length; inside a batch to the bucket: only the common region counts."""

    def padded(ids: np.ndarray):
        return (np.where(ids > 0, ids * 2.0, 0.0).astype(np.float32),)

    batch = np.array([[1, 2, 3, 0, 0], [4, 5, 0, 0, 0]])
    case = InvarianceCase("bucketed", (batch,), ((0, (batch[:1, :3],)), (1, (batch[1:, :2],))))
    spec = TensorSpec("RESIDUES", "float32", ("sequence",))
    assert check_invariance("fp32 onnx", padded, [case], [spec]).worst == 0.0


def test_int8_ships_torchscript_in_fp32_and_a_per_engine_precision_is_honoured():
    assert engine_precisions("int8", ["onnx", "torchscript"]) == {"onnx": "int8", "torchscript": "fp32"}
    assert engine_precisions("bf16", ["torchscript"]) == {"torchscript": "bf16"}
    assert engine_precisions({"torchscript": "int8"}, ["onnx", "torchscript"]) == {
        "onnx": "fp32",
        "torchscript": "int8",
    }
    assert describe_precisions({"onnx": "int8", "torchscript": "fp32"}) == "onnx=int8,torchscript=fp32"
    with pytest.raises(ExportError, match="int4"):
        engine_precisions({"onnx": "int4"}, ["onnx"])
    with pytest.raises(ExportError, match="not among the formats"):
        engine_precisions({"torchscript": "fp32"}, ["onnx"])


def test_the_esm2_recipe_says_which_engine_is_invariant_without_torch():
    int8 = Esm2Recipe(precision="int8")
    assert (int8.precision_for("onnx"), int8.precision_for("torchscript")) == ("int8", "fp32")
    assert int8.batch_invariant("onnx") and int8.batch_invariant("torchscript")
    assert not Esm2Recipe(precision="bf16").batch_invariant("torchscript")
    assert not Esm2Recipe(precision="fp16").batch_invariant("onnx")


def test_the_esm2_invariance_set_is_the_parity_set_alone_and_in_padded_mixed_batches():
    recipe = Esm2Recipe()
    cases = recipe.invariance_cases(4)
    proteins = recipe.parity_proteins(4)
    assert len(cases) == 5 and len(cases[-1].members) == sum(map(len, proteins))
    for case in cases:
        ids, mask = case.batch
        for row, (alone_ids, alone_mask) in case.members:
            length = int(alone_mask.sum())
            assert alone_ids.shape == (1, length)  # alone: no padding
            np.testing.assert_array_equal(ids[row, :length], alone_ids[0])
    assert any(int(case.batch[1].sum(axis=1).min()) < case.batch[0].shape[1] for case in cases)  # padding inside


# --- the per-row int8 ONNX quantizer (export.quantize) on a small graph ---


def _linear_model(path, weight: np.ndarray) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["Y"], name="linear")],
        "linear",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", "sequence", weight.shape[0]])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", "sequence", weight.shape[1]])],
        [numpy_helper.from_array(weight, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    onnx.save_model(model, str(path))


def test_per_row_int8_onnx_is_close_to_fp32_and_exactly_batch_invariant(tmp_path):
    import onnx

    from tritonfleet.export.onnx_export import onnx_runner
    from tritonfleet.export.quantize import quantize_onnx_int8, quantize_onnx_int8_per_tensor

    rng = np.random.default_rng(0)
    weight = rng.normal(size=(64, 48)).astype(np.float32)
    _linear_model(tmp_path / "fp32.onnx", weight)
    quantize_onnx_int8(tmp_path / "fp32.onnx", tmp_path / "row.onnx", reduce_range=False)
    quantize_onnx_int8_per_tensor(tmp_path / "fp32.onnx", tmp_path / "tensor.onnx", reduce_range=False)
    ops = {node.op_type for node in onnx.load(str(tmp_path / "row.onnx")).graph.node}
    assert "MatMulIntegerToFloat" in ops and "MatMul" not in ops
    assert {entry.domain: entry.version for entry in onnx.load(str(tmp_path / "row.onnx")).opset_import}[""] == 18

    batch = rng.normal(size=(3, 5, 64)).astype(np.float32)
    batch[1] *= 100.0  # a loud neighbour
    batch[2, 4] = 0.0  # an all-zero row (padding): its product is exactly 0
    row = onnx_runner(tmp_path / "row.onnx", threads=1)
    (got,) = row(batch)
    want = batch @ weight
    assert min_cosine(want, got) > 0.999 and np.isfinite(got).all()
    assert not got[2, 4].any()
    cases = row_invariance_cases([ParityCase("batch 3", (batch,))])
    assert check_invariance("int8 onnx", row, cases, [PER_TOKEN]).worst == 0.0  # integer sums: exact
    with pytest.raises(InvarianceGateError):
        check_invariance("int8 onnx", onnx_runner(tmp_path / "tensor.onnx", threads=1), cases, [PER_TOKEN])


def test_per_row_int8_needs_a_matmul_with_a_constant_weight(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from tritonfleet.export.quantize import quantize_onnx_int8

    graph = helper.make_graph(
        [helper.make_node("Relu", ["X"], ["Y"])],
        "relu",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, 3])],
    )
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(tmp_path / "m.onnx"))
    with pytest.raises(ValueError, match="no MatMul with a constant weight"):
        quantize_onnx_int8(tmp_path / "m.onnx", tmp_path / "q.onnx", reduce_range=False)


def test_per_row_int8_reads_external_weights_and_its_standard_op_form_agrees(tmp_path):
    import onnx

    from tritonfleet.export.onnx_export import onnx_runner
    from tritonfleet.export.quantize import quantize_onnx_int8

    rng = np.random.default_rng(1)
    weight = rng.normal(size=(32, 16)).astype(np.float32)
    _linear_model(tmp_path / "inline.onnx", weight)
    model = onnx.load(str(tmp_path / "inline.onnx"))
    onnx.save_model(model, str(tmp_path / "fp32.onnx"), save_as_external_data=True, location="w.bin", size_threshold=0)
    quantize_onnx_int8(tmp_path / "fp32.onnx", tmp_path / "fused.onnx", reduce_range=False)
    quantize_onnx_int8(tmp_path / "fp32.onnx", tmp_path / "plain.onnx", reduce_range=False, fused_output=False)
    plain_ops = {node.op_type for node in onnx.load(str(tmp_path / "plain.onnx")).graph.node}
    assert "MatMulInteger" in plain_ops and "MatMulIntegerToFloat" not in plain_ops
    x = rng.normal(size=(2, 7, 32)).astype(np.float32)
    (fused,), (plain,) = onnx_runner(tmp_path / "fused.onnx")(x), onnx_runner(tmp_path / "plain.onnx")(x)
    np.testing.assert_allclose(fused, plain, rtol=1e-6, atol=1e-6)
    assert min_cosine(x @ weight, fused) > 0.999

"""Signature inference from samples (numpy only): dynamic and shared axes, output specs, validation messages."""

from __future__ import annotations

import numpy as np
import pytest

from tritonfleet.contract.tensors import TensorSpec
from tritonfleet.export.parity import ParityCase, ParityError, check_parity
from tritonfleet.export.signature import (
    ExportError,
    Signature,
    check_names,
    infer_inputs,
    infer_outputs,
    infer_signature,
    normalize_samples,
    parse_names,
    trace_example,
)


def ids_and_mask(batch: int, tokens: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((batch, tokens), np.int64), np.ones((batch, tokens), np.int64)


def test_axes_varying_across_samples_become_dynamic_and_alike_ones_share_a_name():
    samples = [
        (*ids_and_mask(2, 7), np.zeros((2, 5, 3), np.float32)),
        (*ids_and_mask(3, 12), np.zeros((3, 9, 3), np.float32)),
    ]
    ids, mask, features = infer_inputs(samples, ("IDS", "MASK", "FEATURES"))
    assert ids == TensorSpec("IDS", "int64", ("ids_1",))
    assert mask.axes == ids.axes  # same sizes in every sample: one dynamic dim
    assert features == TensorSpec("FEATURES", "float32", ("features_1", 3))  # varies otherwise: its own
    assert features.dims == (-1, 3)


def test_the_batch_axis_alone_is_dynamic_when_only_batch_sizes_differ():
    samples = [(np.zeros((1, 8), np.float32),), (np.zeros((5, 8), np.float32),)]
    (spec,) = infer_inputs(samples, ("X",))
    assert spec.axes == (8,) and spec.named_axes(batched=True) == {0: "batch"}


def test_output_axes_follow_the_input_axis_they_vary_with():
    samples = [ids_and_mask(2, 7), ids_and_mask(3, 12), ids_and_mask(1, 4)]
    results = [
        (np.zeros((2, 16), np.float32), np.zeros((2, 7, 16), np.float32), np.zeros((2, 3), np.int64)),
        (np.zeros((3, 16), np.float32), np.zeros((3, 12, 16), np.float32), np.zeros((3, 1), np.int64)),
        (np.zeros((1, 16), np.float32), np.zeros((1, 4, 16), np.float32), np.zeros((1, 8), np.int64)),
    ]
    signature = infer_signature(samples, results, ("IDS", "MASK"), ("POOLED", "TOKENS", "TOP"))
    pooled, tokens, top = signature.outputs
    assert pooled == TensorSpec("POOLED", "float32", (16,))
    assert tokens.axes == (signature.inputs[0].axes[0], 16)
    assert top.axes == ("top_1",)  # varies unlike any input axis (data-dependent): dynamic on its own


def test_default_names_and_signature_description():
    samples = [(np.zeros((2, 3), np.float32),), (np.zeros((4, 5), np.float32),)]
    results = [(np.zeros((2,), np.float32),), (np.zeros((4,), np.float32),)]
    signature = infer_signature(samples, results)
    assert [spec.name for spec in signature.inputs] == ["INPUT0"]
    assert signature.outputs == (TensorSpec("OUTPUT0", "float32", ()),)
    assert signature.describe() == "(INPUT0 float32 [batch, input0_1]) -> (OUTPUT0 float32 [batch])"


def test_structure_ignores_axis_names_but_not_sharing():
    def signature(first: str, second: str) -> Signature:
        inputs = (TensorSpec("A", "int64", (first,)), TensorSpec("B", "int64", (second,)))
        return Signature(inputs, (TensorSpec("C", "float32", (first, 4)),))

    assert signature("sequence", "sequence").structure() == signature("a_1", "a_1").structure()
    assert signature("sequence", "sequence").structure() != signature("a_1", "b_1").structure()


@pytest.mark.parametrize(
    ("samples", "message"),
    [
        ([], "non-empty list"),
        ((x for x in ()), "non-empty list"),
        ([(np.zeros((2, 3)),), (np.zeros((2, 3)), np.zeros((2, 3)))], "sample 1 has 2 input"),
        ([np.zeros((2, 3), np.float32), np.zeros((2, 3), np.float64)], "input 0: sample 1 has dtype float64"),
        ([np.zeros((2, 3)), np.zeros((2, 3, 1))], "input 0: sample 1 has rank 3"),
        ([(np.zeros((2, 3)), np.zeros((3, 3)))], r"leading sizes \[2, 3\]"),
        ([(np.zeros((2, 3)), [1, 2])], "sample 0 input 1 is a list"),
        ([np.float32(1.0)], "sample 0 input 0 is a float32"),
        ([np.zeros(())], "scalar"),
        ([np.array([["a"]], dtype=object)], "object"),
        ([np.zeros((2, 2), np.complex64)], "no Triton data type"),
    ],
)
def test_bad_samples_are_named_in_one_line(samples, message):
    with pytest.raises(ExportError, match=message) as raised:
        normalize_samples(samples)
    assert "\n" not in str(raised.value)


def test_outputs_must_keep_the_batch_axis():
    samples = [(np.zeros((2, 3), np.float32),)]
    with pytest.raises(ExportError, match=r"sample 0 \(batch 2\) the outputs have leading size 6"):
        infer_outputs(infer_inputs(samples, ("X",)), samples, [(np.zeros((6,), np.float32),)], ("Y",))


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (("A",), r"--input-names gives 1 name\(s\) \['A'\] but the model has 2 input\(s\)"),
        (("A", "A"), "unique"),
        (("A", "B__0"), "'__'"),
        (("A", "has space"), "not a tensor name"),
        (("A", ""), "not a tensor name"),
    ],
)
def test_bad_names(names, message):
    with pytest.raises(ExportError, match=message):
        check_names(names, 2, "input", "--input-names")


def test_parse_names():
    assert parse_names("IDS, MASK") == ("IDS", "MASK")
    assert parse_names(None) is None and parse_names("") is None


def test_trace_example_skips_size_one_axes_and_equal_sizes_of_independent_axes():
    specs = (TensorSpec("A", "float32", ("a_1",)), TensorSpec("B", "float32", ("b_1",)))
    samples = [
        (np.zeros((3, 1), np.float32), np.zeros((3, 5), np.float32)),  # an axis of size 1
        (np.zeros((3, 4), np.float32), np.zeros((3, 4), np.float32)),  # independent axes of equal size
        (np.zeros((3, 6), np.float32), np.zeros((3, 2), np.float32)),
    ]
    a, b = trace_example(specs, samples)
    assert a.shape == (3, 6) and b.shape == (3, 2)


def test_trace_example_resizes_a_batch_of_one_or_equal_to_a_dynamic_size():
    specs = (TensorSpec("X", "float32", ("x_1",)),)
    rows = np.arange(16, dtype=np.float32).reshape(4, 4)
    (example,) = trace_example(specs, [(rows,)])
    assert example.shape == (2, 4)  # batch 4 == the x_1 size: rows dropped
    np.testing.assert_array_equal(example, rows[:2])
    (example,) = trace_example(specs, [(rows[:1, :3],)])
    assert example.shape == (2, 3)  # batch 1: the row repeated
    np.testing.assert_array_equal(example, np.repeat(rows[:1, :3], 2, axis=0))
    (example,) = trace_example(specs, [(rows[:2, :2],)])
    assert example.shape == (3, 2)


def test_trace_example_needs_a_sample_without_size_one_axes():
    specs = (TensorSpec("X", "float32", ("x_1",)),)
    with pytest.raises(ExportError, match="no sample has every dynamic axis"):
        trace_example(specs, [(np.zeros((2, 1), np.float32),)])


def test_parity_passes_within_tolerance_and_fails_with_figures():
    outputs = (TensorSpec("Y", "float32", (3,)), TensorSpec("ARGMAX", "int64", ()))
    cases = [ParityCase("sample 0", (np.ones((2, 3), np.float32),))]

    def eager(x):
        return x * 2, np.zeros(len(x), np.int64)

    result = check_parity("onnx", eager, lambda x: (x * 2 + 5e-5, np.zeros(len(x), np.int64)), cases, outputs)
    assert result.passed and result.max_abs_diff["Y"] == pytest.approx(5e-5, rel=1e-2)
    with pytest.raises(ParityError, match=r"parity onnx: max abs diff Y 1\.00e-01.*FAIL: Y \[sample 0\]") as raised:
        check_parity("onnx", eager, lambda x: (x * 2 + 0.1, np.zeros(len(x), np.int64)), cases, outputs)
    assert "\n" not in str(raised.value) and isinstance(raised.value, ExportError)
    with pytest.raises(ParityError, match="ARGMAX"):  # integer outputs must match exactly
        check_parity("torchscript", eager, lambda x: (x * 2, np.ones(len(x), np.int64)), cases, outputs)
    with pytest.raises(ParityError, match=r"shape \(2, 4\) != eager \(2, 3\)"):
        check_parity("onnx", eager, lambda x: (np.ones((2, 4), np.float32), np.zeros(2, np.int64)), cases, outputs)

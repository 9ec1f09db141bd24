"""The engine layer (tritonfleet.contract.engines): open_engine on a tiny ONNX model and a tiny TorchScript module,
the settings it honours, the outputs it returns, and the errors a wrong path, format or request gets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tritonfleet.contract.engine_formats import FORMAT_NAMES
from tritonfleet.contract.engines import (
    RUNNERS,
    Engine,
    EngineError,
    EngineInputError,
    EngineOptions,
    open_engine,
    register_runner,
    runner_for,
)

A = np.arange(6, dtype=np.float32).reshape(2, 3)
B = np.full((2, 3), 2.0, dtype=np.float32)


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory) -> Path:
    """SUM = A + B and DOT = sum(A * B, axis 1), with a dynamic batch axis."""
    import onnx
    from onnx import TensorProto, helper

    a = helper.make_tensor_value_info("A", TensorProto.FLOAT, ["batch", 3])
    b = helper.make_tensor_value_info("B", TensorProto.FLOAT, ["batch", 3])
    total = helper.make_tensor_value_info("SUM", TensorProto.FLOAT, ["batch", 3])
    dot = helper.make_tensor_value_info("DOT", TensorProto.FLOAT, ["batch"])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    nodes = [
        helper.make_node("Add", ["A", "B"], ["SUM"]),
        helper.make_node("Mul", ["A", "B"], ["PRODUCT"]),
        helper.make_node("ReduceSum", ["PRODUCT", "axes"], ["DOT"], keepdims=0),
    ]
    graph = helper.make_graph(nodes, "tiny", [a, b], [total, dot], initializer=[axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def torchscript_model(tmp_path_factory) -> Path:
    """The same two outputs from a traced module."""
    import warnings

    import torch

    class Tiny(torch.nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return a + b, (a * b).sum(-1)

    path = tmp_path_factory.mktemp("torchscript") / "model.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated, LibTorch serves it still
        torch.jit.save(torch.jit.trace(Tiny(), (torch.from_numpy(A), torch.from_numpy(B))), str(path))
    return path


@pytest.fixture
def torch_threads():
    """Restores torch's process-wide intra-op threads after a test that sets them."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_onnx_runs_named_outputs_a_subset_and_positionally(onnx_model):
    engine = open_engine(onnx_model, "onnx", threads=1)
    assert (engine.format, engine.input_names, engine.output_names) == ("onnx", ("A", "B"), ("SUM", "DOT"))
    assert engine.inputs[0].engine_type == "tensor(float)" and engine.inputs[0].shape == ("batch", 3)
    everything = engine.run({"A": A, "B": B})
    np.testing.assert_array_equal(everything["SUM"], A + B)
    np.testing.assert_array_equal(everything["DOT"], (A * B).sum(1))
    subset = engine.run({"A": A, "B": B}, ["DOT"])
    assert list(subset) == ["DOT"]
    total, dot = engine(A, B)
    np.testing.assert_array_equal(total, A + B)
    np.testing.assert_array_equal(dot, subset["DOT"])


def test_onnx_honours_threads_and_session_options(onnx_model):
    import onnxruntime as ort

    engine = open_engine(
        onnx_model, "onnx", threads=2, options=EngineOptions(inter_threads=1, graph_optimization="basic")
    )
    options = engine.session.get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (2, 1)
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert engine.session.get_providers() == ["CPUExecutionProvider"]
    default = open_engine(onnx_model, "onnx").session.get_session_options()
    assert (default.intra_op_num_threads, default.inter_op_num_threads) == (0, 0)
    assert default.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    parallel = open_engine(onnx_model, "onnx", options=EngineOptions(parallel_execution=True))
    assert parallel.session.get_session_options().execution_mode == ort.ExecutionMode.ORT_PARALLEL


def test_torchscript_runs_by_position_then_by_served_names(torchscript_model, torch_threads):
    import torch

    engine = open_engine(torchscript_model, "torchscript", threads=1)
    assert torch.get_num_threads() == 1
    assert (engine.input_names, engine.output_names) == (("a", "b"), ("OUTPUT__0", "OUTPUT__1"))
    subset = engine.run({"a": A, "b": B}, ["OUTPUT__1"])
    assert list(subset) == ["OUTPUT__1"] and subset["OUTPUT__1"].dtype == np.float32
    np.testing.assert_array_equal(subset["OUTPUT__1"], (A * B).sum(1))
    np.testing.assert_array_equal(engine(A, B)[0], A + B)
    engine.name_tensors(inputs=["X", "Y"], outputs={"DOT": 1})
    assert (engine.input_names, engine.output_names) == (("X", "Y"), ("DOT",))
    np.testing.assert_array_equal(engine.run({"X": A, "Y": B})["DOT"], (A * B).sum(1))


def test_torchscript_threads_zero_leave_torch_alone_and_fp16_halves(torchscript_model, torch_threads):
    import torch

    torch.set_num_threads(1)
    engine = open_engine(torchscript_model, "torchscript", precision="fp16")
    assert torch.get_num_threads() == 1
    assert engine.precision == "fp16"
    assert engine(A.astype(np.float16), B.astype(np.float16))[0].dtype == np.float16


@pytest.mark.parametrize(
    ("path", "fmt", "message"),
    [
        ("missing.onnx", "onnx", "no onnx model file at"),
        ("model.onnx", "tflite", "unknown engine format 'tflite'; known formats: onnx, torchscript"),
        ("model.onnx", "torchscript", "is not a TorchScript file torch.jit.load can read"),
        ("model.pt", "onnx", "is not an ONNX model ONNX Runtime can load"),
    ],
)
def test_a_wrong_path_or_format_is_a_clear_error(onnx_model, torchscript_model, tmp_path, path, fmt, message):
    files = {"model.onnx": onnx_model, "model.pt": torchscript_model}
    with pytest.raises(EngineError, match=message.replace("(", r"\(")):
        open_engine(files.get(path, tmp_path / path), fmt)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"device": "tpu"}, "unknown device 'tpu'"),
        ({"precision": "int4"}, "unknown precision 'int4'"),
        ({"threads": -1}, "threads must be >= 0"),
        ({"options": EngineOptions(graph_optimization="max")}, "unknown graph optimisation 'max'"),  # type: ignore[arg-type]
    ],
)
def test_wrong_settings_are_clear_errors(onnx_model, arguments, message):
    with pytest.raises(EngineError, match=message):
        open_engine(onnx_model, "onnx", **arguments)


def test_an_unknown_output_is_an_engine_error_and_bad_data_an_input_error(onnx_model, torchscript_model):
    onnx_engine = open_engine(onnx_model, "onnx")
    with pytest.raises(EngineError, match="unknown output 'NOPE'"):
        onnx_engine.run({"A": A, "B": B}, ["NOPE"])
    with pytest.raises(EngineInputError):
        onnx_engine.run({"A": A.astype(np.int64), "B": B})  # wrong dtype
    torch_engine = open_engine(torchscript_model, "torchscript")
    with pytest.raises(EngineInputError, match="missing input"):
        torch_engine.run({"a": A})
    with pytest.raises(EngineInputError, match="must match the size of tensor"):
        torch_engine(A, np.ones((2, 4), np.float32))


def test_the_registry_has_one_runner_per_format():
    assert tuple(RUNNERS) == FORMAT_NAMES
    assert all(runner_for(fmt).format == fmt for fmt in FORMAT_NAMES)
    assert all(issubclass(runner, Engine) for runner in RUNNERS.values())

    class Other(Engine):
        format = "onnx"
        library = "onnxruntime"

    with pytest.raises(ValueError, match="already has the runner"):
        register_runner(Other)


def test_the_contract_imports_no_engine_library_until_an_engine_opens():
    check = "import json, sys; import tritonfleet.contract.engines; print(json.dumps(sorted(sys.modules)))"
    completed = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert not {"torch", "onnxruntime", "onnx"} & set(json.loads(completed.stdout))

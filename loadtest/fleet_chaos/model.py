"""The fleet chaos study's test model: `tiny` (ONNX, two FP32 [4] inputs) and its versions, and the workloads."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MODEL = "tiny"
FEATURES = 4
INPUTS = ("INPUT0", "INPUT1")
OUTPUT = "OUTPUT0"


# -- test model -------------------------------------------------------------------------------------------------------


CONFIG = """name: "tiny"
platform: "onnxruntime_onnx"
max_batch_size: 16
input { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] }
input { name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] }
output { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 3 ] }
output { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 1 ] }
instance_group { kind: KIND_CPU count: 1 }
dynamic_batching { max_queue_delay_microseconds: 2000 }
"""


def build_repository(root: Path) -> Path:
    """`tiny` (two FP32 [4] inputs -> [3] and [1], ONNX, like tests/support/tiny_models.py's), version 1."""
    (root / MODEL / "1").mkdir(parents=True, exist_ok=True)
    (root / MODEL / "config.pbtxt").write_text(CONFIG)
    _write_onnx(root / MODEL / "1" / "model.onnx", broken=False)
    return root


def add_version(repository: Path, version: int, broken: bool = False, model: str = MODEL) -> Path:
    """A new immutable version directory: a copy of version 1, or (`broken`) an ONNX graph that fails every request
    at run time (a Reshape no input fits), as a bad export would."""
    target = repository / model / str(version)
    if target.exists():
        return target
    staging = repository / model / f".staging-{version}"
    shutil.rmtree(staging, ignore_errors=True)
    if broken:
        staging.mkdir(parents=True)
        _write_onnx(staging / "model.onnx", broken=True)
    else:
        shutil.copytree(repository / model / "1", staging)
    staging.rename(target)  # appears whole: a replica never sees a half-written version
    return target


def _write_onnx(path: Path, broken: bool) -> None:
    """OUTPUT0 = (INPUT0 + INPUT1) @ W + b, OUTPUT1 = sum(INPUT0 * INPUT1); `broken`: OUTPUT0 is a Reshape of the
    sum to rows of 3, which no request fits, so every request fails at run time (HTTP 500 / gRPC INTERNAL)."""
    import onnx
    from onnx import TensorProto, helper

    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", FEATURES]) for name in INPUTS]
    outputs = [
        helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", 3]),
        helper.make_tensor_value_info("OUTPUT1", TensorProto.FLOAT, ["batch", 1]),
    ]
    rng = np.random.default_rng(0)
    weights = helper.make_tensor("W", TensorProto.FLOAT, [FEATURES, 3], rng.standard_normal(FEATURES * 3).tolist())
    bias = helper.make_tensor("B", TensorProto.FLOAT, [3], rng.standard_normal(3).tolist())
    rows_of_3 = helper.make_tensor("rows_of_3", TensorProto.INT64, [2], [-1, 3])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    nodes = [helper.make_node("Add", list(INPUTS), ["sum"])]
    if broken:
        nodes.append(helper.make_node("Reshape", ["sum", "rows_of_3"], ["OUTPUT0"]))
    else:
        nodes += [helper.make_node("MatMul", ["sum", "W"], ["mm"]), helper.make_node("Add", ["mm", "B"], ["OUTPUT0"])]
    nodes += [
        helper.make_node("Mul", list(INPUTS), ["product"]),
        helper.make_node("ReduceSum", ["product", "axes"], ["OUTPUT1"], keepdims=1),
    ]
    graph = helper.make_graph(nodes, MODEL, inputs, outputs, initializer=[weights, bias, rows_of_3, axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def request_arrays(batch: int = 1) -> dict[str, np.ndarray]:
    return {name: np.ones((batch, FEATURES), dtype=np.float32) for name in INPUTS}


@dataclass(frozen=True)
class Workload:
    """What each request asks: `model`, one of `requests` (input arrays; worker i sends requests[i % n]) and
    `output`."""

    model: str
    requests: tuple[dict[str, np.ndarray], ...]
    output: str

    @classmethod
    def tiny(cls) -> Workload:
        return cls(MODEL, (request_arrays(),), OUTPUT)

    @classmethod
    def esm2(cls, count: int = 16) -> Workload:
        """One protein per request to ESM-2's default entry (the `esm2` ensemble), Swiss-Prot-like lengths."""
        from tritonfleet.contract.pipeline import Purpose, Role, get_pipeline

        esm2 = get_pipeline("esm2")
        entry = esm2.entry(Purpose.DEFAULT_ENTRY)
        sequence = next(tensor.name for tensor in entry.inputs if tensor.role is Role.SEQUENCES)
        embedding = next(tensor.name for tensor in entry.outputs if tensor.role is Role.EMBEDDING)
        requests = tuple(
            {sequence: np.array([[protein.encode()]], dtype=object)} for protein in esm2.workload.items(count)
        )
        return cls(entry.name, requests, embedding)

"""ONNX export with dynamic batch and sequence axes (named so as not to shadow the `onnx` package)."""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from tritonfleet.export.recipe import ModelRecipe

logger = logging.getLogger(__name__)

OPSET = 18
# Largest size the dynamo exporter is told each dynamic axis may take (range constraints, not runtime checks).
MAX_DYNAMIC_SIZE = 4096
OnnxExporter = Literal["dynamo", "legacy"]


def export_onnx(
    recipe: ModelRecipe, module: torch.nn.Module, path: Path, exporter: OnnxExporter = "dynamo", opset: int = OPSET
) -> Path:
    """Exports `module` to a single-file ONNX model with the recipe's tensor names and dynamic axes.

    `dynamo` (torch.export, the default since torch 2.9) and `legacy` (TorchScript-based, deprecated) both pass
    parity for ESM-2 on torch 2.13; dynamo is the supported path, legacy is ~10x faster to export.
    """
    example = tuple(torch.from_numpy(array) for array in recipe.example_inputs())
    input_names = [spec.name for spec in recipe.inputs]
    output_names = [spec.name for spec in recipe.outputs]
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message="# The axis name", category=UserWarning)
        if exporter == "dynamo":
            dims: dict[str, torch.export.Dim] = {}
            dynamic_shapes = tuple(
                {
                    index: dims.setdefault(axis, torch.export.Dim(axis, min=1, max=MAX_DYNAMIC_SIZE))
                    for index, axis in spec.dynamic_axes.items()
                }
                for spec in recipe.inputs
            )
            program = torch.onnx.export(
                module,
                example,
                dynamo=True,
                opset_version=opset,
                input_names=input_names,
                output_names=output_names,
                dynamic_shapes=dynamic_shapes,
                verbose=False,
            )
            program.save(str(path), external_data=False)
        elif exporter == "legacy":
            torch.onnx.export(
                module,
                example,
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=input_names,
                output_names=output_names,
                dynamic_axes={spec.name: spec.dynamic_axes for spec in (*recipe.inputs, *recipe.outputs)},
            )
        else:
            raise ValueError(f"unknown ONNX exporter {exporter!r}")
    check_onnx_signature(recipe, path)
    logger.info("ONNX: exported %s with the %s exporter in %.1f s", path.name, exporter, time.perf_counter() - started)
    return path


# ONNX TensorProto element type -> numpy dtype name.
_ONNX_ELEMENT_TYPES = {1: "float32", 7: "int64", 10: "float16", 6: "int32", 9: "bool"}


def onnx_signature(path: Path) -> dict[str, tuple[str, tuple[str | int, ...]]]:
    """{tensor name: (numpy dtype name, axes)} of the graph inputs and outputs; dynamic axes by symbolic name."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    signature = {}
    for value in (*graph.input, *graph.output):
        tensor_type = value.type.tensor_type
        axes = tuple(dim.dim_param if dim.dim_param else dim.dim_value for dim in tensor_type.shape.dim)
        signature[value.name] = (_ONNX_ELEMENT_TYPES.get(tensor_type.elem_type, str(tensor_type.elem_type)), axes)
    return signature


def check_onnx_signature(recipe: ModelRecipe, path: Path) -> None:
    """Raises if the graph's names, dtypes, ranks, fixed sizes or dynamic axes differ from the recipe."""
    signature = onnx_signature(path)
    expected_names = [spec.name for spec in (*recipe.inputs, *recipe.outputs)]
    if sorted(signature) != sorted(expected_names):
        raise ValueError(f"ONNX graph tensors {sorted(signature)} != recipe {sorted(expected_names)}")
    for spec in (*recipe.inputs, *recipe.outputs):
        dtype, axes = signature[spec.name]
        if dtype != spec.dtype or len(axes) != len(spec.axes):
            raise ValueError(f"ONNX {spec.name}: {dtype} {axes} != recipe {spec.dtype} {spec.axes}")
        for actual, wanted in zip(axes, spec.axes):
            if isinstance(wanted, int) and actual != wanted:
                raise ValueError(f"ONNX {spec.name}: fixed axis {actual} != {wanted}")
            if isinstance(wanted, str) and not isinstance(actual, str):
                raise ValueError(f"ONNX {spec.name}: axis {wanted!r} was exported with a fixed size {actual}")


def onnx_runner(path: Path, threads: int = 0):
    """A callable numpy inputs -> numpy outputs running the ONNX model with ONNX Runtime on the CPU."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    input_names = [value.name for value in session.get_inputs()]

    def run(*inputs: np.ndarray) -> tuple[np.ndarray, ...]:
        return tuple(session.run(None, dict(zip(input_names, inputs))))

    return run

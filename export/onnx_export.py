"""ONNX export with dynamic axes from the signature (named so as not to shadow the `onnx` package; loads torch
only when exporting)."""

from __future__ import annotations

import logging
import re
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from tritonfleet.contract.engines import Engine, open_engine
from tritonfleet.contract.tensors import TensorSpec
from tritonfleet.export.signature import ExportError, Sample, Signature

logger = logging.getLogger(__name__)

OPSET = 18
OnnxExporter = Literal["dynamo", "legacy"]


def _dim_name(axis: str) -> str:
    """A Python identifier for torch.export.Dim (axis names come from tensor names)."""
    name = re.sub(r"\W", "_", axis)
    return name if name[:1].isalpha() else f"d_{name}"


def dynamic_shapes(inputs: Sequence[TensorSpec], max_size: int | None = None) -> tuple[dict[int, Any], ...]:
    """torch.export dynamic shapes of the inputs: one `Dim` per axis name, so axes sharing a name share a symbol."""
    import torch

    dims: dict[str, Any] = {}
    bounds = {"min": 1} if max_size is None else {"min": 1, "max": max_size}
    return tuple(
        {
            position: dims.setdefault(axis, torch.export.Dim(_dim_name(axis), **bounds))
            for position, axis in spec.named_axes(batched=True).items()
        }
        for spec in inputs
    )


def export_onnx(
    module: Any,
    signature: Signature,
    example: Sample,
    path: Path,
    exporter: OnnxExporter = "dynamo",
    opset: int = OPSET,
    max_dynamic_size: int | None = None,
) -> Path:
    """Exports `module` to a single-file ONNX model with the signature's tensor names and dynamic axes.

    `dynamo` (torch.export, the default since torch 2.9) and `legacy` (TorchScript-based, deprecated) both pass
    parity for ESM-2 on torch 2.13; dynamo is the supported path, legacy is ~10x faster to export.

    Args:
        example: the inputs to export with (`signature.trace_example`).
        max_dynamic_size: the largest size the dynamo exporter is told a dynamic axis may take (None: unbounded).
    """
    import torch

    tensors = tuple(torch.from_numpy(array) for array in example)
    input_names = [spec.name for spec in signature.inputs]
    output_names = [spec.name for spec in signature.outputs]
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message="# The axis name", category=UserWarning)
        if exporter == "dynamo":
            program = torch.onnx.export(
                module,
                tensors,
                dynamo=True,
                opset_version=opset,
                input_names=input_names,
                output_names=output_names,
                dynamic_shapes=dynamic_shapes(signature.inputs, max_dynamic_size),
                verbose=False,
            )
            program.save(str(path), external_data=False)
        elif exporter == "legacy":
            torch.onnx.export(
                module,
                tensors,
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=input_names,
                output_names=output_names,
                dynamic_axes={
                    spec.name: spec.named_axes(batched=True) for spec in (*signature.inputs, *signature.outputs)
                },
            )
        else:
            raise ValueError(f"unknown ONNX exporter {exporter!r}")
    check_onnx_signature(signature, path)
    logger.info("ONNX: exported %s with the %s exporter in %.1f s", path.name, exporter, time.perf_counter() - started)
    return path


def onnx_signature(path: Path) -> dict[str, tuple[str, tuple[str | int, ...]]]:
    """{tensor name: (numpy dtype name, axes)} of the graph inputs and outputs; dynamic axes by symbolic name."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    signature = {}
    for value in (*graph.input, *graph.output):
        tensor_type = value.type.tensor_type
        axes = tuple(dim.dim_param if dim.dim_param else dim.dim_value for dim in tensor_type.shape.dim)
        signature[value.name] = (onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name, axes)
    return signature


def check_onnx_signature(signature: Signature, path: Path) -> None:
    """Raises ExportError if the graph's names, dtypes, ranks, fixed sizes or dynamic axes differ from `signature`."""
    graph = onnx_signature(path)
    specs = (*signature.inputs, *signature.outputs)
    expected_names = [spec.name for spec in specs]
    if sorted(graph) != sorted(expected_names):
        raise ExportError(
            f"the ONNX graph has tensors {sorted(graph)}, expected {sorted(expected_names)} (an input the model does "
            "not use is dropped by the exporter)"
        )
    for spec in specs:
        dtype, axes = graph[spec.name]
        expected_axes = ("batch", *spec.axes)
        if dtype != spec.dtype or len(axes) != len(expected_axes):
            raise ExportError(f"ONNX {spec.name}: {dtype} {list(axes)} != expected {spec.dtype} {list(expected_axes)}")
        for actual, wanted in zip(axes, expected_axes):
            if isinstance(wanted, int) and actual != wanted:
                raise ExportError(f"ONNX {spec.name}: fixed axis {actual} != {wanted}")
            if isinstance(wanted, str) and not isinstance(actual, str):
                raise ExportError(
                    f"ONNX {spec.name}: axis {wanted!r} was exported with the fixed size {actual} (the model treats "
                    "it as a constant)"
                )


def onnx_runner(path: Path, threads: int = 0) -> Engine:
    """The ONNX model with ONNX Runtime on the CPU as a callable numpy inputs -> numpy outputs (the engine
    layer's)."""
    return open_engine(path, "onnx", threads=threads)

"""TorchScript export by tracing, made device-portable for Triton's LibTorch backend; fp32, int8 or bf16.

int8 traces a dynamically quantized copy (export.quantize); bf16 traces the module under CPU autocast (matmuls in
bfloat16 on CPUs with AVX512-BF16/AMX, LayerNorm and softmax kept in fp32) with its float outputs cast back to their
eager dtype, so the served contract does not change. Both are gated on similarity by the caller (export.parity).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from tritonfleet.contract.engines import Engine, EngineOptions, open_engine
from tritonfleet.export.parity import as_outputs
from tritonfleet.export.signature import Sample

logger = logging.getLogger(__name__)


def make_device_portable(traced: torch.jit.ScriptModule) -> int:
    """Replaces every device constant in the traced forward graph by the device of the first input tensor.

    A trace records `x.to(device=<trace device>)` as a constant, so a model traced on the CPU (or on cuda:0) fails
    with a device mismatch on another GPU (the LibTorch backend README recommends scripting for this reason; HF
    models cannot be scripted). After this pass one `model.pt` serves KIND_CPU and any KIND_GPU device.

    Returns:
        How many device constants were replaced.
    """
    graph = traced.graph
    torch._C._jit_pass_inline(graph)
    tensor_inputs = [value for value in graph.inputs() if value.type().kind() == "TensorType"]
    if not tensor_inputs:
        raise ValueError("the traced graph has no tensor input to take the device from")
    first_input = tensor_inputs[0]
    replaced = 0
    for node in list(graph.nodes()):
        if node.kind() != "prim::Constant" or node.output().type().kind() != "DeviceObjType":
            continue
        device_of_input = graph.create("prim::device", [first_input], 1)
        device_of_input.output().setType(torch._C.DeviceObjType.get())
        device_of_input.insertBefore(node)
        node.output().replaceAllUsesWith(device_of_input.output())
        node.destroy()
        replaced += 1
    torch._C._jit_pass_lint(graph)
    return replaced


def device_constants(module: torch.jit.ScriptModule) -> list[str]:
    """Device constants left in the (inlined) forward graph; empty for a portable model."""
    return [
        str(node).strip()
        for node in module.inlined_graph.nodes()
        if node.kind() == "prim::Constant" and node.output().type().kind() == "DeviceObjType"
    ]


class _Bfloat16Autocast(torch.nn.Module):
    """Runs a module under CPU bfloat16 autocast and returns its outputs in the dtypes eager fp32 gives."""

    def __init__(self, module: torch.nn.Module, output_dtypes: Sequence[torch.dtype]) -> None:
        super().__init__()
        self.module = module
        self.output_dtypes = tuple(output_dtypes)

    def forward(self, *inputs: torch.Tensor):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outputs = as_outputs(self.module(*inputs))
        cast = tuple(output.to(dtype) for output, dtype in zip(outputs, self.output_dtypes))
        return cast if len(cast) > 1 else cast[0]


def traceable(module: torch.nn.Module, example: tuple[torch.Tensor, ...], precision: str) -> torch.nn.Module:
    """The module to trace for a precision: itself (fp32/fp16), an int8 copy, or a bf16-autocast wrapper."""
    if precision == "int8":
        from tritonfleet.export.quantize import quantize_torch_int8

        return quantize_torch_int8(module)
    if precision == "bf16":
        with torch.no_grad():
            dtypes = [output.dtype for output in as_outputs(module(*example))]
        return _Bfloat16Autocast(module, dtypes).eval()
    return module


def export_torchscript(
    module: torch.nn.Module, example: Sample, check_inputs: Sequence[Sample], path: Path, precision: str = "fp32"
) -> torch.jit.ScriptModule:
    """Traces `module` (in `precision`) on `example`, checks the trace reproduces its eager run on `check_inputs`
    (other shapes) and saves it."""
    tensors = tuple(torch.from_numpy(array) for array in example)
    checks = [tensors] + [tuple(torch.from_numpy(array) for array in inputs) for inputs in check_inputs]
    module = traceable(module, tensors, precision)
    started = time.perf_counter()
    with warnings.catch_warnings(), torch.no_grad():
        # TracerWarnings flag Python-side shape arithmetic; the parity check at other shapes is the real test.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated, LibTorch serves it still
        # bf16 kernels may round differently between the trace check's runs: the similarity gate judges them
        tolerance = 1e-5 if precision != "bf16" else 1e-2
        traced = torch.jit.trace(module, tensors, check_inputs=checks, check_tolerance=tolerance, strict=False)
        replaced = make_device_portable(traced)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.jit.save(traced, str(path))
    logger.info(
        "TorchScript: traced and saved %s in %.1f s (%d device constant(s) made portable)",
        path.name,
        time.perf_counter() - started,
        replaced,
    )
    return traced


def torchscript_runner(path: Path, threads: int = 0) -> Engine:
    """The saved TorchScript model on the CPU, under torch.no_grad like the eager reference, as a callable numpy
    inputs -> numpy outputs (the engine layer's)."""
    return open_engine(path, "torchscript", threads=threads, options=EngineOptions(inference_mode=False))

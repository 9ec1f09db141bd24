"""INT8 variants of an exported network: dynamic quantization of its linear layers, for ONNX Runtime and LibTorch.

Both quantize the weights of the linear layers to int8 once, and the activations to 8 bits on the fly (dynamic
quantization needs no calibration data); inputs, outputs, their names and dtypes stay those of the fp32 model, so the
config and the clients do not change. The export gates the result against eager fp32 (export.parity, "int8" gate).

- ONNX Runtime (`quantize_onnx_int8`): `quantize_dynamic` on the MatMuls with a constant weight (the attention
  score MatMuls of an exported graph stay fp32), per output channel, QInt8 weights. ORT documents 7-bit weights
  (`reduce_range`) for CPUs without VNNI, whose AVX2 kernels can saturate the u8*s8 pair sums; VNNI CPUs (AVX512-VNNI,
  AVX-VNNI) accumulate in int32 and take the full 8 bits. The choice follows the CPU of the exporting machine.
- LibTorch (`quantize_torch_int8`): `torch.ao.quantization.quantize_dynamic` of every `nn.Linear`, per output
  channel (fbgemm kernels, VNNI where the CPU has it); the quantized module is then traced like the fp32 one.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import onnx

logger = logging.getLogger(__name__)


def _signature(model: onnx.ModelProto) -> list[tuple]:
    def describe(value) -> tuple:
        tensor = value.type.tensor_type
        return value.name, tensor.elem_type, tuple(dim.dim_param or dim.dim_value for dim in tensor.shape.dim)

    return [describe(value) for value in (*model.graph.input, *model.graph.output)]


def quantize_onnx_int8(source: Path, destination: Path, reduce_range: bool | None = None) -> None:
    """Writes the int8 form of the fp32 ONNX model `source` to `destination`.

    The opset and IR version of the source are kept (Triton 24.10's ONNX Runtime 1.19 reads IR <= 10).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if reduce_range is None:
        from tritonfleet.export.devices import cpu_has_vnni

        reduce_range = not cpu_has_vnni()
    original = onnx.load(str(source), load_external_data=False)
    external = any(tensor.data_location == onnx.TensorProto.EXTERNAL for tensor in original.graph.initializer)
    quantize_dynamic(
        source,
        destination,
        op_types_to_quantize=["MatMul"],
        per_channel=True,
        reduce_range=reduce_range,
        weight_type=QuantType.QInt8,
        # contrib-op outputs carry no type for onnx's shape inference: float is what they are
        extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT},
        use_external_data_format=external,
    )
    quantized = onnx.load(str(destination), load_external_data=False)
    if quantized.ir_version != original.ir_version:
        quantized.ir_version = original.ir_version
        onnx.save_model(quantized, str(destination))
    if _signature(quantized) != _signature(original):
        raise ValueError(f"int8 model signature {_signature(quantized)} differs from fp32 {_signature(original)}")
    integer = sum(1 for node in quantized.graph.node if node.op_type in ("MatMulInteger", "DynamicQuantizeMatMul"))
    if not integer:
        raise ValueError("quantization found no MatMul with a constant weight to quantize")
    logger.info("int8: %d MatMuls quantized (per channel, reduce_range=%s)", integer, reduce_range)


def quantize_torch_int8(module: Any) -> Any:
    """A dynamically quantized copy of `module` (every nn.Linear int8); the module itself is left as it was."""
    import copy

    import torch

    engines = torch.backends.quantized.supported_engines
    if "fbgemm" in engines:
        torch.backends.quantized.engine = "fbgemm"
    per_channel = {torch.nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig}
    quantized = torch.ao.quantization.quantize_dynamic(copy.deepcopy(module), per_channel, dtype=torch.qint8)
    if not any("quantized" in type(child).__module__ for child in quantized.modules()):
        raise ValueError("the module has no nn.Linear layer to quantize")
    return quantized.eval()

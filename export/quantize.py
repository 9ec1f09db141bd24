"""INT8 variants of an exported network: int8 linear layers for ONNX Runtime and LibTorch.

Both quantize the weights of the linear layers to int8 once (per output channel), and the activations to 8 bits on
the fly (no calibration data); inputs, outputs, their names and dtypes stay those of the fp32 model, so the config and
the clients do not change. The export gates the result against eager fp32 (export.parity: cosine gate and batch
invariance gate).

- ONNX Runtime (`quantize_onnx_int8`, the default): every MatMul (or Gemm) with a constant 2-D weight becomes a
  per-row (per-token) W8A8 product: the row's absmax scale (ReduceMax of Abs over the last axis), symmetric 8-bit
  codes of the row (stored as uint8 with zero point 128, the u8*s8 form MLAS's VNNI/AMX kernels take), an integer
  product against the int8 weights (int32 accumulation: exact; com.microsoft `MatMulIntegerToFloat` applies the
  column scales in the GEMM's output stage), then the row scale. Every step is row-local and exact or elementwise,
  so a row's result does not depend on the other rows of the batch (batch invariance: a protein's vector does not
  depend on its neighbours or on padding).
  ORT documents 7-bit weights (`reduce_range`) for CPUs without VNNI, whose AVX2 kernels can saturate the u8*s8 pair
  sums; VNNI CPUs (AVX512-VNNI, AVX-VNNI, AMX) accumulate in int32 and take the full 8 bits. The choice follows the
  CPU of the exporting machine. Loadable by ONNX Runtime 1.19.2 (Triton 24.10): the graph's opset is kept, the new
  ops are Abs, ReduceMax, Div, QuantizeLinear, Mul (opset <= 18) and MatMulIntegerToFloat (com.microsoft, CPU).
  Measured on ESM-2 8M/35M (random weights): alone vs in padded mixed batches 1.4e-6 max abs, as fp32 (per-tensor:
  1.1e-1); pooled cosine vs eager fp32 0.99975 / 0.99955 (per-tensor 0.99965 / 0.99945).
- `quantize_onnx_int8_per_tensor`: ONNX Runtime's `quantize_dynamic` (one activation scale per tensor, i.e. over the
  whole batch, padding included): faster to write, not batch invariant; kept for comparison and the gate's tests.
- LibTorch (`quantize_torch_int8`): `torch.ao.quantization.quantize_dynamic` of every `nn.Linear`, per output
  channel (fbgemm kernels); its activation scale is per tensor as well, so it is not batch invariant and the export
  ships TorchScript in fp32 when int8 is asked for the whole repository (export.network.engine_precisions).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnx

logger = logging.getLogger(__name__)


def _signature(model: onnx.ModelProto) -> list[tuple]:
    def describe(value) -> tuple:
        tensor = value.type.tensor_type
        return value.name, tensor.elem_type, tuple(dim.dim_param or dim.dim_value for dim in tensor.shape.dim)

    return [describe(value) for value in (*model.graph.input, *model.graph.output)]


def quantize_onnx_int8_per_tensor(
    source: Path, destination: Path, reduce_range: bool | None = None, data_location: str | None = None
) -> None:
    """Writes ONNX Runtime's dynamic int8 form (per-tensor activation scale) of the fp32 model `source`
    (`data_location` is accepted for `quantize_onnx_int8`'s interface: quantize_dynamic names its own data file).

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


# Largest code of a symmetric 8-bit activation row (codes -127..127, stored +128 as uint8 1..255).
ACTIVATION_LEVELS = 127
ACTIVATION_ZERO_POINT = 128
# Weight codes: 8 bits (-127..127) on VNNI CPUs, 7 bits (-63..63) where AVX2's u8*s8 pair sums could saturate.
WEIGHT_LEVELS = {False: 127, True: 63}
# Weights above this many bytes go to external data beside the model (protobuf's 2 GB limit).
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
MS_DOMAIN = "com.microsoft"


def _opset(model: onnx.ModelProto) -> int:
    return next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), 0)


def quantize_weight(weight: np.ndarray, reduce_range: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel int8 codes of a MatMul weight [K, N] and the scale of each column [N]."""
    levels = WEIGHT_LEVELS[reduce_range]
    absmax = np.max(np.abs(weight.astype(np.float32)), axis=0)
    scale = np.where(absmax > 0, absmax / levels, 1.0).astype(np.float32)
    codes = np.clip(np.rint(weight / scale), -levels, levels).astype(np.int8)
    return codes, scale


def _constant_weight_linear(
    node: onnx.NodeProto, initializers: dict[str, onnx.TensorProto]
) -> tuple[onnx.TensorProto, np.ndarray, np.ndarray | None] | None:
    """(weight initializer, x @ matrix's matrix [K, N], bias to add or None) of a MatMul with a constant 2-D float
    weight, or of a Gemm with a constant weight (and constant C) and untransposed A (torch.onnx writes nn.Linear on
    2-D inputs as Gemm); None for any other node."""
    from onnx import TensorProto, helper, numpy_helper

    if node.domain not in ("", "ai.onnx") or node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2:
        return None
    weight = initializers.get(node.input[1])
    if weight is None or len(weight.dims) != 2 or weight.data_type != TensorProto.FLOAT:
        return None
    matrix = numpy_helper.to_array(weight).astype(np.float32)
    if node.op_type == "MatMul":
        return weight, matrix, None
    attributes = {attribute.name: helper.get_attribute_value(attribute) for attribute in node.attribute}
    if attributes.get("transA", 0):
        return None
    bias = None
    if len(node.input) > 2 and node.input[2]:
        if node.input[2] not in initializers:
            return None
        bias = (numpy_helper.to_array(initializers[node.input[2]]) * attributes.get("beta", 1.0)).astype(np.float32)
    if attributes.get("transB", 0):
        matrix = matrix.T
    return weight, np.ascontiguousarray(matrix * np.float32(attributes.get("alpha", 1.0))), bias


def quantize_onnx_int8(
    source: Path,
    destination: Path,
    reduce_range: bool | None = None,
    fused_output: bool = True,
    data_location: str | None = None,
) -> None:
    """Writes the batch-invariant int8 form of the fp32 ONNX model `source` to `destination` (module docstring):
    per-row activation scales, int8 per-channel weights, integer MatMuls.

    The opset and IR version of the source are kept (Triton 24.10's ONNX Runtime 1.19 reads IR <= 10).

    Args:
        reduce_range: 7-bit weights (CPUs without VNNI); default: from the exporting machine's CPU.
        fused_output: rescale the int32 sums inside com.microsoft `MatMulIntegerToFloat` (faster); False writes
            standard ops only (`MatMulInteger`, `Cast`, `Mul`), with the same results.
        data_location: file name beside `destination` for weights over ~1.8 GB (default `<destination>.data`).
    """
    from onnx import TensorProto, helper, numpy_helper

    if reduce_range is None:
        from tritonfleet.export.devices import cpu_has_vnni

        reduce_range = not cpu_has_vnni()
    model = onnx.load(str(source))  # external weights (650M+) are read in as well
    original_signature = _signature(model)
    graph = model.graph
    opset = _opset(model)
    if opset < 11:
        raise ValueError(f"per-row int8 needs opset >= 11 (Round), the model has opset {opset}")
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    taken = {name for node in graph.node for name in (*node.input, *node.output)} | set(initializers)

    def fresh(stem: str) -> str:
        name, count = stem, 0
        while name in taken:
            count += 1
            name = f"{stem}_{count}"
        taken.add(name)
        return name

    shared: dict[str, str] = {}

    def constant(key: str, array: np.ndarray) -> str:
        if key not in shared:
            shared[key] = fresh(f"rowwise_int8.{key}")
            graph.initializer.append(numpy_helper.from_array(array, shared[key]))
        return shared[key]

    nodes: list[onnx.NodeProto] = []
    float_outputs: list[str] = []
    replaced_weights: set[str] = set()
    quantized = 0
    for node in graph.node:
        linear = _constant_weight_linear(node, initializers)
        if linear is None:
            nodes.append(node)
            continue
        weight, matrix, bias = linear
        quantized += 1
        stem = node.name or node.output[0]
        activation = node.input[0]
        product = node.output[0] if bias is None else fresh(f"{stem}.product")
        codes, column_scale = quantize_weight(matrix, reduce_range)
        column_scale = (column_scale / np.float32(ACTIVATION_LEVELS)).astype(np.float32)
        weight_name = fresh(f"{weight.name}.int8")
        scale_name = fresh(f"{weight.name}.column_scale")
        graph.initializer.extend(
            [numpy_helper.from_array(codes, weight_name), numpy_helper.from_array(column_scale, scale_name)]
        )
        replaced_weights.update(node.input[1:3])  # dropped below unless another node still reads them

        def op(op_type: str, inputs: list[str], suffix: str, stem: str = stem, **attributes) -> str:
            output = fresh(f"{stem}.{suffix}")
            nodes.append(helper.make_node(op_type, inputs, [output], name=output, **attributes))
            return output

        magnitude = op("Abs", [activation], "abs")
        if opset >= 18:
            axes = constant("last_axis", np.array([-1], dtype=np.int64))
            absmax = op("ReduceMax", [magnitude, axes], "row_absmax", keepdims=1)
        else:
            absmax = op("ReduceMax", [magnitude], "row_absmax", axes=[-1], keepdims=1)
        # codes = round(127 * x / absmax) (half to even), + 128, saturated, as uint8: QuantizeLinear of x / absmax
        # with the scale 1/127; the 1/127 of the way back is folded into the column scales. An all-zero row divides
        # 0 by 0: its codes are arbitrary, but its absmax is 0, so its product is exactly 0.
        zero_point = constant("zero_point", np.array(ACTIVATION_ZERO_POINT, dtype=np.uint8))
        unit = op("Div", [activation, absmax], "unit_rows")
        step = constant("code_step", np.array(1.0 / ACTIVATION_LEVELS, dtype=np.float32))
        codes = op("QuantizeLinear", [unit, step, zero_point], "codes")
        row_scale = absmax
        if fused_output:
            # int32 sums -> float x column scales in the GEMM's output stage (com.microsoft, CPU kernel in ORT 1.19)
            column_scaled = fresh(f"{stem}.column_scaled")
            nodes.append(
                helper.make_node(
                    "MatMulIntegerToFloat",
                    [codes, weight_name, constant("one", np.array(1.0, dtype=np.float32)), scale_name, zero_point],
                    [column_scaled],
                    name=column_scaled,
                    domain=MS_DOMAIN,
                )
            )
            float_outputs.append(column_scaled)
        else:
            sums = op("MatMulInteger", [codes, weight_name, zero_point], "int32")
            column_scaled = op(
                "Mul", [op("Cast", [sums], "int32_float", to=TensorProto.FLOAT), scale_name], "column_scaled"
            )
        nodes.append(helper.make_node("Mul", [column_scaled, row_scale], [product], name=fresh(f"{stem}.row_scaled")))
        if bias is not None:  # a Gemm's C
            bias_name = fresh(f"{stem}.bias")
            graph.initializer.append(numpy_helper.from_array(bias, bias_name))
            nodes.append(helper.make_node("Add", [product, bias_name], [node.output[0]], name=fresh(f"{stem}.add")))
    if float_outputs:
        if not any(entry.domain == MS_DOMAIN for entry in model.opset_import):
            model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
        known = {value.name for value in graph.value_info}
        graph.value_info.extend(
            helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in float_outputs if name not in known
        )
    if not quantized:
        raise ValueError("quantization found no MatMul with a constant weight to quantize")
    still_used = {name for node in nodes for name in node.input} | {value.name for value in graph.output}
    replaced_weights = {name for name in replaced_weights if name not in still_used}
    del graph.node[:]
    graph.node.extend(nodes)
    kept = [tensor for tensor in graph.initializer if tensor.name not in replaced_weights]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    destination.parent.mkdir(parents=True, exist_ok=True)
    if sum(len(tensor.raw_data) for tensor in graph.initializer) > EXTERNAL_DATA_THRESHOLD:
        data_file = destination.with_name(data_location or destination.name + ".data")
        data_file.unlink(missing_ok=True)
        onnx.save_model(
            model, str(destination), save_as_external_data=True, location=data_file.name, size_threshold=1024
        )
        onnx.checker.check_model(str(destination))
    else:
        onnx.checker.check_model(model)
        onnx.save_model(model, str(destination))
    if _signature(model) != original_signature:
        raise ValueError(f"int8 model signature {_signature(model)} differs from fp32 {original_signature}")
    logger.info(
        "int8: %d MatMuls quantized (per-row activations, per-channel weights, reduce_range=%s)",
        quantized,
        reduce_range,
    )


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

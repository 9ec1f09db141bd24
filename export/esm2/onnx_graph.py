"""ESM-2 as an ONNX graph with fused rotary attention, built node by node from the eager module's weights.

Why: the exporters spell ESM's rotary attention as ~50 small ops per model (MatMul, Slice, Neg, Concat, ...) that
ONNX Runtime cannot fuse (its transformer optimizer knows rotary attention only for GPT-2/LLaMA graphs), so long
sequences ran slower than eager PyTorch. The ESM-2 encoder is small and fixed (pre-LN transformer, rotary, erf-GELU,
final LayerNorm), so it is written here directly with ONNX Runtime's contrib ops, and the export's parity check
compares it with eager PyTorch like any exported graph.

Per layer: one packed QKV MatMul, two `com.microsoft::RotaryEmbedding` (interleaved=0: the rotate_half form ESM uses,
cos/sin caches from the checkpoint's stored `inv_freq`), `com.microsoft::MultiHeadAttention`, and two
residual-plus-LayerNorm steps. ESM scales the query by head_dim**-0.5 before rotary; rotary is linear, so the scale
moves into MultiHeadAttention's `scale` unchanged. The erf-GELU is written as ESM writes it and ORT fuses it into
BiasGelu. Two layouts (`export.esm2.packed.AttentionLayout`, picked by the plan's instance kind):
- GPU plans ("padded"): one MultiHeadAttention over the batch with an int32 `key_padding_mask`, and
  `com.microsoft::SkipLayerNormalization` (dense bias + residual + LayerNorm in one kernel; ORT's own fusion does not
  fire on pre-LN blocks, whose residual sum has two consumers);
- CPU plans ("per_sequence"): MultiHeadAttention without a mask on each sequence's own tokens (an If: the whole
  batch when it is one unpadded sequence, else a Loop over the sequences), and Add + LayerNormalization. Measured with
  ESM-2 8M int8, one thread, one protein of 360 tokens (ORT 1.32): 49 -> 41 ms (1000 tokens: 272 -> 187 ms; 40
  tokens: 5.7 -> 5.1 ms); ORT 1.19.2 (NGC 24.10): 45.5 -> 46.3 ms, where SkipLayerNormalization is still the faster.

Loadable by ONNX Runtime 1.19.2, the one in Triton's NGC 24.10 image (server v2.51.0 `build.py` pins it): every op
above has CPU and CUDA kernels there; the graph is opset 18 / IR 10 (ORT 1.19 rejects IR 11, onnx's current default).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from tritonfleet.contract.esm2_tokens import CLS_ID, EOS_ID
from tritonfleet.export.esm2.graph_builder import MS_DOMAIN, GraphBuilder
from tritonfleet.export.esm2.onnx_attention import Attend, per_sequence_attend
from tritonfleet.export.esm2.packed import AttentionLayout, attention_for_kind

OPSET = 18
IR_VERSION = 10
# Rows of the rotary caches = the longest sequence the graph accepts (the exporters' dynamic axes stop there too).
MAX_POSITIONS = 4096
# Above this many weight bytes the weights go to `model.onnx.data` (a protobuf holds at most 2 GB): ESM-2 650M+.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
INPUT_NAMES = ("INPUT_IDS", "ATTENTION_MASK")
OUTPUT_NAMES = ("EMBEDDING", "RESIDUE_EMBEDDINGS")


@dataclass(frozen=True)
class Esm2Shape:
    """What the graph needs from the HF `EsmConfig`."""

    num_layers: int
    hidden_size: int
    num_heads: int
    layer_norm_eps: float
    token_dropout: bool
    emb_layer_norm_before: bool
    mask_token_id: int

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def from_config(cls, config) -> Esm2Shape:
        problems = []
        if getattr(config, "position_embedding_type", "absolute") != "rotary":
            problems.append(f"position_embedding_type={config.position_embedding_type!r} (need 'rotary')")
        if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
            problems.append("decoder / cross-attention configs")
        if getattr(config, "hidden_act", "gelu") != "gelu":
            problems.append(f"hidden_act={config.hidden_act!r} (need 'gelu')")
        if config.hidden_size % config.num_attention_heads:
            problems.append("hidden_size is not a multiple of num_attention_heads")
        if problems:
            raise ValueError("the fused ONNX graph supports ESM-2 configs only: " + "; ".join(problems))
        return cls(
            num_layers=int(config.num_hidden_layers),
            hidden_size=int(config.hidden_size),
            num_heads=int(config.num_attention_heads),
            layer_norm_eps=float(config.layer_norm_eps),
            token_dropout=bool(config.token_dropout),
            emb_layer_norm_before=bool(getattr(config, "emb_layer_norm_before", False)),
            mask_token_id=int(config.mask_token_id),
        )


def _numpy(tensor) -> np.ndarray:
    return tensor.detach().to("cpu").float().numpy()


def _inv_freq(esm) -> np.ndarray:
    """The stored rotary `inv_freq` (model-level in recent transformers, per layer in older ones): ESM-2 was trained
    in fp16, and recomputing it gives subtly different rotations (HF convert_esm.py)."""
    rotary = getattr(esm, "rotary_embeddings", None) or getattr(
        esm.encoder.layer[0].attention.self, "rotary_embeddings", None
    )
    if rotary is None or not hasattr(rotary, "inv_freq"):
        raise ValueError("cannot find the rotary inv_freq buffer in the ESM model")
    return _numpy(rotary.inv_freq)


def rotary_tables(inv_freq: np.ndarray, positions: int) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin caches [positions, head_dim/2], computed as transformers does (fp32 position * inv_freq)."""
    import torch

    angles = torch.arange(positions, dtype=torch.float32)[:, None] * torch.from_numpy(inv_freq.astype(np.float32))
    return angles.cos().numpy(), angles.sin().numpy()


def embedding_layer_norm(g: GraphBuilder, esm, shape: Esm2Shape, hidden: str) -> str:
    """The embeddings' LayerNorm, in the checkpoints that have one (`emb_layer_norm_before`)."""
    if not shape.emb_layer_norm_before:
        return hidden
    norm = esm.embeddings.layer_norm
    gamma = g.weight("embeddings.layer_norm.weight", _numpy(norm.weight))
    beta = g.weight("embeddings.layer_norm.bias", _numpy(norm.bias))
    return g.op("LayerNormalization", [hidden, gamma, beta], "embeddings.layer_norm", epsilon=shape.layer_norm_eps)


def _embeddings(g: GraphBuilder, esm, shape: Esm2Shape, mask_float: str) -> str:
    """EsmEmbeddings.forward: token lookup, token-dropout rescaling, optional LayerNorm, padding rows zeroed."""
    ids = INPUT_NAMES[0]
    word = g.weight("embeddings.word_embeddings.weight", _numpy(esm.embeddings.word_embeddings.weight))
    hidden = g.op("Gather", [word, ids], "embeddings.gather", axis=0)
    if shape.token_dropout:
        is_mask = g.op("Equal", [ids, g.const(shape.mask_token_id, np.int64)], "is_mask_token")
        hidden = g.op("Where", [g.unsqueeze(is_mask, [-1], "is_mask_3d"), g.const(0.0), hidden], "embeddings.unmask")
        masked = g.op("Cast", [is_mask], "mask_tokens_float", to=TensorProto.FLOAT)
        masked_count = g.op("ReduceSum", [masked, g.const([-1], np.int64)], "mask_token_count", keepdims=1)
        lengths = g.op("ReduceSum", [mask_float, g.const([-1], np.int64)], "lengths", keepdims=1)
        keep = g.op("Sub", [g.const(1.0), g.op("Div", [masked_count, lengths], "mask_ratio")], "keep_ratio")
        hidden = g.op("Mul", [hidden, g.const(1.0 - 0.15 * 0.8)], "embeddings.scale_train")
        hidden = g.op("Div", [hidden, g.unsqueeze(keep, [-1], "keep_ratio_3d")], "embeddings.scale_observed")
    hidden = embedding_layer_norm(g, esm, shape, hidden)
    return g.op("Mul", [hidden, g.unsqueeze(mask_float, [-1], "mask_3d")], "embeddings.zero_padding")


def _linear(g: GraphBuilder, x: str, weight: np.ndarray, bias: np.ndarray, name: str) -> str:
    """x @ weight.T + bias (weight as nn.Linear stores it: [out, in])."""
    product = g.op("MatMul", [x, g.weight(f"{name}.weight_t", weight.T.copy())], f"{name}.matmul")
    return g.op("Add", [product, g.weight(f"{name}.bias", bias)], f"{name}.add")


def _add_and_norm(
    g: GraphBuilder, product: str, bias, residual: str, norm, name: str, shape: Esm2Shape, plain: bool
) -> tuple[str, str]:
    """(LayerNorm(product + bias + residual), product + bias + residual): as one SkipLayerNormalization, or with
    `plain` as Add, Add and LayerNormalization (CPU plans: since ONNX Runtime 1.30 its CPU SkipLayerNormalization
    is a scalar loop ~4x slower than the two Adds and its vectorized LayerNormalization; docs/design.md)."""
    gamma, beta = g.weight(f"{name}.weight", _numpy(norm.weight)), g.weight(f"{name}.bias", _numpy(norm.bias))
    dense_bias = g.weight(f"{name}.dense_bias", bias)
    if plain:
        summed = g.op("Add", [g.op("Add", [product, dense_bias], f"{name}.dense_add"), residual], f"{name}.residual")
        return g.op("LayerNormalization", [summed, gamma, beta], name, epsilon=shape.layer_norm_eps), summed
    normed, summed = f"{name}.normed", f"{name}.residual"
    g.nodes.append(
        helper.make_node(
            "SkipLayerNormalization",
            [product, residual, gamma, beta, dense_bias],
            [normed, "", "", summed],  # output 3 is the pre-LayerNorm residual stream
            name=g.fresh(name),
            domain=MS_DOMAIN,
            epsilon=shape.layer_norm_eps,
        )
    )
    for output in (normed, summed):
        g.value_info.append(
            helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch", "sequence", shape.hidden_size])
        )
    return normed, summed


def _pool(g: GraphBuilder, hidden: str, mask_float: str) -> None:
    """The serving contract's outputs: per-residue rows zeroed at padding, and their mean over residues only."""
    ids, mask = INPUT_NAMES
    g.op("Mul", [hidden, g.unsqueeze(mask_float, [-1], "mask_3d_out")], OUTPUT_NAMES[1])
    is_token = g.op("Not", [g.op("Equal", [mask, g.const(0, np.int64)], "is_padding")], "is_token")
    not_cls = g.op("Not", [g.op("Equal", [ids, g.const(CLS_ID, np.int64)], "is_cls")], "not_cls")
    not_eos = g.op("Not", [g.op("Equal", [ids, g.const(EOS_ID, np.int64)], "is_eos")], "not_eos")
    is_residue = g.op("And", [g.op("And", [is_token, not_cls], "token_not_cls"), not_eos], "is_residue")
    weights = g.unsqueeze(g.op("Cast", [is_residue], "residue_weights_2d", to=TensorProto.FLOAT), [-1], "weights")
    weighted = g.op("Mul", [hidden, weights], "pool_weighted")
    summed = g.op("ReduceSum", [weighted, g.const([1], np.int64)], "pool_sum", keepdims=0)
    count = g.op("ReduceSum", [weights, g.const([1], np.int64)], "pool_count_raw", keepdims=0)
    g.op("Div", [summed, g.op("Max", [count, g.const(1.0)], "pool_count")], OUTPUT_NAMES[0])


def rotary_caches(g: GraphBuilder, esm, max_positions: int) -> tuple[str, str]:
    """The cos/sin cache initializers of `com.microsoft::RotaryEmbedding`."""
    cos, sin = rotary_tables(_inv_freq(esm), max_positions)
    return g.weight("rotary.cos_cache", cos), g.weight("rotary.sin_cache", sin)


def encoder(
    g: GraphBuilder,
    esm,
    shape: Esm2Shape,
    residual: str,
    position_ids: str,
    attend: Attend,
    max_positions: int,
    plain_layer_norm: bool = False,
) -> str:
    """The transformer layers and the final LayerNorm on `residual` [batch, sequence, hidden] (the embeddings);
    `attend(g, query, key, value, name)` returns the attention context (after rotary, before the output dense);
    `plain_layer_norm`: see `_add_and_norm`."""
    hidden_size, heads = shape.hidden_size, shape.num_heads
    cos_cache, sin_cache = rotary_caches(g, esm, max_positions)
    layers = list(esm.encoder.layer)
    first_norm = layers[0].attention.LayerNorm
    x = g.op(
        "LayerNormalization",
        [
            residual,
            g.weight("layer0.norm.weight", _numpy(first_norm.weight)),
            g.weight("layer0.norm.bias", _numpy(first_norm.bias)),
        ],
        "layer0.attention.layer_norm",
        epsilon=shape.layer_norm_eps,
    )
    for index, layer in enumerate(layers):
        name = f"layer{index}"
        attention = layer.attention.self
        projections = (attention.query, attention.key, attention.value)
        weight = np.concatenate([_numpy(p.weight) for p in projections], axis=0)
        bias = np.concatenate([_numpy(p.bias) for p in projections], axis=0)
        qkv = _linear(g, x, weight, bias, f"{name}.qkv")
        split = g.const([hidden_size] * 3, np.int64)
        query, key, value = g.op("Split", [qkv, split], f"{name}.split", outputs=3, axis=-1)
        rotary = {"interleaved": 0, "num_heads": heads}
        query = g.contrib(
            "RotaryEmbedding", [query, position_ids, cos_cache, sin_cache], f"{name}.rotary_q", hidden_size, **rotary
        )
        key = g.contrib(
            "RotaryEmbedding", [key, position_ids, cos_cache, sin_cache], f"{name}.rotary_k", hidden_size, **rotary
        )
        context = attend(g, query, key, value, name)
        dense = layer.attention.output.dense
        product = g.op(
            "MatMul", [context, g.weight(f"{name}.output.weight_t", _numpy(dense.weight).T.copy())], f"{name}.output"
        )
        x, residual = _add_and_norm(
            g, product, _numpy(dense.bias), residual, layer.LayerNorm, f"{name}.ffn_norm", shape, plain_layer_norm
        )
        x = _linear(
            g, x, _numpy(layer.intermediate.dense.weight), _numpy(layer.intermediate.dense.bias), f"{name}.ffn_in"
        )
        erf = g.op("Erf", [g.op("Div", [x, g.const(math.sqrt(2.0))], f"{name}.gelu_div")], f"{name}.gelu_erf")
        gated = g.op("Mul", [x, g.op("Add", [erf, g.const(1.0)], f"{name}.gelu_add")], f"{name}.gelu_mul")
        x = g.op("Mul", [gated, g.const(0.5)], f"{name}.gelu")
        dense = layer.output.dense
        product = g.op(
            "MatMul", [x, g.weight(f"{name}.ffn_out.weight_t", _numpy(dense.weight).T.copy())], f"{name}.ffn_out"
        )
        last = index + 1 == len(layers)
        norm = esm.encoder.emb_layer_norm_after if last else layers[index + 1].attention.LayerNorm
        norm_name = "final_norm" if last else f"layer{index + 1}.attention_norm"
        x, residual = _add_and_norm(g, product, _numpy(dense.bias), residual, norm, norm_name, shape, plain_layer_norm)
    return x


def save_model(g: GraphBuilder, model: onnx.ModelProto, path: Path, data_location: str | None) -> Path:
    """Checks and writes `model`; weights over EXTERNAL_DATA_THRESHOLD bytes go to `data_location` beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if sum(len(array.raw_data) for array in g.initializers) > EXTERNAL_DATA_THRESHOLD:
        data_file = path.with_name(data_location or path.name + ".data")
        data_file.unlink(missing_ok=True)
        onnx.save_model(model, str(path), save_as_external_data=True, location=data_file.name, size_threshold=1024)
        onnx.checker.check_model(str(path))
    else:
        onnx.checker.check_model(model)
        onnx.save_model(model, str(path))
    return path


def make_model(g: GraphBuilder, name: str, inputs: list, outputs: list) -> onnx.ModelProto:
    graph = helper.make_graph(g.nodes, name, inputs, outputs, g.initializers, value_info=g.value_info)
    opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=IR_VERSION, producer_name="tritonfleet")


def build_esm2_onnx(
    module,
    path: Path,
    max_positions: int = MAX_POSITIONS,
    data_location: str | None = None,
    attention: AttentionLayout = "padded",
) -> Path:
    """Writes the ESM-2 embedder (docs/design.md's contract) with fused attention to `path`.

    Args:
        module: the eager `Esm2Embedder` (with `.esm`) or a `transformers.EsmModel`, fp32 or fp16 (weights are
            written as fp32).
        path: the .onnx file.
        max_positions: the longest sequence (tokens) the graph accepts.
        data_location: file name, beside the model, for weights over ~1.8 GB (default `<name>.data`); ONNX Runtime
            loads it from the model's directory.
        attention: "padded" (GPU plans) or "per_sequence" (CPU plans), see `export.esm2.packed.AttentionLayout`;
            the outputs are the same within float rounding.
    """
    esm = getattr(module, "esm", module)
    shape = Esm2Shape.from_config(esm.config)
    hidden_size, heads = shape.hidden_size, shape.num_heads
    g = GraphBuilder()
    ids, mask = INPUT_NAMES
    mask_float = g.op("Cast", [mask], "mask_float", to=TensorProto.FLOAT)
    residual = _embeddings(g, esm, shape, mask_float)
    ids_shape = g.op("Shape", [ids], "ids_shape")
    length = g.op("Gather", [ids_shape, g.const(1, np.int64)], "length", axis=0)
    positions = g.op("Range", [g.const(0, np.int64), length, g.const(1, np.int64)], "positions")
    position_ids = g.op("Expand", [g.unsqueeze(positions, [0], "positions_2d"), ids_shape], "position_ids")
    scale = float(shape.head_dim) ** -0.5
    if attention == "per_sequence":
        attend = per_sequence_attend(g, mask, ids_shape, length, heads, scale, hidden_size)
    else:
        key_padding_mask = g.op("Cast", [mask], "key_padding_mask", to=TensorProto.INT32)

        def attend(g: GraphBuilder, query: str, key: str, value: str, name: str) -> str:
            inputs = [query, key, value, "", key_padding_mask]
            return g.contrib(
                "MultiHeadAttention", inputs, f"{name}.attention", hidden_size, num_heads=heads, scale=scale
            )

    x = encoder(g, esm, shape, residual, position_ids, attend, max_positions, attention == "per_sequence")
    _pool(g, x, mask_float)
    model = make_model(
        g,
        f"esm2_{shape.num_layers}_layers_{hidden_size}_fused",
        [helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "sequence"]) for name in INPUT_NAMES],
        [
            helper.make_tensor_value_info(OUTPUT_NAMES[0], TensorProto.FLOAT, ["batch", hidden_size]),
            helper.make_tensor_value_info(OUTPUT_NAMES[1], TensorProto.FLOAT, ["batch", "sequence", hidden_size]),
        ],
    )
    return save_model(g, model, path, data_location)


def builder_for_kind(kind: str) -> Callable[..., Path]:
    """`build_esm2_onnx` with the attention layout of a plan whose instances are of `kind` (KIND_CPU, KIND_GPU)."""
    return partial(build_esm2_onnx, attention=attention_for_kind(kind))

"""ESM-2 EMBEDDING for packed (ragged) batches: the tokens of several sequences back to back, no padding.

Triton's ragged batching (`allow_ragged_batch` on INPUT_IDS, batch input `BATCH_ACCUMULATED_ELEMENT_COUNT`) hands
the model every request's tokens as one flat [tokens] tensor plus where each request ends (SEQUENCE_ENDS
[sequences]); each request is one sequence (`<cls> r1..rL <eos>`, no padding). The graph runs every dense op
(QKV, output projection, MLP, LayerNorms) on the packed tokens only; attention is per sequence, so no sequence
sees another, in one of two forms that run, equal, on CPU and CUDA (ONNX Runtime's `PackedMultiHeadAttention`,
cu_seqlens style, has CUDA kernels only):
- "padded" (GPU plans): queries, keys and values gathered into [sequences, longest, hidden] for one
  MultiHeadAttention with a key padding mask, then gathered back: few large kernels;
- "per_sequence" (CPU): an ONNX Loop over the sequences, one MultiHeadAttention on each sequence's own tokens: no
  attention work on padding (sum of L^2, not sequences x longest^2), which is what the CPU pays for.

Triton has no ragged outputs: the packed model returns EMBEDDING [sequences, hidden] alone; RESIDUE_EMBEDDINGS
stays on the padded network.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

from tritonfleet.contract.esm2_tokens import CLS_ID, EOS_ID, encode_batch

if TYPE_CHECKING:
    from tritonfleet.export.esm2.graph_builder import GraphBuilder

# The longest sequence (tokens) the graph accepts: export.esm2.onnx_graph.MAX_POSITIONS (that module needs onnx;
# the configs here must not).
MAX_POSITIONS = 4096

PACKED_MODEL_SUFFIX = "_packed"
TOKENS_INPUT = "INPUT_IDS"
# Batch input Triton builds (or our Python-based backends, deploy/local/backends/batching.py): accumulated token
# counts, one per request. INT32 is the type every Triton release accepts for batch inputs.
SEQUENCE_ENDS = "SEQUENCE_ENDS"
EMBEDDING = "EMBEDDING"
# Config parameter naming the packed graph's attention form (`attention_for`).
ATTENTION_PARAMETER = "packed_attention"
# How a graph lays out attention, the padded network and the packed one alike (`attention_for_kind` picks it;
# export/esm2/onnx_attention.py says what each is and why).
AttentionLayout = Literal["padded", "per_sequence"]


@dataclass(frozen=True)
class PackedBatch:
    """Sequences packed back to back: tokens [total] int64 and each sequence's end offset [sequences] int32."""

    tokens: np.ndarray
    ends: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.ends, prepend=0)

    def feeds(self) -> dict[str, np.ndarray]:
        return {TOKENS_INPUT: self.tokens, SEQUENCE_ENDS: self.ends}


def pack_token_rows(rows: Sequence[np.ndarray]) -> PackedBatch:
    """Packs unpadded token rows (each 1-D, or [1, length]) as Triton's ragged batching does."""
    flat = [np.asarray(row, dtype=np.int64).reshape(-1) for row in rows]
    if not flat or any(row.size == 0 for row in flat):
        raise ValueError("a packed batch needs at least one sequence and no empty sequence")
    ends = np.cumsum([row.size for row in flat]).astype(np.int32)
    return PackedBatch(np.concatenate(flat), ends)


def pack_sequences(sequences: Sequence[str]) -> PackedBatch:
    """Protein sequences as one packed batch (`<cls> residues <eos>` each, no padding)."""
    return pack_token_rows([encode_batch([sequence], buckets=None)[0][0] for sequence in sequences])


@dataclass(frozen=True)
class _Layout:
    """Graph tensors describing the packed layout against the padded one ([sequences, longest])."""

    gather_index: str  # [sequences, longest] int64: the packed token at each padded slot (0 where padding)
    valid_float: str  # [sequences, longest] float: 1 at real tokens
    key_padding_mask: str  # [sequences, longest] int32, for MultiHeadAttention
    position_ids: str  # [1, tokens] int64: each token's position in its own sequence
    segment: str  # [tokens] int64: each token's sequence
    lengths_float: str  # [sequences] float
    unpack_index: str  # [tokens] int64: each token's slot in the flattened padded layout
    starts: str  # [sequences] int64: each sequence's first token
    ends: str  # [sequences] int64: one past each sequence's last token
    count: str  # int64 scalar: how many sequences


def _layout(g: GraphBuilder, tokens: str, ends: str) -> _Layout:
    from onnx import TensorProto

    i64 = np.int64
    ends64 = g.op("Cast", [ends], "ends64", to=TensorProto.INT64)
    but_last = g.op("Slice", [ends64, g.const([0], i64), g.const([-1], i64)], "ends_but_last")
    starts = g.op("Concat", [g.const([0], i64), but_last], "starts", axis=0)
    lengths = g.op("Sub", [ends64, starts], "lengths")
    longest = g.op("ReduceMax", [lengths, g.const([0], i64)], "longest", keepdims=0)
    steps_row = g.unsqueeze(g.op("Range", [g.const(0, i64), longest, g.const(1, i64)], "steps"), [0], "steps_row")
    valid = g.op("Less", [steps_row, g.unsqueeze(lengths, [1], "lengths_column")], "valid")
    padded_index = g.op("Add", [g.unsqueeze(starts, [1], "starts_column"), steps_row], "padded_index")
    total = g.op("Squeeze", [g.op("Shape", [tokens], "tokens_shape")], "total_tokens")
    token_index = g.op("Range", [g.const(0, i64), total, g.const(1, i64)], "token_index")
    # segment of token t = how many sequences end at or before t ([tokens, sequences] comparisons: small)
    ended = g.op("LessOrEqual", [g.unsqueeze(ends64, [0], "ends_row"), g.unsqueeze(token_index, [1], "t_col")], "ended")
    segment = g.op(
        "ReduceSum",
        [g.op("Cast", [ended], "ended_int", to=TensorProto.INT64), g.const([1], i64)],
        "segment",
        keepdims=0,
    )
    position = g.op("Sub", [token_index, g.op("Gather", [starts, segment], "token_start", axis=0)], "position")
    unpack_index = g.op("Add", [g.op("Mul", [segment, longest], "segment_offset"), position], "unpack_index")
    return _Layout(
        gather_index=g.op("Where", [valid, padded_index, g.const(0, i64)], "gather_index"),
        valid_float=g.op("Cast", [valid], "valid_float", to=TensorProto.FLOAT),
        key_padding_mask=g.op("Cast", [valid], "key_padding_mask", to=TensorProto.INT32),
        position_ids=g.unsqueeze(position, [0], "position_ids"),
        segment=segment,
        lengths_float=g.op("Cast", [lengths], "lengths_float", to=TensorProto.FLOAT),
        unpack_index=unpack_index,
        starts=starts,
        ends=ends64,
        count=g.op("Squeeze", [g.op("Shape", [ends64], "ends_shape")], "sequence_count"),
    )


def _segment_sum(g: GraphBuilder, per_token: str, layout: _Layout, name: str, rows: bool = False) -> str:
    """Per-sequence sums of a per-token [tokens] (or [tokens, D] with `rows`) tensor: padded gather, mask, sum."""
    padded = g.op("Gather", [per_token, layout.gather_index], f"{name}.padded", axis=0)
    mask = g.unsqueeze(layout.valid_float, [-1], f"{name}.mask_3d") if rows else layout.valid_float
    masked = g.op("Mul", [padded, mask], f"{name}.masked")
    return g.op("ReduceSum", [masked, g.const([1], np.int64)], f"{name}.sum", keepdims=0)


def build_packed_esm2_onnx(
    module,
    path: Path,
    max_positions: int = MAX_POSITIONS,
    data_location: str | None = None,
    attention: AttentionLayout = "padded",
) -> Path:
    """Writes the packed EMBEDDING graph: INPUT_IDS [tokens] int64 + SEQUENCE_ENDS [sequences] int32 ->
    EMBEDDING [sequences, hidden] float (each row equal to the sequence embedded alone by the padded graph).

    `attention`: "padded" gathers the sequences into [sequences, longest] for one MultiHeadAttention (few large
    kernels: GPUs); "per_sequence" loops over the sequences (no padded attention work: CPUs)."""
    from onnx import TensorProto, helper

    from tritonfleet.export.esm2.graph_builder import GraphBuilder
    from tritonfleet.export.esm2.onnx_attention import SequenceSpans, per_sequence_attention
    from tritonfleet.export.esm2.onnx_graph import (
        Esm2Shape,
        _numpy,
        embedding_layer_norm,
        encoder,
        make_model,
        save_model,
    )

    esm = getattr(module, "esm", module)
    shape = Esm2Shape.from_config(esm.config)
    hidden_size, heads = shape.hidden_size, shape.num_heads
    g = GraphBuilder()
    layout = _layout(g, TOKENS_INPUT, SEQUENCE_ENDS)

    word = g.weight("embeddings.word_embeddings.weight", _numpy(esm.embeddings.word_embeddings.weight))
    hidden = g.op("Gather", [word, TOKENS_INPUT], "embeddings.gather", axis=0)  # [tokens, hidden]
    if shape.token_dropout:
        is_mask = g.op("Equal", [TOKENS_INPUT, g.const(shape.mask_token_id, np.int64)], "is_mask_token")
        hidden = g.op("Where", [g.unsqueeze(is_mask, [-1], "is_mask_2d"), g.const(0.0), hidden], "embeddings.unmask")
        masked = g.op("Cast", [is_mask], "mask_tokens_float", to=TensorProto.FLOAT)
        masked_count = _segment_sum(g, masked, layout, "mask_count")
        keep = g.op(
            "Sub", [g.const(1.0), g.op("Div", [masked_count, layout.lengths_float], "mask_ratio")], "keep_ratio"
        )
        keep_per_token = g.op("Gather", [keep, layout.segment], "keep_per_token", axis=0)
        hidden = g.op("Mul", [hidden, g.const(1.0 - 0.15 * 0.8)], "embeddings.scale_train")
        hidden = g.op("Div", [hidden, g.unsqueeze(keep_per_token, [-1], "keep_2d")], "embeddings.scale_observed")
    hidden = embedding_layer_norm(g, esm, shape, hidden)
    residual = g.unsqueeze(hidden, [0], "embeddings.batch_of_one")  # [1, tokens, hidden]: one "row" of tokens
    flat_shape = g.const([-1, hidden_size], np.int64)

    def attend(g: GraphBuilder, query: str, key: str, value: str, name: str) -> str:
        if attention == "per_sequence":
            rows = tuple(
                g.op("Reshape", [t, flat_shape], f"{name}.{p}_rows") for t, p in zip((query, key, value), "qkv")
            )
            spans = SequenceSpans(layout.starts, layout.ends, layout.count)
            packed = per_sequence_attention(g, spans, rows, name, num_heads=heads, scale=float(shape.head_dim) ** -0.5)
            return g.unsqueeze(packed, [0], f"{name}.context")

        def padded(tensor: str, part: str) -> str:
            rows = g.op("Reshape", [tensor, flat_shape], f"{name}.{part}_rows")
            return g.op("Gather", [rows, layout.gather_index], f"{name}.{part}_padded", axis=0)

        context = g.contrib(
            "MultiHeadAttention",
            [padded(query, "q"), padded(key, "k"), padded(value, "v"), "", layout.key_padding_mask],
            f"{name}.attention",
            hidden_size,
            num_heads=heads,
            scale=float(shape.head_dim) ** -0.5,
        )
        rows = g.op("Reshape", [context, flat_shape], f"{name}.context_rows")
        packed = g.op("Gather", [rows, layout.unpack_index], f"{name}.context_packed", axis=0)
        return g.unsqueeze(packed, [0], f"{name}.context")

    x = encoder(g, esm, shape, residual, layout.position_ids, attend, max_positions, attention == "per_sequence")
    final = g.op("Reshape", [x, flat_shape], "final_rows")  # [tokens, hidden]
    not_cls = g.op("Not", [g.op("Equal", [TOKENS_INPUT, g.const(CLS_ID, np.int64)], "is_cls")], "not_cls")
    not_eos = g.op("Not", [g.op("Equal", [TOKENS_INPUT, g.const(EOS_ID, np.int64)], "is_eos")], "not_eos")
    weights = g.op("Cast", [g.op("And", [not_cls, not_eos], "is_residue")], "residue_weights", to=TensorProto.FLOAT)
    weighted = g.op("Mul", [final, g.unsqueeze(weights, [-1], "weights_2d")], "pool_weighted")
    summed = _segment_sum(g, weighted, layout, "pool", rows=True)
    count = _segment_sum(g, weights, layout, "pool_count")
    count_column = g.unsqueeze(g.op("Max", [count, g.const(1.0)], "pool_count_min1"), [-1], "pool_count_2d")
    g.op("Div", [summed, count_column], EMBEDDING)

    # The contrib outputs' value infos say [batch, sequence, hidden] (the padded graph's axes); here those axes mean
    # [1, tokens] in some places and [sequences, longest] in others, and ONNX Runtime 1.19 plans buffers by them.
    g.value_info = [helper.make_tensor_value_info(v.name, v.type.tensor_type.elem_type, None) for v in g.value_info]
    model = make_model(
        g,
        f"esm2_{shape.num_layers}_layers_{hidden_size}_packed",
        [
            helper.make_tensor_value_info(TOKENS_INPUT, TensorProto.INT64, ["tokens"]),
            helper.make_tensor_value_info(SEQUENCE_ENDS, TensorProto.INT32, ["sequences"]),
        ],
        [helper.make_tensor_value_info(EMBEDDING, TensorProto.FLOAT, ["sequences", hidden_size])],
    )
    return save_model(g, model, path, data_location)


def packed_model_name(network: str) -> str:
    """`esm2_onnx` -> `esm2_onnx_packed`."""
    return network + PACKED_MODEL_SUFFIX


def packed_config(network: mc.ModelConfig) -> mc.ModelConfig:
    """The packed model's config from the padded ONNX network's: same instances, batching and parameters; INPUT_IDS
    [-1] ragged plus the SEQUENCE_ENDS batch input in, EMBEDDING alone out."""
    config = mc.ModelConfig()
    config.CopyFrom(network)
    config.name = packed_model_name(network.name)
    kept_inputs = [entry for entry in config.input if entry.name == TOKENS_INPUT]
    kept_outputs = [entry for entry in config.output if entry.name == EMBEDDING]
    del config.input[:], config.output[:]
    config.input.extend(kept_inputs)
    config.output.extend(kept_outputs)
    config.parameters["serves"].string_value = (
        f"EMBEDDING of packed (ragged) batches: one unpadded sequence per request, packed by Triton ({network.name} "
        "serves RESIDUE_EMBEDDINGS)"
    )
    attention = attention_for(config)
    config.parameters["onnx_graph"].string_value = f"fused attention, packed tokens, {attention} attention"
    config.parameters[ATTENTION_PARAMETER].string_value = attention
    config.input[0].allow_ragged_batch = True
    config.batch_input.add(
        kind=mc.BatchInput.BATCH_ACCUMULATED_ELEMENT_COUNT,
        target_name=[SEQUENCE_ENDS],
        data_type=mc.TYPE_INT32,
        source_input=[TOKENS_INPUT],
    )
    del config.model_warmup[:]  # a ragged warmup needs per-request shapes that Triton's warmup cannot give
    return config


def attention_for(config: mc.ModelConfig) -> AttentionLayout:
    """The attention form of a network served as `config` says (`attention_for_kind`)."""
    from tritonfleet.contract.serving_plan import ServingPlan

    instances = ServingPlan.from_config(config).instances
    return attention_for_kind(instances.kind if instances is not None else "KIND_CPU")


def attention_for_kind(kind: str) -> AttentionLayout:
    """GPU instances: "padded" (few large kernels); CPU: "per_sequence" (no attention work on padding, ONNX Runtime's
    faster unmasked CPU kernel; loadtest/packed_study.py, docs/design.md)."""
    return "padded" if kind == "KIND_GPU" else "per_sequence"


def check_packed(packed: Path, padded: Path, proteins: Sequence[Sequence[str]], device: str = "cpu") -> float:
    """Max abs difference between the packed model's EMBEDDING of each batch of proteins and the padded network's
    of each protein alone (run unpadded). The export refuses a packed model above INVARIANCE_TOLERANCE."""
    from tritonfleet.contract.engines import open_engine

    worst = 0.0
    with (
        open_engine(packed, "onnx", device=device) as packed_engine,
        open_engine(padded, "onnx", device=device) as padded_engine,
    ):
        for batch in proteins:
            (embedding,) = packed_engine.run(pack_sequences(batch).feeds(), [EMBEDDING]).values()
            for row, protein in enumerate(batch):
                ids, mask = encode_batch([protein], buckets=None)
                alone = padded_engine.run({"INPUT_IDS": ids, "ATTENTION_MASK": mask}, [EMBEDDING])[EMBEDDING]
                worst = max(worst, float(np.max(np.abs(embedding[row] - alone[0]))))
    return worst


def wants_packed_network(recipe, options) -> bool:
    """Whether the repository gets the packed model: with the fused ONNX graph, on GPU plans (where batches are
    large) unless `options.packed` says otherwise. CPU plans run about one sequence per execution: nothing to pack."""
    if "onnx" not in options.formats or not recipe.fused_onnx:
        return False
    return options.devices.kind == "KIND_GPU" if options.packed is None else bool(options.packed)


def export_packed(module, version_dir: Path, padded: Path, precision: str, proteins: Sequence[Sequence[str]]) -> float:
    """Writes `<version_dir>/model.onnx` (int8: per-row quantized like the padded network; attention as the model's
    config, already written, says) and checks it against the padded network's `padded` file; returns the worst
    difference. Raises InvarianceGateError above 1e-5."""
    from tritonfleet.contract.model_config import read_config, string_parameters
    from tritonfleet.export.parity import INVARIANCE_TOLERANCE, InvarianceGateError

    attention = string_parameters(read_config(version_dir.parent)).get(ATTENTION_PARAMETER, "padded")

    path = version_dir / "model.onnx"
    data_location = path.name + ".data"
    if precision == "int8":
        from tritonfleet.export.quantize import quantize_onnx_int8

        fp32 = path.with_name(path.name + ".fp32")
        try:
            build_packed_esm2_onnx(module, fp32, data_location=fp32.name + ".data", attention=attention)
            quantize_onnx_int8(fp32, path, data_location=data_location)
        finally:
            fp32.unlink(missing_ok=True)
            fp32.with_name(fp32.name + ".data").unlink(missing_ok=True)
    else:
        build_packed_esm2_onnx(module, path, data_location=data_location, attention=attention)
    worst = check_packed(path, padded, proteins)
    if worst > INVARIANCE_TOLERANCE:
        raise InvarianceGateError(
            f"{precision} packed ONNX: EMBEDDING of packed batches differs from each sequence alone by {worst:.2e} "
            f"(> {INVARIANCE_TOLERANCE:.0e})"
        )
    return worst

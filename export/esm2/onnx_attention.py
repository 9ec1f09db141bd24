"""How the ESM-2 graph lays out attention (`export.esm2.packed.AttentionLayout`): "padded", one MultiHeadAttention
over the whole batch with a key padding mask (GPU plans, few large kernels; written in onnx_graph.py and packed.py),
or "per_sequence", MultiHeadAttention without a mask on each sequence's own tokens in an ONNX Loop (CPU plans).

Why per sequence on CPUs: no attention work on padding, and ONNX Runtime's unmasked CPU kernel is ~20 % faster than
the masked one (ESM-2 8M, 360 tokens: 2.7 vs 3.3 ms a layer, ORT 1.19.2 to 1.32). Every sequence runs the same
kernel on the same tokens alone or in any batch, so its attention is bit-equal either way: int8's per-row activation
codes never flip (the masked and unmasked kernels differ by ~1e-6, which int8 turns into ~1e-2).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from tritonfleet.export.esm2.graph_builder import MS_DOMAIN, GraphBuilder

Attend = Callable[[GraphBuilder, str, str, str, str], str]


@dataclass(frozen=True)
class SequenceSpans:
    """Where each sequence's tokens lie in a [tokens, hidden] view: starts and ends [sequences] int64, count (int64
    scalar: how many sequences)."""

    starts: str
    ends: str
    count: str


def prefix_initializers(g: GraphBuilder, prefix: str) -> None:
    renamed = {tensor.name: prefix + tensor.name for tensor in g.initializers}
    for tensor in g.initializers:
        tensor.name = renamed[tensor.name]
    for node in g.nodes:
        node.input[:] = [renamed.get(value, value) for value in node.input]


def per_sequence_attention(
    g: GraphBuilder, spans: SequenceSpans, rows: tuple[str, str, str], name: str, pad_to: str | None = None, **attention
) -> str:
    """Attention of each sequence on its own tokens, in an ONNX Loop over the sequences: `rows` are query, key and
    value [tokens, hidden]; sequence i owns rows [starts[i], ends[i]). Returns the contexts [1, sum of lengths,
    hidden] back to back, or with `pad_to` (an int64 [1] length) each padded with zero rows to it: [sequences *
    pad_to, hidden]."""
    body = GraphBuilder()
    step, condition = f"{name}.i", f"{name}.cond_in"
    collected_in, collected_out = f"{name}.collected_in", f"{name}.collected_out"
    bound = [body.unsqueeze(body.op("Gather", [edge, step], f"{name}.{what}", axis=0), [0], f"{name}.{what}_1d")
             for what, edge in (("start", spans.starts), ("end", spans.ends))]  # fmt: skip
    axis = body.const([0], np.int64)
    sliced = [
        body.unsqueeze(body.op("Slice", [rows[i], *bound, axis], f"{name}.{part}_own"), [0], f"{name}.{part}_3d")
        for i, part in enumerate(("q", "k", "v"))
    ]
    context = body.op("MultiHeadAttention", sliced, f"{name}.attention", domain=MS_DOMAIN, **attention)
    flat = body.op("Squeeze", [context, axis], f"{name}.context_own")
    if pad_to is not None:
        missing = body.op("Sub", [pad_to, body.op("Sub", [bound[1], bound[0]], f"{name}.length")], f"{name}.missing")
        zero = body.const([0], np.int64)
        pads = body.op("Concat", [zero, zero, missing, zero], f"{name}.pads", axis=0)
        flat = body.op("Pad", [flat, pads], f"{name}.context_padded")
    body.nodes.append(helper.make_node("SequenceInsert", [collected_in, flat], [collected_out], name=f"{name}.insert"))
    body.nodes.append(helper.make_node("Identity", [condition], [f"{name}.cond_out"], name=f"{name}.cond"))
    prefix_initializers(body, f"{name}.")  # names are unique across the outer graph and its subgraphs
    sequence_type = helper.make_tensor_sequence_value_info
    body_graph = helper.make_graph(
        body.nodes,
        f"{name}.per_sequence",
        [
            helper.make_tensor_value_info(step, TensorProto.INT64, []),
            helper.make_tensor_value_info(condition, TensorProto.BOOL, []),
            sequence_type(collected_in, TensorProto.FLOAT, None),
        ],
        [
            helper.make_tensor_value_info(f"{name}.cond_out", TensorProto.BOOL, []),
            sequence_type(collected_out, TensorProto.FLOAT, None),
        ],
        body.initializers,
    )
    empty = g.op("SequenceEmpty", [], f"{name}.empty", dtype=TensorProto.FLOAT)
    collected = g.op("Loop", [spans.count, "", empty], f"{name}.loop", body=body_graph)
    return g.op("ConcatFromSequence", [collected], f"{name}.contexts", axis=0)


def branch_graph(graph: GraphBuilder, name: str) -> onnx.GraphProto:
    """A subgraph (If branch) whose one output is its last node's."""
    prefix_initializers(graph, f"{name}.")
    output = graph.nodes[-1].output[0]
    outputs = [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)]
    return helper.make_graph(graph.nodes, name, [], outputs, graph.initializers)


def per_sequence_attend(
    g: GraphBuilder, mask: str, ids_shape: str, length: str, heads: int, scale: float, hidden_size: int
) -> Attend:
    """`Attend` for the padded batch [sequences, longest] with per-sequence attention: sequence i's tokens are rows
    i * longest .. i * longest + its length of the rows view [sequences * longest, hidden] (right padding). The CPU
    plans' usual batch, one unpadded sequence, skips the Loop (~0.15 ms a layer) through an If: the same kernel on
    the same tokens as the Loop's iteration for it, so bit-equal to it."""
    i64 = np.int64
    count = g.op("Gather", [ids_shape, g.const(0, i64)], "sequence_count", axis=0)
    starts = g.op("Mul", [g.op("Range", [g.const(0, i64), count, g.const(1, i64)], "sequence_index"), length], "starts")
    lengths = g.op("ReduceSum", [mask, g.const([1], i64)], "lengths", keepdims=0)
    spans = SequenceSpans(starts, g.op("Add", [starts, lengths], "ends"), count)
    rows_shape = g.const([-1, hidden_size], i64)
    pad_to = g.op("Reshape", [length, g.const([1], i64)], "pad_to")
    single = g.op("Equal", [count, g.const(1, i64)], "single_sequence")
    unpadded = g.op("Equal", [g.op("ReduceMin", [mask], "shortest_mask", keepdims=0), g.const(1, i64)], "unpadded")
    alone = g.op("And", [single, unpadded], "one_unpadded_sequence")
    attention = {"domain": MS_DOMAIN, "num_heads": heads, "scale": scale}

    def attend(g: GraphBuilder, query: str, key: str, value: str, name: str) -> str:
        whole = GraphBuilder()
        whole.op("MultiHeadAttention", [query, key, value], f"{name}.attention_alone", **attention)
        each = GraphBuilder()
        rows = tuple(
            each.op("Reshape", [t, rows_shape], f"{name}.{p}_rows") for t, p in zip((query, key, value), "qkv")
        )
        padded = per_sequence_attention(each, spans, rows, name, pad_to=pad_to, num_heads=heads, scale=scale)
        each.op("Reshape", [padded, each.op("Shape", [query], f"{name}.query_shape")], f"{name}.attention_each")
        branches = {
            "then_branch": branch_graph(whole, f"{name}.alone"),
            "else_branch": branch_graph(each, f"{name}.each"),
        }
        context = g.op("If", [alone], f"{name}.context", **branches)
        g.value_info.append(
            helper.make_tensor_value_info(context, TensorProto.FLOAT, ["batch", "sequence", hidden_size])
        )
        return context

    return attend

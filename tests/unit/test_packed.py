"""Packed (ragged) batches: packing and offsets, the backends' ragged batch inputs, the packed ESM-2 graph and its
config (export/esm2/packed.py, deploy/local/backends/batching.py), and how the packed study and the GPU check's packed
step drive them through the bench's shared runners (loadtest/packed_study.py, loadtest/packed_check.py)."""

from __future__ import annotations

import types

import numpy as np
import pytest
from tritonclient.grpc import model_config_pb2 as mc

from tritonfleet.contract.esm2_tokens import CLS_ID, EOS_ID, MASK_ID, bucket_for, encode_batch, random_proteins
from tritonfleet.deploy.local.backends.batching import BatchInputSpec, RaggedLayout, run_batched
from tritonfleet.export.esm2.packed import (
    ATTENTION_PARAMETER,
    EMBEDDING,
    SEQUENCE_ENDS,
    TOKENS_INPUT,
    pack_sequences,
    pack_token_rows,
    packed_config,
)
from tritonfleet.export.parity import INVARIANCE_TOLERANCE


def test_packing_concatenates_rows_and_records_where_each_ends():
    batch = pack_token_rows([np.array([[0, 5, 2]]), np.array([0, 2]), np.array([0, 7, 8, 9, 2])])
    assert batch.tokens.tolist() == [0, 5, 2, 0, 2, 0, 7, 8, 9, 2]
    assert batch.tokens.dtype == np.int64 and batch.ends.dtype == np.int32
    assert batch.ends.tolist() == [3, 5, 10]
    assert batch.lengths.tolist() == [3, 2, 5]
    assert set(batch.feeds()) == {TOKENS_INPUT, SEQUENCE_ENDS}


def test_packed_sequences_carry_no_padding():
    batch = pack_sequences(["MK", "ACDE"])
    assert batch.ends.tolist() == [4, 10]
    assert batch.tokens[[0, 4]].tolist() == [CLS_ID, CLS_ID] and batch.tokens[[3, 9]].tolist() == [EOS_ID, EOS_ID]


@pytest.mark.parametrize("rows", [[], [np.array([1, 2]), np.array([], dtype=np.int64)]])
def test_packing_refuses_empty_batches_and_empty_sequences(rows):
    with pytest.raises(ValueError, match="no empty sequence"):
        pack_token_rows(rows)


def _ragged_config(kinds=("BATCH_ACCUMULATED_ELEMENT_COUNT",), max_batch_size=8) -> mc.ModelConfig:
    config = mc.ModelConfig(name="m", platform="onnxruntime_onnx", max_batch_size=max_batch_size)
    config.input.add(name="IDS", data_type=mc.TYPE_INT64, dims=[-1], allow_ragged_batch=True)
    config.input.add(name="SCALE", data_type=mc.TYPE_FP32, dims=[1])
    config.output.add(name="SUM", data_type=mc.TYPE_FP32, dims=[1])
    for index, kind in enumerate(kinds):
        config.batch_input.add(
            kind=mc.BatchInput.Kind.Value(kind),
            target_name=[f"B{index}"],
            data_type=mc.TYPE_INT32,
            source_input=["IDS"],
        )
    return config


def _request(ids, scale=1.0):
    return {"IDS": np.array([ids], dtype=np.int64), "SCALE": np.array([[scale]], dtype=np.float32)}


def test_batch_inputs_are_built_as_triton_builds_them():
    kinds = (
        "BATCH_ELEMENT_COUNT",
        "BATCH_ACCUMULATED_ELEMENT_COUNT",
        "BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO",
        "BATCH_MAX_ELEMENT_COUNT_AS_SHAPE",
    )
    layout = RaggedLayout.from_config(_ragged_config(kinds))
    assert layout.active and layout.ragged_inputs == {"IDS"} and layout.targets == ("B0", "B1", "B2", "B3")
    combined = layout.combine([_request([1, 2, 3]), _request([4]), _request([5, 6])])
    assert combined["IDS"].tolist() == [1, 2, 3, 4, 5, 6]  # flattened, back to back
    assert combined["SCALE"].shape == (3, 1)  # not ragged: concatenated on the batch axis
    assert combined["B0"].tolist() == [3, 1, 2]
    assert combined["B1"].tolist() == [3, 4, 6] and combined["B1"].dtype == np.int32
    assert combined["B2"].tolist() == [0, 3, 4, 6]
    assert combined["B3"].shape == (3,)


def test_a_config_without_ragged_inputs_keeps_plain_batching():
    config = _ragged_config(kinds=())
    config.input[0].allow_ragged_batch = False
    assert not RaggedLayout.from_config(config).active


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: setattr(c, "max_batch_size", 0), "max_batch_size > 0"),
        (lambda c: c.batch_input[0].source_input.__setitem__(0, "NOPE"), "unknown source_input"),
        (lambda c: setattr(c.batch_input[0], "kind", mc.BatchInput.BATCH_ITEM_SHAPE), "not supported"),
    ],
)
def test_ragged_configs_the_backends_cannot_serve_are_refused(change, message):
    config = _ragged_config()
    change(config)
    with pytest.raises(ValueError, match=message):
        RaggedLayout.from_config(config)


def _segment_sums(tensors):
    """A stand-in engine: per request, the sum of its ids times its scale (fails on a negative id)."""
    ids, ends = tensors["IDS"], tensors["B0"]
    if (ids < 0).any():
        raise ValueError("negative id")
    sums = np.add.reduceat(ids, np.concatenate([[0], ends[:-1]])).astype(np.float32)
    return {"SUM": sums[:, None] * tensors["SCALE"]}


def test_ragged_requests_run_in_one_execution_and_get_their_own_rows():
    layout = RaggedLayout.from_config(_ragged_config())
    calls = []

    def engine(tensors):
        calls.append(tensors["B0"].tolist())
        return _segment_sums(tensors)

    requests = [_request([1, 2, 3]), _request([10], 2.0), _request([5, 5])]
    results = run_batched(requests, engine, batched=True, ragged=layout)
    assert calls == [[3, 4, 6]]
    assert [r.outputs["SUM"].tolist() for r in results] == [[[6.0]], [[20.0]], [[10.0]]]


def test_a_failing_ragged_request_fails_alone():
    layout = RaggedLayout.from_config(_ragged_config())
    results = run_batched([_request([1, 2]), _request([-1]), _request([3])], _segment_sums, True, ragged=layout)
    assert results[1].error is not None and "negative id" in str(results[1].error)
    assert results[0].outputs["SUM"].tolist() == [[3.0]] and results[2].outputs["SUM"].tolist() == [[3.0]]


def test_a_request_alone_is_packed_too():
    results = run_batched([_request([4, 4])], _segment_sums, True, ragged=RaggedLayout.from_config(_ragged_config()))
    assert results[0].outputs["SUM"].tolist() == [[8.0]]


def test_batch_input_spec_refuses_unknown_kinds():
    with pytest.raises(ValueError, match="not supported"):
        BatchInputSpec("BATCH_ITEM_SHAPE", "T", np.dtype(np.int32), "IDS").build([_request([1])])


def test_packed_config_is_the_networks_with_ragged_tokens_and_embedding_alone():
    network = mc.ModelConfig(name="esm2_onnx", platform="onnxruntime_onnx", max_batch_size=64)
    network.input.add(name="INPUT_IDS", data_type=mc.TYPE_INT64, dims=[-1])
    network.input.add(name="ATTENTION_MASK", data_type=mc.TYPE_INT64, dims=[-1])
    network.output.add(name="EMBEDDING", data_type=mc.TYPE_FP32, dims=[320])
    network.output.add(name="RESIDUE_EMBEDDINGS", data_type=mc.TYPE_FP32, dims=[-1, 320])
    network.model_warmup.add(name="w", batch_size=1)
    network.dynamic_batching.max_queue_delay_microseconds = 2000
    config = packed_config(network)
    assert config.name == "esm2_onnx_packed" and config.max_batch_size == 64
    assert [(e.name, e.allow_ragged_batch) for e in config.input] == [("INPUT_IDS", True)]
    assert [e.name for e in config.output] == [EMBEDDING]
    (batch_input,) = config.batch_input
    assert batch_input.kind == mc.BatchInput.BATCH_ACCUMULATED_ELEMENT_COUNT
    assert list(batch_input.target_name) == [SEQUENCE_ENDS] and list(batch_input.source_input) == ["INPUT_IDS"]
    assert not config.model_warmup and config.dynamic_batching.max_queue_delay_microseconds == 2000
    assert RaggedLayout.from_config(config).targets == (SEQUENCE_ENDS,)
    assert config.parameters[ATTENTION_PARAMETER].string_value == "per_sequence"  # no instance group: CPU


def test_gpu_instances_get_the_padded_attention_form():
    network = mc.ModelConfig(name="esm2_onnx", max_batch_size=64)
    network.input.add(name="INPUT_IDS", data_type=mc.TYPE_INT64, dims=[-1])
    network.output.add(name="EMBEDDING", data_type=mc.TYPE_FP32, dims=[320])
    network.instance_group.add(kind=mc.ModelInstanceGroup.KIND_GPU, count=1)
    assert packed_config(network).parameters[ATTENTION_PARAMETER].string_value == "padded"


def test_packed_graph_limit_matches_the_padded_graphs():
    from tritonfleet.export.esm2 import onnx_graph, packed

    assert packed.MAX_POSITIONS == onnx_graph.MAX_POSITIONS


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    from tritonfleet.contract.engines import open_engine
    from tritonfleet.export.esm2.model import build_esm2
    from tritonfleet.export.esm2.onnx_graph import build_esm2_onnx
    from tritonfleet.export.esm2.packed import build_packed_esm2_onnx

    folder = tmp_path_factory.mktemp("packed_graphs")
    module = build_esm2(random_init="8M", seed=3)
    engines = {}
    for attention in ("padded", "per_sequence"):  # the network and the packed graph of a GPU and of a CPU plan
        network = build_esm2_onnx(module, folder / f"network_{attention}.onnx", attention=attention)
        engines[f"network_{attention}"] = open_engine(network, "onnx", threads=1)
        path = build_packed_esm2_onnx(module, folder / f"packed_{attention}.onnx", attention=attention)
        engines[f"packed_{attention}"] = open_engine(path, "onnx", threads=1)
    yield engines
    for engine in engines.values():
        engine.close()


@pytest.mark.parametrize("attention", ["padded", "per_sequence"])
def test_packed_graph_embeds_each_sequence_as_if_alone(graphs, attention):
    padded, packed = graphs[f"network_{attention}"], graphs[f"packed_{attention}"]
    rng = np.random.default_rng(5)
    rows = [encode_batch([protein], buckets=None)[0][0] for protein in ["M", *random_proteins(5, rng, 2, 300)]]
    rows[2][3:6] = MASK_ID  # token dropout rescales per sequence: the packed graph must count per sequence too
    (embedding,) = packed.run(pack_token_rows(rows).feeds(), [EMBEDDING]).values()
    assert embedding.shape == (len(rows), 320)
    for index, row in enumerate(rows):
        alone = padded.run({"INPUT_IDS": row[None], "ATTENTION_MASK": np.ones_like(row)[None]}, [EMBEDDING])
        assert float(np.abs(embedding[index] - alone[EMBEDDING][0]).max()) <= INVARIANCE_TOLERANCE


def test_both_network_layouts_answer_each_sequence_as_if_alone(graphs):
    """The CPU plans' per-sequence layout (an If: one unpadded sequence straight through, else a Loop) and the GPU
    plans' padded one, alone and inside a padded batch."""
    layouts = ("padded", "per_sequence")
    outputs = [EMBEDDING, "RESIDUE_EMBEDDINGS"]
    proteins = random_proteins(4, np.random.default_rng(11), 2, 150)
    ids, mask = encode_batch(proteins, buckets=None)
    assert mask.min() == 0  # padded: the per-sequence layout takes its Loop
    batched = {a: graphs[f"network_{a}"].run({"INPUT_IDS": ids, "ATTENTION_MASK": mask}, outputs) for a in layouts}
    for index, protein in enumerate(proteins):
        one_ids, one_mask = encode_batch([protein], buckets=None)
        alone = {a: graphs[f"network_{a}"].run({"INPUT_IDS": one_ids, "ATTENTION_MASK": one_mask}, outputs)
                 for a in layouts}  # fmt: skip
        tokens = one_ids.shape[1]
        for a in layouts:
            assert np.abs(alone[a][EMBEDDING][0] - batched[a][EMBEDDING][index]).max() <= INVARIANCE_TOLERANCE
            residues = alone[a]["RESIDUE_EMBEDDINGS"][0] - batched[a]["RESIDUE_EMBEDDINGS"][index, :tokens]
            assert np.abs(residues).max() <= INVARIANCE_TOLERANCE
            assert not batched[a]["RESIDUE_EMBEDDINGS"][index, tokens:].any()
        layouts_differ = np.abs(alone["padded"][EMBEDDING] - alone["per_sequence"][EMBEDDING]).max()
        assert layouts_differ <= INVARIANCE_TOLERANCE


def test_the_packed_study_runs_both_layouts_on_the_shared_side_by_side_runner(graphs):
    from tritonfleet.loadtest.bench.engines import run_side_by_side
    from tritonfleet.loadtest.packed_study import PACKED_INPUTS, PADDED_INPUTS, Embedder, packed_batch, padded_batch

    proteins = random_proteins(7, np.random.default_rng(9), 2, 200)
    batches = [proteins[i : i + 3] for i in range(0, len(proteins), 3)]
    network = Embedder(graphs["network_padded"], PADDED_INPUTS)
    padded = run_side_by_side([network] * 2, [padded_batch(b) for b in batches], keep_outputs=True)
    for attention in ("padded", "per_sequence"):
        embedder = Embedder(graphs[f"packed_{attention}"], PACKED_INPUTS)
        packed = run_side_by_side([embedder] * 2, [packed_batch(b) for b in batches], keep_outputs=True)
        assert packed.sequences == padded.sequences == len(proteins)  # counted by the ends, not the tokens
        for batch, alone, together in zip(batches, padded.outputs, packed.outputs):
            assert alone.shape == together.shape == (len(batch), 320)
            assert float(np.abs(alone - together).max()) <= INVARIANCE_TOLERANCE


def test_the_gpu_checks_packed_step_sends_each_model_its_layout(monkeypatch):
    import tritonclient.grpc as grpc_client

    from tritonfleet.loadtest import packed_check

    sent: list[tuple[str, tuple[str, ...], int]] = []

    class FakeClient:
        """Records each request's model, input names and width; the packed model answers 0.25 off the padded."""

        def __init__(self, url: str) -> None:
            assert url == "127.0.0.1:8001"

        def infer(self, model, inputs, outputs):
            sent.append((model, tuple(tensor.name() for tensor in inputs), inputs[0].shape()[1]))
            value = 0.25 if model == packed_check.PACKED_MODEL else 0.0
            return types.SimpleNamespace(as_numpy=lambda name: np.full((1, 4), value, dtype=np.float32))

        def close(self) -> None:
            pass

    monkeypatch.setattr(grpc_client, "InferenceServerClient", FakeClient)
    proteins = random_proteins(5, np.random.default_rng(2), 2, 300)
    check = packed_check.served_packed_check("grpc://127.0.0.1:8001", proteins, concurrency=2)
    assert (check.sequences, check.parity_sequences, check.max_abs_diff) == (5, 5, 0.25) and not check.passed
    assert check.padded_seq_per_s > 0 and check.packed_seq_per_s > 0
    assert len(sent) == 4 * len(proteins)  # parity: padded alone and packed, then both closed loops
    widths = {len(protein) + 2 for protein in proteins}
    for model, names, width in sent:
        if model == packed_check.PACKED_MODEL:
            assert names == ("INPUT_IDS",) and width in widths  # unpadded
        else:
            assert names == ("INPUT_IDS", "ATTENTION_MASK") and width == bucket_for(width)  # padded to its bucket

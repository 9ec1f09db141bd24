"""Request planning, tensor naming and reassembly order (client.core, client.model); no server involved."""

from __future__ import annotations

import numpy as np
import pytest

from tritonfleet.client.core import (
    PreparedCall,
    assemble_embeddings,
    assemble_residues,
    build_input_arrays,
    normalize_sequences,
    padded_tokens,
    plan_batches,
    plan_call,
    request_tokens,
)
from tritonfleet.client.errors import InvalidSequenceError, UnsupportedModelError
from tritonfleet.client.model import ModelSpec
from tritonfleet.contract.esm2_tokens import encode_batch
from tritonfleet.contract.pipeline import Role

D = 4


def _config(inputs: list[tuple[str, str]], outputs: list[str], name: str = "m", max_batch_size: int = 8) -> dict:
    """A `get_model_config` answer as HTTP returns it."""
    return {
        "name": name,
        "max_batch_size": max_batch_size,
        "input": [{"name": n, "data_type": t, "dims": [-1]} for n, t in inputs],
        "output": [
            {"name": n, "data_type": "TYPE_FP32", "dims": [D] if n.startswith("EMB") else [-1, D]} for n in outputs
        ],
    }


def prepare_sequences(sequences, max_batch_size: int, ids=None) -> PreparedCall:
    return plan_call(normalize_sequences(sequences, ids=ids), max_batch_size)


ENSEMBLE = ModelSpec.from_config(
    _config([("SEQUENCE", "TYPE_STRING")], ["EMBEDDING", "RESIDUE_EMBEDDINGS"], "esm2", max_batch_size=3)
)


def test_torchscript_suffixes_are_resolved_from_a_grpc_json_config() -> None:
    config = _config(
        [("INPUT_IDS__0", "TYPE_INT64"), ("ATTENTION_MASK__1", "TYPE_INT64")],
        ["EMBEDDING__0", "RESIDUE_EMBEDDINGS__1"],
        "esm2_torchscript",
        max_batch_size=64,
    )
    config["output"][0]["dims"] = [str(D)]  # gRPC JSON renders int64 as strings and wraps the config
    spec = ModelSpec.from_config({"config": config})
    assert spec.feed == "tokens"
    assert spec.inputs == {"INPUT_IDS": "INPUT_IDS__0", "ATTENTION_MASK": "ATTENTION_MASK__1"}
    assert spec.output_name("RESIDUE_EMBEDDINGS") == "RESIDUE_EMBEDDINGS__1"
    assert (spec.name, spec.max_batch_size, spec.embedding_dim) == ("esm2_torchscript", 64, D)


def test_roles_come_from_the_pipeline_declaration_not_from_name_patterns() -> None:
    # `INPUT_IDS__5` looks like a TorchScript name but no pipeline declares it: no role is guessed from it.
    with pytest.raises(UnsupportedModelError, match="expected SEQUENCE"):
        ModelSpec.from_config(
            _config([("INPUT_IDS__5", "TYPE_INT64"), ("ATTENTION_MASK", "TYPE_INT64")], ["EMBEDDING"])
        )
    assert ENSEMBLE.pipeline == "esm2" and ENSEMBLE.input_name(Role.SEQUENCES) == "SEQUENCE"


def test_models_outside_the_contract_are_refused_with_reasons() -> None:
    with pytest.raises(UnsupportedModelError, match="expected SEQUENCE"):
        ModelSpec.from_config(_config([("TEXT", "TYPE_STRING")], ["EMBEDDING"]))
    with pytest.raises(UnsupportedModelError, match="max_batch_size 0"):
        ModelSpec.from_config(_config([("SEQUENCE", "TYPE_STRING")], ["EMBEDDING"], max_batch_size=0))
    with pytest.raises(UnsupportedModelError, match="no EMBEDDING output"):
        ModelSpec.from_config(_config([("SEQUENCE", "TYPE_STRING")], ["RESIDUE_EMBEDDINGS"]))
    spec = ModelSpec.from_config(_config([("SEQUENCE", "TYPE_STRING")], ["EMBEDDING"]))
    with pytest.raises(UnsupportedModelError, match="no RESIDUE_EMBEDDINGS output"):
        spec.output_name("RESIDUE_EMBEDDINGS")


def test_batches_respect_max_batch_size_group_similar_lengths_and_cover_every_index_once() -> None:
    lengths = [5, 1, 9, 3, 3, 7, 2, 8, 6, 4, 1]
    batches = plan_batches(lengths, 4)
    assert [len(b.indices) for b in batches] == [4, 4, 3]
    assert sorted(i for b in batches for i in b.indices) == list(range(len(lengths)))
    flat = [lengths[i] for b in batches for i in b.indices]
    assert flat == sorted(lengths)
    assert batches[0].indices == (1, 10, 6, 3)  # stable among equal lengths


def test_150_sequences_with_max_batch_size_64_make_three_requests() -> None:
    call = prepare_sequences(["M" * (1 + i % 50) for i in range(150)], 64)
    assert [len(b.indices) for b in call.batches] == [64, 64, 22]


def test_prepare_names_the_bad_sequence_by_index_and_id() -> None:
    with pytest.raises(InvalidSequenceError) as caught:
        prepare_sequences(["MKT", "MKJ"], 8, ids=["ok", "bad one"])
    assert (caught.value.index, caught.value.record_id) == (1, "bad one")
    assert "sequence 1 (id 'bad one'): invalid residue 'J' at position 3" in str(caught.value)
    with pytest.raises(InvalidSequenceError, match="sequence 0: sequence is too long: 1023 residues"):
        prepare_sequences(["A" * 1023], 8)


def test_prepare_normalises_like_the_served_tokenizer() -> None:
    call = prepare_sequences([" mkt\n", b"GSH"], 8)
    assert call.texts == ("MKT", "GSH") and call.lengths == (3, 3)


def test_prepare_rejects_a_bare_string() -> None:
    with pytest.raises(TypeError, match="not one string"):
        prepare_sequences("MKT", 8)


def test_sequence_inputs_are_object_arrays_of_bytes_with_one_element_per_row() -> None:
    arrays = build_input_arrays(ENSEMBLE, ["MKT", "GS"])
    (array,) = arrays.values()
    assert list(arrays) == ["SEQUENCE"] and array.dtype == np.object_ and array.shape == (2, 1)
    assert array[:, 0].tolist() == [b"MKT", b"GS"]


def test_token_inputs_use_the_served_names_and_the_shared_tokenizer() -> None:
    spec = ModelSpec.from_config(
        _config([("INPUT_IDS__0", "TYPE_INT64"), ("ATTENTION_MASK__1", "TYPE_INT64")], ["EMBEDDING__0"])
    )
    arrays = build_input_arrays(spec, ["MKT", "GS"])
    expected_ids, expected_mask = encode_batch(["MKT", "GS"])
    np.testing.assert_array_equal(arrays["INPUT_IDS__0"], expected_ids)
    np.testing.assert_array_equal(arrays["ATTENTION_MASK__1"], expected_mask)


def test_embeddings_are_scattered_back_to_input_order() -> None:
    sequences = ["M" * n for n in (5, 1, 4, 2, 3)]
    call = prepare_sequences(sequences, 2)
    # Each fake server row carries its input index so the reassembled order can be checked.
    outputs = [np.array([[i] * D for i in batch.indices], dtype=np.float32) for batch in call.batches]
    result = assemble_embeddings(ENSEMBLE, call, outputs)
    np.testing.assert_array_equal(result[:, 0], np.arange(len(sequences)))


def test_residue_rows_1_to_l_are_cut_per_sequence() -> None:
    call = prepare_sequences(["MKTA", "GS", "Q"], 2)
    outputs = []
    for batch in call.batches:
        width = max(call.lengths[i] for i in batch.indices) + 3
        rows = np.zeros((len(batch.indices), width, D), dtype=np.float32)
        for row, index in enumerate(batch.indices):
            rows[row, :, 0] = index
            rows[row, :, 1] = np.arange(width)  # the token position
        outputs.append(rows)
    residues = assemble_residues(call, outputs)
    assert [r.shape for r in residues] == [(4, D), (2, D), (1, D)]
    for index, array in enumerate(residues):
        assert (array[:, 0] == index).all()
        np.testing.assert_array_equal(array[:, 1], np.arange(1, call.lengths[index] + 1))


def test_a_response_with_the_wrong_row_count_is_an_error() -> None:
    call = prepare_sequences(["MKT", "GS"], 8)
    with pytest.raises(UnsupportedModelError, match="1 rows for a batch of 2"):
        assemble_embeddings(ENSEMBLE, call, [np.zeros((1, D), np.float32)])


# -- splitting to what the server advertises (max_batch_size and execution_token_budget) ---------------------------


def _budget_spec(max_batch_size: int, budget: str | None) -> ModelSpec:
    config = _config([("SEQUENCE", "TYPE_STRING")], ["EMBEDDING"], "esm2", max_batch_size=max_batch_size)
    if budget is not None:
        config["parameters"] = {"execution_token_budget": {"string_value": budget}}
    return ModelSpec.from_config(config)


def test_the_token_budget_is_read_from_the_config_and_absent_means_no_budget() -> None:
    assert _budget_spec(64, "4096").execution_token_budget == 4096
    assert _budget_spec(64, None).execution_token_budget is None
    with pytest.raises(UnsupportedModelError, match="execution_token_budget must be an integer"):
        _budget_spec(64, "lots")


def test_64_long_sequences_are_split_so_no_request_exceeds_the_token_budget() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(300, 1023, size=64).tolist()
    spec = _budget_spec(64, "2048")
    call = plan_call(["A" * n for n in lengths], spec.max_batch_size, spec.execution_token_budget)
    assert sorted(i for batch in call.batches for i in batch.indices) == list(range(64))
    for batch in call.batches:
        assert request_tokens([lengths[i] for i in batch.indices]) <= 2048 or len(batch.indices) == 1
    # Without the budget, max_batch_size alone: one request.
    assert len(plan_call(["A" * n for n in lengths], 64).batches) == 1


def test_the_split_packs_short_sequences_up_to_the_budget_and_sends_an_oversized_one_alone() -> None:
    # Short sequences pad to the 128-token bucket: 2048 // 128 = 16 per request.
    assert [len(b.indices) for b in plan_batches([50] * 40, 64, 2048)] == [16, 16, 8]
    # max_batch_size still caps requests when the budget would allow more.
    assert [len(b.indices) for b in plan_batches([50] * 40, 10, 1 << 20)] == [10, 10, 10, 10]
    # A 1022-residue sequence alone exceeds a 512-token budget: it goes alone, the short ones share requests.
    batches = plan_batches([1022, 20, 20, 20, 20], 64, 512)
    assert [sorted(b.indices) for b in batches] == [[1, 2, 3, 4], [0]]
    assert padded_tokens(50) == 128 and padded_tokens(1022) == 1024
    with pytest.raises(ValueError, match="token_budget"):
        plan_batches([1], 4, 0)

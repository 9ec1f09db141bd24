"""The shared workload: length mixes, synthetic sequences, per-model requests, rejection detection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from tritonfleet.contract import esm2_tokens as esm_tokenizer
from tritonfleet.contract.tensors import TensorSpec
from tritonfleet.loadtest.workload import (
    LENGTH_MIXES,
    SWISSPROT_COMPOSITION,
    LengthBin,
    LengthMix,
    ModelTarget,
    buckets_from_repository,
    generate_sequences,
    is_rejection,
    length_mix,
    prepare_request,
    repository_targets,
    token_length_waste,
)


def _target(name: str, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...]) -> ModelTarget:
    return ModelTarget(name=name, platform="", backend="", max_batch_size=64, inputs=inputs, outputs=outputs)


ENSEMBLE = _target(
    "esm2",
    (TensorSpec("SEQUENCE", "object", (1,)),),
    (TensorSpec("EMBEDDING", "float32", (320,)), TensorSpec("RESIDUE_EMBEDDINGS", "float32", (-1, 320))),
)
TORCHSCRIPT = _target(
    "esm2_torchscript",
    (TensorSpec("INPUT_IDS__0", "int64", (-1,)), TensorSpec("ATTENTION_MASK__1", "int64", (-1,))),
    (TensorSpec("EMBEDDING__0", "float32", (320,)), TensorSpec("RESIDUE_EMBEDDINGS__1", "float32", (-1, 320))),
)


def test_swissprot_mix_matches_the_published_shape() -> None:
    lengths = np.array([len(s) for s in generate_sequences(4000, "swissprot")])
    assert lengths.min() >= 8 and lengths.max() <= esm_tokenizer.MAX_RESIDUES
    assert 320 < lengths.mean() < 390  # Swiss-Prot: mean ~360 aa, folded at 1022
    assert 260 < np.median(lengths) < 330  # median ~300 aa
    assert abs(LENGTH_MIXES["swissprot"].probabilities.sum() - 1.0) < 1e-12


def test_sequences_are_deterministic_and_use_standard_residues_only() -> None:
    first = generate_sequences(50, "swissprot", seed=7)
    assert first == generate_sequences(50, "swissprot", seed=7)
    assert first != generate_sequences(50, "swissprot", seed=8)
    residues = set("".join(first))
    assert residues <= set(SWISSPROT_COMPOSITION)
    for sequence in first:
        esm_tokenizer.validate_sequence(sequence)  # raises on anything the tokenizer would reject


def test_residue_frequencies_follow_the_composition() -> None:
    text = "".join(generate_sequences(300, "swissprot"))
    leucine = text.count("L") / len(text)
    tryptophan = text.count("W") / len(text)
    assert abs(leucine - SWISSPROT_COMPOSITION["L"] / 100) < 0.005
    assert abs(tryptophan - SWISSPROT_COMPOSITION["W"] / 100) < 0.003


def test_fixed_and_short_mixes_and_bad_names() -> None:
    assert {len(s) for s in generate_sequences(20, "fixed-100")} == {100}
    assert max(len(s) for s in generate_sequences(200, "short")) <= 300
    with pytest.raises(ValueError, match="unknown length mix"):
        length_mix("uniform")
    with pytest.raises(ValueError, match="bad bin"):
        LengthMix("broken", (LengthBin(10, 2000, 1.0),))
    with pytest.raises(ValueError, match="positive"):
        LengthMix("broken", (LengthBin(10, 20, 0.0),))


def test_padding_waste_is_a_fraction() -> None:
    smallest = esm_tokenizer.DEFAULT_BUCKETS[0]
    assert token_length_waste(["A" * (smallest - 2)]) == 0.0  # <cls> + residues + <eos> fill the bucket exactly
    assert token_length_waste(["A" * (smallest // 2 - 2)]) == pytest.approx(0.5)
    assert 0.0 < token_length_waste(generate_sequences(200)) < 0.2


def test_prepare_request_for_sequence_and_token_models() -> None:
    sequences = ["MKTAYIAK", "MKV"]
    ensemble_request = prepare_request(ENSEMBLE, sequences)
    data = ensemble_request.inputs["SEQUENCE"]
    assert data.shape == (2, 1) and data.dtype == np.object_ and data[0, 0] == b"MKTAYIAK"
    token_request = prepare_request(TORCHSCRIPT, sequences)
    ids, mask = token_request.inputs["INPUT_IDS__0"], token_request.inputs["ATTENTION_MASK__1"]
    assert ids.shape == mask.shape == (2, esm_tokenizer.bucket_for(10)) and ids.dtype == np.int64
    assert ids[0, 0] == esm_tokenizer.CLS_ID and ids[0, 9] == esm_tokenizer.EOS_ID and mask[1].sum() == 5
    assert token_request.sequences == 2 and token_request.residues == 11
    assert TORCHSCRIPT.output_names() == ["EMBEDDING__0"]
    assert ENSEMBLE.output_names("all") == ["EMBEDDING", "RESIDUE_EMBEDDINGS"]


def test_target_tensors_come_from_the_pipeline_roles_not_from_their_names() -> None:
    assert TORCHSCRIPT.roles.pipeline == "esm2"
    assert (TORCHSCRIPT.ids_input, TORCHSCRIPT.mask_input) == ("INPUT_IDS__0", "ATTENTION_MASK__1")
    # A mask by any other name is not guessed (the old rule took any input containing "MASK").
    lookalike = _target(
        "other", (TensorSpec("IDS", "int64", (-1,)), TensorSpec("MY_MASK", "int64", (-1,))), (ENSEMBLE.outputs[0],)
    )
    with pytest.raises(KeyError, match="no installed pipeline declares"):
        _ = lookalike.mask_input


def test_rejections_are_told_apart_from_errors() -> None:
    assert is_rejection(InferenceServerException("[request id: <id_unknown>] Exceeds maximum queue size", "503"))
    assert is_rejection(InferenceServerException("busy", "StatusCode.UNAVAILABLE"))
    assert not is_rejection(InferenceServerException("invalid residue 'J'", "400"))
    assert not is_rejection(InferenceServerException("Stub process is not healthy.", "StatusCode.INTERNAL"))
    assert not is_rejection(RuntimeError("connection reset"))


def test_targets_and_buckets_from_a_repository(tmp_path: Path) -> None:
    (tmp_path / "esm2_tokenizer").mkdir()
    (tmp_path / "esm2_tokenizer" / "config.pbtxt").write_text(
        'name: "esm2_tokenizer"\nbackend: "python"\nmax_batch_size: 64\n'
        'input { name: "SEQUENCE" data_type: TYPE_STRING dims: 1 }\n'
        'output { name: "INPUT_IDS" data_type: TYPE_INT64 dims: -1 }\n'
        'output { name: "ATTENTION_MASK" data_type: TYPE_INT64 dims: -1 }\n'
        'parameters { key: "length_buckets" value { string_value: "64,256,1024" } }\n'
    )
    (tmp_path / "esm2_onnx").mkdir()
    (tmp_path / "esm2_onnx" / "config.pbtxt").write_text(
        'platform: "onnxruntime_onnx"\nmax_batch_size: 64\n'
        'input { name: "INPUT_IDS" data_type: TYPE_INT64 dims: -1 }\n'
        'input { name: "ATTENTION_MASK" data_type: TYPE_INT64 dims: -1 }\n'
        'output { name: "EMBEDDING" data_type: TYPE_FP32 dims: 320 }\n'
    )
    targets = repository_targets(tmp_path)
    assert list(targets) == ["esm2_onnx", "esm2_tokenizer"]  # a config without a name takes its folder's
    assert targets["esm2_tokenizer"].takes_sequences and not targets["esm2_onnx"].takes_sequences
    assert (targets["esm2_onnx"].ids_input, targets["esm2_onnx"].mask_input) == ("INPUT_IDS", "ATTENTION_MASK")
    assert buckets_from_repository(tmp_path) == (64, 256, 1024)
    assert buckets_from_repository(None) == esm_tokenizer.DEFAULT_BUCKETS

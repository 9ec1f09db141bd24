"""The python-backend tokenizer model, run from the copied files with a stand-in `triton_python_backend_utils`.

The real stub is exercised by tests/integration/test_esm2_serving.py; here the per-request logic is checked fast:
one response per request, bucket padding from the config parameter, and INVALID_ARG for bad requests only.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from tritonfleet.contract.esm2.pipeline import TOKENIZER_MODEL
from tritonfleet.contract.esm2_tokens import (
    MAX_RESIDUES,
    RUN_OVERHEAD_TOKENS_GPU,
    encode_batch,
    format_buckets,
    parse_buckets,
)
from tritonfleet.export.esm2.files import write_support_files
from tritonfleet.export.esm2.repository import RepositoryOptions
from tritonfleet.export.network import MODEL_VERSION


class FakeTritonError(Exception):
    INTERNAL = "INTERNAL"
    INVALID_ARG = "INVALID_ARG"

    def __init__(self, message: str, code: str = INTERNAL) -> None:
        super().__init__(message)
        self.message, self.code = message, code


class FakeTensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self.name, self.array = name, array

    def as_numpy(self) -> np.ndarray:
        return self.array


class FakeResponse:
    def __init__(self, output_tensors, error=None) -> None:
        self.outputs = {tensor.name: tensor.array for tensor in output_tensors}
        self.error = error


class FakeRequest:
    def __init__(self, sequences: list[bytes]) -> None:
        self.inputs = {"SEQUENCE": FakeTensor("SEQUENCE", np.array(sequences, dtype=object).reshape(-1, 1))}


def fake_pb_utils() -> types.ModuleType:
    module = types.ModuleType("triton_python_backend_utils")
    module.TritonError = FakeTritonError
    module.TritonModelException = RuntimeError
    module.Tensor = FakeTensor
    module.InferenceResponse = FakeResponse
    module.get_input_tensor_by_name = lambda request, name: request.inputs.get(name)
    module.Logger = types.SimpleNamespace(log_info=lambda message: None)
    return module


@pytest.fixture
def tokenizer_model(tmp_path, monkeypatch):
    write_support_files(tmp_path, RepositoryOptions(output=tmp_path))
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake_pb_utils())
    monkeypatch.delitem(sys.modules, "esm2_tokens", raising=False)
    version_dir = tmp_path / TOKENIZER_MODEL / MODEL_VERSION
    monkeypatch.syspath_prepend(str(version_dir))  # as the python backend does for a model's version directory
    spec = importlib.util.spec_from_file_location("copied_tokenizer_model", version_dir / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    config = {"name": TOKENIZER_MODEL, "parameters": {"length_buckets": {"string_value": "16,64,1024"}}}
    model.initialize(
        {
            "model_config": json.dumps(config),
            "model_name": TOKENIZER_MODEL,
            "model_repository": str(Path(tmp_path / TOKENIZER_MODEL)),
            "model_version": MODEL_VERSION,
        }
    )
    return model


def test_buckets_come_from_the_config_parameter(tokenizer_model):
    assert tokenizer_model.settings.buckets == (16, 64, 1024)


def test_each_request_is_padded_to_its_own_bucket_without_run_merging(tokenizer_model):
    tokenizer_model.settings = dataclasses.replace(tokenizer_model.settings, run_overhead_tokens=0)
    requests = [FakeRequest([b"MKT"]), FakeRequest([b"A" * 30, b"CC"]), FakeRequest([b"W" * 100])]
    responses = tokenizer_model.execute(requests)
    assert len(responses) == 3 and all(response.error is None for response in responses)
    assert [response.outputs["INPUT_IDS"].shape for response in responses] == [(1, 16), (2, 64), (1, 1024)]
    expected_ids, expected_mask = encode_batch(["A" * 30, "CC"], buckets=(16, 64, 1024))
    np.testing.assert_array_equal(responses[1].outputs["INPUT_IDS"], expected_ids)
    np.testing.assert_array_equal(responses[1].outputs["ATTENTION_MASK"], expected_mask)
    assert all(response.outputs["INPUT_IDS"].dtype == np.int64 for response in responses)


def test_exact_lengths_pad_each_request_to_its_own_longest_sequence(tokenizer_model):
    """The "exact" setting CPU plans ship: no bucket, so a short protein costs its own length, not 128 tokens."""
    tokenizer_model.settings = tokenizer_model.settings.from_parameters({"length_buckets": "exact"})
    assert tokenizer_model.settings.buckets == () and tokenizer_model.settings.padding_buckets is None
    assert "length buckets exact" in tokenizer_model.settings.describe()
    requests = [FakeRequest([b"MKT"]), FakeRequest([b"A" * 30, b"CC"]), FakeRequest([b"W" * 100])]
    responses = tokenizer_model.execute(requests)
    assert [response.outputs["INPUT_IDS"].shape for response in responses] == [(1, 5), (2, 32), (1, 102)]
    expected_ids, expected_mask = encode_batch(["A" * 30, "CC"], buckets=None)
    np.testing.assert_array_equal(responses[1].outputs["INPUT_IDS"], expected_ids)
    np.testing.assert_array_equal(responses[1].outputs["ATTENTION_MASK"], expected_mask)


def test_exact_lengths_round_trip_through_the_config_value():
    assert parse_buckets("exact") == () and format_buckets(()) == "exact"
    exact, unbucketed = encode_batch(["MKT", "A" * 30], buckets=()), encode_batch(["MKT", "A" * 30], buckets=None)
    assert all(np.array_equal(a, b) for a, b in zip(exact, unbucketed)) and exact[0].shape == (2, 32)
    assert format_buckets(parse_buckets("16,64,1024")) == "16,64,1024"


def test_neighbouring_requests_share_a_width_when_one_execution_is_cheaper(tokenizer_model):
    """GPU run overhead: the 16- and 64-token requests share width 64; the 1024-token one stays alone."""
    tokenizer_model.settings = dataclasses.replace(
        tokenizer_model.settings, run_overhead_tokens=RUN_OVERHEAD_TOKENS_GPU
    )
    requests = [
        FakeRequest([b"MKT"]),
        FakeRequest([b"A" * 30, b"CC"]),
        FakeRequest([b"MKXJ"]),
        FakeRequest([b"W" * 100]),
    ]
    responses = tokenizer_model.execute(requests)
    assert [response.error is None for response in responses] == [True, True, False, True]
    shapes = [response.outputs["INPUT_IDS"].shape for response in responses if response.error is None]
    assert shapes == [(1, 64), (2, 64), (1, 1024)]
    ids, mask = responses[0].outputs["INPUT_IDS"], responses[0].outputs["ATTENTION_MASK"]
    expected_ids, expected_mask = encode_batch(["MKT"], buckets=(64,))
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_array_equal(mask, expected_mask)


def test_bad_requests_fail_alone_with_invalid_arg(tokenizer_model):
    requests = [
        FakeRequest([b"MKT"]),
        FakeRequest([b"MKXJ"]),
        FakeRequest([b""]),
        FakeRequest([b"A" * (MAX_RESIDUES + 1)]),
        FakeRequest([b"ACDE"]),
    ]
    responses = tokenizer_model.execute(requests)
    assert [response.error is None for response in responses] == [True, False, False, False, True]
    errors = [response.error for response in responses if response.error is not None]
    assert all(error.code == FakeTritonError.INVALID_ARG for error in errors)
    assert "'J' at position 4" in errors[0].message
    assert "empty" in errors[1].message
    assert f"{MAX_RESIDUES + 1} residues" in errors[2].message and str(MAX_RESIDUES) in errors[2].message


def test_a_request_without_the_input_fails_as_internal(tokenizer_model):
    broken = FakeRequest([b"MKT"])
    broken.inputs.clear()
    responses = tokenizer_model.execute([broken, FakeRequest([b"MKT"])])
    assert responses[0].error.code == FakeTritonError.INTERNAL
    assert responses[1].error is None

"""The exported ESM-2 repository on a real local tritonserver: ensemble and networks vs eager PyTorch, bad input.

Uses tritonclient directly over HTTP and gRPC against `esm2_server` (tests/conftest.py), which serves the output of
`python -m export esm2 --random-init <size>`; the eager reference is rebuilt from the same size and seed.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tritonfleet.contract.esm2_tokens import MAX_RESIDUES, encode_batch, random_proteins
from tritonfleet.export.esm2.model import build_esm2
from tritonfleet.export.parity import eager_runner

ESM2_TEST_SIZE = os.environ.get("TRITONFLEET_TEST_ESM2_SIZE", "8M")
TOLERANCE = 1e-4
CLIENTS = {"http": httpclient, "grpc": grpcclient}


@pytest.fixture(scope="module")
def eager():
    return eager_runner(build_esm2(random_init=ESM2_TEST_SIZE, seed=0))


@pytest.fixture(scope="module")
def proteins() -> list[str]:
    """16 sequences of mixed lengths spanning several buckets, including 1 and MAX_RESIDUES residues."""
    rng = np.random.default_rng(11)
    return ["M", "ACDEFGHIKLMNPQRSTVWYXBUZO", *random_proteins(12, rng, 2, 450), "W" * 700, "K" * MAX_RESIDUES]


@pytest.fixture(scope="module")
def expected(eager, proteins) -> list[tuple[np.ndarray, np.ndarray]]:
    """Eager (embedding [D], residue rows [L+2, D]) of each protein alone, without any padding."""
    results = []
    for protein in proteins:
        embedding, residues = eager(*encode_batch([protein], buckets=None))
        results.append((embedding[0], residues[0]))
    return results


def make_client(server, protocol: str):
    if protocol == "http":
        return httpclient.InferenceServerClient(server.http_url.removeprefix("http://"), network_timeout=300)
    return grpcclient.InferenceServerClient(server.grpc_url.removeprefix("grpc://"))


def sequence_input(protocol: str, sequences: list[str]):
    tensor = CLIENTS[protocol].InferInput("SEQUENCE", [len(sequences), 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[s.encode()] for s in sequences], dtype=object))
    return tensor


SEQUENCE_MODELS = ("esm2", "esm2_bls")  # the ensemble and the BLS pipeline share one contract


def infer_sequences(server, protocol: str, sequences: list[str], model: str = "esm2"):
    result = make_client(server, protocol).infer(model, [sequence_input(protocol, sequences)])
    return result.as_numpy("EMBEDDING"), result.as_numpy("RESIDUE_EMBEDDINGS")


def assert_close(actual: np.ndarray, wanted: np.ndarray, what: str) -> None:
    assert actual.shape == wanted.shape, f"{what}: shape {actual.shape} != {wanted.shape}"
    diff = float(np.max(np.abs(actual.astype(np.float64) - wanted)))
    assert diff <= TOLERANCE, f"{what}: max abs diff {diff:.2e} > {TOLERANCE}"


@pytest.mark.parametrize("model", SEQUENCE_MODELS)
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_ensemble_one_by_one_matches_eager(esm2_server, protocol, model, proteins, expected):
    # Concurrent single-sequence requests, so the dynamic batchers see mixed lengths at once.
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda protein: infer_sequences(esm2_server, protocol, [protein], model), proteins))
    for protein, (embedding, residues), (want_embedding, want_residues) in zip(proteins, results, expected):
        assert embedding.dtype == np.float32 and embedding.shape == (1, want_embedding.shape[0])
        assert_close(embedding[0], want_embedding, f"{protocol} EMBEDDING len {len(protein)}")
        tokens = len(protein) + 2
        assert residues.shape[1] >= tokens
        assert_close(residues[0, :tokens], want_residues, f"{protocol} RESIDUE_EMBEDDINGS len {len(protein)}")
        assert not np.any(residues[0, tokens:]), "rows beyond the sequence (padding) must be zero"


@pytest.mark.parametrize("model", SEQUENCE_MODELS)
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_ensemble_batch_matches_eager(esm2_server, protocol, model, proteins, expected):
    embedding, residues = infer_sequences(esm2_server, protocol, proteins, model)
    assert embedding.shape == (len(proteins), expected[0][0].shape[0])
    for row, (protein, (want_embedding, want_residues)) in enumerate(zip(proteins, expected)):
        assert_close(embedding[row], want_embedding, f"{protocol} batch EMBEDDING row {row}")
        assert_close(residues[row, : len(protein) + 2], want_residues, f"{protocol} batch residues row {row}")


NETWORK_NAMES = {
    "esm2_onnx": (("INPUT_IDS", "ATTENTION_MASK"), ("EMBEDDING", "RESIDUE_EMBEDDINGS")),
    "esm2_torchscript": (("INPUT_IDS__0", "ATTENTION_MASK__1"), ("EMBEDDING__0", "RESIDUE_EMBEDDINGS__1")),
}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("model", sorted(NETWORK_NAMES))
def test_networks_fed_token_ids_match_eager(esm2_server, protocol, model, proteins, eager):
    client = make_client(esm2_server, protocol)
    module = CLIENTS[protocol]
    input_names, output_names = NETWORK_NAMES[model]
    batches = [proteins[:1], proteins[2:9], proteins[-4:]]  # batch 1, a mixed batch, long ones
    for batch in batches:
        arrays = encode_batch(batch)
        inputs = []
        for name, array in zip(input_names, arrays):
            tensor = module.InferInput(name, list(array.shape), "INT64")
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        result = client.infer(model, inputs)
        for name, wanted in zip(output_names, eager(*arrays)):
            assert_close(result.as_numpy(name), wanted, f"{model} {protocol} {name} batch {len(batch)}")


BAD_SEQUENCES = {
    "invalid residue": ("MKTAYI1AKQR", ["invalid residue '1' at position 7"]),
    "empty": ("", ["empty"]),
    "too long": ("A" * (MAX_RESIDUES + 1), [f"{MAX_RESIDUES + 1} residues", f"limit is {MAX_RESIDUES}"]),
}


@pytest.mark.parametrize("model", SEQUENCE_MODELS)
@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("case", sorted(BAD_SEQUENCES))
def test_bad_sequences_are_invalid_arg_and_the_server_stays_ready(esm2_server, protocol, case, model):
    sequence, fragments = BAD_SEQUENCES[case]
    with pytest.raises(InferenceServerException) as error:
        infer_sequences(esm2_server, protocol, [sequence], model)
    status = error.value.status()
    assert status == ("400" if protocol == "http" else "StatusCode.INVALID_ARGUMENT"), status
    for fragment in fragments:
        assert fragment in error.value.message()
    client = make_client(esm2_server, protocol)
    assert client.is_server_ready() and client.is_model_ready(model)


@pytest.mark.parametrize("model", SEQUENCE_MODELS)
def test_a_bad_request_does_not_fail_its_batch_mates(esm2_server, model, proteins, expected):
    requests = [[proteins[3]], ["MKT*"], [proteins[4]], [""], [proteins[5]]]

    def send(sequences):
        try:
            return infer_sequences(esm2_server, "grpc", sequences, model)
        except InferenceServerException as error:
            return error

    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        outcomes = list(pool.map(send, requests))
    assert [isinstance(outcome, InferenceServerException) for outcome in outcomes] == [False, True, False, True, False]
    for outcome, index in zip((outcomes[0], outcomes[2], outcomes[4]), (3, 4, 5)):
        assert_close(outcome[0][0], expected[index][0], f"good request {index}")


def _network_counts(server) -> tuple[int, int]:
    stats = make_client(server, "grpc").get_inference_statistics("esm2_onnx", as_json=True)["model_stats"][0]
    return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))


def test_bls_batches_random_length_traffic_for_the_network(esm2_server, proteins, expected):
    """Concurrent single-sequence requests of mixed lengths reach esm2_onnx in fewer, larger executions."""
    order = [index % len(proteins) for index in range(24)]
    before = _network_counts(esm2_server)
    with ThreadPoolExecutor(max_workers=len(order)) as pool:
        results = list(pool.map(lambda i: infer_sequences(esm2_server, "grpc", [proteins[i]], "esm2_bls"), order))
    after = _network_counts(esm2_server)
    for index, (embedding, _) in zip(order, results):
        assert_close(embedding[0], expected[index][0], f"esm2_bls protein {index}")
    inferences, executions = after[0] - before[0], after[1] - before[1]
    assert inferences == len(order)
    assert executions < inferences, f"no batching: {executions} executions for {inferences} sequences"


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("wanted", [("EMBEDDING",), ("RESIDUE_EMBEDDINGS",)])
def test_bls_answers_exactly_the_requested_outputs(esm2_server, protocol, wanted, proteins, expected):
    """One request at a time: esm2_bls hands the network's tensors on as its response, only those asked for."""
    client = make_client(esm2_server, protocol)
    outputs = [CLIENTS[protocol].InferRequestedOutput(name) for name in wanted]
    for index in (0, 2, len(proteins) - 1):
        result = client.infer("esm2_bls", [sequence_input(protocol, [proteins[index]])], outputs=outputs)
        got = {name: result.as_numpy(name) for name in ("EMBEDDING", "RESIDUE_EMBEDDINGS")}
        assert {name for name, array in got.items() if array is not None} == set(wanted)
        tokens = len(proteins[index]) + 2
        if "EMBEDDING" in wanted:
            assert got["EMBEDDING"].shape == (1, expected[index][0].shape[0])
            assert_close(got["EMBEDDING"][0], expected[index][0], f"{protocol} EMBEDDING protein {index}")
        else:
            residues = got["RESIDUE_EMBEDDINGS"]
            assert residues.shape[0] == 1 and residues.shape[1] >= tokens
            assert_close(residues[0, :tokens], expected[index][1], f"{protocol} RESIDUE_EMBEDDINGS protein {index}")
            assert not np.any(residues[0, tokens:]), "rows beyond the sequence (padding) must be zero"
    client.close()

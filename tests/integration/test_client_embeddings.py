"""The client against a real local tritonserver: HTTP, gRPC and asyncio agree bitwise and match eager PyTorch."""

from __future__ import annotations

import asyncio
import os
import socket
import time

import numpy as np
import pytest

from tritonfleet.client import (
    AsyncEmbeddingClient,
    ClientConfig,
    EmbeddingClient,
    InvalidRequestError,
    InvalidSequenceError,
    ModelNotFoundError,
    RetryPolicy,
    ServerUnavailableError,
)
from tritonfleet.contract.esm2_tokens import encode_batch, random_proteins

EAGER_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def proteins() -> list[str]:
    return random_proteins(24, np.random.default_rng(11), min_length=1, max_length=200)


@pytest.fixture(scope="module")
def eager_model():
    """The eager module with the weights the served repository was exported from (random init, seed 0)."""
    import torch

    from tritonfleet.export.esm2.model import build_esm2

    torch.set_num_threads(1)
    return build_esm2(random_init=os.environ.get("TRITONFLEET_TEST_ESM2_SIZE", "8M"), seed=0)


def eager_outputs(model, sequences: list[str]) -> tuple[np.ndarray, np.ndarray]:
    import torch

    input_ids, attention_mask = encode_batch(sequences, buckets=None)
    with torch.no_grad():
        embedding, residues = model(torch.from_numpy(input_ids), torch.from_numpy(attention_mask))
    return embedding.numpy(), residues.numpy()


def config_for(server, protocol: str, **overrides) -> ClientConfig:
    url = server.http_url if protocol == "http" else server.grpc_url
    return ClientConfig(url=url, protocol=protocol, timeout_s=120, **overrides)


def embed_everywhere(server, sequences: list[str], residues: bool = False) -> dict[str, object]:
    """The same call through sync HTTP, sync gRPC, asyncio HTTP and asyncio gRPC."""
    results: dict[str, object] = {}
    for protocol in ("http", "grpc"):
        with EmbeddingClient(config_for(server, protocol)) as client:
            results[protocol] = client.embed_residues(sequences) if residues else client.embed(sequences)

        async def run_async(protocol: str = protocol) -> object:
            async with AsyncEmbeddingClient(config_for(server, protocol)) as client:
                return await (client.embed_residues(sequences) if residues else client.embed(sequences))

        results[f"async-{protocol}"] = asyncio.run(run_async())
    return results


def test_health_metadata_and_spec_come_from_the_server(esm2_server) -> None:
    with EmbeddingClient(config_for(esm2_server, "grpc")) as client:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready()
        spec = client.model_spec()
        assert spec.feed == "sequences" and spec.inputs == {"SEQUENCE": "SEQUENCE"}
        assert spec.max_batch_size == client.model_config()["max_batch_size"]
    with EmbeddingClient(config_for(esm2_server, "http", model="esm2_torchscript")) as client:
        spec = client.model_spec()
        assert spec.feed == "tokens" and spec.inputs["INPUT_IDS"] == "INPUT_IDS__0"
        assert spec.output_name("EMBEDDING") == "EMBEDDING__0"


def test_all_transports_give_bitwise_equal_embeddings_within_1e_4_of_eager(esm2_server, proteins, eager_model) -> None:
    results = embed_everywhere(esm2_server, proteins)
    reference = results["http"]
    assert reference.shape == (len(proteins), eager_model.hidden_size) and reference.dtype == np.float32
    for name, embeddings in results.items():
        np.testing.assert_array_equal(embeddings, reference, err_msg=f"{name} differs from http")
    eager_embedding, _ = eager_outputs(eager_model, proteins)
    np.testing.assert_allclose(reference, eager_embedding, atol=EAGER_TOLERANCE, rtol=0)


def test_residue_embeddings_are_rows_1_to_l_on_every_transport(esm2_server, proteins, eager_model) -> None:
    results = embed_everywhere(esm2_server, proteins, residues=True)
    reference = results["http"]
    assert [r.shape for r in reference] == [(len(p), eager_model.hidden_size) for p in proteins]
    for name, residues in results.items():
        for index, (got, want) in enumerate(zip(residues, reference)):
            np.testing.assert_array_equal(got, want, err_msg=f"{name}, sequence {index}")
    _, eager_residues = eager_outputs(eager_model, proteins)
    for index, protein in enumerate(proteins):
        np.testing.assert_allclose(reference[index], eager_residues[index, 1 : len(protein) + 1], atol=EAGER_TOLERANCE)
    with EmbeddingClient(config_for(esm2_server, "http")) as client:
        pooled = client.embed(proteins)
    np.testing.assert_allclose(np.stack([r.mean(axis=0) for r in reference]), pooled, atol=1e-5)


@pytest.mark.parametrize("model", ["esm2_onnx", "esm2_torchscript"])
def test_raw_variants_fed_token_ids_match_the_ensemble(esm2_server, proteins, model) -> None:
    with EmbeddingClient(config_for(esm2_server, "grpc")) as ensemble:
        expected = ensemble.embed(proteins)
    with EmbeddingClient(config_for(esm2_server, "grpc", model=model)) as raw:
        assert raw.model_spec().feed == "tokens"
        got = raw.embed(proteins)
        residues = raw.embed_residues(proteins[:3])
    np.testing.assert_allclose(got, expected, atol=EAGER_TOLERANCE, rtol=0)
    assert [r.shape[0] for r in residues] == [len(p) for p in proteins[:3]]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_150_sequences_are_split_by_max_batch_size_and_returned_in_input_order(
    esm2_server, eager_model, protocol
) -> None:
    sequences = random_proteins(150, np.random.default_rng(5), min_length=5, max_length=60)
    with EmbeddingClient(config_for(esm2_server, protocol, max_in_flight=3)) as client:
        max_batch_size = client.model_spec().max_batch_size
        assert max_batch_size < 150, "the test needs a model that cannot take 150 sequences in one request"
        embeddings = client.embed(sequences)
    eager_embedding, _ = eager_outputs(eager_model, sequences)
    np.testing.assert_allclose(embeddings, eager_embedding, atol=EAGER_TOLERANCE, rtol=0)


def test_async_client_splits_large_batches_too(esm2_server, eager_model) -> None:
    sequences = random_proteins(150, np.random.default_rng(6), min_length=5, max_length=60)

    async def run() -> np.ndarray:
        async with AsyncEmbeddingClient(config_for(esm2_server, "http", max_in_flight=2)) as client:
            return await client.embed(sequences)

    eager_embedding, _ = eager_outputs(eager_model, sequences)
    np.testing.assert_allclose(asyncio.run(run()), eager_embedding, atol=EAGER_TOLERANCE, rtol=0)


def test_invalid_sequences_are_named_locally_and_rejected_by_the_server_without_retries(esm2_server) -> None:
    with EmbeddingClient(config_for(esm2_server, "http")) as client, pytest.raises(InvalidSequenceError) as caught:
        client.embed(["MKT", "MKZ1"], ids=["ok", "broken"])
    assert "sequence 1 (id 'broken'): invalid residue '1' at position 4" in str(caught.value)
    for protocol in ("http", "grpc"):
        config = config_for(esm2_server, protocol, validate=False, retry=RetryPolicy(max_attempts=5, initial_delay_s=2))
        with EmbeddingClient(config) as client:
            started = time.monotonic()
            with pytest.raises(InvalidRequestError) as server_caught:
                client.embed(["MKT", "MKJ"])
            assert time.monotonic() - started < 2, "an INVALID_ARG answer must not be retried (backoff >= 2 s)"
        assert "J" in server_caught.value.server_message


def test_unknown_model_is_a_clear_error(esm2_server) -> None:
    with EmbeddingClient(config_for(esm2_server, "grpc", model="esm3")) as client, pytest.raises(ModelNotFoundError):
        client.embed(["MKT"])


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_server_that_is_down_gives_a_clear_error_after_bounded_retries(protocol) -> None:
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    policy = RetryPolicy(max_attempts=3, initial_delay_s=0.05, max_elapsed_s=10)
    with EmbeddingClient(ClientConfig(url=f"127.0.0.1:{port}", protocol=protocol, timeout_s=5, retry=policy)) as client:
        assert not client.is_server_live()
        with pytest.raises(ServerUnavailableError, match=r"gave up after 3 attempt\(s\)") as caught:
            client.embed(["MKT"])
    assert caught.value.attempts == 3

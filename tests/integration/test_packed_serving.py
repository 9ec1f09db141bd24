"""Packed (ragged) batches served by a real local tritonserver: `esm2_onnx_packed` (allow_ragged_batch on INPUT_IDS,
batch input BATCH_ACCUMULATED_ELEMENT_COUNT built by our Python-based onnxruntime backend) answers each sequence's
EMBEDDING equal, within 1e-5, to the padded network run on that sequence alone, over HTTP and gRPC."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tritonfleet.contract.engines import open_engine
from tritonfleet.contract.esm2_tokens import encode_batch, random_proteins
from tritonfleet.contract.model_config import read_config, write_config
from tritonfleet.export.esm2 import export_esm2
from tritonfleet.export.parity import INVARIANCE_TOLERANCE

ESM2_TEST_SIZE = os.environ.get("TRITONFLEET_TEST_ESM2_SIZE", "8M")
PACKED_MODEL = "esm2_onnx_packed"
PADDED_MODEL = "esm2_onnx"
CLIENTS = {"http": httpclient, "grpc": grpcclient}
# The batcher waits (up to this long) for this many requests, so the concurrent requests below share executions.
BATCH = 8
QUEUE_DELAY_US = 2_000_000


@pytest.fixture(scope="module")
def packed_repository(tmp_path_factory):
    """fp32 ESM-2 with the packed model forced on (GPU plans get it by default), ONNX only."""
    output = tmp_path_factory.mktemp("packed_repository")
    report = export_esm2(
        output, random_init=ESM2_TEST_SIZE, precision="fp32", formats=("onnx",), packed=True, execution_cap=False
    )
    assert report.invariance["onnx_packed"] <= INVARIANCE_TOLERANCE  # the export's own check of the packed model
    config = read_config(output / PACKED_MODEL)
    config.ClearField("dynamic_batching")
    config.dynamic_batching.preferred_batch_size.append(BATCH)
    config.dynamic_batching.max_queue_delay_microseconds = QUEUE_DELAY_US
    write_config(config, output / PACKED_MODEL)
    return output


@pytest.fixture(scope="module")
def server(packed_repository, triton_server_factory):
    return triton_server_factory(
        packed_repository, model_control_mode="explicit", load_models=(PADDED_MODEL, PACKED_MODEL)
    )


@pytest.fixture(scope="module")
def proteins() -> list[str]:
    rng = np.random.default_rng(19)
    return ["M", *random_proteins(BATCH - 2, rng, 2, 400), "W" * 700]


@pytest.fixture(scope="module")
def alone(packed_repository, proteins) -> np.ndarray:
    """The padded network's EMBEDDING of each protein run alone (no padding), in-process."""
    with open_engine(packed_repository / PADDED_MODEL / "1" / "model.onnx", "onnx", threads=1) as engine:
        rows = []
        for protein in proteins:
            ids, mask = encode_batch([protein], buckets=None)
            rows.append(engine.run({"INPUT_IDS": ids, "ATTENTION_MASK": mask}, ["EMBEDDING"])["EMBEDDING"][0])
    return np.stack(rows)


def _client(server, protocol: str):
    if protocol == "http":
        return httpclient.InferenceServerClient(server.http_url.removeprefix("http://"), network_timeout=300)
    return grpcclient.InferenceServerClient(server.grpc_url.removeprefix("grpc://"))


def _embed_packed(server, protocol: str, protein: str) -> np.ndarray:
    """One unpadded sequence per request, [1, tokens]: Triton packs concurrent requests into one execution."""
    module = CLIENTS[protocol]
    ids, _ = encode_batch([protein], buckets=None)
    tensor = module.InferInput("INPUT_IDS", list(ids.shape), "INT64")
    tensor.set_data_from_numpy(ids)
    client = _client(server, protocol)
    try:
        result = client.infer(PACKED_MODEL, [tensor], outputs=[module.InferRequestedOutput("EMBEDDING")])
        return result.as_numpy("EMBEDDING")
    finally:
        client.close()


def _execution_counts(server) -> tuple[int, int]:
    client = httpclient.InferenceServerClient(server.http_url.removeprefix("http://"))
    try:
        stats = client.get_inference_statistics(PACKED_MODEL)["model_stats"][0]
    finally:
        client.close()
    return int(stats["inference_count"]), int(stats["execution_count"])


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_packed_batches_embed_each_sequence_as_if_alone(server, protocol, proteins, alone):
    inferences_before, executions_before = _execution_counts(server)
    with ThreadPoolExecutor(max_workers=len(proteins)) as pool:
        answers = list(pool.map(lambda protein: _embed_packed(server, protocol, protein), proteins))
    inferences, executions = _execution_counts(server)
    # the requests were packed: fewer executions than sequences (the batcher waits for BATCH of them)
    assert inferences - inferences_before == len(proteins)
    assert executions - executions_before < len(proteins)
    for index, answer in enumerate(answers):
        assert answer.shape == (1, alone.shape[1])
        difference = float(np.abs(answer[0] - alone[index]).max())
        assert difference <= INVARIANCE_TOLERANCE, f"protein {index}: {difference:.2e} from alone"


def test_the_packed_model_declares_ragged_tokens_and_its_batch_input(server):
    client = httpclient.InferenceServerClient(server.http_url.removeprefix("http://"))
    try:
        config = client.get_model_config(PACKED_MODEL)
    finally:
        client.close()
    (tokens,) = config["input"]
    assert tokens["name"] == "INPUT_IDS" and tokens["allow_ragged_batch"] is True
    (batch_input,) = config["batch_input"]
    assert batch_input["kind"] == "BATCH_ACCUMULATED_ELEMENT_COUNT" and batch_input["target_name"] == ["SEQUENCE_ENDS"]
    assert [output["name"] for output in config["output"]] == ["EMBEDDING"]


def test_the_gpu_checks_packed_step_passes_on_cpu(server, proteins):
    from tritonfleet.loadtest.packed_check import served_packed_check

    check = served_packed_check(server.grpc_url, proteins[:4], device="cpu", concurrency=4)
    assert check.passed, check
    assert check.padded_seq_per_s > 0 and check.packed_seq_per_s > 0
    assert "esm2_onnx_packed" in "\n".join(check.markdown("fp32"))

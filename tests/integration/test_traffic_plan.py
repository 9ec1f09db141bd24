"""The shipped traffic plan on a real server (issue 18): executions capped by the plan, interactive requests routed
to the reserved network copy, repeats answered from Triton's response cache with identical vectors, and the reason
only EMBEDDING-only entry models are cached (Triton's cache key ignores the requested outputs). No timing
assertions: the verdicts are Triton's own statistics, metrics and the outputs."""

from __future__ import annotations

import os
import shutil
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil
import pytest
import tritonclient.http as httpclient

from tritonfleet.client import ClientConfig, EmbeddingClient
from tritonfleet.client.core import sequence_array
from tritonfleet.contract.esm2.pipeline import EMBEDDING_MODEL, ENSEMBLE_MODEL, INTERACTIVE_MODEL
from tritonfleet.contract.esm2_tokens import random_proteins
from tritonfleet.contract.model_config import CONFIG_FILENAME
from tritonfleet.deploy.local.stubs import list_stub_processes
from tritonfleet.export.esm2 import export_esm2

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def planned_server(esm2_repository, triton_server_factory, tmp_path_factory):
    """The session repository's weights under the shipped CPU plan's configs (the session repository itself keeps
    batches of 64 for the batched-parity tests): export's own configs, capped, with the interactive copy."""
    repository = tmp_path_factory.mktemp("planned") / "repository"
    shutil.copytree(esm2_repository, repository)
    size = os.environ.get("TRITONFLEET_TEST_ESM2_SIZE", "8M")
    export_esm2(repository, random_init=size, gpus="none", precision="fp32", configs_only=True)
    return triton_server_factory(repository)


_RNG = np.random.default_rng(18)


def fresh_proteins(count: int) -> list[str]:
    """Sequences no other test sent (the session server's cache must not have seen them)."""
    return random_proteins(count, _RNG, min_length=40, max_length=200)


def statistics(server, model: str) -> dict:
    with httpclient.InferenceServerClient(server.http_url) as client:
        return client.get_inference_statistics(model)["model_stats"][0]


def counts(server, model: str) -> tuple[int, int, int]:
    """(successes, cache hits, executions) of a model, from Triton's statistics."""
    stats = statistics(server, model)
    inference = stats["inference_stats"]
    return inference["success"]["count"], inference["cache_hit"]["count"], stats["execution_count"]


def settled(read: Callable[[], tuple[int, ...]], done: Callable[[tuple[int, ...]], bool], limit_s: float = 30.0):
    """Triton records an ensemble's statistics as its response completes, which may be just after the client got
    it: read until `done` holds (polled, bounded), then return the reading for the exact assertions."""
    deadline = time.monotonic() + limit_s
    while True:
        value = read()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def cache_hits_metric(server, model: str) -> float:
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    prefix = f'nv_cache_num_hits_per_model{{model="{model}",version="1"}} '
    return sum(float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix))


def raw_infer(url: str, model: str, sequences: list[str], outputs: list[str]) -> dict[str, np.ndarray | None]:
    with httpclient.InferenceServerClient(url) as client:
        tensor = httpclient.InferInput("SEQUENCE", [len(sequences), 1], "BYTES")
        tensor.set_data_from_numpy(sequence_array(sequences))
        answer = client.infer(model, [tensor], outputs=[httpclient.InferRequestedOutput(name) for name in outputs])
        return {name: answer.as_numpy(name) for name in ("EMBEDDING", "RESIDUE_EMBEDDINGS")}


def test_the_served_plan_caps_each_execution_and_the_client_splits_to_it(planned_server):
    with EmbeddingClient(ClientConfig(url=planned_server.http_url, priority="bulk")) as client:
        spec = client.entry_spec("EMBEDDING")
        assert spec.name == EMBEDDING_MODEL
        assert spec.max_batch_size == 1 and spec.execution_token_budget == 1024  # the CPU plan on any core count
        sequences = fresh_proteins(5)
        before = counts(planned_server, EMBEDDING_MODEL)
        vectors = client.embed(sequences)
        after = settled(lambda: counts(planned_server, EMBEDDING_MODEL), lambda now: now[0] - before[0] >= 5)
    assert vectors.shape == (5, spec.embedding_dim)
    assert after[0] - before[0] == 5  # five requests of one sequence, none merged
    with pytest.raises(Exception, match="batch-size must be <= 1"):  # the server itself refuses a larger execution
        raw_infer(planned_server.http_url, ENSEMBLE_MODEL, fresh_proteins(2), ["EMBEDDING"])


def test_interactive_requests_reach_the_reserved_copy_and_repeats_come_from_the_cache(planned_server):
    (protein,) = fresh_proteins(1)
    with EmbeddingClient(ClientConfig(url=planned_server.http_url)) as client:  # the default class: interactive
        assert client.entry_spec("EMBEDDING").name == INTERACTIVE_MODEL
        before = counts(planned_server, INTERACTIVE_MODEL)
        hits_before = cache_hits_metric(planned_server, INTERACTIVE_MODEL)
        first = client.embed([protein])
        middle = settled(lambda: counts(planned_server, INTERACTIVE_MODEL), lambda now: now[0] > before[0])
        second = client.embed([protein])
        after = settled(lambda: counts(planned_server, INTERACTIVE_MODEL), lambda now: now[0] > middle[0])
        residues = client.embed_residues([protein])[0]
    reserve = statistics(planned_server, "esm2_onnx_interactive")["inference_stats"]["success"]["count"]
    assert reserve >= 1  # the interactive ensemble ran the reserved network copy
    assert middle[1] == before[1] and after[1] == middle[1] + 1  # the repeat is a cache hit
    assert after[2] == middle[2]  # and executed nothing
    assert cache_hits_metric(planned_server, INTERACTIVE_MODEL) >= hits_before + 1
    np.testing.assert_array_equal(second, first)
    computed = raw_infer(planned_server.http_url, ENSEMBLE_MODEL, [protein], ["EMBEDDING"])["EMBEDDING"]
    np.testing.assert_array_equal(first, computed)  # cached == computed by the uncached pipeline
    assert residues.shape == (len(protein), first.shape[1])  # per-residue requests go to esm2 (not cached)


@pytest.mark.parametrize("first_kind", ["EMBEDDING", "RESIDUE_EMBEDDINGS"])
def test_embed_then_embed_residues_of_one_sequence_give_the_right_outputs(planned_server, first_kind):
    (protein,) = fresh_proteins(1)
    with EmbeddingClient(ClientConfig(url=planned_server.http_url)) as client:
        calls = {
            "EMBEDDING": lambda: client.embed([protein])[0],
            "RESIDUE_EMBEDDINGS": lambda: client.embed_residues([protein])[0],
        }
        order = [first_kind, *(kind for kind in calls if kind != first_kind)]
        results = {kind: calls[kind]() for kind in order}
        again = {kind: calls[kind]() for kind in order}
    assert results["EMBEDDING"].shape == (results["RESIDUE_EMBEDDINGS"].shape[1],)
    assert results["RESIDUE_EMBEDDINGS"].shape[0] == len(protein)
    for kind in order:
        np.testing.assert_array_equal(again[kind], results[kind])


def test_why_esm2_itself_is_not_cached(esm2_repository, triton_server_factory, tmp_path):
    """Pins Triton 2.51's behaviour: with the cache on a model with two outputs, a request for one output then a
    request for the other (same sequence) answers the second from the first's cached response."""
    repository = tmp_path / "cached_esm2"
    shutil.copytree(esm2_repository, repository)
    config = repository / ENSEMBLE_MODEL / CONFIG_FILENAME
    config.write_text(config.read_text() + "response_cache {\n  enable: true\n}\n")
    server = triton_server_factory(
        repository, model_control_mode="explicit", load_models=("esm2_tokenizer", "esm2_onnx", ENSEMBLE_MODEL)
    )
    one, other = fresh_proteins(2)
    first = raw_infer(server.http_url, ENSEMBLE_MODEL, [one], ["EMBEDDING"])
    wrong = raw_infer(server.http_url, ENSEMBLE_MODEL, [one], ["RESIDUE_EMBEDDINGS"])
    assert first["EMBEDDING"] is not None
    assert wrong["RESIDUE_EMBEDDINGS"] is None and wrong["EMBEDDING"] is not None  # the cached, wrong output
    reverse = raw_infer(server.http_url, ENSEMBLE_MODEL, [other], ["RESIDUE_EMBEDDINGS"])
    wrong = raw_infer(server.http_url, ENSEMBLE_MODEL, [other], ["EMBEDDING"])
    assert reverse["RESIDUE_EMBEDDINGS"] is not None and wrong["EMBEDDING"] is None
    hits = settled(
        lambda: (statistics(server, ENSEMBLE_MODEL)["inference_stats"]["cache_hit"]["count"],), lambda now: now[0] >= 2
    )
    assert hits == (2,)


def test_bulk_instances_run_at_a_lower_os_priority_than_the_reserve(planned_server):
    stubs = {stub.instance: stub.pid for stub in list_stub_processes(planned_server.pid)}
    bulk = [pid for instance, pid in stubs.items() if instance.startswith("esm2_onnx_0")]
    (reserve,) = [pid for instance, pid in stubs.items() if instance.startswith("esm2_onnx_interactive")]

    def niceness(pid: int) -> set[int]:  # every thread of the stub (the engine's threads included)
        return {os.getpriority(os.PRIO_PROCESS, thread.id) for thread in psutil.Process(pid).threads()}

    assert len(niceness(reserve)) == 1
    expected = {min(19, niceness(reserve).pop() + 10)}  # cpu_nice 10 on top of the server's (19 at most)
    assert bulk and all(niceness(pid) == expected for pid in bulk)


def test_repository_copy_keeps_the_interactive_weights(esm2_repository):
    onnx, copy = (esm2_repository / name / "1" / "model.onnx" for name in ("esm2_onnx", "esm2_onnx_interactive"))
    assert copy.is_file() and copy.stat().st_size == onnx.stat().st_size
    assert Path(copy).read_bytes() == Path(onnx).read_bytes()

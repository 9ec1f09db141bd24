"""Priorities and deadlines on a real server: who overtakes whom, where the level travels, how deadlines refuse.

One `esm2_onnx` instance and one `esm2_bls` instance make the queues real: bulk requests (8 proteins each, a
second or so of compute) are queued first, the test waits until the server reports them pending, then sends the
request under test and records the order in which answers come back. No timing assertions: the verdicts are orders
of completion and error types.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tritonfleet.client import AsyncEmbeddingClient, ClientConfig, DeadlineExceededError, EmbeddingClient, RetryPolicy
from tritonfleet.client.core import sequence_array
from tritonfleet.contract.priorities import PRIORITY_LEVELS
from tritonfleet.contract.serving_plan import BatchingPlan, PriorityPlan
from tritonfleet.deploy.local import LocalTritonServer
from tritonfleet.export.devices import plan_devices
from tritonfleet.loadtest.run import EXIT_RUN_FAILED
from tritonfleet.loadtest.run import main as run_main
from tritonfleet.loadtest.workload import generate_sequences

MAX_BATCH = 8  # one bulk request fills a batch: queued bulk requests cannot merge into one execution
BULK_REQUESTS = 6
BULK_SEQUENCES = generate_sequences(MAX_BATCH * BULK_REQUESTS, "fixed-400", seed=7)
SHORT_PROTEIN = "MQIFVKTLTGKTITLEVEPSDTIENVKAKIQDKEGIPPDQQRLIFAG"
WAIT_S = 120.0
# The request under test is sent once this many bulk requests wait at the model (one more executes). The others may
# still be on their way (e.g. in the ensemble's tokenizer step), so at most this many can finish after it:
QUEUED = 4
NOT_YET_QUEUED = BULK_REQUESTS - QUEUED - 1


@pytest.fixture(scope="module")
def priority_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tritonfleet.export.esm2 import export_esm2

    output = tmp_path_factory.mktemp("priorities") / "repository"
    # A long interactive budget: these tests are about order, not about the budget refusing waiting requests.
    batching = BatchingPlan(
        max_batch_size=MAX_BATCH,
        preferred_batch_sizes=(),
        max_queue_delay_us=0,
        priorities=PriorityPlan(interactive_budget_us=600_000_000),
    )
    export_esm2(
        output,
        random_init="8M",
        precision="fp32",
        devices=plan_devices("none", cpu_instances=1, cpu_threads=1),
        batching=batching,
        tokenizer_batching=batching,
        formats=("onnx",),
        parity_samples=0,
    )
    return output


@pytest.fixture(scope="module")
def server(priority_repository: Path, triton_server_factory) -> LocalTritonServer:
    models = ("esm2_tokenizer", "esm2_onnx", "esm2", "esm2_bls")
    return triton_server_factory(priority_repository, model_control_mode="explicit", load_models=models)


class Ledger:
    """Sends requests with raw tritonclient (explicit priority levels) and records the order answers arrive in."""

    def __init__(self, server: LocalTritonServer) -> None:
        self.server = server
        self.client = grpcclient.InferenceServerClient(server.grpc_url)
        self.finished: list[str] = []
        self.failures: dict[str, Exception] = {}
        self._lock = threading.Lock()
        self._answers = threading.Semaphore(0)
        self._sent = 0
        self._collected = 0

    def send(self, label: str, model: str, sequences: list[str], level: int = 0) -> None:
        tensor = grpcclient.InferInput("SEQUENCE", [len(sequences), 1], "BYTES")
        tensor.set_data_from_numpy(sequence_array(sequences))

        def done(result, error, label=label) -> None:
            with self._lock:
                self.finished.append(label)
                if error is not None:
                    self.failures[label] = error
            self._answers.release()

        outputs = [grpcclient.InferRequestedOutput("EMBEDDING")]
        self.client.async_infer(model, [tensor], done, outputs=outputs, priority=level, client_timeout=WAIT_S)
        self._sent += 1

    def send_bulk(self, model: str = "esm2", level: int = PRIORITY_LEVELS["bulk"]) -> None:
        for index in range(BULK_REQUESTS):
            rows = BULK_SEQUENCES[index * MAX_BATCH : (index + 1) * MAX_BATCH]
            self.send(f"bulk{index}", model, rows, level)

    def record(self, label: str, call) -> threading.Thread:
        """Runs `call` (e.g. our client's embed) in a thread and records when it returns or raises."""

        def run() -> None:
            error = None
            try:
                call()
            except Exception as caught:  # noqa: BLE001 - recorded and checked by the test
                error = caught
            with self._lock:
                self.finished.append(label)
                if error is not None:
                    self.failures[label] = error
            self._answers.release()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self._sent += 1
        return thread

    def wait_all(self) -> None:
        deadline = time.monotonic() + WAIT_S
        while self._collected < self._sent:
            assert self._answers.acquire(timeout=max(0.1, deadline - time.monotonic())), "a request got no answer"
            self._collected += 1

    def close(self) -> None:
        self.client.close()


@pytest.fixture
def ledger(server: LocalTritonServer):
    ledger = Ledger(server)
    yield ledger
    ledger.wait_all()
    ledger.close()


def pending(server: LocalTritonServer, model: str) -> int:
    """Requests waiting in `model`'s queue (Triton's pending-request gauge: queued, not yet executing)."""
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        text = response.read().decode()
    match = re.search(rf'^nv_inference_pending_request_count{{model="{model}",version="1"}} (\d+)', text, re.M)
    return int(match.group(1)) if match else 0


def wait_until_queued(server: LocalTritonServer, model: str, count: int = QUEUED) -> None:
    """Until at least `count` requests wait in `model`'s queue (behind the one executing)."""
    deadline = time.monotonic() + WAIT_S
    while pending(server, model) < count:
        assert time.monotonic() < deadline, f"{model} never held {count} requests"
        time.sleep(0.02)


def client_for(server: LocalTritonServer, protocol: str, **options) -> EmbeddingClient:
    url = server.http_url if protocol == "http" else server.grpc_url
    return EmbeddingClient(ClientConfig(url=url, protocol=protocol, retry=RetryPolicy(max_attempts=1), **options))


def bulk_after(ledger: Ledger, label: str) -> list[str]:
    """The bulk requests that finished after `label`."""
    return [name for name in ledger.finished[ledger.finished.index(label) :] if name.startswith("bulk")]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_an_interactive_request_overtakes_queued_bulk_requests_through_the_ensemble(server, ledger, protocol):
    ledger.send_bulk("esm2")
    wait_until_queued(server, "esm2_onnx")  # the network runs one, four or more wait behind it
    with client_for(server, protocol, model="esm2") as client:  # priority "interactive" is the client's default
        ledger.record("interactive", lambda: client.embed([SHORT_PROTEIN])).join(WAIT_S)
        ledger.wait_all()
    assert not ledger.failures, ledger.failures
    # The level travelled from the ensemble request to its esm2_onnx step and put it ahead of the waiting bulk.
    assert len(bulk_after(ledger, "interactive")) >= 2, ledger.finished


def test_an_unlabelled_request_waits_behind_queued_bulk_requests(server, ledger):
    ledger.send_bulk("esm2")
    wait_until_queued(server, "esm2_onnx")
    ledger.send("unlabelled", "esm2", [SHORT_PROTEIN])  # no priority: the default level, bulk
    ledger.wait_all()
    assert not ledger.failures, ledger.failures
    assert len(bulk_after(ledger, "unlabelled")) <= NOT_YET_QUEUED, ledger.finished  # it queued behind the rest


def test_an_interactive_request_overtakes_bulk_requests_queued_at_the_bls_model(server, ledger):
    ledger.send_bulk("esm2_bls")
    wait_until_queued(server, "esm2_bls")  # one BLS instance busy with one request, the rest queued in front of it
    ledger.send("interactive", "esm2_bls", [SHORT_PROTEIN], PRIORITY_LEVELS["interactive"])
    ledger.wait_all()
    assert not ledger.failures, ledger.failures
    assert len(bulk_after(ledger, "interactive")) >= 2, ledger.finished


def test_bls_network_calls_take_the_network_default_level(server, ledger):
    """Triton 24.10's python backend cannot give a BLS request a priority (docs/design.md), so the interactive
    request's network call queues at esm2_onnx's default level, behind bulk requests already waiting there. If this
    fails after a Triton upgrade, BLS requests can carry a priority: forward it in esm2_bls/1/model.py."""
    ledger.send_bulk("esm2")
    wait_until_queued(server, "esm2_onnx")
    ledger.send("interactive", "esm2_bls", [SHORT_PROTEIN], PRIORITY_LEVELS["interactive"])
    ledger.wait_all()
    assert not ledger.failures, ledger.failures
    assert len(bulk_after(ledger, "interactive")) <= NOT_YET_QUEUED, ledger.finished  # no overtaking at esm2_onnx


@pytest.mark.parametrize(("protocol", "model"), [("http", "esm2"), ("grpc", "esm2"), ("http", "esm2_bls")])
def test_a_deadline_shorter_than_the_queue_is_refused_with_a_clear_error(server, ledger, protocol, model):
    ledger.send_bulk("esm2")
    wait_until_queued(server, "esm2_onnx")  # seconds of bulk work ahead of a bulk-priority request
    client = client_for(server, protocol, model=model, priority="bulk", deadline_s=0.3)
    with client, pytest.raises(DeadlineExceededError) as caught:
        client.embed([SHORT_PROTEIN])
    assert caught.value.deadline_s == 0.3 and "deadline of 0.3 s exceeded" in str(caught.value)
    if protocol == "http":
        # No client-side cut on sync HTTP: the server's queue refused it, as UNAVAILABLE (through the BLS model
        # too, which forwards the request's timeout to its network call and restores the refusal's status).
        assert "Request timeout expired" in str(caught.value) and caught.value.status == "503", caught.value
    ledger.wait_all()
    assert not ledger.failures, ledger.failures  # the queued work is still served


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_the_asyncio_client_is_refused_at_its_deadline_too(server, ledger, protocol):
    ledger.send_bulk("esm2")
    wait_until_queued(server, "esm2_onnx")
    url = server.http_url if protocol == "http" else server.grpc_url
    config = ClientConfig(
        url=url, protocol=protocol, priority="bulk", deadline_s=0.3, retry=RetryPolicy(max_attempts=1)
    )

    async def embed() -> None:
        async with AsyncEmbeddingClient(config) as client:
            await client.embed([SHORT_PROTEIN])

    with pytest.raises(DeadlineExceededError, match="deadline of 0.3 s exceeded"):
        asyncio.run(embed())
    ledger.wait_all()
    assert not ledger.failures, ledger.failures


def test_a_deadline_that_leaves_time_is_met(server):
    with client_for(server, "grpc", model="esm2", deadline_s=30.0) as client:
        vectors = client.embed([SHORT_PROTEIN, SHORT_PROTEIN[:20]])
    assert vectors.shape[0] == 2 and np.isfinite(vectors).all()


def test_the_mixed_locust_scenario_reports_each_class_and_judges_the_interactive_one(server, tmp_path):
    exit_code = run_main([
        "--host", server.http_url, "--grpc-url", server.grpc_url, "--scenario", "mixed", "-t", "10s",
        "--interactive-users", "1", "--bulk-users", "1", "--bulk-batch", str(MAX_BATCH),
        "--interactive-think-s", "0.2", "--report-dir", str(tmp_path), "--slo-p99-ms", "600000",
    ])  # fmt: skip
    assert exit_code != EXIT_RUN_FAILED
    summary = json.loads((tmp_path / "locust_summary.json").read_text())
    assert set(summary["by_class"]) == {"interactive", "bulk"}
    for traffic_class, row in summary["by_class"].items():
        assert row["successes"] > 0 and row["errors"] == 0, (traffic_class, row)
    assert summary["by_class"]["bulk"]["sequences"] == MAX_BATCH * summary["by_class"]["bulk"]["successes"]
    assert summary["slo"]["traffic_class"] == "interactive" and summary["slo"]["passed"] is (exit_code == 0)
    stats_csv = (tmp_path / "locust_stats.csv").read_text()
    assert "esm2 interactive" in stats_csv and "esm2 bulk" in stats_csv  # Locust's own statistics per class

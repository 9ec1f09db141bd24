"""Back-pressure (bounded queue -> immediate 503/UNAVAILABLE, every request answered) and graceful shutdown (SIGTERM
under load: in-flight requests finish, new ones are refused). A slow python-backend model makes the queue real."""

from __future__ import annotations

import http.client
import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import InferenceServerException

from tests.support.tiny_models import write_model
from tritonfleet.client.config import RetryPolicy
from tritonfleet.client.retry import call_with_retry
from tritonfleet.deploy.local import LocalTritonServer, local_server

MODEL = "slow"
EXECUTE_S = 0.25
SLOW_MODEL_PY = f"""
import time
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        time.sleep({EXECUTE_S})
        return [
            pb_utils.InferenceResponse(
                [pb_utils.Tensor("Y", pb_utils.get_input_tensor_by_name(r, "X").as_numpy() * np.float32(2))]
            )
            for r in requests
        ]
"""
QUEUE_FULL = "Exceeds maximum queue size"


def _write_slow_model(repository: Path, max_queue_size: int) -> Path:
    config = mc.ModelConfig(name=MODEL, backend="python", max_batch_size=4)
    config.input.add(name="X", data_type=mc.TYPE_FP32, dims=[1])
    config.output.add(name="Y", data_type=mc.TYPE_FP32, dims=[1])
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=1)
    config.dynamic_batching.max_queue_delay_microseconds = 1000
    config.dynamic_batching.default_queue_policy.max_queue_size = max_queue_size
    write_model(repository, config)
    (repository / MODEL / "1" / "model.py").write_text(SLOW_MODEL_PY)
    return repository


@pytest.fixture(scope="module")
def bounded_server(tmp_path_factory, triton_server_factory) -> LocalTritonServer:
    repository = _write_slow_model(tmp_path_factory.mktemp("bounded") / "repository", max_queue_size=4)
    return triton_server_factory(repository, exit_timeout_s=5)


def _tensor(value: float) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("X", [1, 1], "FP32")
    tensor.set_data_from_numpy(np.array([[value]], dtype=np.float32))
    return tensor


def _flood(url: str, count: int, timeout_s: float) -> list[tuple[float, float, object]]:
    """`count` concurrent async gRPC requests; returns (value, seconds, result-or-error) for each, in order."""
    client = grpcclient.InferenceServerClient(url)
    answers: list[tuple[float, float, object] | None] = [None] * count
    done = threading.Semaphore(0)
    try:
        for index in range(count):
            started = time.monotonic()

            def callback(result, error, index=index, started=started):
                outcome = error if error is not None else result.as_numpy("Y")
                answers[index] = (float(index), time.monotonic() - started, outcome)
                done.release()

            client.async_infer(MODEL, [_tensor(float(index))], callback, client_timeout=timeout_s)
        deadline = time.monotonic() + timeout_s + 10
        for _ in range(count):
            assert done.acquire(timeout=max(0.1, deadline - time.monotonic())), "a request was never answered"
    finally:
        client.close()
    return [answer for answer in answers if answer is not None]


def test_overload_rejects_at_once_and_answers_every_request_grpc(bounded_server):
    answers = _flood(bounded_server.grpc_url, count=40, timeout_s=30)
    assert len(answers) == 40
    succeeded = [(value, out) for value, _, out in answers if not isinstance(out, Exception)]
    rejected = [(seconds, out) for _, seconds, out in answers if isinstance(out, InferenceServerException)]
    assert len(succeeded) + len(rejected) == 40, [out for _, _, out in answers]
    assert succeeded and rejected, "expected both served and shed requests at 40 concurrent vs a queue of 4"
    for value, output in succeeded:
        assert output.tolist() == [[2 * value]]
    for seconds, error in rejected:
        assert error.status() == "StatusCode.UNAVAILABLE" and QUEUE_FULL in error.message(), error
        # Shed at admission: well before even one execution of the slow model would finish for it.
        assert seconds < 10 * EXECUTE_S, seconds
    assert bounded_server.is_ready()


def test_overload_answers_503_over_http(bounded_server):
    host, port = bounded_server.http_url.rsplit(":", 1)
    body = json.dumps({"inputs": [{"name": "X", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}]})

    def post(_: int) -> tuple[int, str]:
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        try:
            connection.request("POST", f"/v2/models/{MODEL}/infer", body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            return response.status, response.read().decode()
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(post, range(16)))
    statuses = sorted(status for status, _ in answers)
    assert set(statuses) <= {200, 503}, answers
    assert 503 in statuses and 200 in statuses, statuses
    for status, text in answers:
        if status == 503:
            assert QUEUE_FULL in json.loads(text)["error"]


def test_client_backoff_turns_rejections_into_successes(bounded_server):
    """The project client's retry loop (client/retry.py) backs off on UNAVAILABLE: all 24 callers succeed."""
    policy = RetryPolicy(max_attempts=30, initial_delay_s=0.05, max_delay_s=1.0, max_elapsed_s=60)
    attempts = {"count": 0}
    lock = threading.Lock()

    def caller(value: int) -> list[list[float]]:
        client = grpcclient.InferenceServerClient(bounded_server.grpc_url)

        def attempt():
            with lock:
                attempts["count"] += 1
            return client.infer(MODEL, [_tensor(float(value))], client_timeout=30).as_numpy("Y").tolist()

        try:
            return call_with_retry(attempt, policy, f"infer {MODEL}")
        finally:
            client.close()

    with ThreadPoolExecutor(max_workers=24) as pool:
        results = list(pool.map(caller, range(24)))
    assert results == [[[2.0 * value]] for value in range(24)]
    assert attempts["count"] > 24, "no request was rejected: the test did not overload the queue"


# -- graceful shutdown ----------------------------------------------------------------------------------------------


def test_sigterm_lets_in_flight_requests_finish_and_refuses_new_ones(tmp_path):
    repository = _write_slow_model(tmp_path / "repository", max_queue_size=64)
    with local_server(repository, exit_timeout_s=30) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        answers: dict[int, object] = {}
        done = threading.Semaphore(0)
        in_flight = 16  # 4 batches of 4: about 1 s of work
        try:
            for index in range(in_flight):

                def callback(result, error, index=index):
                    answers[index] = error if error is not None else result.as_numpy("Y")
                    done.release()

                client.async_infer(MODEL, [_tensor(float(index))], callback, client_timeout=60)
            time.sleep(EXECUTE_S / 2)  # the first batch is executing, the rest are queued
            os.kill(server.pid, signal.SIGTERM)
            time.sleep(0.2)
            late_client = grpcclient.InferenceServerClient(server.grpc_url)
            try:
                with pytest.raises(InferenceServerException) as refused:
                    late_client.infer(MODEL, [_tensor(99.0)], client_timeout=10)
            finally:
                late_client.close()
            for _ in range(in_flight):
                assert done.acquire(timeout=30), f"in-flight request lost; answers so far: {sorted(answers)}"
        finally:
            client.close()
            code = server.stop(timeout_s=60)
    assert {index: np.asarray(out).tolist() for index, out in answers.items()} == {
        index: [[2.0 * index]] for index in range(in_flight)
    }, answers
    print(f"new request after SIGTERM: {refused.value.status()} {refused.value.message()[:120]}")
    assert code == 0

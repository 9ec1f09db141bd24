"""Crash recovery: a SIGKILLed or hung python-backend stub is found and its model reloaded (docs/reliability.md).

Triton 24.10 never restarts a dead stub by itself; the supervisor (deploy/local/supervisor.py) does, through the
repository API, and readiness tells the truth while the model is broken.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import InferenceServerException

from tests.support.tiny_models import FEATURES, ONNX_NAMES, export_tiny_onnx, tiny_config, write_model
from tritonfleet.deploy.local import LocalTritonServer
from tritonfleet.deploy.local.stubs import list_stub_processes
from tritonfleet.deploy.local.supervisor import InferenceProbe, ProbeInput, SupervisorHealthServer, SupervisorOptions

MODEL = "tiny_onnx"
RECOVERY_BOUND_S = 5.0  # the feature: whole again in < 5 s
X0 = np.arange(FEATURES, dtype=np.float32).reshape(1, FEATURES) / 10
X1 = np.ones((1, FEATURES), dtype=np.float32)


WEDGE = "wedge"
# A python-backend model that wedges its instance on a negative input (as a deadlocked engine would).
WEDGE_MODEL_PY = """
import time
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            if (x < 0).any():
                time.sleep(3600)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", (x * 2).astype(np.float32))]))
        return responses
"""


def _write_wedge_model(repository: Path) -> None:
    config = mc.ModelConfig(name=WEDGE, backend="python", max_batch_size=8)
    config.input.add(name="X", data_type=mc.TYPE_FP32, dims=[1])
    config.output.add(name="Y", data_type=mc.TYPE_FP32, dims=[1])
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=1)
    write_model(repository, config)
    (repository / WEDGE / "1" / "model.py").write_text(WEDGE_MODEL_PY)


@pytest.fixture(scope="module")
def healing_server(tmp_path_factory, triton_server_factory) -> LocalTritonServer:
    repository = tmp_path_factory.mktemp("self_heal") / "repository"
    repository.mkdir()
    write_model(repository, tiny_config(MODEL, "onnxruntime_onnx", ONNX_NAMES), export_tiny_onnx(repository / "t.onnx"))
    _write_wedge_model(repository)
    probe = InferenceProbe(WEDGE, (ProbeInput("X", "FP32", (1, 1), (1.0,)),))
    options = SupervisorOptions(probes=(probe,), probe_interval_s=0.25, probe_timeout_s=1.0)
    # Triton 24.10 never finishes unloading a model copy whose dead stub got a request (docs/reliability.md §5), so
    # shutdown waits out the exit timeout: keep it short here.
    return triton_server_factory(
        repository, model_control_mode="explicit", self_heal=True, supervisor=options, exit_timeout_s=3
    )


def _infer(client: grpcclient.InferenceServerClient, timeout_s: float = 10.0) -> np.ndarray:
    inputs = [grpcclient.InferInput(name, [1, FEATURES], "FP32") for name in ONNX_NAMES.inputs]
    for tensor, data in zip(inputs, (X0, X1)):
        tensor.set_data_from_numpy(data)
    return client.infer(MODEL, inputs, client_timeout=timeout_s).as_numpy(ONNX_NAMES.outputs[0])


def _http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def _stub_of(server: LocalTritonServer) -> int:
    stubs = [stub for stub in list_stub_processes(server.pid) if stub.model == MODEL and stub.serving]
    assert len(stubs) == 1, stubs
    return stubs[0].pid


def _wait_whole(server: LocalTritonServer, client, reference: np.ndarray, bound_s: float) -> float | None:
    """Seconds until the supervisor says ready and an inference returns the reference output; None if not in time."""
    started = time.monotonic()
    while time.monotonic() - started < bound_s:
        if server.supervisor.is_ready():
            try:
                if np.array_equal(_infer(client, timeout_s=2.0), reference):
                    return time.monotonic() - started
            except InferenceServerException:
                pass
        time.sleep(0.05)
    return None


def test_killed_stub_is_reloaded_and_readiness_tells_the_truth(healing_server):
    server = healing_server
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        assert server.supervisor.wait_until_whole(10)
        reference = _infer(client)
        repairs_before = len(server.supervisor.repairs)
        observations: list[tuple[bool, int]] = []
        watching = threading.Event()

        def watch_readiness() -> None:
            url = f"http://{server.http_url}/v2/models/{MODEL}/ready"
            deadline = time.monotonic() + 10
            while watching.is_set() and time.monotonic() < deadline:
                observations.append((server.supervisor.is_ready(), _http_status(url)))
                time.sleep(0.02)

        watching.set()
        watcher = threading.Thread(target=watch_readiness)
        killed_at = time.monotonic()
        os.kill(_stub_of(server), signal.SIGKILL)
        watcher.start()
        recovered_after = _wait_whole(server, client, reference, RECOVERY_BOUND_S)
        watching.clear()
        watcher.join()
    finally:
        client.close()
    assert recovered_after is not None, f"not whole within {RECOVERY_BOUND_S}s; repairs: {server.supervisor.repairs}"
    print(f"recovered {time.monotonic() - killed_at:.2f}s after SIGKILL")
    repair = server.supervisor.repairs[repairs_before]
    assert repair.model == MODEL and repair.succeeded, repair
    assert "gone or stopped" in repair.reason
    # While broken the supervisor said "not ready", and Triton itself reported the model not ready during the reload.
    assert any(not supervisor_ready for supervisor_ready, _ in observations), observations
    assert any(model_status != 200 for _, model_status in observations), observations
    assert _stub_of(server) > 0
    assert server.is_ready()


def test_stopped_stub_is_replaced_and_its_request_answered(healing_server):
    """A SIGSTOPped stub still exists, and Triton would wait on it forever. The scan sees its state, the supervisor
    kills it and reloads the model; the request stuck in it is answered (with an error), not left hanging."""
    server = healing_server
    client = grpcclient.InferenceServerClient(server.grpc_url)
    stuck_client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        assert server.supervisor.wait_until_whole(10)
        reference = _infer(client)
        repairs_before = len(server.supervisor.repairs)
        stub = _stub_of(server)
        os.kill(stub, signal.SIGSTOP)
        outcome: dict[str, object] = {}

        def stuck_request() -> None:
            started = time.monotonic()
            try:
                outcome["result"] = _infer(stuck_client, timeout_s=30.0)
            except InferenceServerException as error:
                outcome["result"] = error
            outcome["seconds"] = time.monotonic() - started

        requester = threading.Thread(target=stuck_request)
        requester.start()
        recovered_after = _wait_whole(server, client, reference, 20.0)
        requester.join(timeout=30)
    finally:
        client.close()
        stuck_client.close()
        if os.path.exists(f"/proc/{stub}"):
            os.kill(stub, signal.SIGKILL)  # never leave a stopped process behind, whatever happened
    assert recovered_after is not None, f"stopped stub not replaced; repairs: {server.supervisor.repairs}"
    repair = server.supervisor.repairs[repairs_before]
    assert repair.model == MODEL and repair.succeeded, repair
    assert not requester.is_alive()
    assert outcome["seconds"] < 30, outcome  # answered well before its own deadline
    stuck = outcome["result"]
    if isinstance(stuck, InferenceServerException):
        assert stuck.status() != "StatusCode.DEADLINE_EXCEEDED", stuck
    else:
        assert np.array_equal(stuck, reference)


def test_without_a_supervisor_triton_stays_ready_with_a_dead_stub_until_one_starts(healing_server):
    """What Triton 24.10 does on its own (the reason for the supervisor): 500 'not healthy', readiness 200."""
    server = healing_server
    supervisor = server.supervisor
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        assert supervisor.wait_until_whole(10)
        reference = _infer(client)
        supervisor.stop()
        os.kill(_stub_of(server), signal.SIGKILL)
        time.sleep(0.3)
        with pytest.raises(InferenceServerException, match="is not healthy") as raised:
            _infer(client)
        assert raised.value.status() == "StatusCode.INTERNAL"
        assert _http_status(f"http://{server.http_url}/v2/health/ready") == 200
        assert _http_status(f"http://{server.http_url}/v2/models/{MODEL}/ready") == 200
        supervisor.start()
        assert _wait_whole(server, client, reference, RECOVERY_BOUND_S) is not None
    finally:
        if not supervisor.running:
            supervisor.start()
        client.close()


def test_wedged_instance_is_found_by_the_inference_probe(healing_server):
    """A request wedges the only instance (alive, state S, no error anywhere): only a real inference notices. The
    probe times out twice, the supervisor kills the stub and reloads; the wedged request gets an answer."""
    server = healing_server
    client = grpcclient.InferenceServerClient(server.grpc_url)
    wedged_client = grpcclient.InferenceServerClient(server.grpc_url)

    def call(target, value: float, timeout_s: float):
        tensor = grpcclient.InferInput("X", [1, 1], "FP32")
        tensor.set_data_from_numpy(np.array([[value]], dtype=np.float32))
        return target.infer(WEDGE, [tensor], client_timeout=timeout_s).as_numpy("Y")

    try:
        assert server.supervisor.wait_until_whole(10)
        assert call(client, 1.0, 5.0).tolist() == [[2.0]]
        repairs_before = len(server.supervisor.repairs)
        outcome: dict[str, object] = {}

        def wedging_request() -> None:
            try:
                outcome["result"] = call(wedged_client, -1.0, 30.0)
            except InferenceServerException as error:
                outcome["result"] = error

        requester = threading.Thread(target=wedging_request)
        requester.start()
        deadline = time.monotonic() + 20
        healed = False
        while time.monotonic() < deadline and not healed:
            time.sleep(0.1)
            if len(server.supervisor.repairs) > repairs_before and server.supervisor.is_ready():
                healed = call(client, 3.0, 5.0).tolist() == [[6.0]]
        requester.join(timeout=30)
    finally:
        client.close()
        wedged_client.close()
    assert healed, f"wedged model not repaired; repairs: {server.supervisor.repairs}"
    repair = server.supervisor.repairs[repairs_before]
    assert repair.model == WEDGE and repair.succeeded and "did not complete" in repair.reason, repair
    assert not requester.is_alive()
    assert isinstance(outcome["result"], InferenceServerException), outcome
    assert outcome["result"].status() != "StatusCode.DEADLINE_EXCEEDED", outcome


def test_health_endpoint_serves_the_supervisors_view(healing_server):
    supervisor = healing_server.supervisor
    health = SupervisorHealthServer(supervisor).start()
    try:
        assert supervisor.wait_until_whole(10)
        for path in ("/ready", "/live"):
            with urllib.request.urlopen(health.url + path, timeout=10) as response:
                assert response.status == 200
                status = json.loads(response.read())
            assert status["ok"] is True and status["broken"] == {} and status["given_up"] == {}, status
            assert all(repair["succeeded"] for repair in status["repairs"]), status
        assert _http_status(health.url + "/elsewhere") == 404
    finally:
        health.stop()

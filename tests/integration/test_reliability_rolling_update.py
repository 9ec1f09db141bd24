"""Rolling update under load (explicit model control): load version 2 beside 1, retire 1, roll back to 1 — with
zero failed requests. Each step is a `load` carrying a config override whose `version_policy` names the versions to
serve; Triton loads new versions first and retires old ones only after in-flight requests on them complete."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections import Counter

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.support.tiny_models import FEATURES, ONNX_NAMES, export_tiny_onnx, tiny_config, write_model

MODEL = "rolling"
CLIENTS = 4


@pytest.fixture(scope="module")
def rolling_server(tmp_path_factory, triton_server_factory):
    repository = tmp_path_factory.mktemp("rolling") / "repository"
    repository.mkdir()
    model_dir = write_model(
        repository, tiny_config(MODEL, "onnxruntime_onnx", ONNX_NAMES), export_tiny_onnx(repository / "v1.onnx")
    )
    server = triton_server_factory(repository, model_control_mode="explicit", exit_timeout_s=5)
    return server, model_dir


def _inputs() -> list[grpcclient.InferInput]:
    inputs = [grpcclient.InferInput(name, [1, FEATURES], "FP32") for name in ONNX_NAMES.inputs]
    for tensor in inputs:
        tensor.set_data_from_numpy(np.ones((1, FEATURES), dtype=np.float32))
    return inputs


def _serve_versions(admin: httpclient.InferenceServerClient, versions: list[int]) -> None:
    config = admin.get_model_config(MODEL)
    config["version_policy"] = {"specific": {"versions": versions}}
    admin.load_model(MODEL, config=json.dumps(config))


def test_version_2_rolls_in_and_back_out_with_zero_failures(rolling_server):
    server, model_dir = rolling_server
    shutil.copytree(model_dir / "1", model_dir / "2")  # same network: outputs must not change across versions
    stop = threading.Event()
    phase = {"name": "v1"}
    served: Counter[tuple[str, str]] = Counter()
    failures: list[str] = []
    lock = threading.Lock()

    def load_loop() -> None:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        reference = None
        try:
            deadline = time.monotonic() + 120
            while not stop.is_set() and time.monotonic() < deadline:
                current = phase["name"]
                try:
                    result = client.infer(MODEL, _inputs(), client_timeout=30)
                except InferenceServerException as error:
                    with lock:
                        failures.append(f"{current}: {error.status()} {error.message()}")
                    continue
                output = result.as_numpy(ONNX_NAMES.outputs[0])
                reference = output if reference is None else reference
                with lock:
                    served[(current, result.get_response().model_version)] += 1
                    if not np.array_equal(output, reference):
                        failures.append(f"{current}: output changed")
        finally:
            client.close()

    admin = httpclient.InferenceServerClient(server.http_url)
    workers = [threading.Thread(target=load_loop) for _ in range(CLIENTS)]
    try:
        for worker in workers:
            worker.start()
        for name, versions in (("v1+v2", [1, 2]), ("v2", [2]), ("rollback", [1])):
            time.sleep(1.0)
            phase["name"] = name
            _serve_versions(admin, versions)
            ready = {v for v in ("1", "2") if admin.is_model_ready(MODEL, v)}
            assert ready == {str(v) for v in versions}, (name, ready)
        time.sleep(1.0)
        phase["name"] = "after"
        time.sleep(1.0)
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=60)
        admin.close()
    print("requests per (phase, version):", dict(served))
    assert failures == [], failures[:10]
    assert served[("v1", "1")] > 0 and served[("v2", "2")] > 0 and served[("after", "1")] > 0, served
    assert served[("after", "2")] == 0, served  # rolled back: version 2 no longer serves
    assert sum(served.values()) > 50

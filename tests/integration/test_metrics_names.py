"""Every metric name the dashboard, the recording/alerting rules, the prometheus-adapter rule and the HPA use exists
on a real tritonserver 2.51 (= 24.10) under a little load.

Names come out of the PromQL programmatically (deploy.monitoring.metric_names). GPU metrics (nv_gpu_*, nv_energy_*)
only exist with a GPU: on a CPU-only server they are checked to be absent (the dashboard's GPU panels stay empty
there), and a `gpu`-marked test checks they exist where CUDA is available.
"""

from __future__ import annotations

import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.support.tiny_models import VOCABULARY, build_tiny_embedding_onnx
from tritonfleet.deploy.local import LocalTritonServer
from tritonfleet.deploy.monitoring.metric_names import is_gpu_metric, used_metrics

MODEL = "tiny_embedding"
REQUESTS = 48
CONCURRENCY = 8
SCRAPE_DEADLINE_S = 20.0


def scrape(server: LocalTritonServer) -> str:
    with urllib.request.urlopen(server.metrics_url, timeout=5) as response:
        return response.read().decode()


def exposed_names(text: str) -> set[str]:
    """Metric names with at least one sample in a Prometheus text exposition."""
    names = set()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            names.add(line.split("{", 1)[0].split(" ", 1)[0])
    return names


def sample_value(text: str, name: str, model: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and f'model="{model}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def send_load(server: LocalTritonServer) -> int:
    """REQUESTS valid requests from CONCURRENCY clients (so the dynamic batcher batches) and one failing request."""
    rng = np.random.default_rng(0)

    def one(index: int) -> bool:
        client = httpclient.InferenceServerClient(server.http_url, network_timeout=30)
        try:
            ids = rng.integers(0, VOCABULARY, size=(1, 5), dtype=np.int64)
            tensor = httpclient.InferInput("IDS", list(ids.shape), "INT64")
            tensor.set_data_from_numpy(ids)
            client.infer(MODEL, [tensor])
            return True
        finally:
            client.close()

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        succeeded = sum(pool.map(one, range(REQUESTS)))
    bad = np.full((1, 5), VOCABULARY + 100, dtype=np.int64)  # out-of-range token id: the engine fails
    tensor = httpclient.InferInput("IDS", list(bad.shape), "INT64")
    tensor.set_data_from_numpy(bad)
    client = httpclient.InferenceServerClient(server.http_url, network_timeout=30)
    try:
        with pytest.raises(InferenceServerException):
            client.infer(MODEL, [tensor])
    finally:
        client.close()
    return succeeded


def start_metrics_server(tmp_path_factory, triton_server_factory, *extra_args: str):
    """A real tritonserver serving one tiny ONNX model, metrics refreshed every 500 ms."""
    repository = tmp_path_factory.mktemp("metrics") / "repository"
    repository.mkdir()
    build_tiny_embedding_onnx(Path(repository), name=MODEL)
    return triton_server_factory(repository, exit_timeout_s=5, extra_args=(*extra_args, "--metrics-interval-ms=500"))


@pytest.fixture(scope="module")
def loaded_metrics(tmp_path_factory, triton_server_factory) -> str:
    server = start_metrics_server(tmp_path_factory, triton_server_factory)
    assert send_load(server) == REQUESTS
    deadline = time.monotonic() + SCRAPE_DEADLINE_S
    text = scrape(server)
    while time.monotonic() < deadline:  # counters update per request; CPU gauges every metrics interval
        if (
            "nv_cpu_utilization" in exposed_names(text)
            and sample_value(text, "nv_inference_request_success", MODEL) >= REQUESTS
        ):
            break
        time.sleep(0.5)
        text = scrape(server)
    return text


def test_load_is_visible_in_the_metrics(loaded_metrics):
    success = sample_value(loaded_metrics, "nv_inference_request_success", MODEL)
    failure = sample_value(loaded_metrics, "nv_inference_request_failure", MODEL)
    # Every request is counted exactly once. Which counter the failed one lands in depends on the backend: an error
    # *response* from a python-backend model (our local onnxruntime backend) is counted as a success by 24.10.
    assert success >= REQUESTS
    assert success + failure == REQUESTS + 1
    executions = sample_value(loaded_metrics, "nv_inference_exec_count", MODEL)
    assert 1 <= executions < REQUESTS, "the dynamic batcher should have merged concurrent requests"
    assert sample_value(loaded_metrics, "nv_inference_count", MODEL) == success  # batch size 1 per request
    assert sample_value(loaded_metrics, "nv_inference_queue_duration_us", MODEL) > 0


@pytest.mark.parametrize("source", ["dashboard", "rules", "adapter", "hpa"])
def test_every_cpu_side_metric_name_exists(loaded_metrics, source):
    used = used_metrics()[source]
    cpu_side = {name for name in used if not is_gpu_metric(name)}
    assert cpu_side, f"{source} uses no Triton metric at all"
    missing = sorted(cpu_side - exposed_names(loaded_metrics))
    assert not missing, f"{source} uses metrics that tritonserver 24.10 does not export: {missing}"


def test_gpu_metric_names_are_absent_on_a_cpu_only_server(loaded_metrics):
    """Expected: the GPU panels and GPU recording rules are empty on a server without a GPU."""
    gpu_names = {name for names in used_metrics().values() for name in names if is_gpu_metric(name)}
    assert gpu_names == {
        "nv_gpu_utilization",
        "nv_gpu_memory_used_bytes",
        "nv_gpu_memory_total_bytes",
        "nv_gpu_power_usage",
    }
    assert not gpu_names & exposed_names(loaded_metrics)


@pytest.mark.gpu
def test_gpu_metric_names_exist_with_a_gpu(tmp_path_factory, triton_server_factory):
    server = start_metrics_server(tmp_path_factory, triton_server_factory, "--allow-gpu-metrics=true")
    gpu_names = {name for names in used_metrics().values() for name in names if is_gpu_metric(name)}
    deadline = time.monotonic() + SCRAPE_DEADLINE_S
    missing = gpu_names
    while missing and time.monotonic() < deadline:
        missing = gpu_names - exposed_names(scrape(server))
        time.sleep(0.5)
    assert not missing, f"GPU metrics missing on a GPU server: {sorted(missing)}"

"""Every metric name the dashboard, the recording/alerting rules, the prometheus-adapter rule and the HPA use exists
on a real tritonserver 2.51 (= 24.10) under a little load, started with `--metrics-config summary_latencies=true`
as every manifest starts it; every HAProxy name exists on a real HAProxy 2.6 exporter in front of it.

Names come out of the PromQL programmatically (deploy.monitoring.metric_names). GPU metrics (nv_gpu_*, nv_energy_*)
only exist with a GPU: on a CPU-only server they are checked to be absent (the dashboard's GPU panels stay empty
there), and a `gpu`-marked test checks they exist where CUDA is available.
"""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.support.tiny_models import VOCABULARY, build_tiny_embedding_onnx
from tritonfleet.deploy.fleet.haproxy import BalancerSpec, ReplicaAddress, haproxy_binary, render_config
from tritonfleet.deploy.local import LocalTritonServer
from tritonfleet.deploy.monitoring.metric_names import is_balancer_metric, is_gpu_metric, used_metrics

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
    return triton_server_factory(
        repository,
        exit_timeout_s=5,
        extra_args=(*extra_args, "--metrics-interval-ms=500", "--metrics-config=summary_latencies=true"),
    )


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
    cpu_side = {name for name in used if not is_gpu_metric(name) and not is_balancer_metric(name)}
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


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, ""


def test_every_haproxy_metric_name_exists_on_a_real_balancer(tmp_path_factory, triton_server_factory):
    """The fleet's HAProxy (deploy/fleet/haproxy.py) in front of a real tritonserver, one replica and one dead
    one: every haproxy_* name the rules and the dashboard use is exported (HAProxy 2.6 promex)."""
    try:
        binary = haproxy_binary()
    except FileNotFoundError as error:
        pytest.skip(str(error))
    server = start_metrics_server(tmp_path_factory, triton_server_factory)
    http_port, grpc_port, metrics_port, dead_http, dead_grpc = _free_ports(5)
    replica_http, replica_grpc = (int(url.rsplit(":", 1)[1]) for url in (server.http_url, server.grpc_url))
    spec = BalancerSpec(
        replicas=(
            ReplicaAddress("replica1", "127.0.0.1", replica_http, replica_grpc),
            ReplicaAddress("replica2", "127.0.0.1", dead_http, dead_grpc),  # nothing listens: DOWN
        ),
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        nbthread=1,
    )
    config = tmp_path_factory.mktemp("haproxy") / "haproxy.cfg"
    config.write_text(render_config(spec))
    process = subprocess.Popen([binary, "-db", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + SCRAPE_DEADLINE_S
        text = ""
        while time.monotonic() < deadline:  # until the checks ran: replica1 UP, replica2 DOWN
            assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
            try:
                _get(f"http://127.0.0.1:{http_port}/v2/health/ready")
                text = _get(f"http://127.0.0.1:{metrics_port}/metrics")[1]
            except OSError:
                text = ""
            if 'server="replica1",state="UP"} 1' in text and 'server="replica2",state="DOWN"} 1' in text:
                break
            time.sleep(0.2)
        for _ in range(5):  # a few requests through the balancer, so the per-server response counters move
            assert _get(f"http://127.0.0.1:{http_port}/v2/models/{MODEL}")[0] == 200
        text = _get(f"http://127.0.0.1:{metrics_port}/metrics")[1]
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert 'server="replica2",state="DOWN"} 1' in text, "the dead replica is what FleetReplicaDown selects"
    used = {name for names in used_metrics().values() for name in names if is_balancer_metric(name)}
    assert used >= {"haproxy_server_status", "haproxy_backend_active_servers"}
    missing = sorted(used - exposed_names(text))
    assert not missing, f"HAProxy 2.6 does not export: {missing}"

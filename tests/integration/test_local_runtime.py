"""The production repository format served by the real local tritonserver (issue: a real Triton on any machine)."""

from __future__ import annotations

import concurrent.futures
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import InferenceServerException

from tests.support.tiny_models import (
    FEATURES,
    ONNX_NAMES,
    TORCHSCRIPT_NAMES,
    TinyEmbedding,
    TinyNet,
    build_tiny_embedding_onnx,
    build_tiny_embedding_torchscript,
    build_tiny_repository,
    export_tiny_onnx,
    export_tiny_torchscript,
    tiny_config,
    write_model,
)
from tritonfleet.deploy.local import LocalTritonServer, PortInUseError, ServerOptions, TritonStartError, local_server

PROJECT_ROOT = Path(__file__).resolve().parents[2]
MODELS = {"tiny_onnx": ONNX_NAMES, "tiny_torchscript": TORCHSCRIPT_NAMES}


@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory, triton_server_factory) -> LocalTritonServer:
    repository = build_tiny_repository(tmp_path_factory.mktemp("tiny") / "repository")
    build_tiny_embedding_onnx(repository)
    build_tiny_embedding_torchscript(repository)
    return triton_server_factory(repository)


def _reference(x0: np.ndarray, x1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        out0, out1 = TinyNet().eval()(torch.from_numpy(x0), torch.from_numpy(x1))
    return out0.numpy(), out1.numpy()


def _infer(module, client, model: str, x0: np.ndarray, x1: np.ndarray):
    names = MODELS[model]
    inputs = [module.InferInput(name, list(x.shape), "FP32") for name, x in zip(names.inputs, (x0, x1))]
    for tensor, x in zip(inputs, (x0, x1)):
        tensor.set_data_from_numpy(x)
    result = client.infer(model, inputs)
    return result.as_numpy(names.outputs[0]), result.as_numpy(names.outputs[1])


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("model", sorted(MODELS))
def test_outputs_equal_eager_pytorch(tiny_server, protocol, model):
    module = httpclient if protocol == "http" else grpcclient
    url = tiny_server.http_url if protocol == "http" else tiny_server.grpc_url
    rng = np.random.default_rng(7)
    client = module.InferenceServerClient(url)
    try:
        assert client.get_model_config(model) is not None
        for batch in (1, 3, 16):
            x0 = rng.standard_normal((batch, FEATURES), dtype=np.float32)
            x1 = rng.standard_normal((batch, FEATURES), dtype=np.float32)
            served = _infer(module, client, model, x0, x1)
            for got, expected in zip(served, _reference(x0, x1)):
                assert got.shape == expected.shape
                assert np.abs(got - expected).max() <= 1e-5
    finally:
        client.close()


def test_served_by_python_based_backends(tiny_server):
    client = httpclient.InferenceServerClient(tiny_server.http_url)
    try:
        for model, backend in (("tiny_onnx", "onnxruntime"), ("tiny_torchscript", "pytorch")):
            config = client.get_model_config(model)
            assert (config["backend"], config["runtime"]) == (backend, "model.py")
    finally:
        client.close()


def _statistics(client, model: str) -> tuple[int, int]:
    stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))


@pytest.mark.parametrize("model", sorted(MODELS))
def test_dynamic_batching_with_16_concurrent_clients(tiny_server, model):
    rng = np.random.default_rng(11)
    requests = [
        (rng.standard_normal((1, FEATURES), dtype=np.float32), rng.standard_normal((1, FEATURES), dtype=np.float32))
        for _ in range(64)
    ]
    # gRPC clients: tritonclient.http is gevent-based and must not be shared across threads.
    clients = [grpcclient.InferenceServerClient(tiny_server.grpc_url) for _ in range(16)]
    try:
        before = _statistics(clients[0], model)

        def send(index: int):
            return _infer(grpcclient, clients[index % 16], model, *requests[index])

        with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
            results = list(pool.map(send, range(len(requests))))
        after = _statistics(clients[0], model)
    finally:
        for client in clients:
            client.close()
    for (x0, x1), served in zip(requests, results):
        for got, expected in zip(served, _reference(x0, x1)):
            assert np.abs(got - expected).max() <= 1e-5
    inferences, executions = after[0] - before[0], after[1] - before[1]
    assert inferences == len(requests)
    assert executions < inferences, f"no batching: {executions} executions for {inferences} inferences"


def test_bad_request_isolated_from_batch_mates(tiny_server):
    """One out-of-range token id fails alone with INVALID_ARG; its batch-mates get correct outputs."""
    rng = np.random.default_rng(3)
    payloads = [rng.integers(0, 10, size=(1, 6), dtype=np.int64) for _ in range(8)]
    payloads[3] = np.array([[1, 2, 999, 3, 4, 5]], dtype=np.int64)
    clients = [grpcclient.InferenceServerClient(tiny_server.grpc_url) for _ in range(len(payloads))]

    def send(index: int):
        tensor = grpcclient.InferInput("IDS", [1, 6], "INT64")
        tensor.set_data_from_numpy(payloads[index])
        try:
            return clients[index].infer("tiny_embedding", [tensor]).as_numpy("MEAN")
        except InferenceServerException as error:
            return error

    try:
        before = _statistics(clients[0], "tiny_embedding")
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(payloads)) as pool:
            results = list(pool.map(send, range(len(payloads))))
        after = _statistics(clients[0], "tiny_embedding")
    finally:
        for client in clients:
            client.close()
    error = results[3]
    assert isinstance(error, InferenceServerException)
    assert error.status() == "StatusCode.INVALID_ARGUMENT", error
    assert "out of" in str(error).lower() or "indices" in str(error).lower(), error
    model = TinyEmbedding().eval()
    for index, result in enumerate(results):
        if index == 3:
            continue
        with torch.no_grad():
            expected = model(torch.from_numpy(payloads[index])).numpy()
        assert not isinstance(result, Exception), result
        assert np.abs(result - expected).max() <= 1e-5
    assert after[1] - before[1] < after[0] - before[0] + 1  # executions never exceed requests
    assert tiny_server.is_ready()


# -- load-time contract: what loads locally also loads in the NGC image ------------------------------------------


def _mismatched_models(repository: Path) -> dict[str, str]:
    """Broken configs -> a fragment the load error must contain."""
    cases: dict[str, tuple[mc.ModelConfig, str]] = {}
    wrong_name = tiny_config("bad_input_name", "onnxruntime_onnx", ONNX_NAMES)
    wrong_name.input[0].name = "INPUT_X"
    cases["bad_input_name"] = (wrong_name, "unexpected inference input 'INPUT_X'")
    cases["bad_dtype"] = (
        tiny_config("bad_dtype", "onnxruntime_onnx", ONNX_NAMES, input_dtype=mc.TYPE_INT64),
        "configuration expects datatype TYPE_INT64 for input 'INPUT0', model provides TYPE_FP32",
    )
    cases["bad_rank"] = (
        tiny_config("bad_rank", "onnxruntime_onnx", ONNX_NAMES, input_dims=(1, FEATURES)),
        "the model expects 2 dimensions",
    )
    missing_input = tiny_config("bad_input_count", "onnxruntime_onnx", ONNX_NAMES)
    del missing_input.input[1]
    cases["bad_input_count"] = (missing_input, "configuration expects 1 inputs, model provides 2")
    torchscript_count = tiny_config("bad_torchscript_inputs", "pytorch_libtorch", TORCHSCRIPT_NAMES)
    del torchscript_count.input[1]
    cases["bad_torchscript_inputs"] = (torchscript_count, "configuration expects 1 inputs, model provides 2")
    expected = {}
    for name, (config, fragment) in cases.items():
        artifact = (
            export_tiny_onnx(repository / f"{name}.onnx")
            if config.platform == "onnxruntime_onnx"
            else export_tiny_torchscript(repository / f"{name}.pt")
        )
        write_model(repository, config, artifact)
        expected[name] = fragment
    gpu = tiny_config("gpu_only", "onnxruntime_onnx", ONNX_NAMES, instance_kind=mc.ModelInstanceGroup.KIND_GPU)
    write_model(repository, gpu, export_tiny_onnx(repository / "gpu_only.onnx"))
    expected["gpu_only"] = "GPU"
    auto = tiny_config("auto_kind", "onnxruntime_onnx", ONNX_NAMES, instance_kind=mc.ModelInstanceGroup.KIND_AUTO)
    write_model(repository, auto, export_tiny_onnx(repository / "auto_kind.onnx"))
    return expected


@pytest.fixture(scope="module")
def explicit_server(tmp_path_factory, triton_server_factory):
    repository = tmp_path_factory.mktemp("contract") / "repository"
    repository.mkdir()
    expected = _mismatched_models(repository)
    server = triton_server_factory(repository, model_control_mode="explicit", load_models=())
    return server, expected


@pytest.mark.parametrize(
    "model", ["bad_input_name", "bad_dtype", "bad_rank", "bad_input_count", "bad_torchscript_inputs", "gpu_only"]
)
def test_mismatched_config_fails_to_load_naming_the_problem(explicit_server, model):
    server, expected = explicit_server
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        with pytest.raises(InferenceServerException) as raised:
            client.load_model(model)
        assert expected[model] in str(raised.value)
        assert not client.is_model_ready(model)
        assert server.is_running()
    finally:
        client.close()


def test_kind_auto_falls_back_to_cpu(explicit_server):
    server, _ = explicit_server
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        client.load_model("auto_kind")
        assert client.is_model_ready("auto_kind")
        assert client.get_model_config("auto_kind")["instance_group"][0]["kind"] == "KIND_CPU"
    finally:
        client.close()


# -- the launcher ---------------------------------------------------------------------------------------------------


def test_taken_port_is_reported(tiny_server, tmp_path):
    taken = int(tiny_server.http_url.rsplit(":", 1)[1])
    server = LocalTritonServer(ServerOptions(tmp_path, http_port=taken, grpc_port=0, metrics_port=0))
    with pytest.raises(PortInUseError, match="already in use"):
        server.start()
    assert not server.log_path.parent.exists(), "a server that never ran leaves no work folder"


def test_model_that_fails_to_load_stops_start_with_tritons_error(tmp_path):
    config = tiny_config("broken", "onnxruntime_onnx", ONNX_NAMES)
    write_model(tmp_path, config)  # no model.onnx
    with (
        pytest.raises(TritonStartError, match=r"unable to find .*model\.onnx") as failure,
        local_server(tmp_path, exit_timeout_s=5),
    ):
        pass
    repository_flag = f"--model-repository={tmp_path.resolve()}"
    left_running = [p.pid for p in psutil.Process().children() if repository_flag in _cmdline(p)]
    assert not left_running, f"tritonserver still running after a failed start: {left_running}"
    log_path = Path(re.search(r"its log \((.+?)\) says", str(failure.value)).group(1))
    assert "unable to find" in log_path.read_text(), "the failed server's log is kept for reading"
    assert not (log_path.parent / "backends").exists(), "the stub copies are removed even after a failure"


def test_clean_stop_removes_the_servers_work_folder(tmp_path):
    repository = build_tiny_repository(tmp_path / "repository")
    server = LocalTritonServer(ServerOptions(repository, http_port=0, grpc_port=0, metrics_port=0, exit_timeout_s=5))
    with server:
        workdir = server.log_path.parent
        assert (workdir / "backends").is_dir()
    assert server.pid is not None and not workdir.exists()


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return []


CLI_PORTS = ("--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", "--exit-timeout-secs", "5")


def _cli(repository: Path) -> list[str]:
    return [sys.executable, "-m", "tritonfleet.deploy.local", "--model-repository", str(repository), *CLI_PORTS]


def _launch_until_ready(repository: Path) -> tuple[subprocess.Popen, str]:
    """Start `python -m deploy.local` and return it with the HTTP address it reports once ready."""
    process = subprocess.Popen(
        _cli(repository), cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        line = process.stdout.readline()
        if "HTTP 127.0.0.1:" in line:
            return process, line.split("HTTP ", 1)[1].split()[0]
    process.kill()
    process.wait(timeout=10)
    pytest.fail("the launcher never reported ready")


def test_command_line_serves_until_sigint(tmp_path):
    process, http_url = _launch_until_ready(build_tiny_repository(tmp_path / "repository"))
    try:
        client = httpclient.InferenceServerClient(http_url)
        assert client.is_server_ready()
        client.close()
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def test_command_line_exits_non_zero_with_tritons_error(tmp_path):
    write_model(tmp_path, tiny_config("broken", "onnxruntime_onnx", ONNX_NAMES))
    result = subprocess.run(
        _cli(tmp_path),
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "failed to load 'broken'" in result.stderr


def test_input_caused_engine_failures_are_invalid_arg(tiny_server):
    """Out-of-range token ids are the request's fault: INVALID_ARG with the engine's reason, not INTERNAL."""
    client = grpcclient.InferenceServerClient(tiny_server.grpc_url)
    try:
        for model, names in MODELS.items():
            inputs = [grpcclient.InferInput(names.inputs[0], [1, FEATURES], "FP32")]
            inputs[0].set_data_from_numpy(np.ones((1, FEATURES), np.float32))
            inputs.append(grpcclient.InferInput(names.inputs[1], [1, FEATURES], "FP32"))
            inputs[1].set_data_from_numpy(np.ones((1, FEATURES), np.float32))
            assert client.infer(model, inputs) is not None
        for model, input_name in (("tiny_embedding", "IDS"), ("tiny_embedding_torchscript", "IDS__0")):
            ids = grpcclient.InferInput(input_name, [1, 3], "INT64")
            ids.set_data_from_numpy(np.array([[1, 2, 10]], dtype=np.int64))  # 10 is outside the vocabulary
            with pytest.raises(InferenceServerException) as raised:
                client.infer(model, [ids])
            assert raised.value.status() == "StatusCode.INVALID_ARGUMENT", raised.value
            assert "out of" in str(raised.value), raised.value
    finally:
        client.close()


@pytest.mark.parametrize("model", sorted(MODELS))
def test_only_requested_outputs_are_returned(tiny_server, model):
    names = MODELS[model]
    client = grpcclient.InferenceServerClient(tiny_server.grpc_url)
    try:
        x0, x1 = np.ones((2, FEATURES), np.float32), np.full((2, FEATURES), 2.0, np.float32)
        inputs = [grpcclient.InferInput(name, [2, FEATURES], "FP32") for name in names.inputs]
        for tensor, x in zip(inputs, (x0, x1)):
            tensor.set_data_from_numpy(x)
        result = client.infer(model, inputs, outputs=[grpcclient.InferRequestedOutput(names.outputs[1])])
        assert [output.name for output in result.get_response().outputs] == [names.outputs[1]]
        np.testing.assert_allclose(result.as_numpy(names.outputs[1]), _reference(x0, x1)[1], atol=1e-5)
    finally:
        client.close()


def test_server_does_not_outlive_a_launcher_killed_hard(tmp_path):
    """SIGKILL the launcher: its tritonserver must not stay behind, orphaned, holding the ports."""
    process, http_url = _launch_until_ready(build_tiny_repository(tmp_path / "repository"))
    process.kill()
    process.wait(timeout=10)
    client = httpclient.InferenceServerClient(http_url)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                alive = client.is_server_live()
            except Exception:  # noqa: BLE001 - connection refused: the server is gone
                alive = False
            if not alive:
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"tritonserver at {http_url} still answers 60 s after its launcher was SIGKILLed")
    finally:
        client.close()

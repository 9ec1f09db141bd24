"""Pure parts of the local runtime: batching/splitting, config contract helpers, runtime discovery, command line."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from tritonfleet.contract.model_config import config_from_json
from tritonfleet.deploy.local.backends.batching import run_batched, shape_key, split_outputs
from tritonfleet.deploy.local.backends.contract import (
    ModelContractError,
    bool_parameter,
    dims_compatible,
    int_parameter,
    order_by_index_suffix,
    ort_config_data_type,
    served_model,
)
from tritonfleet.deploy.local.runtime import PYTHON_BASED_BACKENDS, TritonRuntime
from tritonfleet.deploy.local.server import LocalTritonServer, ServerOptions


def _double(inputs):
    return {"Y": inputs["X"] * 2.0}


def test_one_engine_call_for_shape_compatible_requests_and_split_back_in_order():
    calls = []

    def engine(inputs):
        calls.append(inputs["X"].shape)
        return _double(inputs)

    requests = [{"X": np.full((size, 3), i, dtype=np.float32)} for i, size in enumerate((1, 2, 3))]
    results = run_batched(requests, engine, batched=True)
    assert calls == [(6, 3)]
    for i, (request, result) in enumerate(zip(requests, results)):
        assert result.error is None
        np.testing.assert_array_equal(result.outputs["Y"], request["X"] * 2.0, err_msg=f"request {i}")


def test_different_shapes_get_separate_engine_calls():
    calls = []

    def engine(inputs):
        calls.append(inputs["X"].shape)
        return _double(inputs)

    requests = [
        {"X": np.ones((1, 4), np.float32)},
        {"X": np.ones((1, 5), np.float32)},
        {"X": np.ones((2, 4), np.float32)},
    ]
    results = run_batched(requests, engine, batched=True)
    assert sorted(calls) == [(1, 5), (3, 4)]
    assert [r.outputs["Y"].shape for r in results] == [(1, 4), (1, 5), (2, 4)]


def test_failing_request_is_isolated_and_batch_mates_succeed():
    def engine(inputs):
        if (inputs["X"] < 0).any():
            raise ValueError("negative input")
        return _double(inputs)

    requests = [{"X": np.full((1, 2), value, np.float32)} for value in (1.0, -1.0, 3.0)]
    results = run_batched(requests, engine, batched=True)
    assert [r.error is None for r in results] == [True, False, True]
    assert "negative input" in str(results[1].error)
    np.testing.assert_array_equal(results[2].outputs["Y"], np.full((1, 2), 6.0, np.float32))


def test_unbatched_models_run_each_request_alone():
    calls = []

    def engine(inputs):
        calls.append(inputs["X"].shape)
        return _double(inputs)

    run_batched([{"X": np.ones((2,), np.float32)}, {"X": np.ones((2,), np.float32)}], engine, batched=False)
    assert calls == [(2,), (2,)]


def test_split_rejects_outputs_without_the_batch_dimension():
    with pytest.raises(ValueError, match="batch dimension"):
        split_outputs({"Y": np.ones((3, 2))}, [1, 1])


def test_shape_key_ignores_batch_size_but_not_dtype():
    a = {"X": np.ones((1, 4), np.float32)}
    assert shape_key(a) == shape_key({"X": np.ones((7, 4), np.float32)})
    assert shape_key(a) != shape_key({"X": np.ones((1, 4), np.float64)})


def test_contract_helpers():
    assert dims_compatible((-1, 320), (-1, 320), exact=True)
    assert dims_compatible((-1, -1), (-1, 8), exact=False)
    assert not dims_compatible((-1, -1), (-1, 8), exact=True)
    assert not dims_compatible((-1,), (-1, 8), exact=False)
    assert order_by_index_suffix(["A__1", "B__0"]) == [1, 0]
    assert order_by_index_suffix(["A__1", "B"]) is None


def test_served_model_requires_declared_io_and_reads_parameters():
    with pytest.raises(ModelContractError, match="auto-complete"):
        served_model(config_from_json({"name": "m", "input": []}))
    # The JSON a backend's initialize() gets: int64 dims as strings, parameters as string_value.
    model = served_model(
        config_from_json(
            {
                "name": "m",
                "max_batch_size": 8,
                "input": [{"name": "X", "data_type": "TYPE_FP32", "dims": ["4"]}],
                "output": [{"name": "Y", "data_type": "TYPE_STRING", "dims": [2]}],
                "parameters": {"intra_op_thread_count": {"string_value": "2"}, "flag": {"string_value": "maybe"}},
            }
        )
    )
    assert model.inputs[0].full_shape(model.batched) == (-1, 4)
    assert model.inputs[0].numpy_dtype == np.float32 and model.outputs[0].numpy_dtype == np.object_
    assert int_parameter(model, "intra_op_thread_count") == 2
    assert int_parameter(model, "absent") is None
    assert bool_parameter(model, "absent", default=True)
    with pytest.raises(ModelContractError, match="true or false"):
        bool_parameter(model, "flag", default=False)
    with pytest.raises(ModelContractError, match="must be an integer"):
        int_parameter(model, "flag")


def test_served_model_rejects_a_data_type_numpy_cannot_carry():
    config = {
        "name": "m",
        "input": [{"name": "X", "data_type": "TYPE_INVALID", "dims": [1]}],
        "output": [{"name": "Y", "data_type": "TYPE_FP32", "dims": [1]}],
    }
    with pytest.raises(ModelContractError, match="tensor 'X' has unsupported TYPE_INVALID"):
        served_model(config_from_json(config))


@pytest.mark.parametrize(
    ("ort_type", "config_type"),
    [
        ("tensor(float)", "TYPE_FP32"),
        ("tensor(double)", "TYPE_FP64"),
        ("tensor(float16)", "TYPE_FP16"),
        ("tensor(int64)", "TYPE_INT64"),
        ("tensor(uint8)", "TYPE_UINT8"),
        ("tensor(bool)", "TYPE_BOOL"),
        ("tensor(string)", "TYPE_STRING"),
        ("tensor(complex64)", "tensor(complex64)"),  # no Triton type: reported as ORT names it
    ],
)
def test_onnx_runtime_types_map_to_config_types(ort_type, config_type):
    assert ort_config_data_type(ort_type) == config_type


def test_runtime_discovery_and_backend_directory(tmp_path):
    runtime = TritonRuntime.discover()
    assert runtime.server_binary.name == "tritonserver"
    backend_dir = runtime.assemble_backend_directory(tmp_path / "backends")
    assert (backend_dir / "python" / "libtriton_python.so").is_file()
    assert (backend_dir / "python" / "triton_python_backend_stub").is_file()
    for backend in PYTHON_BASED_BACKENDS:
        assert (backend_dir / backend / "model.py").is_file()
        assert not (backend_dir / backend / "model.py").is_symlink()


def test_command_binds_loopback_and_picks_distinct_free_ports(tmp_path):
    server = LocalTritonServer(ServerOptions(Path(tmp_path), http_port=0, grpc_port=0, metrics_port=0))
    ports = {server.options.http_port, server.options.grpc_port, server.options.metrics_port}
    assert len(ports) == 3 and 0 not in ports
    command = server.command()
    assert "--http-address=127.0.0.1" in command and "--grpc-address=127.0.0.1" in command
    assert server.http_url.startswith("127.0.0.1:")
    explicit = LocalTritonServer(ServerOptions(Path(tmp_path), model_control_mode="explicit", load_models=("a", "b")))
    assert [arg for arg in explicit.command() if arg.startswith("--load-model")] == ["--load-model=a", "--load-model=b"]


def test_server_environment_does_not_inherit_another_virtualenv(tmp_path, monkeypatch):
    monkeypatch.setenv("VIRTUAL_ENV", "/elsewhere/venv")
    monkeypatch.setenv("PYTHONPATH", "/elsewhere/site-packages")
    env = LocalTritonServer(ServerOptions(Path(tmp_path))).environment()
    assert "PYTHONPATH" not in env and env["VIRTUAL_ENV"] != "/elsewhere/venv"
    assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent)  # the stub embeds this venv's python3

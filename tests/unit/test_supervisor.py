"""Parts of the self-healing supervisor that need no server: stub discovery, expected instances, deficits, error
parsing, probes, options and the launcher's self-healing flags."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tritonfleet.contract.model_config import config_from_json
from tritonfleet.deploy.local import LocalTritonServer, ServerOptions
from tritonfleet.deploy.local.__main__ import parse_args
from tritonfleet.deploy.local.stubs import (
    StubProcess,
    expected_instance_count,
    list_stub_processes,
    missing_instances,
    model_named_in_error,
    parse_stub_argv,
)
from tritonfleet.deploy.local.supervisor import InferenceProbe, SupervisorOptions

STUB_ARGV = [
    "/tmp/x/backends/python/triton_python_backend_stub",
    "/repo/esm2_onnx/3/model.onnx",
    "triton_onnxruntime_backend_shm_region_0d52",
    "1048576",
    "1048576",
    "13586",
    "/tmp/x/backends/python",
    "336",
    "esm2_onnx_0_1",
    "/tmp/x/backends/onnxruntime",
]


def test_stub_argv_names_model_version_and_instance():
    assert parse_stub_argv(STUB_ARGV) == ("esm2_onnx", "3", "esm2_onnx_0_1")
    assert parse_stub_argv(["/usr/bin/python3", "-m", "x"]) is None
    assert parse_stub_argv(STUB_ARGV[:5]) is None


@pytest.fixture
def fake_stubs(tmp_path):
    """Child processes of this test whose argv looks like two stubs' (a Python script sleeping under the stub's
    name, at `<repo>/<model>/<version>/model.py`) and one unrelated child."""
    script = tmp_path / "repo" / "esm2_onnx" / "3" / "model.py"
    script.parent.mkdir(parents=True)
    script.write_text("import time\ntime.sleep(60)\n")
    stub_name = str(tmp_path / "backends" / "python" / "triton_python_backend_stub")
    processes = {
        instance: subprocess.Popen(
            [stub_name, str(script), *STUB_ARGV[2:8], instance, STUB_ARGV[9]], executable=sys.executable
        )
        for instance in ("esm2_onnx_0_0", "esm2_onnx_0_1")
    }
    processes["other"] = subprocess.Popen([sys.executable, str(script)])
    yield processes
    for process in processes.values():
        process.kill()
        process.wait(timeout=10)


def _wait_for(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_stub_processes_are_the_servers_children_with_their_status(fake_stubs):
    stopped = fake_stubs["esm2_onnx_0_0"]
    os.kill(stopped.pid, signal.SIGSTOP)

    def found() -> list[tuple[int, str, bool]]:
        return sorted((s.pid, s.instance, s.serving) for s in list_stub_processes(os.getpid()))

    expected = sorted([(stopped.pid, "esm2_onnx_0_0", False), (fake_stubs["esm2_onnx_0_1"].pid, "esm2_onnx_0_1", True)])
    _wait_for(lambda: found() == expected)
    assert {(s.model, s.version) for s in list_stub_processes(os.getpid())} == {("esm2_onnx", "3")}
    os.kill(stopped.pid, signal.SIGKILL)
    _wait_for(lambda: [s.instance for s in list_stub_processes(os.getpid())] == ["esm2_onnx_0_1"])  # zombie: gone
    assert list_stub_processes(fake_stubs["other"].pid) == []  # a process without children


def _config(**fields):
    return config_from_json({"name": "m", **fields})


def test_expected_instances_count_only_python_run_models():
    cpu = _config(backend="onnxruntime", runtime="model.py", instance_group=[{"kind": "KIND_CPU", "count": 2}])
    gpu = _config(backend="python", instance_group=[{"kind": "KIND_GPU", "count": 2, "gpus": [0, 1]}])
    native = _config(backend="onnxruntime", runtime="", instance_group=[{"kind": "KIND_CPU", "count": 2}])
    ensemble = _config(platform="ensemble")
    assert [expected_instance_count(c) for c in (cpu, gpu, native, ensemble)] == [2, 4, 0, 0]


def test_missing_instances_counts_only_serving_stubs():
    stubs = [
        StubProcess(1, "a", "1", "a_0_0", "sleeping"),
        StubProcess(2, "a", "1", "a_0_1", "zombie"),
        StubProcess(3, "b", "2", "b_0_0", "running"),
    ]
    assert missing_instances({("a", "1"): 2, ("b", "2"): 1, ("c", "1"): 1}, stubs) == {("a", "1"): 1, ("c", "1"): 1}


def test_model_named_in_tritons_dead_stub_message():
    message = "in ensemble 'esm2', Stub process 'esm2_tokenizer_0_0' is not healthy."
    assert model_named_in_error(message) == "esm2_tokenizer"
    assert model_named_in_error("timed out") is None


def test_sequence_probe_sends_one_bytes_sequence():
    (probe_input,) = InferenceProbe.for_sequence_model("esm2", "MKT").inputs
    array = probe_input.array()
    assert (probe_input.name, probe_input.datatype) == ("SEQUENCE", "BYTES")
    assert array.dtype == np.object_ and array.shape == (1, 1) and array[0, 0] == "MKT"


def test_options_reject_nonsense():
    with pytest.raises(ValueError):
        SupervisorOptions(poll_interval_s=0)
    with pytest.raises(ValueError):
        SupervisorOptions(confirm_scans=0)


def test_self_heal_requires_explicit_model_control(tmp_path):
    with pytest.raises(ValueError, match="explicit"):
        LocalTritonServer(ServerOptions(tmp_path, http_port=0, grpc_port=0, metrics_port=0, self_heal=True))


def test_command_line_self_heals_by_default_in_explicit_mode():
    args, extra = parse_args(["--model-repository", "r", "--self-heal-probe", "esm2", "--x=1"])
    assert args.self_heal and args.model_control_mode == "explicit"
    assert args.self_heal_probe == ["esm2"] and args.self_heal_port is None
    assert extra == ["--x=1"]


def test_command_line_opts_out_of_self_healing():
    args, _ = parse_args(["--model-repository", "r", "--no-self-heal"])
    assert not args.self_heal and args.model_control_mode == "none"
    args, _ = parse_args(["--model-repository", "r", "--no-self-heal", "--model-control-mode", "explicit"])
    assert not args.self_heal and args.model_control_mode == "explicit"


@pytest.mark.parametrize(
    "argv",
    [["--model-control-mode", "none"], ["--no-self-heal", "--self-heal-probe", "esm2"]],
    ids=["self-heal-without-explicit-mode", "probe-without-self-heal"],
)
def test_command_line_refuses_contradictory_self_healing_flags(argv, capsys):
    with pytest.raises(SystemExit) as raised:
        parse_args(["--model-repository", "r", *argv])
    assert raised.value.code == 2
    assert "self-heal" in capsys.readouterr().err


def test_stubs_of_a_server_that_is_gone_are_none():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait(timeout=30)
    assert list_stub_processes(process.pid) == []

"""Pure parts of the self-healing supervisor: stub discovery, expected instances, deficits, error parsing, options."""

from __future__ import annotations

from pathlib import Path

import pytest

from tritonfleet.deploy.local import LocalTritonServer, ServerOptions
from tritonfleet.deploy.local.__main__ import parse_args
from tritonfleet.deploy.local.supervisor import (
    InferenceProbe,
    StubProcess,
    SupervisorOptions,
    expected_instance_count,
    list_stub_processes,
    missing_instances,
    model_named_in_error,
    parse_stub_argv,
)

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


def _fake_process(root: Path, pid: int, ppid: int, state: str, argv: list[str]) -> None:
    entry = root / str(pid)
    entry.mkdir()
    (entry / "stat").write_text(f"{pid} (triton_python_b) {state} {ppid} 1 1 0 -1\n")
    (entry / "cmdline").write_bytes("\0".join(argv).encode() + b"\0")


def test_stub_processes_are_the_servers_children_with_their_state(tmp_path):
    _fake_process(tmp_path, 101, 50, "S", STUB_ARGV)
    _fake_process(tmp_path, 102, 50, "T", [*STUB_ARGV[:8], "esm2_onnx_0_0", STUB_ARGV[9]])
    _fake_process(tmp_path, 103, 77, "S", STUB_ARGV)  # another server's stub
    _fake_process(tmp_path, 104, 50, "S", ["/bin/sleep", "10"])
    (tmp_path / "self").mkdir()
    stubs = sorted(list_stub_processes(50, proc_root=tmp_path), key=lambda stub: stub.pid)
    assert [(s.pid, s.instance, s.serving) for s in stubs] == [
        (101, "esm2_onnx_0_1", True),
        (102, "esm2_onnx_0_0", False),
    ]


def test_expected_instances_count_only_python_run_models():
    cpu = {"backend": "onnxruntime", "runtime": "model.py", "instance_group": [{"kind": "KIND_CPU", "count": 2}]}
    gpu = {"backend": "python", "instance_group": [{"kind": "KIND_GPU", "count": 2, "gpus": [0, 1]}]}
    native = {"backend": "onnxruntime", "runtime": "", "instance_group": [{"kind": "KIND_CPU", "count": 2}]}
    ensemble = {"platform": "ensemble"}
    assert [expected_instance_count(c) for c in (cpu, gpu, native, ensemble)] == [2, 4, 0, 0]


def test_missing_instances_counts_only_serving_stubs():
    stubs = [
        StubProcess(1, "a", "1", "a_0_0", "S"),
        StubProcess(2, "a", "1", "a_0_1", "Z"),  # zombie: dead
        StubProcess(3, "b", "2", "b_0_0", "R"),
    ]
    assert missing_instances({("a", "1"): 2, ("b", "2"): 1, ("c", "1"): 1}, stubs) == {("a", "1"): 1, ("c", "1"): 1}


def test_model_named_in_tritons_dead_stub_message():
    message = "in ensemble 'esm2', Stub process 'esm2_tokenizer_0_0' is not healthy."
    assert model_named_in_error(message) == "esm2_tokenizer"
    assert model_named_in_error("timed out") is None


def test_sequence_probe_builds_a_kserve_request():
    body = InferenceProbe.for_sequence_model("esm2", "MKT").request_body()
    assert body == b'{"inputs": [{"name": "SEQUENCE", "datatype": "BYTES", "shape": [1, 1], "data": ["MKT"]}]}'


def test_options_reject_nonsense():
    with pytest.raises(ValueError):
        SupervisorOptions(poll_interval_s=0)
    with pytest.raises(ValueError):
        SupervisorOptions(confirm_scans=0)


def test_self_heal_requires_explicit_model_control(tmp_path):
    with pytest.raises(ValueError, match="explicit"):
        LocalTritonServer(ServerOptions(tmp_path, http_port=0, grpc_port=0, metrics_port=0, self_heal=True))


def test_command_line_self_heal_flags():
    args, extra = parse_args(["--model-repository", "r", "--self-heal", "--self-heal-probe", "esm2", "--x=1"])
    assert args.self_heal and args.self_heal_probe == ["esm2"] and args.self_heal_port is None
    assert extra == ["--x=1"]

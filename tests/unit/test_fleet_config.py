"""The fleet's HAProxy configuration (both modes, validated by the real `haproxy -c`), core planning, metrics
parsing and CLI errors; no server is started."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

from tritonfleet.deploy.fleet.__main__ import main as fleet_main
from tritonfleet.deploy.fleet.haproxy import (
    DENIED_GRPC_METHODS,
    BalancerSpec,
    DnsDiscovery,
    HaproxyConfigError,
    ReplicaAddress,
    check_config,
    render_config,
)
from tritonfleet.deploy.fleet.options import CanaryPolicy, FleetError, auto_replicas, plan_cores
from tritonfleet.deploy.fleet.rollout import CanaryFigures, canary_decision, parse_triton_counts

HAVE_HAPROXY = shutil.which("haproxy") is not None or Path("/usr/sbin/haproxy").exists()
needs_haproxy = pytest.mark.skipif(not HAVE_HAPROXY, reason="haproxy not installed (scripts/setup.sh installs it)")


def _static(**fields) -> BalancerSpec:
    replicas = (
        ReplicaAddress("r1", http_port=9000, grpc_port=9001),
        ReplicaAddress("r2", http_port=9010, grpc_port=9011, weight=30),
        ReplicaAddress("r3", http_port=9, grpc_port=9, enabled=False),
    )
    return BalancerSpec(replicas=replicas, stats_socket=Path("/tmp/fleet-test.sock"), **fields)


def _kubernetes() -> BalancerSpec:
    discovery = DnsDiscovery("triton-replicas.default.svc.cluster.local", slots=4)
    return BalancerSpec(discovery=discovery, bind_host="0.0.0.0")


def test_static_config_balances_per_request_checks_every_second_and_replays():
    text = render_config(_static())
    assert text.count("balance leastconn") == 2
    assert "bind 127.0.0.1:8001 proto h2" in text
    assert "server r1 127.0.0.1:9001 check port 9000 check-proto h1 weight 100" in text  # gRPC checked over HTTP
    assert "server r2 127.0.0.1:9010 check weight 30" in text
    assert "server r3 127.0.0.1:9 check weight 100 disabled" in text
    assert "inter 1000ms" in text and "on-marked-down shutdown-sessions" in text
    assert "observe layer7" not in text  # it would count 503 (back-pressure) as a failure
    assert "retry-on conn-failure empty-response junk-response 503" in text  # HTTP
    assert "retry-on conn-failure empty-response junk-response\n" in text  # gRPC: no 503 inside gRPC
    assert "option redispatch 1" in text and "option http-buffer-request" in text
    assert "use-service prometheus-exporter" in text
    assert "stats socket /tmp/fleet-test.sock mode 600 level admin" in text


def test_the_local_fleet_can_cut_hung_requests_itself():
    assert "shutdown-sessions" not in render_config(_static(shutdown_sessions_on_down=False))


def test_bufsize_holds_the_largest_request():
    spec = _static(max_request_bytes=4 << 20)
    assert spec.bufsize > 4 << 20
    assert f"tune.bufsize {spec.bufsize}" in render_config(spec)


def test_front_refuses_per_replica_apis():
    text = render_config(_static())
    assert "path_beg /v2/repository /v2/systemsharedmemory /v2/cudasharedmemory /v2/trace /v2/logging" in text
    for method in DENIED_GRPC_METHODS:
        assert f"/inference.GRPCInferenceService/{method}" in text
    assert "hdr grpc-status 7" in text


def test_dns_discovery_uses_server_template_and_resolvers():
    text = render_config(_kubernetes())
    assert "server-template replica 1-4 triton-replicas.default.svc.cluster.local:8001 check port 8000" in text
    assert "resolvers cluster_dns" in text and "parse-resolv-conf" in text
    assert "bind 0.0.0.0:8000" in text


@needs_haproxy
@pytest.mark.parametrize("spec", [_static(), _kubernetes()], ids=["static", "dns"])
def test_haproxy_accepts_both_modes(spec):
    check_config(render_config(spec))


@needs_haproxy
def test_haproxy_rejections_are_reported():
    with pytest.raises(HaproxyConfigError, match="haproxy -c rejected"):
        check_config(render_config(_static()) + "backend broken\n    balance no-such-algorithm\n")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "exactly one"),
        ({"replicas": (ReplicaAddress("r1"), ReplicaAddress("r1"))}, "unique"),
        ({"replicas": (ReplicaAddress("bad name"),)}, "bad replica name"),
        ({"replicas": (ReplicaAddress("r1", weight=300),)}, "0..256"),
        ({"replicas": (ReplicaAddress("r1"),), "http_port": 8404}, "must differ"),
    ],
)
def test_bad_specs_are_refused(fields, message):
    with pytest.raises(HaproxyConfigError, match=message):
        BalancerSpec(**fields)


def test_cores_are_split_without_oversubscription():
    assert plan_cores(2, (0, 1, 2, 3)) == [(0, 1), (2, 3)]
    assert plan_cores(3, (0, 1, 2, 3)) == [(0, 1), (2,), (3,)]
    with pytest.raises(FleetError, match="oversubscribe"):
        plan_cores(3, (0, 1))
    assert plan_cores(3, (0, 1), oversubscribe=True) == [(0,), (1,), (0,)]
    assert auto_replicas(cores=16, gpus=4) == 4
    assert auto_replicas(cores=8, gpus=0) == 4
    assert auto_replicas(cores=1, gpus=0) == 1


def test_triton_counts_sum_versions_and_take_the_p99():
    text = "\n".join(
        [
            'nv_inference_request_success{model="m",version="1"} 10',
            'nv_inference_request_success{model="m",version="2"} 5',
            'nv_inference_request_failure{model="m",reason="BACKEND",version="2"} 3',
            'nv_inference_request_success{model="other",version="1"} 99',
            'nv_inference_request_summary_us{model="m",version="2",quantile="0.99"} 1500',
            'nv_inference_request_summary_us{model="m",version="2",quantile="0.5"} 100',
        ]
    )
    assert parse_triton_counts(text, "m") == (15, 3, 1500.0)
    assert parse_triton_counts("", "m") == (0, 0, None)


def test_cli_refuses_bad_input_in_one_line(tmp_path, capsys):
    assert fleet_main(["--model-repository", str(tmp_path / "missing"), "--replicas", "1"]) == 1
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        fleet_main(["--model-repository", str(tmp_path), "--replicas", "zero"])
    assert "--replicas takes a positive integer or auto" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        assert fleet_main(["--model-repository", str(tmp_path), "--replicas", "1", "--http-port", port]) == 1
    assert f"--http-port {port} is already in use" in capsys.readouterr().err
    assert fleet_main(["ctl", "--control", "127.0.0.1:9", "status"]) == 1
    assert "no fleet control API" in capsys.readouterr().err


# -- each CPU replica's own CPU plan (deploy/fleet/replica_plan.py) ----------------------------------------------------

_PRIORITY_FREE_NETWORK = """name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 64
instance_group {{ count: {count} kind: KIND_CPU }}
parameters {{ key: "{intra}" value {{ string_value: "1" }} }}
parameters {{ key: "{inter}" value {{ string_value: "1" }} }}
{extra}
"""
_EXPORT_LIKE = {
    "esm2_onnx": _PRIORITY_FREE_NETWORK.format(
        name="esm2_onnx", count=2, intra="intra_op_thread_count", inter="inter_op_thread_count",
        extra='parameters { key: "cpu_nice" value { string_value: "10" } }',
    ),
    "esm2_torchscript": _PRIORITY_FREE_NETWORK.format(
        name="esm2_torchscript", count=2, intra="INTRA_OP_THREAD_COUNT", inter="INTER_OP_THREAD_COUNT", extra="",
    ).replace("onnxruntime_onnx", "pytorch_libtorch"),
    "esm2_onnx_interactive": _PRIORITY_FREE_NETWORK.format(
        name="esm2_onnx_interactive", count=1, intra="intra_op_thread_count", inter="inter_op_thread_count",
        extra='parameters { key: "serves" value { string_value: "interactive requests only (a copy of esm2_onnx)" } }',
    ),
    "esm2_bls": 'name: "esm2_bls"\nbackend: "python"\nmax_batch_size: 64\ninstance_group { count: 2 kind: KIND_CPU }\n'
    'parameters { key: "target_model" value { string_value: "esm2_onnx" } }\n',
    "esm2_tokenizer": 'name: "esm2_tokenizer"\nbackend: "python"\nmax_batch_size: 64\n'
    "instance_group { count: 1 kind: KIND_CPU }\n",
    "esm2": 'name: "esm2"\nplatform: "ensemble"\nmax_batch_size: 64\n',
    "gpu_net": 'name: "gpu_net"\nplatform: "onnxruntime_onnx"\ninstance_group { count: 1 kind: KIND_GPU gpus: [ 0 ] }\n'
    'parameters { key: "intra_op_thread_count" value { string_value: "4" } }\n',
    "wide": 'name: "wide"\nbackend: "python"\ninstance_group { count: 4 kind: KIND_CPU }\n',
}  # fmt: skip


def _export_like_repository(root: Path) -> Path:
    import json

    for name, text in _EXPORT_LIKE.items():
        (root / name / "1").mkdir(parents=True)
        (root / name / "1" / "weights.bin").write_bytes(b"w")
        (root / name / "config.pbtxt").write_text(text)
    (root / "esm2_onnx" / "warmup").mkdir()
    target = {"target": "cpu:2", "chosen_by": "--target", "plan": "CPU: 2 x 1 + 1 interactive", "precision": "int8"}
    (root / "serving_target.json").write_text(json.dumps(target))
    return root


def _configs(root: Path) -> dict:
    from tritonfleet.contract.model_config import model_configs

    return dict(model_configs(root))


@pytest.mark.parametrize(
    ("cores", "networks", "threads", "wide"),
    [(1, 2, 1, 1), (2, 4, 1, 2), (3, 6, 1, 3), (16, 8, 2, 4)],
)
def test_a_cpu_replica_gets_the_export_plan_for_its_cores(tmp_path, cores, networks, threads, wide):
    from tritonfleet.contract.model_config import instance_count, string_parameters
    from tritonfleet.deploy.fleet.replica_plan import scale_configs

    original = _configs(_export_like_repository(tmp_path))
    changed, plan = scale_configs(original, cores)
    served = {**original, **changed}
    for name, (intra, inter) in {
        "esm2_onnx": ("intra_op_thread_count", "inter_op_thread_count"),
        "esm2_torchscript": ("INTRA_OP_THREAD_COUNT", "INTER_OP_THREAD_COUNT"),
    }.items():
        assert instance_count(served[name]) == networks
        assert string_parameters(served[name])[intra] == str(threads)
        assert string_parameters(served[name])[inter] == "1"
        assert plan.models[name].role == "network"
    assert string_parameters(served["esm2_onnx"])["cpu_nice"] == "10"  # everything else of the config stays
    assert instance_count(served["esm2_bls"]) == networks  # follows its target network
    # The export's interactive reserve is kept as it is (its one thread beyond the cores is the export's choice).
    assert instance_count(served["esm2_onnx_interactive"]) == 1
    assert string_parameters(served["esm2_onnx_interactive"])["intra_op_thread_count"] == "1"
    assert plan.models["esm2_onnx_interactive"].role == "interactive reserve"
    assert instance_count(served["esm2_tokenizer"]) == 1
    assert instance_count(served["wide"]) == wide  # an unknown CPU model: capped at the cores
    assert {"gpu_net", "esm2", "esm2_onnx_interactive"}.isdisjoint(changed)  # GPU, ensemble, reserve untouched
    assert served["gpu_net"] == original["gpu_net"]
    # the bulk networks: two single-threaded instances per core at most (plan_cpu)
    assert plan.network_threads == networks * threads <= 2 * cores
    assert "interactive-only" in plan.describe() and f"{cores} core(s)" in plan.describe()
    assert instance_count(original["esm2_onnx"]) == 2  # the input configs are not modified


def test_replica_repository_links_versions_and_picks_up_new_ones(tmp_path):
    import json

    from tritonfleet.contract.model_config import instance_count, read_config
    from tritonfleet.deploy.fleet.replica_plan import build_replica_repository, sync_replica_repository

    source = _export_like_repository(tmp_path / "repository")
    before = {path: path.read_bytes() for path in source.rglob("*") if path.is_file()}
    shadow = tmp_path / "run" / "r1"
    plan = build_replica_repository(source, shadow, cores=3)
    assert plan.export_target == "cpu:2" and plan.repository == str(shadow)
    assert instance_count(read_config(shadow / "esm2_onnx")) == 6
    assert (shadow / "esm2_onnx" / "1").is_symlink() and (shadow / "esm2_onnx" / "warmup").is_symlink()
    assert (shadow / "esm2_onnx" / "1" / "weights.bin").read_bytes() == b"w"  # linked, not copied
    assert (shadow / "esm2").is_symlink() and (shadow / "gpu_net").is_symlink()  # unchanged models: the original
    record = json.loads((shadow / "serving_target.json").read_text())
    assert record["target"] == "cpu:3" and "exported for cpu:2" in record["chosen_by"]
    # A new immutable version appears in the original after the replica started: the shadow links it.
    (source / "esm2_onnx" / "2").mkdir()
    (source / "esm2_onnx" / ".staging-3").mkdir()
    sync_replica_repository(source, shadow)
    assert (shadow / "esm2_onnx" / "2").is_symlink() and not (shadow / "esm2_onnx" / ".staging-3").exists()
    assert instance_count(read_config(shadow / "esm2_onnx")) == 6
    # Rebuilt for one core (a replica re-added by scale-out) without touching the original: two single-threaded
    # instances, as the export plans one core (plan_cpu), so the network is the original's again.
    build_replica_repository(source, shadow, cores=1)
    assert instance_count(read_config(shadow / "esm2_onnx")) == 2
    assert all(path.read_bytes() == data for path, data in before.items())
    assert instance_count(read_config(source / "esm2_onnx")) == 2


def test_gpu_replicas_serve_the_repository_unchanged_and_cpu_replicas_their_plan(tmp_path):
    from tritonfleet.deploy.fleet.fleet import Fleet, FleetOptions

    source = _export_like_repository(tmp_path / "repository")
    fleet = Fleet(FleetOptions(source, replicas=1, gpus=(0,), control_port=None, workdir=tmp_path / "run"))
    gpu_replica = fleet._new_replica("r1", (0,), gpu=0)
    assert Path(gpu_replica.model_repository) == source and "r1" not in fleet.replica_plans
    assert "unchanged" in fleet._plan_status("r1", gpu_replica)["plan"]
    cpu_replica = fleet._new_replica("r2", (0,), gpu=None)
    assert Path(cpu_replica.model_repository) == tmp_path / "run" / "repositories" / "r2"
    status = fleet._plan_status("r2", cpu_replica)
    assert status["cores"] == 1 and status["models"]["esm2_onnx"] == {"instances": 2, "threads": 1, "role": "network"}


def test_an_unreadable_config_is_refused_in_one_line(tmp_path):
    from tritonfleet.deploy.fleet.replica_plan import ReplicaPlanError, build_replica_repository

    (tmp_path / "repository" / "bad").mkdir(parents=True)
    (tmp_path / "repository" / "bad" / "config.pbtxt").write_text("instance_group { no_such_field: 1 }\n")
    with pytest.raises(ReplicaPlanError, match=r"cannot read .*bad/config.pbtxt"):
        build_replica_repository(tmp_path / "repository", tmp_path / "shadow", cores=1)


POLICY = CanaryPolicy(min_requests=40, max_window_s=30)


def _figures(requests=50, failed=0, p99_ms=5.0, rest_error_ratio=0.0, rest_p99_ms=5.0, elapsed_s=1.0):
    p99_us = None if p99_ms is None else p99_ms * 1000
    return CanaryFigures(requests, failed, p99_us, rest_error_ratio, rest_p99_ms * 1000, elapsed_s)


@pytest.mark.parametrize(
    ("figures", "decision", "reason"),
    [
        (_figures(requests=10), "", ""),  # still watching: too few requests, window open
        (_figures(requests=10, elapsed_s=31), "promote", "error ratio 0.00%"),  # window over
        (_figures(requests=10, failed=3), "rollback", "(3 failed)"),  # aborted early
        (_figures(requests=100, failed=2), "rollback", "error ratio 2.00% > 1.00%"),
        (_figures(requests=100, failed=2, rest_error_ratio=0.02), "promote", "<= 4.00%"),  # the rest fails as much
        (_figures(p99_ms=7.2, rest_p99_ms=4.8), "promote", "p99 within"),  # 1.5x but only 2.4 ms: noise
        (_figures(p99_ms=40.0, rest_p99_ms=20.0), "rollback", "p99 40.0 ms > 1.5 x 20.0 ms"),
        (_figures(p99_ms=28.0, rest_p99_ms=20.0), "promote", "p99 within"),  # 8 ms more but under 1.5x
        (_figures(p99_ms=None), "promote", "p99 within"),  # no summary (no request in its window)
    ],
)
def test_canary_decision(figures, decision, reason):
    got, why = canary_decision(figures, POLICY)
    assert got == decision and reason in why, (got, why)


def test_a_canary_out_of_rotation_is_rolled_back_before_its_window_ends():
    assert canary_decision(_figures(requests=1), POLICY, in_service=lambda: False)[0] == "rollback"

"""The local fleet (issue 17): real tritonservers (the deploy.local launcher each) behind a real HAProxy 2.6.

One fleet of 2 replicas serves the module (scale-out adds a third on a shared core). Failures are counted, never
timed: every wait is on a condition, bounded in time.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tritonfleet.contract.serving_plan import plan_cpu
from tritonfleet.deploy.fleet import CanaryPolicy, Fleet, FleetOptions
from tritonfleet.deploy.fleet.haproxy import GRPC_BACKEND, HTTP_BACKEND
from tritonfleet.loadtest.fleet_chaos import FEATURES, MODEL, FleetLoad, add_version, build_repository, summarize

pytestmark = pytest.mark.skipif(
    shutil.which("haproxy") is None and not Path("/usr/sbin/haproxy").exists(),
    reason="haproxy not installed (scripts/setup.sh installs it as root)",
)
WORKERS = [("grpc", "project"), ("http", "project"), ("grpc", "plain"), ("http", "plain")]


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    """The tiny model, planned as an export plans a network for `--target cpu:2` (2 single-threaded instances): each
    replica must serve it with its own plan (plan_cpu for the cores it is pinned to)."""
    root = build_repository(tmp_path_factory.mktemp("fleet") / "repository")
    config = (root / MODEL / "config.pbtxt").read_text()
    assert "instance_group { kind: KIND_CPU count: 1 }" in config
    config = config.replace("instance_group { kind: KIND_CPU count: 1 }", "instance_group { kind: KIND_CPU count: 2 }")
    config += 'parameters { key: "intra_op_thread_count" value { string_value: "1" } }\n'
    config += 'parameters { key: "inter_op_thread_count" value { string_value: "1" } }\n'
    (root / MODEL / "config.pbtxt").write_text(config)
    target = {"target": "cpu:2", "chosen_by": "--target", "plan": "CPU: 2 instance(s) x 1 thread", "precision": "fp32"}
    (root / "serving_target.json").write_text(json.dumps(target))
    return root


@pytest.fixture(scope="module")
def fleet(repository, tmp_path_factory):
    options = FleetOptions(
        repository,
        replicas=2,
        http_port=0,
        grpc_port=0,
        metrics_port=0,
        control_port=0,
        oversubscribe=True,
        max_replicas=4,
        startup_timeout_s=120,
        exit_timeout_s=5,
        # Latency is not judged here (2 busy cores make any p99 comparison a coin toss; the p99 rule is unit-tested
        # in test_fleet_config.py): the canary test checks errors, promotion and rollback end to end.
        canary=CanaryPolicy(min_requests=40, max_window_s=30, p99_factor=math.inf),
        workdir=tmp_path_factory.mktemp("fleet-work"),
    )
    with Fleet(options) as running:
        yield running


def _until(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.05)


def _grpc_inputs() -> list[grpcclient.InferInput]:
    inputs = []
    for name in ("INPUT0", "INPUT1"):
        tensor = grpcclient.InferInput(name, [1, FEATURES], "FP32")
        tensor.set_data_from_numpy(np.ones((1, FEATURES), dtype=np.float32))
        inputs.append(tensor)
    return inputs


def _sent(fleet: Fleet, backend: str) -> dict[str, int]:
    return {row.name: row.total for row in fleet.api.stats() if row.backend == backend}


def _load(fleet: Fleet) -> FleetLoad:
    return FleetLoad({"http": fleet.http_url, "grpc": fleet.grpc_url}, WORKERS)


def _failed(load: FleetLoad, mode: str) -> int:
    return sum(stats.failed for (_, worker_mode), stats in load.stats.items() if worker_mode == mode)


def test_one_grpc_channel_spreads_requests_over_every_replica(fleet):
    before = _sent(fleet, GRPC_BACKEND)
    client = grpcclient.InferenceServerClient(fleet.grpc_url)  # one channel = one HTTP/2 connection
    try:
        for _ in range(40):
            client.infer(MODEL, _grpc_inputs())
    finally:
        client.close()
    after = _sent(fleet, GRPC_BACKEND)
    shares = {name: after[name] - before.get(name, 0) for name in fleet.replicas}
    assert sum(shares.values()) == 40
    assert all(count >= 10 for count in shares.values()), shares


def test_front_answers_readiness_and_refuses_per_replica_apis(fleet):
    with urllib.request.urlopen(f"http://{fleet.http_url}/v2/health/ready", timeout=5) as answer:
        assert answer.status == 200
    request = urllib.request.Request(f"http://{fleet.http_url}/v2/repository/index", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    assert refused.value.code == 403
    client = grpcclient.InferenceServerClient(fleet.grpc_url)
    try:
        with pytest.raises(InferenceServerException, match="PERMISSION_DENIED|refused at the fleet front"):
            client.unload_model(MODEL)
        assert client.is_model_ready(MODEL)
    finally:
        client.close()
    with urllib.request.urlopen(fleet.metrics_url, timeout=5) as answer:
        assert "haproxy_backend_active_servers" in answer.read().decode()


def test_drained_replica_gets_no_new_requests(fleet):
    fleet.drain("r1")
    try:
        before = _sent(fleet, HTTP_BACKEND)["r1"] + _sent(fleet, GRPC_BACKEND)["r1"]
        with _load(fleet) as load:
            load.wait_requests(60, timeout_s=60)
        after = _sent(fleet, HTTP_BACKEND)["r1"] + _sent(fleet, GRPC_BACKEND)["r1"]
        assert after == before
        assert load.total() >= 60 and _failed(load, "project") == 0 and _failed(load, "plain") == 0
    finally:
        fleet.undrain("r1")
    _until(lambda: "r1" in fleet.in_rotation(), 10, "r1 back in rotation")


@pytest.mark.parametrize("fault", ["SIGKILL", "SIGSTOP"])
def test_killed_or_hung_replica_costs_no_request(fleet, fault):
    _until(lambda: set(fleet.in_rotation()) >= {"r1", "r2"}, 60, "both replicas in rotation")
    with _load(fleet) as load:
        load.wait_requests(100, timeout_s=60)
        pid = fleet.replicas["r1"].tritonserver_pid()
        assert pid is not None
        os.kill(pid, getattr(signal, fault))
        try:
            _until(lambda: "r1" not in fleet.in_rotation(), 15, f"r1 out of rotation after {fault}")
            load.wait_requests(60, timeout_s=60)  # served by r2 alone meanwhile
        finally:
            if fault == "SIGSTOP":
                os.kill(pid, signal.SIGCONT)
        _until(lambda: "r1" in fleet.in_rotation(), 120, "r1 back in rotation")
        load.wait_requests(60, timeout_s=60)
    print(f"{fault}: {summarize(load.stats)}")  # the plain clients' count is the study's figure (reports/fleet.md)
    assert _failed(load, "project") == 0, summarize(load.stats)


def test_rolling_update_and_rollback_under_load(fleet, repository):
    add_version(repository, 2)
    with _load(fleet) as load:
        load.wait_requests(40, timeout_s=60)
        fleet.rolling_update(MODEL, "2")
        load.wait_requests(40, timeout_s=60)
        assert fleet.versions[MODEL][-1] == "2"
        previous = fleet.rollback(MODEL)
        load.wait_requests(40, timeout_s=60)
    assert previous == "1"
    assert _failed(load, "project") == 0 and _failed(load, "plain") == 0, summarize(load.stats)
    served = {version for stats in load.stats.values() for version in stats.versions if version}
    assert {"1", "2"} <= served
    assert (repository / MODEL / "2").is_dir() and (repository / MODEL / "1").is_dir()  # nothing edited in place


def test_canary_promotes_a_good_version_and_rolls_back_a_broken_one(fleet, repository):
    add_version(repository, 3)
    add_version(repository, 4, broken=True)
    with _load(fleet) as load:
        good = fleet.canary(MODEL, "3", weight_percent=30)
        assert good.decision == "promote", good
        assert fleet.served_version(MODEL) == "3"
        broken = fleet.canary(MODEL, "4", weight_percent=30)
        load.wait_requests(40, timeout_s=60)
    assert broken.decision == "rollback", (broken, fleet.events[-12:], summarize(load.stats))
    assert broken.figures["canary_failed"] >= 1
    assert fleet.served_version(MODEL) == "3"
    served_after = {v for stats in load.stats.values() for v in stats.versions}
    assert "4" not in served_after  # a failing version never answers successfully
    assert fleet.canaries[-1].decision == "rollback"


def test_scale_out_and_in_under_load(fleet):
    with _load(fleet) as load:
        load.wait_requests(40, timeout_s=60)
        assert fleet.scale_to(3) == ["r1", "r2", "r3"]
        before = _sent(fleet, HTTP_BACKEND)["r3"] + _sent(fleet, GRPC_BACKEND)["r3"]
        load.wait_requests(60, timeout_s=60)
        assert _sent(fleet, HTTP_BACKEND)["r3"] + _sent(fleet, GRPC_BACKEND)["r3"] > before
        assert fleet.scale_to(2) == ["r1", "r2"]
        load.wait_requests(40, timeout_s=60)
    assert _failed(load, "project") == 0 and _failed(load, "plain") == 0, summarize(load.stats)


def test_each_replica_serves_its_own_cpu_plan(fleet, repository):
    """After kills, restarts, updates, canaries and scaling: every replica's tritonserver (asked on its own port)
    serves the network with two single-threaded instances per core of its core set (plan_cpu); the
    repository is unchanged."""
    # The earlier tests' kills, restarts and scaling may leave a replica still starting: wait until each answers.
    _until(lambda: all(replica.is_ready() for replica in fleet.replicas.values()), 120, "every replica ready")
    status = fleet.status()["replicas"]
    for name, replica in fleet.replicas.items():
        expected, _ = plan_cpu(len(replica.cores))
        url = f"http://{replica.host}:{replica.http_port}/v2/models/{MODEL}/config"
        with urllib.request.urlopen(url, timeout=10) as answer:
            served = json.loads(answer.read())
        assert sum(group["count"] for group in served["instance_group"]) == expected, (name, served["instance_group"])
        assert served["parameters"]["intra_op_thread_count"]["string_value"] == "1"
        plan = status[name]["plan"]
        assert plan["cores"] == len(replica.cores) and plan["export_target"] == "cpu:2"
        assert plan["models"][MODEL] == {"instances": expected, "threads": 1, "role": "network"}
    assert "count: 2" in (repository / MODEL / "config.pbtxt").read_text()


def test_cli_serves_operates_and_drains_on_sigterm(repository, tmp_path):
    from tritonfleet.deploy.local.server import _free_port

    ports = []
    for _ in range(4):
        ports.append(_free_port("127.0.0.1", exclude=set(ports)))
    http, grpc, metrics, control = ports
    command = [
        sys.executable, "-m", "tritonfleet.deploy.fleet", "--model-repository", str(repository), "--replicas", "1",
        f"--http-port={http}", f"--grpc-port={grpc}", f"--metrics-port={metrics}", f"--control-port={control}",
        "--workdir", str(tmp_path), "--exit-timeout-secs=5",  # the last one goes to every replica's launcher
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in process.stdout:
            if line.startswith("fleet ready") or process.poll() is not None:
                break
        ctl = [sys.executable, "-m", "tritonfleet.deploy.fleet", "ctl", "--control", f"127.0.0.1:{control}"]
        status = subprocess.run([*ctl, "status"], capture_output=True, text=True, timeout=60)
        assert status.returncode == 0 and '"r1"' in status.stdout, status.stderr
        plan = json.loads(status.stdout)["replicas"]["r1"]["plan"]  # one replica: every core this process may use
        instances, _ = plan_cpu(len(os.sched_getaffinity(0)))
        assert plan["cores"] == len(os.sched_getaffinity(0)) and plan["models"][MODEL]["instances"] == instances
        refused = subprocess.run([*ctl, "drain", "r9"], capture_output=True, text=True, timeout=60)
        assert refused.returncode == 1 and "no replica named 'r9'" in refused.stderr
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=90) == 0
    finally:
        if process.poll() is None:
            process.kill()

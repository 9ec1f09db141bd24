"""The Kubernetes inference probe (deploy/kubernetes/base/probe/infer_probe.py) against a real tritonserver.

Reproduces the failure it exists for: SIGKILL of a python-backend stub leaves `/v2/health/ready` at 200 while every
request to the model fails. The probe must report that (exit 1), and with `--repair` bring the model back through
the restricted repository API. It runs with `python -I -S` (no site-packages) to prove it needs only the standard
library, as in the NGC image, which has python3 but not tritonclient.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support.tiny_models import build_tiny_embedding_onnx
from tritonfleet.deploy.local import LocalTritonServer
from tritonfleet.deploy.local.stubs import list_stub_processes

PROBE = Path(__file__).resolve().parents[2] / "deploy/kubernetes/base/probe/infer_probe.py"
MODEL = "tiny_probe"
ADMIN_KEY = "test-admin-key"
BODY = json.dumps(
    {
        "inputs": [{"name": "IDS", "shape": [1, 3], "datatype": "INT64", "data": [1, 2, 3]}],
        "outputs": [{"name": "MEAN"}],
    }
)
RESTRICTED = (
    f"--http-restricted-api=model-repository,shared-memory:triton-admin-key={ADMIN_KEY}",
    f"--grpc-restricted-protocol=model-repository,shared-memory:triton-admin-key={ADMIN_KEY}",
)


def run_probe(server_url: str, *args: str, admin_key: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_ADMIN_KEY"}
    if admin_key is not None:
        env["TRITON_ADMIN_KEY"] = admin_key
    return subprocess.run(
        [sys.executable, "-I", "-S", str(PROBE), f"--url=http://{server_url}", "--timeout=20", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        check=False,
    )


def stub_pids(server: LocalTritonServer, model: str) -> list[int]:
    """Python-backend stub processes of this server serving `model`."""
    return [stub.pid for stub in list_stub_processes(server.pid) if stub.model == model]


def kill_stub(server: LocalTritonServer, model: str) -> None:
    pids = stub_pids(server, model)
    assert len(pids) == 1, f"expected one stub for {model}, found {pids}"
    os.kill(pids[0], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pids[0]}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)


@pytest.fixture
def probe_server(tmp_path, triton_server_factory) -> LocalTritonServer:
    repository = tmp_path / "repository"
    repository.mkdir()
    build_tiny_embedding_onnx(repository, name=MODEL)
    return triton_server_factory(
        repository,
        exit_timeout_s=3,
        model_control_mode="explicit",
        extra_args=RESTRICTED,
    )


def test_healthy_model_passes(probe_server):
    result = run_probe(probe_server.http_url, f"--model={MODEL}", f"--body={BODY}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("probe: ok")


def test_unreachable_server_fails(probe_server):
    # A port nothing listens on: the metrics port of this server is HTTP but serves no /v2 routes.
    result = run_probe(f"127.0.0.1:{probe_server.options.metrics_port}", f"--model={MODEL}", f"--body={BODY}")
    assert result.returncode == 1
    assert "FAIL" in result.stderr


def test_dead_stub_fails_although_ready_stays_200(probe_server):
    kill_stub(probe_server, MODEL)
    with urllib.request.urlopen(f"http://{probe_server.http_url}/v2/health/ready", timeout=5) as response:
        assert response.status == 200  # what Triton 24.10 reports: the reason /ready alone is not enough
    result = run_probe(probe_server.http_url, f"--model={MODEL}", f"--body={BODY}")
    assert result.returncode == 1
    assert "is not healthy" in result.stderr


def test_repair_reloads_the_dead_model(probe_server):
    kill_stub(probe_server, MODEL)
    refused = run_probe(probe_server.http_url, f"--model={MODEL}", f"--body={BODY}", "--repair", admin_key="wrong")
    assert refused.returncode == 1
    assert "403" in refused.stderr  # the repository API is restricted to holders of the admin key

    repaired = run_probe(probe_server.http_url, f"--model={MODEL}", f"--body={BODY}", "--repair", admin_key=ADMIN_KEY)
    assert repaired.returncode == 0, repaired.stderr
    assert "after reload" in repaired.stdout
    assert len(stub_pids(probe_server, MODEL)) == 1
    again = run_probe(probe_server.http_url, f"--model={MODEL}", f"--body={BODY}")
    assert again.returncode == 0, again.stderr


def start_watcher(server_url: str, status: Path, *args: str) -> subprocess.Popen[str]:
    """The sidecar mode in the background (no admin key in its environment; output to a file, never a full pipe)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_ADMIN_KEY"}
    with open(status.with_suffix(".log"), "a") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-I",
                "-S",
                str(PROBE),
                f"--url=http://{server_url}",
                "--timeout=20",
                "--watch=0.5",
                f"--status-file={status}",
                *args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )


def wait_for_status(status: Path, ok: bool, contains: str = "", deadline_s: float = 60.0) -> dict:
    """The watcher's status once it reads `ok` with `contains` in its detail (bounded: fails after deadline_s)."""
    deadline = time.monotonic() + deadline_s
    last: dict = {}
    while time.monotonic() < deadline:
        if status.exists():
            try:
                last = json.loads(status.read_text())
            except ValueError:  # replaced atomically, but be tolerant of a reader race on exotic filesystems
                last = {}
            if last.get("ok") is ok and contains in last.get("detail", ""):
                return last
        time.sleep(0.2)
    raise AssertionError(f"status never became ok={ok}; last {last}")


def test_watch_mode_reports_through_the_status_file_and_stops_on_sigterm(probe_server, tmp_path):
    """The sidecar mode: an interactive-priority inference every 0.5 s, its result read by the readiness check."""
    status = tmp_path / "status.json"
    watcher = start_watcher(probe_server.http_url, status, f"--model={MODEL}", f"--body={BODY}")
    try:
        assert "ok" in wait_for_status(status, ok=True)["detail"]
        checked = run_probe("unused", "--check-status", f"--status-file={status}")
        assert checked.returncode == 0, checked.stderr
        stale = run_probe("unused", "--check-status", f"--status-file={status}", "--max-age=-1")
        assert stale.returncode == 1 and "old" in stale.stderr
    finally:
        watcher.send_signal(signal.SIGTERM)
        assert watcher.wait(timeout=30) == 0  # SIGTERM ends it promptly (as PID 1 of a sidecar)


def test_watch_mode_reports_a_dead_stub_and_repairs_it(probe_server, tmp_path):
    status = tmp_path / "status.json"
    watcher = start_watcher(probe_server.http_url, status, f"--model={MODEL}", f"--body={BODY}")
    try:
        wait_for_status(status, ok=True)
        kill_stub(probe_server, MODEL)
        wait_for_status(status, ok=False, contains="is not healthy")
        unready = run_probe("unused", "--check-status", f"--status-file={status}")
        assert unready.returncode == 1
    finally:
        watcher.send_signal(signal.SIGTERM)
        watcher.wait(timeout=30)
    status.unlink()
    repairing = start_watcher(probe_server.http_url, status, f"--model={MODEL}", f"--body={BODY}", "--repair")
    try:
        # It tries the repair; without the admin key in its environment the repository API answers 403.
        wait_for_status(status, ok=False, contains="403")
    finally:
        repairing.send_signal(signal.SIGTERM)
        repairing.wait(timeout=30)


def test_the_request_runs_at_interactive_priority_with_a_deadline():
    sys.path.insert(0, str(PROBE.parent))
    try:
        import infer_probe
    finally:
        sys.path.remove(str(PROBE.parent))
    body = infer_probe.with_request_parameters(json.loads(BODY), infer_probe.INTERACTIVE_PRIORITY, 20.0)
    assert body["parameters"] == {"priority": 1, "timeout": 20_000_000}
    from tritonfleet.contract.priorities import priority_level

    assert priority_level("interactive") == infer_probe.INTERACTIVE_PRIORITY


def test_default_request_matches_the_esm2_contract(esm2_server):
    """The probe's built-in request (SEQUENCE -> EMBEDDING on the esm2 ensemble) works on the real repository."""
    result = run_probe(esm2_server.http_url)
    assert result.returncode == 0, result.stderr
    assert "(esm2," in result.stdout

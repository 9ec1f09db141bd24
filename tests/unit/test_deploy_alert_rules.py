"""`promtool test rules` on deploy/monitoring/prometheus/rules: the alerts fire (and stay quiet) on synthetic series.

Each case below is a promtool unit test: input series at a 15 s scrape interval, then the alerts expected at given
evaluation times, with their labels and rendered annotations (so human units are checked: "150ms", never "150kus").
Descriptions are taken from the rules file; summaries are spelled out here.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy/monitoring/prometheus/rules/tritonfleet.rules.yml"
PROMTOOL = shutil.which("promtool")
pytestmark = [
    pytest.mark.unit,
    pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package 'prometheus')"),
]

TRITON = 'job="tritonfleet-triton",instance="10.0.0.1:8002",model="esm2",version="1"'
BALANCER = 'job="tritonfleet-balancer",instance="10.0.0.9:8405",proxy="triton_grpc"'


def descriptions() -> dict[tuple[str, str], str]:
    """(alert, severity) -> its description as written in the rules file."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {
        (rule["alert"], rule["labels"]["severity"]): rule["annotations"].get("description")
        for group in groups
        for rule in group["rules"]
        if "alert" in rule
    }


def alert(name: str, severity: str, summary: str, **labels: str) -> dict:
    annotations = {"summary": summary}
    description = descriptions()[(name, severity)]
    if description:
        annotations["description"] = description
    return {"exp_labels": {"severity": severity, **labels}, "exp_annotations": annotations}


def failures(success: str, backend: str, rejected: str) -> list[dict]:
    return [
        {"series": f"nv_inference_request_success{{{TRITON}}}", "values": success},
        {"series": f'nv_inference_request_failure{{{TRITON},reason="BACKEND"}}', "values": backend},
        {"series": f'nv_inference_request_failure{{{TRITON},reason="REJECTED"}}', "values": rejected},
    ]


def run_promtool(tmp_path: Path, tests: list[dict]) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "rules.test.yml"
    path.write_text(
        yaml.safe_dump({"rule_files": [str(RULES)], "evaluation_interval": "15s", "tests": tests}, sort_keys=False)
    )
    return subprocess.run([PROMTOOL, "test", "rules", str(path)], capture_output=True, text=True, timeout=120)


def check(tmp_path: Path, test: dict) -> None:
    result = run_promtool(tmp_path, [{"interval": "15s", **test}])
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_model_failing_every_request_at_a_low_rate_alerts(tmp_path):
    """0.05 requests/s, all BACKEND failures: an absolute threshold (0.1/s) never fired; the ratio does."""
    summary = "Model esm2 fails 100% of its requests"
    check(
        tmp_path,
        {
            "input_series": failures(success="0x80", backend="0+0.75x80", rejected="0x80"),
            "alert_rule_test": [
                {"eval_time": "4m", "alertname": "TritonInferenceFailureRatio", "exp_alerts": []},
                {
                    "eval_time": "15m",
                    "alertname": "TritonInferenceFailureRatio",
                    "exp_alerts": [
                        alert("TritonInferenceFailureRatio", "warning", summary, model="esm2"),
                        alert("TritonInferenceFailureRatio", "critical", summary, model="esm2"),
                    ],
                },
            ],
        },
    )


def test_rejections_are_back_pressure_not_failures(tmp_path):
    """10 ok/s and 2 REJECTED/s: no failure alert, a back-pressure warning with the share in percent."""
    check(
        tmp_path,
        {
            "input_series": failures(success="0+150x80", backend="0x80", rejected="0+30x80"),
            "alert_rule_test": [
                {"eval_time": "15m", "alertname": "TritonInferenceFailureRatio", "exp_alerts": []},
                {
                    "eval_time": "15m",
                    "alertname": "TritonRequestsRejected",
                    "exp_alerts": [
                        alert(
                            "TritonRequestsRejected",
                            "warning",
                            "Triton rejects 16.67% of the requests to esm2 (queue full)",
                            model="esm2",
                        )
                    ],
                },
            ],
        },
    )


def test_a_small_failure_share_under_heavy_traffic_stays_quiet(tmp_path):
    """100 ok/s and 0.5 BACKEND failures/s (0.5 %): below the 1 % ratio, although 5x the old absolute threshold."""
    check(
        tmp_path,
        {
            "input_series": failures(success="0+1500x80", backend="0+7.5x80", rejected="0x80"),
            "alert_rule_test": [
                {"eval_time": "15m", "alertname": "TritonInferenceFailureRatio", "exp_alerts": []},
                {"eval_time": "15m", "alertname": "TritonRequestsRejected", "exp_alerts": []},
            ],
        },
    )


def test_triton_down_and_absent(tmp_path):
    down = 'up{job="tritonfleet-triton",instance="10.0.0.1:8002"}'
    check(
        tmp_path,
        {
            "input_series": [
                {"series": down, "values": "1x4 0x12 1x8"},
                {"series": 'up{job="tritonfleet-triton",instance="10.0.0.2:8002"}', "values": "1x24"},
            ],
            "alert_rule_test": [
                {"eval_time": "1m", "alertname": "TritonDown", "exp_alerts": []},
                {
                    "eval_time": "3m",
                    "alertname": "TritonDown",
                    "exp_alerts": [
                        alert(
                            "TritonDown",
                            "critical",
                            "Triton 10.0.0.1:8002 does not answer its metrics scrape",
                            job="tritonfleet-triton",
                            instance="10.0.0.1:8002",
                        )
                    ],
                },
                {"eval_time": "5m", "alertname": "TritonDown", "exp_alerts": []},
                {"eval_time": "5m", "alertname": "TritonMetricsAbsent", "exp_alerts": []},
            ],
        },
    )
    check(
        tmp_path,
        {
            "input_series": [{"series": 'up{job="tritonfleet-balancer",instance="10.0.0.9:8405"}', "values": "1x40"}],
            "alert_rule_test": [
                {"eval_time": "4m", "alertname": "TritonMetricsAbsent", "exp_alerts": []},
                {
                    "eval_time": "6m",
                    "alertname": "TritonMetricsAbsent",
                    "exp_alerts": [
                        alert(
                            "TritonMetricsAbsent",
                            "critical",
                            "No Triton server is being scraped (job tritonfleet-triton)",
                            job="tritonfleet-triton",
                        )
                    ],
                },
            ],
        },
    )


def test_replica_down_in_the_balancer_fires_and_resolves(tmp_path):
    """DOWN fires FleetReplicaDown; an empty DNS slot (MAINT) and a drained replica (DRAIN) do not."""

    def status(server: str, state: str) -> str:
        return f'haproxy_server_status{{{BALANCER},server="{server}",state="{state}"}}'

    series = [
        {"series": status("replica1", "DOWN"), "values": "0x4 1x8 0x12"},
        {"series": status("replica1", "UP"), "values": "1x4 0x8 1x12"},
        {"series": status("replica2", "DRAIN"), "values": "1x24"},
        {"series": status("replica3", "MAINT"), "values": "1x24"},
        {"series": "haproxy_backend_active_servers{" + BALANCER + "}", "values": "1x4 0x8 1x12"},
    ]
    down = alert(
        "FleetReplicaDown",
        "warning",
        "Replica replica1 of triton_grpc is out of rotation (failed health checks)",
        job="tritonfleet-balancer",
        instance="10.0.0.9:8405",
        proxy="triton_grpc",
        server="replica1",
        state="DOWN",
    )
    empty = alert(
        "FleetNoReplicaAvailable",
        "critical",
        "Balancer backend triton_grpc has no replica in rotation",
        job="tritonfleet-balancer",
        instance="10.0.0.9:8405",
        proxy="triton_grpc",
    )
    check(
        tmp_path,
        {
            "input_series": series,
            "alert_rule_test": [
                {"eval_time": "1m", "alertname": "FleetReplicaDown", "exp_alerts": []},
                {"eval_time": "2m30s", "alertname": "FleetReplicaDown", "exp_alerts": [down]},
                {"eval_time": "2m30s", "alertname": "FleetNoReplicaAvailable", "exp_alerts": [empty]},
                {"eval_time": "5m", "alertname": "FleetReplicaDown", "exp_alerts": []},
                {"eval_time": "5m", "alertname": "FleetNoReplicaAvailable", "exp_alerts": []},
            ],
        },
    )


def test_durations_render_in_human_units(tmp_path):
    """A 150 ms mean queue time reads "150ms" (not "150kus"); a 2.5 s p99 reads "2.5s"."""
    p99 = "nv_inference_request_summary_us{" + TRITON.replace("10.0.0.1", "{ip}") + ',quantile="0.99"}'
    check(
        tmp_path,
        {
            "input_series": [
                {"series": f"nv_inference_request_success{{{TRITON}}}", "values": "0+15x80"},
                {"series": f"nv_inference_queue_duration_us{{{TRITON}}}", "values": "0+2250000x80"},
                {"series": p99.replace("{ip}", "10.0.0.1"), "values": "2500000x80"},
                {"series": p99.replace("{ip}", "10.0.0.2"), "values": "100000x80"},
            ],
            "alert_rule_test": [
                {
                    "eval_time": "15m",
                    "alertname": "TritonQueueTimeHigh",
                    "exp_alerts": [
                        alert(
                            "TritonQueueTimeHigh",
                            "warning",
                            "Requests to esm2 wait 150ms in the queue on average",
                            model="esm2",
                        )
                    ],
                },
                {
                    "eval_time": "15m",
                    "alertname": "TritonRequestLatencyP99High",
                    "exp_alerts": [
                        alert(
                            "TritonRequestLatencyP99High",
                            "warning",
                            "p99 request time of esm2 is 2.5s on the slowest server",
                            model="esm2",
                        )
                    ],
                },
            ],
        },
    )


def test_promtool_test_rules_catches_a_wrong_expectation(tmp_path):
    """The harness is not vacuous: a wrong expected summary fails promtool."""
    result = run_promtool(
        tmp_path,
        [
            {
                "interval": "15s",
                "input_series": failures(success="0x80", backend="0+0.75x80", rejected="0x80"),
                "alert_rule_test": [
                    {
                        "eval_time": "15m",
                        "alertname": "TritonInferenceFailureRatio",
                        "exp_alerts": [alert("TritonInferenceFailureRatio", "critical", "wrong", model="esm2")],
                    }
                ],
            }
        ],
    )
    assert result.returncode != 0


def test_every_alert_has_a_severity_and_a_summary_without_raw_microseconds():
    groups = yaml.safe_load(RULES.read_text())["groups"]
    alerts = [rule for group in groups for rule in group["rules"] if "alert" in rule]
    assert {"TritonInferenceFailureRatio", "TritonRequestsRejected", "TritonDown", "FleetReplicaDown"} <= {
        a["alert"] for a in alerts
    }
    for rule in alerts:
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        summary = rule["annotations"]["summary"]
        assert "us " not in summary and not summary.endswith("us"), rule["alert"]
        if "$value" in summary:
            assert "| humanize" in summary, rule["alert"]

"""Which Triton and HAProxy metric names the monitoring stack depends on, read out of its PromQL programmatically.

Sources: the Grafana dashboard (panel targets and `label_values(...)` variables), the Prometheus rules (recording and
alerting; recording-rule names are resolved to the metrics they are built from), the prometheus-adapter rule and the
HorizontalPodAutoscaler metric it serves. Tests check the names against a real tritonserver's /metrics (started
with `--metrics-config summary_latencies=true`, as every manifest here starts it) and a real HAProxy's exporter.

    python -m deploy.monitoring.metric_names   # prints every name and where it is used
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parents[1]
DASHBOARD = DEPLOY / "monitoring/grafana/dashboards/tritonfleet.json"
RULES_DIR = DEPLOY / "monitoring/prometheus/rules"
ADAPTER_VALUES = DEPLOY / "kubernetes/prometheus-adapter/values.yaml"
HPA = DEPLOY / "kubernetes/base/horizontalpodautoscaler.yaml"

# Names Prometheus itself attaches to every target; not Triton's.
PROMETHEUS_SYNTHETIC = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})
# Triton exports these only with a GPU (and NVML/DCGM); a CPU-only server has none of them.
GPU_METRIC_PREFIXES = ("nv_gpu_", "nv_energy_")
# HAProxy's built-in Prometheus exporter (the fleet's balancer), not Triton's.
BALANCER_METRIC_PREFIXES = ("haproxy_",)
# Quantile summaries: only with `--metrics-config summary_latencies=true` (r24.10 has no latency histograms).
SUMMARY_METRIC_SUFFIX = "_summary_us"

_KEYWORDS = frozenset(
    {
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "inf",
        "nan",
        "atan2",
    }
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_TEMPLATE = re.compile(r"<<[^>]*>>")  # prometheus-adapter Go templates
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_BRACES = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_DURATION = re.compile(r"(?<![\w:])(?:\d+(?:ms|[smhdwy]))+(?![\w:])")
_NUMBER = re.compile(r"(?<![\w:])(?:0x[0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)")
_IDENTIFIER = re.compile(r"(?<![\w:$])[a-zA-Z_:][\w:]*")
_LABEL_VALUES = re.compile(r"label_values\(\s*([a-zA-Z_:][\w:]*)")


def metric_names(expr: str) -> set[str]:
    """Metric names selected by a PromQL expression (functions, keywords, labels and numbers excluded)."""
    text = _STRING.sub('""', expr)
    text = _TEMPLATE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _BRACES.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _DURATION.sub(" ", text)
    text = _NUMBER.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name = match.group(0)
        following = text[match.end() :].lstrip()
        if name.lower() in _KEYWORDS or following.startswith("("):
            continue
        names.add(name)
    return names


def dashboard_expressions(path: Path = DASHBOARD) -> list[str]:
    """Every PromQL expression of a Grafana dashboard: panel targets (rows included) and query variables."""
    dashboard = json.loads(path.read_text())
    expressions = []

    def panels(items: list[dict[str, Any]]) -> None:
        for panel in items:
            expressions.extend(t["expr"] for t in panel.get("targets", []) if t.get("expr"))
            panels(panel.get("panels", []))

    panels(dashboard.get("panels", []))
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable.get("query")
        query = query.get("query", "") if isinstance(query, dict) else query or ""
        match = _LABEL_VALUES.match(query)
        expressions.append(match.group(1) if match else query)
    return expressions


def rule_groups(rules_dir: Path = RULES_DIR) -> list[dict[str, Any]]:
    groups = []
    for path in sorted(rules_dir.glob("*.yml")):
        groups.extend(yaml.safe_load(path.read_text())["groups"])
    return groups


def recording_rules(rules_dir: Path = RULES_DIR) -> dict[str, str]:
    return {r["record"]: r["expr"] for g in rule_groups(rules_dir) for r in g["rules"] if "record" in r}


def rule_expressions(rules_dir: Path = RULES_DIR) -> list[str]:
    return [r["expr"] for g in rule_groups(rules_dir) for r in g["rules"]]


def adapter_rules(path: Path = ADAPTER_VALUES) -> list[dict[str, Any]]:
    return yaml.safe_load(path.read_text())["rules"]["custom"]


def adapter_expressions(path: Path = ADAPTER_VALUES) -> list[str]:
    return [expr for rule in adapter_rules(path) for expr in (rule["seriesQuery"], rule["metricsQuery"])]


def adapter_metric_names(path: Path = ADAPTER_VALUES) -> set[str]:
    """The custom-metrics names the adapter serves (`name.as`)."""
    return {rule["name"]["as"] for rule in adapter_rules(path)}


def hpa_metric_names(path: Path = HPA) -> set[str]:
    names = set()
    for doc in yaml.safe_load_all(path.read_text()):
        for metric in doc["spec"].get("metrics", []):
            source = metric.get(metric["type"][0].lower() + metric["type"][1:], {})
            names.add(source["metric"]["name"] if "metric" in source else source.get("name"))
    return names


def hpa_expressions(path: Path = HPA, adapter: Path = ADAPTER_VALUES) -> list[str]:
    """The PromQL behind the HPA's metrics: the adapter rules that serve them (an unknown name raises KeyError)."""
    served = {rule["name"]["as"]: rule for rule in adapter_rules(adapter)}
    return [served[name]["metricsQuery"] for name in sorted(hpa_metric_names(path))]


def resolve(names: set[str], recorded: dict[str, str], depth: int = 10) -> set[str]:
    """Replace recording-rule names by the metrics they are computed from (bounded depth: no cycles)."""
    resolved = set()
    for name in names:
        if name in recorded:
            if depth == 0:
                raise ValueError(f"recording rules nest too deep at {name!r}")
            resolved |= resolve(metric_names(recorded[name]), recorded, depth - 1)
        else:
            resolved.add(name)
    return resolved


def used_metrics() -> dict[str, set[str]]:
    """Source -> the raw metric names it needs (recording rules resolved, Prometheus' own names dropped)."""
    recorded = recording_rules()
    sources = {
        "dashboard": dashboard_expressions(),
        "rules": rule_expressions(),
        "adapter": adapter_expressions(),
        "hpa": hpa_expressions(),
    }
    used = {}
    for source, expressions in sources.items():
        names = set().union(*(metric_names(e) for e in expressions))
        used[source] = resolve(names, recorded) - PROMETHEUS_SYNTHETIC
    return used


def is_gpu_metric(name: str) -> bool:
    return name.startswith(GPU_METRIC_PREFIXES)


def is_balancer_metric(name: str) -> bool:
    return name.startswith(BALANCER_METRIC_PREFIXES)


def is_summary_metric(name: str) -> bool:
    return name.endswith(SUMMARY_METRIC_SUFFIX)


def origin(name: str) -> str:
    """Where a metric comes from: 'haproxy', 'gpu' (Triton with a GPU) or 'cpu' (any Triton)."""
    if is_balancer_metric(name):
        return "haproxy"
    return "gpu" if is_gpu_metric(name) else "cpu"


def main() -> int:
    used = used_metrics()
    for name in sorted(set().union(*used.values())):
        where = ", ".join(source for source, names in used.items() if name in names)
        print(f"{name:45s} {origin(name):8s} {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

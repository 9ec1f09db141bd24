"""Triton's statistics API as the load tools read it: per-model counts and times, differences, batch sizes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def _ns(stat: dict[str, Any]) -> int:
    return int(stat.get("ns", 0))


def inference_statistics(client: Any, model: str = "") -> dict[str, dict[str, int]]:
    """Per-model totals ("" = every model) from a tritonclient.grpc client: counts and nanoseconds (queue, compute
    input/infer/output, whole request)."""
    answer = client.get_inference_statistics(model, as_json=True)
    totals = {}
    for entry in answer.get("model_stats", []):
        stats = entry.get("inference_stats", {})
        totals[entry["name"]] = {
            "success_count": int(stats.get("success", {}).get("count", 0)),
            "request_ns": _ns(stats.get("success", {})),
            "queue_ns": _ns(stats.get("queue", {})),
            "compute_input_ns": _ns(stats.get("compute_input", {})),
            "compute_infer_ns": _ns(stats.get("compute_infer", {})),
            "compute_output_ns": _ns(stats.get("compute_output", {})),
            "inference_count": int(entry.get("inference_count", 0)),
            "execution_count": int(entry.get("execution_count", 0)),
        }
    return totals


def statistics_delta(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """What happened between two `inference_statistics` readings, per model."""
    return {name: {key: after[name][key] - before.get(name, {}).get(key, 0) for key in after[name]} for name in after}


def average_batch(delta: dict[str, dict[str, int]], models: Sequence[str]) -> float:
    """Mean batch size the models executed: inferences / executions (NaN when none ran)."""
    inferences = sum(delta.get(model, {}).get("inference_count", 0) for model in models)
    executions = sum(delta.get(model, {}).get("execution_count", 0) for model in models)
    return inferences / executions if executions else math.nan

"""`serving_target.json`: the machine an exported repository was planned for, written by `tritonfleet export` at the
repository root (Triton ignores files beside the model folders) and read back by `tritonfleet serve`."""

from __future__ import annotations

import json
import os
from pathlib import Path

TARGET_FILENAME = "serving_target.json"


def read_serving_target(repository: Path) -> dict[str, str] | None:
    """The repository's record ({"target", "chosen_by", "plan", "precision"}), or None when it has none."""
    try:
        record = json.loads((Path(repository) / TARGET_FILENAME).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "target" in record else None


def describe_for_this_machine(record: dict[str, str]) -> str:
    """One line on what the repository was exported for, and how this machine differs (cores, GPUs)."""
    line = f"serving target: {record['target']} ({record.get('plan', '?')}; {record.get('precision', '?')})"
    kind, _, value = record["target"].partition(":")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if kind == "cpu" and value.isdigit() and int(value) != cores:
        line += f" - note: planned for {value} cores, this process may use {cores}"
    if kind == "gpu" and not Path("/proc/driver/nvidia/gpus").is_dir():
        line += " - note: planned for GPUs, and this machine shows no NVIDIA GPU"
    return line

"""CPU-seconds a served model costs: tritonserver's and every python stub's, per process, read with psutil."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import psutil


@dataclass
class CpuReading:
    """CPU-seconds (user + system) per process label."""

    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


def process_cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def _label(process: psutil.Process) -> str:
    """tritonserver, or the stub's model instance (`esm2_onnx_0_1`), from its command line."""
    try:
        cmdline = process.cmdline()
    except psutil.Error:
        return "gone"
    if cmdline and cmdline[0].endswith("triton_python_backend_stub") and len(cmdline) > 8:
        return cmdline[8]  # stub argv: model path, shm region, sizes, parent pid, backend dir, ipc size, instance
    return Path(cmdline[0]).name if cmdline else "unknown"


def server_cpu(server_pid: int) -> CpuReading:
    """CPU-seconds of tritonserver and each of its descendants (the python stubs), by label."""
    root = psutil.Process(server_pid)
    reading = CpuReading()
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            label = _label(process)
            reading.seconds[label] = reading.seconds.get(label, 0.0) + process_cpu_s(process)
    return reading


def cpu_delta(before: CpuReading, after: CpuReading) -> CpuReading:
    return CpuReading({name: value - before.seconds.get(name, 0.0) for name, value in after.seconds.items()})

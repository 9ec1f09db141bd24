"""Device and precision selection for the benchmark's PyTorch paths (CPU always; CUDA and fp16 when present)."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field


def cuda_device_count() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def select_devices(spec: str = "auto", cuda_devices: int | None = None) -> list[str]:
    """Devices for `spec`: auto (every CUDA device, else cpu), cpu, cuda (every CUDA device), or cuda:0,cuda:1,...

    Raises:
        ValueError: CUDA asked for but absent, or an unknown spec.
    """
    count = cuda_device_count() if cuda_devices is None else cuda_devices
    spec = spec.strip().lower()
    if spec == "auto":
        return [f"cuda:{index}" for index in range(count)] or ["cpu"]
    if spec == "cpu":
        return ["cpu"]
    if spec == "cuda":
        if count == 0:
            raise ValueError("CUDA requested but no CUDA device is available")
        return [f"cuda:{index}" for index in range(count)]
    devices = [part.strip() for part in spec.split(",") if part.strip()]
    for device in devices:
        if device == "cpu":
            continue
        if not device.startswith("cuda:") or not device[5:].isdigit():
            raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N[,cuda:M]")
        if int(device[5:]) >= count:
            raise ValueError(f"{device} requested but only {count} CUDA device(s) are available")
    if not devices:
        raise ValueError("no device given")
    return devices


def precisions_for(device: str) -> tuple[str, ...]:
    """fp32 everywhere; fp16 too on CUDA (half precision on CPU is slow and not what anyone serves)."""
    return ("fp32", "fp16") if device.startswith("cuda") else ("fp32",)


@dataclass
class GpuUtilisationSampler:
    """Samples `nvidia-smi` GPU utilisation (%) in a background thread; no samples without nvidia-smi."""

    interval_s: float = 0.5
    samples: list[float] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def available(self) -> bool:
        return shutil.which("nvidia-smi") is not None and cuda_device_count() > 0

    def _sample_once(self) -> None:
        completed = subprocess.run(
            ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        values = [float(line) for line in completed.stdout.split() if line.strip().replace(".", "").isdigit()]
        if values:
            self.samples.append(sum(values) / len(values))

    def _loop(self) -> None:
        try:
            while not self._stop.wait(self.interval_s):
                self._sample_once()
        except (OSError, subprocess.SubprocessError, ValueError):
            return  # nvidia-smi vanished or answered garbage: stop sampling, keep what we have

    def __enter__(self) -> GpuUtilisationSampler:
        if self.available:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)

    @property
    def mean(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None


def wait_for(predicate, timeout_s: float, interval_s: float = 0.2) -> bool:
    """Poll `predicate` until true or `timeout_s` passes (bounded)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return bool(predicate())

"""Device planning: which Triton instance groups a model gets on 0, 1, 4 or 8 GPUs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

InstanceKind = Literal["KIND_CPU", "KIND_GPU"]


def detect_gpu_count() -> int:
    """CUDA devices visible to torch on this machine (0 without torch or CUDA)."""
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@dataclass(frozen=True)
class DevicePlan:
    """Where model instances run.

    Attributes:
        kind: KIND_CPU or KIND_GPU.
        gpus: GPU ids (empty for CPU).
        instances_per_gpu: model instances on each listed GPU (Triton's `count` is per GPU for KIND_GPU).
        cpu_instances: model instances in total for KIND_CPU.
    """

    kind: InstanceKind
    gpus: tuple[int, ...] = ()
    instances_per_gpu: int = 1
    cpu_instances: int = 1

    def __post_init__(self) -> None:
        if self.kind == "KIND_GPU" and not self.gpus:
            raise ValueError("a GPU plan needs at least one GPU id")
        if self.kind == "KIND_CPU" and self.gpus:
            raise ValueError("a CPU plan lists no GPUs")
        if self.instances_per_gpu < 1 or self.cpu_instances < 1:
            raise ValueError("instance counts must be >= 1")

    @property
    def total_instances(self) -> int:
        return len(self.gpus) * self.instances_per_gpu if self.kind == "KIND_GPU" else self.cpu_instances

    @property
    def tokenizer_instances(self) -> int:
        """CPU tokenizer instances: one per GPU so tokenization keeps up with N GPUs, at least one."""
        return max(1, len(self.gpus))

    def describe(self) -> str:
        if self.kind == "KIND_CPU":
            return f"CPU ({self.cpu_instances} instance(s))"
        gpu_list = ",".join(map(str, self.gpus))
        return f"{len(self.gpus)} GPU(s) [{gpu_list}] x {self.instances_per_gpu} instance(s) = {self.total_instances}"


def parse_gpu_ids(text: str) -> tuple[int, ...]:
    """Parses "0,1,3" into (0, 1, 3); ids must be unique non-negative integers."""
    try:
        ids = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"--gpus must be auto, none or comma-separated GPU ids, got {text!r}") from None
    if not ids or any(gpu < 0 for gpu in ids) or len(set(ids)) != len(ids):
        raise ValueError(f"--gpus needs unique non-negative GPU ids, got {text!r}")
    return ids


def plan_devices(
    gpus: str = "auto",
    instances_per_gpu: int = 1,
    cpu_instances: int = 1,
    device_count: Callable[[], int] = detect_gpu_count,
) -> DevicePlan:
    """Turns the `--gpus` option into a DevicePlan.

    Args:
        gpus: "auto" (detect: 0 -> CPU, N -> GPUs 0..N-1), "none"/"cpu" (CPU), or explicit ids "0,1,2,3"
            (not checked against this machine: the repository may be built for another host).
        instances_per_gpu: model instances per GPU.
        cpu_instances: model instances when on CPU.
        device_count: GPU counter; tests inject a fake.
    """
    choice = gpus.strip().lower()
    if choice in ("none", "cpu"):
        return DevicePlan("KIND_CPU", cpu_instances=cpu_instances, instances_per_gpu=instances_per_gpu)
    if choice == "auto":
        count = device_count()
        if count <= 0:
            return DevicePlan("KIND_CPU", cpu_instances=cpu_instances, instances_per_gpu=instances_per_gpu)
        return DevicePlan("KIND_GPU", tuple(range(count)), instances_per_gpu, cpu_instances)
    return DevicePlan("KIND_GPU", parse_gpu_ids(choice), instances_per_gpu, cpu_instances)

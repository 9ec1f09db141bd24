"""Device planning: which Triton instance groups a network gets on 0, 1, 4 or 8 GPUs, and on CPU how many instances
with how many engine threads each (reports/cpu_plan.md measures the choice).

On CPU every core should run one engine thread and nothing should oversubscribe: an instance whose engine spins a
thread per core competes with the other instances, the python stubs and Triton itself. One single-threaded engine
per core does more work per core than one engine spread over all cores (ONNX Runtime on ESM-2 8M, length 128, this
project's 2-core machine: 67 seq/s on 1 thread vs 97 on 2), so the plan is one instance per core with one intra-op
thread each, up to MAX_CPU_INSTANCES; beyond that, each instance gets more threads (every instance is a process
holding its own copy of the weights).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

InstanceKind = Literal["KIND_CPU", "KIND_GPU"]
MAX_CPU_INSTANCES = 8
# The native backends' thread keys (onnxruntime_backend / pytorch_backend READMEs); the Python-based ones honour them.
THREAD_PARAMETERS: dict[str, tuple[str, str]] = {
    "onnx": ("intra_op_thread_count", "inter_op_thread_count"),
    "torchscript": ("INTRA_OP_THREAD_COUNT", "INTER_OP_THREAD_COUNT"),
}


VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


def cpu_has_vnni(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU has 8-bit dot-product instructions (VNNI / AMX), from its /proc/cpuinfo flags."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            return bool(VNNI_FLAGS & set(line.split(":", 1)[1].split()))
    return False


def default_precision(plan: DevicePlan) -> str:
    """int8 on CPU plans where the CPU has VNNI (dynamic int8 ran 1.6-3x eager fp32 on ESM-2 here, within its
    quality gate), fp32 otherwise: without VNNI int8 needs 7-bit weights, which failed the gate on ESM-2 35M."""
    return "int8" if plan.kind == "KIND_CPU" and cpu_has_vnni() else "fp32"


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which containers and taskset narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


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
        cpu_threads: intra-op threads of each CPU instance's engine (0: the engine's default, every core).
    """

    kind: InstanceKind
    gpus: tuple[int, ...] = ()
    instances_per_gpu: int = 1
    cpu_instances: int = 1
    cpu_threads: int = 0

    def __post_init__(self) -> None:
        if self.kind == "KIND_GPU" and not self.gpus:
            raise ValueError("a GPU plan needs at least one GPU id")
        if self.kind == "KIND_CPU" and self.gpus:
            raise ValueError("a CPU plan lists no GPUs")
        if self.instances_per_gpu < 1 or self.cpu_instances < 1:
            raise ValueError("instance counts must be >= 1")
        if self.cpu_threads < 0:
            raise ValueError("cpu_threads must be >= 0 (0: the engine's default)")

    @property
    def total_instances(self) -> int:
        return len(self.gpus) * self.instances_per_gpu if self.kind == "KIND_GPU" else self.cpu_instances

    @property
    def tokenizer_instances(self) -> int:
        """CPU tokenizer instances: one per GPU so tokenization keeps up with N GPUs, at least one."""
        return max(1, len(self.gpus))

    def engine_parameters(self, fmt: str) -> Mapping[str, str]:
        """Config `parameters` that size a CPU instance's engine threads (none for GPU plans or default threads)."""
        if self.kind != "KIND_CPU" or not self.cpu_threads:
            return {}
        intra, inter = THREAD_PARAMETERS[fmt]
        return {intra: str(self.cpu_threads), inter: "1"}

    def describe(self) -> str:
        if self.kind == "KIND_CPU":
            threads = f"{self.cpu_threads} intra-op thread(s) each" if self.cpu_threads else "engine-default threads"
            return f"CPU: {self.cpu_instances} instance(s) x {threads}"
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


def plan_cpu(cores: int, instances: int | None = None, threads: int | None = None) -> tuple[int, int]:
    """(instances, intra-op threads each) filling `cores` without oversubscribing them.

    Unset values are chosen: one single-threaded instance per core up to MAX_CPU_INSTANCES, then more threads per
    instance; a given instance count splits the cores between them, a given thread count sets how many instances fit.
    """
    if cores < 1:
        raise ValueError(f"--cpu-cores must be >= 1, got {cores}")
    if instances is not None and instances < 1 or threads is not None and threads < 1:
        raise ValueError("--cpu-instances and --cpu-threads must be >= 1")
    if instances is None and threads is None:
        instances = min(cores, MAX_CPU_INSTANCES)
    if instances is None:
        instances = max(1, cores // threads)
    if threads is None:
        threads = max(1, cores // instances)
    return instances, threads


def plan_devices(
    gpus: str = "auto",
    instances_per_gpu: int = 1,
    cpu_instances: int | None = None,
    cpu_threads: int | None = None,
    cpu_cores: int | None = None,
    device_count: Callable[[], int] = detect_gpu_count,
) -> DevicePlan:
    """Turns the `--gpus` and CPU options into a DevicePlan.

    Args:
        gpus: "auto" (detect: 0 -> CPU, N -> GPUs 0..N-1), "none"/"cpu" (CPU), or explicit ids "0,1,2,3"
            (not checked against this machine: the repository may be built for another host).
        instances_per_gpu: model instances per GPU.
        cpu_instances: model instances when on CPU (None: planned from the cores).
        cpu_threads: intra-op threads per CPU instance (None: planned from the cores).
        cpu_cores: cores the CPU plan fills (None: the cores this process may use).
        device_count: GPU counter; tests inject a fake.
    """
    choice = gpus.strip().lower()
    if choice == "auto":
        detected = device_count()
        choice = ",".join(map(str, range(detected))) if detected > 0 else "none"
    if choice in ("none", "cpu"):
        instances, threads = plan_cpu(cpu_cores or usable_cores(), cpu_instances, cpu_threads)
        return DevicePlan("KIND_CPU", cpu_instances=instances, cpu_threads=threads, instances_per_gpu=instances_per_gpu)
    return DevicePlan("KIND_GPU", parse_gpu_ids(choice), instances_per_gpu)

"""Device planning: which Triton instance groups a network gets on 0, 1, 4 or 8 GPUs, and on CPU how many instances
with how many engine threads each (reports/cpu_plan.md measures the choice).

On CPU every core should run one engine thread and nothing should oversubscribe: an instance whose engine spins a
thread per core competes with the other instances, the python stubs and Triton itself. One single-threaded engine
per core does more work per core than one engine spread over all cores (ONNX Runtime on ESM-2 8M, length 128, this
project's 2-core machine: 67 seq/s on 1 thread vs 97 on 2), so the plan gives every instance one intra-op thread,
two instances per core (`contract.serving_plan.QUEUED_INSTANCES_PER_CORE`: one waiting while the other computes, so
Triton's batcher never idles a core), up to MAX_CPU_INSTANCES; beyond that, each instance gets more threads (every
instance is a process holding its own copy of the weights).

The rule holds at every network size, measured for the large one too (issue 19, 2026-12-07, the 2-core Xeon with
AMX, int8 ESM-2 650M, 24 Swiss-Prot-like proteins): intra-op threads scale there (in-process 1 engine x 2 threads
1.81 seq/s vs 2 x 1 thread 1.76, 1098 vs 1121 CPU ms per protein; 150M 3.59 vs 3.56; 8M on this CPU 33.3 vs 33.6),
and served the two plans are a wash: 2 x 1 and 1 x 2 spent the same compute (Triton's compute_infer: 16.2 and 16.1
s per core pair); 2 x 1 lost ~1 s of 17 to the tail, where the last long protein runs alone on one core, and 1 x 2
lost as much to other work on the shared machine (a preempted thread stalls its partner at every operator's barrier;
a single-threaded instance loses only its own time). So no size gets fewer, wider instances; the flagship study's
650M run that kept 1.39 of 2 cores busy lost them to other load (the network runs at cpu_nice, below any other
work), not to the plan.

Bounded executions (issue 18): Triton never preempts a running execution, so an interactive request that finds every
instance busy waits for the current executions to end. `plan_execution_cap` bounds how much work one execution may
hold (max_batch_size and a padded-token budget, from the engine speed and the interactive budget), and CPU plans add
one single-threaded network instance that only the interactive entry model reaches (`interactive_instances`), one
thread beyond the cores: while interactive traffic is idle it sleeps and bulk keeps every core.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

# The CPU rule (`plan_cpu`) lives in contract.serving_plan: the fleet re-plans a replica's cores with it.
from tritonfleet.contract.serving_plan import (
    MAX_CPU_INSTANCES,  # noqa: F401 - export's CLI names it
    MIN_QUEUED_INSTANCES,
    BatchingPlan,
    InstancePlan,
    ServingPlan,
    ThreadPlan,
    plan_cpu,
)
from tritonfleet.contract.serving_target import TARGET_FILENAME as SERVING_TARGET_FILENAME

InstanceKind = Literal["KIND_CPU", "KIND_GPU"]
logger = logging.getLogger(__name__)


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


# A one-GPU plan's queued networks never have a single instance (contract.serving_plan.MIN_QUEUED_INSTANCES says why).
DEFAULT_INSTANCES_PER_GPU = MIN_QUEUED_INSTANCES


@dataclass(frozen=True)
class DevicePlan:
    """Where model instances run.

    Attributes:
        kind: KIND_CPU or KIND_GPU.
        gpus: GPU ids (empty for CPU; empty for KIND_GPU means every GPU the serving machine shows, `gpu:all`).
        instances_per_gpu: model instances on each listed GPU (Triton's `count` is per GPU for KIND_GPU).
        cpu_instances: model instances in total for KIND_CPU.
        cpu_threads: intra-op threads of each CPU instance's engine (0: the engine's default, every core).
        interactive_instances: single-threaded CPU instances of a copy of the network that only interactive
            requests reach (capacity bulk traffic cannot occupy); 0: none.
    """

    kind: InstanceKind
    gpus: tuple[int, ...] = ()
    instances_per_gpu: int = DEFAULT_INSTANCES_PER_GPU
    cpu_instances: int = 1
    cpu_threads: int = 0
    interactive_instances: int = 0

    def __post_init__(self) -> None:
        if self.kind == "KIND_CPU" and self.gpus:
            raise ValueError("a CPU plan lists no GPUs")
        if self.instances_per_gpu < 1 or self.cpu_instances < 1:
            raise ValueError("instance counts must be >= 1")
        if self.cpu_threads < 0:
            raise ValueError("cpu_threads must be >= 0 (0: the engine's default)")
        if self.interactive_instances < 0:
            raise ValueError("interactive_instances must be >= 0")

    @property
    def every_gpu(self) -> bool:
        """KIND_GPU with no device list: Triton puts `count` instances on each GPU the server sees."""
        return self.kind == "KIND_GPU" and not self.gpus

    @property
    def total_instances(self) -> int:
        """Network instances (per visible GPU for an every-GPU plan, whose GPU count is the serving machine's)."""
        if self.kind == "KIND_GPU":
            return max(1, len(self.gpus)) * self.instances_per_gpu
        return self.cpu_instances

    @property
    def tokenizer_instances(self) -> int:
        """CPU tokenizer instances: one per GPU so tokenization keeps up with N GPUs, at least one."""
        return max(1, len(self.gpus))

    def instance_plan(self) -> InstancePlan:
        """The networks' instance group."""
        if self.kind == "KIND_GPU":
            return InstancePlan("KIND_GPU", self.instances_per_gpu, self.gpus)
        return InstancePlan("KIND_CPU", self.cpu_instances)

    def thread_plan(self) -> ThreadPlan:
        """A CPU instance's engine threads: `cpu_threads` intra-op, one inter-op (none for GPU plans or default
        threads)."""
        if self.kind != "KIND_CPU" or not self.cpu_threads:
            return ThreadPlan()
        return ThreadPlan(self.cpu_threads, 1)

    def network_plan(self, batching: BatchingPlan, token_budget: int | None = None, cpu_nice: int = 0) -> ServingPlan:
        """The serving plan of the exported networks."""
        if self.total_instances < MIN_QUEUED_INSTANCES and batching.has_queue_policy:
            logger.warning(
                "one network instance with priority levels or a queue bound: under concurrent load Triton's batcher "
                "idles it between executions (3x fewer sequences/s measured on one core); give it two instances "
                "(--cpu-instances 2 / --instances-per-gpu 2) or one plain queue (--no-priorities --max-queue-size 0)"
            )
        return ServingPlan(self.instance_plan(), self.thread_plan(), batching, token_budget, cpu_nice=cpu_nice)

    def interactive_plan(self, batching: BatchingPlan, copy_of: str, token_budget: int | None = None) -> ServingPlan:
        """The interactive-only reserve: `interactive_instances` single-threaded CPU instances of `copy_of`, with
        queues for interactive traffic alone (`BatchingPlan.for_interactive_only`)."""
        if not self.interactive_instances:
            raise ValueError("this device plan reserves no interactive-only instances")
        return ServingPlan(
            InstancePlan("KIND_CPU", self.interactive_instances),
            ThreadPlan(1, 1),
            batching.for_interactive_only().for_unordered_model("KIND_CPU", self.interactive_instances),
            token_budget,
            interactive_copy_of=copy_of,
        )

    def describe(self) -> str:
        if self.kind == "KIND_CPU":
            threads = f"{self.cpu_threads} intra-op thread(s) each" if self.cpu_threads else "engine-default threads"
            reserve = (
                f" + {self.interactive_instances} interactive-only instance(s) x 1 thread"
                if self.interactive_instances
                else ""
            )
            return f"CPU: {self.cpu_instances} instance(s) x {threads}{reserve}"
        if self.every_gpu:
            return f"every visible GPU x {self.instances_per_gpu} instance(s) each"
        gpu_list = ",".join(map(str, self.gpus))
        return f"{len(self.gpus)} GPU(s) [{gpu_list}] x {self.instances_per_gpu} instance(s) = {self.total_instances}"


def parse_gpu_ids(text: str, flag: str = "--gpus") -> tuple[int, ...]:
    """Parses "0,1,3" into (0, 1, 3); ids must be unique non-negative integers."""
    try:
        ids = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"{flag} must be auto, none or comma-separated GPU ids, got {text!r}") from None
    if not ids or any(gpu < 0 for gpu in ids) or len(set(ids)) != len(ids):
        raise ValueError(f"{flag} needs unique non-negative GPU ids, got {text!r}")
    return ids


def plan_devices(
    gpus: str = "auto",
    instances_per_gpu: int = DEFAULT_INSTANCES_PER_GPU,
    cpu_instances: int | None = None,
    cpu_threads: int | None = None,
    cpu_cores: int | None = None,
    device_count: Callable[[], int] = detect_gpu_count,
    interactive_instances: int | None = None,
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
        interactive_instances: interactive-only network instances (None: 1 on CPU, 0 on GPUs, where executions
            are short; `plan_execution_cap`).
    """
    choice = gpus.strip().lower()
    if choice == "auto":
        detected = device_count()
        choice = ",".join(map(str, range(detected))) if detected > 0 else "none"
    if choice in ("none", "cpu"):
        instances, threads = plan_cpu(cpu_cores or usable_cores(), cpu_instances, cpu_threads)
        return DevicePlan(
            "KIND_CPU",
            cpu_instances=instances,
            cpu_threads=threads,
            instances_per_gpu=instances_per_gpu,
            interactive_instances=CPU_INTERACTIVE_INSTANCES if interactive_instances is None else interactive_instances,
        )
    if interactive_instances:
        raise ValueError("interactive-only instances are a CPU plan feature (GPU executions are short)")
    return DevicePlan("KIND_GPU", parse_gpu_ids(choice), instances_per_gpu)


# --- bounded executions -------------------------------------------------------------------------------------------
CPU_INTERACTIVE_INSTANCES = 1

# --- serving target: the machine a repository is exported for, written down beside its models -------------------

TARGET_FILENAME = SERVING_TARGET_FILENAME  # the record's file (tritonfleet.contract.serving_target)
TARGET_HELP = (
    "the machine that will serve the repository: cpu:CORES (CPU plan for that many cores), gpu:IDS (e.g. gpu:0,1), "
    "gpu:all (KIND_GPU with no device list: every GPU the server sees) or auto (this machine: its GPUs, else its "
    "usable cores; printed)"
)


@dataclass(frozen=True)
class ServingTarget:
    """A parsed `--target`: ("cpu", cores, ()) / ("gpu", 0, ids) / ("gpu", 0, ()) for every GPU."""

    kind: Literal["cpu", "gpu"]
    cores: int = 0
    gpus: tuple[int, ...] = ()

    def __str__(self) -> str:
        if self.kind == "cpu":
            return f"cpu:{self.cores}"
        return "gpu:" + (",".join(map(str, self.gpus)) if self.gpus else "all")


def parse_target(text: str) -> ServingTarget:
    """'cpu:4' | 'gpu:0,1' | 'gpu:all' -> ServingTarget (auto is resolved by `resolve_target`)."""
    kind, separator, value = text.strip().lower().partition(":")
    if kind == "cpu" and separator:
        try:
            cores = int(value)
        except ValueError:
            cores = 0
        if cores < 1:
            raise ValueError(f"--target cpu:CORES needs a core count >= 1, got {text!r}")
        return ServingTarget("cpu", cores=cores)
    if kind == "gpu" and separator:
        if value == "all":
            return ServingTarget("gpu")
        return ServingTarget("gpu", gpus=parse_gpu_ids(value, flag="--target gpu:IDS"))
    raise ValueError(f"--target must be cpu:CORES, gpu:IDS, gpu:all or auto, got {text!r}")


def resolve_target(text: str, device_count: Callable[[], int] = detect_gpu_count) -> tuple[ServingTarget, bool]:
    """(target, chosen by auto): auto is this machine: every detected GPU by id, else its usable cores."""
    if text.strip().lower() != "auto":
        return parse_target(text), False
    detected = device_count()
    if detected > 0:
        return ServingTarget("gpu", gpus=tuple(range(detected))), True
    return ServingTarget("cpu", cores=usable_cores()), True


def legacy_target(gpus: str | None, cpu_cores: int | None) -> str | None:
    """The `--target` that the old `--gpus`/`--cpu-cores` spellings meant (None when neither was given)."""
    if gpus is None and cpu_cores is None:
        return None
    choice = (gpus or "none").strip().lower()
    if choice in ("none", "cpu"):
        return f"cpu:{cpu_cores or usable_cores()}"
    if choice == "auto":
        return "auto" if cpu_cores is None else f"cpu:{cpu_cores}" if detect_gpu_count() == 0 else "auto"
    return f"gpu:{choice}"


def plan_target(
    target: ServingTarget,
    instances_per_gpu: int = DEFAULT_INSTANCES_PER_GPU,
    cpu_instances: int | None = None,
    cpu_threads: int | None = None,
    **options: int | None,
) -> DevicePlan:
    """The DevicePlan of a serving target: `plan_devices` for its cores or GPU ids (`options` are its other keyword
    arguments); every GPU for gpu:all."""
    if target.kind == "cpu":
        return plan_devices("none", instances_per_gpu, cpu_instances, cpu_threads, target.cores, **options)
    if not target.gpus:
        return DevicePlan("KIND_GPU", (), instances_per_gpu)
    return plan_devices(",".join(map(str, target.gpus)), instances_per_gpu, cpu_instances, cpu_threads, **options)


def target_record(target: ServingTarget, chosen_by_auto: bool, plan: DevicePlan, precision: str) -> dict[str, str]:
    """What `serving_target.json` at the repository root says (deterministic: committed with the configs)."""
    return {
        "target": str(target),
        "chosen_by": "auto (the exporting machine)" if chosen_by_auto else "--target",
        "plan": plan.describe(),
        "precision": precision,
    }

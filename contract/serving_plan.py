"""How one served model is served, as one typed value: instances, engine threads, batching and priority queues, the
per-execution cap, the response cache, `cpu_nice` and the interactive-only reserve.

A `ServingPlan` is written into a Triton `ModelConfig` with `plan.apply(config)`, read back with
`ServingPlan.from_config(config)` (`from_config(apply(plan)) == plan` for every plan), and turned into the
`tritonfleet export` flags that reproduce it with `plan.export_flags()`. The export's planner
(`tritonfleet.export.devices`) decides the plans; the fleet re-plans a replica's cores with `plan_cpu` and
`ServingPlan.for_cpu_cores`; the studies edit configs through `dataclasses.replace` on a plan and `apply`.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Literal

from tritonclient.grpc import model_config_pb2 as mc

from tritonfleet.contract.batching_plan import (  # noqa: F401 - part of the plan's API
    BatchingPlan,
    PriorityPlan,
    apply_batching,
    priority_flags,
    read_batching,
)
from tritonfleet.contract.engine_formats import format_of_config

InstanceKind = Literal["KIND_CPU", "KIND_GPU", "KIND_AUTO"]
EXECUTION_TOKEN_BUDGET_PARAMETER = "execution_token_budget"
CPU_NICE_PARAMETER = "cpu_nice"
SERVES_PARAMETER = "serves"
INTERACTIVE_SERVES_PREFIX = "interactive requests only"
_COPY_OF = re.compile(r"\(a copy of ([^)]+)\)")
MAX_CPU_INSTANCES = 8
# Fewest instances a model with priority levels or a queue bound should have: Triton 24.10's batcher hands work only to
# an instance it sees waiting, and the end of an execution wakes it before that instance is back
# (`BatchingPlan.for_unordered_model`), so under concurrent load a lone instance idles until the next arrival or
# ~500 ms; two wait at most for each other's execution. Measured on one core, 16 requests in flight: 3.9 seq/s with
# one instance, 12.8 with two, 13.2 with one and a plain queue. Default plans keep it: every core gets
# QUEUED_INSTANCES_PER_CORE (>= it) single-threaded instances (`plan_cpu`), each GPU two
# (`export.devices.DEFAULT_INSTANCES_PER_GPU`).
MIN_QUEUED_INSTANCES = 2
# Default single-threaded instances per core on CPU plans (up to MAX_CPU_INSTANCES): the same wake-up race idles an
# instance between executions whenever none of its peers is waiting, and with ESM-2's CPU layout executions are short
# enough for those gaps to cost 10-20 %. Two per core keep one waiting: ESM-2 8M int8 on 2 cores, 16 in flight, two
# rounds: 2 instances 31.2 / 31.8 seq/s (`esm2`), 3 instances 33.9 / 35.4, 4 instances 37.4 / 38.4, at the same
# server CPU per sequence (loadtest/served_overhead.py).
QUEUED_INSTANCES_PER_CORE = 2


class NotReproducibleError(ValueError):
    """A plan no `tritonfleet export` flags produce (the message says which part)."""


def plan_cpu(cores: int, instances: int | None = None, threads: int | None = None) -> tuple[int, int]:
    """(instances, intra-op threads each) for `cores`.

    Unset values are chosen: QUEUED_INSTANCES_PER_CORE single-threaded instances per core up to MAX_CPU_INSTANCES,
    then more threads per instance (never more threads than cores); a given instance count splits the cores between
    them, a given thread count sets how many instances fit.
    """
    if cores < 1:
        raise ValueError(f"--cpu-cores must be >= 1, got {cores}")
    if instances is not None and instances < 1 or threads is not None and threads < 1:
        raise ValueError("--cpu-instances and --cpu-threads must be >= 1")
    if instances is None and threads is None:
        instances = min(cores * QUEUED_INSTANCES_PER_CORE, MAX_CPU_INSTANCES)
    if instances is None:
        instances = max(1, cores // threads)
    if threads is None:
        threads = max(1, cores // instances)
    return instances, threads


@dataclass(frozen=True)
class InstancePlan:
    """One instance group: `count` instances of `kind`; for KIND_GPU `count` is per GPU, on the listed `gpus` (none
    listed: every GPU the serving machine shows)."""

    kind: InstanceKind = "KIND_CPU"
    count: int = 1
    gpus: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"an instance group needs count >= 1, got {self.count}")
        if self.gpus and self.kind != "KIND_GPU":
            raise ValueError(f"{self.kind} instances list no GPUs")

    @property
    def every_gpu(self) -> bool:
        return self.kind == "KIND_GPU" and not self.gpus

    @property
    def total(self) -> int:
        """Instances in all (per visible GPU for an every-GPU group)."""
        return self.count * max(1, len(self.gpus)) if self.kind == "KIND_GPU" else self.count


@dataclass(frozen=True)
class ThreadPlan:
    """Engine threads of each instance; 0 leaves the parameter out (the engine's default)."""

    intra_op: int = 0
    inter_op: int = 0

    def __post_init__(self) -> None:
        if self.intra_op < 0 or self.inter_op < 0:
            raise ValueError("thread counts must be >= 0 (0: the engine's default)")


@dataclass(frozen=True)
class ServingPlan:
    """How one model is served (the fields of its config this project decides).

    Attributes:
        instances: its instance group (None: none, as ensembles must have).
        threads: engine threads per instance (networks only: written under the engine format's parameter keys).
        batching: max_batch_size and dynamic batching.
        execution_token_budget: sequences x padded length one execution may hold (config parameter; clients split
            their calls to respect it); None: no cap advertised.
        response_cache: whether Triton may answer a repeated request from its response cache.
        cpu_nice: niceness the local Python-based backends add to the instances (config parameter; 0: none).
        interactive_copy_of: non-empty for the interactive-only reserve: the network this model copies (config
            parameter `serves`); only the interactive entry model reaches it.
    """

    instances: InstancePlan | None = InstancePlan()
    threads: ThreadPlan = ThreadPlan()
    batching: BatchingPlan = BatchingPlan()
    execution_token_budget: int | None = None
    response_cache: bool = False
    cpu_nice: int = 0
    interactive_copy_of: str = ""

    def __post_init__(self) -> None:
        if self.execution_token_budget is not None and self.execution_token_budget < 1:
            raise ValueError(f"execution_token_budget must be >= 1, got {self.execution_token_budget}")
        if not 0 <= self.cpu_nice <= 19:
            raise ValueError(f"cpu_nice must lie in 0..19, got {self.cpu_nice}")

    @property
    def instance_count(self) -> int:
        return self.instances.total if self.instances else 0

    @property
    def interactive_only(self) -> bool:
        return bool(self.interactive_copy_of)

    # --- writing -------------------------------------------------------------------------------------------------

    def apply(self, config: mc.ModelConfig) -> mc.ModelConfig:
        """Writes the plan into `config` (in place; returned): the instance group, thread parameters, max batch size,
        dynamic batching, cap, cache, cpu_nice and `serves`, replacing what the config said of them."""
        self._apply_instances(config)
        self._apply_threads(config)
        apply_batching(config, self.batching)
        if self.response_cache:
            config.response_cache.enable = True
        else:
            config.ClearField("response_cache")
        budget = self.execution_token_budget
        _set_parameter(config, EXECUTION_TOKEN_BUDGET_PARAMETER, None if budget is None else str(budget))
        _set_parameter(config, CPU_NICE_PARAMETER, str(self.cpu_nice) if self.cpu_nice else None)
        if self.interactive_only:
            serves = f"{INTERACTIVE_SERVES_PREFIX} (a copy of {self.interactive_copy_of})"
            config.parameters[SERVES_PARAMETER].string_value = serves
        elif _is_interactive_serves(config):  # other `serves` notes (e.g. a packed variant's) are not the plan's
            del config.parameters[SERVES_PARAMETER]
        return config

    def _apply_instances(self, config: mc.ModelConfig) -> None:
        config.ClearField("instance_group")
        if self.instances is None:
            return
        group = config.instance_group.add()
        group.kind = mc.ModelInstanceGroup.Kind.Value(self.instances.kind)
        group.count = self.instances.count
        group.gpus.extend(self.instances.gpus)

    def _apply_threads(self, config: mc.ModelConfig) -> None:
        engine = format_of_config(config)
        if engine is None:
            if self.threads != ThreadPlan():
                raise ValueError(f"model {config.name!r} is no ONNX Runtime or LibTorch network: no thread parameters")
            return
        _set_parameter(config, engine.intra_op_threads, str(self.threads.intra_op) if self.threads.intra_op else None)
        _set_parameter(config, engine.inter_op_threads, str(self.threads.inter_op) if self.threads.inter_op else None)

    # --- reading -------------------------------------------------------------------------------------------------

    @classmethod
    def from_config(cls, config: mc.ModelConfig) -> ServingPlan:
        """The plan a config describes; ValueError for what a plan cannot hold (several instance groups, priority
        levels other than this project's two, non-integer parameters)."""
        parameters = {key: value.string_value for key, value in config.parameters.items()}
        copy_of = ""
        if _is_interactive_serves(config):
            match = _COPY_OF.search(parameters[SERVES_PARAMETER])
            copy_of = match.group(1) if match else "?"
        budget = _int_parameter(parameters, EXECUTION_TOKEN_BUDGET_PARAMETER)
        return cls(
            instances=_read_instances(config),
            threads=_read_threads(config, parameters),
            batching=read_batching(config),
            execution_token_budget=budget,
            response_cache=config.response_cache.enable,
            cpu_nice=_int_parameter(parameters, CPU_NICE_PARAMETER) or 0,
            interactive_copy_of=copy_of,
        )

    # --- re-planning ---------------------------------------------------------------------------------------------

    def with_cpu(self, instances: int, intra_op_threads: int) -> ServingPlan:
        """The plan on `instances` CPU instances of `intra_op_threads` threads each (0: the engine's default);
        the inter-op count is 1 beside a set intra-op count (sequential graphs), unset otherwise."""
        threads = ThreadPlan(intra_op_threads, 1 if intra_op_threads else 0)
        return dataclasses.replace(self, instances=InstancePlan("KIND_CPU", instances), threads=threads)

    def for_cpu_cores(self, cores: int) -> ServingPlan:
        """A network's plan re-planned for `cores` by the export's CPU rule (`plan_cpu`); the inter-op thread
        parameter stays as present or absent as it was."""
        instances, threads = plan_cpu(cores)
        inter = 1 if self.threads.inter_op else 0
        kind = self.instances.kind if self.instances else "KIND_CPU"
        return dataclasses.replace(self, instances=InstancePlan(kind, instances), threads=ThreadPlan(threads, inter))

    def with_instance_count(self, count: int) -> ServingPlan:
        if self.instances is None:
            raise ValueError("a plan without an instance group has no instance count")
        return dataclasses.replace(self, instances=dataclasses.replace(self.instances, count=count))

    # --- the export command line ---------------------------------------------------------------------------------

    def export_flags(self) -> list[str]:
        """`tritonfleet export` flags that produce this plan for the exported networks (beside a `--target
        cpu:CORES` for CPU plans: a plan does not know the cores; every plan field a flag sets is given). Plans with an
        execution token budget leave max_batch_size to the planner's cap; the interactive reserve's plan gives
        `--interactive-instances` (its queues follow the networks'). NotReproducibleError for what no flag writes."""
        instances = self.instances
        if instances is None or instances.kind == "KIND_AUTO":
            raise NotReproducibleError("the export writes a KIND_CPU or KIND_GPU instance group on every network")
        if self.interactive_only:
            return ["--interactive-instances", str(instances.count)]
        if not self.batching.dynamic:
            raise NotReproducibleError("the export writes dynamic batching on every network")
        if instances.kind == "KIND_GPU":
            if self.threads != ThreadPlan():
                raise NotReproducibleError("GPU plans set no engine thread parameters")
            gpus = ",".join(map(str, instances.gpus)) or "all"
            flags = ["--target", f"gpu:{gpus}", "--instances-per-gpu", str(instances.count)]
        else:
            if not self.threads.intra_op:
                raise NotReproducibleError("CPU plans always set intra-op threads (--cpu-threads >= 1)")
            flags = ["--cpu-instances", str(instances.count), "--cpu-threads", str(self.threads.intra_op)]
            if not self.cpu_nice:
                flags += ["--interactive-instances", "0"]  # the export lowers bulk networks' priority beside a reserve
        batching = self.batching
        if self.execution_token_budget is None:
            flags += ["--max-batch-size", str(batching.max_batch_size)]
        flags += ["--preferred-batch-sizes", ",".join(map(str, batching.preferred_batch_sizes))]
        flags += ["--max-queue-delay-us", str(batching.max_queue_delay_us)]
        if batching.max_queue_size != BatchingPlan.max_queue_size:
            flags += ["--max-queue-size", str(batching.max_queue_size)]
        return flags + priority_flags(batching.priorities)

    def describe(self) -> str:
        """One line, e.g. 'KIND_CPU 2 x 1 thread(s), max batch 1, delay 0 us, preferred none, cap 1024 tokens'."""
        if self.instances is None:
            placement = "no instance group"
        else:
            where = "every GPU" if self.instances.every_gpu else ",".join(map(str, self.instances.gpus))
            placement = f"{self.instances.kind} {self.instances.count}" + (f" per GPU [{where}]" if where else "")
            threads = f"{self.threads.intra_op} thread(s)" if self.threads.intra_op else "default threads"
            placement += f" x {threads}"
        batching = self.batching
        parts = [placement, f"max batch {batching.max_batch_size}"]
        if batching.dynamic:
            preferred = ",".join(map(str, batching.preferred_batch_sizes)) or "none"
            parts.append(f"delay {batching.max_queue_delay_us} us, preferred {preferred}")
        if self.execution_token_budget:
            parts.append(f"cap {self.execution_token_budget} tokens")
        if self.response_cache:
            parts.append("response cache")
        if self.interactive_only:
            parts.append(f"interactive-only copy of {self.interactive_copy_of}")
        return ", ".join(parts)


# --- config fields ------------------------------------------------------------------------------------------------


def _set_parameter(config: mc.ModelConfig, key: str, value: str | None) -> None:
    if value is None:
        if key in config.parameters:
            del config.parameters[key]
    else:
        config.parameters[key].string_value = value


def _is_interactive_serves(config: mc.ModelConfig) -> bool:
    serves = config.parameters[SERVES_PARAMETER].string_value if SERVES_PARAMETER in config.parameters else ""
    return serves.startswith(INTERACTIVE_SERVES_PREFIX)


def _int_parameter(parameters: dict[str, str], key: str) -> int | None:
    text = parameters.get(key, "").strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"config parameter {key} must be an integer, got {text!r}") from None


def _read_instances(config: mc.ModelConfig) -> InstancePlan | None:
    groups = list(config.instance_group)
    if not groups:
        return None
    if len(groups) > 1:
        raise ValueError(f"model {config.name!r} has {len(groups)} instance groups; a serving plan holds one")
    group = groups[0]
    kind = mc.ModelInstanceGroup.Kind.Name(group.kind)
    if kind not in ("KIND_CPU", "KIND_GPU", "KIND_AUTO"):
        raise ValueError(f"model {config.name!r}: instance kind {kind} is not in a serving plan")
    return InstancePlan(kind, group.count or 1, tuple(group.gpus))  # type: ignore[arg-type]


def _read_threads(config: mc.ModelConfig, parameters: dict[str, str]) -> ThreadPlan:
    engine = format_of_config(config)
    if engine is None:
        return ThreadPlan()
    intra = _int_parameter(parameters, engine.intra_op_threads) or 0
    inter = _int_parameter(parameters, engine.inter_op_threads) or 0
    return ThreadPlan(intra, inter)

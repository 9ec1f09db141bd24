"""Each CPU replica's own CPU plan (issue 17: "on CPU the cores are split between replicas, each with its own CPU
plan, never oversubscribed").

An exported repository is planned for one machine (`serving_target.json`, e.g. `cpu:2`: one single-threaded network
instance per core). A fleet splits the cores between replicas, so a replica pinned to 1 core that loaded the
repository unchanged would run 2 network instances on it. Every CPU replica therefore serves a *shadow repository*
under the fleet's run directory: each model directory links to the original's version directories (nothing is copied,
model versions stay immutable) beside a rewritten `config.pbtxt`:

- network models (a CPU instance group and an engine thread parameter, `intra_op_thread_count` /
  `INTRA_OP_THREAD_COUNT`): the export's rule for the replica's cores, one single-threaded instance per core up to
  `MAX_CPU_INSTANCES`, then more threads per instance (export/devices.py `plan_cpu`, mirrored here: deploy does not
  import export);
- a model that drives a network (its `target_model` parameter, the BLS model): as many instances as its target;
- the interactive-only network copy (`*_interactive`, or a `serves` parameter saying "interactive"): unchanged, it is
  the capacity the export reserves beyond the cores;
- any other CPU model (tokenizer, unknown models): its count, capped at the replica's cores;
- ensembles, GPU groups and models without instance groups: unchanged. GPU replicas serve the repository as it is.

The fleet loads new versions through each replica's repository API with the replica's served config as the override
(`Fleet.serve_version`), so the per-replica counts survive rolling updates and canaries; `sync_replica_repository`
links version directories added to the original after the replica started.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tritonclient.grpc import model_config_pb2 as mc

from tritonfleet.contract.model_config import (
    CONFIG_FILENAME,
    ModelConfig,
    read_config,
    string_parameters,
    write_config,
)
from tritonfleet.contract.serving_target import TARGET_FILENAME, read_serving_target

MAX_CPU_INSTANCES = 8  # export/devices.py MAX_CPU_INSTANCES (same rule, not imported)
THREAD_PARAMETERS = (
    ("intra_op_thread_count", "inter_op_thread_count"),
    ("INTRA_OP_THREAD_COUNT", "INTER_OP_THREAD_COUNT"),
)
INTERACTIVE_SUFFIX = "_interactive"
TARGET_MODEL_PARAMETER = "target_model"
HEADER = (
    "# Per-replica CPU plan written by the fleet (deploy/fleet/replica_plan.py): {plan}\n"
    "# from {source}; do not edit (rewritten at every replica start).\n"
)
# KIND_AUTO is a CPU instance on a replica without a GPU (only CPU replicas are planned here).
CPU_KINDS = (mc.ModelInstanceGroup.KIND_CPU, mc.ModelInstanceGroup.KIND_AUTO)


class ReplicaPlanError(ValueError):
    """A repository the fleet cannot plan per replica (one line, says which file and why)."""


def plan_cpu(cores: int) -> tuple[int, int]:
    """(network instances, intra-op threads each) for `cores`: one single-threaded instance per core up to
    MAX_CPU_INSTANCES, then more threads per instance (the export's default CPU plan)."""
    if cores < 1:
        raise ReplicaPlanError(f"a replica needs at least one core, got {cores}")
    instances = min(cores, MAX_CPU_INSTANCES)
    return instances, max(1, cores // instances)


@dataclass(frozen=True)
class ModelPlan:
    """What one model runs on a replica: `instances` (None: not a CPU-instance model), engine `threads` per instance
    (None: not set by the config), `role` (network / follows <model> / interactive reserve / capped at the
    cores / kept (within the cores) / unchanged)."""

    instances: int | None
    threads: int | None
    role: str
    exported_instances: int | None = None


@dataclass
class ReplicaPlan:
    """A replica's CPU plan: its core count and each model's instances and threads."""

    cores: int
    models: dict[str, ModelPlan] = field(default_factory=dict)
    export_target: str | None = None
    repository: str | None = None

    @property
    def network_threads(self) -> int:
        """Engine threads of one network model's instances (the largest; each network model is planned for the
        cores on its own, as the export plans each format)."""
        networks = [plan for plan in self.models.values() if plan.role == "network"]
        return max(((plan.instances or 0) * (plan.threads or 1) for plan in networks), default=0)

    def describe(self) -> str:
        networks = [plan for plan in self.models.values() if plan.role == "network"]
        reserves = [plan for plan in self.models.values() if plan.role == "interactive reserve"]
        if not networks:
            capped = [plan for plan in self.models.values() if plan.instances is not None]
            most = max((plan.instances or 0 for plan in capped), default=0)
            return f"{self.cores} core(s): every CPU model at most {most} instance(s)"
        first = networks[0]
        text = f"{self.cores} core(s): {first.instances} network instance(s) x {first.threads or 'default'} thread(s)"
        if reserves:
            text += (
                f" + {sum(plan.instances or 0 for plan in reserves)} interactive-only instance(s) (export's reserve)"
            )
        return text

    def as_dict(self) -> dict[str, Any]:
        return {
            "cores": self.cores,
            "plan": self.describe(),
            "export_target": self.export_target,
            "repository": self.repository,
            "models": {
                name: {"instances": plan.instances, "threads": plan.threads, "role": plan.role}
                for name, plan in sorted(self.models.items())
            },
        }


def _cpu_groups(config: ModelConfig) -> list[Any]:
    return [group for group in config.instance_group if group.kind in CPU_KINDS]


def _thread_keys(config: ModelConfig) -> tuple[str, str] | None:
    for intra, inter in THREAD_PARAMETERS:
        if intra in config.parameters:
            return intra, inter
    return None


def _is_interactive_reserve(name: str, config: ModelConfig) -> bool:
    serves = string_parameters(config).get("serves", "")
    return name.endswith(INTERACTIVE_SUFFIX) or serves.startswith("interactive")


def _set_count(config: ModelConfig, count: int) -> None:
    """Sets the CPU groups' total to `count` (one group: its count; several: shared in proportion, >= 1 each)."""
    groups = _cpu_groups(config)
    if len(groups) == 1:
        groups[0].count = count
        return
    total = sum(group.count or 1 for group in groups)
    for group in groups:
        group.count = max(1, (group.count or 1) * count // total)


def _count(config: ModelConfig) -> int:
    return sum(group.count or 1 for group in _cpu_groups(config))


def scale_configs(configs: Mapping[str, ModelConfig], cores: int) -> tuple[dict[str, ModelConfig], ReplicaPlan]:
    """({model: rewritten config} for the models whose config changes, the replica's plan) for a replica of `cores`
    CPU cores; the input configs are not modified. Rules: the module docstring."""
    instances, threads = plan_cpu(cores)
    plan = ReplicaPlan(cores)
    changed: dict[str, ModelConfig] = {}
    network_counts: dict[str, int] = {}
    followers: list[tuple[str, ModelConfig, str]] = []
    for name, config in configs.items():
        groups = _cpu_groups(config)
        keys = _thread_keys(config)
        if config.platform == "ensemble" or not groups or len(groups) != len(config.instance_group):
            plan.models[name] = ModelPlan(None, None, "unchanged")
            continue
        exported = _count(config)
        if _is_interactive_reserve(name, config):
            exported_threads = int(config.parameters[keys[0]].string_value) if keys else None
            plan.models[name] = ModelPlan(exported, exported_threads, "interactive reserve", exported)
            continue
        if keys is not None:
            scaled = ModelConfig()
            scaled.CopyFrom(config)
            _set_count(scaled, instances)
            intra, inter = keys
            scaled.parameters[intra].string_value = str(threads)
            if inter in scaled.parameters:
                scaled.parameters[inter].string_value = "1"
            if scaled != config:
                changed[name] = scaled
            network_counts[name] = _count(scaled)
            plan.models[name] = ModelPlan(_count(scaled), threads, "network", exported)
            continue
        target = string_parameters(config).get(TARGET_MODEL_PARAMETER)
        if target:
            followers.append((name, config, target))
            continue
        capped = min(exported, cores)
        if capped != exported:
            scaled = ModelConfig()
            scaled.CopyFrom(config)
            _set_count(scaled, capped)
            changed[name] = scaled
        role = "capped at the cores" if capped != exported else "kept (within the cores)"
        plan.models[name] = ModelPlan(capped, None, role, exported)
    for name, config, target in followers:
        exported = _count(config)
        count = network_counts.get(target, min(exported, cores))
        if count != exported:
            scaled = ModelConfig()
            scaled.CopyFrom(config)
            _set_count(scaled, count)
            changed[name] = scaled
        plan.models[name] = ModelPlan(count, None, f"follows {target}", exported)
    return changed, plan


def _link(source: Path, link: Path) -> None:
    if link.is_symlink() or link.exists():
        if link.is_symlink() and Path(os.readlink(link)) == source:
            return
        _remove(link)
    link.symlink_to(source, target_is_directory=source.is_dir())


def _remove(path: Path) -> None:
    """Removes a link or a file, or a directory of links and files this module wrote (never follows a link)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)  # rmtree unlinks symlinks inside, never follows them


def _read(path: Path) -> ModelConfig:
    try:
        return read_config(path)
    except Exception as error:  # noqa: BLE001 - text_format raises several types; one line for the user
        raise ReplicaPlanError(f"cannot read {path}: {str(error).splitlines()[0]}") from None


def build_replica_repository(source: Path, target: Path, cores: int) -> ReplicaPlan:
    """Writes `target` (a shadow of `source` for a replica of `cores` cores) and returns the replica's plan. Models
    whose config is unchanged are links to the original model directories; the others are directories of links to the
    original's entries (version directories, warmup data, ...) beside the rewritten config.pbtxt."""
    source = Path(source).resolve()
    configs = {path.parent.name: _read(path) for path in sorted(source.glob(f"*/{CONFIG_FILENAME}"))}
    changed, plan = scale_configs(configs, cores)
    record = read_serving_target(source)
    plan.export_target = record.get("target") if record else None
    plan.repository = str(target)
    if target.exists() or target.is_symlink():
        _remove(target)
    target.mkdir(parents=True)
    header = HEADER.format(plan=plan.describe(), source=source)
    for name, config in changed.items():
        write_config(config, target / name, header)
    if record is not None:  # what the replica serves is planned for its cores (the launcher prints this record)
        replica_record = {
            **record,
            "target": f"cpu:{cores}",
            "chosen_by": f"fleet replica plan (repository exported for {record.get('target')})",
            "plan": plan.describe(),
        }
        (target / TARGET_FILENAME).write_text(json.dumps(replica_record, indent=2) + "\n")
    sync_replica_repository(source, target)
    return plan


def sync_replica_repository(source: Path, target: Path) -> None:
    """Links what the original repository holds and the shadow lacks (a version directory added after the replica
    started, a new model); drops links to entries removed from the original. What the fleet wrote stays."""
    source = Path(source).resolve()
    for entry in sorted(source.iterdir()):
        if entry.name.startswith("."):
            continue
        shadow = target / entry.name
        if shadow.is_symlink() or not shadow.exists():
            _link(entry, shadow)
        elif shadow.is_dir():  # a model with a rewritten config: link its other entries
            for inner in sorted(entry.iterdir()):
                if inner.name != CONFIG_FILENAME and not inner.name.startswith("."):  # `.staging-N`: not a version yet
                    _link(inner, shadow / inner.name)
            for inner in list(shadow.iterdir()):
                if inner.is_symlink() and not inner.exists():
                    inner.unlink()
    for shadow in list(target.iterdir()):
        if shadow.is_symlink() and not shadow.exists():
            shadow.unlink()

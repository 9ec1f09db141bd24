"""Each CPU replica's own CPU plan (issue 17: "on CPU the cores are split between replicas, each with its own CPU
plan, never oversubscribed").

An exported repository is planned for one machine (`serving_target.json`, e.g. `cpu:8`: eight single-threaded network
instances). A fleet splits the cores between replicas, so a replica pinned to 2 cores that loaded the
repository unchanged would run 8 network instances on them. Every CPU replica therefore serves a *shadow repository*
under the fleet's run directory: each model directory links to the original's version directories (nothing is copied,
model versions stay immutable) beside a rewritten `config.pbtxt`:

- network models (a CPU instance group and an engine thread parameter, contract/engine_formats.py): the export's
  rule for the replica's cores, two single-threaded instances per core up to `MAX_CPU_INSTANCES`,
  then more threads per instance (`contract.serving_plan.plan_cpu`, the rule the export plans with);
- a model that drives a network (its `target_model` parameter, the BLS model): as many instances as its target;
- the interactive-only network copy (`*_interactive`, or a `serves` parameter saying "interactive"): unchanged, it is
  the capacity the export reserves beyond the cores;
- any other CPU model (tokenizer, unknown models): its count, capped at the replica's cores;
- ensembles, GPU groups, models without instance groups and configs a serving plan cannot hold (several instance
  groups): unchanged. GPU replicas serve the repository as it is.

Every rewrite is `ServingPlan.from_config` -> a re-planned `ServingPlan` -> `apply` on a copy of the config.

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

from tritonfleet.contract.engine_formats import format_of_config
from tritonfleet.contract.model_config import (
    CONFIG_FILENAME,
    ModelConfig,
    read_config,
    string_parameters,
    write_config,
)
from tritonfleet.contract.serving_plan import ServingPlan
from tritonfleet.contract.serving_target import TARGET_FILENAME, read_serving_target

INTERACTIVE_SUFFIX = "_interactive"
TARGET_MODEL_PARAMETER = "target_model"
HEADER = (
    "# Per-replica CPU plan written by the fleet (deploy/fleet/replica_plan.py): {plan}\n"
    "# from {source}; do not edit (rewritten at every replica start).\n"
)
# KIND_AUTO is a CPU instance on a replica without a GPU (only CPU replicas are planned here).
CPU_KINDS = ("KIND_CPU", "KIND_AUTO")


class ReplicaPlanError(ValueError):
    """A repository the fleet cannot plan per replica (one line, says which file and why)."""


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


def _is_interactive_reserve(name: str, plan: ServingPlan) -> bool:
    return name.endswith(INTERACTIVE_SUFFIX) or plan.interactive_only


def _cpu_plan(config: ModelConfig) -> ServingPlan | None:
    """The config's plan when it runs on one CPU instance group (None: ensembles, GPU groups, no group, or a config
    a plan cannot hold)."""
    if config.platform == "ensemble":
        return None
    try:
        plan = ServingPlan.from_config(config)
    except ValueError:
        return None
    return plan if plan.instances is not None and plan.instances.kind in CPU_KINDS else None


def _rewritten(config: ModelConfig, plan: ServingPlan) -> ModelConfig:
    scaled = ModelConfig()
    scaled.CopyFrom(config)
    return plan.apply(scaled)


def scale_configs(configs: Mapping[str, ModelConfig], cores: int) -> tuple[dict[str, ModelConfig], ReplicaPlan]:
    """({model: rewritten config} for the models whose config changes, the replica's plan) for a replica of `cores`
    CPU cores; the input configs are not modified. Rules: the module docstring."""
    if cores < 1:
        raise ReplicaPlanError(f"a replica needs at least one core, got {cores}")
    plan = ReplicaPlan(cores)
    changed: dict[str, ModelConfig] = {}
    network_counts: dict[str, int] = {}
    followers: list[tuple[str, ModelConfig, ServingPlan, str]] = []
    for name, config in configs.items():
        served = _cpu_plan(config)
        if served is None:
            plan.models[name] = ModelPlan(None, None, "unchanged")
            continue
        exported = served.instance_count
        if _is_interactive_reserve(name, served):
            plan.models[name] = ModelPlan(exported, served.threads.intra_op or None, "interactive reserve", exported)
            continue
        if format_of_config(config) is not None and served.threads.intra_op:
            replica = served.for_cpu_cores(cores)
            if replica != served:
                changed[name] = _rewritten(config, replica)
            network_counts[name] = replica.instance_count
            plan.models[name] = ModelPlan(replica.instance_count, replica.threads.intra_op, "network", exported)
            continue
        target = string_parameters(config).get(TARGET_MODEL_PARAMETER)
        if target:
            followers.append((name, config, served, target))
            continue
        capped = min(exported, cores)
        if capped != exported:
            changed[name] = _rewritten(config, served.with_instance_count(capped))
        role = "capped at the cores" if capped != exported else "kept (within the cores)"
        plan.models[name] = ModelPlan(capped, None, role, exported)
    for name, config, served, target in followers:
        exported = served.instance_count
        count = network_counts.get(target, min(exported, cores))
        if count != exported:
            changed[name] = _rewritten(config, served.with_instance_count(count))
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

"""The benchmark's engine variants: repositories whose networks hold one precision each, what their configs say
(precision, device plan, threads, which network a served model runs), and the batching-off copy of group c."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tritonclient.grpc import model_config_pb2 as mc

from tritonfleet.contract.engine_formats import format_of_config
from tritonfleet.contract.model_config import model_configs, write_config
from tritonfleet.contract.serving_plan import ServingPlan
from tritonfleet.export.devices import DevicePlan, default_precision

if TYPE_CHECKING:
    from tritonfleet.loadtest.bench.report import BenchReport
    from tritonfleet.loadtest.bench.scenarios import BenchConfig

VARIANT_PRECISIONS = ("auto", "fp32", "int8", "bf16", "fp16")
# Export arguments a precision needs beyond `precision=` (bf16 exists for TorchScript only, so the pipelines call it).
VARIANT_EXPORTS: dict[str, dict] = {"bf16": {"formats": ("torchscript",), "ensemble_target": "torchscript"}}


@dataclass(frozen=True)
class Variant:
    """One engine variant: a repository whose networks hold one precision."""

    precision: str
    repository: Path


def resolve_variants(requested: Sequence[str], repository_precision: str) -> list[str]:
    """The precisions to export besides the repository's own, in the order asked, each once ("auto" is the
    repository's precision: nothing to export)."""
    unknown = sorted(set(requested) - set(VARIANT_PRECISIONS))
    if unknown:
        raise ValueError(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANT_PRECISIONS)}")
    extra: list[str] = []
    for precision in requested:
        resolved = repository_precision if precision == "auto" else precision
        if resolved != repository_precision and resolved not in extra:
            extra.append(resolved)
    return extra


def _network_configs(repository: Path) -> dict[str, mc.ModelConfig]:
    """The exported networks' configs (ONNX Runtime and LibTorch models) by model name."""
    return {config.name or name: config for name, config in model_configs(repository) if format_of_config(config)}


def engine_of(config: mc.ModelConfig) -> str:
    """The engine format ("onnx", "torchscript") that runs a network's config."""
    engine = format_of_config(config)
    if engine is None:
        raise ValueError(f"{config.name}: not an ONNX Runtime or LibTorch model")
    return engine.name


def repository_precision(repository: Path) -> str:
    """The precision the repository's networks were exported in (their `precision` parameter; fp32 when absent)."""
    for config in _network_configs(repository).values():
        if "precision" in config.parameters:
            return config.parameters["precision"].string_value
    return "fp32"


def repository_devices(repository: Path) -> DevicePlan:
    """The device plan a repository's networks were exported with, from their serving plan."""
    networks = _network_configs(repository)
    if not networks:
        raise ValueError(f"{repository} holds no ONNX Runtime or LibTorch model")
    plan = ServingPlan.from_config(next(iter(networks.values())))
    if plan.instances is not None and plan.instances.kind == "KIND_GPU":
        return DevicePlan("KIND_GPU", plan.instances.gpus, instances_per_gpu=plan.instances.count)
    return DevicePlan("KIND_CPU", cpu_instances=plan.instance_count, cpu_threads=plan.threads.intra_op)


def network_plan(config: mc.ModelConfig) -> str:
    """How a served network spends the cores, e.g. '2 instances x 1 thread'."""
    plan = ServingPlan.from_config(config)
    instances = plan.instance_count
    if plan.instances is not None and plan.instances.kind == "KIND_GPU":
        return f"{instances} GPU instance{'s' if instances > 1 else ''}"
    threads = plan.threads.intra_op
    described = f"{threads} thread{'s' if threads > 1 else ''}" if threads else "engine-default threads"
    return f"{instances} instance{'s' if instances > 1 else ''} x {described}"


def served_networks(repository: Path) -> dict[str, str]:
    """Served model -> the network whose engine runs it: a network itself; the network the ensemble's steps or the
    BLS model's `target_model` parameter call."""
    networks = _network_configs(repository)
    result = {name: name for name in networks}
    for name, config in model_configs(repository):
        if config.platform == "ensemble":
            called = [step.model_name for step in config.ensemble_scheduling.step if step.model_name in networks]
        else:
            target = config.parameters["target_model"].string_value if "target_model" in config.parameters else ""
            called = [target] if target in networks else []
        if called:
            result[config.name or name] = called[0]
    return result


def loadable_models(repository: Path) -> tuple[str, ...]:
    """Every model Triton can load from the repository: all but a network without a model file (an export without
    that format, e.g. bf16 for TorchScript only, still writes its config) and the pipelines calling such a network."""
    networks = served_networks(repository)
    empty = {name for name in _network_configs(repository) if not any((repository / name).glob("[0-9]*/*"))}
    return tuple(name for name, _ in model_configs(repository) if name not in empty and networks.get(name) not in empty)


def prepare_variants(config: BenchConfig, scratch: Path, report: BenchReport) -> list[Variant]:
    """The default variant (the given repository, or one exported with the export's defaults) first, then every
    other precision asked for, exported with the same device plan and random weights of the same size. A variant
    refused by its quality gate is reported, not measured."""
    from tritonfleet.export.esm2 import export_esm2
    from tritonfleet.export.parity import ParityError
    from tritonfleet.export.signature import ExportError

    repository = config.model_repository
    if repository is None:
        print(f"exporting ESM-2 {config.model_size} (random weights, the export's defaults) ...", flush=True)
        repository = scratch / "default"
        export_esm2(repository, random_init=config.model_size, gpus="auto")
        source = "exported by this run with the export's defaults"
    else:
        source = f"`{repository}`"
    precision, devices = repository_precision(repository), repository_devices(repository)
    if precision != (machine_default := default_precision(devices)):
        source += f"; the export's default on this machine would be {machine_default}"
    report.config["default_source"], report.config["device_plan"] = source, devices.describe()
    variants = [Variant(precision, repository)]
    for extra in resolve_variants(config.variants, precision):
        print(f"exporting the {extra} variant (random weights {config.model_size}, {devices.describe()}) ...",
              flush=True)  # fmt: skip
        try:
            export_esm2(scratch / extra, random_init=config.model_size, precision=extra, devices=devices,
                        **VARIANT_EXPORTS.get(extra, {}))  # fmt: skip
        except (ParityError, ExportError, ValueError) as error:
            report.problems.append(f"variant {extra} not measured, its export failed: {error}")
            continue
        variants.append(Variant(extra, scratch / extra))
    return variants


def write_batching_off_repository(source: Path, destination: Path) -> list[str]:
    """A copy of `source` whose configs have dynamic_batching removed (max_batch_size kept); everything else is
    symlinked. Returns the changed models."""
    changed = []
    destination.mkdir(parents=True, exist_ok=True)
    for model_dir in sorted(path for path in source.iterdir() if path.is_dir()):
        target_dir = destination / model_dir.name
        target_dir.mkdir(exist_ok=True)
        for entry in model_dir.iterdir():
            link = target_dir / entry.name
            if entry.name != "config.pbtxt" and not link.exists():
                link.symlink_to(entry.resolve(), target_is_directory=entry.is_dir())
    for name, config in model_configs(source):
        if config.HasField("dynamic_batching"):
            config.ClearField("dynamic_batching")
            changed.append(config.name or name)
        write_config(config, destination / name)
    return changed

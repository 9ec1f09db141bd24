"""`python -m export torch`: any PyTorch model, given as an eager module and sample inputs, into a Triton repository.

A bare network is a one-network pipeline (`torch_pipeline`: its models and tensors from the exported signature, with
the roles `--input-roles` / `--output-roles` give them, written to the configs' `tensor_roles`; else INPUT / OUTPUT).
Each format becomes one model, `<name>_onnx` (onnxruntime_onnx) and/or `<name>_torchscript` (pytorch_libtorch,
tensors named `<NAME>__<index>`), with the signature inferred from the samples (export.signature), dynamic batching
with a bounded queue, the device plan, and a warmup request made from the first sample. Configs are written only
after every format exported and passed parity, so a failed export leaves no model for Triton to load.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tritonfleet.contract.bare_network import TENSOR_ROLES_PARAMETER, format_tensor_roles, network_pipeline
from tritonfleet.contract.model_config import write_config
from tritonfleet.contract.pipeline import Pipeline, Role
from tritonfleet.contract.serving_plan import BatchingPlan
from tritonfleet.export.devices import DevicePlan, plan_devices
from tritonfleet.export.model_config import (
    FORMATS,
    GENERATED_HEADER,
    WARMUP_DIRNAME,
    Format,
    WarmupSample,
    check_formats,
    default_batching,
    network_config,
    served_names,
)
from tritonfleet.export.network import ExportReport, Network, describe_network, export_network
from tritonfleet.export.onnx_export import OnnxExporter
from tritonfleet.export.parity import ParityCase
from tritonfleet.export.signature import ExportError, Sample, Signature

logger = logging.getLogger(__name__)

MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# fp16 needs inputs and module in half precision, which only a model-specific recipe knows (ESM-2 has it).
TORCH_PRECISIONS = ("fp32", "int8", "bf16")
WARMUP_SAMPLE = "sample_0"


@dataclass(frozen=True)
class TorchExportOptions:
    """How `export_torch` names, places and batches the exported models.

    Attributes:
        name: model name prefix: the models are `<name>_<format>`.
        output: repository root (other models in it are left alone).
        input_names, output_names: tensor names in forward order (default INPUT0.. / OUTPUT0..).
        formats: "onnx" and/or "torchscript".
        devices: instance placement (default: the CPU plan of this machine, export.devices.plan_devices).
        batching: dynamic batching and the bounded queue (default: the devices' policy).
        onnx_exporter: "dynamo" or "legacy".
        precision: "fp32", "int8" (dynamically quantized linear layers) or "bf16" (TorchScript under CPU autocast);
            int8 and bf16 pass a similarity gate against eager fp32 instead of the fp32 tolerance.
        parity_samples: how many samples (from the first) parity checks every format on; None: all, 0: none.
        parameters: extra config `parameters` (strings), e.g. where the model came from.
        input_roles, output_roles: the tensors' roles in forward order (contract.pipeline.Role), so the load tools
            can address them (e.g. TOKEN_IDS, ATTENTION_MASK -> EMBEDDING); None: no role declared.
    """

    name: str
    output: Path
    input_names: tuple[str, ...] | None = None
    output_names: tuple[str, ...] | None = None
    formats: tuple[Format, ...] = FORMATS
    devices: DevicePlan = field(default_factory=lambda: plan_devices("none"))
    batching: BatchingPlan | None = None
    onnx_exporter: OnnxExporter = "dynamo"
    precision: str = "fp32"
    parity_samples: int | None = None
    parameters: Mapping[str, str] = field(default_factory=dict)
    input_roles: tuple[Role, ...] | None = None
    output_roles: tuple[Role, ...] | None = None

    def __post_init__(self) -> None:
        if self.batching is None:
            object.__setattr__(self, "batching", default_batching(self.devices))
        if not MODEL_NAME.fullmatch(self.name):
            raise ExportError(f"--name {self.name!r}: use letters, digits, '_', '.' or '-' (it names directories)")
        check_formats(self.formats)
        if self.precision not in TORCH_PRECISIONS:
            raise ExportError(f"--precision {self.precision!r}: choose one of {', '.join(TORCH_PRECISIONS)}")
        if self.parity_samples is not None and self.parity_samples < 0:
            raise ExportError("--parity-samples must be >= 0")


def model_names(name: str, formats: Sequence[Format]) -> dict[Format, str]:
    """{format: served model name}."""
    return {fmt: f"{name}_{fmt}" for fmt in formats}


def sample_warmup(
    signature: Signature, sample: Sample, served_inputs: Sequence[str], max_batch_size: int
) -> tuple[WarmupSample, dict[str, bytes]]:
    """A warmup request from a sample's first row (Triton repeats it `batch_size` times) and its data files."""
    batch_size = max(1, min(sample[0].shape[0], max_batch_size))
    files = {served: spec.name for served, spec in zip(served_inputs, signature.inputs)}
    dims = {served: tuple(array.shape[1:]) for served, array in zip(served_inputs, sample)}
    data = {
        spec.name: array[0].astype(array.dtype.newbyteorder("<")).tobytes()
        for spec, array in zip(signature.inputs, sample)
    }
    return WarmupSample(WARMUP_SAMPLE, batch_size, files, dims), data


def tensor_roles(signature: Signature, options: TorchExportOptions, fmt: Format) -> dict[str, Role]:
    """{served tensor name: role} of one format's model, as the options declare them (empty when they declare none)."""
    roles: dict[str, Role] = {}
    for kind, specs, given in (
        ("input", signature.inputs, options.input_roles),
        ("output", signature.outputs, options.output_roles),
    ):
        if given is None:
            continue
        if len(given) != len(specs):
            raise ExportError(f"--{kind}-roles gives {len(given)} role(s) but the model has {len(specs)} {kind}(s)")
        roles.update(zip(served_names(specs, fmt), given))
    return roles


def torch_pipeline(signature: Signature, options: TorchExportOptions) -> Pipeline:
    """The exported models as a one-network pipeline, from the signature and the declared roles."""
    models = model_names(options.name, options.formats)
    return network_pipeline(
        options.name,
        {
            model: (served_names(signature.inputs, fmt), served_names(signature.outputs, fmt))
            for fmt, model in models.items()
        },
        {name: role for fmt in models for name, role in tensor_roles(signature, options, fmt).items()},
    )


def export_torch(module: Any, samples: Sequence[Any], options: TorchExportOptions) -> ExportReport:
    """Exports an eager module with its samples: every format, parity against eager, then configs and warmup."""
    network = describe_network(module, samples, options.input_names, options.output_names)
    torch_pipeline(network.signature, options)  # refuses roles that do not fit the signature before exporting
    report = ExportReport(options.output)
    models = model_names(options.name, options.formats)
    cases = parity_cases(network, options.parity_samples)
    export_network(network, options.output, models, report, cases, options.onnx_exporter, precision=options.precision)
    write_models(network, options, models, report)
    return report


def parity_cases(network: Network, count: int | None) -> list[ParityCase]:
    samples = network.samples if count is None else network.samples[:count]
    return [ParityCase(f"sample {index}", sample) for index, sample in enumerate(samples)]


def write_models(
    network: Network, options: TorchExportOptions, models: Mapping[Format, str], report: ExportReport
) -> None:
    """Writes each model's config.pbtxt and warmup files."""
    for fmt, model in models.items():
        warmup, files = sample_warmup(
            network.signature,
            network.samples[0],
            served_names(network.signature.inputs, fmt),
            options.batching.max_batch_size,
        )
        for filename, data in files.items():
            path = options.output / model / WARMUP_DIRNAME / filename
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            report.artifacts.append(path)
        signature = network.signature
        config = network_config(
            model,
            fmt,
            signature.inputs,
            signature.outputs,
            options.devices.network_plan(options.batching),
            [warmup],
            {**options.parameters, "precision": options.precision, **_roles_parameter(signature, options, fmt)},
        )
        report.configs.append(write_config(config, options.output / model, header=GENERATED_HEADER))


def _roles_parameter(signature: Signature, options: TorchExportOptions, fmt: Format) -> dict[str, str]:
    roles = tensor_roles(signature, options, fmt)
    return {TENSOR_ROLES_PARAMETER: format_tensor_roles(roles)} if roles else {}

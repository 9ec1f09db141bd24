"""`tritonfleet export torch`: the bare network's export subcommand (an `ExportCommand`, like a pipeline's), its own
options on top of the export's shared serving options (export/__main__.py)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from tritonfleet.contract.pipeline import Role
from tritonfleet.export.generic import TORCH_PRECISIONS
from tritonfleet.export.network import ExportReport
from tritonfleet.export.signature import parse_names


def parse_roles(text: str) -> tuple[Role, ...]:
    """`--input-roles TOKEN_IDS,ATTENTION_MASK` -> (Role.TOKEN_IDS, Role.ATTENTION_MASK)."""
    names = [part.strip().upper() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in Role.__members__]
    if unknown:
        choices = ", ".join(Role.__members__)
        raise argparse.ArgumentTypeError(f"unknown role(s) {', '.join(unknown)}; choose from {choices}")
    return tuple(Role[name] for name in names)


@dataclass(frozen=True)
class TorchExportCommand:
    """Any PyTorch model from a factory: the one-network pipeline built from its exported signature."""

    summary: str = "any PyTorch model: MODULE:CALLABLE returns (module, samples)"
    description: str = (
        "Export any PyTorch model to ONNX and/or TorchScript models <NAME>_onnx, <NAME>_torchscript "
        "(tensors NAME__<i>), parity-checked against eager PyTorch, with generated configs. CALLABLE() returns "
        "(module, samples): an nn.Module and a list of input tuples (or tensors) of different shapes. The leading "
        "axis is the batch; any other axis whose size differs across samples becomes dynamic (-1); axes of "
        "different inputs that vary alike share one dynamic size."
    )
    parity_default: int | None = None
    parity_help: str = "parity-check every format on the first N samples (default: all; 0 skips)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--factory", required=True, metavar="MODULE:CALLABLE", help="e.g. my_model:build")
        parser.add_argument("--name", required=True, help="model name prefix: models <NAME>_<format>")
        parser.add_argument(
            "--input-names", metavar="A,B,...", help="input names in forward order (default: INPUT0,INPUT1,...)"
        )
        parser.add_argument(
            "--output-names", metavar="C,D,...", help="output names in return order (default: OUTPUT0,OUTPUT1,...)"
        )
        for kind, example in (("input", "TOKEN_IDS,ATTENTION_MASK"), ("output", "EMBEDDING")):
            parser.add_argument(
                f"--{kind}-roles",
                type=parse_roles,
                metavar="ROLE,...",
                help=f"what each {kind} carries, in order (e.g. {example}; roles: {', '.join(Role.__members__)}): "
                "written to the configs (parameter tensor_roles) so the load tools and tune can feed the model "
                "(default: none)",
            )
        parser.add_argument(
            "--precision",
            choices=TORCH_PRECISIONS,
            default="fp32",
            help="int8 (ONNX: per-row activation scales, integer MatMuls, batch invariant; TorchScript stays fp32); "
            "bf16: TorchScript under CPU autocast (both gated on cosine similarity to eager fp32; fp32/int8 outputs "
            "alone vs in a padded batch within 1e-5) (default: %(default)s)",
        )

    def run(self, args: argparse.Namespace, serving: Any) -> ExportReport:
        from tritonfleet.export.factory import call_factory, load_factory
        from tritonfleet.export.generic import TorchExportOptions, export_torch, torch_pipeline

        options = TorchExportOptions(
            name=args.name,
            output=args.output,
            input_names=parse_names(args.input_names),
            output_names=parse_names(args.output_names),
            formats=serving.formats(args.formats),
            devices=(devices := serving.devices(args)),
            batching=serving.batching(args, devices),
            onnx_exporter=args.onnx_exporter,
            precision=args.precision,
            parity_samples=args.parity_samples,
            parameters={"factory": args.factory},
            input_roles=args.input_roles,
            output_roles=args.output_roles,
        )
        module, samples = call_factory(load_factory(args.factory), args.factory)
        report = export_torch(module, samples, options)
        print(f"model repository: {report.output}")
        exported = torch_pipeline(report.signature, options) if report.signature is not None else None
        print(f"  models: {', '.join(model.name for model in exported.models) if exported else '?'}")
        if report.signature is not None:
            print(f"  signature: {report.signature.describe()}")
        print(f"  devices: {options.devices.describe()}")
        print(f"  serving target: {serving.write_target(args, options.devices, options.precision)}")
        return report


COMMAND = TorchExportCommand()

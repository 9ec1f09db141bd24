"""`tritonfleet export esm2`: ESM-2's export subcommand (the pipeline's `command_hook`), its own options on top of
the export's shared serving options (export/__main__.py)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any

from tritonfleet.contract.esm2.pipeline import TOKENIZER_MODEL
from tritonfleet.contract.esm2_tokens import (
    DEFAULT_BUCKETS,
    RUN_OVERHEAD_TOKENS_CPU,
    RUN_OVERHEAD_TOKENS_GPU,
    format_buckets,
    parse_buckets,
)
from tritonfleet.contract.model_config import read_config
from tritonfleet.export.esm2.sizes import RANDOM_INIT_SIZES
from tritonfleet.export.network import PRECISIONS, ExportReport


@dataclass(frozen=True)
class Esm2ExportCommand:
    """The `ExportCommand` of the ESM-2 pipeline (tritonfleet.contract.pipeline)."""

    summary: str = "ESM-2 protein embeddings: ONNX + TorchScript + tokenizer + BLS + ensemble"
    parity_default: int | None = 4
    parity_help: str = "parity cases per network; 0 skips parity (default: %(default)s)"

    @property
    def description(self) -> str:
        from tritonfleet.export.esm2.repository import CANONICAL_COMMAND

        return f"Canonical command for the committed repository: {CANONICAL_COMMAND}"

    def add_arguments(self, esm2: argparse.ArgumentParser) -> None:
        weights = esm2.add_mutually_exclusive_group(required=True)
        weights.add_argument("--checkpoint", help="HF id (facebook/esm2_t33_650M_UR50D) or local save_pretrained dir")
        weights.add_argument("--random-init", choices=RANDOM_INIT_SIZES, help="RANDOM weights of this size (tests)")
        esm2.add_argument("--seed", type=int, default=0, help="seed of --random-init weights (default: %(default)s)")
        esm2.add_argument(
            "--precision",
            choices=("auto", *PRECISIONS),
            default="auto",
            help="auto: int8 on a CPU plan whose CPU has VNNI (fp32 if an int8 engine misses its gate), else fp32. "
            "int8 (ONNX: per-row activation scales, integer MatMuls, batch invariant; TorchScript stays fp32) and "
            "bf16 (TorchScript only, CPUs with AVX512-BF16/AMX) keep fp32 outputs and must pass the quality gate "
            "(pooled cosine >= 0.999, per-residue >= 0.99 vs eager fp32) and, for fp32/int8, the invariance gate "
            "(outputs alone vs in a padded batch within 1e-5); fp16 is meant for GPUs (default: %(default)s)",
        )
        esm2.add_argument(
            "--onnx-graph",
            choices=("fused", "exported"),
            default="fused",
            help="fused: ESM-2 built with ONNX Runtime's fused rotary attention ops; exported: torch.onnx's graph "
            "(fp16 always uses it) (default: %(default)s)",
        )
        esm2.add_argument(
            "--length-buckets",
            type=parse_buckets,
            default=None,
            metavar="N,N,...|exact",
            help="token-length buckets of the tokenizer; 'exact' pads each request to its own length (default: exact "
            f"where every execution holds one sequence, i.e. CPU plans; {format_buckets(DEFAULT_BUCKETS)} otherwise)",
        )
        esm2.add_argument(
            "--run-overhead-tokens",
            type=int,
            default=None,
            help="tokenizer pads consecutive requests to one width when cheaper than this many padded tokens per "
            f"execution (default: {RUN_OVERHEAD_TOKENS_CPU} on CPU, {RUN_OVERHEAD_TOKENS_GPU} on GPUs; 0 disables)",
        )
        esm2.add_argument(
            "--ensemble-target",
            choices=("onnx", "torchscript"),
            help="the network the esm2 ensemble and esm2_bls call (default: the first of --formats)",
        )
        esm2.add_argument("--configs-only", action="store_true", help="write configs and support files, no weights")

    def run(self, args: argparse.Namespace, serving: Any) -> ExportReport:
        """Exports with the parsed options; `serving` gives the shared devices, batching, formats and target record
        (export.__main__.ServingArguments)."""
        from tritonfleet.export.esm2.recipe import Esm2Recipe
        from tritonfleet.export.esm2.repository import RepositoryOptions, export_with_precision

        options = RepositoryOptions(
            output=args.output,
            devices=(devices := serving.devices(args)),
            batching=serving.batching(args, devices),
            tokenizer_batching=serving.batching(args, devices, tokenizer=True),
            length_buckets=args.length_buckets,
            run_overhead_tokens=args.run_overhead_tokens,
            ensemble_target=args.ensemble_target,
            formats=serving.formats(args.formats),
            onnx_exporter=args.onnx_exporter,
            parity_samples=args.parity_samples,
            configs_only=args.configs_only,
            execution_cap=args.max_batch_size is None,
        )
        recipe = Esm2Recipe(
            checkpoint=args.checkpoint,
            random_init=None if args.checkpoint else args.random_init,
            seed=args.seed,
            onnx_graph=args.onnx_graph,
        )
        report = export_with_precision(recipe, options, args.precision)
        if args.precision == "auto" and not args.resolved_target[1] and options.devices.kind == "KIND_CPU":
            print(
                f"note: --precision auto chose {report.precision} from the exporting machine's CPU (int8 needs "
                "VNNI); name --precision if the serving machine's CPU differs",
                file=sys.stderr,
            )
        print(f"model repository: {report.output}")
        print(f"  weights: {recipe.weights_source}")
        print(
            f"  devices: {options.devices.describe()}; precision: {report.precision}; onnx graph: {recipe.onnx_graph}"
        )
        tokenizer_config = read_config(report.output / TOKENIZER_MODEL / "config.pbtxt")
        print(f"  buckets: {tokenizer_config.parameters['length_buckets'].string_value}")
        print(f"  serving target: {serving.write_target(args, options.devices, report.precision)}")
        if recipe.is_random:
            print("  WARNING: RANDOM WEIGHTS - embeddings are meaningless; use --checkpoint for a real model")
        return report


COMMAND = Esm2ExportCommand()

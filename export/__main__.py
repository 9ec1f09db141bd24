"""Command line: `python -m export esm2 [--checkpoint ID|PATH | --random-init 8M] --output model_repository ...`."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from tritonfleet.contract.esm2_tokens import (
    DEFAULT_BUCKETS,
    RUN_OVERHEAD_TOKENS_CPU,
    RUN_OVERHEAD_TOKENS_GPU,
    format_buckets,
    parse_buckets,
)
from tritonfleet.export.esm2.sizes import RANDOM_INIT_SIZES
from tritonfleet.export.gpus import plan_devices
from tritonfleet.export.model_config import BatchingOptions
from tritonfleet.export.repository import CANONICAL_COMMAND, RepositoryOptions, export_repository

logger = logging.getLogger("export")


def _positive_int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m export", description="Export models to a Triton repository.")
    models = parser.add_subparsers(dest="model", required=True)
    esm2 = models.add_parser(
        "esm2",
        help="ESM-2 protein embeddings: ONNX + TorchScript + tokenizer + ensemble",
        description=f"Canonical command for the committed repository: {CANONICAL_COMMAND}",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    weights = esm2.add_mutually_exclusive_group(required=True)
    weights.add_argument("--checkpoint", help="HF id (facebook/esm2_t33_650M_UR50D) or local save_pretrained dir")
    weights.add_argument("--random-init", choices=RANDOM_INIT_SIZES, help="RANDOM weights of this size (tests)")
    esm2.add_argument("--seed", type=int, default=0, help="seed of --random-init weights")
    esm2.add_argument("--output", type=Path, required=True, help="model repository root")
    esm2.add_argument("--gpus", default="auto", help="auto (detect), none (CPU) or GPU ids like 0,1,2,3")
    esm2.add_argument("--instances-per-gpu", type=int, default=1)
    esm2.add_argument("--cpu-instances", type=int, default=1, help="model instances when on CPU")
    esm2.add_argument("--precision", choices=("fp32", "fp16"), default="fp32", help="fp16 is meant for GPUs")
    esm2.add_argument("--max-batch-size", type=int, default=64)
    esm2.add_argument("--preferred-batch-sizes", type=_positive_int_list, default=(8, 16, 32, 64))
    esm2.add_argument("--max-queue-delay-us", type=int, default=2000, help="dynamic batcher delay of the networks")
    esm2.add_argument("--max-queue-size", type=int, default=256, help="queued requests beyond this get 503")
    esm2.add_argument("--length-buckets", type=parse_buckets, default=DEFAULT_BUCKETS, help="token-length buckets")
    esm2.add_argument(
        "--run-overhead-tokens",
        type=int,
        default=None,
        help="tokenizer pads consecutive requests to one width when cheaper than this many padded tokens per "
        f"execution (default: {RUN_OVERHEAD_TOKENS_CPU} on CPU, {RUN_OVERHEAD_TOKENS_GPU} on GPUs; 0 disables)",
    )
    esm2.add_argument("--ensemble-target", choices=("onnx", "torchscript"), default="onnx")
    esm2.add_argument("--formats", default="onnx,torchscript", help="networks to export")
    esm2.add_argument("--onnx-exporter", choices=("dynamo", "legacy"), default="dynamo")
    esm2.add_argument("--parity-samples", type=int, default=4, help="parity cases per network; 0 skips parity")
    esm2.add_argument("--configs-only", action="store_true", help="write configs and support files, no weights")
    esm2.add_argument("-v", "--verbose", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Our progress at INFO; third-party loggers (onnxscript's optimizer is chatty) only from WARNING.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    from tritonfleet.export.esm2.recipe import Esm2Recipe

    formats = tuple(part.strip() for part in args.formats.split(",") if part.strip())
    unknown = set(formats) - {"onnx", "torchscript"}
    if unknown or not formats:
        raise SystemExit(f"--formats takes onnx and/or torchscript, got {args.formats!r}")
    preferred = tuple(size for size in args.preferred_batch_sizes if size <= args.max_batch_size)
    options = RepositoryOptions(
        output=args.output,
        devices=plan_devices(args.gpus, args.instances_per_gpu, args.cpu_instances),
        batching=BatchingOptions(args.max_batch_size, preferred, args.max_queue_delay_us, args.max_queue_size),
        tokenizer_batching=BatchingOptions(args.max_batch_size, preferred, 500, args.max_queue_size),
        length_buckets=args.length_buckets,
        run_overhead_tokens=args.run_overhead_tokens,
        ensemble_target=args.ensemble_target,
        formats=formats,
        onnx_exporter=args.onnx_exporter,
        parity_samples=args.parity_samples,
        configs_only=args.configs_only,
    )
    recipe = Esm2Recipe(
        checkpoint=args.checkpoint,
        random_init=None if args.checkpoint else args.random_init,
        seed=args.seed,
        precision=args.precision,
    )
    started = time.perf_counter()
    report = export_repository(recipe, options)
    print(f"model repository: {report.output}")
    print(f"  weights: {recipe.weights_source}")
    print(f"  devices: {options.devices.describe()}; buckets: {format_buckets(options.length_buckets)}")
    for variant, diff in report.parity.items():
        print(f"  parity {variant}: max abs diff {diff:.2e}")
    timings = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in report.seconds.items())
    print(f"  done in {time.perf_counter() - started:.1f} s" + (f" ({timings})" if timings else ""))
    if recipe.is_random:
        print("  WARNING: RANDOM WEIGHTS - embeddings are meaningless; use --checkpoint for a real model")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`tritonfleet bench`: run the benchmark, write its reports (`python -m loadtest.bench`: deprecated, same flags)."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from tritonfleet.contract.command_line import HelpFormatter, add_deprecated, warn_python_m
from tritonfleet.export.esm2.sizes import RANDOM_INIT_SIZES
from tritonfleet.loadtest.bench.report import write_report
from tritonfleet.loadtest.bench.scenarios import BenchConfig, run_bench
from tritonfleet.loadtest.bench.variants import VARIANT_PRECISIONS
from tritonfleet.loadtest.devices import select_devices
from tritonfleet.loadtest.studies.header import command_line

DESCRIPTION = (
    "One-run benchmark of the engine variants: served / raw (same engine, same threads), raw / eager fp32 PyTorch, "
    "and Triton vs a hand-written FastAPI service."
)


def variant_list(text: str) -> tuple[str, ...]:
    """`--variants`: comma-separated precisions, each one the export offers, or auto."""
    variants = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = sorted(set(variants) - set(VARIANT_PRECISIONS))
    if not variants or unknown:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(VARIANT_PRECISIONS)} (got {text!r})")
    return variants


PROGRAM = "python -m tritonfleet.loadtest.bench"


def build_parser(prog: str = PROGRAM) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION, formatter_class=HelpFormatter)
    parser.add_argument("--quick", action="store_true", help="CI smoke: short mix, few sequences, short windows")
    parser.add_argument(
        "--random-init", choices=RANDOM_INIT_SIZES, default="8M", help="ESM-2 size of the random weights exported"
    )
    add_deprecated(parser, "--model-size", "--random-init", dest="random_init")
    parser.add_argument(
        "--model-repository",
        type=Path,
        default=None,
        help="exported repository: the default variant (default: export one with the export's defaults)",
    )
    parser.add_argument("--variants", type=variant_list, default=None,
                        help="engine precisions to measure, e.g. int8,fp32,bf16 (default auto,fp32; auto = the "
                        "repository's precision; the others are exported with random weights of --random-init and the "
                        "repository's device plan)")  # fmt: skip
    parser.add_argument("--length-mix", default=None)
    parser.add_argument("--sequences", type=int, default=None)
    parser.add_argument("--concurrency", type=int, default=None)
    parser.add_argument("--duration", type=float, default=None, help="seconds per load point")
    parser.add_argument("--batch-sizes", default=None, help="raw-engine batch sizes to try, e.g. 1,8,32,64")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:0,cuda:1 (PyTorch paths)")
    parser.add_argument("--output", type=Path, default=Path("reports"), metavar="DIR", help="report folder")
    add_deprecated(parser, "--report-dir", "--output", type=Path)
    parser.add_argument("--prefix", default=None, help="report file prefix (default bench, bench_quick with --quick)")
    return parser


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    overrides = {key: value for key, value in (
        ("length_mix", args.length_mix), ("sequences", args.sequences), ("concurrency", args.concurrency),
        ("duration_s", args.duration),
        ("batch_sizes", tuple(int(b) for b in args.batch_sizes.split(",")) if args.batch_sizes else None),
        ("variants", args.variants),
    ) if value is not None}  # fmt: skip
    common = dict(model_size=args.random_init, model_repository=args.model_repository, report_dir=args.output,
                  device=",".join(select_devices(args.device)))  # fmt: skip
    return BenchConfig.quick_config(**common, **overrides) if args.quick else BenchConfig(**common, **overrides)


def main(argv: Sequence[str] | None = None, prog: str = PROGRAM) -> int:
    args = build_parser(prog).parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the servers this run started (Triton, uvicorn) are stopped on the way out.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    command = command_line(prog, argv)
    report = run_bench(config_from_args(args), command.strip())
    path = write_report(report, args.output, args.prefix or ("bench_quick" if args.quick else "bench"))
    print(path.read_text())
    served = [s for s in report.scenarios if s.group in "bcd"]
    return 0 if served and all(s.requests > 0 for s in served) else 1


if __name__ == "__main__":
    warn_python_m(__spec__.name if __spec__ else None, "bench")
    sys.exit(main())

"""Command line: `tritonfleet export torch --factory MODULE:CALLABLE --name NAME --output DIR ...` for any PyTorch
model (a bare network, export/torch_command.py), `tritonfleet export <pipeline> ...` for every installed pipeline
with an export command (tritonfleet.contract.pipeline; ESM-2: `tritonfleet export esm2 [--checkpoint ID|PATH |
--random-init 8M] --target cpu:4 --output DIR ...`, export/esm2/command.py) (`python -m export ...` from a checkout:
deprecated, same flags).

`--target` names the machine that will serve the repository (cpu:CORES, gpu:IDS, gpu:all; auto = this machine, and
says what it chose); it is written down in the repository's `serving_target.json`.

Problems the user can fix (a factory that cannot be imported, bad samples, a model that cannot be exported, parity
failures, bad options) end with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tritonfleet.contract.command_line import HelpFormatter, warn_deprecated, warn_python_m
from tritonfleet.contract.pipeline import get_pipeline, pipelines
from tritonfleet.contract.priorities import PRIORITY_CLASSES
from tritonfleet.contract.serving_plan import BatchingPlan, PriorityPlan
from tritonfleet.export.devices import (
    DEFAULT_INSTANCES_PER_GPU,
    MAX_CPU_INSTANCES,
    TARGET_FILENAME,
    TARGET_HELP,
    DevicePlan,
    ServingTarget,
    parse_gpu_ids,
    plan_target,
    resolve_target,
    target_record,
    usable_cores,
)
from tritonfleet.export.model_config import (
    FORMATS,
    GPU_BATCHING,
    check_formats,
    default_batching,
)
from tritonfleet.export.network import ExportReport
from tritonfleet.export.signature import ExportError
from tritonfleet.export.torch_command import COMMAND as TORCH_COMMAND

logger = logging.getLogger("tritonfleet.export")
PROGRAM = "python -m export"


def format_sizes(sizes: tuple[int, ...]) -> str:
    return ",".join(map(str, sizes))


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


class _LegacyTarget(argparse.Action):
    """The deprecated `--gpus auto|none|IDS` and `--cpu-cores N`, rewritten into `--target` where they appear (the
    later of `--target` and `--gpus` wins; `--cpu-cores` sets the cores of a CPU target, or of `auto` when it finds
    no GPU, and is ignored with a GPU target, as before)."""

    def __call__(self, parser, namespace, values, option_string=None):  # noqa: ANN001
        current = namespace.target
        try:
            if option_string == "--cpu-cores":
                cores = int(values)
                if cores < 1:
                    raise ValueError
                if current == "auto":  # as before: the cores of a CPU plan, if auto finds no GPU
                    namespace.auto_cpu_cores = cores
                elif current.startswith("cpu:"):
                    namespace.target = f"cpu:{cores}"
                warn_deprecated("--cpu-cores N", "--target cpu:N")  # with a GPU target it is ignored, as before
                return
        except ValueError:
            parser.error(f"--cpu-cores must be an integer >= 1, got {values!r}")
        choice = values.strip().lower()
        if choice in ("none", "cpu"):
            cores = getattr(namespace, "auto_cpu_cores", None) or usable_cores()
            namespace.target = current if current.startswith("cpu:") else f"cpu:{cores}"
        elif choice == "auto":
            namespace.target = "auto"
        else:
            namespace.target = f"gpu:{values}"
            try:
                parse_gpu_ids(values)
            except ValueError as error:  # reported by _devices in the old flag's wording, as an ExportError
                namespace.legacy_error = str(error)
        warn_deprecated(f"--gpus {values}", "--target gpu:IDS | cpu:CORES | auto")


def _add_serving_options(parser: argparse.ArgumentParser, parity_default: int | None, parity_help: str) -> None:
    """Options every export shares: output, devices, batching and queue, formats, parity."""
    parser.add_argument("--output", type=Path, required=True, metavar="DIR", help="model repository root")
    parser.add_argument("--target", default="auto", help=TARGET_HELP + " (default: %(default)s)")
    parser.add_argument("--gpus", action=_LegacyTarget, dest="target", help=argparse.SUPPRESS)
    parser.add_argument(
        "--instances-per-gpu",
        type=int,
        default=DEFAULT_INSTANCES_PER_GPU,
        metavar="N",
        help="network instances on each GPU (default: %(default)s: with one, Triton's batcher idles it between "
        "executions; export/devices.py)",
    )
    cpu = parser.add_argument_group("CPU plan (a cpu:CORES target; reports/cpu_plan.md)")
    cpu.add_argument("--cpu-cores", action=_LegacyTarget, dest="target", help=argparse.SUPPRESS)
    cpu.add_argument(
        "--cpu-instances",
        type=int,
        metavar="N",
        help=f"network instances (default: two single-threaded ones per core, at most {MAX_CPU_INSTANCES})",
    )
    cpu.add_argument(
        "--cpu-threads", type=int, metavar="N", help="intra-op threads per instance (default: cores / instances)"
    )
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=None,
        metavar="N",
        help="largest batch per request and execution (default: planned: 64, clipped on CPU plans so one execution "
        "fits half the interactive budget; the plan's padded-token budget is written as execution_token_budget)",
    )
    cpu.add_argument(
        "--interactive-instances",
        type=int,
        metavar="N",
        help="single-threaded network instances only interactive requests reach (esm2_interactive), beyond the "
        "cores (default: 1 on CPU, 0 on GPUs)",
    )
    parser.add_argument(
        "--preferred-batch-sizes",
        type=_int_list,
        metavar="N,N,...",
        help="sizes the dynamic batcher aims for; those above --max-batch-size are dropped "
        f"(default: none on CPU, {format_sizes(GPU_BATCHING.preferred_batch_sizes)} on GPUs)",
    )
    parser.add_argument(
        "--max-queue-delay-us",
        type=int,
        metavar="US",
        help=f"how long a request may wait for batch-mates (default: 0 on CPU, {GPU_BATCHING.max_queue_delay_us} "
        "on GPUs)",
    )
    parser.add_argument(
        "--max-queue-size",
        type=int,
        default=256,
        metavar="N",
        help="queued requests beyond this (with priorities: bulk requests) are rejected at once with "
        "503/UNAVAILABLE (default: %(default)s)",
    )
    _add_priority_options(parser)
    parser.add_argument("--formats", default=",".join(FORMATS), help="onnx and/or torchscript (default: %(default)s)")
    parser.add_argument(
        "--onnx-exporter", choices=("dynamo", "legacy"), default="dynamo", help="(default: %(default)s)"
    )
    parser.add_argument("--parity-samples", type=int, default=parity_default, metavar="N", help=parity_help)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def _add_priority_options(parser: argparse.ArgumentParser) -> None:
    defaults = PriorityPlan()
    group = parser.add_argument_group(
        "priorities (every batching model: interactive = level 1 is served before bulk = level 2; docs/design.md)"
    )
    group.add_argument(
        "--no-priorities", action="store_true", help="one first-come queue per model instead of two levels"
    )
    group.add_argument(
        "--interactive-budget-ms",
        type=float,
        default=defaults.interactive_budget_us / 1000,
        metavar="MS",
        help="an interactive request that waits longer than this in a model's queue is refused (503/UNAVAILABLE) "
        "instead of computed late; a shorter client deadline wins (default: %(default)g)",
    )
    group.add_argument(
        "--interactive-queue-size",
        type=int,
        default=defaults.interactive_queue_size,
        metavar="N",
        help="queued interactive requests beyond this are rejected at once (default: %(default)s)",
    )
    group.add_argument(
        "--bulk-queue-timeout-s",
        type=float,
        default=defaults.bulk_timeout_us / 1e6,
        metavar="S",
        help="ceiling on a bulk request's queue wait; client deadlines can only shorten a non-zero ceiling, so 0 "
        "(none) makes Triton ignore them for bulk requests (default: %(default)g)",
    )
    group.add_argument(
        "--default-priority",
        choices=PRIORITY_CLASSES,
        default=defaults.default_level,
        help="class of requests that name no priority (default: %(default)s)",
    )


def build_parser(prog: str = PROGRAM) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Export models to a Triton repository.", formatter_class=HelpFormatter
    )
    models = parser.add_subparsers(dest="model", required=True)
    commands = {"torch": TORCH_COMMAND}
    commands.update((p.name, p.hook("command")) for p in pipelines().values() if p.command_hook)
    for name, command in commands.items():
        subcommand = models.add_parser(
            name, formatter_class=HelpFormatter, help=command.summary, description=command.description
        )
        command.add_arguments(subcommand)
        _add_serving_options(subcommand, command.parity_default, command.parity_help)
    return parser


def _devices(args: argparse.Namespace) -> DevicePlan:
    """The plan of the serving target; `--target auto` says on stderr what it chose (this machine)."""
    try:
        if getattr(args, "legacy_error", None):
            raise ValueError(args.legacy_error)
        target, chosen_by_auto = resolve_target(args.target)
        if chosen_by_auto and target.kind == "cpu" and getattr(args, "auto_cpu_cores", None):
            target = ServingTarget("cpu", cores=args.auto_cpu_cores)
        plan = plan_target(
            target,
            args.instances_per_gpu,
            args.cpu_instances,
            args.cpu_threads,
            interactive_instances=getattr(args, "interactive_instances", None),
        )
    except ValueError as error:
        raise ExportError(str(error)) from None
    if chosen_by_auto:
        print(
            f"note: --target auto chose {target} (this machine, {usable_cores()} usable cores): pass --target "
            "cpu:CORES, gpu:IDS or gpu:all to export for the machine that will serve",
            file=sys.stderr,
        )
    args.resolved_target = (target, chosen_by_auto)
    return plan


def write_target(args: argparse.Namespace, plan: DevicePlan, precision: str) -> Path:
    """Writes `serving_target.json` at the repository root (what the configs were planned for)."""
    target, chosen_by_auto = args.resolved_target
    path = args.output / TARGET_FILENAME
    text = json.dumps(target_record(target, chosen_by_auto, plan, precision), indent=2) + "\n"
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


def _priorities(args: argparse.Namespace) -> PriorityPlan | None:
    if args.no_priorities:
        return None
    return PriorityPlan(
        interactive_queue_size=args.interactive_queue_size,
        interactive_budget_us=round(args.interactive_budget_ms * 1000),
        bulk_timeout_us=round(args.bulk_queue_timeout_s * 1e6),
        default_level=args.default_priority,
    )


def _batching(args: argparse.Namespace, plan: DevicePlan, tokenizer: bool = False) -> BatchingPlan:
    """The device's batching policy with the command line's overrides; tokenizers keep their own queue delay."""
    policy = default_batching(plan, tokenizer)
    try:
        overrides: dict[str, object] = {"priorities": _priorities(args)}
    except ValueError as error:
        raise ExportError(f"priority options: {error}") from None
    if args.preferred_batch_sizes is not None:
        overrides["preferred_batch_sizes"] = tuple(args.preferred_batch_sizes)
    if args.max_queue_delay_us is not None and not tokenizer:
        overrides["max_queue_delay_us"] = args.max_queue_delay_us
    try:
        max_batch_size = args.max_batch_size if args.max_batch_size is not None else policy.max_batch_size
        return dataclasses.replace(policy, **overrides).with_limits(max_batch_size, args.max_queue_size)
    except ValueError as error:
        raise ExportError(f"batching options: {error}") from None


def _formats(text: str) -> tuple[str, ...]:
    return check_formats(tuple(part.strip() for part in text.split(",") if part.strip()))


@dataclass(frozen=True)
class ServingArguments:
    """The shared serving options' readers a pipeline's export command runs with (`ExportCommand.run`)."""

    devices: Callable[[argparse.Namespace], DevicePlan] = _devices
    batching: Callable[..., BatchingPlan] = _batching
    formats: Callable[[str], tuple[str, ...]] = _formats
    write_target: Callable[[argparse.Namespace, DevicePlan, str], Path] = write_target


def run_pipeline(args: argparse.Namespace) -> ExportReport:
    """`tritonfleet export torch|<pipeline>`: the bare network's or the pipeline's export command."""
    command = TORCH_COMMAND if args.model == "torch" else get_pipeline(args.model).hook("command")
    return command.run(args, ServingArguments())


def main(argv: list[str] | None = None, prog: str = PROGRAM) -> int:
    args = build_parser(prog).parse_args(argv)
    # Our progress at INFO; third-party loggers (onnxscript's optimizer is chatty) only from WARNING.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    started = time.perf_counter()
    try:
        report = run_pipeline(args)
    except ExportError as error:
        message = " ".join(str(error).split())
        print(f"{prog} {args.model}: error: {message}", file=sys.stderr)
        return 2
    for variant, diff in report.parity.items():
        print(f"  parity {variant}: max abs diff {diff:.2e}")
    for variant, cosines in report.similarity.items():
        figures = ", ".join(f"{name} {value:.5f}" for name, value in cosines.items())
        print(f"  quality gate {variant}: min cosine vs eager fp32 {figures}")
    timings = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in report.seconds.items())
    print(f"  done in {time.perf_counter() - started:.1f} s" + (f" ({timings})" if timings else ""))
    return 0


if __name__ == "__main__":
    warn_python_m(__spec__.name if __spec__ else None, "export")
    sys.exit(main())

"""The command line of `tritonfleet tune` / `python -m tritonfleet.loadtest.tune`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from tritonfleet.contract.command_line import HelpFormatter
from tritonfleet.deploy.local.tritonserver_exec import WORKDIR_VARIABLE
from tritonfleet.loadtest.studies.header import command_line
from tritonfleet.loadtest.tune.analyzer import model_analyzer_executable
from tritonfleet.loadtest.tune.run import prepare, tune
from tritonfleet.loadtest.tune.settings import PRESETS, RunPaths, TuneError, TuneSettings
from tritonfleet.loadtest.tune.summary import write_outputs


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


def _int_lists(text: str) -> tuple[tuple[int, ...], ...]:
    return tuple(_ints(group) for group in text.split("/") if group.strip())


# Command-line option (argparse dest) -> TuneSettings / SearchSpace field; options not given keep the preset's value.
_SETTING_OPTIONS = {
    **{name: name for name in ("output", "p99_ms", "length_mix", "sequences", "candidates")},
    "rounds": "ab_rounds",
    "comparison_concurrency": "ab_concurrency",
}
_SPACE_OPTIONS = {
    name: name
    for name in ("instance_counts", "max_queue_delays_us", "preferred_batch_sizes", "thread_counts", "concurrency")
}


def _given(args: argparse.Namespace, options: dict[str, str]) -> dict[str, Any]:
    return {field: getattr(args, dest) for dest, field in options.items() if getattr(args, dest) is not None}


def settings_from_args(args: argparse.Namespace) -> TuneSettings:
    settings = replace(TuneSettings(model_repository=args.model_repository, model=args.model), **PRESETS[args.preset])
    overrides = _given(args, _SETTING_OPTIONS)
    if args.profile_timeout_min is not None:
        overrides["profile_timeout_s"] = args.profile_timeout_min * 60
    return replace(settings, space=replace(settings.space, **_given(args, _SPACE_OPTIONS)), **overrides)


PROGRAM = "python -m tritonfleet.loadtest.tune"
DESCRIPTION = "Tune one model's Triton config for this machine with NVIDIA Model Analyzer, against the local runtime."


def build_parser(prog: str = PROGRAM) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION, formatter_class=HelpFormatter)
    parser.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--model", default="esm2_onnx", help="the model to tune (default: esm2_onnx)")
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), default="full", help="full: `make tune`; smoke: default + 1 variant"
    )
    parser.add_argument("--output", type=Path, help="output folder (default: reports/tune, smoke: reports/tune-smoke)")
    parser.add_argument("--p99-ms", type=int, help="p99 latency budget in ms (default: 1500)")
    parser.add_argument(
        "--length-mix",
        help="protein length mix of the input data (default: short = the Swiss-Prot bins up to 300 aa; the full "
        "`swissprot` mix reaches 1022 aa, runs at 1-3 infer/s on 2 cores and gives too few requests per window "
        "for a bounded search; use it on bigger machines)",
    )
    parser.add_argument("--sequences", type=int, help="distinct sequences in the input data (default: 32)")
    space = parser.add_argument_group("search space (comma-separated values; an empty value keeps the shipped one)")
    space.add_argument("--instance-counts", type=_ints, help="default: 1,2")
    space.add_argument("--max-queue-delays-us", type=_ints, help="default: 0,2000")
    space.add_argument("--preferred-batch-sizes", type=_int_lists, help="sets split by '/'; default: 2,4/8,16,32,64")
    space.add_argument("--thread-counts", type=_ints, help="backend intra-op threads; default: 1,2")
    space.add_argument("--concurrency", type=_ints, help="default: 4,8")
    check = parser.add_argument_group("re-measurement against the default")
    check.add_argument("--candidates", type=int, help="Model Analyzer's best N re-measured (default: 3)")
    check.add_argument("--rounds", type=int, help="interleaved rounds (default: 3)")
    check.add_argument("--comparison-concurrency", type=int, help="default: the highest searched concurrency")
    parser.add_argument("--profile-timeout-min", type=float, help="interrupt the search after this (default: 14)")
    parser.add_argument(
        "--prepare-only",
        action="store_true",
        help="write the tools, input data and model-analyzer.yaml; print the command",
    )
    return parser


def main(argv: Sequence[str] | None = None, prog: str = PROGRAM) -> int:
    args = build_parser(prog).parse_args(argv)
    settings = settings_from_args(args)
    command = command_line(prog, argv)
    try:
        if args.prepare_only:
            paths = RunPaths(Path(settings.output).resolve())
            prepare(settings, paths)
            print(f"cd {paths.work} && {WORKDIR_VARIABLE}={paths.server_workdir} {model_analyzer_executable()} "
                  f"profile -f {paths.profile_config}")  # fmt: skip
            return 0
        result = tune(settings)
    except TuneError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    summary = write_outputs(result, command)
    print(f"\n{summary.read_text()}")
    if result.export_command or result.export_flags:
        print(f"export flags for the chosen config: {result.export_command or ' '.join(result.export_flags)}")
    if not result.ports_free_after:
        print(f"error: a server still holds one of Model Analyzer's ports {result.ports}", file=sys.stderr)
        return 1
    return 0

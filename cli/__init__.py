"""`tritonfleet <command> ...`: the one console script, a subcommand for every job.

Each command is the `main(argv)` of its stage's module, imported only when that command runs (so `tritonfleet embed`
needs only the client extra, and `tritonfleet fleet` appears once its module is installed). The same flag means the
same thing in every command: `--url` + `--protocol` for a server, `--output` for where results go,
`--model-repository` for a repository, `--target` for the machine an export is for; `tritonfleet COMMAND --help`
shows each command's flags with their defaults.

The `python -m export`, `python -m deploy.local`, `python -m client`, `python -m loadtest.*` forms still work from a
checkout for one release, with a deprecation warning.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

PROGRAM = "tritonfleet"


@dataclass(frozen=True)
class Command:
    """A subcommand: `module:function` is called with the remaining arguments (and `prog` when it takes one).

    Attributes:
        name: what follows `tritonfleet`.
        target: "package.module:function" (imported when the command runs).
        summary: one line for `tritonfleet --help`.
        group: heading in `tritonfleet --help`.
        forward_name: pass the command's own name first (commands that share one parser, e.g. the client's).
        extra: the pip extra the command needs, named when its imports fail.
    """

    name: str
    target: str
    summary: str
    group: str
    forward_name: bool = False
    extra: str = ""


COMMANDS: tuple[Command, ...] = (
    Command("export", "tritonfleet.export.__main__:main", "export a PyTorch model (esm2 | torch) to a Triton "
            "repository for a serving --target", "build", extra="export"),
    Command("serve", "tritonfleet.deploy.local.__main__:main", "serve a repository on a local tritonserver until "
            "Ctrl-C (self-healing on)", "serve", extra="deploy"),
    Command("fleet", "tritonfleet.deploy.fleet.__main__:main", "several local replicas behind an HAProxy balancer",
            "serve", extra="deploy"),
    Command("demo", "tritonfleet.deploy.demo:main", "the main job: export ESM-2, serve it, embed a real protein",
            "serve", extra="export,deploy"),
    Command("embed", "tritonfleet.client.cli:main", "embed sequences given on the command line", "use",
            forward_name=True, extra="client"),
    Command("embed-fasta", "tritonfleet.client.cli:main", "embed a whole FASTA file (resumable)", "use",
            forward_name=True, extra="client"),
    Command("health", "tritonfleet.client.cli:main", "server liveness/readiness and a model's spec", "use",
            forward_name=True, extra="client"),
    Command("loadtest", "tritonfleet.loadtest.run:main", "headless Locust run (HTTP + gRPC) with an SLO verdict",
            "measure", extra="loadtest"),
    Command("perf", "tritonfleet.loadtest.perf_sweep:main", "perf_analyzer concurrency / request-rate sweeps",
            "measure", extra="loadtest"),
    Command("bench", "tritonfleet.loadtest.bench.__main__:main", "one-run benchmark: raw engine vs Triton vs FastAPI",
            "measure", extra="loadtest"),
    Command("tune", "tritonfleet.loadtest.tune:main", "Model Analyzer search for the best config on this machine",
            "measure", extra="loadtest,tune"),
    Command("engines", "tritonfleet.loadtest.engines:main", "engine study: every ESM-2 engine variant vs eager",
            "measure", extra="loadtest"),
    Command("flagship", "tritonfleet.loadtest.flagship:main", "150M/650M: export cost, served esm2 vs eager fp32 "
            "vs FastAPI", "measure", extra="loadtest"),
    Command("cpu-plan", "tritonfleet.loadtest.cpu_plan:main", "CPU plan study: instances x threads x batching",
            "measure", extra="loadtest"),
    Command("gpu-check", "tritonfleet.loadtest.gpu_check:main", "the GPU path in one go: export, parity, bench",
            "measure", extra="loadtest"),
    Command("priorities", "tritonfleet.loadtest.priorities:main", "interactive latency under bulk load (shipped "
            "defaults)", "measure", extra="loadtest"),
    Command("bulk-study", "tritonfleet.loadtest.bulk_study:main", "response cache vs client dedup on a FASTA with "
            "repeats", "measure", extra="loadtest"),
    Command("chaos", "tritonfleet.loadtest.chaos:main", "kill a model instance under load, report the recovery",
            "measure", extra="loadtest"),
    Command("fleet-chaos", "tritonfleet.loadtest.fleet_chaos:main", "faults in a local fleet under load",
            "measure", extra="loadtest"),
    Command("perf-analyzer", "tritonfleet.loadtest.perf_analyzer:main", "run or locate the installed perf_analyzer",
            "measure", extra="loadtest"),
)  # fmt: skip
GROUPS = {"build": "build", "serve": "serve", "use": "use a server", "measure": "measure (reports)"}


def find(name: str) -> Command | None:
    return next((command for command in COMMANDS if command.name == name), None)


def available(command: Command) -> bool:
    """Whether the command's module is part of this install (its package may still lack an extra: `main` names it)."""
    module = command.target.split(":")[0]
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError as error:  # a parent package's import failed: absent, or a missing dependency
        return not (error.name or "").startswith("tritonfleet")
    except ImportError:
        return True


def usage() -> str:
    lines = [f"usage: {PROGRAM} COMMAND [--help] ...", "", "One command for every job of tritonfleet.", ""]
    for group, title in GROUPS.items():
        lines.append(f"{title}:")
        lines.extend(f"  {c.name:<14} {c.summary}" for c in COMMANDS if c.group == group and available(c))
        lines.append("")
    lines.append(f"`{PROGRAM} COMMAND --help` shows a command's flags and their defaults.")
    return "\n".join(lines)


def load(command: Command) -> Callable[..., int | None]:
    module_name, function = command.target.split(":")
    return getattr(importlib.import_module(module_name), function)


def call(entry: Callable[..., int | None], argv: list[str], prog: str) -> int:
    """Calls a command's main with `argv` (and `prog`, where its signature takes one)."""
    parameters = inspect.signature(entry).parameters
    if "prog" in parameters:
        result = entry(argv, prog=prog)
    elif parameters:
        result = entry(argv)
    else:  # a main that reads sys.argv itself
        saved = sys.argv
        sys.argv = [prog, *argv]
        try:
            result = entry()
        finally:
            sys.argv = saved
    return int(result or 0)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if not arguments or arguments[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if arguments else 2
    if arguments[0] == "--version":
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"{PROGRAM} {version('tritonfleet')}")
        except PackageNotFoundError:
            print(f"{PROGRAM} (not installed)")
        return 0
    name, rest = arguments[0], arguments[1:]
    command = find(name)
    if command is None:
        known = ", ".join(c.name for c in COMMANDS if available(c))
        print(f"{PROGRAM}: error: unknown command {name!r} (commands: {known})", file=sys.stderr)
        return 2
    if not available(command):
        print(f"{PROGRAM} {name}: error: not part of this install ({command.target.split(':')[0]} is missing)",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        entry = load(command)
    except AttributeError:
        print(f"{PROGRAM} {name}: error: {command.target} does not exist in this install", file=sys.stderr)
        return 2
    except ImportError as error:
        extra = f"; install the extra: pip install 'tritonfleet[{command.extra}]'" if command.extra else ""
        print(f"{PROGRAM} {name}: error: {error}{extra}", file=sys.stderr)
        return 2
    from tritonfleet.contract.command_line import MissingToolError

    try:
        if command.forward_name:
            return call(entry, [name, *rest], PROGRAM)
        return call(entry, rest, f"{PROGRAM} {name}")
    except MissingToolError as error:
        print(f"{PROGRAM} {name}: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2

"""A drop-in `tritonserver` for tools that start the binary themselves (NVIDIA Model Analyzer's `triton_server_path`).

    python -m tritonfleet.deploy.local.tritonserver_exec --model-repository DIR --http-port 18000 [tritonserver flags]

It takes tritonserver's own flags (`--name value` or `--name=value`) and execs the same binary, backend directory and
environment as `python -m deploy.local` (`tritonserver_command` and `tritonserver_environment`, shared with
`LocalTritonServer`), so the PID the tool holds is tritonserver itself: the tool's SIGTERM/SIGKILL and its memory
readings reach the server directly. Such tools need the path of an executable file: `write_shim(path)` writes a
two-line shell script that runs this module with this interpreter.

Differences from `python -m deploy.local`: no supervisor, no readiness wait; explicit model control loads only the
`--load-model`s given (Model Analyzer loads its variants itself); `--exit-timeout-secs` defaults to 3 s, inside the
5 s Model Analyzer waits after SIGTERM before SIGKILL. The backend directory and the stub's sitecustomize are
assembled under `$TRITONFLEET_SERVER_WORKDIR` (default: a per-user folder in the temp dir); give concurrent users
separate folders.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tritonfleet.deploy.local.runtime import TritonRuntime
from tritonfleet.deploy.local.server import (
    LOOPBACK,
    ServerOptions,
    terminate_with_parent,
    tritonserver_command,
    tritonserver_environment,
)

WORKDIR_VARIABLE = "TRITONFLEET_SERVER_WORKDIR"
DRY_RUN_VARIABLE = "TRITONFLEET_SERVER_EXEC_DRY_RUN"  # print the command and environment as JSON, do not exec
DEFAULT_EXIT_TIMEOUT_S = 3


@dataclass(frozen=True)
class ExecPlan:
    """What to exec: tritonserver's argv, its environment, and the folder holding its backend directory."""

    command: list[str]
    environment: dict[str, str]
    workdir: Path


def default_workdir() -> Path:
    return Path(tempfile.gettempdir()) / f"tritonfleet-tritonserver-exec-{os.getuid()}"


def server_options(argv: Sequence[str]) -> tuple[ServerOptions, Path | None]:
    """`ServerOptions` from tritonserver flags: the ones the launcher owns are parsed, every other flag is passed on
    unchanged (after ours, so a repeated address flag given here wins). Also returns `--backend-directory` if given."""
    parser = argparse.ArgumentParser(prog="tritonserver_exec", add_help=False, allow_abbrev=False)
    parser.add_argument("--model-repository", type=Path, required=True)
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--model-control-mode", default="none")
    parser.add_argument("--load-model", action="append", default=[])
    parser.add_argument("--exit-timeout-secs", type=int, default=DEFAULT_EXIT_TIMEOUT_S)
    parser.add_argument("--log-verbose", type=int, default=0)
    parser.add_argument("--backend-directory", type=Path, default=None)
    args, passthrough = parser.parse_known_args(list(argv))
    options = ServerOptions(
        model_repository=args.model_repository,
        host=LOOPBACK,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        model_control_mode=args.model_control_mode,
        load_models=tuple(args.load_model),
        exit_timeout_s=args.exit_timeout_secs,
        log_verbose=args.log_verbose,
        extra_args=tuple(passthrough),
    )
    return options, args.backend_directory


def exec_plan(argv: Sequence[str], runtime: TritonRuntime, workdir: Path) -> ExecPlan:
    """Assemble the backend directory and the stub's site folder under `workdir`; return what to exec."""
    options, backend_directory = server_options(argv)
    backend_directory = runtime.assemble_backend_directory(backend_directory or workdir / "backends")
    return ExecPlan(
        command=tritonserver_command(options, runtime, backend_directory),
        environment=tritonserver_environment(runtime),
        workdir=workdir,
    )


def write_shim(path: Path, python: str = sys.executable) -> Path:
    """An executable shell script at `path` that runs this launcher with `python` (default: this interpreter)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "#!/bin/sh\n"
        "# Written by tritonfleet.deploy.local.tritonserver_exec.write_shim: tritonserver as python -m deploy.local"
        " runs it.\n"
        f'exec {shlex.quote(python)} -m tritonfleet.deploy.local.tritonserver_exec "$@"\n',
        encoding="utf-8",
    )
    path.chmod(0o755)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    workdir = Path(os.environ.get(WORKDIR_VARIABLE) or default_workdir())
    plan = exec_plan(sys.argv[1:] if argv is None else argv, TritonRuntime.discover(), workdir)
    if os.environ.get(DRY_RUN_VARIABLE):
        print(json.dumps({"command": plan.command, "environment": plan.environment}, indent=2))
        return 0
    terminate_with_parent()  # the server dies with the tool that started it, even on SIGKILL; survives execve
    sys.stdout.flush()
    os.execve(plan.command[0], plan.command, plan.environment)
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())

"""`tritonfleet serve --model-repository DIR [...] [extra tritonserver flags]`: serve until Ctrl-C/SIGTERM.

`python -m deploy.local ...` (from a checkout) is the same command, deprecated.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from tritonfleet.contract.command_line import HelpFormatter, warn_python_m
from tritonfleet.contract.serving_target import describe_for_this_machine, read_serving_target
from tritonfleet.deploy.local.server import (
    DEFAULT_RESPONSE_CACHE_BYTES,
    LOOPBACK,
    LocalTritonServer,
    ServerOptions,
    TritonStartError,
)
from tritonfleet.deploy.local.supervisor import InferenceProbe, SupervisorHealthServer, SupervisorOptions
from tritonfleet.deploy.server_flags import DEFAULT_EXIT_TIMEOUT_S

PROGRAM = "tritonfleet serve"


def parse_args(argv: list[str] | None = None, prog: str = PROGRAM) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog=prog,
        formatter_class=HelpFormatter,
        description="Serve a Triton model repository with the tritonserver from the nvidia-pytriton wheel. "
        "Unknown arguments are passed to tritonserver unchanged.",
    )
    parser.add_argument("--model-repository", type=Path, required=True)
    parser.add_argument("--host", default=LOOPBACK, help="address to bind (default: loopback only)")
    parser.add_argument("--http-port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--grpc-port", type=int, default=8001, help="0 picks a free port")
    parser.add_argument("--metrics-port", type=int, default=8002, help="0 picks a free port")
    parser.add_argument(
        "--model-control-mode",
        choices=("none", "explicit"),
        default=None,
        help="explicit (loads every model at start and enables the repository API) by default, as self-healing "
        "needs it; none with --no-self-heal",
    )
    parser.add_argument(
        "--exit-timeout-secs", type=int, default=DEFAULT_EXIT_TIMEOUT_S, help="grace period for in-flight requests"
    )
    parser.add_argument("--startup-timeout-secs", type=float, default=300.0)
    parser.add_argument("--log-verbose", type=int, default=0)
    parser.add_argument(
        "--response-cache-mb",
        type=float,
        default=DEFAULT_RESPONSE_CACHE_BYTES / 2**20,
        metavar="MB",
        help="Triton's local response cache (--cache-config local,size=...), used by the models whose config "
        "enables it (esm2_embedding, esm2_interactive); this server's own memory: every fleet replica has its own; "
        "0 turns it off (default: %(default)g)",
    )
    heal = parser.add_argument_group("self-healing (docs/reliability.md)")
    heal.add_argument(
        "--self-heal",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="reload a model whose python-backend stub died or hangs (default: on; --no-self-heal to opt out)",
    )
    heal.add_argument(
        "--self-heal-probe",
        action="append",
        default=[],
        metavar="MODEL",
        help="also run a real inference on MODEL (ESM-2 SEQUENCE input) every second to catch hung stubs",
    )
    heal.add_argument(
        "--self-heal-port",
        type=int,
        default=None,
        help="serve the supervisor's truthful /ready and /live on this port (0 picks a free one)",
    )
    args, extra = parser.parse_known_args(argv)
    if args.model_control_mode is None:
        args.model_control_mode = "explicit" if args.self_heal else "none"
    elif args.self_heal and args.model_control_mode != "explicit":
        parser.error(
            "self-healing reloads models through the repository API: keep explicit model control, or pass "
            "--no-self-heal"
        )
    if args.response_cache_mb < 0:
        parser.error(f"--response-cache-mb must be >= 0, got {args.response_cache_mb:g}")
    if not args.self_heal and (args.self_heal_probe or args.self_heal_port is not None):
        parser.error("--self-heal-probe and --self-heal-port need self-healing (drop --no-self-heal)")
    return args, extra


def main(argv: list[str] | None = None, prog: str = PROGRAM) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args, extra = parse_args(argv, prog)
    probes = tuple(InferenceProbe.for_sequence_model(model) for model in args.self_heal_probe)
    server = LocalTritonServer(
        ServerOptions(
            model_repository=args.model_repository,
            host=args.host,
            http_port=args.http_port,
            grpc_port=args.grpc_port,
            metrics_port=args.metrics_port,
            model_control_mode=args.model_control_mode,
            exit_timeout_s=args.exit_timeout_secs,
            startup_timeout_s=args.startup_timeout_secs,
            log_verbose=args.log_verbose,
            extra_args=tuple(extra),
            response_cache_bytes=round(args.response_cache_mb * 2**20),
            self_heal=args.self_heal,
            keep_log=True,
            supervisor=SupervisorOptions(probes=probes),
        )
    )
    stop_requested = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        print(f"received {signal.Signals(signum).name}: stopping, in-flight requests may finish", flush=True)
        stop_requested.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        server.start()
    except TritonStartError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(
        f"tritonserver ready — HTTP {server.http_url}  gRPC {server.grpc_url}  metrics {server.metrics_url}\n"
        f"log: {server.log_path}",
        flush=True,
    )
    target = read_serving_target(args.model_repository)
    if target is not None:
        print(describe_for_this_machine(target), flush=True)
    health = None
    if server.supervisor is not None:
        if args.self_heal_port is not None:
            health = SupervisorHealthServer(server.supervisor, args.host, args.self_heal_port).start()
        print("self-healing on" + (f" — truthful readiness {health.url}/ready" if health else ""), flush=True)
    try:
        while not stop_requested.wait(timeout=1.0):
            if not server.is_running():
                print("error: tritonserver exited unexpectedly:\n" + "\n".join(server.error_lines()), file=sys.stderr)
                return 1
    finally:
        if health is not None:
            health.stop()
    code = server.stop()
    return 0 if code in (0, None) else code


if __name__ == "__main__":
    warn_python_m(__spec__.name if __spec__ else None, "serve")
    sys.exit(main())

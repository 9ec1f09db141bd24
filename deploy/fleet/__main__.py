"""`tritonfleet fleet --model-repository DIR --replicas N|auto [...] [extra `tritonfleet serve` flags]`: a fleet in the
foreground until Ctrl-C/SIGTERM; `tritonfleet fleet ctl {status,drain,undrain,update,rollback,canary,scale}`
operates a running one through its loopback control API. `python -m deploy.fleet` (a checkout) is the same, deprecated.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path

from tritonfleet.contract.command_line import HelpFormatter, warn_python_m
from tritonfleet.deploy.fleet.control import ControlClient
from tritonfleet.deploy.fleet.fleet import CanaryPolicy, Fleet, FleetError, FleetOptions
from tritonfleet.deploy.fleet.processes import FleetStartError

DEFAULT_CONTROL = "127.0.0.1:8003"
PROGRAM = "tritonfleet fleet"


def _replicas(text: str) -> int | str:
    if text == "auto":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"--replicas takes a positive integer or auto, got {text!r}")
    return int(text)


def _policy_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = CanaryPolicy()
    group = parser.add_argument_group("canary decision (issue 17 rule)")
    group.add_argument("--canary-min-requests", type=int, default=defaults.min_requests, metavar="N")
    group.add_argument("--canary-window-s", type=float, default=defaults.max_window_s, metavar="S")
    group.add_argument(
        "--canary-max-error-ratio",
        type=float,
        default=defaults.max_error_ratio,
        metavar="R",
        help="roll back when the canary's error ratio > max(R, factor x the rest's) (default: %(default)s)",
    )
    group.add_argument("--canary-error-factor", type=float, default=defaults.error_ratio_factor, metavar="F")
    group.add_argument(
        "--canary-p99-factor",
        type=float,
        default=defaults.p99_factor,
        metavar="F",
        help="roll back when the canary's p99 > F x the rest's and more than the slack above it (default: %(default)s)",
    )
    group.add_argument(
        "--canary-p99-slack-ms",
        type=float,
        default=defaults.p99_slack_ms,
        metavar="MS",
        help="p99 excess over the rest's that is never a reason to roll back (default: %(default)s)",
    )


def _policy(args: argparse.Namespace) -> CanaryPolicy:
    return CanaryPolicy(
        min_requests=args.canary_min_requests,
        max_window_s=args.canary_window_s,
        max_error_ratio=args.canary_max_error_ratio,
        error_ratio_factor=args.canary_error_factor,
        p99_factor=args.canary_p99_factor,
        p99_slack_ms=args.canary_p99_slack_ms,
    )


def parse_serve_args(argv: list[str], prog: str = PROGRAM) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog=prog,
        formatter_class=HelpFormatter,
        allow_abbrev=False,  # a replica flag must never be taken for an abbreviation of a fleet flag
        description="N local tritonservers (each the `tritonfleet serve` launcher, self-healing) behind HAProxy. "
        "Unknown arguments go to every replica's launcher (and from there to tritonserver). Operate it with "
        f"`{prog} ctl ...`.",
    )
    parser.add_argument("--model-repository", type=Path, required=True)
    parser.add_argument("--replicas", type=_replicas, default="auto", help="N or auto (one per GPU; CPU: cores/2)")
    parser.add_argument("--host", default="127.0.0.1", help="address the fronts bind (default: loopback)")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002, help="HAProxy's Prometheus exporter (/metrics)")
    parser.add_argument("--control-port", type=int, default=8003, help="loopback control API for `ctl`")
    parser.add_argument("--max-replicas", type=int, default=None, help="balancer slots for scale-out")
    parser.add_argument("--oversubscribe", action="store_true", help="allow more replicas than CPU cores")
    parser.add_argument(
        "--max-request-bytes", type=int, default=1 << 20, help="largest request (HAProxy buffers it to replay it)"
    )
    parser.add_argument("--startup-timeout-secs", type=float, default=300.0)
    parser.add_argument("--workdir", type=Path, default=None, help="logs and haproxy.cfg (default: a temp dir)")
    parser.add_argument(
        "--canary-weight",
        type=float,
        default=None,
        metavar="W",
        help="with --canary-model/--canary-version: start a canary with W%% of the traffic once the fleet is up",
    )
    parser.add_argument("--canary-model", default=None)
    parser.add_argument("--canary-version", default=None)
    _policy_arguments(parser)
    args, extra = parser.parse_known_args(argv)
    if (args.canary_weight is None) != (args.canary_version is None) or (
        args.canary_weight is not None and args.canary_model is None
    ):
        parser.error("--canary-weight needs --canary-model and --canary-version (and the other way round)")
    return args, extra


def serve(argv: list[str], prog: str = PROGRAM) -> int:
    args, extra = parse_serve_args(argv, prog)
    options = FleetOptions(
        model_repository=args.model_repository,
        replicas=args.replicas,
        host=args.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        control_port=args.control_port,
        max_replicas=args.max_replicas,
        oversubscribe=args.oversubscribe,
        launcher_args=tuple(extra),
        startup_timeout_s=args.startup_timeout_secs,
        max_request_bytes=args.max_request_bytes,
        canary=_policy(args),
        workdir=args.workdir,
    )
    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        print(f"received {signal.Signals(signum).name}: draining the fleet", flush=True)
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        fleet = Fleet(options)
        fleet.start()
    except (FleetError, FleetStartError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    try:
        print(
            f"fleet ready — {len(fleet.replicas)} replica(s)  HTTP {fleet.http_url}  gRPC {fleet.grpc_url}  "
            f"metrics {fleet.metrics_url}  control http://127.0.0.1:{args.control_port}\nlogs: {fleet.workdir}",
            flush=True,
        )
        if args.canary_weight is not None:
            threading.Thread(
                target=lambda: print(
                    json.dumps(fleet.canary(args.canary_model, args.canary_version, args.canary_weight).__dict__),
                    flush=True,
                ),
                daemon=True,
            ).start()
        while not stop.wait(1.0):
            if not fleet.balancer or not fleet.balancer.is_running():
                print(
                    "error: haproxy exited:\n" + (fleet.balancer.log_tail() if fleet.balancer else ""), file=sys.stderr
                )
                return 1
    finally:
        fleet.stop()
    return 0


def ctl(argv: list[str], prog: str = f"{PROGRAM} ctl") -> int:
    parser = argparse.ArgumentParser(prog=prog, formatter_class=HelpFormatter, description="Operate a running fleet.")
    parser.add_argument("--control", default=DEFAULT_CONTROL, help="the fleet's control API (default: %(default)s)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("status")
    for name in ("drain", "undrain"):
        commands.add_parser(name).add_argument("replica")
    update = commands.add_parser("update", help="rolling update to VERSION (a new version directory)")
    update.add_argument("model")
    update.add_argument("version")
    commands.add_parser("rollback").add_argument("model")
    canary = commands.add_parser("canary", help="VERSION on one replica with W%% of traffic; promote or roll back")
    canary.add_argument("model")
    canary.add_argument("version")
    canary.add_argument("--canary-weight", "--weight", dest="weight", type=float, required=True, metavar="W")
    _policy_arguments(canary)
    commands.add_parser("scale").add_argument("replicas", type=int)
    args = parser.parse_args(argv)
    client = ControlClient(args.control)
    if args.command == "status":
        answer = client.call("/status")
    elif args.command in ("drain", "undrain"):
        answer = client.call(f"/{args.command}", {"replica": args.replica})
    elif args.command == "update":
        answer = client.call("/update", {"model": args.model, "version": args.version})
    elif args.command == "rollback":
        answer = client.call("/rollback", {"model": args.model})
    elif args.command == "canary":
        policy = _policy(args)
        answer = client.call(
            "/canary", {"model": args.model, "version": args.version, "weight": args.weight, **policy.__dict__}
        )
    else:
        answer = client.call("/scale", {"replicas": args.replicas})
    if not answer.get("ok"):
        print(f"error: {answer.get('error')}", file=sys.stderr)
        return 1
    print(json.dumps(answer, indent=2, default=str))
    return 0


def main(argv: list[str] | None = None, prog: str = PROGRAM) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["ctl"]:
        return ctl(argv[1:], f"{prog} ctl")
    return serve(argv, prog)


if __name__ == "__main__":
    warn_python_m(__spec__.name if __spec__ else None, "fleet")
    sys.exit(main())

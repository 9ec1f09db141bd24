"""Headless Locust run against Triton with CSV + HTML reports and an SLO verdict as the exit code.

    python -m loadtest.run --start-local-server --model-repository model_repository -u 8 -t 60s
    python -m loadtest.run --host http://127.0.0.1:8000 --grpc-url 127.0.0.1:8001 --load-shape spike

Reports (under --report-dir, default reports/): `<name>_stats.csv`, `<name>_stats_history.csv`,
`<name>_failures.csv`, `<name>_exceptions.csv`, `<name>.html`, `<name>_summary.json` (exact latencies, counts and
the SLO verdict). Exit code: 0 SLO met, 1 SLO broken, 2 the run itself failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from tritonfleet.deploy.local import local_server
from tritonfleet.loadtest.shapes import SHAPES
from tritonfleet.loadtest.slo import SloPolicy, SloReport, evaluate_slo

PROJECT_ROOT = Path(__file__).resolve().parents[1]
LOCUSTFILE = Path(__file__).with_name("locustfile.py")
USER_CLASSES = {"http": "TritonHttpEmbedUser", "grpc": "TritonGrpcEmbedUser"}
EXIT_SLO_MET, EXIT_SLO_BROKEN, EXIT_RUN_FAILED = 0, 1, 2
SKIP_MONKEY_PATCH = "LOCUST_SKIP_MONKEY_PATCH"


@dataclass(frozen=True)
class LoadRunConfig:
    http_url: str
    grpc_url: str
    protocols: tuple[str, ...] = ("http", "grpc")
    model: str = "esm2"
    users: int = 4
    spawn_rate: float = 4.0
    run_time_s: float = 30.0
    load_shape: str = "none"
    length_mix: str = "swissprot"
    outputs: str = "embedding"
    report_dir: Path = PROJECT_ROOT / "reports"
    name: str = "locust"


def parse_run_time(text: str) -> int:
    """Seconds of a Locust `-t` value ("90", "90s", "2m", "1h30m") by Locust's own parser.

    `import locust` monkey-patches the whole process for gevent; this process only starts servers and the Locust
    subprocess (and may be a test runner calling `main`), so the parser is imported with the patching switched off.
    """
    previous = os.environ.get(SKIP_MONKEY_PATCH)
    os.environ[SKIP_MONKEY_PATCH] = "1"
    try:
        from locust.util.timespan import parse_timespan
    finally:
        if previous is None:
            del os.environ[SKIP_MONKEY_PATCH]
        else:
            os.environ[SKIP_MONKEY_PATCH] = previous
    return parse_timespan(text)


def locust_command(config: LoadRunConfig) -> list[str]:
    prefix = config.report_dir / config.name
    seconds = max(1, round(config.run_time_s))
    return [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--skip-log-setup",
        "-H", _with_scheme(config.http_url), "--triton-grpc-url", _without_scheme(config.grpc_url),
        "-u", str(config.users), "-r", str(config.spawn_rate), "-t", f"{seconds}s", "--stop-timeout", "10",
        "--load-shape", config.load_shape, "--shape-duration", str(config.run_time_s),
        "--triton-model", config.model, "--triton-outputs", config.outputs, "--length-mix", config.length_mix,
        "--csv", str(prefix), "--csv-full-history", "--html", f"{prefix}.html",
        "--summary-json", f"{prefix}_summary.json", "--exit-code-on-error", "0", "--only-summary",
        *[USER_CLASSES[protocol] for protocol in config.protocols],
    ]  # fmt: skip


def _with_scheme(url: str) -> str:
    return url if "://" in url else f"http://{url}"


def _without_scheme(url: str) -> str:
    return url.split("://", 1)[-1]


def run_locust(config: LoadRunConfig, policy: SloPolicy) -> tuple[int, SloReport | None]:
    """Run Locust headless in a subprocess (gevent patching stays out of this process); judge the summary."""
    config.report_dir.mkdir(parents=True, exist_ok=True)
    summary_path = config.report_dir / f"{config.name}_summary.json"
    summary_path.unlink(missing_ok=True)
    command = locust_command(config)
    print("+", " ".join(command), flush=True)
    try:
        completed = subprocess.run(command, cwd=PROJECT_ROOT, timeout=config.run_time_s + 180, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        print("error: locust did not finish in time", file=sys.stderr)
        return EXIT_RUN_FAILED, None
    if not summary_path.is_file():
        print(f"error: locust exited {completed.returncode} without writing {summary_path}", file=sys.stderr)
        return EXIT_RUN_FAILED, None
    summary = json.loads(summary_path.read_text())
    report = evaluate_slo(summary, policy)
    summary["slo"] = {
        "policy": asdict(policy),
        "passed": report.passed,
        "violations": report.violations,
    }
    summary_path.write_text(json.dumps(summary, indent=2, default=float))
    print(format_verdict(summary, report, policy))
    if completed.returncode not in (0, 1):
        print(f"error: locust exited with {completed.returncode}", file=sys.stderr)
        return EXIT_RUN_FAILED, report
    return (EXIT_SLO_MET if report.passed else EXIT_SLO_BROKEN), report


def format_verdict(summary: dict, report: SloReport, policy: SloPolicy) -> str:
    lines = [
        f"requests {report.requests}  ok {report.successes}  errors {report.errors}  rejected {report.rejections}  "
        f"sequences/s {summary.get('sequences_per_s', 0):.1f}",
    ]
    for protocol, row in sorted(summary.get("by_protocol", {}).items()):
        latency = row["latency_ms"]
        lines.append(
            f"  {protocol:5s} ok {row.get('successes', 0):6d}  p50 {latency['p50']:.1f} ms  p90 {latency['p90']:.1f} ms"
            f"  p99 {latency['p99']:.1f} ms  errors {row.get('errors', 0)}  rejected {row.get('rejections', 0)}"
        )
    verdict = "SLO met" if report.passed else "SLO BROKEN: " + "; ".join(report.violations)
    lines.append(
        f"{verdict} (p99 <= {policy.p99_latency_ms:g} ms, failures <= {policy.max_failure_ratio:g}, "
        f"rejections <= {policy.max_rejection_ratio:g})"
    )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m loadtest.run", description=__doc__.splitlines()[0])
    target = parser.add_argument_group("target")
    target.add_argument("--host", default="http://127.0.0.1:8000", help="Triton HTTP address")
    target.add_argument("--grpc-url", default="127.0.0.1:8001", help="Triton gRPC address")
    target.add_argument("--start-local-server", action="store_true", help="serve --model-repository for the run")
    target.add_argument("--model-repository", type=Path, default=PROJECT_ROOT / "model_repository")
    load = parser.add_argument_group("load")
    load.add_argument("--protocol", choices=["http", "grpc", "both"], default="both")
    load.add_argument("--model", default="esm2")
    load.add_argument("-u", "--users", type=int, default=4)
    load.add_argument("-r", "--spawn-rate", type=float, default=4.0)
    load.add_argument("-t", "--run-time", default="30s", help="e.g. 20s, 5m, 1h")
    load.add_argument("--load-shape", choices=SHAPES, default="none")
    load.add_argument("--length-mix", default="swissprot", help="swissprot | short | fixed-N")
    load.add_argument("--outputs", choices=["embedding", "all"], default="embedding")
    slo = parser.add_argument_group("SLO (exit code 1 when broken)")
    slo.add_argument("--slo-p99-ms", type=float, default=SloPolicy.p99_latency_ms)
    slo.add_argument("--slo-max-failure-ratio", type=float, default=SloPolicy.max_failure_ratio)
    slo.add_argument("--slo-max-rejection-ratio", type=float, default=SloPolicy.max_rejection_ratio)
    parser.add_argument("--report-dir", type=Path, default=PROJECT_ROOT / "reports")
    parser.add_argument("--name", default="locust", help="report file prefix")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    policy = SloPolicy(args.slo_p99_ms, args.slo_max_failure_ratio, args.slo_max_rejection_ratio)
    protocols = ("http", "grpc") if args.protocol == "both" else (args.protocol,)

    def config_for(http_url: str, grpc_url: str) -> LoadRunConfig:
        return LoadRunConfig(
            http_url=http_url, grpc_url=grpc_url, protocols=protocols, model=args.model, users=args.users,
            spawn_rate=args.spawn_rate, run_time_s=parse_run_time(args.run_time), load_shape=args.load_shape,
            length_mix=args.length_mix, outputs=args.outputs, report_dir=args.report_dir, name=args.name,
        )  # fmt: skip

    if args.start_local_server:
        with local_server(args.model_repository) as server:
            return run_locust(config_for(server.http_url, server.grpc_url), policy)[0]
    return run_locust(config_for(args.host, args.grpc_url), policy)[0]


if __name__ == "__main__":
    sys.exit(main())

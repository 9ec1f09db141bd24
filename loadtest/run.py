"""Headless Locust run against Triton with CSV + HTML reports and an SLO verdict as the exit code.

    tritonfleet loadtest --start-local-server --model-repository model_repository -u 8 -t 60s
    tritonfleet loadtest --host http://127.0.0.1:8000 --grpc-url 127.0.0.1:8001 --load-shape spike
    tritonfleet loadtest --start-local-server --scenario mixed --interactive-users 4 --bulk-users 8 -t 120s

`--scenario mixed` runs bulk users (64-sequence requests of long proteins, priority bulk) beside interactive users
(one short protein, priority interactive) and judges the SLO on the interactive class only.

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

from tritonfleet.contract.command_line import (
    HelpFormatter,
    add_deprecated,
    add_server_url,
    server_urls,
    url_values,
    warn_python_m,
)
from tritonfleet.loadtest.shapes import SHAPES
from tritonfleet.loadtest.slo import SloPolicy, SloReport, evaluate_slo
from tritonfleet.loadtest.studies.serving import serve

PROJECT_ROOT = Path(__file__).resolve().parents[1]
LOCUSTFILE = Path(__file__).with_name("locustfile.py")
USER_CLASSES = {"http": "TritonHttpEmbedUser", "grpc": "TritonGrpcEmbedUser"}
MIXED_USER_CLASSES = ("TritonInteractiveUser", "TritonBulkUser")
SCENARIOS = ("embed", "mixed")
EXIT_SLO_MET, EXIT_SLO_BROKEN, EXIT_RUN_FAILED = 0, 1, 2
SKIP_MONKEY_PATCH = "LOCUST_SKIP_MONKEY_PATCH"


@dataclass(frozen=True)
class MixedScenario:
    """Interactive users (one short protein per request, priority interactive) beside bulk users (`bulk_batch`
    long proteins per request, priority bulk, back to back), on one protocol."""

    interactive_users: int = 2
    bulk_users: int = 4
    bulk_batch: int = 64
    interactive_think_s: float = 0.5
    interactive_deadline_s: float | None = None
    interactive_start_delay_s: float = 0.0
    protocol: str = "grpc"
    interactive_length_mix: str = "interactive"
    bulk_length_mix: str = "long"

    def __post_init__(self) -> None:
        if self.interactive_users < 0 or self.bulk_users < 0 or self.interactive_users + self.bulk_users == 0:
            raise ValueError("the mixed scenario needs >= 0 users of each class and at least one user")
        if self.bulk_batch < 1:
            raise ValueError("bulk batch must be >= 1")

    def locust_options(self) -> list[str]:
        return [
            "--mixed-protocol", self.protocol,
            "--interactive-users", str(self.interactive_users), "--bulk-users", str(self.bulk_users),
            "--bulk-batch", str(self.bulk_batch), "--interactive-think-s", str(self.interactive_think_s),
            "--interactive-deadline-s", str(self.interactive_deadline_s or 0),
            "--interactive-start-delay-s", str(self.interactive_start_delay_s),
            "--interactive-length-mix", self.interactive_length_mix, "--bulk-length-mix", self.bulk_length_mix,
        ]  # fmt: skip


@dataclass(frozen=True)
class LoadRunConfig:
    """One headless Locust run. `mixed` selects the mixed scenario (its users replace `protocols` and `users`)."""

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
    mixed: MixedScenario | None = None
    timeout_s: float = 60.0
    stop_timeout_s: float = 10.0
    measure_after_s: float = 0.0

    @property
    def user_count(self) -> int:
        if self.mixed is None:
            return self.users
        return self.mixed.interactive_users + self.mixed.bulk_users

    @property
    def traffic_class(self) -> str | None:
        """The class the SLO judges: interactive in the mixed scenario, every request otherwise."""
        return "interactive" if self.mixed is not None else None


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
    if config.mixed is None:
        scenario = [USER_CLASSES[protocol] for protocol in config.protocols]
        spawn_rate = config.spawn_rate
    else:
        counts = (config.mixed.interactive_users, config.mixed.bulk_users)
        scenario = [*config.mixed.locust_options(), *(name for name, n in zip(MIXED_USER_CLASSES, counts) if n)]
        spawn_rate = max(config.spawn_rate, config.user_count)  # every mixed user from the start
    return [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--skip-log-setup",
        "-H", _with_scheme(config.http_url), "--url", f"grpc://{_without_scheme(config.grpc_url)}",
        "-u", str(config.user_count), "-r", str(spawn_rate), "-t", f"{seconds}s",
        "--stop-timeout", f"{config.stop_timeout_s:g}",
        "--load-shape", config.load_shape, "--shape-duration", str(config.run_time_s),
        "--triton-model", config.model, "--triton-outputs", config.outputs, "--length-mix", config.length_mix,
        "--triton-timeout-s", f"{config.timeout_s:g}", "--measure-after-s", f"{config.measure_after_s:g}",
        "--csv", str(prefix), "--csv-full-history", "--html", f"{prefix}.html",
        "--summary-json", f"{prefix}_summary.json", "--exit-code-on-error", "0", "--only-summary",
        *scenario,
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
        completed = subprocess.run(
            command,
            cwd=PROJECT_ROOT,
            timeout=config.run_time_s + config.stop_timeout_s + 180,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        print("error: locust did not finish in time", file=sys.stderr)
        return EXIT_RUN_FAILED, None
    if not summary_path.is_file():
        print(f"error: locust exited {completed.returncode} without writing {summary_path}", file=sys.stderr)
        return EXIT_RUN_FAILED, None
    summary = json.loads(summary_path.read_text())
    report = evaluate_slo(summary, policy, config.traffic_class)
    summary["slo"] = {
        "traffic_class": config.traffic_class,
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
        f"requests {summary.get('requests', 0)}  ok {summary.get('successes', 0)}  errors {summary.get('errors', 0)}  "
        f"rejected {summary.get('rejections', 0)}  expired {summary.get('expired', 0)}  "
        f"sequences/s {summary.get('sequences_per_s', 0):.1f}",
    ]
    for group in ("by_protocol", "by_class"):
        for name, row in sorted(summary.get(group, {}).items()):
            latency = row["latency_ms"]
            lines.append(
                f"  {name:11s} ok {row.get('successes', 0):6d}  p50 {latency['p50']:.1f} ms  "
                f"p90 {latency['p90']:.1f} ms  p99 {latency['p99']:.1f} ms  errors {row.get('errors', 0)}  "
                f"rejected {row.get('rejections', 0)}  expired {row.get('expired', 0)}  "
                f"sequences/s {row.get('sequences_per_s', 0):.1f}"
            )
    scope = f" on the {report.traffic_class} class" if report.traffic_class else ""
    verdict = f"SLO{scope} met" if report.passed else f"SLO{scope} BROKEN: " + "; ".join(report.violations)
    lines.append(
        f"{verdict} (p99 <= {policy.p99_latency_ms:g} ms, failures <= {policy.max_failure_ratio:g}, "
        f"refusals <= {policy.max_rejection_ratio:g})"
    )
    return "\n".join(lines)


PROGRAM = "python -m tritonfleet.loadtest.run"


def build_parser(prog: str = PROGRAM) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    target = parser.add_argument_group("target")
    add_server_url(target, "--host")
    target.add_argument("--start-local-server", action="store_true", help="serve --model-repository for the run")
    target.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    load = parser.add_argument_group("load")
    load.add_argument("--protocol", choices=["http", "grpc", "both"], default="both")
    load.add_argument("--model", default="esm2")
    load.add_argument("-u", "--users", type=int, default=4)
    load.add_argument("-r", "--spawn-rate", type=float, default=4.0)
    load.add_argument("-t", "--run-time", default="30s", help="e.g. 20s, 5m, 1h")
    load.add_argument("--load-shape", choices=SHAPES, default="none")
    load.add_argument("--length-mix", default="swissprot", help="swissprot | short | fixed-N")
    load.add_argument("--outputs", choices=["embedding", "all"], default="embedding")
    load.add_argument("--timeout-s", type=float, default=60.0, help="client-side limit per request")
    mixed = parser.add_argument_group("mixed scenario (--scenario mixed; the SLO judges the interactive class)")
    mixed.add_argument("--scenario", choices=SCENARIOS, default="embed")
    mixed.add_argument("--interactive-users", type=int, default=MixedScenario.interactive_users)
    mixed.add_argument("--bulk-users", type=int, default=MixedScenario.bulk_users)
    mixed.add_argument("--bulk-batch", type=int, default=MixedScenario.bulk_batch, help="sequences per bulk request")
    mixed.add_argument("--interactive-think-s", type=float, default=MixedScenario.interactive_think_s)
    mixed.add_argument("--interactive-deadline-s", type=float, default=None, help="default: none")
    mixed.add_argument("--mixed-protocol", choices=["http", "grpc"], default=MixedScenario.protocol)
    slo = parser.add_argument_group("SLO (exit code 1 when broken)")
    slo.add_argument("--slo-p99-ms", type=float, default=SloPolicy.p99_latency_ms)
    slo.add_argument("--slo-max-failure-ratio", type=float, default=SloPolicy.max_failure_ratio)
    slo.add_argument("--slo-max-rejection-ratio", type=float, default=SloPolicy.max_rejection_ratio)
    parser.add_argument("--output", type=Path, default=Path("reports"), metavar="DIR", help="report folder")
    add_deprecated(parser, "--report-dir", "--output", type=Path)
    parser.add_argument("--name", default="locust", help="report file prefix")
    return parser


def target_urls(args: argparse.Namespace, protocols: Sequence[str]) -> dict[str, str]:
    """{"http": HOST:PORT, "grpc": HOST:PORT} from --url (and the deprecated --host/--grpc-url)."""
    return server_urls(url_values(args), protocols)


def main(argv: Sequence[str] | None = None, prog: str = PROGRAM) -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    policy = SloPolicy(args.slo_p99_ms, args.slo_max_failure_ratio, args.slo_max_rejection_ratio)
    protocols = ("http", "grpc") if args.protocol == "both" else (args.protocol,)
    try:
        urls = server_urls([], ("http", "grpc")) | target_urls(args, protocols)
    except argparse.ArgumentTypeError as error:
        parser.error(str(error))

    mixed = None
    if args.scenario == "mixed":
        mixed = MixedScenario(
            interactive_users=args.interactive_users, bulk_users=args.bulk_users, bulk_batch=args.bulk_batch,
            interactive_think_s=args.interactive_think_s, interactive_deadline_s=args.interactive_deadline_s,
            protocol=args.mixed_protocol,
        )  # fmt: skip

    def config_for(http_url: str, grpc_url: str) -> LoadRunConfig:
        return LoadRunConfig(
            http_url=http_url, grpc_url=grpc_url, protocols=protocols, model=args.model, users=args.users,
            spawn_rate=args.spawn_rate, run_time_s=parse_run_time(args.run_time), load_shape=args.load_shape,
            length_mix=args.length_mix, outputs=args.outputs, report_dir=args.output, name=args.name,
            mixed=mixed, timeout_s=args.timeout_s,
        )  # fmt: skip

    if args.start_local_server:
        with serve(args.model_repository) as server:
            return run_locust(config_for(server.http_url, server.grpc_url), policy)[0]
    return run_locust(config_for(urls["http"], urls["grpc"]), policy)[0]


if __name__ == "__main__":
    warn_python_m(__spec__.name if __spec__ else None, "loadtest")
    sys.exit(main())

"""SLO verdicts, load shapes and the Locust command line (no server)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from tritonfleet.loadtest.run import LoadRunConfig, locust_command
from tritonfleet.loadtest.shapes import ShapeSettings, users_at
from tritonfleet.loadtest.slo import SloPolicy, evaluate_slo


def summary(requests=100, successes=100, errors=0, rejections=0, p99=50.0) -> dict:
    return {"requests": requests, "successes": successes, "errors": errors, "rejections": rejections,
            "latency_ms": {"p50": p99 / 2, "p99": p99}}  # fmt: skip


def test_a_clean_run_meets_the_slo() -> None:
    report = evaluate_slo(summary(), SloPolicy(p99_latency_ms=100))
    assert report.passed and report.failure_ratio == 0.0


def test_slow_p99_breaks_the_slo() -> None:
    report = evaluate_slo(summary(p99=250.0), SloPolicy(p99_latency_ms=100))
    assert not report.passed and "p99 latency 250.0 ms > objective 100.0 ms" in report.violations[0]


def test_errors_and_rejections_have_separate_budgets() -> None:
    policy = SloPolicy(p99_latency_ms=100, max_failure_ratio=0.05, max_rejection_ratio=0.10)
    rejected = evaluate_slo(summary(successes=92, rejections=8), policy)
    assert rejected.passed and rejected.rejection_ratio == pytest.approx(0.08) and rejected.failure_ratio == 0
    errored = evaluate_slo(summary(successes=92, errors=8), policy)
    assert not errored.passed and "failure ratio 0.0800 (8/100)" in errored.violations[0]
    flooded = evaluate_slo(summary(successes=80, rejections=20), policy)
    assert not flooded.passed and "rejection ratio" in flooded.violations[0]


def test_no_successful_request_is_a_violation_even_without_latency() -> None:
    report = evaluate_slo(summary(requests=5, successes=0, errors=5, p99=math.nan), SloPolicy())
    assert not report.passed and any("only 0 successful" in v for v in report.violations)


def test_policy_validation() -> None:
    with pytest.raises(ValueError):
        SloPolicy(p99_latency_ms=0)
    with pytest.raises(ValueError):
        SloPolicy(max_failure_ratio=1.5)


def test_run_time_uses_locusts_parser_without_patching_this_process() -> None:
    check = (
        "import gevent.monkey\n"
        "from tritonfleet.loadtest.run import parse_run_time\n"
        "assert parse_run_time('1h30m') == 5400 and parse_run_time('20') == 20\n"
        "assert not gevent.monkey.is_module_patched('socket')\n"
        "try:\n"
        "    parse_run_time('5 minutes')\n"
        "except ValueError:\n"
        "    print('rejected')\n"
    )
    completed = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "rejected"


def test_locust_command_selects_the_protocol_users(tmp_path: Path) -> None:
    config = LoadRunConfig(http_url="127.0.0.1:8000", grpc_url="grpc://127.0.0.1:8001", protocols=("grpc",),
                           run_time_s=20, report_dir=tmp_path)  # fmt: skip
    command = locust_command(config)
    assert command[-1] == "TritonGrpcEmbedUser" and "TritonHttpEmbedUser" not in command
    assert command[command.index("-H") + 1] == "http://127.0.0.1:8000"
    assert command[command.index("--url") + 1] == "grpc://127.0.0.1:8001"
    assert command[command.index("--csv") + 1] == str(tmp_path / "locust")
    assert command[command.index("--exit-code-on-error") + 1] == "0"  # the SLO decides the exit code


def test_shapes() -> None:
    ramp = ShapeSettings("ramp", 100, 9, 1)
    assert users_at(ramp, 0)[0] == 1 and users_at(ramp, 40)[0] == 5 and users_at(ramp, 90)[0] == 9
    assert users_at(ramp, 100) is None
    spike = ShapeSettings("spike", 100, 20, 1)
    assert [users_at(spike, t)[0] for t in (10, 45, 70)] == [5, 20, 5]
    soak = ShapeSettings("soak", 1000, 8, 1)
    assert users_at(soak, 50)[0] == 4 and users_at(soak, 500)[0] == 8
    assert users_at(ShapeSettings("none", 10, 3, 2), 5) == (3, 2)
    with pytest.raises(ValueError, match="unknown load shape"):
        ShapeSettings("sawtooth", 10, 1, 1)

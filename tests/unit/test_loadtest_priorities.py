"""The mixed interactive + bulk scenario without a server: SLO per class, the Locust command, per-class recording,
refusal classification and the priorities benchmark's verdicts."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from tritonclient.utils import InferenceServerException

from tritonfleet.loadtest.priorities import (
    PhaseResult,
    PrioritiesBenchConfig,
    pool_runs,
    render_markdown,
    verdicts,
)
from tritonfleet.loadtest.run import LoadRunConfig, MixedScenario, locust_command
from tritonfleet.loadtest.slo import SloPolicy, evaluate_slo
from tritonfleet.loadtest.workload import refusal_kind

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def row(successes=100, errors=0, rejections=0, expired=0, p99=50.0, rate=1.0) -> dict:
    return {"requests": successes + errors + rejections + expired, "successes": successes, "errors": errors,
            "rejections": rejections, "expired": expired, "sequences_per_s": rate,
            "latency_ms": {"p50": p99 / 2, "p99": p99}}  # fmt: skip


def mixed_summary(interactive: dict, bulk: dict, unanswered: int = 0) -> dict:
    merged = {key: interactive[key] + bulk[key] for key in ("requests", "successes", "errors", "rejections", "expired")}
    return {**merged, "latency_ms": {"p50": 1.0, "p99": 9e9}, "unanswered": unanswered,
            "by_class": {"interactive": interactive, "bulk": bulk}}  # fmt: skip


def test_the_mixed_scenario_is_judged_on_the_interactive_class_only():
    summary = mixed_summary(row(p99=80.0), row(p99=60_000.0))  # bulk is slow by design
    policy = SloPolicy(p99_latency_ms=100)
    assert not evaluate_slo(summary, policy).passed
    report = evaluate_slo(summary, policy, "interactive")
    assert report.passed and report.traffic_class == "interactive" and report.p99_latency_ms == 80.0
    slow = evaluate_slo(mixed_summary(row(p99=250.0), row()), policy, "interactive")
    assert slow.violations == ["interactive p99 latency 250.0 ms > objective 100.0 ms"]


def test_expired_requests_count_as_refusals_not_errors():
    summary = mixed_summary(row(successes=80, expired=15, rejections=5), row())
    report = evaluate_slo(summary, SloPolicy(p99_latency_ms=100, max_rejection_ratio=0.1), "interactive")
    assert (report.refusals, report.failure_ratio) == (20, 0.0)
    assert report.rejection_ratio == pytest.approx(0.2)
    assert "rejection ratio 0.2000 (20/100, 15 expired)" in report.violations[0]


def test_a_class_that_sent_nothing_fails_its_slo():
    report = evaluate_slo({"by_class": {"bulk": row()}}, SloPolicy(), "interactive")
    assert not report.passed and "only 0 successful interactive requests" in report.violations[0]


def test_the_mixed_command_runs_both_classes_with_their_options():
    scenario = MixedScenario(interactive_users=3, bulk_users=5, bulk_batch=64, interactive_deadline_s=2.0)
    config = LoadRunConfig("127.0.0.1:8000", "127.0.0.1:8001", mixed=scenario, timeout_s=300, stop_timeout_s=310)
    command = locust_command(config)
    assert command[-2:] == ["TritonInteractiveUser", "TritonBulkUser"]
    options = dict(zip(command, command[1:]))
    assert (options["-u"], options["--interactive-users"], options["--bulk-users"]) == ("8", "3", "5")
    assert (options["--bulk-batch"], options["--interactive-deadline-s"]) == ("64", "2.0")
    assert (options["--triton-timeout-s"], options["--stop-timeout"]) == ("300", "310")
    assert config.traffic_class == "interactive"
    idle = LoadRunConfig("h", "g", mixed=MixedScenario(interactive_users=2, bulk_users=0))
    assert locust_command(idle)[-1] == "TritonInteractiveUser" and "TritonBulkUser" not in locust_command(idle)
    with pytest.raises(ValueError):
        MixedScenario(interactive_users=0, bulk_users=0)


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (InferenceServerException("[request id: <id_unknown>] Exceeds maximum queue size", "503"), "rejected"),
        (InferenceServerException("Request timeout expired", "StatusCode.UNAVAILABLE"), "expired"),
        (InferenceServerException("Request timeout expired", "500"), "expired"),  # relayed by a BLS model
        (InferenceServerException("Deadline Exceeded", "StatusCode.DEADLINE_EXCEEDED"), "expired"),
        (InferenceServerException("invalid residue 'J'", "400"), None),
    ],
)
def test_refusals_are_told_apart(error, kind):
    assert refusal_kind(error) == kind


RECORDER_SCRIPT = """
import json, time
import locustfile as lf
recorder = lf.RunRecorder(measure_after_s=0.0)
recorder.started = time.monotonic() - 10
ok = lambda cls, n: recorder.record("gRPC", f"esm2 {cls}", 12.0, None, {"sequences": n, "class": cls})
for _ in range(3):
    ok("interactive", 1)
ok("bulk", 64)
late = {"class": "interactive", "refusal": "expired"}
recorder.record("gRPC", "esm2 interactive EXPIRED", 5.0, RuntimeError("late"), late)
recorder.record("gRPC", "esm2 bulk REJECTED", 1.0, RuntimeError("full"), {"class": "bulk", "refusal": "rejected"})
recorder.record("gRPC", "esm2 bulk", 1.0, RuntimeError("boom"), {"class": "bulk"})
print(json.dumps(recorder.summary()))
"""


def test_the_recorder_keeps_per_class_counts_and_latencies():
    # The locustfile imports locust, which monkey-patches for gevent: run it in its own interpreter.
    result = subprocess.run(
        [sys.executable, "-c", RECORDER_SCRIPT],
        cwd=PROJECT_ROOT / "loadtest",
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    interactive, bulk = summary["by_class"]["interactive"], summary["by_class"]["bulk"]
    assert (interactive["successes"], interactive["expired"], interactive["sequences"]) == (3, 1, 3)
    assert (bulk["successes"], bulk["rejections"], bulk["errors"], bulk["sequences"]) == (1, 1, 1, 64)
    assert interactive["latency_ms"]["p99"] == 12.0
    assert summary["requests"] == 7 and summary["by_protocol"]["gRPC"]["expired"] == 1
    assert bulk["sequences_per_s"] == pytest.approx(6.4, rel=0.05)  # 64 sequences over the ~10 s measured


def phase(name: str, interactive_p99: float, bulk_rate: float, unanswered: int = 0, errors: int = 0) -> PhaseResult:
    summary = mixed_summary(row(p99=interactive_p99, errors=errors), row(rate=bulk_rate), unanswered)
    return PhaseResult(name, summary, ((1.0, 1.2),))


def test_runs_of_one_condition_are_pooled():
    def run(latencies: list[float], measured_s: float, measured_sequences: int, load: float) -> PhaseResult:
        interactive = {**row(successes=len(latencies)), "latencies_ms": latencies}
        bulk = {**row(successes=measured_sequences // 64), "measured_sequences": measured_sequences}
        summary = {**mixed_summary(interactive, bulk), "measured_s": measured_s}
        return PhaseResult("r", summary, ((load, load + 2),))

    pooled = pool_runs("with_priorities", [run([10.0] * 99, 100.0, 640, 1.0), run([1000.0], 150.0, 1280, 3.0)])
    interactive, bulk = pooled.row("interactive"), pooled.row("bulk")
    assert interactive["successes"] == 100 and interactive["latency_ms"]["p50"] == 10.0
    assert interactive["latency_ms"]["p99"] == pytest.approx(19.9)  # percentiles of the pooled latencies
    assert bulk["sequences_per_s"] == pytest.approx((640 + 1280) / 250.0)  # over the summed windows
    assert pooled.loads == ((1.0, 3.0), (3.0, 5.0)) and pooled.summary["runs"] == 2
    broken = pool_runs("with_priorities", [run([10.0], 10.0, 64, 1.0), PhaseResult("r", {}, ((1.0, 1.0),))])
    assert not verdicts([phase("idle", 1.0, math.nan), phase("without_priorities", 9.0, 1.0), broken])[
        "every_request_answered"
    ]


def test_bench_verdicts_compare_with_and_without_priorities():
    phases = [phase("idle", 40.0, math.nan), phase("without_priorities", 40_000.0, 10.0),
              phase("with_priorities", 8_000.0, 9.5)]  # fmt: skip
    result = verdicts(phases)
    assert result["interactive_p99_ratio"] == pytest.approx(0.2) and result["p99_target_met"]
    assert result["bulk_throughput_ratio"] == pytest.approx(0.95) and result["throughput_target_met"]
    assert result["every_request_answered"]
    missed = verdicts([phases[0], phases[1], phase("with_priorities", 20_000.0, 8.0, unanswered=1)])
    assert not missed["p99_target_met"] and not missed["throughput_target_met"]
    assert not missed["every_request_answered"]
    text = render_markdown(PrioritiesBenchConfig(), phases, "python -m tritonfleet.loadtest.priorities")
    assert "| interactive p99 with priorities <= 0.3x without | 0.200x | yes |" in text
    assert "| with priorities | 4,000 | 8,000 |" in text


def test_users_start_at_fixed_spread_out_places_in_the_pool():
    # Deterministic starts: with a length-sorted bulk pool, where a user starts decides the lengths it sends, so two
    # runs of a scenario (with and without priorities) must send the same requests.
    script = (
        "import json\n"
        "from tritonfleet.loadtest.triton_user import pool_offset\n"
        "starts = [pool_offset(n, 1024, 64) for n in range(10)]\n"
        "print(json.dumps([starts, pool_offset(5, 1024, 64), pool_offset(0, 3, 64)]))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120)
    starts, again, tiny_pool = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(set(starts)) == 10 and all(start % 64 == 0 and 0 <= start < 1024 for start in starts)
    assert again == starts[5] and tiny_pool == 0

"""The mixed interactive + bulk scenario without a server: SLO per class, the Locust command, per-class recording,
refusal classification, the priorities benchmark's verdicts and the bulk study's pure parts."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from tritonclient.utils import InferenceServerException

from tritonfleet.loadtest.bulk_study import BulkStudyConfig, compare_outputs, repeated_fasta
from tritonfleet.loadtest.bulk_study import verdicts as bulk_verdicts
from tritonfleet.loadtest.priorities import PhaseResult, PrioritiesBenchConfig, render_markdown, verdicts
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


def phase(name: str, latencies: list[float], bulk: int = 0, failed: int = 0, rejected: int = 0) -> PhaseResult:
    result = PhaseResult(name, "shipped", measured_s=100.0, interactive_latencies_ms=latencies, bulk_sequences=bulk)
    if failed:
        result.interactive_failures["ServerUnavailableError"] = failed
    if rejected:
        result.server_rejections["esm2_interactive"] = rejected
    return result


def test_bench_verdicts_judge_the_shipped_defaults_against_idle_and_bulk_alone():
    phases = [phase("idle", [30.0] * 100), phase("bulk_alone", [], bulk=1000),
              phase("bulk_and_interactive", [60.0] * 100, bulk=950)]  # fmt: skip
    result = verdicts(phases)
    assert result["interactive_p99_ratio"] == pytest.approx(2.0) and result["p99_target_met"]
    assert result["bulk_throughput_ratio"] == pytest.approx(0.95) and result["throughput_target_met"]
    assert result["none_refused"]
    missed = verdicts([phases[0], phases[1], phase("bulk_and_interactive", [120.0] * 100, bulk=800, rejected=2)])
    assert not missed["p99_target_met"] and not missed["throughput_target_met"] and not missed["none_refused"]
    assert not verdicts([phases[0], phases[1], phase("bulk_and_interactive", [60.0], bulk=950, failed=1)])[
        "none_refused"
    ]
    text = render_markdown(PrioritiesBenchConfig(), phases, "python -m tritonfleet.loadtest.priorities")
    assert "| interactive p99 under bulk <= 3x idle p99 | 2.00x | yes |" in text
    assert "| bulk and interactive | shipped | - | 60 | 60 | 100 / 0 | 0 | 9.50 |" in text
    assert math.isnan(phase("idle", []).p(99))


def test_the_bulk_study_fasta_repeats_earlier_sequences(tmp_path):
    config = BulkStudyConfig(records=100, length_mix="short")
    path, distinct = repeated_fasta(tmp_path / "r.fasta", config)
    lines = path.read_text().splitlines()
    ids, sequences = lines[0::2], lines[1::2]
    assert len(ids) == len(set(ids)) == 100 and distinct == len(set(sequences)) == 70
    assert sum(1 for index, sequence in enumerate(sequences) if sequence in sequences[:index]) == 30


def test_the_bulk_study_compares_outputs_id_by_id(tmp_path):
    import numpy as np

    def write(name: str, vectors: list[list[float]]) -> Path:
        path = tmp_path / name
        np.savez(path, ids=np.array(["a", "b"]), embeddings=np.array(vectors, dtype=np.float32))
        return path

    same = [write("1.npz", [[1, 2], [3, 4]]), write("2.npz", [[1, 2], [3, 4]])]
    assert compare_outputs(same) == (True, 0.0, 2)
    identical, largest, _ = compare_outputs([same[0], write("3.npz", [[1, 2], [3, 4.5]])])
    assert not identical and largest == pytest.approx(0.5)
    assert not compare_outputs([same[0], tmp_path / "missing.npz"])[0]
    study = {
        "conditions": [{"name": "neither", "seconds": 10.0, "exit_code": 0},
                       {"name": "server cache alone", "seconds": 7.0, "exit_code": 0},
                       {"name": "client dedup alone", "seconds": 8.0, "exit_code": 0}],
        "identical": True, "interactive": {"repeat_p50_ms": 1.0},
    }  # fmt: skip
    result = bulk_verdicts(study)
    assert result["cache_target_met"] and not result["dedup_target_met"] and result["repeat_target_met"]


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

"""reports/fleet.md: the fleet chaos study's markdown report."""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
from typing import Any

from tritonfleet.export.devices import usable_cores
from tritonfleet.loadtest.fleet_chaos.prometheus import ALERT
from tritonfleet.loadtest.studies.header import ReportHeader, cpu_model


def machine() -> str:
    """The header's machine line, with the balancer's and Prometheus' versions."""
    haproxy = subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout.splitlines()[:1]
    prometheus = shutil.which("prometheus")
    prom_version = (
        subprocess.run([prometheus, "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
        if prometheus
        else ["not installed"]
    )
    return (
        f"{cpu_model()}, {usable_cores()} usable core(s), {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}; {' '.join(haproxy)}; {' '.join(prom_version)}"
    )


def _shares_text(shares: dict[str, dict[str, Any]]) -> str:
    return ", ".join(f"{name} {figures['vs_even']}" for name, figures in shares.items())


def _mark(ok: bool) -> str:
    return "met" if ok else "**not met**"


def _fails(result: dict[str, Any], mode: str) -> int:
    return sum(n for key, n in result["failed"].items() if key.endswith("/" + mode))


def render_report(results: dict[str, Any], command: str, quick: bool) -> str:
    kill, hang, rolling = results["kill"], results["hang"], results["rolling"]
    scale, canary, tput = results["scale"], results["canary"], results["throughput"]
    lines = [
        "# Fleet chaos study" + (" (quick mode: shorter windows, not the committed figures)" if quick else ""),
        "",
        *ReportHeader.collect(command, machine=results["machine"]).markdown(f"; wall time {results['wall_s']} s"),
        "- Fleet: 2 replicas of the local launcher (self-healing on), one core each, behind HAProxy 2.6 "
        "(deploy/fleet/haproxy.py); scale-out adds a third on a shared core (`--oversubscribe`: this machine has 2).",
        "- Model: `tiny` (ONNX, 2 x FP32[4] -> FP32[3], FP32[1]) through the project's Python-based onnxruntime "
        "backend: the fleet's behaviour is measured, not ESM-2's speed.",
        "- Load: closed loop, 8 workers: 2 plain gRPC (no retries, one shared channel), 2 plain HTTP (no retries, "
        "one keep-alive connection each), 2 gRPC + 2 HTTP through the project's client stack "
        "(`tritonfleet.client` Transport + its retry policy).",
        "",
        "## Targets",
        "",
        "| target | measured | |",
        "|---|---|---|",
    ]
    plain_kill = _fails(kill, "plain")
    lines += [
        f"| kill -9: 0 failed as a plain tritonclient sees them (HTTP and gRPC) | {kill['failed']} "
        f"of {kill['requests']} | {_mark(plain_kill == 0)} |",
        f"| kill -9: 0 failed through the project's client | {_fails(kill, 'project')} | "
        f"{_mark(_fails(kill, 'project') == 0)} |",
        f"| kill -9: out of rotation <= 2 s | {kill['out_of_rotation_s']} s | "
        f"{_mark(kill['out_of_rotation_s'] is not None and kill['out_of_rotation_s'] <= 2)} |",
        f"| kill -9: back <= 10 s after the restarted replica is ready | {kill['back_after_ready_s']} s "
        f"(restarted and ready {kill['replica_ready_again_s']} s after the kill) | "
        f"{_mark(kill['back_after_ready_s'] is not None and kill['back_after_ready_s'] <= 10)} |",
        f"| SIGSTOP: marked down <= 3 s | {hang['marked_down_s']} s | "
        f"{_mark(hang['marked_down_s'] is not None and hang['marked_down_s'] <= 3)} |",
        f"| SIGSTOP: 0 failed through the project's client | {_fails(hang, 'project')} (plain clients: "
        f"{_fails(hang, 'plain')}) of {hang['requests']} | {_mark(_fails(hang, 'project') == 0)} |",
        f"| rolling update of every replica (and rollback) under load: 0 failed | {rolling['failed']} of "
        f"{rolling['requests']} | {_mark(sum(rolling['failed'].values()) == 0)} |",
        f"| scale 2 -> 3 -> 2 under load: 0 failed | {scale['failed']} of {scale['requests']} | "
        f"{_mark(sum(scale['failed'].values()) == 0)} |",
        f"| broken canary rolled back automatically | {canary['decision']}: {canary['reason']} | "
        f"{_mark(canary['decision'] == 'rollback')} |",
        f"| broken canary: failed <= 0.5 % of the traffic in its window | {canary['failed_ratio']:.2%} "
        f"({sum(canary['failed'].values())} of {canary['window_requests']}) | "
        f"{_mark(canary['failed_ratio'] <= 0.005)} |",
        f"| throughput through the front >= 0.95x direct round-robin ({len(tput['rounds'])} interleaved rounds, "
        f"model `{tput['model']}`) | "
        f"{tput['front_over_direct']}x | {_mark(tput['front_over_direct'] >= 0.95)} |",
    ]
    spread = results["spread"]
    even = all(abs(float(v["vs_even"].rstrip("%"))) <= 10 for v in spread["share"].values())
    single_even = all(
        abs(float(v["vs_even"].rstrip("%"))) <= 10 for v in spread["single_grpc_connection_share"].values()
    )
    lines += [
        f"| each replica's share within +-10 % of even (uniform requests, model `{spread['model']}`) | "
        f"{_shares_text(spread['share'])} | {_mark(even)} |",
        f"| ... over a single gRPC connection | "
        f"{_shares_text(spread['single_grpc_connection_share'])} | "
        f"{_mark(single_even)} |",
        f"| fleet-wide p99 (load generator, through the front) | {tput['front_p99_ms']} ms "
        f"(p50 {tput['front_p50_ms']} ms; direct p99 {tput['direct_p99_ms']} ms) | reported |",
    ]
    alert = hang.get("alert", {})
    if alert:
        fired, resolved = alert.get("fired_after_s"), alert.get("resolved_after_resume_s")
        lines.append(
            f"| Prometheus: `{ALERT}` fires and resolves | fired {fired} s after SIGSTOP, resolved {resolved} s "
            f"after SIGCONT | {_mark(fired is not None and resolved is not None)} |"
        )
    else:
        lines.append(
            f"| Prometheus: `{ALERT}` fires and resolves | Prometheus not run: {results.get('prometheus')} | "
            "**not met** |"
        )
    lines += [
        "",
        "## Details",
        "",
        f"Throughput rounds (model `{tput['model']}`, one request = "
        + ("one protein to the `esm2` ensemble" if tput["model"] == "esm2" else "one row to the tiny model")
        + "; requests/s, 4 gRPC + 4 HTTP plain workers):",
        "",
        "| round | through the front | direct round-robin |",
        "|---|---|---|",
        *[f"| {r['round']} | {r['front_rps']} | {r['direct_rps']} |" for r in tput["rounds"]],
        "",
        f"Single gRPC connection (6 workers on one channel): {tput['single_grpc_connection_rps']} requests/s, "
        f"p99 {tput['single_connection_p99_ms']} ms. Requests per replica in these rounds: "
        f"{_shares_text(tput['share'])} (one channel: {_shares_text(tput['single_grpc_connection_share'])}); with "
        "requests of unequal cost, least-outstanding-requests sends more of them to the replica that finishes "
        "sooner, so request counts need not be even there.",
        "",
        "Canary figures at the decision (error counts: the larger of HAProxy's 5xx and Triton's failure counter per "
        "replica; p99 from Triton's summaries):",
        "",
        "```json",
        json.dumps(canary, indent=2, default=str),
        "```",
        "",
        "Every scenario's raw figures:",
        "",
        "```json",
        json.dumps({k: v for k, v in results.items() if k not in ("machine",)}, indent=2, default=str),
        "```",
        "",
        "## Notes",
        "",
        "- What HAProxy 2.6 cannot replay: a request that died with a replica is replayed only while HAProxy still "
        "holds the whole request (`option http-buffer-request`, `tune.bufsize` above the largest request) and no "
        "byte of the answer has reached the client. A gRPC answer already under way when the replica died ends as "
        "`UNKNOWN: Stream removed (Data frame with END_STREAM flag received)` (about one per kill under this load, "
        "when it happens to be mid-answer); a stream HAProxy reset before any answer ends as `UNAVAILABLE: Stream "
        "removed (RST_STREAM error code 7)` (REFUSED_STREAM). Both are the client's to retry (inference is "
        'idempotent): the project\'s client (client/errors.py) retries both, and "Socket closed" / "Connection '
        'reset" alike. This is the one retry budget HAProxy and the client share: HAProxy replays what never reached '
        "a replica's answer (at most once, on another replica), the client retries the rest within its deadline.",
        f"- Machine load: load average {results.get('load_before')} at the start, {results.get('load_after')} at the "
        "end (this 2-core machine is shared: the balancer, 2-3 replicas and the load generator compete for the same "
        "cores, so every extra hop waits for a core; the throughput ratio is only meaningful on an otherwise idle "
        "machine).",
        "- The passive observation does not mark a replica down at its first connection error (`on-error "
        "fastinter`, not `mark-down`): marked down at once, `on-marked-down shutdown-sessions` cut the other "
        "requests that died with the replica before HAProxy replayed them (1 HTTP and 2 gRPC plain-client failures "
        "per kill in a trial); with fast re-checks the replica is out in about a second and nothing is cut.",
        "- A hung replica's requests are ended when the checks mark it down (`shutdown-sessions`); the project's "
        "client retries them (a plain client may see them fail).",
        "- Fleet-wide p99 comes from the load generator: per-replica Triton summaries cannot be merged.",
    ]
    return "\n".join(lines) + "\n"

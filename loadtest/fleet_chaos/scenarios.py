"""The fleet chaos scenarios: kill, hang, rolling update, scale, broken canary, throughput, per-replica spread."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tritonfleet.loadtest.fleet_chaos.load import FleetLoad, summarize
from tritonfleet.loadtest.fleet_chaos.model import (
    MODEL,
    Workload,
    add_version,
)
from tritonfleet.loadtest.fleet_chaos.prometheus import Prometheus

LOAD_WORKERS = [("grpc", "plain")] * 2 + [("http", "plain")] * 2 + [("grpc", "project")] * 2 + [("http", "project")] * 2


@dataclass(frozen=True)
class StudyConfig:
    quick: bool
    settle_s: float
    round_s: float
    rounds: int = 3

    @classmethod
    def make(cls, quick: bool) -> StudyConfig:
        return cls(quick=quick, settle_s=2.0 if quick else 10.0, round_s=4.0 if quick else 20.0)


def _wait(condition: Any, timeout_s: float, poll_s: float = 0.02) -> float | None:
    """Seconds until `condition()` held, or None if it did not within `timeout_s`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if condition():
            return time.monotonic() - start
        time.sleep(poll_s)
    return None


def _front_load(fleet: Any, workers: list[tuple[str, str]] | None = None) -> FleetLoad:
    return FleetLoad({"http": fleet.http_url, "grpc": fleet.grpc_url}, workers or LOAD_WORKERS)


def _failures(load: FleetLoad) -> dict[str, int]:
    return {f"{p}/{m}": s.failed for (p, m), s in sorted(load.stats.items())}


def _requests(load: FleetLoad) -> int:
    return sum(s.ok + s.failed for s in load.stats.values())


def scenario_kill(fleet: Any, config: StudyConfig) -> dict[str, Any]:
    from tritonfleet.deploy.fleet.processes import http_ready

    victim = fleet.replicas["r1"]
    with _front_load(fleet) as load:
        load.wait_requests(200)
        pid = victim.tritonserver_pid()
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        out_s = _wait(lambda: "r1" not in fleet.in_rotation(), 30)
        ready_s = _wait(lambda: http_ready(victim.host, victim.http_port, timeout_s=0.5), 180, poll_s=0.05)
        ready_at = time.monotonic()
        back_s = _wait(lambda: "r1" in fleet.in_rotation(), 60)
        back_after_ready = None if back_s is None else round(time.monotonic() - ready_at, 2)
        time.sleep(config.settle_s)  # load keeps running on the whole fleet again (a measurement window)
    return {
        "out_of_rotation_s": None if out_s is None else round(out_s, 2),
        "replica_ready_again_s": None if ready_s is None else round(time.monotonic() - killed, 1),
        "back_after_ready_s": back_after_ready,
        "requests": _requests(load),
        "failed": _failures(load),
        "summary": summarize(load.stats),
    }


def scenario_hang(fleet: Any, config: StudyConfig, prometheus: Prometheus | None) -> dict[str, Any]:
    victim = fleet.replicas["r2"]
    alert: dict[str, Any] = {}
    with _front_load(fleet) as load:
        load.wait_requests(200)
        pid = victim.tritonserver_pid()
        os.kill(pid, signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            out_s = _wait(lambda: "r2" not in fleet.in_rotation(), 30)
            if prometheus is not None:
                fired = _wait(lambda: any(a.get("server") == "r2" for a in prometheus.firing()), 90, poll_s=0.5)
                alert["fired_after_s"] = None if fired is None else round(time.monotonic() - stopped, 1)
            else:
                time.sleep(config.settle_s)
            held_s = round(time.monotonic() - stopped, 1)
        finally:
            os.kill(pid, signal.SIGCONT)
        resumed = time.monotonic()
        back_s = _wait(lambda: "r2" in fleet.in_rotation(), 60)
        if prometheus is not None:
            resolved = _wait(lambda: not any(a.get("server") == "r2" for a in prometheus.firing()), 120, poll_s=0.5)
            alert["resolved_after_resume_s"] = None if resolved is None else round(time.monotonic() - resumed, 1)
        time.sleep(config.settle_s)
    return {
        "marked_down_s": None if out_s is None else round(out_s, 2),
        "held_stopped_s": held_s,
        "back_after_resume_s": None if back_s is None else round(back_s, 2),
        "requests": _requests(load),
        "failed": _failures(load),
        "summary": summarize(load.stats),
        "alert": alert,
    }


def scenario_rolling(fleet: Any, repository: Path, config: StudyConfig) -> dict[str, Any]:
    add_version(repository, 2)
    with _front_load(fleet) as load:
        load.wait_requests(100)
        started = time.monotonic()
        fleet.rolling_update(MODEL, "2")
        update_s = time.monotonic() - started
        load.wait_requests(100)
        started = time.monotonic()
        rolled_back_to = fleet.rollback(MODEL)
        rollback_s = time.monotonic() - started
        load.wait_requests(100)
    versions = Counter()
    for stats in load.stats.values():
        versions.update({v: n for v, n in stats.versions.items() if v})
    return {
        "update_s": round(update_s, 1),
        "rollback_s": round(rollback_s, 1),
        "rolled_back_to": rolled_back_to,
        "versions_answered": dict(versions),
        "requests": _requests(load),
        "failed": _failures(load),
    }


def scenario_scale(fleet: Any, config: StudyConfig) -> dict[str, Any]:
    with _front_load(fleet) as load:
        load.wait_requests(100)
        started = time.monotonic()
        fleet.scale_to(3)
        out_s = time.monotonic() - started
        before = _sent_by_replica(fleet)
        time.sleep(config.settle_s)  # a measurement window with 3 replicas
        third = _sent_by_replica(fleet).get("r3", 0) - before.get("r3", 0)
        started = time.monotonic()
        fleet.scale_to(2)
        in_s = time.monotonic() - started
        load.wait_requests(100)
    return {
        "scale_out_s": round(out_s, 1),
        "scale_in_s": round(in_s, 1),
        "requests_to_r3_while_in": third,
        "requests": _requests(load),
        "failed": _failures(load),
    }


def scenario_canary(fleet: Any, repository: Path, weight: float) -> dict[str, Any]:
    add_version(repository, 3, broken=True)
    with _front_load(fleet) as load:
        load.wait_requests(100)
        before = _requests(load)
        report = fleet.canary(MODEL, "3", weight_percent=weight)
        window_requests = _requests(load) - before
        failed = sum(s.failed for s in load.stats.values())
    return {
        "decision": report.decision,
        "reason": report.reason,
        "figures": report.figures,
        "seconds": report.seconds,
        "weight_percent": weight,
        "haproxy_weight": report.weight,
        "window_requests": window_requests,
        "failed": _failures(load),
        "failed_ratio": round(failed / max(1, window_requests), 5),
        "served_version_after": fleet.served_version(MODEL),
    }


def _sent_by_replica(fleet: Any, backends: tuple[str, ...] | None = None) -> dict[str, int]:
    from tritonfleet.deploy.fleet.haproxy import BACKENDS

    sent: Counter = Counter()
    for row in fleet.api.stats():
        if row.backend in (backends or BACKENDS):
            sent[row.name] += row.total
    return dict(sent)


def _measure(load_factory: Any, seconds: float) -> tuple[float, list[float], FleetLoad]:
    load = load_factory()
    with load:
        load.wait_requests(50)
        start_ok = sum(s.ok for s in load.stats.values())
        marks = {key: len(s.latencies_ms) for key, s in load.stats.items()}
        started = time.monotonic()
        time.sleep(seconds)  # the measurement window itself
        elapsed = time.monotonic() - started
        done = sum(s.ok for s in load.stats.values()) - start_ok
        latencies = [v for key, s in load.stats.items() for v in s.latencies_ms[marks[key] :]]
    return done / elapsed, latencies, load


def scenario_throughput(fleet: Any, config: StudyConfig, workload: Workload | None = None) -> dict[str, Any]:
    workers = [("grpc", "plain")] * 4 + [("http", "plain")] * 4
    replicas = list(fleet.replicas.values())
    direct_urls = {
        "grpc": [f"{r.host}:{r.grpc_port}" for r in replicas],
        "http": [f"{r.host}:{r.http_port}" for r in replicas],
    }
    rounds = []
    front_latencies: list[float] = []
    direct_latencies: list[float] = []
    shares: Counter = Counter()
    for index in range(config.rounds):
        before = _sent_by_replica(fleet)
        front, latencies, _ = _measure(
            lambda: FleetLoad(
                {"http": fleet.http_url, "grpc": fleet.grpc_url}, workers, shared_grpc_channel=False, workload=workload
            ),
            config.round_s,
        )
        after = _sent_by_replica(fleet)
        shares.update({name: after[name] - before.get(name, 0) for name in fleet.replicas})
        front_latencies += latencies
        direct, latencies, _ = _measure(
            lambda: FleetLoad(direct_urls, workers, shared_grpc_channel=False, workload=workload), config.round_s
        )
        direct_latencies += latencies
        rounds.append({"round": index + 1, "front_rps": round(front, 1), "direct_rps": round(direct, 1)})
    before = _sent_by_replica(fleet, ("triton_grpc",))
    single, latencies, _ = _measure(
        lambda: FleetLoad(
            {"grpc": fleet.grpc_url}, [("grpc", "plain")] * 6, shared_grpc_channel=True, workload=workload
        ),
        config.round_s,
    )
    after = _sent_by_replica(fleet, ("triton_grpc",))
    single_shares = {name: after[name] - before.get(name, 0) for name in fleet.replicas}
    front_total = sum(r["front_rps"] for r in rounds)
    direct_total = sum(r["direct_rps"] for r in rounds)
    return {
        "model": (workload or Workload.tiny()).model,
        "rounds": rounds,
        "front_over_direct": round(front_total / max(direct_total, 1e-9), 3),
        "share": _share(shares),
        "single_grpc_connection_rps": round(single, 1),
        "single_grpc_connection_share": _share(single_shares),
        "front_p99_ms": round(float(np.percentile(front_latencies, 99)), 2) if front_latencies else None,
        "front_p50_ms": round(float(np.percentile(front_latencies, 50)), 2) if front_latencies else None,
        "direct_p99_ms": round(float(np.percentile(direct_latencies, 99)), 2) if direct_latencies else None,
        "single_connection_p99_ms": round(float(np.percentile(latencies, 99)), 2) if latencies else None,
    }


def scenario_spread(fleet: Any, config: StudyConfig) -> dict[str, Any]:
    """Each replica's share of uniform requests (the tiny model: every request costs the same, so an even share is
    the expectation): 4 gRPC (own channels) + 4 HTTP workers, then 6 workers on one gRPC channel."""
    workers = [("grpc", "plain")] * 4 + [("http", "plain")] * 4
    before = _sent_by_replica(fleet)
    _measure(
        lambda: FleetLoad({"http": fleet.http_url, "grpc": fleet.grpc_url}, workers, shared_grpc_channel=False),
        config.round_s,
    )
    after = _sent_by_replica(fleet)
    mixed = {name: after[name] - before.get(name, 0) for name in fleet.replicas}
    before = _sent_by_replica(fleet, ("triton_grpc",))
    _measure(lambda: FleetLoad({"grpc": fleet.grpc_url}, [("grpc", "plain")] * 6), config.round_s)
    after = _sent_by_replica(fleet, ("triton_grpc",))
    single = {name: after[name] - before.get(name, 0) for name in fleet.replicas}
    return {"model": MODEL, "share": _share(mixed), "single_grpc_connection_share": _share(single)}


def _share(counts: dict[str, int]) -> dict[str, Any]:
    total = sum(counts.values()) or 1
    even = 1 / max(1, len(counts))
    return {
        name: {"requests": n, "share": round(n / total, 3), "vs_even": f"{(n / total - even) / even:+.1%}"}
        for name, n in sorted(counts.items())
    }

"""The fleet's model versions: serve a version on a replica, rolling update, rollback, and a canary judged
against the other replicas (promote or roll back). A mixin of `deploy.fleet.fleet.Fleet`."""

from __future__ import annotations

import contextlib
import json
import re
import statistics
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tritonclient.http as httpclient

from tritonfleet.deploy.fleet.haproxy import HTTP_BACKEND
from tritonfleet.deploy.fleet.options import FULL_WEIGHT, CanaryPolicy, CanaryReport, FleetError, FleetOptions
from tritonfleet.deploy.fleet.replica_plan import ReplicaPlan, sync_replica_repository

if TYPE_CHECKING:
    from tritonfleet.deploy.fleet.processes import ReplicaProcess
    from tritonfleet.deploy.fleet.runtime_api import RuntimeApi


class RolloutMixin:
    """Versions and canaries; the replicas, the balancer's runtime API and the drain come from `Fleet`."""

    options: FleetOptions
    replicas: dict[str, ReplicaProcess]
    replica_plans: dict[str, ReplicaPlan]
    versions: dict[str, list[str]]
    canaries: list[CanaryReport]
    _ops_lock: threading.Lock

    if TYPE_CHECKING:

        @property
        def api(self) -> RuntimeApi: ...
        def drain(self, name: str, wait: bool = True) -> None: ...
        def undrain(self, name: str) -> None: ...
        def _replica(self, name: str) -> ReplicaProcess: ...
        def _wait_in_rotation(self, names: list[str], timeout_s: float) -> None: ...
        def _wait_checked_up(self, name: str, timeout_s: float) -> None: ...
        def _log(self, event: str, **fields: Any) -> None: ...

    # -- versions ----------------------------------------------------------------------------------------------------
    def serve_version(self, name: str, model: str, version: str) -> None:
        """Load `model` version `version` on one replica (its only served version) and wait until it is ready."""
        self._check_version_dir(model, version)
        replica = self._replica(name)
        if name in self.replica_plans:  # its shadow repository links the new version directory
            sync_replica_repository(Path(self.options.model_repository), Path(replica.model_repository))
        client = httpclient.InferenceServerClient(
            f"{replica.host}:{replica.http_port}", connection_timeout=60, network_timeout=300
        )
        try:
            config = client.get_model_config(model)
            config["version_policy"] = {"specific": {"versions": [int(version)]}}
            client.load_model(model, config=json.dumps(config))
            deadline = time.monotonic() + self.options.startup_timeout_s
            while not client.is_model_ready(model, version):
                if time.monotonic() > deadline:
                    raise FleetError(f"{model} version {version} not ready on {name}")
                time.sleep(0.1)
        finally:
            client.close()

    def served_version(self, model: str) -> str | None:
        history = self.versions.get(model)
        if history:
            return history[-1]
        return self._initial_version(model)

    def rolling_update(self, model: str, version: str, replicas: list[str] | None = None) -> None:
        """One replica at a time: drain, serve `version`, ready, undrain (back in rotation before the next)."""
        self._check_version_dir(model, version)
        with self._ops_lock:
            self._rolling_update(model, version, replicas)

    def _rolling_update(self, model: str, version: str, replicas: list[str] | None = None) -> None:
        previous = self.served_version(model)
        for name in replicas if replicas is not None else list(self.replicas):
            self.drain(name)
            try:
                self.serve_version(name, model, version)
            finally:
                self.undrain(name)
            self._wait_in_rotation([name], timeout_s=30)
            self._log("updated", replica=name, model=model, version=version)
        history = self.versions.setdefault(model, [previous] if previous else [])
        if replicas is None and (not history or history[-1] != version):
            history.append(version)

    def rollback(self, model: str) -> str:
        """Serve the version that was served before the last update, fleet-wide (rolling). Returns it."""
        history = self.versions.get(model, [])
        if len(history) < 2:
            raise FleetError(f"no earlier version of {model} to roll back to")
        previous = history[-2]
        with self._ops_lock:
            self._rolling_update(model, previous)
            history = self.versions[model]
            del history[-2:]
            history.append(previous)
        self._log("rolled back", model=model, version=previous)
        return previous

    # -- canary ------------------------------------------------------------------------------------------------------
    def canary(
        self, model: str, version: str, weight_percent: float, policy: CanaryPolicy | None = None
    ) -> CanaryReport:
        """Put `version` on one replica with `weight_percent` of the traffic, compare, then promote or roll back."""
        policy = policy or self.options.canary
        self._check_version_dir(model, version)
        if not 0 < weight_percent < 100:
            raise FleetError(f"--canary-weight must be in (0, 100) percent, got {weight_percent}")
        with self._ops_lock:
            names = list(self.replicas)
            if len(names) < 2:
                raise FleetError("a canary needs at least 2 replicas (one canary, one to compare with)")
            previous = self.served_version(model) or ""
            canary_name, rest = names[-1], names[:-1]
            weight = max(1, min(256, round(weight_percent * FULL_WEIGHT * len(rest) / (100 - weight_percent))))
            report = CanaryReport(model, version, previous, canary_name, weight)
            self.canaries.append(report)
            started = time.monotonic()
            self.drain(canary_name)
            try:
                self.serve_version(canary_name, model, version)
                self.api.set_weight(canary_name, weight)
                # Judged from its first request on: checks passing while still drained, counters read before undrain.
                self._wait_checked_up(canary_name, timeout_s=30)
                baseline = {name: self._counts(name, model) for name in names}
            finally:
                self.undrain(canary_name)
            window_start = time.monotonic()
            self._log("canary started", replica=canary_name, model=model, version=version, weight=weight)
            while True:
                time.sleep(policy.poll_s)
                decision, reason, figures = self._judge(model, canary_name, rest, baseline, window_start, policy)
                report.figures = figures
                if decision:
                    break
            report.decision, report.reason = decision, reason
            self._log(f"canary {decision}", replica=canary_name, model=model, version=version, reason=reason, **figures)
            if decision == "rollback":
                self.drain(canary_name)
                try:
                    if previous:
                        self.serve_version(canary_name, model, previous)
                    self.api.set_weight(canary_name, FULL_WEIGHT)
                finally:
                    self.undrain(canary_name)
            else:
                self.api.set_weight(canary_name, FULL_WEIGHT)
                self._rolling_update(model, version, rest)
                history = self.versions.setdefault(model, [previous] if previous else [])
                history.append(version)
            report.seconds = round(time.monotonic() - started, 2)
            return report

    def _judge(
        self,
        model: str,
        canary: str,
        rest: list[str],
        baseline: dict[str, tuple[int, int, int, int, float | None]],
        window_start: float,
        policy: CanaryPolicy,
    ) -> tuple[str, str, dict[str, Any]]:
        def delta(name: str) -> tuple[int, int, float | None]:
            # Errors as the balancer saw them (HTTP 5xx) or as Triton counted them (gRPC errors travel inside a 200,
            # and the Python-based backends' failures are counted as successes by Triton): the larger of the two.
            now, base = self._counts(name, model), baseline.get(name, (0, 0, 0, 0, None))
            triton_total = (now[0] - base[0]) + (now[1] - base[1])
            total = max(triton_total, now[2] - base[2])
            failed = min(total, max(now[1] - base[1], now[3] - base[3]))
            return total - failed, failed, now[4]

        canary_ok, canary_failed, canary_p99 = delta(canary)
        rest_figures = [delta(name) for name in rest]
        rest_ok = sum(f[0] for f in rest_figures)
        rest_failed = sum(f[1] for f in rest_figures)
        rest_p99s = [f[2] for f in rest_figures if f[2] is not None]
        rest_p99 = statistics.median(rest_p99s) if rest_p99s else None
        rest_total = rest_ok + rest_failed
        rest_ratio = error_ratio(rest_failed, rest_total)
        judged = CanaryFigures(
            canary_ok + canary_failed, canary_failed, canary_p99, rest_ratio, rest_p99, time.monotonic() - window_start
        )
        figures = {
            "canary_requests": judged.requests,
            "canary_failed": judged.failed,
            "canary_error_ratio": round(judged.error_ratio, 4),
            "rest_requests": rest_total,
            "rest_failed": rest_failed,
            "rest_error_ratio": round(rest_ratio, 4),
            "error_ratio_limit": round(policy.error_ratio_limit(rest_ratio), 4),
            "canary_p99_ms": None if canary_p99 is None else round(canary_p99 / 1000, 2),
            "rest_p99_ms": None if rest_p99 is None else round(rest_p99 / 1000, 2),
            "window_s": round(judged.elapsed_s, 1),
        }
        decision, reason = canary_decision(judged, policy, in_service=lambda: self._canary_in_service(canary))
        return decision, reason, figures

    def _canary_in_service(self, name: str) -> bool:
        rows = self.api.server_stats(name)
        row = rows.get(HTTP_BACKEND)
        return row is None or row.up

    def _counts(self, name: str, model: str) -> tuple[int, int, int, int, float | None]:
        """(Triton successes, Triton failures of `model`, balancer requests, balancer 5xx answers, p99 us or None)
        of one replica, from its Triton metrics and HAProxy's per-server counters."""
        replica = self._replica(name)
        rows = self.api.server_stats(name).values()
        sent, errors = sum(row.total for row in rows), sum(row.http_5xx for row in rows)
        try:
            with urllib.request.urlopen(f"http://{replica.host}:{replica.metrics_port}/metrics", timeout=5) as answer:
                text = answer.read().decode()
        except OSError:
            return 0, 0, sent, errors, None
        ok, failed, p99 = parse_triton_counts(text, model)
        return ok, failed, sent, errors, p99

    def _check_version_dir(self, model: str, version: str) -> None:
        if not str(version).isdigit():
            raise FleetError(f"a model version is a positive integer directory name, got {version!r}")
        path = Path(self.options.model_repository) / model / str(version)
        if not path.is_dir():
            raise FleetError(f"{path} does not exist: add the new version as a new directory first")

    def _initial_version(self, model: str) -> str | None:
        """The version the replicas serve now (asked from the first replica)."""
        for replica in list(self.replicas.values()):
            with contextlib.suppress(Exception):
                client = httpclient.InferenceServerClient(f"{replica.host}:{replica.http_port}")
                try:
                    versions = [
                        entry.get("version")
                        for entry in client.get_model_repository_index()
                        if entry.get("name") == model and entry.get("state") == "READY"
                    ]
                finally:
                    client.close()
                if versions:
                    return str(max(int(v) for v in versions if v))
        return None


@dataclass(frozen=True)
class CanaryFigures:
    """What a canary is judged on, counted from its first request: requests and failures, p99 (us, Triton's
    summary), the rest's error ratio and p99 (us, median of the other replicas'), seconds since the window opened."""

    requests: int
    failed: int
    p99_us: float | None
    rest_error_ratio: float
    rest_p99_us: float | None
    elapsed_s: float

    @property
    def error_ratio(self) -> float:
        return error_ratio(self.failed, self.requests)


def error_ratio(failed: int, requests: int) -> float:
    """Failed requests over all requests (0 without requests)."""
    return failed / requests if requests else 0.0


def canary_decision(
    figures: CanaryFigures, policy: CanaryPolicy, in_service: Callable[[], bool] = lambda: True
) -> tuple[str, str]:
    """("rollback" | "promote" | "" while still watching, the reason) under `policy` (see CanaryPolicy)."""
    ratio = figures.error_ratio
    ratio_limit = policy.error_ratio_limit(figures.rest_error_ratio)
    if ratio > ratio_limit and figures.failed >= policy.abort_failures:
        return "rollback", f"error ratio {ratio:.2%} > {ratio_limit:.2%} ({figures.failed} failed)"
    if not in_service():
        return "rollback", "the canary replica left the balancer's rotation"
    if figures.requests < policy.min_requests and figures.elapsed_s < policy.max_window_s:
        return "", ""
    if ratio > ratio_limit:
        return "rollback", f"error ratio {ratio:.2%} > {ratio_limit:.2%}"
    p99, rest_p99 = figures.p99_us, figures.rest_p99_us
    if (
        p99 is not None
        and rest_p99 is not None
        and p99 > policy.p99_factor * rest_p99
        and p99 - rest_p99 > policy.p99_slack_ms * 1000
    ):
        reason = f"p99 {p99 / 1000:.1f} ms > {policy.p99_factor} x {rest_p99 / 1000:.1f} ms (+{policy.p99_slack_ms} ms)"
        return "rollback", reason
    return "promote", f"error ratio {ratio:.2%} <= {ratio_limit:.2%}, p99 within {policy.p99_factor}x"


_METRIC_LINE = re.compile(
    r"^(nv_inference_request_(?:success|failure)|nv_inference_request_summary_us)\{([^}]*)\} (\S+)"
)


def parse_triton_counts(text: str, model: str) -> tuple[int, int, float | None]:
    """(successes, failures, p99 request latency in us or None) of `model`, all versions, from Triton's /metrics."""
    ok = failed = 0
    p99s = []
    for line in text.splitlines():
        match = _METRIC_LINE.match(line)
        if not match:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2)))
        if labels.get("model") != model:
            continue
        value = float(match.group(3))
        if match.group(1) == "nv_inference_request_success":
            ok += int(value)
        elif match.group(1) == "nv_inference_request_failure":
            failed += int(value)
        elif labels.get("quantile") == "0.99" and value == value:  # NaN when no request in the window
            p99s.append(value)
    return ok, failed, max(p99s) if p99s else None

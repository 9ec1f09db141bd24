"""Service-level objectives for a load-test run: p99 latency of served requests, error ratio, refusal ratio.

Refusals are back-pressure, not bugs, so they have their own budget: rejections (HTTP 503 / gRPC UNAVAILABLE:
Triton's queue said no) and expirations (a queue budget or the request's deadline ran out, so it was refused instead
of computed late). Errors are every other failure. A mixed run is judged on one traffic class (`traffic_class`,
e.g. "interactive": the summary's `by_class` entry), since bulk requests are expected to be slow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class SloPolicy:
    """Limits a run must stay within. `max_rejection_ratio=1.0` means rejections are reported but not judged."""

    p99_latency_ms: float = 2000.0
    max_failure_ratio: float = 0.01
    max_rejection_ratio: float = 1.0
    min_successes: int = 1

    def __post_init__(self) -> None:
        if self.p99_latency_ms <= 0:
            raise ValueError("p99 latency objective must be > 0 ms")
        for name in ("max_failure_ratio", "max_rejection_ratio"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]")


@dataclass(frozen=True)
class SloReport:
    requests: int
    successes: int
    errors: int
    rejections: int
    p99_latency_ms: float
    violations: list[str] = field(default_factory=list)
    expired: int = 0
    traffic_class: str | None = None

    @property
    def passed(self) -> bool:
        return not self.violations

    @property
    def failure_ratio(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def refusals(self) -> int:
        return self.rejections + self.expired

    @property
    def rejection_ratio(self) -> float:
        """Refused requests (rejected or expired) per request."""
        return self.refusals / self.requests if self.requests else 0.0


def evaluate_slo(summary: dict, policy: SloPolicy, traffic_class: str | None = None) -> SloReport:
    """Judge a run summary (the locustfile's --summary-json: requests, successes, errors, rejections, expired,
    latency_ms), or with `traffic_class` its `by_class[traffic_class]` entry (a class that sent nothing fails)."""
    scope = summary
    if traffic_class is not None:
        scope = summary.get("by_class", {}).get(traffic_class, {})
    requests = int(scope.get("requests", 0))
    successes = int(scope.get("successes", 0))
    errors = int(scope.get("errors", 0))
    rejections = int(scope.get("rejections", 0))
    expired = int(scope.get("expired", 0))
    p99 = float(scope.get("latency_ms", {}).get("p99", math.nan))
    report = SloReport(requests, successes, errors, rejections, p99, expired=expired, traffic_class=traffic_class)
    violations = report.violations
    who = f"{traffic_class} " if traffic_class else ""
    if successes < policy.min_successes:
        violations.append(f"only {successes} successful {who}requests (need >= {policy.min_successes})")
    if not math.isnan(p99) and p99 > policy.p99_latency_ms:
        violations.append(f"{who}p99 latency {p99:.1f} ms > objective {policy.p99_latency_ms:.1f} ms")
    if report.failure_ratio > policy.max_failure_ratio:
        violations.append(
            f"{who}failure ratio {report.failure_ratio:.4f} ({errors}/{requests}) > objective "
            f"{policy.max_failure_ratio:.4f}"
        )
    if report.rejection_ratio > policy.max_rejection_ratio:
        violations.append(
            f"{who}rejection ratio {report.rejection_ratio:.4f} ({report.refusals}/{requests}, {expired} expired) > "
            f"objective {policy.max_rejection_ratio:.4f}"
        )
    return report

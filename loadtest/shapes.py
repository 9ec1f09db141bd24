"""Load shapes as pure functions of elapsed time (unit-testable without Locust).

- none:  `peak_users` for the whole duration (Locust's plain -u/-r/-t behaviour).
- ramp:  linear from 1 user to `peak_users` over the first 80 % of the duration, then hold.
- spike: a baseline of a quarter of the peak; the middle fifth of the run jumps to `peak_users` at once.
- soak:  reach `peak_users` in the first 10 % of the duration, then hold it for the rest (long runs: leaks, drift).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SHAPES = ("none", "ramp", "spike", "soak")
SPIKE_SPAWN_RATE = 1000.0  # users per second: a spike arrives at once


@dataclass(frozen=True)
class ShapeSettings:
    shape: str
    duration_s: float
    peak_users: int
    spawn_rate: float

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"unknown load shape {self.shape!r}; choose one of {SHAPES}")
        if self.duration_s <= 0 or self.peak_users < 1 or self.spawn_rate <= 0:
            raise ValueError(f"load shape needs duration > 0, peak users >= 1, spawn rate > 0, got {self}")


def users_at(settings: ShapeSettings, elapsed_s: float) -> tuple[int, float] | None:
    """(user count, spawn rate) at `elapsed_s`; None once the duration is over (Locust then stops the test)."""
    if elapsed_s >= settings.duration_s:
        return None
    fraction = elapsed_s / settings.duration_s
    peak, rate = settings.peak_users, settings.spawn_rate
    if settings.shape == "none":
        return peak, rate
    if settings.shape == "ramp":
        users = 1 + (peak - 1) * min(1.0, fraction / 0.8)
        return max(1, math.floor(users)), max(rate, peak / (0.8 * settings.duration_s))
    if settings.shape == "spike":
        baseline = max(1, peak // 4)
        if 0.4 <= fraction < 0.6:
            return peak, SPIKE_SPAWN_RATE
        return baseline, SPIKE_SPAWN_RATE
    # soak
    users = peak * min(1.0, fraction / 0.1)
    return max(1, math.ceil(users)), max(rate, peak / max(0.1 * settings.duration_s, 1e-9))

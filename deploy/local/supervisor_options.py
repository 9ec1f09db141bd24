"""The self-healing supervisor's options, its inference probes and its records (`deploy.local.supervisor`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tritonfleet.contract.tensors import dtype_from_api

# Probe answers that mean "busy", not "broken": queue full (503) and rate limited (429).
OVERLOADED_STATUSES = frozenset({429, 503})


# -- configuration ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeInput:
    """One input of a probe request: its name, Triton API data type, shape and row-major values."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: tuple[Any, ...]

    def array(self) -> np.ndarray:
        return np.array(self.data, dtype=dtype_from_api(self.datatype)).reshape(self.shape)


@dataclass(frozen=True)
class InferenceProbe:
    """A real inference run periodically to catch a model that is loaded and has its stubs but does not answer.

    Attributes:
        model: model to call (an ensemble is fine).
        inputs: the request's inputs.
        repair_models: what to reload when the probe fails without naming the broken stub (a timeout); empty means
            the model itself, or for an ensemble its python-run composing models.
    """

    model: str
    inputs: tuple[ProbeInput, ...]
    repair_models: tuple[str, ...] = ()

    @classmethod
    def for_sequence_model(cls, model: str = "esm2", sequence: str = "MKTAYIAKQRQISFVKSHFSRQ") -> InferenceProbe:
        """A probe for a model with the ESM-2 `SEQUENCE` BYTES [1] input (docs/design.md)."""
        return cls(model, (ProbeInput("SEQUENCE", "BYTES", (1, 1), (sequence,)),))


@dataclass(frozen=True)
class SupervisorOptions:
    """How the supervisor watches and repairs.

    Attributes:
        poll_interval_s: period of the stub scan.
        confirm_scans: consecutive scans a stub must be missing before the model is repaired (guards against
            races with loads and unloads started by someone else).
        probes: inference probes (none by default: the stub scan alone needs no knowledge of the models).
        probe_interval_s: period of each probe.
        probe_timeout_s: a probe taking longer has failed (the model hangs).
        probe_failures_to_repair: consecutive probe failures before a repair.
        request_timeout_s: timeout of the supervisor's own status calls to Triton.
        load_timeout_s: timeout of one load call during a repair.
        max_repair_attempts: attempts per fault before the supervisor gives up on a model (readiness stays false).
        retry_backoff_s: pause after a failed repair attempt (doubled each time).
    """

    poll_interval_s: float = 0.1
    confirm_scans: int = 2
    probes: tuple[InferenceProbe, ...] = ()
    probe_interval_s: float = 1.0
    probe_timeout_s: float = 3.0
    probe_failures_to_repair: int = 2
    request_timeout_s: float = 5.0
    load_timeout_s: float = 300.0
    max_repair_attempts: int = 3
    retry_backoff_s: float = 1.0

    def __post_init__(self) -> None:
        if self.poll_interval_s <= 0 or self.probe_interval_s <= 0 or self.probe_timeout_s <= 0:
            raise ValueError("supervisor intervals and timeouts must be > 0")
        if self.confirm_scans < 1 or self.probe_failures_to_repair < 1 or self.max_repair_attempts < 1:
            raise ValueError("confirm_scans, probe_failures_to_repair and max_repair_attempts must be >= 1")


# -- records -----------------------------------------------------------------------------------------------------------


@dataclass
class Repair:
    """One repair: why, when (time.time() stamps), how long it took and whether the model came back."""

    model: str
    reason: str
    detected_at: float
    finished_at: float | None = None
    attempts: int = 0
    succeeded: bool = False
    error: str | None = None

    @property
    def duration_s(self) -> float | None:
        return None if self.finished_at is None else self.finished_at - self.detected_at


@dataclass(frozen=True)
class Fault:
    """A model found broken: why, and whether its remaining stubs must be killed before the unload (hung ones)."""

    model: str
    reason: str
    kill_stubs: bool = False


@dataclass
class _ProbeState:
    next_due: float = 0.0
    consecutive_failures: int = 0

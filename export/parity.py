"""Parity of exported models against the eager PyTorch module."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from tritonfleet.export.recipe import ParityCase, TensorSpec

logger = logging.getLogger(__name__)

# Max abs difference allowed per precision (Optimum's ONNX validation uses 1e-4 for ESM in fp32).
TOLERANCES: dict[str, float] = {"float32": 1e-4, "float16": 2e-2}

Runner = Callable[..., tuple[np.ndarray, ...]]


class ParityError(AssertionError):
    """An exported model disagrees with eager PyTorch beyond the tolerance."""


@dataclass(frozen=True)
class ParityResult:
    """Max abs difference of every output over every case."""

    variant: str
    max_abs_diff: dict[str, float]
    tolerance: float
    cases: int

    @property
    def worst(self) -> float:
        return max(self.max_abs_diff.values())

    @property
    def passed(self) -> bool:
        return self.worst <= self.tolerance

    def describe(self) -> str:
        diffs = ", ".join(f"{name} {diff:.2e}" for name, diff in self.max_abs_diff.items())
        verdict = "OK" if self.passed else "FAIL"
        cases = f"{self.cases} cases (tolerance {self.tolerance:g})"
        return f"parity {self.variant}: max abs diff {diffs} over {cases} {verdict}"


def check_parity(
    variant: str,
    reference: Runner,
    candidate: Runner,
    cases: Sequence[ParityCase],
    outputs: Sequence[TensorSpec],
    tolerance: float | None = None,
) -> ParityResult:
    """Runs both on every case and compares outputs; raises ParityError above the tolerance.

    Args:
        variant: a label for messages, e.g. "onnx".
        reference: eager model as numpy -> numpy.
        candidate: exported model as numpy -> numpy.
        cases: input sets.
        outputs: output specs (names, dtypes) in output order.
        tolerance: max abs diff; defaults to TOLERANCES of the first output's dtype.
    """
    tolerance = TOLERANCES[outputs[0].dtype] if tolerance is None else tolerance
    worst = {spec.name: 0.0 for spec in outputs}
    for case in cases:
        expected = reference(*case.inputs)
        actual = candidate(*case.inputs)
        for spec, want, got in zip(outputs, expected, actual):
            if want.shape != got.shape:
                raise ParityError(f"{variant} {spec.name} [{case.label}]: shape {got.shape} != eager {want.shape}")
            if not np.all(np.isfinite(got)):
                raise ParityError(f"{variant} {spec.name} [{case.label}]: non-finite values")
            diff = float(np.max(np.abs(want.astype(np.float64) - got.astype(np.float64)))) if want.size else 0.0
            worst[spec.name] = max(worst[spec.name], diff)
        logger.debug("parity %s [%s]: %s", variant, case.label, worst)
    result = ParityResult(variant, worst, tolerance, len(cases))
    logger.info(result.describe())
    if not result.passed:
        raise ParityError(result.describe())
    return result


def eager_runner(module) -> Runner:
    """The eager torch module as numpy -> numpy (CPU)."""
    import torch

    def run(*inputs: np.ndarray) -> tuple[np.ndarray, ...]:
        with torch.no_grad():
            outputs = module(*(torch.from_numpy(array) for array in inputs))
        return tuple(output.numpy() for output in outputs)

    return run

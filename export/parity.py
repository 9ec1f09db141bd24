"""Parity of exported models against the eager PyTorch module."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from tritonfleet.contract.tensors import TensorSpec
from tritonfleet.export.signature import ExportError, Sample

logger = logging.getLogger(__name__)

# (absolute, relative) tolerance per output dtype: |exported - eager| <= abs + rel * |eager| (numpy.isclose).
# Optimum's ONNX validation uses 1e-4 absolute for ESM in fp32; integer and bool outputs must match exactly.
TOLERANCES: dict[str, tuple[float, float]] = {
    "float64": (1e-6, 1e-6),
    "float32": (1e-4, 1e-4),
    "float16": (2e-2, 1e-2),
}
EXACT = (0.0, 0.0)

Runner = Callable[..., tuple[np.ndarray, ...]]


class ParityError(ExportError, AssertionError):
    """An exported model disagrees with eager PyTorch beyond the tolerance."""


class QualityGateError(ParityError):
    """A variant fails a quality gate: a reduced-precision one (int8, bf16) below its similarity to eager fp32, or
    an fp32/int8 one whose outputs depend on the batch (InvarianceGateError)."""


class InvarianceGateError(QualityGateError):
    """A variant that must be batch invariant (fp32, int8) gives a sequence other outputs inside a batch than
    alone, beyond INVARIANCE_TOLERANCE."""


@dataclass(frozen=True)
class ParityCase:
    """One set of inputs (numpy, in input order) on which exported and eager outputs must agree."""

    label: str
    inputs: Sample


@dataclass(frozen=True)
class ParityResult:
    """Max abs difference of every output over every case, and the outputs beyond their tolerance."""

    variant: str
    max_abs_diff: dict[str, float]
    tolerances: dict[str, tuple[float, float]]
    failures: dict[str, str]
    cases: int

    @property
    def worst(self) -> float:
        return max(self.max_abs_diff.values())

    @property
    def passed(self) -> bool:
        return not self.failures

    def describe(self) -> str:
        diffs = ", ".join(f"{name} {diff:.2e}" for name, diff in self.max_abs_diff.items())
        verdict = (
            "OK" if self.passed else "FAIL: " + "; ".join(f"{name} {text}" for name, text in self.failures.items())
        )
        return f"parity {self.variant}: max abs diff {diffs} over {self.cases} case(s) {verdict}"


def tolerance_for(dtype: str) -> tuple[float, float]:
    return TOLERANCES.get(dtype, EXACT)


def check_parity(
    variant: str, reference: Runner, candidate: Runner, cases: Sequence[ParityCase], outputs: Sequence[TensorSpec]
) -> ParityResult:
    """Runs both on every case and compares outputs; raises ParityError (with the figures) beyond the tolerance.

    Args:
        variant: a label for messages, e.g. "onnx".
        reference: eager model as numpy -> numpy.
        candidate: exported model as numpy -> numpy.
        cases: input sets.
        outputs: output specs (names, dtypes) in output order; the tolerance follows each output's dtype.
    """
    worst = {spec.name: 0.0 for spec in outputs}
    tolerances = {spec.name: tolerance_for(spec.dtype) for spec in outputs}
    failures: dict[str, str] = {}
    for case in cases:
        expected = reference(*case.inputs)
        actual = candidate(*case.inputs)
        if len(actual) != len(outputs):
            raise ParityError(f"{variant} [{case.label}]: {len(actual)} outputs, eager has {len(outputs)}")
        for spec, want, got in zip(outputs, expected, actual):
            if want.shape != got.shape:
                raise ParityError(f"{variant} {spec.name} [{case.label}]: shape {got.shape} != eager {want.shape}")
            if np.isfinite(want).all() and not np.isfinite(got).all():
                raise ParityError(f"{variant} {spec.name} [{case.label}]: non-finite values where eager has none")
            if not want.size:
                continue
            difference = np.abs(want.astype(np.float64) - got.astype(np.float64))
            worst[spec.name] = max(worst[spec.name], float(np.max(difference)))
            absolute, relative = tolerances[spec.name]
            allowed = absolute + relative * np.abs(want.astype(np.float64))
            if spec.name not in failures and np.any(difference > allowed):
                where = np.unravel_index(int(np.argmax(difference - allowed)), difference.shape)
                failures[spec.name] = (
                    f"[{case.label}] differs at {tuple(map(int, where))}: exported {float(got[where]):.6g} vs eager "
                    f"{float(want[where]):.6g} (tolerance {absolute:g} + {relative:g}*|eager|)"
                )
        logger.debug("parity %s [%s]: %s", variant, case.label, worst)
    result = ParityResult(variant, worst, tolerances, failures, len(cases))
    logger.info(result.describe())
    if not result.passed:
        raise ParityError(result.describe())
    return result


# Reduced-precision variants (int8, bf16) differ from eager fp32 by design, so they are gated on similarity instead:
# the cosine between exported and eager vectors along the last axis, per row of a [batch, D] output (a pooled
# embedding: >= 0.999) and per position of a higher-rank output (per-token vectors: >= 0.99); rows that are all zero
# in eager (padding) are skipped. Non-float outputs must match exactly.
SIMILARITY_GATES = frozenset({"int8", "bf16"})
MIN_COSINE_POOLED = 0.999
MIN_COSINE_PER_TOKEN = 0.99


@dataclass(frozen=True)
class SimilarityResult:
    """The lowest cosine of every output over every case, against its threshold."""

    variant: str
    min_cosine: dict[str, float]
    thresholds: dict[str, float]
    cases: int

    @property
    def passed(self) -> bool:
        return all(self.min_cosine[name] >= self.thresholds[name] for name in self.min_cosine)

    def describe(self) -> str:
        figures = ", ".join(
            f"{name} {value:.5f}" + ("" if value >= self.thresholds[name] else f" < {self.thresholds[name]}")
            for name, value in self.min_cosine.items()
        )
        verdict = "OK" if self.passed else "REFUSED"
        return f"quality {self.variant}: min cosine vs eager fp32 {figures} over {self.cases} case(s) {verdict}"


def cosine_threshold(spec: TensorSpec) -> float:
    return MIN_COSINE_POOLED if len(spec.axes) <= 1 else MIN_COSINE_PER_TOKEN


def min_cosine(want: np.ndarray, got: np.ndarray) -> float:
    """The lowest cosine of matching vectors (last axis) of two arrays, skipping vectors that are zero in `want`."""
    want = want.astype(np.float64).reshape(-1, want.shape[-1] if want.ndim > 1 else want.size)
    got = got.astype(np.float64).reshape(want.shape)
    norms = np.linalg.norm(want, axis=1)
    keep = norms > 0
    if not keep.any():
        return 1.0 if not got.any() else 0.0
    dots = np.sum(want[keep] * got[keep], axis=1)
    return float(np.min(dots / (norms[keep] * np.maximum(np.linalg.norm(got[keep], axis=1), 1e-30))))


def check_similarity(
    variant: str, reference: Runner, candidate: Runner, cases: Sequence[ParityCase], outputs: Sequence[TensorSpec]
) -> SimilarityResult:
    """The similarity gate of a reduced-precision variant; raises ParityError (with the figures) when it fails."""
    lowest = {spec.name: 1.0 for spec in outputs}
    for case in cases:
        expected, actual = reference(*case.inputs), candidate(*case.inputs)
        for spec, want, got in zip(outputs, expected, actual, strict=True):
            if want.shape != got.shape:
                raise ParityError(f"{variant} {spec.name} [{case.label}]: shape {got.shape} != eager {want.shape}")
            if not np.isfinite(got).all():
                raise ParityError(f"{variant} {spec.name} [{case.label}]: non-finite values")
            if not np.issubdtype(want.dtype, np.floating):
                lowest[spec.name] = min(lowest[spec.name], 1.0 if np.array_equal(want, got) else 0.0)
            elif want.size:
                lowest[spec.name] = min(lowest[spec.name], min_cosine(want, got))
    result = SimilarityResult(variant, lowest, {spec.name: cosine_threshold(spec) for spec in outputs}, len(cases))
    logger.info(result.describe())
    if not result.passed:
        raise QualityGateError(
            f"{result.describe()}; export in fp32 (--precision fp32), or leave this format out (--formats)"
        )
    return result


# Batch invariance: a sample's outputs alone and inside a batch (with other samples, and padding where the recipe pads)
# agree within this max abs difference. fp32 and int8 (the CPU precisions; int8 with per-row activation scales,
# export.quantize) must meet it, or the export is refused like a variant below its cosine gate; bf16 and fp16 cannot
# (their kernels' rounding depends on the shapes), so their figure is reported and the variant marked not
# invariant: a response cache must never serve them (ExportReport.batch_invariant, config parameter
# `batch_invariant`).
INVARIANCE_TOLERANCE = 1e-5
INVARIANT_PRECISIONS = frozenset({"fp32", "int8"})


@dataclass(frozen=True)
class InvarianceCase:
    """A batch and some of its members run alone: `members` are (row in `batch`, the member's own inputs).

    A member's own inputs may be shorter than its row (a protein alone is padded to its own length, not to its
    batch's bucket): outputs are compared over the region both have (each axis cut to the shorter of the two)."""

    label: str
    batch: Sample
    members: tuple[tuple[int, Sample], ...]


def row_invariance_cases(cases: Sequence[ParityCase]) -> list[InvarianceCase]:
    """For any model whose batch rows are independent: every row of each parity case alone vs in its batch."""
    found = []
    for case in cases:
        rows = int(case.inputs[0].shape[0]) if case.inputs and case.inputs[0].ndim else 0
        if rows < 2:
            continue
        members = tuple((row, tuple(array[row : row + 1] for array in case.inputs)) for row in range(rows))
        found.append(InvarianceCase(f"{case.label}: each of {rows} rows alone", case.inputs, members))
    return found


@dataclass(frozen=True)
class InvarianceResult:
    """The largest difference between a member's outputs alone and inside its batch, per output."""

    variant: str
    max_abs_diff: dict[str, float]
    tolerance: float
    enforced: bool
    cases: int
    members: int

    @property
    def worst(self) -> float:
        return max(self.max_abs_diff.values(), default=0.0)

    @property
    def invariant(self) -> bool:
        return self.worst <= self.tolerance

    def describe(self) -> str:
        figures = ", ".join(f"{name} {diff:.2e}" for name, diff in self.max_abs_diff.items())
        if self.invariant:
            verdict = "OK"
        elif self.enforced:
            verdict = f"REFUSED (> {self.tolerance:g})"
        else:
            verdict = f"NOT INVARIANT (> {self.tolerance:g}; never served from a response cache)"
        return (
            f"batch invariance {self.variant}: max abs diff alone vs in a batch {figures} over {self.members} "
            f"member(s) of {self.cases} batch(es) {verdict}"
        )


def check_invariance(
    variant: str,
    candidate: Runner,
    cases: Sequence[InvarianceCase],
    outputs: Sequence[TensorSpec],
    enforced: bool = True,
    tolerance: float = INVARIANCE_TOLERANCE,
) -> InvarianceResult:
    """Runs every batch and its members alone; raises InvarianceGateError (with the figures) when `enforced` and a
    member's outputs differ by more than `tolerance` (max abs)."""
    worst = {spec.name: 0.0 for spec in outputs}
    members = 0
    alone_outputs: dict[tuple, tuple] = {}  # a sample that is a member of several batches runs alone once
    for case in cases:
        batched = candidate(*case.batch)
        for row, inputs in case.members:
            members += 1
            key = tuple((array.dtype.str, array.shape, array.tobytes()) for array in map(np.asarray, inputs))
            if key not in alone_outputs:
                alone_outputs[key] = candidate(*inputs)
            alone = alone_outputs[key]
            for spec, in_batch, by_itself in zip(outputs, batched, alone, strict=True):
                inside, own = np.asarray(in_batch)[row], np.asarray(by_itself)[0]
                if inside.ndim != own.ndim:
                    raise ParityError(f"{variant} {spec.name} [{case.label}]: rank differs alone vs in a batch")
                region = tuple(slice(0, min(a, b)) for a, b in zip(inside.shape, own.shape))
                inside, own = inside[region], own[region]
                if not inside.size:
                    continue
                if np.issubdtype(inside.dtype, np.floating) or np.issubdtype(own.dtype, np.floating):
                    difference = float(np.max(np.abs(inside.astype(np.float64) - own.astype(np.float64))))
                else:
                    difference = 0.0 if np.array_equal(inside, own) else float("inf")
                worst[spec.name] = max(worst[spec.name], difference)
    result = InvarianceResult(variant, worst, tolerance, enforced, len(cases), members)
    if result.invariant or not enforced:
        (logger.info if result.invariant else logger.warning)(result.describe())
        return result
    raise InvarianceGateError(
        f"{result.describe()}: this engine's outputs depend on the batch; export fp32 (--precision fp32), or "
        "leave this format out (--formats)"
    )


def as_outputs(result) -> tuple:
    """A forward result (one tensor, or a tuple/list of them) as a tuple."""
    return tuple(result) if isinstance(result, (tuple, list)) else (result,)


def eager_runner(module, inference_mode: bool = False) -> Runner:
    """The eager torch module as numpy -> numpy (CPU), under torch.no_grad (or torch.inference_mode). Exported files
    run through the engine layer (`tritonfleet.contract.engines.open_engine`), which is a Runner too."""
    import torch

    def run(*inputs: np.ndarray) -> tuple[np.ndarray, ...]:
        with torch.inference_mode() if inference_mode else torch.no_grad():
            outputs = as_outputs(module(*(torch.from_numpy(array) for array in inputs)))
        return tuple(output.numpy() for output in outputs)

    return run

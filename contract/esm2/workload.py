"""The ESM-2 workload: a protein length mix, synthetic sequences with Swiss-Prot residue frequencies, and the request
builder (sequences -> a served model's named inputs by role; answers -> results by role).

Length mix ("swissprot"): the bin weights approximate the sequence-length histogram of UniProtKB/Swiss-Prot
("Repartition of the sequences by length", https://web.expasy.org/docs/relnotes/relstat.html; mean ~360 aa,
median ~300 aa, a few percent longer than 1000 aa). They are rounded to half a percent from that page and should be
refreshed from the current release if exact figures matter. Sequences longer than ESM-2's 1022-residue crop are
folded into the last bin (fair-esm's extract.py truncates them to 1022 as well).

Residues are drawn independently from the Swiss-Prot amino-acid composition (same relstat page, "Amino acid
composition"), with a fixed seed so every tool and every run sees the same sequences.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tritonfleet.contract import esm2_tokens as esm_tokenizer
from tritonfleet.contract.pipeline import ModelRoles, Role

DEFAULT_SEED = 20240601

# Swiss-Prot amino-acid composition in percent (relstat). Sums to 100.0 up to rounding; normalised on use.
SWISSPROT_COMPOSITION: dict[str, float] = {
    "A": 8.25, "R": 5.53, "N": 4.06, "D": 5.45, "C": 1.37, "Q": 3.93, "E": 6.75, "G": 7.07, "H": 2.27, "I": 5.96,
    "L": 9.66, "K": 5.84, "M": 2.42, "F": 3.86, "P": 4.70, "S": 6.56, "T": 5.34, "W": 1.08, "Y": 2.92, "V": 6.87,
}  # fmt: skip


@dataclass(frozen=True)
class LengthBin:
    """Sequences of `low..high` residues (inclusive) drawn with relative `weight`."""

    low: int
    high: int
    weight: float


@dataclass(frozen=True)
class LengthMix:
    """A named distribution of protein lengths (residues), sampled uniformly inside each weighted bin."""

    name: str
    bins: tuple[LengthBin, ...]
    source: str = ""

    def __post_init__(self) -> None:
        if not self.bins:
            raise ValueError(f"length mix {self.name!r} has no bins")
        for length_bin in self.bins:
            if not 1 <= length_bin.low <= length_bin.high <= esm_tokenizer.MAX_RESIDUES:
                raise ValueError(f"length mix {self.name!r}: bad bin {length_bin} (1..{esm_tokenizer.MAX_RESIDUES})")
            if length_bin.weight <= 0:
                raise ValueError(f"length mix {self.name!r}: bin weights must be positive, got {length_bin}")

    @property
    def probabilities(self) -> np.ndarray:
        weights = np.array([length_bin.weight for length_bin in self.bins], dtype=np.float64)
        return weights / weights.sum()

    def sample(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """`count` lengths (int64) drawn from the mix."""
        choices = rng.choice(len(self.bins), size=count, p=self.probabilities)
        lows = np.array([b.low for b in self.bins])[choices]
        highs = np.array([b.high for b in self.bins])[choices]
        return rng.integers(lows, highs + 1, dtype=np.int64)


_SWISSPROT_BINS = (
    (8, 50, 3.5), (51, 100, 7.5), (101, 150, 9.5), (151, 200, 9.5), (201, 250, 10.0), (251, 300, 10.0),
    (301, 350, 9.0), (351, 400, 8.0), (401, 450, 7.0), (451, 500, 5.5), (501, 600, 7.5), (601, 700, 4.5),
    (701, 800, 3.0), (801, 900, 2.0), (901, 1022, 3.5),
)  # fmt: skip

LENGTH_MIXES: dict[str, LengthMix] = {
    "swissprot": LengthMix(
        "swissprot",
        tuple(LengthBin(*row) for row in _SWISSPROT_BINS),
        "UniProtKB/Swiss-Prot length histogram (relstat), > 1022 aa folded into the last bin",
    ),
    # A short mix for CI smoke runs on small CPUs: same shape below 300 residues, nothing longer.
    "short": LengthMix(
        "short",
        tuple(LengthBin(*row) for row in _SWISSPROT_BINS[:6]),
        "the Swiss-Prot bins up to 300 aa (CI smoke)",
    ),
    # Interactive traffic in the mixed scenario: single short proteins (one 128-token bucket).
    "interactive": LengthMix(
        "interactive",
        tuple(LengthBin(*row) for row in _SWISSPROT_BINS[:2]),
        "the Swiss-Prot bins up to 100 aa (interactive requests of the mixed scenario)",
    ),
    # Bulk traffic in the mixed scenario: proteins from the Swiss-Prot median up to the 480-token bucket (longer
    # ones only slow the run on small CPUs); bulk users send them length-sorted, as embed-fasta does, so requests
    # fall in different buckets and take different times.
    "long": LengthMix(
        "long",
        (
            LengthBin(251, 300, 10.0),
            LengthBin(301, 350, 9.0),
            LengthBin(351, 400, 8.0),
            LengthBin(401, 450, 7.0),
            LengthBin(451, 478, 3.0),
        ),
        "Swiss-Prot bins 251-478 aa (bulk requests of the mixed scenario; token buckets 256 to 480)",
    ),  # fmt: skip
}

_FIXED_MIX = re.compile(r"^fixed[-:](\d+)$")


def length_mix(name: str) -> LengthMix:
    """A mix by name: one of LENGTH_MIXES, or `fixed-N` (every sequence has N residues)."""
    if name in LENGTH_MIXES:
        return LENGTH_MIXES[name]
    match = _FIXED_MIX.match(name)
    if match:
        length = int(match.group(1))
        return LengthMix(name, (LengthBin(length, length, 1.0),), f"every sequence {length} aa")
    raise ValueError(f"unknown length mix {name!r}; choose one of {sorted(LENGTH_MIXES)} or fixed-N")


def generate_sequences(count: int, mix: LengthMix | str = "swissprot", seed: int = DEFAULT_SEED) -> list[str]:
    """`count` synthetic protein sequences with lengths from `mix` and Swiss-Prot residue frequencies."""
    if count < 0:
        raise ValueError("count must be >= 0")
    mix = length_mix(mix) if isinstance(mix, str) else mix
    rng = np.random.default_rng(seed)
    lengths = mix.sample(count, rng)
    residues = np.array(list(SWISSPROT_COMPOSITION), dtype="<U1")
    frequencies = np.array(list(SWISSPROT_COMPOSITION.values()))
    frequencies = frequencies / frequencies.sum()
    drawn = rng.choice(len(residues), size=int(lengths.sum()), p=frequencies)
    letters = residues[drawn]
    sequences, start = [], 0
    for length in lengths:
        sequences.append("".join(letters[start : start + length]))
        start += int(length)
    return sequences


def sequence_array(texts: Sequence[str]) -> np.ndarray:
    """The BYTES tensor [N, 1] of a SEQUENCES input: one ASCII sequence per row."""
    array = np.empty((len(texts), 1), dtype=np.object_)  # BYTES must be np.object_ (keeps NULs)
    for row, text in enumerate(texts):
        array[row, 0] = text.encode("ascii")
    return array


@dataclass(frozen=True)
class Esm2Workload:
    """Sample proteins for load tests and benchmarks (`Workload`)."""

    default_mix: str = "swissprot"

    def items(self, count: int, mix: str = "swissprot", seed: int = DEFAULT_SEED) -> list[str]:
        return generate_sequences(count, mix, seed)


@dataclass(frozen=True)
class Esm2Requests:
    """Proteins -> the inputs of any ESM-2 model by its roles (`RequestBuilder`): SEQUENCES [N, 1] BYTES, or
    TOKEN_IDS + ATTENTION_MASK [N, bucket of the longest] int64; answers -> {role: array}."""

    def inputs(
        self,
        model: ModelRoles,
        items: Sequence[str],
        buckets: Sequence[int] | None = esm_tokenizer.DEFAULT_BUCKETS,
        **_: Any,
    ) -> dict[str, np.ndarray]:
        if model.has_input(Role.SEQUENCES):
            return {model.input(Role.SEQUENCES): sequence_array(items)}
        input_ids, attention_mask = esm_tokenizer.encode_batch(list(items), buckets)
        return {model.input(Role.TOKEN_IDS): input_ids, model.input(Role.ATTENTION_MASK): attention_mask}

    def results(self, model: ModelRoles, answers: Mapping[str, np.ndarray]) -> dict[Role, np.ndarray]:
        return {tensor.role: answers[tensor.name] for tensor in model.outputs if tensor.name in answers}

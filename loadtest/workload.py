"""The protein workload every load tool here shares: a length mix, synthetic sequences, and per-model requests.

Length mix ("swissprot"): the bin weights approximate the sequence-length histogram of UniProtKB/Swiss-Prot
("Repartition of the sequences by length", https://web.expasy.org/docs/relnotes/relstat.html; mean ~360 aa,
median ~300 aa, a few percent longer than 1000 aa). They are rounded to half a percent from that page and should be
refreshed from the current release if exact figures matter. Sequences longer than ESM-2's 1022-residue crop are
folded into the last bin (fair-esm's extract.py truncates them to 1022 as well).

Residues are drawn independently from the Swiss-Prot amino-acid composition (same relstat page, "Amino acid
composition"), with a fixed seed so every tool and every run sees the same sequences.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tritonfleet.client.core import sequence_array
from tritonfleet.client.errors import QUEUE_TIMEOUT_MESSAGE
from tritonfleet.contract import esm2_tokens as esm_tokenizer
from tritonfleet.contract.model_config import (
    CONFIG_FILENAME,
    ServedModel,
    model_configs,
    read_config,
    string_parameters,
)

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


def token_length_waste(sequences: Sequence[str], buckets: Sequence[int] = esm_tokenizer.DEFAULT_BUCKETS) -> float:
    """Fraction of padded tokens when each sequence is padded alone to its bucket (what one request carries)."""
    real = sum(len(s) + esm_tokenizer.SPECIAL_TOKENS_PER_SEQUENCE for s in sequences)
    padded = sum(esm_tokenizer.bucket_for(len(s) + esm_tokenizer.SPECIAL_TOKENS_PER_SEQUENCE, buckets)
                 for s in sequences)  # fmt: skip
    return 1.0 - real / padded if padded else 0.0


# ---------------------------------------------------------------------------------------------------------------
# Model targets: what one request to a model carries, decided from its config (tensor names are the contract).
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelTarget(ServedModel):
    """A served model (the contract's `ServedModel`) as the load tools address it: either a BYTES sequence input
    or token-id inputs; any model of a repository, not only the embedding models the client accepts."""

    @property
    def takes_sequences(self) -> bool:
        return any(spec.api_dtype == "BYTES" for spec in self.inputs)

    @property
    def ids_input(self) -> str:
        return next(spec.name for spec in self.inputs if "MASK" not in spec.name.upper())

    @property
    def mask_input(self) -> str:
        return next(spec.name for spec in self.inputs if "MASK" in spec.name.upper())

    @property
    def sequence_input(self) -> str:
        return next(spec.name for spec in self.inputs if spec.api_dtype == "BYTES")

    @property
    def embedding_output(self) -> str:
        """The pooled per-sequence output (EMBEDDING, EMBEDDING__0, ...); the first output otherwise."""
        names = [spec.name for spec in self.outputs]
        pooled = [name for name in names if name.upper().startswith("EMBEDDING")]
        return (pooled or names)[0]

    def output_names(self, which: str = "embedding") -> list[str]:
        """`embedding`: only the pooled output; `all`: every output."""
        if which == "all":
            return [spec.name for spec in self.outputs]
        if which == "embedding":
            return [self.embedding_output]
        raise ValueError(f"outputs must be 'embedding' or 'all', got {which!r}")


def repository_targets(repository: Path) -> dict[str, ModelTarget]:
    """Every model of a repository (directories with a config.pbtxt), by name, in name order."""
    targets = {}
    for folder_name, config in model_configs(repository):
        if not config.name:
            config.name = folder_name
        targets[config.name] = ModelTarget.from_config(config)
    return targets


def tokenize(
    sequence: str, buckets: Sequence[int] | None = esm_tokenizer.DEFAULT_BUCKETS
) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask) for one sequence, each int64 of shape [T] padded to its length bucket."""
    input_ids, attention_mask = esm_tokenizer.encode(sequence, buckets)
    return input_ids[0], attention_mask[0]


def buckets_from_repository(repository: Path | None) -> tuple[int, ...]:
    """The tokenizer's length buckets from esm2_tokenizer's config parameters when set there, else the defaults."""
    if repository is not None:
        config_path = Path(repository) / "esm2_tokenizer" / CONFIG_FILENAME
        if config_path.is_file():
            return esm_tokenizer.TokenizerSettings.from_parameters(string_parameters(read_config(config_path))).buckets
    return esm_tokenizer.DEFAULT_BUCKETS


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation; NaN for no values."""
    if len(values) == 0:
        return math.nan
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


# ---------------------------------------------------------------------------------------------------------------
# Requests: numpy inputs for one inference, shared by Locust users, the benchmark and perf_analyzer data.
# ---------------------------------------------------------------------------------------------------------------

_REJECTION_STATUSES = frozenset({"503", "StatusCode.UNAVAILABLE", "UNAVAILABLE"})
_EXPIRY_STATUSES = frozenset({"StatusCode.DEADLINE_EXCEEDED", "DEADLINE_EXCEEDED"})


@dataclass(frozen=True)
class PreparedRequest:
    """The numpy inputs of one request (batch dimension first) and how many sequences / residues it carries."""

    inputs: dict[str, np.ndarray]
    sequences: int
    residues: int


def prepare_request(
    target: ModelTarget, sequences: Sequence[str], buckets: Sequence[int] = esm_tokenizer.DEFAULT_BUCKETS
) -> PreparedRequest:
    """Inputs carrying `sequences` as one batch: BYTES [N, 1], or token ids / mask [N, bucket of the longest]."""
    residues = sum(len(sequence) for sequence in sequences)
    if target.takes_sequences:
        return PreparedRequest({target.sequence_input: sequence_array(sequences)}, len(sequences), residues)
    input_ids, attention_mask = esm_tokenizer.encode_batch(list(sequences), buckets)
    return PreparedRequest({target.ids_input: input_ids, target.mask_input: attention_mask}, len(sequences), residues)


def is_rejection(error: BaseException) -> bool:
    """True for Triton's explicit back-pressure answers: HTTP 503, gRPC UNAVAILABLE, or "Exceeds maximum queue size"
    (a queue-wait timeout, "Request timeout expired", is one too)."""
    status, message = _status_and_message(error)
    return status in _REJECTION_STATUSES or "exceeds maximum queue size" in message.lower()


def is_expiry(error: BaseException) -> bool:
    """True when a request ran out of time: Triton refused it after waiting past its timeout in a queue ("Request
    timeout expired": the level's budget or the client's deadline) or the client's call deadline cut it."""
    status, message = _status_and_message(error)
    return QUEUE_TIMEOUT_MESSAGE.lower() in message.lower() or status in _EXPIRY_STATUSES


def refusal_kind(error: BaseException) -> str | None:
    """How a failed request was refused: "expired" (deadline / queue budget), "rejected" (queue full, server
    unavailable), or None for any other error."""
    if is_expiry(error):
        return "expired"
    return "rejected" if is_rejection(error) else None


def _status_and_message(error: BaseException) -> tuple[str, str]:
    status = error.status() if callable(getattr(error, "status", None)) else getattr(error, "status_code", None)
    message = error.message() if callable(getattr(error, "message", None)) else str(error)
    return str(status), str(message)

"""The workload every load tool here shares, asked of the pipeline: sample sequences (ESM-2's length mixes and
generator live in `tritonfleet.contract.esm2.workload`), per-model targets whose tensors are found by role
(`tritonfleet.contract.pipeline`), and requests built by the pipeline's request builder.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from tritonfleet.client.errors import QUEUE_TIMEOUT_MESSAGE
from tritonfleet.contract import esm2_tokens as esm_tokenizer
from tritonfleet.contract.esm2.pipeline import ESM2, TOKENIZER_MODEL
from tritonfleet.contract.esm2.workload import (  # noqa: F401 - the load tools' names for the ESM-2 workload
    DEFAULT_SEED,
    LENGTH_MIXES,
    SWISSPROT_COMPOSITION,
    LengthBin,
    LengthMix,
    generate_sequences,
    length_mix,
    sequence_array,
)
from tritonfleet.contract.model_config import (
    CONFIG_FILENAME,
    ServedModel,
    model_configs,
    read_config,
    string_parameters,
)
from tritonfleet.contract.pipeline import ModelRoles, Role, pipeline_for


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
    """A served model (the contract's `ServedModel`) as the load tools address it: its tensors found by role from
    the pipeline declaring them (`tritonfleet.contract.pipeline.roles_of`), never guessed from their names; any
    model of a repository, not only the embedding models the client accepts."""

    @cached_property
    def roles(self) -> ModelRoles:
        pipeline = pipeline_for(self)
        if pipeline is None:
            names = ", ".join(spec.name for spec in (*self.inputs, *self.outputs))
            raise KeyError(f"no installed pipeline declares the tensors of model {self.name!r} ({names})")
        return pipeline.roles(self)

    @property
    def takes_sequences(self) -> bool:
        return self.roles.has_input(Role.SEQUENCES)

    @property
    def ids_input(self) -> str:
        return self.roles.input(Role.TOKEN_IDS)

    @property
    def mask_input(self) -> str:
        return self.roles.input(Role.ATTENTION_MASK)

    @property
    def sequence_input(self) -> str:
        return self.roles.input(Role.SEQUENCES)

    @property
    def embedding_output(self) -> str:
        """The pooled per-sequence output (EMBEDDING, EMBEDDING__0, ...); the first output for models without one
        (the tokenizer)."""
        if self.roles.has_output(Role.EMBEDDING):
            return self.roles.output(Role.EMBEDDING)
        return self.outputs[0].name

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
    """The tokenizer's length buckets from its config parameters when set there, else the defaults."""
    if repository is not None:
        config_path = Path(repository) / TOKENIZER_MODEL / CONFIG_FILENAME
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
    """Inputs carrying `sequences` as one batch, built by the target's pipeline: BYTES [N, 1], or token ids / mask
    [N, bucket of the longest]."""
    residues = sum(len(sequence) for sequence in sequences)
    # A bare network (export torch with --input-roles) has no request builder: it gets the load tools' proteins,
    # tokenized by the ESM-2 builder for its TOKEN_IDS / ATTENTION_MASK roles.
    builder = pipeline_for(target).requests or ESM2.requests
    return PreparedRequest(builder.inputs(target.roles, list(sequences), buckets=buckets), len(sequences), residues)


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

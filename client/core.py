"""Transport-independent logic shared by the sync and asyncio clients: validate, plan batches, build, reassemble.

Batches are planned by sorting sequences by length (stable) and cutting the order into groups of at most
`max_batch_size` and, when the model advertises an `execution_token_budget`, at most that many padded tokens
(sequences x padded length of the longest, see `padded_tokens`), so similar lengths share a padding bucket and no
request holds a server instance longer than the server's plan allows; results are scattered back to input order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tritonfleet.client.errors import InvalidSequenceError, UnsupportedModelError
from tritonfleet.client.model import ModelSpec
from tritonfleet.contract import esm2_tokens as tokenizer
from tritonfleet.contract.esm2.workload import sequence_array  # noqa: F401 - the client's name for it


@dataclass(frozen=True)
class Batch:
    """One request's worth of sequences.

    Attributes:
        number: 1-based position among the call's batches (for messages).
        indices: positions of its sequences in the caller's input.
    """

    number: int
    indices: tuple[int, ...]

    def describe(self, total_batches: int) -> str:
        shown = ", ".join(str(i) for i in self.indices[:8]) + (", ..." if len(self.indices) > 8 else "")
        return f"batch {self.number}/{total_batches} ({len(self.indices)} sequences: input indices {shown})"


@dataclass(frozen=True)
class PreparedCall:
    """Sequences ready to send: normalised text, residue counts and the batch plan."""

    texts: tuple[str, ...]
    lengths: tuple[int, ...]
    batches: tuple[Batch, ...]


def normalize_sequences(
    sequences: Sequence[str | bytes], validate: bool = True, ids: Sequence[str] | None = None
) -> list[str]:
    """The sequences as the served tokenizer reads them (stripped, upper case), checked with its rules.

    Raises:
        InvalidSequenceError: the first sequence the served tokenizer would reject, naming its index and id.
    """
    if isinstance(sequences, str | bytes):
        raise TypeError("sequences must be a sequence of strings, not one string")
    if ids is not None and len(ids) != len(sequences):
        raise ValueError(f"got {len(ids)} ids for {len(sequences)} sequences")
    texts = []
    for index, sequence in enumerate(sequences):
        if validate:
            try:
                texts.append(tokenizer.validate_sequence(sequence))
            except tokenizer.InvalidSequenceError as error:
                raise InvalidSequenceError(index, str(error), None if ids is None else ids[index]) from None
        else:
            texts.append(sequence.decode("ascii") if isinstance(sequence, bytes) else str(sequence).strip())
    return texts


def plan_call(texts: Sequence[str], max_batch_size: int, token_budget: int | None = None) -> PreparedCall:
    lengths = tuple(len(text) for text in texts)
    return PreparedCall(tuple(texts), lengths, plan_batches(lengths, max_batch_size, token_budget))


def padded_tokens(residues: int) -> int:
    """The padded width (tokens, CLS/EOS included) the served tokenizer gives a row of `residues` residues: its
    length bucket, or L + 2 beyond the largest bucket (such a sequence is refused by the server anyway)."""
    tokens = residues + tokenizer.SPECIAL_TOKENS_PER_SEQUENCE
    try:
        return tokenizer.bucket_for(tokens)
    except ValueError:
        return tokens


def request_tokens(lengths: Sequence[int]) -> int:
    """What one request of sequences with these residue counts costs against `execution_token_budget`."""
    return len(lengths) * padded_tokens(max(lengths)) if lengths else 0


def plan_batches(lengths: Sequence[int], max_batch_size: int, token_budget: int | None = None) -> tuple[Batch, ...]:
    """Groups positions into batches, similar lengths together (stable order), each with at most `max_batch_size`
    sequences and, with a `token_budget`, at most that many padded tokens (`request_tokens`); a sequence that alone
    exceeds the budget is sent alone (no split of one sequence can help)."""
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
    if token_budget is not None and token_budget < 1:
        raise ValueError(f"token_budget must be >= 1 (or None), got {token_budget}")
    order = sorted(range(len(lengths)), key=lambda position: lengths[position])
    groups: list[list[int]] = []
    for position in order:
        current = groups[-1] if groups else None
        if current is not None and len(current) < max_batch_size:
            # Sorted ascending: the new sequence is the longest, so it sets the padded width.
            cost = (len(current) + 1) * padded_tokens(lengths[position])
            if token_budget is None or cost <= token_budget:
                current.append(position)
                continue
        groups.append([position])
    return tuple(Batch(number, tuple(group)) for number, group in enumerate(groups, start=1))


def build_input_arrays(spec: ModelSpec, texts: Sequence[str]) -> dict[str, np.ndarray]:
    """The request tensors for one batch, keyed by served input name: built by the model's pipeline by role."""
    return spec.pipeline_declaration().requests.inputs(spec.roles, list(texts))


def batch_texts(call: PreparedCall, batch: Batch) -> list[str]:
    return [call.texts[index] for index in batch.indices]


def assemble_embeddings(spec: ModelSpec, call: PreparedCall, batch_outputs: Sequence[np.ndarray]) -> np.ndarray:
    """Scatters per-batch `EMBEDDING` arrays [n_b, D] back into one [N, D] array in input order."""
    result = np.empty((len(call.texts), spec.embedding_dim), dtype=np.float32)
    for batch, output in zip(call.batches, batch_outputs, strict=True):
        _check_rows(output, batch, "EMBEDDING")
        result[list(batch.indices)] = output
    return result


def assemble_residues(call: PreparedCall, batch_outputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Cuts rows 1..L of per-batch `RESIDUE_EMBEDDINGS` [n_b, T, D] into one [L_i, D] array per input, in order."""
    result: list[np.ndarray | None] = [None] * len(call.texts)
    for batch, output in zip(call.batches, batch_outputs, strict=True):
        _check_rows(output, batch, "RESIDUE_EMBEDDINGS")
        for row, index in enumerate(batch.indices):
            length = call.lengths[index]
            if output.shape[1] < length + 1:
                raise UnsupportedModelError(
                    f"RESIDUE_EMBEDDINGS has {output.shape[1]} positions, sequence {index} needs {length + 1}"
                )
            result[index] = np.array(output[row, 1 : length + 1], dtype=np.float32, copy=True)
    return result  # type: ignore[return-value]


def _check_rows(output: np.ndarray, batch: Batch, name: str) -> None:
    if output.shape[0] != len(batch.indices):
        raise UnsupportedModelError(f"{name} has {output.shape[0]} rows for a batch of {len(batch.indices)} sequences")

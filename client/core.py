"""Transport-independent logic shared by the sync and asyncio clients: validate, plan batches, build, reassemble.

Batches are planned by sorting sequences by length (stable) and cutting the order into groups of at most
`max_batch_size`, so similar lengths share a padding bucket; results are scattered back to input order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tritonfleet.client.errors import InvalidSequenceError, UnsupportedModelError
from tritonfleet.client.model import ModelSpec
from tritonfleet.contract import esm2_tokens as tokenizer


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


def plan_call(texts: Sequence[str], max_batch_size: int) -> PreparedCall:
    lengths = tuple(len(text) for text in texts)
    return PreparedCall(tuple(texts), lengths, plan_batches(lengths, max_batch_size))


def plan_batches(lengths: Sequence[int], max_batch_size: int) -> tuple[Batch, ...]:
    """Groups positions into batches of at most `max_batch_size`, similar lengths together (stable order)."""
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
    order = sorted(range(len(lengths)), key=lambda position: lengths[position])
    return tuple(
        Batch(number, tuple(order[start : start + max_batch_size]))
        for number, start in enumerate(range(0, len(order), max_batch_size), start=1)
    )


def sequence_array(texts: Sequence[str]) -> np.ndarray:
    """The BYTES tensor [N, 1] of a `SEQUENCE` input: one ASCII sequence per row."""
    array = np.empty((len(texts), 1), dtype=np.object_)  # BYTES must be np.object_ (keeps NULs)
    for row, text in enumerate(texts):
        array[row, 0] = text.encode("ascii")
    return array


def build_input_arrays(spec: ModelSpec, texts: Sequence[str]) -> dict[str, np.ndarray]:
    """The request tensors for one batch, keyed by served input name."""
    if spec.feed == "sequences":
        return {spec.inputs["SEQUENCE"]: sequence_array(texts)}
    input_ids, attention_mask = tokenizer.encode_batch(list(texts))
    return {spec.inputs["INPUT_IDS"]: input_ids, spec.inputs["ATTENTION_MASK"]: attention_mask}


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

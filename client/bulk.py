"""Bulk FASTA embedding that loses nothing: validate, embed chunk by chunk through the asyncio client, journal
every finished chunk (see `client.journal`), assemble at the end.

Chunks are cut from the input sorted by sequence length (stable, so deterministic for a given file): requests then
carry sequences of similar length and pad little. Chunk k is records `order[k * chunk_size : (k + 1) * chunk_size]`;
the output is put back in input order at assembly.

Every record ends up in exactly one place: the output (keyed by id, input order) or `OUT.rejected.tsv` with the
reason. Records the server rejects although local validation passed are isolated by embedding that chunk's records
one at a time, so one bad record cannot take its neighbours down with it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from tritonfleet.client.aio import AsyncEmbeddingClient
from tritonfleet.client.config import ClientConfig
from tritonfleet.client.errors import InvalidRequestError
from tritonfleet.client.fasta import FastaRecord, read_fasta
from tritonfleet.client.journal import (
    ChunkResult,
    Journal,
    JournalMismatchError,
    assemble,
    describe_difference,
    parts_dir_for,
    read_output_manifest,
    rejected_path_for,
)
from tritonfleet.client.long_sequences import DEFAULT_WINDOW_OVERLAP, combine_windows, split_windows
from tritonfleet.contract import esm2_tokens as tokenizer
from tritonfleet.contract.priorities import PriorityClass

OutputFormat = Literal["npz", "parquet"]
LongSequencePolicy = Literal["skip", "chunk"]
JOURNAL_FORMAT_VERSION = 1


@dataclass(frozen=True)
class BulkOptions:
    """What `embed-fasta` does.

    Attributes:
        fasta: input FASTA (plain or .gz).
        output: the result file.
        output_format: "npz" (ids, embeddings, windows, manifest) or "parquet" (id, embedding, windows).
        concurrency: requests in flight.
        long_sequences: "skip" rejects sequences over 1022 residues; "chunk" embeds them by windows.
        window_overlap: residues shared by consecutive windows in "chunk" mode.
        chunk_size: records per journal chunk (the unit of resumption).
        overwrite: discard an existing journal/output from a different run instead of refusing.
        priority: the requests' class; "bulk" lets interactive traffic on the same server go first.
    """

    fasta: Path
    output: Path
    output_format: OutputFormat = "npz"
    concurrency: int = 4
    long_sequences: LongSequencePolicy = "skip"
    window_overlap: int = DEFAULT_WINDOW_OVERLAP
    chunk_size: int = 256
    overwrite: bool = False
    priority: PriorityClass = "bulk"


@dataclass(frozen=True)
class BulkSummary:
    records: int
    embedded: int
    rejected: int
    resumed_chunks: int
    already_complete: bool
    output: Path
    rejected_path: Path


@dataclass(frozen=True)
class _Planned:
    """A record's fate before any request: embed these windows (one for normal records), or reject."""

    record: FastaRecord
    windows: tuple[str, ...] = ()
    rejection: str | None = None


def manifest_for(options: BulkOptions, config: ClientConfig, n_records: int) -> dict[str, object]:
    """What identifies a run: resuming with a different input, model or option would mix incompatible results."""
    return {
        "journal_format": JOURNAL_FORMAT_VERSION,
        "input_sha256": _sha256(options.fasta),
        "records": n_records,
        "model": config.model,
        "model_version": config.version,
        "output_format": options.output_format,
        "long_sequences": options.long_sequences,
        "window_overlap": options.window_overlap if options.long_sequences == "chunk" else None,
        "chunk_size": options.chunk_size,
        "chunk_order": "length",
    }


def plan_record(record: FastaRecord, options: BulkOptions) -> _Planned:
    """Validates one record and decides how to embed it."""
    text = record.sequence.strip().upper()
    if options.long_sequences == "chunk" and len(text) > tokenizer.MAX_RESIDUES:
        for position, character in enumerate(text, start=1):  # the length is handled by windows; check residues
            if character not in tokenizer.VALID_RESIDUES:
                return _Planned(record, rejection=f"invalid residue {character!r} at position {position}")
        return _Planned(record, windows=tuple(split_windows(text, tokenizer.MAX_RESIDUES, options.window_overlap)))
    try:
        return _Planned(record, windows=(tokenizer.validate_sequence(text),))
    except tokenizer.InvalidSequenceError as error:
        reason = str(error)
        if len(text) > tokenizer.MAX_RESIDUES:
            reason += " (use --long-sequences chunk to embed it by windows)"
        return _Planned(record, rejection=reason)


async def embed_fasta(
    config: ClientConfig, options: BulkOptions, on_progress: Callable[[int, int], None] | None = None
) -> BulkSummary:
    """Embeds every record of `options.fasta` into `options.output`, resuming a previous interrupted run.

    Args:
        config: client configuration (its max_in_flight and priority are replaced by options.concurrency and
            options.priority).
        options: what to do.
        on_progress: called with (records_done, records_total) once at start and after each chunk.
    """
    records = read_fasta(options.fasta)
    manifest = manifest_for(options, config, len(records))
    output, parts_dir = options.output, parts_dir_for(options.output)
    summary_args = {"output": output, "rejected_path": rejected_path_for(output)}
    if output.exists() and not options.overwrite:
        existing = read_output_manifest(output, options.output_format)
        if existing is not None and _result_identity(existing) == _result_identity(manifest):
            Journal(parts_dir, manifest).remove()  # a crash between assembly and clean-up leaves it behind
            if on_progress:
                on_progress(len(records), len(records))
            return BulkSummary(len(records), -1, -1, 0, True, **summary_args)
        raise JournalMismatchError(
            f"{output} exists and was not produced by this run "
            f"({describe_difference(existing, manifest) if existing else 'no manifest'}); "
            "pass --overwrite or choose another output"
        )
    if options.overwrite:
        Journal(parts_dir, manifest).remove()
    journal = Journal.open(parts_dir, manifest)
    chunks = plan_chunks(records, options.chunk_size)
    done = journal.completed_chunks() & set(range(len(chunks)))
    pending = [index for index in range(len(chunks)) if index not in done]
    records_done = sum(len(chunks[index]) for index in done)
    if on_progress:
        on_progress(records_done, len(records))

    client_config = dataclasses.replace(config, max_in_flight=options.concurrency, priority=options.priority)
    async with AsyncEmbeddingClient(client_config) as client:
        embedding_dim = (await client.model_spec()).embedding_dim
        chunk_slots = asyncio.Semaphore(options.concurrency + 1)  # bounds memory, keeps the pipe full

        async def run_chunk(index: int) -> None:
            nonlocal records_done
            async with chunk_slots:
                chunk_records = chunks[index]
                result = await _embed_chunk(client, index, chunk_records, options)
                await asyncio.to_thread(journal.write_chunk, result, embedding_dim)
            records_done += len(chunk_records)
            if on_progress:
                on_progress(records_done, len(records))

        tasks = [asyncio.ensure_future(run_chunk(index)) for index in pending]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    embedded, rejected = assemble(journal, len(chunks), len(records), output, options.output_format, embedding_dim)
    return BulkSummary(len(records), embedded, rejected, len(done), False, **summary_args)


def _result_identity(manifest: dict[str, object]) -> dict[str, object]:
    """The manifest without settings that only shape the journal (a finished output is the same without them)."""
    return {key: value for key, value in manifest.items() if key != "chunk_size"}


def plan_chunks(records: Sequence[FastaRecord], chunk_size: int) -> list[list[FastaRecord]]:
    """Journal chunks: the records sorted by length (stable), cut every `chunk_size`."""
    by_length = sorted(records, key=lambda record: len(record.sequence))
    return [by_length[start : start + chunk_size] for start in range(0, len(by_length), chunk_size)]


async def _embed_chunk(
    client: AsyncEmbeddingClient, index: int, records: Sequence[FastaRecord], options: BulkOptions
) -> ChunkResult:
    planned = [plan_record(record, options) for record in records]
    result = ChunkResult(index)
    accepted = [plan for plan in planned if plan.rejection is None]
    try:
        vectors = await _embed_planned(client, accepted)
    except InvalidRequestError:
        vectors, accepted = await _embed_one_by_one(client, accepted, result)
    by_position = dict(zip((plan.record.position for plan in accepted), vectors))
    rows = []
    for plan in planned:
        record = plan.record
        if plan.rejection is not None:
            result.rejected.append((record.position, record.id, len(record.sequence), plan.rejection))
        elif record.position in by_position:
            result.positions.append(record.position)
            result.ids.append(record.id)
            result.windows.append(len(plan.windows))
            rows.append(by_position[record.position])
    result.embeddings = np.asarray(rows, dtype=np.float32).reshape(len(rows), -1)
    return result


async def _embed_planned(client: AsyncEmbeddingClient, plans: Sequence[_Planned]) -> list[np.ndarray]:
    """Embeds every window of every plan in one client call, then folds windows back per record."""
    if not plans:
        return []
    texts = [window for plan in plans for window in plan.windows]
    ids = [plan.record.id for plan in plans for _ in plan.windows]
    window_vectors = await client.embed(texts, ids=ids)
    vectors, offset = [], 0
    for plan in plans:
        count = len(plan.windows)
        block = window_vectors[offset : offset + count]
        vectors.append(block[0] if count == 1 else combine_windows(block, [len(w) for w in plan.windows]))
        offset += count
    return vectors


async def _embed_one_by_one(
    client: AsyncEmbeddingClient, plans: Sequence[_Planned], result: ChunkResult
) -> tuple[list[np.ndarray], list[_Planned]]:
    """Isolates records the server rejects: each is sent alone; rejections are recorded with the server's words."""
    vectors, kept = [], []
    for plan in plans:
        vector, server_message = await _embed_alone(client, plan)
        if vector is None:
            record = plan.record
            result.rejected.append((record.position, record.id, len(record.sequence), f"server: {server_message}"))
        else:
            vectors.append(vector)
            kept.append(plan)
    return vectors, kept


async def _embed_alone(client: AsyncEmbeddingClient, plan: _Planned) -> tuple[np.ndarray | None, str]:
    try:
        return (await _embed_planned(client, [plan]))[0], ""
    except InvalidRequestError as error:
        return None, error.server_message


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

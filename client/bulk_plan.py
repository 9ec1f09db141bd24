"""How `embed-fasta` plans a job before any request: its options, each record's fate (embed, reject, or reuse an
earlier record's result), the order a window's records are sent in, and the chunks that are the unit of resumption.

Planning depends only on the input and the options, never on the server's answers, so every run of a job plans the
same chunks (`client.bulk` embeds and journals them).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tritonfleet.client.fasta import FastaRecord
from tritonfleet.client.long_sequences import DEFAULT_WINDOW_OVERLAP, split_windows
from tritonfleet.client.writers import Layout
from tritonfleet.contract import esm2_tokens as tokenizer
from tritonfleet.contract.priorities import PriorityClass

OutputFormat = Literal["npz", "parquet", "hdf5"]
LongSequencePolicy = Literal["skip", "chunk"]
DEFAULT_WINDOW = 8192


@dataclass(frozen=True)
class BulkOptions:
    """What `embed-fasta` does.

    Attributes:
        fasta: input FASTA (plain or gzip).
        output: the result file.
        output_format: "npz" (ids, embeddings, windows, manifest), "parquet" (id, embedding, windows) or "hdf5"
            (one dataset per id, UniProt's per-protein layout).
        concurrency: requests in flight.
        long_sequences: "skip" rejects sequences over 1022 residues; "chunk" embeds them by windows.
        window_overlap: residues shared by consecutive windows in "chunk" mode.
        chunk_size: records per journal chunk (the unit of resumption).
        overwrite: discard an existing journal/output from a different run instead of refusing.
        priority: the requests' class; "bulk" lets interactive traffic on the same server go first.
        window: records read, length-sorted and chunked together; bounds the job's memory.
        dedup: compute each distinct sequence once per job (off: every record is sent, e.g. to study a server
            cache).
        per_residue: per-residue embeddings [L, D] instead of the mean (HDF5 output only).
        hold_after_chunks: test hook: after writing this many chunks, wait instead of writing more (until
            `release_file` exists, or until interrupted), so a test can act on a job that cannot have finished.
            None in normal use.
        release_file: test hook: the file whose creation ends the wait of `hold_after_chunks`.
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
    window: int = DEFAULT_WINDOW
    dedup: bool = True
    per_residue: bool = False
    hold_after_chunks: int | None = None
    release_file: Path | None = None

    def check(self) -> None:
        """Raises ValueError for option combinations that cannot work."""
        if self.chunk_size < 1 or self.window < 1 or self.concurrency < 1:
            raise ValueError("chunk size, window and concurrency must be >= 1")
        if self.per_residue and self.output_format != "hdf5":
            raise ValueError("per-residue embeddings are written to HDF5 only: use --format hdf5 (or an .h5 output)")
        if self.per_residue and self.long_sequences == "chunk":
            raise ValueError("per-residue embeddings cannot be combined with --long-sequences chunk")


@dataclass(frozen=True)
class PlannedRecord:
    """A record's fate before any request: embed these windows (one for normal records), reject, or reuse the
    result of an earlier record with the same sequence (`alias`: its position and chunk)."""

    record: FastaRecord
    windows: tuple[str, ...] = ()
    rejection: str | None = None
    alias: tuple[int, int] | None = None


@dataclass(frozen=True)
class PlannedWindow:
    number: int
    chunks: tuple[tuple[int, tuple[PlannedRecord, ...]], ...]  # (chunk index, its records in length order)


def plan_record(record: FastaRecord, options: BulkOptions) -> PlannedRecord:
    """Validates one record and decides how to embed it."""
    text = record.sequence.strip().upper()
    if options.long_sequences == "chunk" and len(text) > tokenizer.MAX_RESIDUES:
        for position, character in enumerate(text, start=1):  # the length is handled by windows; check residues
            if character not in tokenizer.VALID_RESIDUES:
                return PlannedRecord(record, rejection=f"invalid residue {character!r} at position {position}")
        return PlannedRecord(record, windows=tuple(split_windows(text, tokenizer.MAX_RESIDUES, options.window_overlap)))
    try:
        return PlannedRecord(record, windows=(tokenizer.validate_sequence(text),))
    except tokenizer.InvalidSequenceError as error:
        reason = str(error)
        if len(text) > tokenizer.MAX_RESIDUES:
            reason += " (use --long-sequences chunk to embed it by windows)"
        return PlannedRecord(record, rejection=reason)


def window_order(sequences: Sequence[str]) -> list[int]:
    """The order a window's records are sent in: first occurrences by length, then second occurrences by length, ...

    Sorting by length keeps the sequences of one request similar in length. Putting a sequence's repeats after every
    first occurrence of the window keeps a repeat out of flight while its original is computed, so with the client's
    dedup off the server's response cache answers it (a repeat sent beside its original misses the cache: Triton does
    not merge identical requests in flight). Stable: equal keys keep input order, so every run plans the same chunks.
    """
    seen: dict[str, int] = {}
    occurrence = []
    for sequence in sequences:
        occurrence.append(seen.get(sequence, 0))
        seen[sequence] = occurrence[-1] + 1
    return sorted(range(len(sequences)), key=lambda i: (occurrence[i], len(sequences[i])))


class SeenIndex:
    """Ids and sequences seen so far in this job, on disk (SQLite), so memory stays bounded on any input."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.unlink(missing_ok=True)  # a scratch index: rebuilt from the input on every run
        self._db = sqlite3.connect(path, check_same_thread=False)
        self._db.executescript(
            "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA cache_size=-4096;"
            "CREATE TABLE ids (id TEXT PRIMARY KEY, line INTEGER) WITHOUT ROWID;"
            "CREATE TABLE sequences (key BLOB PRIMARY KEY, position INTEGER, chunk INTEGER) WITHOUT ROWID;"
        )

    def claim_id(self, record_id: str, line: int) -> int | None:
        """None if the id is new (now claimed), else the line of the record that has it."""
        row = self._db.execute("SELECT line FROM ids WHERE id = ?", (record_id,)).fetchone()
        if row is not None:
            return int(row[0])
        self._db.execute("INSERT INTO ids VALUES (?, ?)", (record_id, line))
        return None

    def source_of(self, text: str, position: int, chunk: int) -> tuple[int, int] | None:
        """(position, chunk) of the first record with this sequence, or None if it is the first (now recorded)."""
        key = hashlib.blake2b(text.encode("ascii"), digest_size=16).digest()
        row = self._db.execute("SELECT position, chunk FROM sequences WHERE key = ?", (key,)).fetchone()
        if row is not None:
            return int(row[0]), int(row[1])
        self._db.execute("INSERT INTO sequences VALUES (?, ?, ?)", (key, position, chunk))
        return None

    def commit(self) -> None:
        self._db.commit()

    def close(self) -> None:
        self._db.close()
        self.path.unlink(missing_ok=True)


def plan_windows(records: Iterable[FastaRecord], options: BulkOptions, index: SeenIndex) -> Iterator[PlannedWindow]:
    """Reads `records` one window at a time and plans each window's chunks (see the module doc)."""
    layout = Layout(records=0, window=options.window, chunk_size=options.chunk_size)
    iterator = iter(records)
    for number in itertools.count():
        batch = list(itertools.islice(iterator, options.window))
        if not batch:
            return
        planned = []
        for record in batch:
            first_line = index.claim_id(record.id, record.line)
            if first_line is not None:
                reason = f"repeated id {record.id!r} (first at line {first_line}); outputs are keyed by id"
                planned.append(PlannedRecord(record, rejection=reason))
            else:
                planned.append(plan_record(record, options))
        order = window_order([plan.record.sequence for plan in planned])
        first_chunk = number * layout.chunks_per_window
        chunk_of = {}
        for rank, i in enumerate(order):
            chunk_of[i] = first_chunk + rank // options.chunk_size
        if options.dedup:
            for i, plan in enumerate(planned):
                if plan.rejection is None:
                    source = index.source_of("".join(plan.windows), plan.record.position, chunk_of[i])
                    if source is not None:
                        planned[i] = dataclasses.replace(plan, alias=source)
        index.commit()
        chunks = tuple(
            (first_chunk + k, tuple(planned[i] for i in order[start : start + options.chunk_size]))
            for k, start in enumerate(range(0, len(order), options.chunk_size))
        )
        yield PlannedWindow(number, chunks)

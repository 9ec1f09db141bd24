"""Bulk FASTA embedding that loses nothing and streams: memory is bounded by a window of records, not by the input.

The FASTA file is read lazily (plain or gzip) in windows of `window` consecutive records. Each window is sorted by
sequence length (stable; a sequence's repeats after the window's first occurrences, see `window_order`) and cut into
chunks of `chunk_size` records, so requests carry sequences of similar length and pad little; window w's chunks are
numbered from w * ceil(window / chunk_size) (`client.writers.Layout`). A chunk is a fixed set of records for a
given input and options: it is embedded, journaled as one atomic file (see `client.journal`) and is the unit of
resumption. Chunks of a window are embedded concurrently while the next window
is read; at most `concurrency + 1` chunks are in flight. At the end, `client.writers.assemble` streams the chunks
into the output in input order.

Every record ends up in exactly one place: the output (keyed by id, input order) or `OUT.rejected.tsv` with the
reason: invalid sequences, repeated ids (outputs are keyed by id: the first record with an id wins) and records the
server rejects although local validation passed (isolated by embedding that chunk's records one at a time).

Each distinct sequence is computed once per job (`dedup`, on by default): a record whose sequence equals an earlier
record's is never sent; it takes the earlier record's vector at assembly. The ids and sequences seen are kept in a
scratch SQLite index in the parts directory (disk, not memory), rebuilt on every run from the input, so the
decisions (and hence the chunks) are the same on every run.

The job records the model, its served version (and for an ensemble each step's) and precision in its journal and
output, re-reads them before writing every chunk and before assembly, and refuses to go on when they change: one job
never mixes two model versions (`ModelVersionMismatchError`).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tritonfleet.client.aio import AsyncEmbeddingClient
from tritonfleet.client.bulk_plan import (
    BulkOptions,
    PlannedRecord,
    SeenIndex,
    plan_windows,
)
from tritonfleet.client.config import ClientConfig
from tritonfleet.client.errors import InvalidRequestError
from tritonfleet.client.fasta import iter_fasta, scan_fasta
from tritonfleet.client.journal import (
    ChunkResult,
    Journal,
    JournalMismatchError,
    check_same_model,
    describe_difference,
    parts_dir_for,
    read_output_manifest,
    rejected_path_for,
)
from tritonfleet.client.long_sequences import combine_windows
from tritonfleet.client.model import OutputKind
from tritonfleet.client.writers import Layout, assemble

JOURNAL_FORMAT_VERSION = 2
INDEX_NAME = "index.sqlite"
# Manifest keys that only shape the journal: a finished output is the same without them.
_JOURNAL_ONLY_KEYS = ("chunk_size", "window", "dedup", "chunk_order", "journal_format")


@dataclass(frozen=True)
class BulkSummary:
    records: int
    embedded: int
    rejected: int
    resumed_chunks: int
    already_complete: bool
    output: Path
    rejected_path: Path
    repeats: int = 0


async def served_identity(client: AsyncEmbeddingClient, kind: OutputKind = "EMBEDDING") -> dict[str, Any]:
    """Which network answers the job's requests: the configured model and the entry model its requests of this
    priority and output go to (`AsyncEmbeddingClient.entry_spec`), the entry's serving version (the requested one,
    else the latest ready), each of its ensemble steps' serving versions, and the precision (config parameter
    `precision`)."""
    spec = await client.model_spec()
    entry = (await client.entry_spec(kind)).name  # where the client's requests of this kind go
    requested_version = client.config.version if entry == spec.name else ""
    config = await client.config_of(entry, requested_version)
    metadata = await client.metadata_of(entry, requested_version)
    precision = _parameters(config).get("precision") or spec.parameters.get("precision")
    composing: dict[str, str] = {}
    for step in (config.get("ensemble_scheduling") or {}).get("step", []):
        name, version = step["model_name"], int(step.get("model_version", -1))
        requested = str(version) if version > 0 else ""
        step_metadata = await client.metadata_of(name, requested)
        composing[name] = requested or _latest(step_metadata.get("versions", []))
        if precision is None:
            precision = _parameters(await client.config_of(name, requested)).get("precision")
    return {
        "model": spec.name,
        "entry_model": entry,
        "model_version": requested_version or _latest(metadata.get("versions", [])),
        "composing_versions": composing,
        "precision": precision,
    }


def _kind(options: BulkOptions) -> OutputKind:
    return "RESIDUE_EMBEDDINGS" if options.per_residue else "EMBEDDING"


def _parameters(config: dict[str, Any]) -> dict[str, str]:
    return {key: value.get("string_value", "") for key, value in (config.get("parameters") or {}).items()}


def _latest(versions: Sequence[Any]) -> str:
    numbers = [int(version) for version in versions if str(version).isdigit()]
    return str(max(numbers)) if numbers else ""


def manifest_for(options: BulkOptions, identity: dict[str, Any], input_sha256: str, n_records: int) -> dict[str, Any]:
    """What identifies a run: resuming with a different input, model version or option would mix results."""
    return {
        "journal_format": JOURNAL_FORMAT_VERSION,
        "input_sha256": input_sha256,
        "records": n_records,
        **identity,
        "output_format": options.output_format,
        "per_residue": options.per_residue,
        "long_sequences": options.long_sequences,
        "window_overlap": options.window_overlap if options.long_sequences == "chunk" else None,
        "chunk_size": options.chunk_size,
        "window": options.window,
        "dedup": options.dedup,
        "chunk_order": "occurrence-then-length-within-window",
    }


def _result_identity(manifest: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in manifest.items() if key not in _JOURNAL_ONLY_KEYS}


async def embed_fasta(
    config: ClientConfig, options: BulkOptions, on_progress: Callable[[int, int], None] | None = None
) -> BulkSummary:
    """Embeds every record of `options.fasta` into `options.output`, resuming a previous interrupted run.

    Args:
        config: client configuration (its max_in_flight and priority are replaced by options.concurrency and
            options.priority).
        options: what to do.
        on_progress: called with (records_done, records_total) once at start and as chunks finish.

    Raises:
        FastaFormatError: the input is not FASTA (nothing is sent).
        JournalMismatchError: an output or journal of another run is in the way (ModelVersionMismatchError when
            the server serves another model version than the job started with).
    """
    options.check()
    input_sha256, n_records = await asyncio.to_thread(scan_fasta, options.fasta)
    layout = Layout(n_records, options.window, options.chunk_size)
    output, parts_dir = options.output, parts_dir_for(options.output)
    summary_args = {"output": output, "rejected_path": rejected_path_for(output)}
    client_config = dataclasses.replace(config, max_in_flight=options.concurrency, priority=options.priority)
    async with AsyncEmbeddingClient(client_config) as client:
        spec = await client.model_spec()
        identity = await served_identity(client, _kind(options))
        manifest = manifest_for(options, identity, input_sha256, n_records)
        if output.exists() and not options.overwrite:
            existing = await asyncio.to_thread(read_output_manifest, output, options.output_format)
            if existing is not None and _result_identity(existing) == _result_identity(manifest):
                Journal(parts_dir, manifest).remove()  # a crash between assembly and clean-up leaves it behind
                if on_progress:
                    on_progress(n_records, n_records)
                return BulkSummary(n_records, -1, -1, 0, True, **summary_args)
            if existing is not None:
                check_same_model(existing, manifest, str(output))
            raise JournalMismatchError(
                f"{output} exists and was not produced by this run "
                f"({describe_difference(existing, manifest) if existing else 'no manifest'}); "
                "pass --overwrite or choose another output"
            )
        if options.overwrite:
            Journal(parts_dir, manifest).remove()
        journal = Journal.open(parts_dir, manifest)
        done = journal.completed_chunks() & set(layout.all_chunks())
        if on_progress:
            on_progress(0, n_records)
        run = _Run(client, journal, options, spec.embedding_dim, identity, n_records, on_progress)
        await run.embed_all(done)
        await run.check_identity()
    embedded, rejected = await asyncio.to_thread(
        assemble, journal, layout, output, options.output_format, spec.embedding_dim, options.per_residue
    )
    return BulkSummary(n_records, embedded, rejected, len(done), False, repeats=run.repeats, **summary_args)


class _Run:
    """One pass over the input: plans windows, embeds the chunks not yet journaled, writes them."""

    def __init__(
        self,
        client: AsyncEmbeddingClient,
        journal: Journal,
        options: BulkOptions,
        embedding_dim: int,
        identity: dict[str, Any],
        n_records: int,
        on_progress: Callable[[int, int], None] | None,
    ) -> None:
        self.client, self.journal, self.options = client, journal, options
        self.embedding_dim, self.identity, self.n_records = embedding_dim, identity, n_records
        self.on_progress = on_progress
        self.records_done = 0
        self.repeats = 0
        self._write_slots_taken = 0

    def _progress(self, records: int) -> None:
        self.records_done += records
        if self.on_progress:
            self.on_progress(self.records_done, self.n_records)

    async def check_identity(self) -> None:
        """Refuses to go on if the server now serves another model version than the job's."""
        check_same_model(self.identity, await served_identity(self.client, _kind(self.options)), "this job")

    async def embed_all(self, done: set[int]) -> None:
        slots = asyncio.Semaphore(self.options.concurrency + 1)  # bounds memory, keeps the pipe full
        tasks: set[asyncio.Task[None]] = set()
        failures: list[BaseException] = []

        def finished(task: asyncio.Task[None]) -> None:
            tasks.discard(task)
            slots.release()
            if not task.cancelled() and task.exception() is not None:
                failures.append(task.exception())

        index = SeenIndex(self.journal.directory / INDEX_NAME)
        records = iter_fasta(self.options.fasta)
        try:
            windows = plan_windows(records, self.options, index)
            while True:
                window = next(windows, None)  # reading and planning a window: tens of ms, in the loop's thread
                if window is None:
                    break
                for chunk_index, plans in window.chunks:
                    self.repeats += sum(plan.alias is not None for plan in plans)
                    if chunk_index in done:
                        self._progress(len(plans))
                        continue
                    await slots.acquire()
                    if failures:
                        slots.release()
                        raise failures[0]
                    task = asyncio.ensure_future(self._run_chunk(chunk_index, plans))
                    tasks.add(task)
                    task.add_done_callback(finished)
            while tasks and not failures:
                await asyncio.wait(set(tasks), return_when=asyncio.FIRST_EXCEPTION)
            if failures:
                raise failures[0]
        finally:
            for task in list(tasks):
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            records.close()
            index.close()

    async def _run_chunk(self, chunk_index: int, plans: Sequence[PlannedRecord]) -> None:
        result = await _embed_chunk(self.client, chunk_index, plans, self.options)
        await self.check_identity()
        hold = self.options.hold_after_chunks
        if hold is not None and self._write_slots_taken >= hold:
            await _held(self.options.release_file)
        self._write_slots_taken += 1
        await asyncio.to_thread(self.journal.write_chunk, result, self.embedding_dim)
        self._progress(len(plans))


async def _held(release_file: Path | None) -> None:
    """The test hook's wait (see BulkOptions.hold_after_chunks): until `release_file` exists, or forever."""
    while release_file is None or not release_file.exists():
        await asyncio.sleep(0.05)


async def _embed_chunk(
    client: AsyncEmbeddingClient, index: int, planned: Sequence[PlannedRecord], options: BulkOptions
) -> ChunkResult:
    result = ChunkResult(index, residues=[] if options.per_residue else None)
    accepted = [plan for plan in planned if plan.rejection is None and plan.alias is None]
    try:
        vectors = await _embed_planned(client, accepted, options.per_residue)
    except InvalidRequestError:
        vectors, accepted = await _embed_one_by_one(client, accepted, result, options.per_residue)
    by_position = dict(zip((plan.record.position for plan in accepted), vectors))
    rows = []
    for plan in planned:
        record = plan.record
        if plan.rejection is not None:
            result.rejected.append((record.position, record.id, len(record.sequence), plan.rejection))
        elif plan.alias is not None:
            result.aliases.append((record.position, record.id, plan.alias[0], plan.alias[1]))
        elif record.position in by_position:
            result.positions.append(record.position)
            result.ids.append(record.id)
            result.windows.append(len(plan.windows))
            rows.append(by_position[record.position])
    if options.per_residue:
        result.residues = rows
    elif rows:  # a chunk of repeats and rejections only has no rows (write_chunk stores an empty [0, D])
        result.embeddings = np.asarray(rows, dtype=np.float32).reshape(len(rows), -1)
    return result


async def _embed_planned(
    client: AsyncEmbeddingClient, plans: Sequence[PlannedRecord], per_residue: bool = False
) -> list[np.ndarray]:
    """Embeds every window of every plan in one client call (split by the client to what the server advertises),
    then folds windows back per record."""
    if not plans:
        return []
    texts = [window for plan in plans for window in plan.windows]
    ids = [plan.record.id for plan in plans for _ in plan.windows]
    if per_residue:
        return list(await client.embed_residues(texts, ids=ids))
    window_vectors = await client.embed(texts, ids=ids)
    vectors, offset = [], 0
    for plan in plans:
        count = len(plan.windows)
        block = window_vectors[offset : offset + count]
        vectors.append(block[0] if count == 1 else combine_windows(block, [len(w) for w in plan.windows]))
        offset += count
    return vectors


async def _embed_one_by_one(
    client: AsyncEmbeddingClient, plans: Sequence[PlannedRecord], result: ChunkResult, per_residue: bool
) -> tuple[list[np.ndarray], list[PlannedRecord]]:
    """Isolates records the server rejects: each is sent alone; rejections are recorded with the server's words."""
    vectors, kept = [], []
    for plan in plans:
        vector, server_message = await _embed_alone(client, plan, per_residue)
        if vector is None:
            record = plan.record
            result.rejected.append((record.position, record.id, len(record.sequence), f"server: {server_message}"))
        else:
            vectors.append(vector)
            kept.append(plan)
    return vectors, kept


async def _embed_alone(
    client: AsyncEmbeddingClient, plan: PlannedRecord, per_residue: bool
) -> tuple[np.ndarray | None, str]:
    try:
        return (await _embed_planned(client, [plan], per_residue))[0], ""
    except InvalidRequestError as error:
        return None, error.server_message

"""Final assembly of a bulk job: chunk files -> `OUT` (npz, parquet or HDF5) and `OUT.rejected.tsv`, streaming.

The journal's chunks are length-sorted within windows of consecutive records (see `client.bulk`), so assembly walks
the windows in input order, loads one window's chunks at a time, puts its records back in input order and hands the
rows to a writer: memory is bounded by a window, not by the input. A record that repeats an earlier sequence (an
alias) takes its source's result: from the same window, or from the source's chunk file (read once per window).

Every output is written to `OUT.tmp` (npz: through scratch files in the parts directory, since the row count is only
known at the end), fsynced and renamed into place, so a kill at any point leaves either no `OUT` (the journal is
intact and a re-run assembles again) or the whole file.

HDF5 follows UniProt's `per-protein.h5` layout: one float32 dataset [D] per FASTA id at the root (per-residue:
[L, D], as UniProt's `per-residue.h5`), in input order (creation order is tracked). An id's `/` is escaped as `%2F`
(and `%` as `%25`, so the escape is reversible); the dataset's `id` attribute holds the id as written. The file's
attributes record the model, its version(s), precision and the job's manifest.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from tritonfleet.client.errors import TritonFleetError
from tritonfleet.client.journal import (
    REJECTED_HEADER,
    TMP_SUFFIX,
    ChunkResult,
    Journal,
    _fsync_directory,
    import_h5py,
    import_pyarrow,
    rejected_line,
    rejected_path_for,
)

OUTPUT_FORMATS: tuple[str, ...] = ("npz", "parquet", "hdf5")


@dataclass(frozen=True)
class Layout:
    """Where every record's result lives: records are cut into windows of `window` consecutive records; a window is
    sorted by length (stable) and cut into chunks of `chunk_size`; window w's chunks are numbered from
    w * chunks_per_window."""

    records: int
    window: int
    chunk_size: int

    @property
    def chunks_per_window(self) -> int:
        return math.ceil(self.window / self.chunk_size)

    @property
    def windows(self) -> int:
        return math.ceil(self.records / self.window)

    def window_range(self, window: int) -> range:
        return range(window * self.window, min((window + 1) * self.window, self.records))

    def chunk_indices(self, window: int) -> list[int]:
        first = window * self.chunks_per_window
        return list(range(first, first + math.ceil(len(self.window_range(window)) / self.chunk_size)))

    def all_chunks(self) -> list[int]:
        return [index for window in range(self.windows) for index in self.chunk_indices(window)]


def escape_id(record_id: str) -> str:
    """An HDF5 link name for a FASTA id: `%` -> `%25`, `/` -> `%2F`; "." (the group itself) -> `%2E`."""
    name = record_id.replace("%", "%25").replace("/", "%2F")
    return "%2E" if name == "." else name


def unescape_id(name: str) -> str:
    return "." if name == "%2E" else name.replace("%2F", "/").replace("%25", "%")


class OutputWriter(Protocol):
    def write(self, ids: list[str], arrays: list[np.ndarray], windows: list[int]) -> None: ...

    def finish(self) -> None: ...

    def abort(self) -> None: ...


def _fsync_and_rename(tmp: Path, path: Path) -> None:
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_directory(path.parent)


class NpzWriter:
    """`ids`, `embeddings` [N, D], `windows` [N] and `manifest` in one .npz, written without holding the rows: rows
    go to scratch files first, then into the zip's .npy members block by block."""

    def __init__(self, output: Path, scratch: Path, dim: int, manifest: dict[str, Any]) -> None:
        self.output, self.tmp = output, output.with_name(output.name + TMP_SUFFIX)
        self.dim, self.manifest = dim, manifest
        scratch.mkdir(parents=True, exist_ok=True)
        self._rows_path, self._ids_path = scratch / "rows.f32.tmp", scratch / "ids.txt.tmp"
        self._rows = open(self._rows_path, "wb")  # noqa: SIM115 - closed in finish/abort
        self._ids = open(self._ids_path, "w", encoding="utf-8")  # noqa: SIM115
        self._windows: list[int] = []  # 4 bytes a record: negligible next to the rows
        self._count, self._longest_id = 0, 1

    def write(self, ids: list[str], arrays: list[np.ndarray], windows: list[int]) -> None:
        for record_id, array in zip(ids, arrays, strict=True):
            self._rows.write(np.ascontiguousarray(array, dtype="<f4").reshape(self.dim).tobytes())
            self._ids.write(json.dumps(record_id) + "\n")
            self._longest_id = max(self._longest_id, len(record_id))
        self._windows.extend(windows)
        self._count += len(ids)

    def finish(self) -> None:
        self._rows.close()
        self._ids.close()
        with zipfile.ZipFile(self.tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
            with archive.open("ids.npy", "w", force_zip64=True) as member:
                _npy_header(member, f"<U{self._longest_id}", (self._count,))
                with open(self._ids_path, encoding="utf-8") as ids:
                    block: list[str] = []
                    for line in ids:
                        block.append(json.loads(line))
                        if len(block) == 4096:
                            member.write(np.asarray(block, dtype=f"<U{self._longest_id}").tobytes())
                            block = []
                    member.write(np.asarray(block, dtype=f"<U{self._longest_id}").tobytes())
            with archive.open("embeddings.npy", "w", force_zip64=True) as member:
                _npy_header(member, "<f4", (self._count, self.dim))
                with open(self._rows_path, "rb") as rows:
                    for chunk in iter(lambda: rows.read(1 << 22), b""):
                        member.write(chunk)
            with archive.open("windows.npy", "w") as member:
                np.lib.format.write_array(member, np.asarray(self._windows, dtype=np.int32))
            with archive.open("manifest.npy", "w") as member:
                np.lib.format.write_array(member, np.asarray(json.dumps(self.manifest, sort_keys=True)))
        _fsync_and_rename(self.tmp, self.output)
        self._remove_scratch()

    def abort(self) -> None:
        self._rows.close()
        self._ids.close()
        self._remove_scratch()
        self.tmp.unlink(missing_ok=True)

    def _remove_scratch(self) -> None:
        self._rows_path.unlink(missing_ok=True)
        self._ids_path.unlink(missing_ok=True)


def _npy_header(member: Any, descr: str, shape: tuple[int, ...]) -> None:
    np.lib.format.write_array_header_2_0(member, {"descr": descr, "fortran_order": False, "shape": shape})


class ParquetWriter:
    """Columns `id`, `embedding` (fixed-size list of D float32), `windows`; one row group per window."""

    def __init__(self, output: Path, dim: int, manifest: dict[str, Any]) -> None:
        self.output, self.tmp, self.dim = output, output.with_name(output.name + TMP_SUFFIX), dim
        self._pa, pq = import_pyarrow()
        pa = self._pa
        schema = pa.schema(
            [("id", pa.string()), ("embedding", pa.list_(pa.float32(), dim)), ("windows", pa.int32())]
        ).with_metadata({"tritonfleet_manifest": json.dumps(manifest, sort_keys=True)})
        self._writer = pq.ParquetWriter(str(self.tmp), schema)
        self._schema = schema

    def write(self, ids: list[str], arrays: list[np.ndarray], windows: list[int]) -> None:
        if not ids:
            return
        pa = self._pa
        flat = np.ascontiguousarray(np.asarray(arrays, dtype=np.float32).reshape(-1))
        table = pa.table(
            {
                "id": pa.array(ids, type=pa.string()),
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(flat, type=pa.float32()), self.dim),
                "windows": pa.array(windows, type=pa.int32()),
            },
            schema=self._schema,
        )
        self._writer.write_table(table)

    def finish(self) -> None:
        self._writer.close()
        _fsync_and_rename(self.tmp, self.output)

    def abort(self) -> None:
        self._writer.close()
        self.tmp.unlink(missing_ok=True)


class Hdf5Writer:
    """UniProt's per-protein layout (per-residue with `per_residue`): one dataset per id, see the module doc."""

    def __init__(self, output: Path, manifest: dict[str, Any], per_residue: bool) -> None:
        self.output, self.tmp = output, output.with_name(output.name + TMP_SUFFIX)
        h5py = import_h5py()
        self._file = h5py.File(self.tmp, "w", libver="latest", track_order=True)
        attrs = self._file.attrs
        attrs["tritonfleet_manifest"] = json.dumps(manifest, sort_keys=True)
        attrs["model"] = str(manifest.get("model"))
        attrs["model_version"] = str(manifest.get("model_version"))
        attrs["precision"] = str(manifest.get("precision") or "unknown")
        attrs["composing_versions"] = json.dumps(manifest.get("composing_versions") or {}, sort_keys=True)
        attrs["layout"] = "per-residue" if per_residue else "per-protein"

    def write(self, ids: list[str], arrays: list[np.ndarray], windows: list[int]) -> None:
        for record_id, array, window_count in zip(ids, arrays, windows, strict=True):
            dataset = self._file.create_dataset(escape_id(record_id), data=np.asarray(array, dtype=np.float32))
            dataset.attrs["id"] = record_id
            if window_count != 1:
                dataset.attrs["windows"] = window_count

    def finish(self) -> None:
        self._file.close()
        _fsync_and_rename(self.tmp, self.output)

    def abort(self) -> None:
        self._file.close()
        self.tmp.unlink(missing_ok=True)


def open_writer(
    output: Path, output_format: str, scratch: Path, dim: int, manifest: dict[str, Any], per_residue: bool
) -> OutputWriter:
    if output_format == "parquet":
        return ParquetWriter(output, dim, manifest)
    if output_format == "hdf5":
        return Hdf5Writer(output, manifest, per_residue)
    return NpzWriter(output, scratch, dim, manifest)


def _earlier_sources(
    journal: Journal, aliases: list[tuple[int, str, int, int]], entries: dict[int, Any], window_start: int
) -> dict[int, tuple[str, Any, Any]]:
    """The results of the earlier-window records this window's aliases repeat: ("row", array, windows) or
    ("rejected", length, reason). Each source chunk is read once per window; the arrays are copied so the chunk is
    freed (memory: at most one window's worth of distinct sources)."""
    needed: dict[int, set[int]] = {}
    for _, _, source, source_chunk in aliases:
        if source not in entries and source < window_start:
            needed.setdefault(source_chunk, set()).add(source)
    found: dict[int, tuple[str, Any, Any]] = {}
    for source_chunk in sorted(needed):
        chunk = journal.read_chunk(source_chunk)
        rows = {position: row for row, position in enumerate(chunk.positions)}
        reasons = {entry[0]: (entry[2], entry[3]) for entry in chunk.rejected}
        for source in needed[source_chunk]:
            if source in rows:
                row = rows[source]
                found[source] = ("row", np.array(_row(chunk, row), copy=True), chunk.windows[row])
            elif source in reasons:
                found[source] = ("rejected", *reasons[source])
            else:
                raise TritonFleetError(f"chunk {source_chunk} lacks record {source}, which other records repeat")
    return found


def _row(chunk: ChunkResult, row: int) -> np.ndarray:
    return chunk.residues[row] if chunk.residues is not None else chunk.embeddings[row]


def _window_entries(journal: Journal, layout: Layout, window: int) -> Iterator[tuple[str, int, str, Any, Any]]:
    """("row", position, id, array, windows) or ("rejected", position, id, length, reason), in input order."""
    positions = layout.window_range(window)
    entries: dict[int, tuple[str, int, str, Any, Any]] = {}
    aliases: list[tuple[int, str, int, int]] = []
    for index in layout.chunk_indices(window):
        chunk = journal.read_chunk(index)
        for row, (position, record_id) in enumerate(zip(chunk.positions, chunk.ids)):
            _put(entries, position, ("row", position, record_id, _row(chunk, row), chunk.windows[row]))
        for position, record_id, length, reason in chunk.rejected:
            _put(entries, position, ("rejected", position, record_id, length, reason))
        aliases.extend(chunk.aliases)
    earlier = _earlier_sources(journal, aliases, entries, positions.start)
    for position, record_id, source, _ in sorted(aliases):
        if source in entries:
            kind, _, _, value, extra = entries[source]
        elif source in earlier:
            kind, value, extra = earlier[source]
        else:
            raise TritonFleetError(f"record {position} repeats record {source}, which no chunk holds")
        if kind == "row":
            _put(entries, position, ("row", position, record_id, value, extra))
        else:
            reason = f"same sequence as record {source}, which was rejected: {extra}"
            _put(entries, position, ("rejected", position, record_id, value, reason))
    if sorted(entries) != list(positions):
        raise TritonFleetError(
            f"journal {journal.directory} does not account for records {positions.start}..{positions.stop - 1} "
            f"exactly once ({len(entries)} entries for {len(positions)} records); remove it and re-run"
        )
    for position in positions:
        yield entries[position]


def _put(entries: dict[int, Any], position: int, entry: Any) -> None:
    if position in entries:
        raise TritonFleetError(f"record {position} appears twice in the journal; remove it and re-run")
    entries[position] = entry


def assemble(
    journal: Journal,
    layout: Layout,
    output: Path,
    output_format: str,
    embedding_dim: int,
    per_residue: bool = False,
) -> tuple[int, int]:
    """Streams every chunk into `output` and `output.rejected.tsv`; returns (embedded, rejected) counts and removes
    the journal.

    Raises:
        TritonFleetError: a chunk is missing or the chunks do not account for every record exactly once.
    """
    missing = [index for index in layout.all_chunks() if not journal.chunk_path(index).exists()]
    if missing:
        raise TritonFleetError(f"journal {journal.directory} lacks chunk(s) {missing[:10]}; re-run to compute them")
    writer = open_writer(output, output_format, journal.directory, embedding_dim, journal.manifest, per_residue)
    rejected_path = rejected_path_for(output)
    rejected_tmp = rejected_path.with_name(rejected_path.name + TMP_SUFFIX)
    embedded = rejected = 0
    try:
        with open(rejected_tmp, "w", encoding="utf-8") as rejects:
            rejects.write(REJECTED_HEADER)
            for window in range(layout.windows):
                ids, arrays, windows = [], [], []
                for kind, position, record_id, value, extra in _window_entries(journal, layout, window):
                    if kind == "row":
                        ids.append(record_id)
                        arrays.append(value)
                        windows.append(int(extra))
                    else:
                        rejects.write(rejected_line(position, record_id, int(value), str(extra)))
                        rejected += 1
                writer.write(ids, arrays, windows)
                embedded += len(ids)
            rejects.flush()
            os.fsync(rejects.fileno())
        os.replace(rejected_tmp, rejected_path)
        writer.finish()  # OUT appears last: its existence means the job is complete
    except BaseException:
        writer.abort()
        rejected_tmp.unlink(missing_ok=True)
        raise
    journal.remove()
    return embedded, rejected

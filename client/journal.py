"""A crash-safe journal for resumable bulk embedding, and the final assembly of its chunks.

Layout next to the output `OUT`:

    OUT.parts/manifest.json      what is being computed (input checksum, model, options); resume refuses a mismatch
    OUT.parts/chunk-000012.npz   results of chunk 12 (a fixed set of records, see client.bulk): embedded and rejected

Every file is written to a temporary name, fsynced, then renamed into place (atomic on POSIX), and the directory is
fsynced; a SIGKILL can only leave a `*.tmp` file behind, which is removed on the next start. A chunk covers a fixed
set of records, so re-running rewrites exactly the missing chunks: nothing is lost and nothing duplicated.
`assemble` writes `OUT` (npz or parquet, rows keyed by FASTA id in input order) and `OUT.rejected.tsv` the same
way, then removes the parts directory. `OUT` carries the manifest, so a re-run of a finished job is a no-op.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tritonfleet.client.errors import TritonFleetError

MANIFEST_NAME = "manifest.json"
TMP_SUFFIX = ".tmp"
REJECTED_HEADER = "position\tid\tlength\treason\n"


class JournalMismatchError(TritonFleetError):
    """The existing journal or output belongs to a different input, model or option set."""


@dataclass
class ChunkResult:
    """The outcome for one slice of the input.

    Attributes:
        index: chunk number.
        positions: input positions of embedded records.
        ids: their FASTA ids.
        embeddings: float32 [len(positions), D].
        windows: how many windows each embedding averages (1 unless --long-sequences chunk applied).
        rejected: (position, id, length, reason) of records that were not embedded.
    """

    index: int
    positions: list[int] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    embeddings: np.ndarray | None = None
    windows: list[int] = field(default_factory=list)
    rejected: list[tuple[int, str, int, str]] = field(default_factory=list)


def parts_dir_for(output: Path) -> Path:
    return output.with_name(output.name + ".parts")


def rejected_path_for(output: Path) -> Path:
    return output.with_name(output.name + ".rejected.tsv")


def atomic_write(path: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Writes `path` via a temporary file, fsync and rename, so readers see the old file or the whole new one."""
    tmp = path.with_name(path.name + TMP_SUFFIX)
    with open(tmp, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class Journal:
    """The parts directory of one bulk run."""

    def __init__(self, directory: Path, manifest: dict[str, Any]) -> None:
        self.directory = directory
        self.manifest = manifest

    @classmethod
    def open(cls, directory: Path, manifest: dict[str, Any]) -> Journal:
        """Creates the journal, or reopens it after checking the manifest and sweeping half-written files."""
        directory.mkdir(parents=True, exist_ok=True)
        manifest_path = directory / MANIFEST_NAME
        if manifest_path.exists():
            existing = json.loads(manifest_path.read_text())
            if existing != manifest:
                raise JournalMismatchError(
                    f"{directory} holds a run with different settings ({describe_difference(existing, manifest)}); "
                    "re-run with the original settings, or pass --overwrite to start over"
                )
        else:
            atomic_write(manifest_path, lambda handle: handle.write(json.dumps(manifest, indent=2).encode()))
        for leftover in directory.glob("*" + TMP_SUFFIX):
            leftover.unlink()
        return cls(directory, manifest)

    def chunk_path(self, index: int) -> Path:
        return self.directory / f"chunk-{index:06d}.npz"

    def completed_chunks(self) -> set[int]:
        """Chunk numbers whose file exists (a file only exists once it was completely written)."""
        done = set()
        for path in self.directory.glob("chunk-*.npz"):
            with contextlib.suppress(ValueError):
                done.add(int(path.stem.removeprefix("chunk-")))
        return done

    def write_chunk(self, result: ChunkResult, embedding_dim: int) -> None:
        embeddings = result.embeddings if result.embeddings is not None else np.empty((0, embedding_dim), np.float32)
        rejected = result.rejected
        arrays = {
            "positions": np.asarray(result.positions, dtype=np.int64),
            "ids": np.asarray(result.ids, dtype=np.str_),
            "embeddings": np.asarray(embeddings, dtype=np.float32),
            "windows": np.asarray(result.windows, dtype=np.int32),
            "rejected_positions": np.asarray([r[0] for r in rejected], dtype=np.int64),
            "rejected_ids": np.asarray([r[1] for r in rejected], dtype=np.str_),
            "rejected_lengths": np.asarray([r[2] for r in rejected], dtype=np.int64),
            "rejected_reasons": np.asarray([r[3] for r in rejected], dtype=np.str_),
        }
        atomic_write(self.chunk_path(result.index), lambda handle: np.savez(handle, **arrays))

    def read_chunk(self, index: int) -> ChunkResult:
        with np.load(self.chunk_path(index), allow_pickle=False) as data:
            rejected = list(
                zip(
                    data["rejected_positions"].tolist(),
                    data["rejected_ids"].tolist(),
                    data["rejected_lengths"].tolist(),
                    data["rejected_reasons"].tolist(),
                )
            )
            return ChunkResult(
                index=index,
                positions=data["positions"].tolist(),
                ids=data["ids"].tolist(),
                embeddings=data["embeddings"],
                windows=data["windows"].tolist(),
                rejected=rejected,
            )

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def describe_difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = sorted(key for key in old.keys() | new.keys() if old.get(key) != new.get(key))
    return ", ".join(f"{key}: {old.get(key)!r} -> {new.get(key)!r}" for key in keys) or "unknown difference"


def assemble(
    journal: Journal, n_chunks: int, n_records: int, output: Path, output_format: str, embedding_dim: int
) -> tuple[int, int]:
    """Merges every chunk into `output` and `output.rejected.tsv`; returns (embedded, rejected) counts.

    Raises:
        TritonFleetError: a chunk is missing or the chunks do not account for every record exactly once.
    """
    chunks = [journal.read_chunk(index) for index in range(n_chunks)]
    positions = [p for chunk in chunks for p in chunk.positions]
    rejected = [r for chunk in chunks for r in chunk.rejected]
    accounted = sorted(positions + [r[0] for r in rejected])
    if accounted != list(range(n_records)):
        raise TritonFleetError(
            f"journal {journal.directory} does not account for every record exactly once "
            f"({len(accounted)} entries for {n_records} records); remove it and re-run"
        )
    input_order = np.argsort(np.asarray(positions, dtype=np.int64), kind="stable")
    all_ids = [record_id for chunk in chunks for record_id in chunk.ids]
    ids = [all_ids[i] for i in input_order]
    windows = np.asarray([w for chunk in chunks for w in chunk.windows], dtype=np.int32)[input_order]
    embeddings = np.concatenate(
        [np.empty((0, embedding_dim), np.float32)]
        + [chunk.embeddings for chunk in chunks if chunk.embeddings is not None]
    )[input_order]
    manifest_text = json.dumps(journal.manifest, sort_keys=True)
    write_rejected(rejected_path_for(output), sorted(rejected))
    if output_format == "parquet":
        write_parquet(output, ids, embeddings, windows, manifest_text)
    else:
        arrays = {"ids": np.asarray(ids, dtype=np.str_), "embeddings": embeddings, "windows": windows}
        arrays["manifest"] = np.asarray(manifest_text)
        atomic_write(output, lambda handle: np.savez(handle, **arrays))
    journal.remove()
    return len(ids), len(rejected)


def write_rejected(path: Path, rejected: Iterable[tuple[int, str, int, str]]) -> None:
    lines = [REJECTED_HEADER] + [
        f"{position}\t{record_id}\t{length}\t{_tsv_field(reason)}\n" for position, record_id, length, reason in rejected
    ]
    atomic_write(path, lambda handle: handle.write("".join(lines).encode("utf-8")))


def _tsv_field(text: str) -> str:
    return " ".join(text.split())


def write_parquet(output: Path, ids: list[str], embeddings: np.ndarray, windows: np.ndarray, manifest: str) -> None:
    pa, pq = import_pyarrow()
    dim = embeddings.shape[1]
    flat = pa.array(np.ascontiguousarray(embeddings, dtype=np.float32).reshape(-1), type=pa.float32())
    table = pa.table(
        {
            "id": pa.array(ids, type=pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(flat, dim),
            "windows": pa.array(windows, type=pa.int32()),
        }
    ).replace_schema_metadata({"tritonfleet_manifest": manifest})
    atomic_write(output, lambda handle: pq.write_table(table, handle))


def import_pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise TritonFleetError(
            "--format parquet needs pyarrow: pip install 'tritonfleet[parquet]' (or use --format npz)"
        ) from None
    return pa, pq


def read_output_manifest(output: Path, output_format: str) -> dict[str, Any] | None:
    """The manifest stored in a finished output, or None if it has none / cannot be read."""
    try:
        if output_format == "parquet":
            _, pq = import_pyarrow()
            metadata = pq.read_schema(output).metadata or {}
            text = metadata.get(b"tritonfleet_manifest")
            return json.loads(text) if text else None
        with np.load(output, allow_pickle=False) as data:
            return json.loads(str(data["manifest"])) if "manifest" in data.files else None
    except (OSError, ValueError, KeyError):
        return None


def load_output(output: Path, output_format: str | None = None) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(ids, embeddings [N, D], windows [N]) of a finished output, npz or parquet (default: by suffix)."""
    if (output_format or ("parquet" if output.suffix == ".parquet" else "npz")) == "parquet":
        _, pq = import_pyarrow()
        table = pq.read_table(output)
        ids = table.column("id").to_pylist()
        embeddings = np.asarray(table.column("embedding").combine_chunks().flatten(), dtype=np.float32)
        return ids, embeddings.reshape(len(ids), -1), table.column("windows").to_numpy()
    with np.load(output, allow_pickle=False) as data:
        return data["ids"].tolist(), data["embeddings"], data["windows"]

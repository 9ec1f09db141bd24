"""A crash-safe journal for resumable bulk embedding.

Layout next to the output `OUT`:

    OUT.parts/manifest.json      what is being computed (input checksum, model and its served versions, options);
                                 resume refuses a mismatch
    OUT.parts/chunk-000012.npz   results of chunk 12 (a fixed set of records, see client.bulk): embedded, repeats
                                 of an earlier identical sequence (aliases) and rejected
    OUT.parts/index.sqlite       scratch index of ids and sequences seen (rebuilt on every run, never trusted)

Every file is written to a temporary name, fsynced, then renamed into place (atomic on POSIX), and the directory is
fsynced; a SIGKILL can only leave a `*.tmp` file behind, which is removed on the next start. A chunk covers a fixed
set of records, so re-running rewrites exactly the missing chunks: nothing is lost and nothing duplicated.
`client.writers.assemble` writes `OUT` (npz, parquet or HDF5) and `OUT.rejected.tsv` the same way, streaming, then
removes the parts directory. `OUT` carries the manifest, so a re-run of a finished job is a no-op.
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


class ModelVersionMismatchError(JournalMismatchError):
    """The server now serves another model version (or precision) than the one a job started with."""


# Manifest keys that say which network computed the vectors: a job never mixes two of them.
MODEL_KEYS = ("model", "entry_model", "model_version", "composing_versions", "precision")


def describe_model(manifest: dict[str, Any]) -> str:
    """'esm2 version 1 (esm2_onnx 2, esm2_tokenizer 1), precision int8'."""
    composing = manifest.get("composing_versions") or {}
    steps = f" ({', '.join(f'{name} {version}' for name, version in sorted(composing.items()))})" if composing else ""
    entry = manifest.get("entry_model")
    via = f" via {entry}" if entry and entry != manifest.get("model") else ""
    return (
        f"{manifest.get('model')}{via} version {manifest.get('model_version')}{steps}, "
        f"precision {manifest.get('precision') or 'unknown'}"
    )


def check_same_model(old: dict[str, Any], new: dict[str, Any], what: str) -> None:
    """Raises ModelVersionMismatchError if `old` and `new` name different served models, versions or precisions."""
    if all(old.get(key) == new.get(key) for key in MODEL_KEYS):
        return
    raise ModelVersionMismatchError(
        f"{what} was computed with {describe_model(old)}, but the server now serves {describe_model(new)}; "
        "one job never mixes two model versions: finish it against the original version (e.g. --model-version, "
        "or after a rollback), or pass --overwrite to recompute everything with the new one"
    )


@dataclass
class ChunkResult:
    """The outcome for one slice of the input.

    Attributes:
        index: chunk number.
        positions: input positions of embedded records.
        ids: their FASTA ids.
        embeddings: float32 [len(positions), D] (None with per-residue results).
        windows: how many windows each embedding averages (1 unless --long-sequences chunk applied).
        rejected: (position, id, length, reason) of records that were not embedded.
        aliases: (position, id, source position, source chunk) of records whose sequence equals an earlier record's
            (the source): they take the source's result at assembly, and are never sent.
        residues: per-residue results, one float32 [L, D] array per embedded record (None: mean embeddings).
    """

    index: int
    positions: list[int] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    embeddings: np.ndarray | None = None
    windows: list[int] = field(default_factory=list)
    rejected: list[tuple[int, str, int, str]] = field(default_factory=list)
    aliases: list[tuple[int, str, int, int]] = field(default_factory=list)
    residues: list[np.ndarray] | None = None

    def records(self) -> int:
        return len(self.positions) + len(self.rejected) + len(self.aliases)


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
                if existing.get("journal_format") != manifest.get("journal_format"):
                    raise JournalMismatchError(
                        f"{directory} holds a job journaled by another tritonfleet version (journal format "
                        f"{existing.get('journal_format')}, now {manifest.get('journal_format')}); pass --overwrite "
                        "to start over"
                    )
                check_same_model(existing, manifest, f"the unfinished job in {directory}")
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
        rejected, aliases = result.rejected, result.aliases
        arrays = {
            "positions": np.asarray(result.positions, dtype=np.int64),
            "ids": np.asarray(result.ids, dtype=np.str_),
            "embeddings": np.asarray(embeddings, dtype=np.float32),
            "windows": np.asarray(result.windows, dtype=np.int32),
            "rejected_positions": np.asarray([r[0] for r in rejected], dtype=np.int64),
            "rejected_ids": np.asarray([r[1] for r in rejected], dtype=np.str_),
            "rejected_lengths": np.asarray([r[2] for r in rejected], dtype=np.int64),
            "rejected_reasons": np.asarray([r[3] for r in rejected], dtype=np.str_),
            "alias_positions": np.asarray([a[0] for a in aliases], dtype=np.int64),
            "alias_ids": np.asarray([a[1] for a in aliases], dtype=np.str_),
            "alias_sources": np.asarray([a[2] for a in aliases], dtype=np.int64),
            "alias_source_chunks": np.asarray([a[3] for a in aliases], dtype=np.int64),
        }
        if result.residues is not None:
            arrays["residue_lengths"] = np.asarray([len(r) for r in result.residues], dtype=np.int64)
            arrays["residues"] = (
                np.concatenate(result.residues).astype(np.float32, copy=False)
                if result.residues
                else np.empty((0, embedding_dim), np.float32)
            )
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
            aliases = []
            if "alias_positions" in data.files:
                aliases = list(
                    zip(
                        data["alias_positions"].tolist(),
                        data["alias_ids"].tolist(),
                        data["alias_sources"].tolist(),
                        data["alias_source_chunks"].tolist(),
                    )
                )
            residues = None
            if "residues" in data.files:
                flat, lengths = data["residues"], data["residue_lengths"].tolist()
                offsets = np.cumsum([0, *lengths])
                residues = [flat[offsets[i] : offsets[i + 1]] for i in range(len(lengths))]
            return ChunkResult(
                index=index,
                positions=data["positions"].tolist(),
                ids=data["ids"].tolist(),
                embeddings=data["embeddings"],
                windows=data["windows"].tolist(),
                rejected=rejected,
                aliases=aliases,
                residues=residues,
            )

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def describe_difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = sorted(key for key in old.keys() | new.keys() if old.get(key) != new.get(key))
    return ", ".join(f"{key}: {old.get(key)!r} -> {new.get(key)!r}" for key in keys) or "unknown difference"


def write_rejected(path: Path, rejected: Iterable[tuple[int, str, int, str]]) -> None:
    lines = [REJECTED_HEADER] + [rejected_line(*entry) for entry in rejected]
    atomic_write(path, lambda handle: handle.write("".join(lines).encode("utf-8")))


def rejected_line(position: int, record_id: str, length: int, reason: str) -> str:
    return f"{position}\t{_tsv_field(record_id)}\t{length}\t{_tsv_field(reason)}\n"


def _tsv_field(text: str) -> str:
    return " ".join(text.split())


def import_pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise TritonFleetError(
            "--format parquet needs pyarrow: pip install 'tritonfleet[parquet]' (or use --format npz)"
        ) from None
    return pa, pq


def output_format_for(output: Path) -> str:
    """The format an output path implies: .parquet, .h5/.hdf5/.hdf, else npz."""
    suffix = output.suffix.lower()
    if suffix == ".parquet":
        return "parquet"
    if suffix in (".h5", ".hdf5", ".hdf"):
        return "hdf5"
    return "npz"


def read_output_manifest(output: Path, output_format: str) -> dict[str, Any] | None:
    """The manifest stored in a finished output, or None if it has none / cannot be read."""
    try:
        if output_format == "parquet":
            _, pq = import_pyarrow()
            metadata = pq.read_schema(output).metadata or {}
            text = metadata.get(b"tritonfleet_manifest")
            return json.loads(text) if text else None
        if output_format == "hdf5":
            h5py = import_h5py()
            with h5py.File(output, "r") as handle:
                text = handle.attrs.get("tritonfleet_manifest")
                return json.loads(text) if text is not None else None
        with np.load(output, allow_pickle=False) as data:
            return json.loads(str(data["manifest"])) if "manifest" in data.files else None
    except (OSError, ValueError, KeyError):
        return None


def import_h5py() -> Any:
    try:
        import h5py
    except ImportError:
        raise TritonFleetError(
            "--format hdf5 needs h5py: pip install 'tritonfleet[hdf5]' (or use --format npz)"
        ) from None
    return h5py


def load_output(output: Path, output_format: str | None = None) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(ids, embeddings [N, D], windows [N]) of a finished output, npz, parquet or per-protein HDF5 (default: by
    suffix)."""
    output_format = output_format or output_format_for(output)
    if output_format == "parquet":
        _, pq = import_pyarrow()
        table = pq.read_table(output)
        ids = table.column("id").to_pylist()
        embeddings = np.asarray(table.column("embedding").combine_chunks().flatten(), dtype=np.float32)
        return ids, embeddings.reshape(len(ids), -1), table.column("windows").to_numpy()
    if output_format == "hdf5":
        ids, arrays, windows = load_hdf5(output)
        dim = arrays[0].shape[-1] if arrays else 0
        return ids, np.asarray(arrays, dtype=np.float32).reshape(len(ids), dim), np.asarray(windows, np.int32)
    with np.load(output, allow_pickle=False) as data:
        return data["ids"].tolist(), data["embeddings"], data["windows"]


def load_hdf5(output: Path) -> tuple[list[str], list[np.ndarray], list[int]]:
    """(ids, one array per id: [D] per-protein or [L, D] per-residue, windows) of an HDF5 output, in input order."""
    h5py = import_h5py()
    ids, arrays, windows = [], [], []
    with h5py.File(output, "r") as handle:
        for name, dataset in handle.items():
            ids.append(str(dataset.attrs.get("id", name)))
            arrays.append(dataset[()])
            windows.append(int(dataset.attrs.get("windows", 1)))
    return ids, arrays, windows

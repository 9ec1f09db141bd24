"""The crash-safe journal and final assembly (client.journal) and per-record planning (client.bulk)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tritonfleet.client.bulk import BulkOptions, plan_chunks, plan_record
from tritonfleet.client.errors import TritonFleetError
from tritonfleet.client.fasta import FastaRecord
from tritonfleet.client.journal import (
    ChunkResult,
    Journal,
    JournalMismatchError,
    assemble,
    atomic_write,
    load_output,
    parts_dir_for,
    read_output_manifest,
    rejected_path_for,
)

D = 3
MANIFEST = {"input_sha256": "abc", "records": 5, "model": "esm2", "chunk_size": 2}


def _chunk(index: int, embedded: list[tuple[int, str]], rejected: list[tuple[int, str, int, str]] = ()) -> ChunkResult:
    vectors = np.array([[position] * D for position, _ in embedded], dtype=np.float32).reshape(-1, D)
    return ChunkResult(
        index=index,
        positions=[p for p, _ in embedded],
        ids=[i for _, i in embedded],
        embeddings=vectors,
        windows=[1] * len(embedded),
        rejected=list(rejected),
    )


def test_atomic_write_replaces_whole_files_and_leaves_no_temporary(tmp_path) -> None:
    target = tmp_path / "file.bin"
    atomic_write(target, lambda handle: handle.write(b"first"))
    atomic_write(target, lambda handle: handle.write(b"second"))
    assert target.read_bytes() == b"second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.bin"]


def test_a_failed_write_keeps_the_previous_file(tmp_path) -> None:
    target = tmp_path / "file.bin"
    atomic_write(target, lambda handle: handle.write(b"good"))

    def crash(handle) -> None:
        handle.write(b"partial")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(target, crash)
    assert target.read_bytes() == b"good"


def test_reopening_sweeps_half_written_files_and_keeps_finished_chunks(tmp_path) -> None:
    journal = Journal.open(tmp_path / "out.npz.parts", MANIFEST)
    journal.write_chunk(_chunk(1, [(2, "c"), (3, "d")]), D)
    (journal.directory / "chunk-000000.npz.tmp").write_bytes(b"garbage from a SIGKILL")
    reopened = Journal.open(tmp_path / "out.npz.parts", dict(MANIFEST))
    assert reopened.completed_chunks() == {1}
    assert not list(reopened.directory.glob("*.tmp"))
    chunk = reopened.read_chunk(1)
    assert chunk.ids == ["c", "d"] and chunk.positions == [2, 3]
    np.testing.assert_array_equal(chunk.embeddings[:, 0], [2, 3])


def test_a_journal_from_different_settings_is_refused_with_the_difference(tmp_path) -> None:
    Journal.open(tmp_path / "p", MANIFEST)
    with pytest.raises(JournalMismatchError, match=r"model: 'esm2' -> 'esm2_onnx'"):
        Journal.open(tmp_path / "p", {**MANIFEST, "model": "esm2_onnx"})


def test_assemble_orders_by_input_lists_rejections_and_removes_the_journal(tmp_path) -> None:
    output = tmp_path / "out.npz"
    journal = Journal.open(parts_dir_for(output), MANIFEST)
    # Chunks finish in any order and hold any set of records (bulk cuts them from length order).
    journal.write_chunk(_chunk(2, [(4, "e")]), D)
    journal.write_chunk(_chunk(0, [(3, "d")], [(1, "b", 0, "sequence is empty")]), D)
    journal.write_chunk(_chunk(1, [(0, "a")], [(2, "c", 1500, "sequence is too long:\t1500")]), D)
    assert assemble(journal, 3, 5, output, "npz", D) == (3, 2)
    ids, embeddings, windows = load_output(output)
    assert ids == ["a", "d", "e"]
    np.testing.assert_array_equal(embeddings[:, 0], [0, 3, 4])
    assert windows.tolist() == [1, 1, 1]
    assert rejected_path_for(output).read_text().splitlines() == [
        "position\tid\tlength\treason",
        "1\tb\t0\tsequence is empty",
        "2\tc\t1500\tsequence is too long: 1500",
    ]
    assert read_output_manifest(output, "npz") == MANIFEST
    assert not parts_dir_for(output).exists()


def test_assemble_refuses_a_journal_that_misses_records(tmp_path) -> None:
    output = tmp_path / "out.npz"
    journal = Journal.open(parts_dir_for(output), MANIFEST)
    journal.write_chunk(_chunk(0, [(0, "a"), (1, "b")]), D)
    journal.write_chunk(_chunk(1, [(3, "d")]), D)  # position 2 missing
    with pytest.raises(TritonFleetError, match="exactly once"):
        assemble(journal, 2, 4, output, "npz", D)
    assert not output.exists()


def test_parquet_output_round_trips(tmp_path) -> None:
    pytest.importorskip("pyarrow")
    output = tmp_path / "out.parquet"
    journal = Journal.open(parts_dir_for(output), MANIFEST)
    journal.write_chunk(_chunk(0, [(0, "a"), (1, "b")]), D)
    assemble(journal, 1, 2, output, "parquet", D)
    ids, embeddings, windows = load_output(output)
    assert ids == ["a", "b"] and embeddings.shape == (2, D) and windows.tolist() == [1, 1]
    np.testing.assert_array_equal(embeddings[:, 0], [0, 1])
    assert read_output_manifest(output, "parquet") == json.loads(json.dumps(MANIFEST))


def _record(sequence: str, position: int = 0) -> FastaRecord:
    return FastaRecord(position=position, id=f"r{position}", description="", sequence=sequence, line=1)


def test_chunks_group_similar_lengths_deterministically_and_cover_every_record_once() -> None:
    records = [_record("M" * length, position) for position, length in enumerate([5, 1, 9, 3, 3, 7, 2])]
    chunks = plan_chunks(records, 3)
    assert [[r.position for r in chunk] for chunk in chunks] == [[1, 6, 3], [4, 0, 5], [2]]
    assert plan_chunks(records, 3) == chunks


def test_plan_record_rejects_with_reasons_or_windows_long_sequences() -> None:
    skip, chunk = BulkOptions(fasta=None, output=None), BulkOptions(fasta=None, output=None, long_sequences="chunk")
    assert plan_record(_record("mktay"), skip).windows == ("MKTAY",)
    assert plan_record(_record(""), skip).rejection == "sequence is empty"
    assert "invalid residue 'J' at position 2" in plan_record(_record("MJ"), skip).rejection
    too_long = plan_record(_record("A" * 1500), skip).rejection
    assert "too long: 1500 residues" in too_long and "--long-sequences chunk" in too_long
    windowed = plan_record(_record("A" * 1500), chunk)
    assert windowed.rejection is None and [len(w) for w in windowed.windows] == [1022, 1022]
    assert "invalid residue 'J' at position 1201" in plan_record(_record("A" * 1200 + "J" + "A" * 10), chunk).rejection

"""The crash-safe journal (client.journal), the streaming assembly and writers (client.writers) and the planning of
records, windows and repeats (client.bulk)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tritonfleet.client.bulk_plan import BulkOptions, SeenIndex, plan_record, plan_windows, window_order
from tritonfleet.client.errors import TritonFleetError
from tritonfleet.client.fasta import FastaRecord
from tritonfleet.client.journal import (
    ChunkResult,
    Journal,
    JournalMismatchError,
    ModelVersionMismatchError,
    atomic_write,
    load_hdf5,
    load_output,
    parts_dir_for,
    read_output_manifest,
    rejected_path_for,
)
from tritonfleet.client.writers import Hdf5Writer, Layout, assemble, escape_id, unescape_id

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
    with pytest.raises(JournalMismatchError, match=r"chunk_size: 2 -> 4"):
        Journal.open(tmp_path / "p", {**MANIFEST, "chunk_size": 4})


def test_resuming_across_a_model_version_change_is_refused_with_both_versions(tmp_path) -> None:
    old = {**MANIFEST, "model_version": "1", "composing_versions": {"esm2_onnx": "1"}, "precision": "int8"}
    Journal.open(tmp_path / "p", old)
    new = {**old, "composing_versions": {"esm2_onnx": "2"}}
    with pytest.raises(ModelVersionMismatchError) as refused:
        Journal.open(tmp_path / "p", new)
    message = str(refused.value)
    assert "esm2 version 1 (esm2_onnx 1), precision int8" in message
    assert "now serves esm2 version 1 (esm2_onnx 2)" in message and "never mixes two model versions" in message
    with pytest.raises(ModelVersionMismatchError, match="precision fp32"):
        Journal.open(tmp_path / "p", {**old, "precision": "fp32"})


def test_assemble_orders_by_input_lists_rejections_and_removes_the_journal(tmp_path) -> None:
    output = tmp_path / "out.npz"
    journal = Journal.open(parts_dir_for(output), MANIFEST)
    # Chunks finish in any order and hold any set of records (bulk cuts them from length order).
    journal.write_chunk(_chunk(2, [(4, "e")]), D)
    journal.write_chunk(_chunk(0, [(3, "d")], [(1, "b", 0, "sequence is empty")]), D)
    journal.write_chunk(_chunk(1, [(0, "a")], [(2, "c", 1500, "sequence is too long:\t1500")]), D)
    assert assemble(journal, Layout(records=5, window=5, chunk_size=2), output, "npz", D) == (3, 2)
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
        assemble(journal, Layout(records=4, window=4, chunk_size=2), output, "npz", D)
    assert not output.exists()


def test_parquet_output_round_trips(tmp_path) -> None:
    pytest.importorskip("pyarrow")
    output = tmp_path / "out.parquet"
    journal = Journal.open(parts_dir_for(output), MANIFEST)
    journal.write_chunk(_chunk(0, [(0, "a"), (1, "b")]), D)
    assemble(journal, Layout(records=2, window=2, chunk_size=2), output, "parquet", D)
    ids, embeddings, windows = load_output(output)
    assert ids == ["a", "b"] and embeddings.shape == (2, D) and windows.tolist() == [1, 1]
    np.testing.assert_array_equal(embeddings[:, 0], [0, 1])
    assert read_output_manifest(output, "parquet") == json.loads(json.dumps(MANIFEST))


def _record(sequence: str, position: int = 0) -> FastaRecord:
    return FastaRecord(position=position, id=f"r{position}", description="", sequence=sequence, line=1)


def test_window_order_sorts_by_length_stably_and_covers_every_record_once() -> None:
    sequences = ["M" * 5, "M", "A" * 9, "MKV", "MKA", "M" * 7, "MK"]
    assert window_order(sequences) == [1, 6, 3, 4, 0, 5, 2]
    assert window_order(sequences) == window_order(list(sequences))


def test_window_order_sends_repeats_after_every_first_occurrence() -> None:
    """A repeat in flight beside its original would miss the server's response cache."""
    sequences = ["MKV", "MKV", "MK", "MKVL", "MK", "MKV", "A"]
    order = window_order(sequences)
    assert order == [6, 2, 0, 3, 4, 1, 5]
    assert sorted(order) == list(range(len(sequences)))


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


# -- streaming assembly, repeats and HDF5 ----------------------------------------------------------------------------


def _alias_chunk(index: int, embedded, aliases, rejected=()) -> ChunkResult:
    chunk = _chunk(index, embedded, list(rejected))
    chunk.aliases = list(aliases)
    return chunk


def test_assembly_streams_windows_and_resolves_repeats_within_and_across_windows(tmp_path) -> None:
    # Window 0 = records 0-3 (chunks 0, 1), window 1 = records 4-5 (chunk 2): chunks_per_window = 2.
    layout = Layout(records=6, window=4, chunk_size=2)
    assert [layout.chunk_indices(w) for w in range(layout.windows)] == [[0, 1], [2]]
    output = tmp_path / "out.npz"
    journal = Journal.open(parts_dir_for(output), MANIFEST)
    journal.write_chunk(_alias_chunk(0, [(0, "a")], [(2, "c", 0, 0)]), D)  # c repeats a (same window)
    journal.write_chunk(_alias_chunk(1, [(3, "d")], [], [(1, "b", 5, "bad")]), D)
    # e repeats d (an earlier window); f repeats b, which was rejected.
    journal.write_chunk(_alias_chunk(2, [], [(4, "e", 3, 1), (5, "f", 1, 1)]), D)
    assert assemble(journal, layout, output, "npz", D) == (4, 2)
    ids, embeddings, _ = load_output(output)
    assert ids == ["a", "c", "d", "e"]
    np.testing.assert_array_equal(embeddings[:, 0], [0, 0, 3, 3])
    rejected = rejected_path_for(output).read_text().splitlines()[1:]
    assert rejected[0] == "1\tb\t5\tbad"
    assert rejected[1].startswith("5\tf\t5\tsame sequence as record 1, which was rejected: bad")


def test_windows_are_length_sorted_chunked_and_repeats_and_repeated_ids_are_planned(tmp_path) -> None:
    sequences = ["MKTAYI", "GS", "MKTAYI", "GSHML", "GS", "MKTAYI", "AAA"]
    records = [FastaRecord(i, f"r{i}", "", s, i + 1) for i, s in enumerate(sequences)]
    records[6] = FastaRecord(6, "r1", "", "AAA", 7)  # a repeated id
    options = BulkOptions(fasta=None, output=None, window=4, chunk_size=3)
    index = SeenIndex(tmp_path / "index.sqlite")
    windows = list(plan_windows(records, options, index))
    index.close()
    assert not (tmp_path / "index.sqlite").exists()
    # Window 0 holds records 0-3 (chunks 0, 1); window 1 records 4-6 (chunk 2, numbered from 1 * ceil(4 / 3)).
    assert [[(number, [p.record.position for p in plans]) for number, plans in w.chunks] for w in windows] == [
        [(0, [1, 3, 0]), (1, [2])],
        [(2, [4, 6, 5])],
    ]
    plans = {p.record.position: p for w in windows for _, chunk in w.chunks for p in chunk}
    assert plans[2].alias == (0, 0)  # same window: the first occurrence, in chunk 0
    assert plans[4].alias == (1, 0) and plans[5].alias == (0, 0)  # later window: back to window 0's chunks
    assert plans[6].rejection.startswith("repeated id 'r1' (first at line 2)")
    assert all(plans[i].alias is None for i in (0, 1, 3))
    without = list(
        plan_windows(
            records, BulkOptions(fasta=None, output=None, window=4, dedup=False), SeenIndex(tmp_path / "i2.sqlite")
        )
    )
    assert all(p.alias is None for w in without for _, chunk in w.chunks for p in chunk)


def test_hdf5_ids_are_escaped_reversibly() -> None:
    for record_id in ("sp|P12345|X_HUMAN", "a/b", "50%/x", ".", "a.b"):
        name = escape_id(record_id)
        assert "/" not in name and name != "." and unescape_id(name) == record_id


def test_hdf5_per_protein_output_has_one_dataset_per_id_with_the_model(tmp_path) -> None:
    h5py = pytest.importorskip("h5py")
    output = tmp_path / "out.h5"
    manifest = {**MANIFEST, "model_version": "3", "precision": "int8", "composing_versions": {"esm2_onnx": "3"}}
    journal = Journal.open(parts_dir_for(output), manifest)
    journal.write_chunk(_chunk(0, [(1, "sp|P1|A/B"), (0, "a")], [(2, "c", 0, "sequence is empty")]), D)
    assert assemble(journal, Layout(3, 3, 3), output, "hdf5", D) == (2, 1)
    with h5py.File(output, "r") as handle:
        assert list(handle.keys()) == ["a", "sp|P1|A%2FB"]  # input order (creation order is tracked)
        assert handle["sp|P1|A%2FB"].shape == (D,) and handle["sp|P1|A%2FB"].attrs["id"] == "sp|P1|A/B"
        assert handle.attrs["model_version"] == "3" and handle.attrs["precision"] == "int8"
    ids, embeddings, _ = load_output(output)
    assert ids == ["a", "sp|P1|A/B"] and embeddings[:, 0].tolist() == [0, 1]
    assert read_output_manifest(output, "hdf5") == manifest


def test_hdf5_per_residue_output_holds_one_l_by_d_array_per_id(tmp_path) -> None:
    pytest.importorskip("h5py")
    output = tmp_path / "out.h5"
    journal = Journal.open(parts_dir_for(output), MANIFEST)
    residues = [np.full((3, D), 1, np.float32), np.full((5, D), 2, np.float32)]
    chunk = ChunkResult(0, positions=[0, 2], ids=["a", "c"], windows=[1, 1], residues=residues)
    chunk.aliases = [(1, "b", 2, 0)]
    journal.write_chunk(chunk, D)
    assert assemble(journal, Layout(3, 3, 3), output, "hdf5", D, per_residue=True) == (3, 0)
    ids, arrays, _ = load_hdf5(output)
    assert ids == ["a", "b", "c"] and [a.shape for a in arrays] == [(3, D), (5, D), (5, D)]
    np.testing.assert_array_equal(arrays[1], residues[1])


def test_a_kill_during_the_hdf5_write_loses_nothing_and_a_rerun_assembles_it(tmp_path, monkeypatch) -> None:
    pytest.importorskip("h5py")
    output = tmp_path / "out.h5"
    journal = Journal.open(parts_dir_for(output), MANIFEST)
    journal.write_chunk(_chunk(0, [(0, "a"), (1, "b")]), D)
    journal.write_chunk(_chunk(1, [(2, "c")]), D)
    layout = Layout(3, 2, 2)
    real_write = Hdf5Writer.write
    calls = []

    def dies_on_the_second_window(self, ids, arrays, windows) -> None:
        calls.append(ids)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as a kill mid-write: the first window is already in OUT.tmp
        real_write(self, ids, arrays, windows)

    monkeypatch.setattr(Hdf5Writer, "write", dies_on_the_second_window)
    with pytest.raises(KeyboardInterrupt):
        assemble(journal, layout, output, "hdf5", D)
    assert not output.exists() and journal.completed_chunks() == {0, 1}
    # A SIGKILL leaves the temporary file behind: the re-run overwrites it.
    (tmp_path / "out.h5.tmp").write_bytes(b"half an HDF5 file")
    monkeypatch.setattr(Hdf5Writer, "write", real_write)
    reopened = Journal.open(parts_dir_for(output), MANIFEST)
    assert assemble(reopened, layout, output, "hdf5", D) == (3, 0)
    assert load_output(output)[0] == ["a", "b", "c"] and not (tmp_path / "out.h5.tmp").exists()

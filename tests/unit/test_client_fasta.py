"""FASTA parsing edge cases (client.fasta)."""

from __future__ import annotations

import gzip
import hashlib

import pytest

from tritonfleet.client.fasta import (
    DuplicateIdError,
    FastaFormatError,
    iter_fasta,
    parse_fasta_lines,
    read_fasta,
    scan_fasta,
)


def test_multiline_records_keep_order_ids_and_descriptions() -> None:
    lines = [">sp|P1|A first protein", "MKT", "AYI", ">P2", "GSH", "MLE", "", ">P3 third"]
    records = list(parse_fasta_lines(lines))
    assert [(r.position, r.id, r.description, r.sequence, r.line) for r in records] == [
        (0, "sp|P1|A", "first protein", "MKTAYI", 1),
        (1, "P2", "", "GSHMLE", 4),
        (2, "P3", "third", "", 8),
    ]


def test_crlf_bom_blank_lines_comments_and_inner_whitespace_are_tolerated() -> None:
    lines = ["\ufeff>a desc\r\n", "mk t\r\n", "\r\n", "; a comment\r\n", "\tAY I \r\n", ">b\r\n", "QR\r\n"]
    records = list(parse_fasta_lines(lines))
    assert [(r.id, r.sequence) for r in records] == [("a", "mktAYI"), ("b", "QR")]


def test_sequence_before_first_header_is_an_error_naming_the_line() -> None:
    with pytest.raises(FastaFormatError, match=r"in\.fa:2: sequence data before the first '>' header"):
        list(parse_fasta_lines(["", "MKT", ">a", "MKT"], source="in.fa"))


def test_header_without_id_is_an_error() -> None:
    with pytest.raises(FastaFormatError, match=r":3: header without an id"):
        list(parse_fasta_lines([">a", "MKT", ">   ", "MKT"]))


def test_empty_input_has_no_records() -> None:
    assert list(parse_fasta_lines([])) == []
    assert list(parse_fasta_lines(["", "; only a comment"])) == []


def test_read_fasta_plain_and_gzip_give_the_same_records(tmp_path) -> None:
    text = ">x\nMKTAYIAK\nQR\n>y\nGSHM\n"
    plain, packed = tmp_path / "in.fasta", tmp_path / "in.fasta.gz"
    plain.write_text(text)
    packed.write_bytes(gzip.compress(text.encode()))
    assert read_fasta(plain) == read_fasta(packed)
    assert [(r.id, r.sequence) for r in read_fasta(plain)] == [("x", "MKTAYIAKQR"), ("y", "GSHM")]


def test_duplicate_ids_are_reported_with_their_lines(tmp_path) -> None:
    path = tmp_path / "dup.fasta"
    path.write_text(">a\nMK\n>b\nMK\n>a\nMK\n>b x\nMK\n>c\nMK\n")
    with pytest.raises(DuplicateIdError) as caught:
        read_fasta(path)
    message = str(caught.value)
    assert "2 duplicate FASTA id(s)" in message
    assert "'a' at lines 1, 5" in message
    assert "'b' at lines 3, 7" in message
    assert "'c'" not in message


def test_gzip_is_recognised_by_its_bytes_and_streamed_lazily(tmp_path) -> None:
    text = "".join(f">r{i}\nMKTAYIAKQR\n" for i in range(1000))
    packed = tmp_path / "proteome.fa"  # no .gz suffix: detected by the magic bytes
    packed.write_bytes(gzip.compress(text.encode()))
    records = iter_fasta(packed)
    first = next(records)  # a generator: nothing else is read into memory
    assert (first.id, first.position, first.sequence) == ("r0", 0, "MKTAYIAKQR")
    assert sum(1 for _ in records) == 999
    records.close()


def test_scan_gives_the_file_checksum_and_record_count(tmp_path) -> None:
    path = tmp_path / "in.fasta"
    path.write_text(">a\nMK\n>b\n>c\nGS\nHM\n")
    assert scan_fasta(path) == (hashlib.sha256(path.read_bytes()).hexdigest(), 3)


def test_binary_garbage_is_a_one_line_format_error(tmp_path) -> None:
    path = tmp_path / "in.fasta"
    path.write_bytes(b">a\n\xff\xfe\x00MK\n")
    with pytest.raises(FastaFormatError, match="cannot be read as UTF-8 FASTA"):
        scan_fasta(path)

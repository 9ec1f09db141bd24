"""FASTA reading for bulk embedding: strict about structure, tolerant about formatting.

Rules: the id is the header's first whitespace-separated word; sequence lines are concatenated with all whitespace
removed; blank lines and `;` comment lines are skipped; CRLF line endings, a UTF-8 BOM and gzip input (`.gz`) are
accepted (gzip is recognised by its magic bytes, whatever the suffix). Text before the first header and headers
without an id are format errors. A record without sequence lines is kept (with an empty sequence) so that it is
reported as rejected rather than lost.

`iter_fasta` streams records (memory bounded by one record); `scan_fasta` makes one streaming pass for the input's
checksum and record count; `read_fasta` reads everything and refuses duplicate ids (the library helper; `embed-fasta`
streams and sends repeated ids to its rejects file instead).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tritonfleet.client.errors import TritonFleetError


class FastaFormatError(TritonFleetError, ValueError):
    """The file is not valid FASTA; the message names the line."""


class DuplicateIdError(FastaFormatError):
    """Two or more records share an id; the message lists them with their line numbers."""


@dataclass(frozen=True)
class FastaRecord:
    """One FASTA record.

    Attributes:
        position: 0-based position among the file's records.
        id: the header's first word.
        description: the rest of the header line.
        sequence: the sequence lines joined, whitespace removed, case kept.
        line: 1-based line number of the header.
    """

    position: int
    id: str
    description: str
    sequence: str
    line: int


def parse_fasta_lines(lines: Iterable[str], source: str = "<fasta>") -> Iterator[FastaRecord]:
    """Yields records from text lines (with or without line endings)."""
    header: tuple[str, str, int] | None = None
    parts: list[str] = []
    position = 0
    for line_number, raw_line in enumerate(lines, start=1):
        line = raw_line.rstrip("\r\n")
        if line_number == 1:
            line = line.removeprefix("\ufeff")
        stripped = line.strip()
        if not stripped or stripped.startswith(";"):
            continue
        if stripped.startswith(">"):
            if header is not None:
                yield FastaRecord(position, header[0], header[1], "".join(parts), header[2])
                position += 1
            words = stripped[1:].split(maxsplit=1)
            if not words:
                raise FastaFormatError(f"{source}:{line_number}: header without an id")
            header = (words[0], words[1] if len(words) > 1 else "", line_number)
            parts = []
            continue
        if header is None:
            raise FastaFormatError(f"{source}:{line_number}: sequence data before the first '>' header")
        parts.append("".join(stripped.split()))
    if header is not None:
        yield FastaRecord(position, header[0], header[1], "".join(parts), header[2])


GZIP_MAGIC = b"\x1f\x8b"


def is_gzip(path: Path | str) -> bool:
    with open(path, "rb") as handle:
        return handle.read(2) == GZIP_MAGIC


@contextlib.contextmanager
def open_fasta_text(path: Path | str) -> Iterator[io.TextIOBase]:
    """The file as text lines (UTF-8, newlines kept as written), decompressing gzip input."""
    path = Path(path)
    if is_gzip(path):
        handle = gzip.open(path, "rt", encoding="utf-8", newline="")  # noqa: SIM115 - closed below
    else:
        handle = open(path, encoding="utf-8", newline="")  # noqa: SIM115 - closed below
    try:
        yield handle
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError) as error:
        raise FastaFormatError(f"{path}: cannot be read as UTF-8 FASTA (plain or gzip): {error}") from None
    finally:
        handle.close()


def iter_fasta(path: Path | str) -> Iterator[FastaRecord]:
    """Streams the records of a FASTA file (plain or gzip); nothing but the current record is held."""
    with open_fasta_text(path) as handle:
        yield from parse_fasta_lines(handle, source=str(path))


def scan_fasta(path: Path | str) -> tuple[str, int]:
    """(sha256 of the file's bytes, number of records) in one streaming pass; checks the format on the way."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    count = sum(1 for _ in iter_fasta(path))
    return digest.hexdigest(), count


def read_fasta(path: Path | str) -> list[FastaRecord]:
    """Reads every record of a FASTA file (plain or .gz) and checks that ids are unique.

    Raises:
        FastaFormatError: malformed file (names the line).
        DuplicateIdError: repeated ids (names every repeated id and its lines, up to 10).
    """
    records = list(iter_fasta(path))
    check_unique_ids(records, source=str(path))
    return records


def check_unique_ids(records: Iterable[FastaRecord], source: str = "<fasta>") -> None:
    """Raises DuplicateIdError if any id occurs more than once."""
    lines_by_id: dict[str, list[int]] = {}
    for record in records:
        lines_by_id.setdefault(record.id, []).append(record.line)
    duplicates = [(record_id, lines) for record_id, lines in lines_by_id.items() if len(lines) > 1]
    if duplicates:
        shown = "; ".join(
            f"{record_id!r} at lines {', '.join(map(str, lines))}" for record_id, lines in duplicates[:10]
        )
        more = f" (and {len(duplicates) - 10} more)" if len(duplicates) > 10 else ""
        raise DuplicateIdError(
            f"{source}: {len(duplicates)} duplicate FASTA id(s): {shown}{more}; outputs are keyed by id, "
            "so ids must be unique"
        )

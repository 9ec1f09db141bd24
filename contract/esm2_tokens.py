"""ESM-2 tokens in numpy only: the fair-esm / Hugging Face alphabet, validation and length-bucketed padding.

The one place the ESM-2 sequence rules live. The export, the client and the load tools import it as
`tritonfleet.contract.esm2_tokens`; the served python models (`model_repository/esm2_tokenizer`, `esm2_bls`) import
a copy that the export writes beside their `model.py`, so this module must depend on nothing but numpy and the
standard library (the NGC image's python backend has numpy, not tritonfleet).

A sequence of L residues becomes `<cls> r1..rL <eos>` (L + 2 tokens), padded with `<pad>` (mask 0) up to the length
bucket of the longest sequence in the batch.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# Order of fair-esm `Alphabet.from_architecture("ESM-1b")` (also ESM-2): specials, the residue tokens of
# esm/constants.py, one `<null_1>` to pad to a multiple of 8, then `<mask>`. HF's vocab.txt is written from it.
SPECIAL_TOKENS_BEFORE: tuple[str, ...] = ("<cls>", "<pad>", "<eos>", "<unk>")
RESIDUE_TOKENS: tuple[str, ...] = tuple("LAGVSERTIDPKQNFYMHWCXBUZO.-")
ALPHABET: tuple[str, ...] = (*SPECIAL_TOKENS_BEFORE, *RESIDUE_TOKENS, "<null_1>", "<mask>")
TOKEN_TO_ID: dict[str, int] = {token: index for index, token in enumerate(ALPHABET)}

CLS_ID = TOKEN_TO_ID["<cls>"]
PAD_ID = TOKEN_TO_ID["<pad>"]
EOS_ID = TOKEN_TO_ID["<eos>"]
UNK_ID = TOKEN_TO_ID["<unk>"]
MASK_ID = TOKEN_TO_ID["<mask>"]
VOCAB_SIZE = len(ALPHABET)

# Characters a protein sequence may contain: the 20 standard amino acids and the ambiguity / rare codes
# X B U Z O. Gap '-' and '.' are alignment symbols, not residues, so requests containing them are rejected.
VALID_RESIDUES: frozenset[str] = frozenset("ACDEFGHIKLMNPQRSTVWYXBUZO")

# ESM-2 was trained on crops of at most 1024 tokens: 1022 residues + <cls> + <eos> (fair-esm extract.py default).
MAX_RESIDUES = 1022
SPECIAL_TOKENS_PER_SEQUENCE = 2
MAX_TOKENS = MAX_RESIDUES + SPECIAL_TOKENS_PER_SEQUENCE

# Token-length buckets (BOS/EOS included), multiples of 32, from `loadtest/buckets.py` on a Swiss-Prot-like
# length mix (reports/buckets.md): ~12 % padded tokens. Triton batches only runs of consecutive same-shape requests,
# so buckets pay off when same-bucket requests arrive together (bulk clients sending length-sorted sequences);
# random-order single requests still batch ~1.1 on average, as with no buckets.
DEFAULT_BUCKETS: tuple[int, ...] = (128, 192, 256, 320, 384, 480, 608, 768, MAX_TOKENS)
# No buckets: each request padded to its own longest sequence. Where every execution holds one sequence (the CPU
# plans' execution cap) buckets batch nothing and only add padded tokens (~12 % on the Swiss-Prot mix, 2.5x the work
# for a 50-residue protein padded to 128), so those exports write this instead (config value "exact").
EXACT_LENGTHS = "exact"
# What one more execution of the network costs, in padded tokens: the tokenizer pads consecutive requests to a
# shared width when that is cheaper than splitting them into separate executions (see `plan_shared_widths`).
# The value is (time of one more execution) / (compute time per token). Measured on the 2-core CPU machine with
# ESM-2 8M: ~2 ms of Triton + Python-backend overhead vs ~0.57 ms per token (218 ms for 384 tokens, no gain from
# batching), i.e. ~4 tokens: on CPU merging never pays, so per-request buckets stay (reports/buckets.md). On GPUs
# an execution costs milliseconds while a token costs microseconds, so merging pays.
RUN_OVERHEAD_TOKENS_CPU = 0
RUN_OVERHEAD_TOKENS_GPU = 512
DEFAULT_RUN_OVERHEAD_TOKENS = RUN_OVERHEAD_TOKENS_CPU

# The 20 standard amino acids, used to draw random test proteins.
STANDARD_RESIDUES = "ACDEFGHIKLMNPQRSTVWY"

# Lookup table byte -> token id; -1 marks characters that are not residues.
_BYTE_TO_ID = np.full(256, -1, dtype=np.int64)
for _residue in VALID_RESIDUES:
    _BYTE_TO_ID[ord(_residue)] = TOKEN_TO_ID[_residue]
# The same as a `bytes.translate` table, lower-case codes included (every token id fits in a byte); _NOT_A_RESIDUE
# marks the rest. Served models tokenize one short sequence per request, where numpy's per-call cost outweighs the
# work: `encode_batch` tokenizes valid sequences with this table and only looks closer at the rest.
_NOT_A_RESIDUE = 0xFF
_RESIDUE_TRANSLATION = bytes(
    TOKEN_TO_ID[chr(code).upper()] if chr(code).upper() in VALID_RESIDUES and code < 128 else _NOT_A_RESIDUE
    for code in range(256)
)
_CLS_BYTE, _EOS_BYTE, _PAD_BYTE = bytes((CLS_ID,)), bytes((EOS_ID,)), bytes((PAD_ID,))


class InvalidSequenceError(ValueError):
    """A protein sequence that cannot be embedded; the message names the problem."""


def validate_sequence(sequence: str | bytes) -> str:
    """Checks one protein sequence and returns it as upper-case text.

    Lower-case residues are accepted (FASTA files often use them); surrounding whitespace is stripped.

    Raises:
        InvalidSequenceError: empty, longer than MAX_RESIDUES, or a character that is not a residue code.
    """
    if isinstance(sequence, bytes | bytearray | np.bytes_):
        try:
            sequence = bytes(sequence).decode("ascii")
        except UnicodeDecodeError as error:
            raise InvalidSequenceError(
                f"sequence is not ASCII: byte 0x{bytes(sequence)[error.start]:02x} at position {error.start + 1}"
            ) from None
    if not isinstance(sequence, str):
        raise InvalidSequenceError(f"sequence must be str or bytes, got {type(sequence).__name__}")
    text = sequence.strip().upper()
    if not text:
        raise InvalidSequenceError("sequence is empty")
    if len(text) > MAX_RESIDUES:
        raise InvalidSequenceError(f"sequence is too long: {len(text)} residues, the limit is {MAX_RESIDUES}")
    codes = np.frombuffer(text.encode("ascii", errors="replace"), dtype=np.uint8)
    invalid = np.flatnonzero(_BYTE_TO_ID[codes] < 0)
    if invalid.size:
        position = int(invalid[0])
        raise InvalidSequenceError(
            f"invalid residue {text[position]!r} at position {position + 1}; allowed: {''.join(sorted(VALID_RESIDUES))}"
        )
    return text


def validate_buckets(buckets: Iterable[int]) -> tuple[int, ...]:
    """Returns the buckets sorted and checked: positive, unique, and the largest covers MAX_TOKENS."""
    result = tuple(sorted(int(bucket) for bucket in buckets))
    if not result:
        raise ValueError("at least one length bucket is required")
    if result[0] <= SPECIAL_TOKENS_PER_SEQUENCE:
        raise ValueError(f"length buckets must exceed {SPECIAL_TOKENS_PER_SEQUENCE} tokens, got {result[0]}")
    if len(set(result)) != len(result):
        raise ValueError(f"length buckets must be unique, got {result}")
    if result[-1] < MAX_TOKENS:
        raise ValueError(f"the largest length bucket must be >= {MAX_TOKENS} tokens, got {result[-1]}")
    return result


def parse_buckets(text: str) -> tuple[int, ...]:
    """Parses a comma-separated bucket list such as "64,128,1024" (the form stored in the Triton config), or
    EXACT_LENGTHS: the empty tuple, each request padded to its own longest sequence and no further."""
    if text.strip() == EXACT_LENGTHS:
        return ()
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"length buckets must be comma-separated integers, got {text!r}") from None
    return validate_buckets(values)


def format_buckets(buckets: Iterable[int]) -> str:
    """The inverse of `parse_buckets`."""
    buckets = tuple(buckets)
    return ",".join(str(bucket) for bucket in validate_buckets(buckets)) if buckets else EXACT_LENGTHS


def bucket_for(token_length: int, buckets: Sequence[int] | None = DEFAULT_BUCKETS) -> int:
    """The smallest bucket holding `token_length` tokens (residues + 2); the length itself for no buckets (None or
    `()`, EXACT_LENGTHS).

    Raises:
        ValueError: the length exceeds the largest bucket.
    """
    if not buckets:
        return token_length
    index = bisect.bisect_left(buckets, token_length)
    if index == len(buckets):
        raise ValueError(f"{token_length} tokens exceed the largest length bucket {buckets[-1]}")
    return buckets[index]


def _validate_in_batch(sequence: str | bytes, index: int, count: int) -> str:
    try:
        return validate_sequence(sequence)
    except InvalidSequenceError as error:
        if count == 1:
            raise
        raise InvalidSequenceError(f"sequence {index}: {error}") from None


def plan_shared_widths(widths: Sequence[int], rows: Sequence[int], run_overhead_tokens: int) -> list[int]:
    """Widths for consecutive requests so the next model's dynamic batcher sees long runs of one shape.

    Triton's dynamic batcher takes requests in arrival order and closes a batch at the first request whose shape
    differs, so per-request buckets alone batch random-length traffic poorly. The requests of one tokenizer
    `execute()` reach the next model in order: padding a contiguous run of them to the run's widest bucket makes
    that run one execution. Splitting into runs minimises `sum(run_overhead_tokens + width * rows)` exactly
    (dynamic programming over the O(n^2) contiguous splits; n <= max_batch_size).

    Args:
        widths: each request's own padded width (its bucket), in request order.
        rows: each request's batch size (sequences in it).
        run_overhead_tokens: the cost of one more execution, in padded tokens; 0 keeps each request's own width.

    Returns:
        The width to pad each request to (never smaller than its own).
    """
    count = len(widths)
    best = [0.0] + [float("inf")] * count
    split = [0] * (count + 1)
    for end in range(1, count + 1):
        widest, total_rows = 0, 0
        for start in range(end - 1, -1, -1):
            widest = max(widest, widths[start])
            total_rows += rows[start]
            cost = best[start] + run_overhead_tokens + widest * total_rows
            if cost < best[end]:
                best[end], split[end] = cost, start
    planned = list(widths)
    end = count
    while end > 0:
        start = split[end]
        widest = max(widths[start:end])
        planned[start:end] = [widest] * (end - start)
        end = start
    return planned


def pad_to_width(input_ids: np.ndarray, attention_mask: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Extends tokenized rows with padding (`<pad>`, mask 0) to `width` tokens."""
    extra = width - input_ids.shape[1]
    if extra < 0:
        raise ValueError(f"cannot pad {input_ids.shape[1]} tokens down to {width}")
    if extra == 0:
        return input_ids, attention_mask
    return (
        np.pad(input_ids, ((0, 0), (0, extra)), constant_values=PAD_ID),
        np.pad(attention_mask, ((0, 0), (0, extra)), constant_values=0),
    )


def encode_batch(
    sequences: Sequence[str | bytes], buckets: Sequence[int] | None = DEFAULT_BUCKETS
) -> tuple[np.ndarray, np.ndarray]:
    """Validates and tokenizes sequences, padding all of them to the bucket of the longest.

    Args:
        sequences: protein sequences (str or ASCII bytes).
        buckets: sorted token-length buckets; None or () pads to the longest sequence exactly.

    Returns:
        (input_ids, attention_mask), both int64 of shape [N, T].

    Raises:
        InvalidSequenceError: for the first bad sequence; the message says which one.
    """
    if len(sequences) == 0:
        raise InvalidSequenceError("no sequences given")
    rows = [_residue_tokens(sequence) for sequence in sequences]
    if None not in rows:
        return _encode_rows(rows, buckets)
    texts = [_validate_in_batch(sequence, index, len(sequences)) for index, sequence in enumerate(sequences)]
    longest = max(len(text) for text in texts) + SPECIAL_TOKENS_PER_SEQUENCE
    width = bucket_for(longest, buckets)
    input_ids = np.full((len(texts), width), PAD_ID, dtype=np.int64)
    attention_mask = np.zeros((len(texts), width), dtype=np.int64)
    for row, text in enumerate(texts):
        length = len(text)
        input_ids[row, 0] = CLS_ID
        input_ids[row, 1 : length + 1] = _BYTE_TO_ID[np.frombuffer(text.encode("ascii"), dtype=np.uint8)]
        input_ids[row, length + 1] = EOS_ID
        attention_mask[row, : length + SPECIAL_TOKENS_PER_SEQUENCE] = 1
    return input_ids, attention_mask


def _residue_tokens(sequence: str | bytes) -> bytes | None:
    """A sequence's residue token ids, one byte each, if `validate_sequence` accepts it as it stands after `strip()`;
    None for anything else (not ASCII, empty, too long, a character that is not a residue code, other whitespace
    that `str.strip` removes but `bytes.strip` keeps): the validating path decides those."""
    if isinstance(sequence, str):
        if not sequence.isascii():
            return None
        sequence = sequence.encode("ascii")
    elif not isinstance(sequence, bytes):
        return None
    tokens = sequence.strip().translate(_RESIDUE_TRANSLATION)
    if not tokens or len(tokens) > MAX_RESIDUES or _NOT_A_RESIDUE in tokens:
        return None
    return tokens


def _encode_rows(rows: Sequence[bytes], buckets: Sequence[int] | None) -> tuple[np.ndarray, np.ndarray]:
    """`encode_batch` of checked residue tokens: the ids and the mask built as bytes, converted by one numpy call."""
    width = bucket_for(max(len(row) for row in rows) + SPECIAL_TOKENS_PER_SEQUENCE, buckets)
    padding = [width - SPECIAL_TOKENS_PER_SEQUENCE - len(row) for row in rows]
    ids = b"".join(_CLS_BYTE + row + _EOS_BYTE + _PAD_BYTE * extra for row, extra in zip(rows, padding))
    mask = b"".join(b"\x01" * (width - extra) + b"\x00" * extra for extra in padding)
    both = np.frombuffer(ids + mask, dtype=np.uint8).astype(np.int64).reshape(2, len(rows), width)
    return both[0], both[1]


def encode(sequence: str | bytes, buckets: Sequence[int] | None = DEFAULT_BUCKETS) -> tuple[np.ndarray, np.ndarray]:
    """Tokenizes one sequence; returns (input_ids, attention_mask) of shape [1, T]."""
    return encode_batch([sequence], buckets)


@dataclass(frozen=True)
class TokenizerSettings:
    """How a served model tokenizes: its length buckets and the run-merging cost (config `parameters`)."""

    buckets: tuple[int, ...] = DEFAULT_BUCKETS  # () = exact lengths (EXACT_LENGTHS)
    run_overhead_tokens: int = DEFAULT_RUN_OVERHEAD_TOKENS

    @property
    def padding_buckets(self) -> tuple[int, ...] | None:
        """The buckets `encode_batch` takes: None pads to the longest sequence exactly."""
        return self.buckets or None

    @classmethod
    def from_model_config(cls, model_config_json: str) -> TokenizerSettings:
        """From the JSON model config a served python model receives in `initialize(args)`."""
        parameters = json.loads(model_config_json).get("parameters", {})
        return cls.from_parameters({key: value.get("string_value", "") for key, value in parameters.items()})

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, str]) -> TokenizerSettings:
        """From a model config's `parameters` as {key: string value}; missing or empty keys keep the defaults."""
        buckets = parameters.get("length_buckets", "").strip()
        overhead = parameters.get("run_overhead_tokens", "").strip()
        return cls(
            parse_buckets(buckets) if buckets else DEFAULT_BUCKETS,
            int(overhead) if overhead else DEFAULT_RUN_OVERHEAD_TOKENS,
        )

    def describe(self) -> str:
        return f"length buckets {format_buckets(self.buckets)}, run overhead {self.run_overhead_tokens} tokens"


def random_proteins(count: int, rng: np.random.Generator, min_length: int = 1, max_length: int = 300) -> list[str]:
    """Random sequences of standard residues with uniformly drawn lengths (test and load data)."""
    lengths = rng.integers(min_length, max_length + 1, size=count)
    letters = np.array(list(STANDARD_RESIDUES))
    return ["".join(rng.choice(letters, size=int(length))) for length in lengths]


@dataclass(frozen=True)
class EncodingFailure:
    """Why one request's sequences could not be tokenized; `invalid`: the input's fault (INVALID_ARG / HTTP 400)."""

    message: str
    invalid: bool


def encode_request(
    sequences: Sequence[str | bytes], buckets: Sequence[int] | None
) -> tuple[np.ndarray, np.ndarray] | EncodingFailure:
    """`encode_batch` for one served request: a failure is returned, not raised, so batch-mates are unaffected."""
    try:
        return encode_batch(sequences, buckets)
    except InvalidSequenceError as error:
        return EncodingFailure(str(error), invalid=True)
    except Exception as error:  # noqa: BLE001 - one broken request must not fail its batch-mates
        return EncodingFailure(f"tokenizer failed: {error!r}", invalid=False)

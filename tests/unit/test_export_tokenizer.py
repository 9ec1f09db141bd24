"""The numpy-only ESM-2 tokenizer: alphabet ids, validation messages, length buckets, padding."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tritonfleet.contract import esm2_tokens as tokenizer
from tritonfleet.contract.esm2_tokens import (
    DEFAULT_BUCKETS,
    MAX_RESIDUES,
    InvalidSequenceError,
    bucket_for,
    encode_batch,
    parse_buckets,
    validate_sequence,
)

# fair-esm `Alphabet.from_architecture("ESM-1b")` (esm/data.py + esm/constants.py): prepend_toks, proteinseq_toks,
# `<null_1>` padding to a multiple of 8, append_toks. Written out from the source, independently of the module.
FAIR_ESM_PREPEND = ["<cls>", "<pad>", "<eos>", "<unk>"]
FAIR_ESM_PROTEINSEQ = [
    "L",
    "A",
    "G",
    "V",
    "S",
    "E",
    "R",
    "T",
    "I",
    "D",
    "P",
    "K",
    "Q",
    "N",
    "F",
    "Y",
    "M",
    "H",
    "W",
    "C",
]
FAIR_ESM_PROTEINSEQ += ["X", "B", "U", "Z", "O", ".", "-"]


def fair_esm_alphabet() -> list[str]:
    tokens = FAIR_ESM_PREPEND + FAIR_ESM_PROTEINSEQ
    index = 1
    while len(tokens) % 8:
        tokens.append(f"<null_{index}>")
        index += 1
    return [*tokens, "<mask>"]


def test_alphabet_ids_match_fair_esm_and_hf():
    assert list(tokenizer.ALPHABET) == fair_esm_alphabet()
    assert tokenizer.VOCAB_SIZE == 33
    assert (tokenizer.CLS_ID, tokenizer.PAD_ID, tokenizer.EOS_ID, tokenizer.UNK_ID) == (0, 1, 2, 3)
    assert tokenizer.MASK_ID == 32
    assert tokenizer.TOKEN_TO_ID["L"] == 4
    assert tokenizer.TOKEN_TO_ID["C"] == 23


def test_encode_adds_cls_eos_and_maps_residues():
    input_ids, attention_mask = encode_batch(["MKT"], buckets=None)
    expected = [tokenizer.CLS_ID, *(tokenizer.TOKEN_TO_ID[c] for c in "MKT"), tokenizer.EOS_ID]
    assert input_ids.tolist() == [expected]
    assert attention_mask.tolist() == [[1, 1, 1, 1, 1]]
    assert input_ids.dtype == np.int64 and attention_mask.dtype == np.int64


def test_encode_pads_every_row_to_the_bucket_of_the_longest():
    input_ids, attention_mask = encode_batch(["ACDE", "M" * 40, b"kw"])
    assert input_ids.shape == attention_mask.shape == (3, bucket_for(42))
    assert attention_mask.sum(axis=1).tolist() == [6, 42, 4]
    # Padding is <pad> exactly where the mask is 0; the lower-case bytes row was upper-cased.
    assert np.all((input_ids == tokenizer.PAD_ID) == (attention_mask == 0))
    assert input_ids[2, 1:3].tolist() == [tokenizer.TOKEN_TO_ID["K"], tokenizer.TOKEN_TO_ID["W"]]


@pytest.mark.parametrize(
    ("sequence", "fragment"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("MKT1AY", "'1' at position 4"),
        ("MKTAY-", "'-' at position 6"),
        ("MK*", "'*' at position 3"),
        ("A" * (MAX_RESIDUES + 1), f"{MAX_RESIDUES + 1} residues, the limit is {MAX_RESIDUES}"),
    ],
)
def test_invalid_sequences_name_the_problem(sequence, fragment):
    with pytest.raises(InvalidSequenceError) as error:
        validate_sequence(sequence)
    assert fragment in str(error.value)
    assert isinstance(error.value, ValueError)


def test_longest_allowed_sequence_fits_the_last_bucket():
    assert validate_sequence("a" * MAX_RESIDUES) == "A" * MAX_RESIDUES
    input_ids, _ = encode_batch(["A" * MAX_RESIDUES])
    assert input_ids.shape == (1, MAX_RESIDUES + 2) == (1, DEFAULT_BUCKETS[-1])


@pytest.mark.parametrize("buckets", [None, DEFAULT_BUCKETS])
def test_every_accepted_spelling_encodes_as_its_validated_text(buckets):
    # encode_batch tokenizes plain residue strings through a byte table and validates anything else: both must
    # give what the validated text spells, whatever the input's type, case and surrounding whitespace.
    sequences = [
        "MKTAYIAKQR",
        b"mktayiakqr",
        np.bytes_(b"  ACDEFGHIKLMNPQRSTVWYXBUZO\n"),
        bytearray(b"Kw"),
        "\x1cMKV\x1f",  # str.strip() removes these, bytes.strip() does not
        "\tmkv ",
        "A" * MAX_RESIDUES,
    ]
    for batch in [[sequence] for sequence in sequences] + [sequences, sequences[:2]]:
        texts = [validate_sequence(sequence) for sequence in batch]
        width = bucket_for(max(len(text) for text in texts) + 2, buckets)
        expected_ids = np.full((len(texts), width), tokenizer.PAD_ID, dtype=np.int64)
        expected_mask = np.zeros((len(texts), width), dtype=np.int64)
        for row, text in enumerate(texts):
            ids = [tokenizer.CLS_ID, *(tokenizer.TOKEN_TO_ID[c] for c in text), tokenizer.EOS_ID]
            expected_ids[row, : len(ids)] = ids
            expected_mask[row, : len(ids)] = 1
        input_ids, attention_mask = encode_batch(batch, buckets)
        for got, expected in ((input_ids, expected_ids), (attention_mask, expected_mask)):
            assert got.dtype == np.int64 and got.flags.c_contiguous and got.flags.writeable
            np.testing.assert_array_equal(got, expected)


def test_batch_error_says_which_sequence():
    with pytest.raises(InvalidSequenceError, match=r"sequence 1: invalid residue 'J'"):
        encode_batch(["MKT", "MJK"])


def test_bucket_for_picks_the_smallest_bucket_that_fits():
    for length in range(3, DEFAULT_BUCKETS[-1] + 1):
        bucket = bucket_for(length)
        assert bucket >= length
        smaller = [b for b in DEFAULT_BUCKETS if b < bucket]
        assert not smaller or smaller[-1] < length
    with pytest.raises(ValueError, match="exceed"):
        bucket_for(DEFAULT_BUCKETS[-1] + 1)


def test_bucket_parsing_round_trips_and_rejects_bad_lists():
    assert parse_buckets(tokenizer.format_buckets(DEFAULT_BUCKETS)) == DEFAULT_BUCKETS
    assert parse_buckets("1024, 64,128") == (64, 128, 1024)
    for bad in ("", "64,abc", "64,64,1024", "64,512"):
        with pytest.raises(ValueError):
            parse_buckets(bad)


def test_importing_tokenizer_and_packages_does_not_import_torch():
    code = (
        "import sys, tritonfleet.export.__main__, tritonfleet.export.esm2.repository, tritonfleet.export.generic,"
        " tritonfleet.export.factory, tritonfleet.contract.esm2_tokens;"
        "sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_tokenizer_module_imports_only_numpy_and_stdlib():
    source = Path(tokenizer.__file__).read_text(encoding="utf-8")
    imports = {line.split()[1].split(".")[0] for line in source.splitlines() if line.startswith(("import ", "from "))}
    assert imports <= {"__future__", "bisect", "collections", "dataclasses", "json", "numpy"}


def test_shared_widths_merge_cheap_neighbours_and_never_shrink():
    from tritonfleet.contract.esm2_tokens import plan_shared_widths

    widths, rows = [256, 384, 128, 1024, 128], [1, 1, 1, 1, 1]
    assert plan_shared_widths(widths, rows, run_overhead_tokens=0) == widths
    merged = plan_shared_widths(widths, rows, run_overhead_tokens=512)
    assert all(planned >= own for planned, own in zip(merged, widths))
    assert merged[0] == merged[1] == 384  # two mid-size neighbours share one execution
    assert merged[3] == 1024 and merged[2] != 1024  # a short request is not padded to the longest
    assert len(set(plan_shared_widths(widths, rows, run_overhead_tokens=10**9))) == 1


def test_shared_widths_minimise_the_cost_model():
    """The plan's cost is never above any other contiguous split (checked exhaustively on small inputs)."""
    import itertools

    import numpy as np

    from tritonfleet.contract.esm2_tokens import plan_shared_widths

    def cost(widths, rows, breaks, overhead):
        total, start = 0, 0
        for end in [*breaks, len(widths)]:
            total += overhead + max(widths[start:end]) * sum(rows[start:end])
            start = end
        return total

    rng = np.random.default_rng(5)
    for _ in range(30):
        n = int(rng.integers(1, 7))
        widths = [int(w) for w in rng.choice([128, 192, 256, 384, 608, 1024], size=n)]
        rows = [int(r) for r in rng.integers(1, 4, size=n)]
        planned = plan_shared_widths(widths, rows, 300)
        breaks = [i for i in range(1, n) if planned[i] != planned[i - 1]]
        best = min(
            cost(widths, rows, list(choice), 300) for k in range(n) for choice in itertools.combinations(range(1, n), k)
        )
        assert cost(widths, rows, breaks, 300) <= best

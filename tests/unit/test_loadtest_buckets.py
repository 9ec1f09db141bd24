"""The offline half of the bucket study (loadtest/buckets.py): padding waste, batch estimate, optimal buckets."""

from __future__ import annotations

import numpy as np

from tritonfleet.contract.esm2_tokens import DEFAULT_BUCKETS, MAX_RESIDUES, MAX_TOKENS
from tritonfleet.loadtest.buckets import (
    EXACT_LENGTH,
    MEDIAN_RESIDUES,
    analyse,
    mean_run_batch,
    optimal_buckets,
    render,
    sample_lengths,
)


def test_length_mix_is_truncated_and_centred_on_the_stated_median():
    lengths = sample_lengths(5000, seed=3)
    assert lengths.min() >= 1 and lengths.max() <= MAX_RESIDUES
    assert abs(np.median(lengths) - MEDIAN_RESIDUES) < 0.1 * MEDIAN_RESIDUES


def test_exact_length_padding_wastes_nothing_and_one_bucket_wastes_most():
    lengths = sample_lengths(2000)
    exact = analyse("exact", EXACT_LENGTH, lengths, window=64)
    single = analyse("one", (MAX_TOKENS,), lengths, window=64)
    ours = analyse("ours", DEFAULT_BUCKETS, lengths, window=64)
    assert exact.waste == 0.0
    assert single.expected_batch == 64.0  # every request has the same shape
    assert exact.waste < ours.waste < single.waste


def test_batches_are_runs_of_equal_consecutive_shapes():
    shapes = np.array([128, 128, 256, 128, 128, 128, 256, 256])
    assert mean_run_batch(shapes, window=8) == 8 / 4
    assert mean_run_batch(np.full(8, 128), window=8, max_batch=4) == 4.0


def test_optimal_buckets_are_valid_and_more_buckets_waste_less():
    lengths = sample_lengths(3000)
    previous_waste = 1.0
    for count in (2, 4, 8):
        buckets = optimal_buckets(lengths, count)
        assert len(buckets) == count and buckets[-1] == MAX_TOKENS and list(buckets) == sorted(set(buckets))
        waste = analyse("x", buckets, lengths, window=64).waste
        assert waste <= previous_waste
        previous_waste = waste


def test_report_renders_every_row():
    lengths = sample_lengths(500)
    stats = [analyse("ours", DEFAULT_BUCKETS, lengths, 64), analyse("exact", EXACT_LENGTH, lengths, 64)]
    text = render(stats, [], lengths, 64)
    assert "| ours |" in text and "| exact |" in text and "Swiss-Prot" in text

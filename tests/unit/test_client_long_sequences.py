"""The documented windowing rule for sequences over 1022 residues (client.long_sequences)."""

from __future__ import annotations

import numpy as np
import pytest

from tritonfleet.client.long_sequences import combine_windows, split_windows, window_starts


@pytest.mark.parametrize("length", [1, 500, 1022])
def test_sequences_that_fit_are_one_window(length: int) -> None:
    assert window_starts(length, 1022, 256) == [0]


@pytest.mark.parametrize(("length", "overlap"), [(1023, 256), (2000, 256), (5000, 0), (3067, 100)])
def test_windows_are_full_length_cover_every_residue_and_overlap_at_least_as_asked(length: int, overlap: int) -> None:
    starts = window_starts(length, 1022, overlap)
    assert starts[0] == 0 and starts[-1] == length - 1022
    assert all(b > a for a, b in zip(starts, starts[1:]))
    assert all(b - a <= 1022 - overlap for a, b in zip(starts, starts[1:]))
    covered = np.zeros(length, dtype=bool)
    for start in starts:
        covered[start : start + 1022] = True
    assert covered.all()


def test_split_windows_returns_the_substrings() -> None:
    sequence = "".join("ACDEFGHIKLMNPQRSTVWY"[i % 20] for i in range(1500))
    windows = split_windows(sequence, 1022, 256)
    assert [len(window) for window in windows] == [1022, 1022]
    assert windows[0] == sequence[:1022] and windows[1] == sequence[-1022:]


def test_overlap_must_be_smaller_than_the_window() -> None:
    with pytest.raises(ValueError, match="overlap"):
        window_starts(2000, 1022, 1022)


def test_combine_windows_weights_window_means_by_residue_count() -> None:
    means = np.array([[1.0, 0.0], [4.0, 2.0]], dtype=np.float32)
    combined = combine_windows(means, [100, 300])
    np.testing.assert_allclose(combined, [(1.0 * 100 + 4.0 * 300) / 400, (0.0 * 100 + 2.0 * 300) / 400])
    assert combined.dtype == np.float32

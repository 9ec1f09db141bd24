"""Embedding sequences longer than ESM-2's 1022-residue limit by windows (`--long-sequences chunk`).

Rule: a sequence of L > W residues (W = 1022) is cut into windows of W residues starting at 0, S, 2S, ... with
stride S = W - overlap, plus a last window aligned to the end (start L - W), so every residue is covered and no
window is shorter than W. Each window is embedded on its own (mean over its residues); the sequence embedding is the
mean of the window means weighted by window residue counts. Residues in overlaps therefore count once per window
covering them. Sequences of at most W residues are a single window, i.e. embedded exactly as usual.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tritonfleet.contract.esm2_tokens import MAX_RESIDUES

DEFAULT_WINDOW_OVERLAP = 256


def window_starts(length: int, window: int = MAX_RESIDUES, overlap: int = DEFAULT_WINDOW_OVERLAP) -> list[int]:
    """Start offsets of the windows covering `length` residues."""
    if not 0 <= overlap < window:
        raise ValueError(f"overlap must be in [0, {window}), got {overlap}")
    if length <= window:
        return [0]
    stride = window - overlap
    starts = list(range(0, length - window, stride))
    starts.append(length - window)
    return starts


def split_windows(sequence: str, window: int = MAX_RESIDUES, overlap: int = DEFAULT_WINDOW_OVERLAP) -> list[str]:
    """The window substrings of `sequence` (one element if it fits)."""
    return [sequence[start : start + window] for start in window_starts(len(sequence), window, overlap)]


def combine_windows(window_embeddings: np.ndarray, window_lengths: Sequence[int]) -> np.ndarray:
    """Residue-weighted mean of window mean embeddings [k, D] -> [D] (float32)."""
    weights = np.asarray(window_lengths, dtype=np.float64)
    if window_embeddings.shape[0] != weights.shape[0] or weights.sum() <= 0:
        raise ValueError("need one positive length per window embedding")
    combined = (window_embeddings.astype(np.float64) * weights[:, None]).sum(axis=0) / weights.sum()
    return combined.astype(np.float32)

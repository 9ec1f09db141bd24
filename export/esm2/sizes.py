"""ESM-2 architecture sizes (facebookresearch/esm README; HF configs). Pure data: importable without torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Esm2Size:
    """One published ESM-2 architecture."""

    name: str
    checkpoint: str
    num_layers: int
    hidden_size: int
    num_heads: int

    @property
    def intermediate_size(self) -> int:
        return 4 * self.hidden_size  # hard-coded in ESM-2 (HF convert_esm.py)


ESM2_SIZES: dict[str, Esm2Size] = {
    size.name: size
    for size in (
        Esm2Size("8M", "facebook/esm2_t6_8M_UR50D", 6, 320, 20),
        Esm2Size("35M", "facebook/esm2_t12_35M_UR50D", 12, 480, 20),
        Esm2Size("150M", "facebook/esm2_t30_150M_UR50D", 30, 640, 20),
        Esm2Size("650M", "facebook/esm2_t33_650M_UR50D", 33, 1280, 20),
        Esm2Size("3B", "facebook/esm2_t36_3B_UR50D", 36, 2560, 40),
    )
}

# Sizes `--random-init` builds; 3B only makes sense with real weights (`--checkpoint`).
RANDOM_INIT_SIZES: tuple[str, ...] = ("8M", "35M", "150M", "650M")

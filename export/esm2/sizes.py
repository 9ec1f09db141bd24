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


# Engine speed on one CPU thread at the longest sequence (1022 residues = 1024 tokens, batch 1), tokens/s: ONNX
# Runtime with the fused graph, measured in reports/engines.md (AMD EPYC, 1 intra-op thread: 8M int8 3.1 seq/s,
# fp32 2.3; 35M int8 1.3, fp32 0.8). Larger sizes are scaled from 35M by `relative_cost`; other precisions use fp32.
MEASURED_CPU_THREAD_TOKENS_PER_S: dict[tuple[str, str], float] = {
    ("8M", "int8"): 3.1 * 1024,
    ("8M", "fp32"): 2.3 * 1024,
    ("35M", "int8"): 1.3 * 1024,
    ("35M", "fp32"): 0.8 * 1024,
}


def relative_cost(size: Esm2Size, tokens: int = 1024) -> float:
    """Work per token at a sequence length, up to a constant: per layer the dense products (12 D^2 multiply-adds:
    QKV, output projection, 4D MLP up and down) plus attention over `tokens` positions (2 tokens D)."""
    return size.num_layers * (12 * size.hidden_size**2 + 2 * tokens * size.hidden_size)


def cpu_thread_tokens_per_s(size_name: str, precision: str) -> float:
    """Estimated tokens/s of one single-threaded CPU engine at the longest sequence (the slowest tokens: the
    execution cap must hold for them). Measured for 8M and 35M; other sizes scaled from 35M by `relative_cost`."""
    precision = precision if precision == "int8" else "fp32"
    measured = MEASURED_CPU_THREAD_TOKENS_PER_S.get((size_name, precision))
    if measured is not None:
        return measured
    size = ESM2_SIZES.get(size_name)
    if size is None:
        raise ValueError(f"unknown ESM-2 size {size_name!r}; known: {', '.join(ESM2_SIZES)}")
    return MEASURED_CPU_THREAD_TOKENS_PER_S[("35M", precision)] * relative_cost(ESM2_SIZES["35M"]) / relative_cost(size)


def size_with_hidden(hidden_size: int) -> str:
    """The published size with this hidden size (each has its own); "35M" scaling is used for unknown ones."""
    for size in ESM2_SIZES.values():
        if size.hidden_size == hidden_size:
            return size.name
    raise ValueError(f"no published ESM-2 size has hidden size {hidden_size}")

"""ESM-2 protein embeddings: tokenizer (numpy only), eager wrapper, export recipe and Triton tokenizer model."""

from export.esm2.sizes import ESM2_SIZES, RANDOM_INIT_SIZES, Esm2Size
from export.esm2.tokenizer import (
    DEFAULT_BUCKETS,
    MAX_RESIDUES,
    InvalidSequenceError,
    bucket_for,
    encode_batch,
    validate_sequence,
)

__all__ = [
    "DEFAULT_BUCKETS",
    "ESM2_SIZES",
    "MAX_RESIDUES",
    "RANDOM_INIT_SIZES",
    "Esm2Size",
    "InvalidSequenceError",
    "bucket_for",
    "encode_batch",
    "validate_sequence",
]

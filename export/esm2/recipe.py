"""The ESM-2 export recipe: the eager module, its samples and parity cases, and the signature it must have.

The network goes through the same core as any model (export.network): the signature is inferred from `samples()`
and must have the structure declared here (`signature`), which the configs are built from without torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from tritonfleet.contract.esm2.pipeline import NETWORK_INPUTS, NETWORK_OUTPUTS
from tritonfleet.contract.esm2_tokens import DEFAULT_BUCKETS, encode_batch, random_proteins
from tritonfleet.contract.pipeline import Role
from tritonfleet.contract.tensors import TensorSpec
from tritonfleet.export.esm2.sizes import ESM2_SIZES, RANDOM_INIT_SIZES
from tritonfleet.export.network import PER_TENSOR_INT8_FORMATS, PRECISIONS
from tritonfleet.export.parity import INVARIANT_PRECISIONS, InvarianceCase, ParityCase
from tritonfleet.export.signature import Sample, Signature

if TYPE_CHECKING:
    import torch

# fp16 runs the module in half precision (GPUs) and serves fp16 outputs; int8 and bf16 are engine variants of the
# fp32 module (export.network) with fp32 outputs, so their configs and clients are those of fp32.
Precision = Literal["fp32", "fp16", "int8", "bf16"]
OnnxGraph = Literal["fused", "exported"]

# Longest residue count in generated parity cases: long enough to cross several buckets, short enough to be quick.
PARITY_MAX_RESIDUES = 300
# Most proteins in the invariance gate's mixed batch of all parity proteins.
INVARIANCE_MIX_LIMIT = 16
# The token axis shared by the ids, the mask and the per-residue embeddings.
SEQUENCE_AXIS = "sequence"


@dataclass(frozen=True)
class Esm2Recipe:
    """ESM-2 with mean-pooled and per-residue embeddings.

    Attributes:
        checkpoint: HF id or local directory of real weights; None for random weights.
        random_init: the ESM-2 size to build with random weights when no checkpoint is given.
        seed: torch seed of the random weights.
        precision: "fp32", "fp16" (GPU serving, fp16 outputs), "int8" or "bf16" (CPU engine variants).
        onnx_graph: "fused" (export.esm2.onnx_graph: ONNX Runtime's fused rotary attention, fp32/int8) or
            "exported" (torch.onnx's graph; always used for fp16).
    """

    checkpoint: str | None = None
    random_init: str | None = "8M"
    seed: int = 0
    precision: Precision = "fp32"
    onnx_graph: OnnxGraph = "fused"

    def __post_init__(self) -> None:
        if self.checkpoint is None and self.random_init not in RANDOM_INIT_SIZES:
            raise ValueError(f"--random-init must be one of {', '.join(RANDOM_INIT_SIZES)}, got {self.random_init!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.onnx_graph not in ("fused", "exported"):
            raise ValueError(f"onnx_graph must be fused or exported, got {self.onnx_graph!r}")

    @property
    def is_random(self) -> bool:
        return self.checkpoint is None

    @cached_property
    def hidden_size(self) -> int:
        if self.checkpoint is None:
            return ESM2_SIZES[self.random_init].hidden_size
        from transformers import AutoConfig

        return int(AutoConfig.from_pretrained(self.checkpoint).hidden_size)

    @property
    def weights_source(self) -> str:
        """A reproducible description of the weights (no absolute paths)."""
        if self.checkpoint is None:
            return (
                f"RANDOM WEIGHTS (ESM-2 {self.random_init} architecture, seed {self.seed}): "
                "embeddings are meaningless, for testing only"
            )
        path = Path(self.checkpoint)
        return f"checkpoint {path.name if path.exists() else self.checkpoint}"

    @property
    def output_dtype(self) -> str:
        return "float16" if self.precision == "fp16" else "float32"

    @property
    def fused_onnx(self) -> bool:
        """Whether the ONNX model is built with fused attention (the builder writes fp32 weights: not for fp16)."""
        return self.onnx_graph == "fused" and self.precision != "fp16"

    def precision_for(self, fmt: str) -> str:
        """The precision the export gives `fmt` (export.network.engine_precisions): int8 TorchScript scales its
        activations per tensor, so a repository in int8 ships TorchScript in fp32. Needs no torch."""
        return "fp32" if self.precision == "int8" and fmt in PER_TENSOR_INT8_FORMATS else self.precision

    def batch_invariant(self, fmt: str) -> bool:
        """Whether `fmt`'s outputs for a sequence do not depend on its batch (within export.parity's
        INVARIANCE_TOLERANCE): fp32 and int8 pass the export's invariance gate or are refused; bf16 and fp16 never
        are. A response cache may serve only invariant models. Needs no torch."""
        return self.precision_for(fmt) in INVARIANT_PRECISIONS

    @property
    def signature(self) -> Signature:
        """Token ids + mask [batch, sequence] -> pooled [batch, D] and per-token [batch, sequence, D] embeddings, the
        network tensors the pipeline declares (tritonfleet.contract.esm2.pipeline), in forward order."""
        axes = {
            Role.TOKEN_IDS: (SEQUENCE_AXIS,),
            Role.ATTENTION_MASK: (SEQUENCE_AXIS,),
            Role.EMBEDDING: (self.hidden_size,),
            Role.RESIDUE_EMBEDDINGS: (SEQUENCE_AXIS, self.hidden_size),
        }
        return Signature(
            inputs=tuple(TensorSpec(tensor.name, "int64", axes[tensor.role]) for tensor in NETWORK_INPUTS),
            outputs=tuple(TensorSpec(tensor.name, self.output_dtype, axes[tensor.role]) for tensor in NETWORK_OUTPUTS),
        )

    def build_module(self) -> torch.nn.Module:
        import torch

        from tritonfleet.export.esm2.model import build_esm2

        dtype = torch.float16 if self.precision == "fp16" else torch.float32
        return build_esm2(self.checkpoint, self.random_init, self.seed, dtype=dtype)

    def samples(self) -> list[Sample]:
        """Inputs of three shapes: the first (batch 2, one 64-token bucket: both dynamic axes > 1 and different, so
        neither exporter specialises them) is traced; exact-length padding gives the others widths it lacks."""
        rng = np.random.default_rng(1)
        return [
            encode_batch(["MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQ"[:40], "MKTAYIAKQR"]),
            encode_batch(random_proteins(3, rng, 90, 120), buckets=None),
            encode_batch(random_proteins(1, rng, 5, 20), buckets=None),
        ]

    @staticmethod
    def parity_proteins(samples: int = 4) -> list[list[str]]:
        """The proteins of each parity case (deterministic): batch sizes 1, 3, 8, 2, ..., mixed lengths."""
        rng = np.random.default_rng(2024)
        batch_sizes = (1, 3, 8, 2, 5, 16)
        return [
            random_proteins(batch_sizes[index % len(batch_sizes)], rng, 1, PARITY_MAX_RESIDUES)
            for index in range(samples)
        ]

    def invariance_cases(self, samples: int = 4) -> list[InvarianceCase]:
        """The parity set embedded alone (padded to its own length) and inside mixed batches padded to buckets: each
        parity case's batch, and all parity proteins in one batch in reverse order (other neighbours, other rows)."""
        batches = self.parity_proteins(samples)
        everyone = [protein for proteins in batches for protein in proteins][::-1][:INVARIANCE_MIX_LIMIT]
        cases = []
        for proteins in (*batches, everyone):
            if not proteins:
                continue
            members = tuple((row, encode_batch([protein], buckets=None)) for row, protein in enumerate(proteins))
            batch = encode_batch(proteins, DEFAULT_BUCKETS)
            label = f"batch {len(proteins)} padded to T={batch[0].shape[1]} vs each protein alone"
            cases.append(InvarianceCase(label, batch, members))
        return cases

    def parity_cases(self, samples: int = 4) -> list[ParityCase]:
        """Deterministic cases: batch sizes 1, 3, 8, 2, ... with mixed lengths padded to buckets."""
        cases = []
        for proteins in self.parity_proteins(samples):
            batch = len(proteins)
            input_ids, attention_mask = encode_batch(proteins, DEFAULT_BUCKETS)
            label = (
                f"batch {batch}, residues {min(map(len, proteins))}-{max(map(len, proteins))}, T={input_ids.shape[1]}"
            )
            cases.append(ParityCase(label, (input_ids, attention_mask)))
        return cases

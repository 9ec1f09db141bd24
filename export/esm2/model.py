"""The eager ESM-2 module that is exported: token ids + mask -> pooled and per-residue embeddings."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from transformers import EsmConfig, EsmModel

from tritonfleet.contract.esm2_tokens import CLS_ID, EOS_ID, MASK_ID, PAD_ID, VOCAB_SIZE
from tritonfleet.export.esm2.sizes import ESM2_SIZES, RANDOM_INIT_SIZES

logger = logging.getLogger(__name__)

# SDPA exports to plain MatMul/Softmax in ONNX and TorchScript, and uses the fused kernels on GPU under LibTorch.
DEFAULT_ATTENTION = "sdpa"


class Esm2Embedder(nn.Module):
    """Wraps `transformers.EsmModel` (no pooler) with the serving contract of docs/design.md.

    forward(input_ids [N, T] int64, attention_mask [N, T] int64) returns
      - embedding [N, D]: mean of the last hidden state over residue positions (not <cls>, <eos> or padding);
      - residue_embeddings [N, T, D]: the last hidden state, zero where attention_mask is 0.
    """

    def __init__(self, esm: EsmModel) -> None:
        super().__init__()
        self.esm = esm

    @property
    def hidden_size(self) -> int:
        return int(self.esm.config.hidden_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Position ids derived from the input rather than `torch.arange(T, device=...)` inside EsmModel, so that a
        # trace carries no device constant from this path.
        position_ids = torch.cumsum(torch.ones_like(input_ids), dim=1) - 1
        hidden = self.esm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)[0]
        token_mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        residue_embeddings = hidden * token_mask
        is_residue = (attention_mask != 0) & (input_ids != CLS_ID) & (input_ids != EOS_ID)
        residue_weights = is_residue.unsqueeze(-1).to(torch.float32)
        # Pool in fp32 even for an fp16 model: a sum over up to 1022 positions loses digits in half precision.
        summed = (hidden.to(torch.float32) * residue_weights).sum(dim=1)
        count = residue_weights.sum(dim=1).clamp(min=1.0)
        embedding = (summed / count).to(hidden.dtype)
        return embedding, residue_embeddings


def esm2_config(size: str, attn_implementation: str = DEFAULT_ATTENTION) -> EsmConfig:
    """The exact HF `EsmConfig` of a published ESM-2 size (same as the checkpoint's config.json)."""
    if size not in ESM2_SIZES:
        raise ValueError(f"unknown ESM-2 size {size!r}; choose one of {', '.join(ESM2_SIZES)}")
    spec = ESM2_SIZES[size]
    config = EsmConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        intermediate_size=spec.intermediate_size,
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        max_position_embeddings=1026,
        initializer_range=0.02,
        layer_norm_eps=1e-5,
        position_embedding_type="rotary",
        emb_layer_norm_before=False,
        token_dropout=True,
        pad_token_id=PAD_ID,
        mask_token_id=MASK_ID,
    )
    config._attn_implementation = attn_implementation
    return config


def build_esm2(
    checkpoint: str | Path | None = None,
    random_init: str | None = "8M",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = DEFAULT_ATTENTION,
) -> Esm2Embedder:
    """Builds the eager wrapper in eval mode.

    Args:
        checkpoint: a Hugging Face id (e.g. facebook/esm2_t33_650M_UR50D) or a local directory written by
            `save_pretrained`; takes precedence over `random_init`.
        random_init: an ESM-2 size ("8M", "35M", "150M", "650M") built with random weights from `seed`.
        seed: the torch seed for random weights.
        dtype: parameter dtype (float32, or float16 for GPU serving).
        attn_implementation: "sdpa" or "eager".
    """
    if checkpoint is not None:
        logger.info("loading ESM-2 weights from %s", checkpoint)
        esm = EsmModel.from_pretrained(
            str(checkpoint), add_pooling_layer=False, dtype=torch.float32, attn_implementation=attn_implementation
        )
    elif random_init is not None:
        if random_init not in RANDOM_INIT_SIZES:
            raise ValueError(f"--random-init supports {', '.join(RANDOM_INIT_SIZES)}, got {random_init!r}")
        logger.warning("building ESM-2 %s with RANDOM weights (seed %d): embeddings are meaningless", random_init, seed)
        torch.manual_seed(seed)
        esm = EsmModel(esm2_config(random_init, attn_implementation), add_pooling_layer=False)
    else:
        raise ValueError("give a checkpoint or a random_init size")
    model = Esm2Embedder(esm).to(dtype).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model

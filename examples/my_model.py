"""A model defined outside tritonfleet, served through `python -m export torch --factory examples.my_model:build`.

`build()` returns the eager module and sample inputs of different shapes: the leading axis is the batch, and the token
axis varies across the samples, so it becomes dynamic (shared by IDS and MASK).
"""

import torch
from torch import nn


class Pooler(nn.Module):
    """Token ids + mask [batch, tokens] -> the masked mean of their embeddings, projected to [batch, 16]."""

    def __init__(self, vocabulary: int = 100, width: int = 32, features: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocabulary, width)
        self.project = nn.Linear(width, features)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = mask.unsqueeze(-1).to(torch.float32)
        mean = (self.embed(ids) * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return self.project(mean)


def build() -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    torch.manual_seed(0)
    samples = []
    for batch, tokens in [(2, 7), (3, 12), (1, 5)]:
        ids = torch.randint(0, 100, (batch, tokens))
        mask = torch.ones(batch, tokens, dtype=torch.int64)
        mask[0, tokens // 2 :] = 0  # the first row is padded
        samples.append((ids, mask))
    return Pooler().eval(), samples

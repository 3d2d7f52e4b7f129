"""Parameter-efficient adapters for frozen transformer blocks."""

from __future__ import annotations

import torch
from torch import nn


class BottleneckAdapter(nn.Module):
    """SAM2-UNet's serial bottleneck adapter: ``GELU(up(GELU(down(x))))``, added to the block input.

    ``down``: dim -> hidden, ``up``: hidden -> dim, a GELU after *each* linear (upstream keeps the second
    one too). Works on channels-last tensors, as Hiera blocks are. 65*dim + 32 parameters at hidden=32.
    """

    def __init__(self, dim: int, hidden_dim: int = 32):
        super().__init__()
        self.down = nn.Linear(dim, hidden_dim)
        self.up = nn.Linear(hidden_dim, dim)
        self.act = nn.GELU()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.act(self.up(self.act(self.down(hidden_states))))

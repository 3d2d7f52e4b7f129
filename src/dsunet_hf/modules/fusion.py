"""Content-guided attention fusion (CGAFusion, DEA-Net, Chen et al., IEEE TIP 2024), written from its
formulas. Module names follow the DSU-Net checkpoints (``sa.sa``, ``ca.ca.{0,2}``, ``pa.pa2``, ``conv``)::

    I  = x + y
    P1 = s(I) + c(I)                 spatial (B,1,H,W) + channel (B,C,1,1) attention, no sigmoid
    P2 = sigmoid(pi(I, P1))          pi ends in a sigmoid already: the upstream double sigmoid,
                                     so the gate lies in (0.5, 0.731); kept for weight compatibility
    out = conv1x1(I + P2 * x + (1 - P2) * y)
"""

from __future__ import annotations

import torch
from torch import nn


class SpatialAttention(nn.Module):
    """7x7 reflect-padded conv over [mean_c, max_c]."""

    def __init__(self):
        super().__init__()
        self.sa = nn.Conv2d(2, 1, 7, padding=3, padding_mode="reflect", bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sa(torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1))


class ChannelAttention(nn.Module):
    """Global average pool -> 1x1 (C -> C/r) -> ReLU -> 1x1 (C/r -> C)."""

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.ca = nn.Sequential(
            nn.Conv2d(channels, channels // reduction, 1, bias=True),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels // reduction, channels, 1, bias=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ca(self.gap(x))


class PixelAttention(nn.Module):
    """Channels of x and the pattern interleaved [x0, p0, x1, p1, ...], a grouped 7x7 conv, sigmoid."""

    def __init__(self, channels: int):
        super().__init__()
        self.pa2 = nn.Conv2d(2 * channels, channels, 7, padding=3, padding_mode="reflect", groups=channels, bias=True)

    def forward(self, x: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        interleaved = torch.stack([x, pattern.expand_as(x)], dim=2).reshape(batch, 2 * channels, height, width)
        return torch.sigmoid(self.pa2(interleaved))


class CGAFusion(nn.Module):
    """Fuse ``x`` (e.g. SAM features) and ``y`` (e.g. DINO features) of the same shape."""

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        self.sa = SpatialAttention()
        self.ca = ChannelAttention(channels, reduction)
        self.pa = PixelAttention(channels)
        self.conv = nn.Conv2d(channels, channels, 1, bias=True)

    def gate(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        initial = x + y
        pattern = self.sa(initial) + self.ca(initial)
        return torch.sigmoid(self.pa(initial, pattern))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        gate = self.gate(x, y)
        return self.conv(x + y + gate * x + (1 - gate) * y)

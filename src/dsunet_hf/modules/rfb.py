"""Receptive field block (RFB_modified, from PraNet), as used by SAM2-UNet and DSU-Net.

Module names follow the upstream code so that original checkpoints load with an identity key map.
"""

from __future__ import annotations

import torch
from torch import nn


class BasicConv2d(nn.Module):
    """Conv (no bias) + BatchNorm. Upstream defines a ReLU here but never applies it; we keep that
    behaviour (the activation-free branches are part of the trained networks) and define no ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, padding=0, dilation: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


def _dilated_branch(in_channels: int, channels: int, k: int) -> nn.Sequential:
    """1x1 -> (1xk) -> (kx1) -> 3x3 with dilation k."""
    return nn.Sequential(
        BasicConv2d(in_channels, channels, 1),
        BasicConv2d(channels, channels, (1, k), padding=(0, k // 2)),
        BasicConv2d(channels, channels, (k, 1), padding=(k // 2, 0)),
        BasicConv2d(channels, channels, 3, padding=k, dilation=k),
    )


class RFB(nn.Module):
    """``ReLU(conv_cat(cat[b0, b1, b2, b3]) + conv_res(x))`` with b0 a 1x1 and b1..b3 dilation 3/5/7."""

    def __init__(self, in_channels: int, channels: int = 64):
        super().__init__()
        self.branch0 = nn.Sequential(BasicConv2d(in_channels, channels, 1))
        self.branch1 = _dilated_branch(in_channels, channels, 3)
        self.branch2 = _dilated_branch(in_channels, channels, 5)
        self.branch3 = _dilated_branch(in_channels, channels, 7)
        self.conv_cat = BasicConv2d(4 * channels, channels, 3, padding=1)
        self.conv_res = BasicConv2d(in_channels, channels, 1)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = torch.cat([self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)], dim=1)
        return self.relu(self.conv_cat(branches) + self.conv_res(x))

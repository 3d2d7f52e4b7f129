"""U-Net decoder blocks shared by the SAM2-based models."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DoubleConv(nn.Module):
    """(3x3 conv, no bias -> BN -> ReLU) x 2; ``double_conv`` keeps the upstream parameter names."""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None):
        super().__init__()
        mid_channels = mid_channels or out_channels
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(mid_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.double_conv(x)


class UpBlock(nn.Module):
    """Bilinear x2 (align_corners=True), pad to the skip's size, ``cat[skip, up]``, DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = DoubleConv(in_channels, out_channels, in_channels // 2)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        diff_y = skip.shape[2] - x.shape[2]
        diff_x = skip.shape[3] - x.shape[3]
        if diff_x or diff_y:
            x = F.pad(x, [diff_x // 2, diff_x - diff_x // 2, diff_y // 2, diff_y - diff_y // 2])
        return self.conv(torch.cat([skip, x], dim=1))


def decode_with_side_outputs(stages, decoders, heads, size) -> list[torch.Tensor]:
    """The SAM2-UNet / DSU-Net decoder pass: starting from the deepest stage, each decoder merges the next
    shallower skip (1/16, 1/8, 1/4) and its 1x1 head's logits are resized bilinearly to ``size``.
    ``stages`` are shallow -> deep; returns the logits in decoding order (side 1/16, side 1/8, final)."""
    *skips, y = stages
    outputs = []
    for decoder, skip, head in zip(decoders, reversed(skips), heads):
        y = decoder(y, skip)
        outputs.append(F.interpolate(head(y), size=size, mode="bilinear"))
    return outputs

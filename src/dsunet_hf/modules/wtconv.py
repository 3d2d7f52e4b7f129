"""Wavelet convolution (WTConv2d, Finder et al., ECCV 2024) with fixed Haar (db1) filters built in code.

One level: pad to even size, split each channel into 4 Haar sub-bands (stride-2 grouped conv), filter
all sub-bands with a depthwise conv scaled by a learned per-channel factor (init 0.1), invert
(stride-2 grouped transposed conv) and crop; deeper levels recurse on the low-pass band. The output is
``base_scale * depthwise_conv(x) + wavelet_path(x)``. No pywavelets: the db1 filters are the constant
Haar set (+-1/sqrt(2) products, bit-identical to pywavelets' in fp32).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def haar_filters(channels: int) -> torch.Tensor:
    """(4C, 1, 2, 2) filters [LL, LH, HL, HH] per channel; decomposition and reconstruction are equal."""
    a = torch.tensor(2**-0.5, dtype=torch.float32)
    low, high = torch.stack([a, a]), torch.stack([a, -a])
    bands = [low[None] * low[:, None], low[None] * high[:, None], high[None] * low[:, None], high[None] * high[:, None]]
    return torch.stack(bands)[:, None].repeat(channels, 1, 1, 1)


def haar_transform(x: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) with even H, W -> (B, C, 4, H/2, W/2)."""
    batch, channels, height, width = x.shape
    out = F.conv2d(x, filters.to(x.dtype), stride=2, groups=channels)
    return out.reshape(batch, channels, 4, height // 2, width // 2)


def inverse_haar_transform(bands: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """(B, C, 4, h, w) -> (B, C, 2h, 2w)."""
    batch, channels, _, height, width = bands.shape
    return F.conv_transpose2d(bands.reshape(batch, 4 * channels, height, width), filters.to(bands.dtype),
                              stride=2, groups=channels)


class ScaleModule(nn.Module):
    """A learned per-channel multiplier, stored as ``weight`` of shape (1, C, 1, 1)."""

    def __init__(self, channels: int, init: float):
        super().__init__()
        self.weight = nn.Parameter(torch.full((1, channels, 1, 1), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * x


class WTConv2d(nn.Module):
    def __init__(self, channels: int, kernel_size: int = 5, wt_levels: int = 1, bias: bool = True):
        super().__init__()
        self.channels = channels
        self.wt_levels = wt_levels
        # Persistent buffers (not parameters: they never train) so original checkpoints load as they are.
        self.register_buffer("wt_filter", haar_filters(channels))
        self.register_buffer("iwt_filter", haar_filters(channels))
        self.base_conv = nn.Conv2d(channels, channels, kernel_size, padding="same", groups=channels, bias=bias)
        self.base_scale = ScaleModule(channels, 1.0)
        self.wavelet_convs = nn.ModuleList(
            nn.Conv2d(4 * channels, 4 * channels, kernel_size, padding="same", groups=4 * channels, bias=False)
            for _ in range(wt_levels)
        )
        self.wavelet_scale = nn.ModuleList(ScaleModule(4 * channels, 0.1) for _ in range(wt_levels))

    def wavelet_path(self, x: torch.Tensor) -> torch.Tensor:
        low_outputs, high_outputs, shapes = [], [], []
        low = x
        for level in range(self.wt_levels):
            shapes.append(low.shape[2:])
            if low.shape[2] % 2 or low.shape[3] % 2:
                low = F.pad(low, (0, low.shape[3] % 2, 0, low.shape[2] % 2))
            bands = haar_transform(low, self.wt_filter)
            low = bands[:, :, 0]
            batch, channels, _, height, width = bands.shape
            filtered = self.wavelet_scale[level](self.wavelet_convs[level](bands.reshape(batch, 4 * channels, height, width)))
            filtered = filtered.reshape(batch, channels, 4, height, width)
            low_outputs.append(filtered[:, :, 0])
            high_outputs.append(filtered[:, :, 1:4])
        carried = 0
        for level in reversed(range(self.wt_levels)):
            bands = torch.cat([(low_outputs[level] + carried).unsqueeze(2), high_outputs[level]], dim=2)
            height, width = shapes[level]
            carried = inverse_haar_transform(bands, self.iwt_filter)[:, :, :height, :width]
        return carried

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_scale(self.base_conv(x)) + self.wavelet_path(x)


class DepthwiseSeparableWTConv(nn.Module):
    """WTConv2d (depthwise) -> 1x1 conv (no bias) -> BatchNorm -> ReLU: DSU-Net's DINO -> SAM projection."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, wt_levels: int = 1):
        super().__init__()
        self.depthwise = WTConv2d(in_channels, kernel_size, wt_levels)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.pointwise(self.depthwise(x))))

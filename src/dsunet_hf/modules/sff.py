"""Spatial feature fusion (SFF, from STNet, Ma et al., ICME 2023) with full self-attention.

    xs  = bilinear_resize(x_small, size of x_big)
    x   = conv_small(xs) + conv_big(x_big)                 1x1 conv + BN + ReLU each
    a   = attention(query=x, key=x, value=x_big)            softmax((C/2)^-0.5 Q K^T) V over all H*W positions
    out = catconv(cat[a, x_big])                            3x3 conv + BN + ReLU

Module names (including the nested second projection ``key_project.3``) follow the DSU-Net checkpoints.
Attention runs through ``F.scaled_dot_product_attention`` on contiguous inputs, so it takes the fused flash
kernel (no H*W x H*W matrix in memory); the compute is still quadratic in H*W: 88x88 positions at the last
DSU-Net stage.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def projection(in_channels: int, out_channels: int, num_convs: int) -> nn.Sequential:
    """1x1 conv+BN+ReLU, further ones nested as extra children (upstream layout: ``.0``, ``.1``, ``.3.0``...)."""
    layers = conv_bn_relu(in_channels, out_channels)
    for _ in range(num_convs - 1):
        layers.append(conv_bn_relu(out_channels, out_channels))
    return layers


class SelfAttentionBlock(nn.Module):
    def __init__(self, channels: int, transform_channels: int, key_query_num_convs: int = 2):
        super().__init__()
        self.key_project = projection(channels, transform_channels, key_query_num_convs)
        self.query_project = projection(channels, transform_channels, key_query_num_convs)
        self.value_project = projection(channels, transform_channels, 1)
        self.out_project = projection(transform_channels, channels, 1)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = query.shape
        # (B, 1, N, C') made contiguous: with a strided channel axis SDPA falls back to its math kernel (the
        # N x N matrix in memory, ~4.7x slower on CPU at 88x88); contiguous inputs take the flash kernel.
        q, k, v = (
            project(x).flatten(2).transpose(1, 2).contiguous().unsqueeze(1)
            for project, x in ((self.query_project, query), (self.key_project, key), (self.value_project, value))
        )
        context = F.scaled_dot_product_attention(q, k, v)  # scale (C')^-0.5, softmax over keys
        context = context.squeeze(1).transpose(1, 2).reshape(batch, -1, height, width)
        return self.out_project(context)


class SFF(nn.Module):
    def __init__(self, channels: int = 64):
        super().__init__()
        self.conv_small = conv_bn_relu(channels, channels)
        self.conv_big = conv_bn_relu(channels, channels)
        self.catconv = conv_bn_relu(2 * channels, channels, 3)
        self.attention = SelfAttentionBlock(channels, channels // 2)

    def forward(self, x_small: torch.Tensor, x_big: torch.Tensor) -> torch.Tensor:
        x_small = F.interpolate(x_small, size=x_big.shape[2:], mode="bilinear", align_corners=False)
        x = self.conv_small(x_small) + self.conv_big(x_big)
        return self.catconv(torch.cat([self.attention(x, x, x_big), x_big], dim=1))

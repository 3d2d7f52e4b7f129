"""Atrous spatial pyramid pooling, plain (DeepLab, dilations 1/6/12/18) and deformable (BiRefNet).

Both are BiRefNet's decoder attention (``dec_att``): parallel 256-channel branches plus a global-average
branch, concatenated, fused by a 1x1 conv -> norm -> ReLU -> Dropout(0.5). Module names follow the
official code (``aspp1``, ``aspp_deforms.{i}``, ``global_avg_pool.{1,2}``, ``conv1``, ``bn1``) so its
checkpoints load by name. ``use_bn=False`` replaces every BatchNorm by ``Identity`` (what upstream does,
implicitly, when its batch size is 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .deform_conv import DeformableConv2d

BRANCH_CHANNELS = 256


def norm_2d(channels: int, use_bn: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if use_bn else nn.Identity()


class ASPPBranch(nn.Module):
    """conv (plain atrous or deformable) -> norm -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int, dilation: int = 1,
                 deformable: bool = False, use_bn: bool = True):
        super().__init__()
        if deformable:
            self.atrous_conv = DeformableConv2d(in_channels, out_channels, kernel_size, stride=1, padding=padding)
        else:
            self.atrous_conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation,
                                         bias=False)
        self.bn = norm_2d(out_channels, use_bn)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.atrous_conv(x)))


class _PyramidPooling(nn.Module):
    """Shared tail: branches + global average pooling -> concat -> 1x1 conv -> norm -> ReLU -> dropout."""

    def _build_tail(self, in_channels: int, out_channels: int, num_branches: int, use_bn: bool) -> None:
        self.global_avg_pool = nn.Sequential(
            nn.AdaptiveAvgPool2d((1, 1)),
            nn.Conv2d(in_channels, BRANCH_CHANNELS, 1, bias=False),
            norm_2d(BRANCH_CHANNELS, use_bn),
            nn.ReLU(inplace=True),
        )
        self.conv1 = nn.Conv2d(BRANCH_CHANNELS * (num_branches + 1), out_channels, 1, bias=False)
        self.bn1 = norm_2d(out_channels, use_bn)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(0.5)

    def _check_batch(self, x: torch.Tensor) -> None:
        # The pooled branch is 1x1, so a training BatchNorm sees one value per channel for a batch of one image;
        # torch's own error names neither the block nor the remedy. Checked before the costly branches.
        norm = self.global_avg_pool[2]
        if isinstance(norm, nn.BatchNorm2d) and norm.training and x.shape[0] == 1:  # no shape read in eval/export
            raise ValueError(f"{type(self).__name__}: BatchNorm cannot train on a batch of one image (the global "
                             "average pooling branch is 1x1); use batches of 2 or more images per device, keep "
                             "BatchNorm in eval mode (as LoRA fine-tuning does), or build with use_bn=False "
                             "(upstream BiRefNet's choice at batch size 1)")

    def _fuse(self, x: torch.Tensor, branch_outputs: list[torch.Tensor]) -> torch.Tensor:
        pooled = self.global_avg_pool(x)
        pooled = F.interpolate(pooled, size=branch_outputs[0].shape[2:], mode="bilinear", align_corners=True)
        x = torch.cat((*branch_outputs, pooled), dim=1)
        return self.dropout(self.relu(self.bn1(self.conv1(x))))


class ASPP(_PyramidPooling):
    """DeepLab ASPP at output stride 16: a 1x1 branch and 3x3 branches with dilations 6, 12, 18."""

    def __init__(self, in_channels: int, out_channels: int | None = None, use_bn: bool = True):
        super().__init__()
        out_channels = out_channels or in_channels
        self.aspp1 = ASPPBranch(in_channels, BRANCH_CHANNELS, 1, padding=0, use_bn=use_bn)
        self.aspp2 = ASPPBranch(in_channels, BRANCH_CHANNELS, 3, padding=6, dilation=6, use_bn=use_bn)
        self.aspp3 = ASPPBranch(in_channels, BRANCH_CHANNELS, 3, padding=12, dilation=12, use_bn=use_bn)
        self.aspp4 = ASPPBranch(in_channels, BRANCH_CHANNELS, 3, padding=18, dilation=18, use_bn=use_bn)
        self._build_tail(in_channels, out_channels, 4, use_bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_batch(x)
        return self._fuse(x, [self.aspp1(x), self.aspp2(x), self.aspp3(x), self.aspp4(x)])


class ASPPDeformable(_PyramidPooling):
    """BiRefNet's reconstruction attention: a 1x1 deformable branch, deformable branches with kernels
    1, 3 and 7 (receptive fields learned through offsets), and global average pooling."""

    def __init__(self, in_channels: int, out_channels: int | None = None, kernel_sizes: tuple[int, ...] = (1, 3, 7),
                 use_bn: bool = True):
        super().__init__()
        out_channels = out_channels or in_channels
        self.aspp1 = ASPPBranch(in_channels, BRANCH_CHANNELS, 1, padding=0, deformable=True, use_bn=use_bn)
        self.aspp_deforms = nn.ModuleList(
            ASPPBranch(in_channels, BRANCH_CHANNELS, k, padding=k // 2, deformable=True, use_bn=use_bn)
            for k in kernel_sizes
        )
        self._build_tail(in_channels, out_channels, 1 + len(kernel_sizes), use_bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_batch(x)
        return self._fuse(x, [self.aspp1(x), *(branch(x) for branch in self.aspp_deforms)])


__all__ = ["ASPP", "ASPPDeformable", "ASPPBranch", "norm_2d"]

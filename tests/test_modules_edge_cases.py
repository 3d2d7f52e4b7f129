"""Shared blocks (``dsunet_hf.modules``) at their edges: a training batch of one, memory layouts, autocast."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dsunet_hf.modules.aspp import ASPP, ASPPDeformable
from dsunet_hf.modules.decoder_blocks import UpBlock
from dsunet_hf.modules.deform_conv import DeformableConv2d, deform_conv2d_pytorch
from dsunet_hf.modules.fusion import CGAFusion
from dsunet_hf.modules.rfb import RFB
from dsunet_hf.modules.sff import SFF
from dsunet_hf.modules.wtconv import DepthwiseSeparableWTConv

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (see conftest)

PYRAMIDS = {"ASPP": ASPP, "ASPPDeformable": ASPPDeformable}


@pytest.mark.parametrize("name", sorted(PYRAMIDS))
def test_aspp_refuses_a_training_batch_of_one_naming_the_remedy(name):
    """The global-average branch is 1x1: a training BatchNorm sees one value per channel. torch's own error
    ("Expected more than 1 value per channel") named neither the block nor use_bn (BiRefNet, strategy full)."""
    block = PYRAMIDS[name](8, 8).train()
    with pytest.raises(ValueError, match=rf"^{name}: BatchNorm cannot train on a batch of one image.*use_bn=False"):
        block(torch.randn(1, 8, 6, 5))
    assert block(torch.randn(2, 8, 6, 5)).shape == (2, 8, 6, 5)


@pytest.mark.parametrize("name", sorted(PYRAMIDS))
def test_aspp_batch_of_one_runs_wherever_batchnorm_does_not_train(name):
    x = torch.randn(1, 8, 6, 5)
    assert PYRAMIDS[name](8, 8).eval()(x).shape == (1, 8, 6, 5)
    assert PYRAMIDS[name](8, 8, use_bn=False).train()(x).shape == (1, 8, 6, 5)
    block = PYRAMIDS[name](8, 8).train()  # LoRA: the block trains, its BatchNorm layers stay in eval mode
    for module in block.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()
    assert block(x).shape == (1, 8, 6, 5)


@pytest.mark.parametrize("size", [(7, 9), (11, 13), (8, 16)])
def test_offset_gradient_at_integer_positions_is_torchvisions_forward_difference(size):
    """A fresh DeformableConv2d (offsets 0) samples at integer positions only, where torchvision's offset gradient
    is the forward difference of the zero-padded image, v(p + 1) - v(p), borders (p = -1, p = H) included.
    grid_sample's inexact round trip of a non-power-of-two side put some samples just below the integer, where
    the difference is the backward one: a fresh layer's offset-conv gradient was 16-62% off."""
    height, width = size
    image = torch.randn(1, 1, height, width)
    offset = torch.zeros(1, 18, height, width, requires_grad=True)
    deform_conv2d_pytorch(image, offset, torch.ones(1, 1, 3, 3), padding=1).sum().backward()
    zeros_around = F.pad(image[0, 0], (2, 2, 2, 2))  # [a, b] holds v(a - 2, b - 2)
    down = zeros_around[1:] - zeros_around[:-1]  # [a, b]: v(a - 1, b - 2) - v(a - 2, b - 2)
    right = zeros_around[:, 1:] - zeros_around[:, :-1]
    grad = offset.grad.view(3, 3, 2, height, width)
    for i in range(3):
        for j in range(3):  # kernel point (i, j) of output (oy, ox) samples (oy - 1 + i, ox - 1 + j)
            rows, cols = slice(1 + i, 1 + i + height), slice(1 + j, 1 + j + width)
            torch.testing.assert_close(grad[i, j, 0], down[rows, cols], rtol=0, atol=1e-6)
            torch.testing.assert_close(grad[i, j, 1], right[rows, cols], rtol=0, atol=1e-6)


def test_training_and_inference_sample_the_same_values():
    """Only a path that needs the offset gradient pads the image to power-of-two sides: both give the same maps."""
    image, offset = torch.randn(2, 4, 11, 13), 3 * torch.randn(2, 18, 11, 13)
    weight, mask = torch.randn(5, 4, 3, 3), torch.rand(2, 9, 11, 13)
    with torch.no_grad():
        inference = deform_conv2d_pytorch(image, offset, weight, padding=1, mask=mask)
    training = deform_conv2d_pytorch(image, offset.requires_grad_(), weight, padding=1, mask=mask)
    torch.testing.assert_close(training.detach(), inference, rtol=1e-5, atol=1e-5)


BLOCKS = {
    "ASPPDeformable": lambda: (ASPPDeformable(8, 8), [(8, 7, 9)]),
    "UpBlock": lambda: (UpBlock(16, 8), [(8, 5, 6), (8, 11, 13)]),  # odd skip: padded, not misaligned
    "CGAFusion": lambda: (CGAFusion(16, 4), [(16, 5, 7), (16, 5, 7)]),
    "RFB": lambda: (RFB(8, 8), [(8, 9, 11)]),
    "SFF": lambda: (SFF(8), [(8, 5, 6), (8, 11, 13)]),
    "DepthwiseSeparableWTConv": lambda: (DepthwiseSeparableWTConv(8, 12, 3, wt_levels=2), [(8, 11, 13)]),
    "DeformableConv2d": lambda: (DeformableConv2d(8, 8, 3), [(8, 11, 13)]),
}


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_blocks_give_the_same_maps_for_channels_last_inputs_and_run_under_bf16_autocast(name):
    block, shapes = BLOCKS[name]()
    with torch.no_grad():
        for p in block.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)  # non-zero deformable offsets too
    block.eval()
    inputs = [torch.randn(2, *shape) for shape in shapes]
    with torch.no_grad():
        expected = block(*inputs)
        channels_last = block(*(x.to(memory_format=torch.channels_last) for x in inputs))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = block(*inputs)
    torch.testing.assert_close(channels_last, expected, rtol=1e-4, atol=1e-4)
    assert torch.isfinite(low).all()
    assert (low.float() - expected).abs().max() <= 0.05 * expected.abs().max()

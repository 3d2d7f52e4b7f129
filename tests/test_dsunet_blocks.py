"""DSU-Net blocks pinned to their formulas: CGAFusion, Haar/WTConv, SFF."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dsunet_hf.modules.fusion import CGAFusion
from dsunet_hf.modules.sff import SFF
from dsunet_hf.modules.wtconv import (
    DepthwiseSeparableWTConv,
    WTConv2d,
    haar_filters,
    haar_transform,
    inverse_haar_transform,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (see conftest)


def count(module):
    return sum(p.numel() for p in module.parameters())


def test_full_size_block_counts():
    assert count(CGAFusion(1152, 8)) == 1_775_475
    assert count(DepthwiseSeparableWTConv(1024, 1152, 3)) == 1_234_176
    assert count(SFF(64)) == 92_992


def test_cga_gate_is_a_double_sigmoid_and_output_follows_the_formula():
    fusion = CGAFusion(16, reduction=4).eval()
    x, y = torch.randn(2, 16, 9, 7), torch.randn(2, 16, 9, 7)
    gate = fusion.gate(x, y)
    assert gate.min() > 0.5 and gate.max() < 1 / (1 + torch.exp(torch.tensor(-1.0)))  # (0.5, 0.731)
    # Recompute the gate from the definition: interleaved channels, grouped reflect-padded 7x7, two sigmoids.
    initial = x + y
    spatial = fusion.sa.sa(torch.cat([initial.mean(1, keepdim=True), initial.max(1, keepdim=True).values], 1))
    channel = fusion.ca.ca(initial.mean((2, 3), keepdim=True))
    pattern = (spatial + channel).expand_as(initial)
    interleaved = torch.empty(2, 32, 9, 7)
    interleaved[:, 0::2], interleaved[:, 1::2] = initial, pattern
    padded = F.pad(interleaved, (3, 3, 3, 3), mode="reflect")
    expected_gate = torch.sigmoid(torch.sigmoid(F.conv2d(padded, fusion.pa.pa2.weight, fusion.pa.pa2.bias, groups=16)))
    torch.testing.assert_close(gate, expected_gate)
    expected = fusion.conv(initial + expected_gate * x + (1 - expected_gate) * y)
    torch.testing.assert_close(fusion(x, y), expected)


def test_haar_filters_and_perfect_reconstruction():
    filters = haar_filters(3)
    assert filters.shape == (12, 1, 2, 2)
    half = torch.tensor(2**-0.5, dtype=torch.float32) ** 2  # 0.49999997 in fp32, as pywavelets gives
    expected = torch.stack([torch.tensor([[1, 1], [1, 1]]), torch.tensor([[1, 1], [-1, -1]]),
                            torch.tensor([[1, -1], [1, -1]]), torch.tensor([[1, -1], [-1, 1]])]).float() * half
    assert torch.equal(filters[4:8, 0], expected)
    x = torch.randn(2, 3, 8, 10)
    bands = haar_transform(x, filters)
    assert bands.shape == (2, 3, 4, 4, 5)
    torch.testing.assert_close(bands[:, :, 0], F.avg_pool2d(x, 2) * 2)  # LL = 2 x block mean
    torch.testing.assert_close(inverse_haar_transform(bands, filters), x, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("levels, size", [(1, (11, 11)), (2, (12, 9)), (3, (16, 16))])
def test_wtconv_with_zero_wavelet_weights_is_its_base_conv(levels, size):
    conv = WTConv2d(6, kernel_size=3, wt_levels=levels)
    with torch.no_grad():
        for wavelet_conv in conv.wavelet_convs:
            wavelet_conv.weight.zero_()
    x = torch.randn(2, 6, *size)
    torch.testing.assert_close(conv(x), conv.base_scale.weight * conv.base_conv(x))
    assert conv(x).shape == x.shape


def test_wtconv_wavelet_path_with_identity_convs_is_a_scaled_identity():
    """With identity wavelet convs and scale 1, transform + inverse returns the input (odd sizes cropped)."""
    conv = WTConv2d(4, kernel_size=3, wt_levels=1)
    with torch.no_grad():
        conv.wavelet_convs[0].weight.zero_()
        conv.wavelet_convs[0].weight[:, 0, 1, 1] = 1
        conv.wavelet_scale[0].weight.fill_(1)
    x = torch.randn(1, 4, 11, 11)
    torch.testing.assert_close(conv.wavelet_path(x), x, atol=1e-5, rtol=1e-5)


def test_sff_matches_explicit_attention():
    sff = SFF(16).eval()
    small, big = torch.randn(2, 16, 5, 5), torch.randn(2, 16, 10, 10)
    attention = sff.attention
    xs = F.interpolate(small, size=(10, 10), mode="bilinear", align_corners=False)
    x = sff.conv_small(xs) + sff.conv_big(big)
    q = attention.query_project(x).flatten(2).transpose(1, 2)
    k = attention.key_project(x).flatten(2)
    v = attention.value_project(big).flatten(2).transpose(1, 2)
    weights = torch.softmax((8**-0.5) * q @ k, dim=-1)
    context = (weights @ v).transpose(1, 2).reshape(2, 8, 10, 10)
    expected = sff.catconv(torch.cat([attention.out_project(context), big], 1))
    torch.testing.assert_close(sff(small, big), expected, atol=1e-5, rtol=1e-5)
    assert "attention.key_project.3.0.weight" in sff.state_dict()

"""Modulated deformable convolution: pure path vs a from-definition loop reference, gradients, BiRefNet's
layer, autocast, backend dispatch and (when installed) parity with torchvision."""

from __future__ import annotations

import math
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dsunet_hf.modules import deform_conv as dc
from dsunet_hf.modules.deform_conv import DeformableConv2d, deform_conv2d, deform_conv2d_pytorch


@pytest.fixture(autouse=True)
def _isolated_backend(monkeypatch):
    """Each test starts from the default backend and no env override, and leaves no global state behind."""
    monkeypatch.setattr(dc, "_backend", "auto")
    monkeypatch.delenv(dc.PURE_ENV_VAR, raising=False)


# Tiny tensors: with intra-op threads, gradcheck's thousands of calls spend their time in thread hand-offs, which
# slow down ~20x when another process shares the cores.
pytestmark = pytest.mark.usefixtures("one_thread")


def _pair(value):
    return (value, value) if isinstance(value, int) else tuple(value)


def reference_deform_conv2d(input, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None):
    """torchvision's definition, one output pixel, channel and kernel point at a time, in float64."""
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    batch, channels, height, width = input.shape
    out_channels, group_channels, kh, kw = weight.shape
    points = kh * kw
    groups = channels // group_channels
    offset_groups = offset.shape[1] // (2 * points)
    out_h = (height + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    out_w = (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    x, off, w = input.double().tolist(), offset.double().tolist(), weight.double().tolist()
    m = None if mask is None else mask.double().tolist()
    b_ = None if bias is None else bias.double().tolist()

    def bilinear(plane, y, xx):
        if y <= -1 or y >= height or xx <= -1 or xx >= width:
            return 0.0
        y0, x0 = math.floor(y), math.floor(xx)
        total = 0.0
        for yc, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
            for xc, wx in ((x0, 1 - (xx - x0)), (x0 + 1, xx - x0)):
                if 0 <= yc < height and 0 <= xc < width:
                    total += wy * wx * plane[yc][xc]
        return total

    out = torch.zeros(batch, out_channels, out_h, out_w, dtype=torch.float64)
    for b in range(batch):
        for oy in range(out_h):
            for ox in range(out_w):
                column = [[0.0] * points for _ in range(channels)]
                for c in range(channels):
                    g = c // (channels // offset_groups)
                    for i in range(kh):
                        for j in range(kw):
                            k = i * kw + j
                            y = oy * sh - ph + i * dh + off[b][2 * (g * points + k)][oy][ox]
                            xx = ox * sw - pw + j * dw + off[b][2 * (g * points + k) + 1][oy][ox]
                            value = bilinear(x[b][c], y, xx)
                            if m is not None:
                                value *= m[b][g * points + k][oy][ox]
                            column[c][k] = value
                for o in range(out_channels):
                    wg = o // (out_channels // groups)
                    total = 0.0 if b_ is None else b_[o]
                    for cl in range(group_channels):
                        for k in range(points):
                            total += w[o][cl][k // kw][k % kw] * column[wg * group_channels + cl][k]
                    out[b, o, oy, ox] = total
    return out


def make_inputs(in_channels=3, out_channels=4, kernel=3, stride=1, padding=1, dilation=1, offset_groups=1,
                groups=1, size=(7, 7), batch=2, offset_scale=3.0, use_mask=True, use_bias=True,
                dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = _pair(kernel), _pair(stride), _pair(padding), _pair(dilation)
    height, width = size
    out_h = (height + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    out_w = (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    points = kh * kw

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype)

    return dict(
        input=rand(batch, in_channels, height, width),
        # Offsets of a few pixels push many samples across (and well past) the 7-px border.
        offset=offset_scale * rand(batch, 2 * offset_groups * points, out_h, out_w),
        weight=rand(out_channels, in_channels // groups, kh, kw),
        bias=rand(out_channels) if use_bias else None,
        stride=stride, padding=padding, dilation=dilation,
        mask=torch.rand(batch, offset_groups * points, out_h, out_w, generator=gen, dtype=dtype) * 2
        if use_mask else None,
    )


REFERENCE_CASES = {
    "k3": dict(),
    "k3-stride2": dict(stride=2),
    "k3-dilation2-pad2": dict(dilation=2, padding=2),
    "k3-pad0": dict(padding=0),
    "k1": dict(kernel=1, padding=0),
    "k3x2-mixed": dict(kernel=(3, 2), stride=(1, 2), padding=(1, 0), dilation=(2, 1)),
    "offset-groups3": dict(offset_groups=3),
    "groups2-offset-groups2": dict(in_channels=4, groups=2, offset_groups=2),
    "no-mask-no-bias": dict(use_mask=False, use_bias=False),
    "height1": dict(size=(1, 6), padding=(0, 1), kernel=(1, 3)),
    "width1": dict(size=(5, 1), stride=2),
}


@pytest.mark.parametrize("case", REFERENCE_CASES.values(), ids=REFERENCE_CASES.keys())
def test_pure_path_matches_loop_reference(case):
    args = make_inputs(**case)
    expected = reference_deform_conv2d(**args)
    got = deform_conv2d_pytorch(**args)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


def test_pure_path_boundaries_match_reference():
    """Positions on and just inside/outside the zero rule: integers, half-integers, -1, -0.5, H-0.5 and H."""
    args = make_inputs(size=(6, 5), offset_scale=0.0, seed=1)
    gen = torch.Generator().manual_seed(2)
    args["offset"] = torch.randint(-16, 17, args["offset"].shape, generator=gen).float() / 2
    expected = reference_deform_conv2d(**args)
    torch.testing.assert_close(deform_conv2d_pytorch(**args).double(), expected, rtol=1e-5, atol=1e-5)


def test_pure_path_zero_offset_unit_mask_is_conv2d():
    args = make_inputs(in_channels=4, groups=2, stride=2, padding=2, dilation=2, offset_scale=0.0, size=(9, 8))
    args["mask"] = torch.ones_like(args["mask"])
    expected = F.conv2d(args["input"], args["weight"], args["bias"], stride=2, padding=2, dilation=2, groups=2)
    torch.testing.assert_close(deform_conv2d_pytorch(**args), expected, rtol=1e-5, atol=1e-5)


def test_pure_path_gradcheck_float64():
    args = make_inputs(in_channels=2, out_channels=2, offset_groups=2, size=(3, 4), batch=1, offset_scale=1.5,
                       dtype=torch.float64)
    names = ("input", "offset", "weight", "bias", "mask")
    tensors = tuple(args[name].requires_grad_() for name in names)

    def fn(input, offset, weight, bias, mask):
        return deform_conv2d_pytorch(input, offset, weight, bias, stride=1, padding=1, mask=mask)

    assert torch.autograd.gradcheck(fn, tensors, eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("kernel,stride,padding,bias", [(3, 1, 1, False), (3, 2, 1, True), (1, 1, 0, False),
                                                         ((3, 2), 1, (1, 0), True), (7, 1, 3, False)])
def test_layer_starts_as_regular_conv(monkeypatch, kernel, stride, padding, bias):
    monkeypatch.setenv(dc.PURE_ENV_VAR, "1")
    torch.manual_seed(0)
    layer = DeformableConv2d(3, 5, kernel, stride=stride, padding=padding, bias=bias)
    x = torch.randn(2, 3, 9, 8)
    torch.testing.assert_close(layer(x), layer.regular_conv(x), rtol=1e-6, atol=1e-6)


def test_reset_offset_parameters_zeroes_offset_and_modulator():
    layer = DeformableConv2d(3, 4, 3, bias=True)
    for parameter in layer.parameters():
        nn.init.normal_(parameter)
    regular = {k: v.clone() for k, v in layer.regular_conv.state_dict().items()}
    layer.reset_offset_parameters()
    for conv in (layer.offset_conv, layer.modulator_conv):
        assert not conv.weight.any() and not conv.bias.any()
    for key, value in layer.regular_conv.state_dict().items():
        assert torch.equal(value, regular[key])


@pytest.mark.parametrize("bias", [False, True])
def test_state_dict_keys_and_shapes_follow_birefnet(bias):
    layer = DeformableConv2d(6, 8, kernel_size=(3, 2), padding=1, bias=bias)
    keys = ["offset_conv.weight", "offset_conv.bias", "modulator_conv.weight", "modulator_conv.bias",
            "regular_conv.weight"] + (["regular_conv.bias"] if bias else [])
    state = layer.state_dict()
    assert list(state) == keys
    assert state["offset_conv.weight"].shape == (12, 6, 3, 2)
    assert state["modulator_conv.weight"].shape == (6, 6, 3, 2)
    assert state["regular_conv.weight"].shape == (8, 6, 3, 2)


def _deformed_layer():
    """A layer whose offsets and modulator are far from the identity, so the test exercises sampling."""
    torch.manual_seed(0)
    layer = DeformableConv2d(4, 6, 3, bias=True)
    nn.init.normal_(layer.offset_conv.weight, std=0.5)
    nn.init.normal_(layer.modulator_conv.weight, std=0.5)
    return layer


def test_layer_under_bf16_autocast_is_close_to_fp32(monkeypatch):
    monkeypatch.setenv(dc.PURE_ENV_VAR, "1")
    layer = _deformed_layer()
    x = torch.randn(2, 4, 12, 12)
    reference = layer(x)
    x.requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert out.dtype == x.dtype  # torchvision's rule: the input's dtype
    assert (out - reference).norm() / reference.norm() < 5e-2
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())


def test_bf16_inputs_are_computed_in_float32():
    args = make_inputs(size=(16, 16), seed=3)
    reference = deform_conv2d_pytorch(**args)
    low = {k: v.bfloat16() if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    out = deform_conv2d_pytorch(**low)
    assert out.dtype == torch.bfloat16
    assert (out.float() - reference).norm() / reference.norm() < 5e-2


def _fake_torchvision(monkeypatch, calls):
    def fake_deform_conv2d(input, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None):
        calls.append(dict(input=input, offset=offset, weight=weight, bias=bias, stride=stride, padding=padding,
                          dilation=dilation, mask=mask, autocast=torch.is_autocast_enabled("cpu")))
        return torch.full((1,), 42.0)

    ops = types.ModuleType("torchvision.ops")
    ops.deform_conv2d = fake_deform_conv2d
    package = types.ModuleType("torchvision")
    package.ops = ops
    monkeypatch.setitem(sys.modules, "torchvision", package)
    monkeypatch.setitem(sys.modules, "torchvision.ops", ops)


def test_dispatch_uses_pure_path_without_torchvision(monkeypatch):
    monkeypatch.setattr(dc, "_torchvision_available", False)
    calls = []
    _fake_torchvision(monkeypatch, calls)  # present in sys.modules, but the cached check says unavailable
    args = make_inputs()
    assert dc.get_backend() == "pytorch"
    torch.testing.assert_close(deform_conv2d(**args), deform_conv2d_pytorch(**args))
    assert calls == []


def test_dispatch_calls_torchvision_ops_when_available(monkeypatch):
    monkeypatch.setattr(dc, "_torchvision_available", True)
    calls = []
    _fake_torchvision(monkeypatch, calls)
    args = make_inputs(stride=2, dilation=2, padding=2)
    assert dc.get_backend() == "torchvision"
    assert deform_conv2d(**args).item() == 42.0
    assert len(calls) == 1
    for name, value in args.items():
        assert calls[0][name] is value
    assert not calls[0]["autocast"]


def test_torchvision_branch_gets_float32_under_autocast(monkeypatch):
    """torchvision's CPU kernel has neither an autocast rule nor bfloat16 support: we cast, as its CUDA rule does."""
    monkeypatch.setattr(dc, "_torchvision_available", True)
    calls = []
    _fake_torchvision(monkeypatch, calls)
    args = make_inputs()
    args["input"] = args["input"].bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = deform_conv2d(**args)
    assert out.dtype == torch.bfloat16
    assert not calls[0]["autocast"]
    assert all(calls[0][name].dtype == torch.float32 for name in ("input", "offset", "weight", "bias", "mask"))


def test_forcing_the_pure_path(monkeypatch):
    monkeypatch.setattr(dc, "_torchvision_available", True)
    calls = []
    _fake_torchvision(monkeypatch, calls)
    args = make_inputs(kernel=1, padding=0)
    monkeypatch.setenv(dc.PURE_ENV_VAR, "1")
    assert dc.get_backend() == "pytorch"
    deform_conv2d(**args)
    monkeypatch.delenv(dc.PURE_ENV_VAR)
    dc.set_backend("pytorch")
    assert dc.get_backend() == "pytorch"
    deform_conv2d(**args)
    assert calls == []
    dc.set_backend("torchvision")
    deform_conv2d(**args)
    assert len(calls) == 1
    monkeypatch.setenv(dc.PURE_ENV_VAR, "1")  # the env var overrides set_backend
    assert dc.get_backend() == "pytorch"


def test_set_backend_rejects_unknown_and_unavailable(monkeypatch):
    with pytest.raises(ValueError, match="unknown deform_conv2d backend"):
        dc.set_backend("cuda")
    monkeypatch.setattr(dc, "_torchvision_available", False)
    with pytest.raises(ImportError, match="torchvision"):
        dc.set_backend("torchvision")
    assert dc._backend == "auto"


def test_torchvision_check_runs_once_and_is_cached(monkeypatch):
    monkeypatch.setattr(dc, "_torchvision_available", None)
    monkeypatch.setitem(sys.modules, "torchvision", None)  # makes `import torchvision` raise ImportError
    assert dc.get_backend() == "pytorch"
    assert dc._torchvision_available is False
    _fake_torchvision(monkeypatch, [])  # importable now, but the cached answer stands
    assert dc._check_torchvision() is False


@pytest.mark.parametrize("case", REFERENCE_CASES.values(), ids=REFERENCE_CASES.keys())
def test_pure_path_matches_real_torchvision(case):
    tv_ops = pytest.importorskip("torchvision.ops", reason="parity with the reference CUDA/C++ op needs torchvision")
    args = make_inputs(**case)
    for name in ("input", "offset", "weight", "bias", "mask"):
        if args[name] is not None:
            args[name].requires_grad_()
    ours = deform_conv2d_pytorch(**args)
    theirs = tv_ops.deform_conv2d(**args)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    leaves = [args[n] for n in ("input", "offset", "weight", "bias", "mask") if args[n] is not None]
    grad_out = torch.randn_like(ours)
    ours_grads = torch.autograd.grad(ours, leaves, grad_out)
    theirs_grads = torch.autograd.grad(theirs, leaves, grad_out)
    for a, b in zip(ours_grads, theirs_grads):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)


def _with(**changes):
    args = make_inputs()
    args.update(changes)
    return args


ERROR_CASES = {
    "offset-channels": (lambda: _with(offset=torch.zeros(2, 17, 7, 7)), "offset has 17 channels"),
    "offset-spatial": (lambda: _with(offset=torch.zeros(2, 18, 6, 7)), r"offset has shape \(2, 18, 6, 7\)"),
    "offset-batch": (lambda: _with(offset=torch.zeros(1, 18, 7, 7)), r"expected \(2, 18, 7, 7\)"),
    "offset-groups": (lambda: _with(offset=torch.zeros(2, 36, 7, 7), mask=None), "offset_groups=2"),
    "mask-channels": (lambda: _with(mask=torch.zeros(2, 8, 7, 7)), "mask has shape"),
    "weight-channels": (lambda: _with(weight=torch.zeros(4, 2, 3, 3)), "does not divide"),
    "bias-shape": (lambda: _with(bias=torch.zeros(3)), "bias has shape"),
    "input-rank": (lambda: _with(input=torch.zeros(3, 7, 7)), "input must be 4-D"),
    "too-small": (lambda: _with(input=torch.zeros(2, 3, 1, 1), padding=0), "too small"),
}


@pytest.mark.parametrize("build,message", ERROR_CASES.values(), ids=ERROR_CASES.keys())
@pytest.mark.parametrize("fake_torchvision", [False, True], ids=["pure", "torchvision"])
def test_bad_shapes_raise_clear_errors(monkeypatch, build, message, fake_torchvision):
    monkeypatch.setattr(dc, "_torchvision_available", fake_torchvision)
    calls = []
    _fake_torchvision(monkeypatch, calls)
    with pytest.raises(ValueError, match=message):
        deform_conv2d(**build())
    assert calls == []

"""Modulated deformable convolution (DCNv2, Zhu et al., CVPR 2019) as BiRefNet uses it.

``deform_conv2d`` has the signature and semantics of ``torchvision.ops.deform_conv2d``: for output pixel
``p0 = (out_y * stride - padding, out_x * stride - padding)`` and kernel point ``k = (i, j)`` (row-major over
``kh, kw``) the input is sampled bilinearly at ``p0 + k * dilation + offset``, where ``offset`` has
``2 * offset_groups * kh * kw`` channels laid out per offset group as ``[dy_0, dx_0, dy_1, dx_1, ...]``
(offset group ``g`` covers the ``g``-th contiguous block of ``in_channels / offset_groups`` input channels).
A point with ``y <= -1``, ``y >= H``, ``x <= -1`` or ``x >= W`` samples 0; otherwise each of its four
bilinear corners that lies outside the image contributes 0. Each sample is multiplied by ``mask`` (shape
``(B, offset_groups * kh * kw, Ho, Wo)``, optional), then contracted with ``weight`` (``(Cout, Cin / groups,
kh, kw)``; ``groups`` is inferred from it, as torchvision does) and ``bias`` is added.

Backends. ``torchvision.ops.deform_conv2d`` is used when torchvision imports and its compiled op is
registered (checked once, on first use, then cached); otherwise the vectorised pure-PyTorch
``deform_conv2d_pytorch`` (``grid_sample`` + a matmul; no custom kernels, any device, full autograd).
Force a backend with ``set_backend("pytorch" | "torchvision" | "auto")``, or set the environment variable
``DSUNET_HF_PURE_DEFORM_CONV=1`` (read at each call; overrides ``set_backend``) to always take the pure path.
``get_backend()`` names the backend the next call will use.

Mixed precision. Under ``torch.autocast``, or for float16/bfloat16 inputs, both backends get every argument
cast to float32, run with autocast disabled, and the result is returned in the input's dtype. That is what
torchvision's CUDA autocast rule does, and it is needed on CPU, where torchvision has no autocast rule and no
bfloat16 kernel. float32 is the right dtype because sampling positions are ``base + offset`` in pixels and
bfloat16's 8-bit mantissa cannot hold them (at 256-511 px its step is 2 px): a low-precision grid would
sample the wrong pixels. Outside autocast, float32/float64 inputs are computed in their own dtype (offset,
mask, weight and bias are cast to it).

``DeformableConv2d`` is BiRefNet's layer, with its submodule names (``offset_conv``, ``modulator_conv``,
``regular_conv``) so official checkpoints load by name.
"""

from __future__ import annotations

import contextlib
import os

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DeformableConv2d",
    "deform_conv2d",
    "deform_conv2d_pytorch",
    "get_backend",
    "set_backend",
]

PURE_ENV_VAR = "DSUNET_HF_PURE_DEFORM_CONV"
_BACKENDS = ("auto", "pytorch", "torchvision")
_backend = "auto"
# None until first checked: importing torchvision is slow and may fail, so it is not done at import time.
_torchvision_available: bool | None = None


def _check_torchvision() -> bool:
    global _torchvision_available
    if _torchvision_available is None:
        try:
            import torchvision.ops  # noqa: F401

            # A torchvision built against another torch imports fine but has no registered op.
            torch.ops.torchvision.deform_conv2d  # noqa: B018
            _torchvision_available = True
        except Exception:
            _torchvision_available = False
    return _torchvision_available


def _pure_forced_by_env() -> bool:
    return os.environ.get(PURE_ENV_VAR, "").strip().lower() in {"1", "true", "yes", "on"}


def set_backend(name: str) -> None:
    """Choose the backend: ``"auto"`` (torchvision when available), ``"pytorch"`` or ``"torchvision"``."""
    global _backend
    if name not in _BACKENDS:
        raise ValueError(f"unknown deform_conv2d backend {name!r}; expected one of {', '.join(_BACKENDS)}")
    if name == "torchvision" and not _check_torchvision():
        raise ImportError("deform_conv2d backend 'torchvision' needs an importable torchvision with its compiled ops")
    _backend = name


def get_backend() -> str:
    """The backend the next ``deform_conv2d`` call uses: ``"pytorch"`` or ``"torchvision"``."""
    if _pure_forced_by_env() or _backend == "pytorch":
        return "pytorch"
    if _backend == "torchvision" or _check_torchvision():
        return "torchvision"
    return "pytorch"


def _pair(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) for v in pair):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return pair


def _output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _validate(input, offset, weight, bias, stride, padding, dilation, mask):
    """Checks every shape; returns (stride, padding, dilation, groups, offset_groups, out_h, out_w)."""
    stride, padding, dilation = _pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation")
    if min(stride) < 1 or min(dilation) < 1 or min(padding) < 0:
        raise ValueError(f"need stride >= 1, dilation >= 1, padding >= 0; got {stride}, {dilation}, {padding}")
    for name, tensor in (("input", input), ("offset", offset), ("weight", weight)):
        if tensor.dim() != 4:
            raise ValueError(f"{name} must be 4-D, got shape {tuple(tensor.shape)}")
    batch, in_channels, height, width = input.shape
    out_channels, group_channels, kernel_h, kernel_w = weight.shape
    if group_channels == 0 or in_channels % group_channels:
        raise ValueError(f"weight has {group_channels} input channels per group, which does not divide the "
                         f"input's {in_channels} channels")
    groups = in_channels // group_channels
    if out_channels % groups:
        raise ValueError(f"weight's {out_channels} output channels are not divisible by groups={groups}")
    out_h = _output_size(height, kernel_h, stride[0], padding[0], dilation[0])
    out_w = _output_size(width, kernel_w, stride[1], padding[1], dilation[1])
    if out_h < 1 or out_w < 1:
        raise ValueError(f"input {height}x{width} is too small for kernel {kernel_h}x{kernel_w} with padding "
                         f"{padding} and dilation {dilation}")
    points = kernel_h * kernel_w
    if offset.shape[1] == 0 or offset.shape[1] % (2 * points):
        raise ValueError(f"offset has {offset.shape[1]} channels; expected 2 * offset_groups * kh * kw, a "
                         f"positive multiple of {2 * points} for a {kernel_h}x{kernel_w} kernel")
    offset_groups = offset.shape[1] // (2 * points)
    if in_channels % offset_groups:
        raise ValueError(f"offset_groups={offset_groups} (from the offset's {offset.shape[1]} channels) does not "
                         f"divide the input's {in_channels} channels")
    expected = (batch, 2 * offset_groups * points, out_h, out_w)
    if tuple(offset.shape) != expected:
        raise ValueError(f"offset has shape {tuple(offset.shape)}; expected {expected} (batch, channels, output "
                         f"height, output width)")
    if mask is not None:
        expected = (batch, offset_groups * points, out_h, out_w)
        if tuple(mask.shape) != expected:
            raise ValueError(f"mask has shape {tuple(mask.shape)}; expected {expected} (batch, offset_groups * "
                             f"kh * kw, output height, output width)")
    if bias is not None and tuple(bias.shape) != (out_channels,):
        raise ValueError(f"bias has shape {tuple(bias.shape)}; expected ({out_channels},)")
    return stride, padding, dilation, groups, offset_groups, out_h, out_w


def _autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:  # a device type autocast does not know (e.g. "meta")
        return False


def deform_conv2d_pytorch(
    input: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pure-PyTorch ``torchvision.ops.deform_conv2d``; see the module docstring for the semantics."""
    geometry = _validate(input, offset, weight, bias, stride, padding, dilation, mask)
    return _with_compute_dtype(
        lambda *tensors: _deform_conv2d_impl(*tensors, geometry=geometry), input, offset, weight, bias, mask)


def _with_compute_dtype(fn, input, offset, weight, bias, mask) -> torch.Tensor:
    """Run ``fn(input, offset, weight, bias, mask)`` in the compute dtype; the result has the input's dtype.

    Under autocast, or for float16/bfloat16 inputs, that is float32 with autocast off (see the module
    docstring; torchvision's CPU kernel has no autocast rule and no bfloat16 support, so its branch needs this
    too); otherwise the input's dtype, with the other tensors cast to it so parameters may differ in dtype.
    """
    device_type = input.device.type
    low_precision = _autocast_enabled(device_type) or input.dtype in (torch.float16, torch.bfloat16)
    dtype = torch.float32 if low_precision else input.dtype

    def cast(tensor):
        return None if tensor is None else tensor.to(dtype)

    with torch.autocast(device_type, enabled=False) if low_precision else contextlib.nullcontext():
        out = fn(cast(input), cast(offset), cast(weight), cast(bias), cast(mask))
    return out.to(input.dtype)


def _next_power_of_two(size: int) -> int:
    return 1 << (size - 1).bit_length()


def _deform_conv2d_impl(input, offset, weight, bias, mask, *, geometry) -> torch.Tensor:
    (stride_h, stride_w), (pad_h, pad_w), (dil_h, dil_w), groups, offset_groups, out_h, out_w = geometry
    batch, in_channels, height, width = input.shape
    out_channels, _, kernel_h, kernel_w = weight.shape
    points = kernel_h * kernel_w
    dtype, device = input.dtype, input.device

    # Undeformed sampling positions in pixels: (K, Ho, 1) rows and (K, 1, Wo) columns, K row-major.
    kernel_y = (torch.arange(kernel_h, device=device, dtype=dtype) * dil_h).repeat_interleave(kernel_w)
    kernel_x = (torch.arange(kernel_w, device=device, dtype=dtype) * dil_w).repeat(kernel_h)
    base_y = kernel_y[:, None, None] + (torch.arange(out_h, device=device, dtype=dtype) * stride_h - pad_h)[:, None]
    base_x = kernel_x[:, None, None] + (torch.arange(out_w, device=device, dtype=dtype) * stride_w - pad_w)

    offset = offset.reshape(batch, offset_groups, points, 2, out_h, out_w)
    y = base_y + offset[:, :, :, 0]
    x = base_x + offset[:, :, :, 1]
    # align_corners=False puts pixel i's centre at (2i + 1) / size - 1: never divides by zero (H or W == 1),
    # and zeros padding gives exactly torchvision's rule (outside corners contribute 0). For an offset gradient the
    # image is zero-padded (bottom/right, no sample changes) to power-of-two sides, so that normalising and
    # grid_sample's un-normalising are exact: an integer position (every one in a fresh layer, its offsets 0) stays
    # integer and gets torchvision's forward-difference gradient; otherwise rounding put some just below it, where
    # grid_sample takes the backward difference (a fresh layer's offset-conv gradient was 16-62% off). Values
    # move by ~1e-6 at most, so inference (and its ONNX graphs of any size) keeps the plain sides.
    input = input.reshape(batch * offset_groups, in_channels // offset_groups, height, width)
    grid_h, grid_w = height, width
    if offset.requires_grad:
        grid_h, grid_w = _next_power_of_two(height), _next_power_of_two(width)
        if (grid_h, grid_w) != (height, width):
            input = F.pad(input, (0, grid_w - width, 0, grid_h - height))
    grid = torch.stack(((2 * x + 1) / grid_w - 1, (2 * y + 1) / grid_h - 1), dim=-1)
    grid = grid.reshape(batch * offset_groups, points * out_h, out_w, 2)
    sampled = F.grid_sample(
        input, grid, mode="bilinear", padding_mode="zeros", align_corners=False,
    ).reshape(batch, offset_groups, in_channels // offset_groups, points, out_h, out_w)
    if mask is not None:
        sampled = sampled * mask.reshape(batch, offset_groups, 1, points, out_h, out_w)

    # Columns (B, groups, Cin/groups * K, L) against weight (groups, Cout/groups, Cin/groups * K).
    columns = sampled.reshape(batch, groups, (in_channels // groups) * points, out_h * out_w)
    out = torch.matmul(weight.reshape(groups, out_channels // groups, -1), columns)
    out = out.reshape(batch, out_channels, out_h, out_w)
    if bias is not None:
        out = out + bias.reshape(1, out_channels, 1, 1)
    return out


def deform_conv2d(
    input: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``torchvision.ops.deform_conv2d`` when available (see ``get_backend``), else ``deform_conv2d_pytorch``."""
    if get_backend() == "torchvision":
        # Validate here too so both backends raise the same ValueErrors.
        _validate(input, offset, weight, bias, stride, padding, dilation, mask)
        from torchvision.ops import deform_conv2d as torchvision_deform_conv2d

        def call_torchvision(input, offset, weight, bias, mask):
            return torchvision_deform_conv2d(input, offset, weight, bias=bias, stride=stride, padding=padding,
                                             dilation=dilation, mask=mask)

        return _with_compute_dtype(call_torchvision, input, offset, weight, bias, mask)
    return deform_conv2d_pytorch(input, offset, weight, bias=bias, stride=stride, padding=padding,
                                 dilation=dilation, mask=mask)


class DeformableConv2d(nn.Module):
    """BiRefNet's modulated deformable conv: offsets and a ``2 * sigmoid`` modulator predicted from the input.

    ``offset_conv`` and ``modulator_conv`` start at zero, so a fresh layer equals ``regular_conv`` (offsets 0,
    modulator 1). A model's generic weight init must call ``reset_offset_parameters`` afterwards.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int] = 3,
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 1, bias: bool = False):
        super().__init__()
        _check_torchvision()  # probe the backend now: an import inside torch.compile's trace breaks the graph
        kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        self.padding = _pair(padding, "padding")
        points = kernel_size[0] * kernel_size[1]
        self.offset_conv = nn.Conv2d(in_channels, 2 * points, kernel_size, self.stride, self.padding, bias=True)
        self.modulator_conv = nn.Conv2d(in_channels, points, kernel_size, self.stride, self.padding, bias=True)
        self.regular_conv = nn.Conv2d(in_channels, out_channels, kernel_size, self.stride, self.padding, bias=bias)
        self.reset_offset_parameters()

    @torch.no_grad()
    def reset_offset_parameters(self) -> None:
        """Zero the offset and modulator convs (offsets 0, modulator 2 * sigmoid(0) = 1)."""
        for conv in (self.offset_conv, self.modulator_conv):
            conv.weight.zero_()
            conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offset = self.offset_conv(x)
        modulator = 2.0 * torch.sigmoid(self.modulator_conv(x))
        return deform_conv2d(x, offset, self.regular_conv.weight, self.regular_conv.bias, stride=self.stride,
                             padding=self.padding, mask=modulator)

"""Foreground colour estimation for background-removal cut-outs.

A cut-out that keeps the photo's colours under a soft alpha shows a halo: along hair and edges the pixel
colour is a mix of foreground and background, so the old background bleeds into the new one. Blur-fusion
(Forte & Pitié, "Approximate Fast Foreground Colour Estimation", ICIP 2021), the estimator BiRefNet's
``refine_foreground`` runs, recovers the foreground colour F of ``I = alpha F + (1 - alpha) B`` from local
means:

    F_bar = blur(F alpha) / blur(alpha),   B_bar = blur(B (1 - alpha)) / blur(1 - alpha)
    F     = clip(F_bar + alpha (I - alpha F_bar - (1 - alpha) B_bar), 0, 1)

run twice: first with F = B = I and a 90-pixel box, then with the first F and B_bar and a 6-pixel box.

The box blur has OpenCV ``cv2.blur`` semantics, as in the authors' CPU path: a normalised box of ``size``
pixels, anchored at ``size // 2``, mirrored borders (BORDER_REFLECT_101). On the CPU it *is* ``cv2.blur`` when
OpenCV is installed (its sliding window is 2-5x faster than anything written with tensor operations here);
otherwise, and on GPUs, it runs in torch with integral images in float64 (OpenCV sums in double as well), so
the cost does not grow with the box size and OpenCV is not a dependency. (The authors' GPU variant pads by
replication instead, which differs within half a box of the border.)
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from PIL import Image

BLUR_FUSION_SIZES = (90, 6)
_EPS = 1e-5  # keeps the local means finite where a box holds no foreground (or no background)


def _reflect_101_indices(length: int, before: int, after: int, device) -> torch.Tensor:
    """Source index of every padded position with mirrored borders that exclude the edge pixel (OpenCV's
    BORDER_REFLECT_101), repeated as often as needed when the padding exceeds the length."""
    index = torch.arange(-before, length + after, device=device)
    if length == 1:
        return torch.zeros_like(index)
    period = 2 * (length - 1)
    index = index.remainder(period)
    return torch.where(index >= length, period - index, index)


@functools.cache
def _opencv():
    try:
        import cv2
    except ImportError:
        return None
    return cv2


def opencv_available() -> bool:
    """Whether the CPU box blur runs OpenCV's (2-5x the tensor version)."""
    return _opencv() is not None


def box_blur(x: torch.Tensor, size: int) -> torch.Tensor:
    """``cv2.blur(x, (size, size))`` over the last two dimensions of ``x`` (any leading dimensions)."""
    if size < 1:
        raise ValueError(f"box size must be at least 1, got {size}")
    if size == 1:
        return x.clone()
    cv2 = _opencv()
    if cv2 is not None and x.device.type == "cpu" and x.dtype == torch.float32:
        planes = x.detach().contiguous().reshape(-1, *x.shape[-2:]).numpy()
        return torch.from_numpy(np.stack([cv2.blur(plane, (size, size)) for plane in planes])).reshape(x.shape)
    return box_blur_torch(x, size)


def box_blur_torch(x: torch.Tensor, size: int) -> torch.Tensor:
    """:func:`box_blur` with tensor operations only (any device, any float dtype)."""
    if size == 1:
        return x.clone()
    before, after = size // 2, size - 1 - size // 2
    height, width = x.shape[-2:]
    sums_dtype = torch.float32 if x.device.type == "mps" else torch.float64  # MPS has no float64
    planes = x.to(sums_dtype).reshape(-1, height, width)
    if max(before, after) < min(height, width):  # one mirror image is enough: torch's own reflect padding
        padded = torch.nn.functional.pad(planes, (before, after, before, after), mode="reflect")
    else:  # boxes wider than the image mirror it several times
        padded = planes.index_select(-2, _reflect_101_indices(height, before, after, planes.device))
        padded = padded.index_select(-1, _reflect_101_indices(width, before, after, planes.device))
    for dim, length in ((-2, height), (-1, width)):
        sums = torch.cumsum(padded, dim)
        # window sum at i = sums[i + size - 1] - sums[i - 1] (sums[-1] = 0)
        padded = sums.narrow(dim, size - 1, length) - torch.nn.functional.pad(
            sums.narrow(dim, 0, length - 1), (1, 0) if dim == -1 else (0, 0, 1, 0))
    return (padded / size**2).reshape(x.shape).to(x.dtype)


def _blur_fusion_step(image, foreground, background, alpha, size):
    blurred_alpha = box_blur(alpha, size)
    mean_foreground = box_blur(foreground * alpha, size) / (blurred_alpha + _EPS)
    mean_background = box_blur(background * (1 - alpha), size) / (1 - blurred_alpha + _EPS)
    estimate = mean_foreground + alpha * (image - alpha * mean_foreground - (1 - alpha) * mean_background)
    return estimate.clamp(0, 1), mean_background


def estimate_foreground(image: torch.Tensor, alpha: torch.Tensor,
                        sizes: tuple[int, ...] = BLUR_FUSION_SIZES) -> torch.Tensor:
    """Foreground colours (C, H, W) in [0, 1] of ``image`` (C, H, W) in [0, 1] (uint8: 0..255, as torchvision's
    ``decode_image`` gives) under ``alpha`` (H, W) or (1, H, W) in [0, 1], by blur-fusion with one pass per box
    size. Runs on the inputs' device in float32."""
    if image.ndim != 3:
        raise ValueError(f"image must be (C, H, W), got shape {tuple(image.shape)}")
    alpha = alpha.reshape(1, *alpha.shape[-2:]) if alpha.ndim in (2, 3) else alpha
    if alpha.ndim != 3 or alpha.shape[0] != 1 or alpha.shape[-2:] != image.shape[-2:]:
        raise ValueError(f"alpha must be (H, W) = {tuple(image.shape[-2:])}, got shape {tuple(alpha.shape)}")
    image = image.float() / 255 if image.dtype == torch.uint8 else image.float()
    if image.numel() and (image.min() < -1e-3 or image.max() > 1 + 1e-3):  # colours 0..255 would clamp to white
        raise ValueError(f"image must be in [0, 1] (or uint8), got values from {image.min().item():g} to "
                         f"{image.max().item():g}")
    alpha = alpha.to(device=image.device, dtype=torch.float32)
    if alpha.numel() and (alpha.min() < -1e-3 or alpha.max() > 1 + 1e-3):  # e.g. a 0..255 mask: colours of nothing
        raise ValueError(f"alpha must be in [0, 1], got values from {alpha.min().item():g} to {alpha.max().item():g} "
                         f"(an 8-bit mask: divide it by 255)")
    foreground = background = image
    for size in sizes:
        foreground, background = _blur_fusion_step(image, foreground, background, alpha, size)
    return foreground


def _alpha_values(alpha: np.ndarray, what: str) -> np.ndarray:
    """Alpha in [0, 1] (float32) from mask values: floats and bools as they are (floats checked to be in [0, 1]
    later), integers by ``image_io``'s mask reading (0/1 as is, 8-bit levels, a uint16 mask above 255 as 16-bit
    levels), refusing the integers that have no level scale to go by."""
    from .image_io import _mask_values

    if alpha.dtype == np.bool_ or np.issubdtype(alpha.dtype, np.floating):
        return alpha.astype(np.float32)
    if not np.issubdtype(alpha.dtype, np.integer):
        raise ValueError(f"{what} must be a bool, integer or float mask, got dtype {alpha.dtype}")
    if alpha.min(initial=0) < 0:
        raise ValueError(f"{what} of dtype {alpha.dtype} has negative values: pass alpha as floats in [0, 1]")
    peak = int(alpha.max(initial=0))
    if peak > 255 and alpha.dtype.newbyteorder("=") != np.uint16:  # big-endian ("I;16B") is uint16 too
        # e.g. an int64 array of 0..1000: neither 8-bit nor 16-bit levels (load_mask would divide it by its max)
        raise ValueError(f"{what} of dtype {alpha.dtype} has values up to {peak}: pass alpha as floats in [0, 1] "
                         f"(8-bit masks 0..255, 16-bit masks as uint16 0..65535)")
    return _mask_values(alpha)


def refine_foreground(image: Image.Image, alpha: np.ndarray | Image.Image, device: str | torch.device = "cpu",
                      sizes: tuple[int, ...] = BLUR_FUSION_SIZES) -> Image.Image:
    """RGB image of the estimated foreground colours of a PIL ``image`` under ``alpha``, the image's size: a
    float array in [0, 1], a bool array, an integer array of 0/1 or of 8-bit levels (uint16: 16-bit levels), or a
    PIL mask (read as ``dsunet_hf.image_io.load_mask`` reads one: 0/1 and 0/255 alike, 16-bit and float modes
    by their values), which is resized to the image if needed. 16-bit, 32-bit and float images are scaled to 8 bit
    as ``load_image`` scales them. Put the alpha back on it for a cut-out."""
    from .image_io import _pil_mask_array, pil_to_rgb

    rgb = pil_to_rgb(image)  # not image.convert("RGB"): that clips a 16-bit photo to white, a float one to black
    if isinstance(alpha, Image.Image):
        if alpha.size != rgb.size and alpha.size == rgb.size[::-1]:  # stretching it would scramble the cut-out
            raise ValueError(f"the alpha mask is {alpha.width}x{alpha.height} (W x H) but the image "
                             f"{rgb.width}x{rgb.height}: transposed (one of them EXIF-rotated?)")
        # Not convert("L") / 255: that reads a 0/1 mask as alpha <= 1/255 and clips 16-bit and float masks.
        values = _pil_mask_array(alpha)
        if alpha.mode.startswith("I") and 0 <= values.min(initial=0) and values.max(initial=0) <= 65535:
            values = values.astype(np.uint16)  # a 16-bit PNG (older Pillow opens it as mode "I", int32)
        values = _alpha_values(values, f"the alpha mask (PIL mode {alpha.mode})")
        if alpha.size != rgb.size:
            values = np.asarray(Image.fromarray(values, "F").resize(rgb.size, Image.BILINEAR))
        alpha = values
    alpha = _alpha_values(np.asarray(alpha), "alpha")
    if alpha.shape != (rgb.height, rgb.width):
        raise ValueError(f"alpha has shape {alpha.shape}, the image is {rgb.height}x{rgb.width} (H x W)")
    pixels = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255).permute(2, 0, 1).to(device)
    colours = estimate_foreground(pixels, torch.from_numpy(alpha).to(device), sizes)
    return Image.fromarray((colours.permute(1, 2, 0) * 255).round().byte().cpu().numpy())

"""Robust reading of real-world images and segmentation masks.

Datasets collected in the wild contain photos with EXIF rotation, palette PNGs, 16-bit
grayscale scans, CMYK JPEGs and masks saved as 0/255, 0/1 or lossy 3-channel JPEGs. The
helpers here turn all of them into one representation: an RGB ``PIL.Image`` for images and a
float32 ``(H, W)`` array in ``[0, 1]`` for masks.
"""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np
from PIL import Image, ImageOps

__all__ = ["ImageReadError", "load_image", "load_label_map", "load_mask"]

_PathLike = (str, os.PathLike)


class ImageReadError(ValueError):
    """An image or mask file could not be read; the message names the file and the problem."""


def _open(path: str | os.PathLike, what: str) -> Image.Image:
    """Open, fully decode and EXIF-orient ``path`` so that the file handle is closed on return."""
    try:
        with Image.open(path) as im:
            im.load()
            # exif_transpose copies the pixel data, so the result outlives the file handle.
            return ImageOps.exif_transpose(im)
    except Exception as err:  # decoders raise OSError, SyntaxError, struct.error, ... on bad data
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err) or type(err).__name__
        raise ImageReadError(f"cannot read {what} {os.fspath(path)}: {reason}") from err


def _as_numpy(source: Any) -> np.ndarray | None:
    """Return ``source`` as a channels-last numpy array, or None if it is not an array/tensor."""
    if isinstance(source, np.ndarray):
        return source
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency of the package
        return None
    if isinstance(source, torch.Tensor):
        t = source.detach().cpu()
        if t.ndim == 3:
            if t.shape[0] not in (1, 3):
                raise ValueError(
                    f"expected a (C, H, W) tensor with 1 or 3 channels, got shape {tuple(t.shape)}"
                )
            t = t.permute(1, 2, 0)
        return t.numpy()
    return None


def _native(arr: np.ndarray) -> np.ndarray:
    """Big-endian data (e.g. PIL mode "I;16B") compares unequal to np.uint16; make it native."""
    return arr if arr.dtype.isnative else arr.astype(arr.dtype.newbyteorder("="))


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale numeric pixel data to uint8.

    uint16 uses its full dtype range; floats are read as [0, 1] unless their max exceeds 1, in
    which case (like wider integers) they are read as 0..255 and scaled by the max when above 255.
    """
    arr = _native(arr)
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if arr.dtype == np.uint16:
        return np.round(arr.astype(np.float64) / 257.0).astype(np.uint8)
    a = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    a = np.clip(a, 0.0, None)
    peak = float(a.max()) if a.size else 0.0
    if np.issubdtype(arr.dtype, np.floating) and peak <= 1.0:
        a = a * 255.0
    elif peak > 255.0:
        a = a * (255.0 / peak)
    return np.round(np.clip(a, 0.0, 255.0)).astype(np.uint8)


def _channels_last(arr: np.ndarray) -> np.ndarray:
    """Validate an (H,W) / (H,W,C) array with C in {1,3,4}; return (H,W) or (H,W,3)."""
    if arr.ndim == 3 and arr.shape[2] in (1, 3, 4):
        return arr[:, :, 0] if arr.shape[2] == 1 else arr[:, :, :3]  # drop alpha
    if arr.ndim == 2:
        return arr
    raise ValueError(
        f"cannot interpret array of shape {arr.shape} as an image: expected (H, W) or (H, W, C) "
        "with 1, 3 or 4 channels"
    )


def _pil_to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode.startswith("I") or im.mode == "F":
        # PIL's own convert() clips 16/32-bit and float data to 0..255 instead of scaling it.
        return Image.fromarray(_to_uint8(np.asarray(im))).convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        # Going through RGBA avoids PIL's warning about palette transparency; alpha is dropped.
        im = im.convert("RGBA")
    return im.convert("RGB")


def load_image(source: Any) -> Image.Image:
    """Load ``source`` as an RGB PIL image.

    ``source`` may be a path, a PIL image, a numpy array ((H,W) or (H,W,C) with C in {1,3,4};
    uint8, uint16 or float in [0, 1]) or a torch tensor (C,H,W) with C in {1,3}. EXIF orientation
    of files and PIL images is applied, alpha is dropped and high bit depth gray is scaled to 8 bit.
    """
    if isinstance(source, _PathLike):
        return _pil_to_rgb(_open(source, "image"))
    if isinstance(source, Image.Image):
        return _pil_to_rgb(ImageOps.exif_transpose(source))
    arr = _as_numpy(source)
    if arr is None:
        raise TypeError(f"unsupported image type {type(source).__name__}")
    arr = _to_uint8(_channels_last(arr))
    return Image.fromarray(np.ascontiguousarray(arr)).convert("RGB")


def _mask_values(arr: np.ndarray) -> np.ndarray:
    """Map a 2-D mask array to float32 [0, 1].

    Integer masks whose max is <= 1 are 0/1 masks and kept as is; otherwise uint8 (and other
    integers up to 255) are divided by 255, uint16 by 65535 and wider integers by their max.
    Float masks are read as [0, 1] unless their max exceeds 1 (then as 0..255).
    """
    arr = _native(arr)
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    a = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    peak = float(a.max()) if a.size else 0.0
    if peak > 1.0:
        if arr.dtype == np.uint16:
            a = a / 65535.0
        elif np.issubdtype(arr.dtype, np.integer) and peak > 255.0:
            a = a / peak
        else:
            a = a / 255.0
    return np.clip(a, 0.0, 1.0).astype(np.float32)


def _pil_mask_array(im: Image.Image) -> np.ndarray:
    if im.mode == "1":
        return np.asarray(im.convert("L"))
    if im.mode == "L" or im.mode.startswith("I") or im.mode == "F":
        return np.asarray(im)
    # RGB/RGBA/P/CMYK/LA...: luminance via PIL, which is what lossy colour-saved masks need.
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    return np.asarray(im.convert("L"))


def load_mask(source: Any, threshold: float | None = None) -> np.ndarray:
    """Load a segmentation mask as a float32 ``(H, W)`` array in ``[0, 1]``.

    ``source`` may be a path, a PIL image or an array (as for :func:`load_image`). 0/255 and 0/1
    masks give the same result; colour masks are converted to gray. With ``threshold`` the mask is
    binarised to {0, 1} by ``value >= threshold`` (useful for lossy JPEG masks).
    """
    if isinstance(source, _PathLike):
        arr = _pil_mask_array(_open(source, "mask"))
    elif isinstance(source, Image.Image):
        arr = _pil_mask_array(ImageOps.exif_transpose(source))
    else:
        raw = _as_numpy(source)
        if raw is None:
            raise TypeError(f"unsupported mask type {type(source).__name__}")
        arr = _channels_last(raw)
        if arr.ndim == 3:
            arr = np.asarray(Image.fromarray(np.ascontiguousarray(_to_uint8(arr))).convert("L"))
    mask = _mask_values(arr)
    if threshold is not None:
        mask = (mask >= threshold).astype(np.float32)
    return mask


def load_label_map(source: Any, reduce_zero_label: bool = False, ignore_index: int = 255) -> np.ndarray:
    """A class-index label map (H, W) int64 from a path, PIL image or array.

    Class-index PNGs (``L``/``I``) and VOC-style palette PNGs (``P``: the palette indices are the classes) are
    read as they are; an RGB file is accepted only when gray (R == G == B). ``reduce_zero_label`` applies
    ADE20K's convention: 0 -> ``ignore_index``, every other class minus 1.
    """
    name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else "label map"
    if isinstance(source, (str, os.PathLike)):
        source = _open(source, "label map")
    if isinstance(source, Image.Image):
        if source.mode in ("RGB", "RGBA"):
            array = np.asarray(source.convert("RGB"))
            if not (np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(array[..., 0], array[..., 2])):
                raise ValueError(f"{name}: an RGB colour label map; save class indices as a gray or palette PNG")
            array = array[..., 0]
        else:
            array = np.asarray(source)  # P: palette indices; L / I / I;16: values
    else:
        array = np.asarray(source)
    if array.ndim != 2:
        raise ValueError(f"{name}: a label map must be 2-D, got shape {array.shape}")
    labels = array.astype(np.int64)
    if reduce_zero_label:
        labels = np.where(labels == 0, ignore_index, labels - 1)
        labels[labels == ignore_index - 1] = ignore_index
    return labels


def class_index_maximum(source: Any, ignore_index: int = 255, most: int = 32) -> int | None:
    """The largest class of a mask that looks like a class-index label map (a palette PNG's indices, or integer
    values up to ``most`` besides ``ignore_index``, at least one of them >= 2); None for 0/1 and 0/255
    masks, soft or anti-aliased masks, and anything unreadable. Used to warn when a binary model is given
    multi-class labels (it would read class 3 as a foreground intensity of 3/255)."""
    try:
        labels = load_label_map(source, ignore_index=ignore_index)
    except (OSError, ValueError, TypeError):
        return None
    classes = np.unique(labels)
    classes = classes[classes != ignore_index]
    if classes.size and 2 <= classes.max() <= most:
        return int(classes.max())
    return None


def decodable_cell(value: Any) -> Any:
    """What ``datasets`` may hand over -> something load_image/load_mask read: an undecoded Image cell
    (``{"bytes", "path"}``) becomes a PIL image or its path, nested lists become an array."""
    if isinstance(value, dict):
        if value.get("bytes"):
            with Image.open(io.BytesIO(value["bytes"])) as image:
                image.load()
                return image.copy()
        if value.get("path"):
            return value["path"]
        raise ValueError(f"cannot decode a dataset cell with keys {sorted(value)}")
    if isinstance(value, (list, tuple)):
        return np.asarray(value)
    return value

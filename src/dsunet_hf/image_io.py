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

__all__ = ["IMAGE_EXTENSIONS", "ImageReadError", "colour_coded_values", "displayed_size", "load_image", "load_image_file",
           "load_label_map", "load_mask", "picture_frames", "pil_to_rgb"]

# The image files read from folders, by training, prediction and evaluation alike (lower case; Pillow reads more).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")

_PathLike = (str, os.PathLike)


class ImageReadError(ValueError):
    """An image or mask file could not be read; the message names the file and the problem."""


# Formats whose further frames are pictures of their own (animation frames, pages). An MPO's are not: a phone or
# camera JPEG with an MPF preview, depth map or Ultra HDR gain map opens as MPO with n_frames == 2.
_MULTI_FRAME_FORMATS = frozenset({"GIF", "PNG", "WEBP", "TIFF"})


def picture_frames(im: Image.Image) -> int:
    """How many frames of the open file ``im`` are pictures (1 for a still image and for an MPO's extra images).
    ``is_animated`` first: it looks at the second frame at most, where a GIF's ``n_frames`` walks the whole file."""
    if im.format not in _MULTI_FRAME_FORMATS:
        return 1
    try:
        return int(im.n_frames) if getattr(im, "is_animated", False) else 1
    except Exception:  # a later frame that does not parse: the first one, decoded already, is what is read
        return 1


def _decode(path: str | os.PathLike, what: str, count_frames: bool) -> tuple[Image.Image, int]:
    """Open, fully decode and EXIF-orient ``path`` so that the file handle is closed on return; with
    ``count_frames`` also the number of frames that are pictures of their own (see :func:`picture_frames`), read
    from the file already open."""
    try:
        with Image.open(path) as im:
            im.load()
            # exif_transpose copies the pixel data, so the result outlives the file handle (and counting the frames
            # below, which seeks in the file, does not touch it).
            image = ImageOps.exif_transpose(im)
            return image, picture_frames(im) if count_frames else 1
    except Exception as err:  # decoders raise OSError, SyntaxError, struct.error, ... on bad data
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err) or type(err).__name__
        raise ImageReadError(f"cannot read {what} {os.fspath(path)}: {reason}") from err


def _open(path: str | os.PathLike, what: str) -> Image.Image:
    """Open, fully decode and EXIF-orient ``path`` so that the file handle is closed on return."""
    return _decode(path, what, count_frames=False)[0]


def load_image_file(path: str | os.PathLike) -> tuple[Image.Image, int]:
    """:func:`load_image` of a file, and how many of its frames are pictures of their own (animation frames, a
    TIFF's pages; the extra images of an MPO - a phone JPEG's preview or gain map - do not count): the first
    is the image returned. The count costs no second opening of the file."""
    image, frames = _decode(path, "image", count_frames=True)
    return pil_to_rgb(image), frames


# EXIF orientations that turn the picture a quarter (transpose, rotate 90 or 270 degrees, transverse).
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)
_TIFF_WIDTH, _TIFF_LENGTH = 256, 257


def displayed_size(path: str | os.PathLike, header_only: bool = False) -> tuple[int, int]:
    """(width, height) of the image :func:`load_image` gives for ``path`` (EXIF orientation applied), from the
    file's header: the pixel data is not decoded. Raises what ``Image.open`` raises for an unreadable file.

    Recent Pillow's TIFF plugin reports a rotated TIFF's displayed size at open already (older versions the stored
    one): the sides are swapped only where ``size`` is still the stored size. ``header_only``: a PNG's
    EXIF is read from the chunks before the pixel data only (``getexif`` otherwise decodes the whole file to find
    an eXIf chunk after it)."""
    with Image.open(path) as image:
        width, height = image.size
        exif = Image.Image.getexif(image) if header_only and image.format == "PNG" else image.getexif()
        if exif.get(0x0112, 1) not in _SWAPPING_ORIENTATIONS or width == height:
            return width, height
        tags = getattr(image, "tag_v2", None)  # TIFF: the stored size, to tell whether Pillow turned it already
        if tags is not None and (tags.get(_TIFF_WIDTH), tags.get(_TIFF_LENGTH)) == (height, width):
            return width, height
        return height, width


# Channel counts of a numpy image (either layout) and of a tensor (either layout); transformers' image processors
# infer the layout from them alike (``infer_channel_dimension_format``).
_ARRAY_CHANNELS = (1, 3, 4)
_TENSOR_CHANNELS = (1, 3)


def _as_numpy(source: Any) -> np.ndarray | None:
    """Return ``source`` as a channels-last numpy array, or None if it is not an array/tensor.

    A 3-D array is (H, W, C) and a 3-D tensor (C, H, W); each is read in the other layout only where its own does
    not fit and the other does, as transformers' processors read them: a (3, H, W) array from another processor's
    pipeline, an (H, W, 3) tensor. A shape that fits both layouts keeps its type's reading."""
    if isinstance(source, np.ndarray):
        if source.ndim == 3 and source.shape[2] not in _ARRAY_CHANNELS and source.shape[0] in _ARRAY_CHANNELS:
            return source.transpose(1, 2, 0)
        return source
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency of the package
        return None
    if isinstance(source, torch.Tensor):
        t = source.detach().cpu()
        if t.is_floating_point() and t.dtype not in (torch.float16, torch.float32, torch.float64):
            t = t.float()  # bfloat16 and the float8 types have no numpy dtype
        if t.ndim == 3 and t.shape[0] in _TENSOR_CHANNELS:
            t = t.permute(1, 2, 0)
        elif t.ndim == 3 and t.shape[2] not in _TENSOR_CHANNELS:
            raise ValueError(
                f"expected a (C, H, W) or (H, W, C) tensor with 1 or 3 channels, got shape {tuple(t.shape)}"
            )
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
        f"cannot interpret array of shape {arr.shape} as an image: expected (H, W), (H, W, C) or (C, H, W) "
        "with 1, 3 or 4 channels"
    )


def pil_to_rgb(im: Image.Image) -> Image.Image:
    """A PIL image of any mode as RGB (itself when RGB), 16-bit, 32-bit and float ones scaled to 8 bit (PIL's own
    convert clips them: a 16-bit photo white, a float one black); every reader of images goes through it."""
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

    ``source`` may be a path, a PIL image, a numpy array ((H,W), (H,W,C) or (C,H,W) with C in {1,3,4};
    uint8, uint16 or float in [0, 1]) or a torch tensor ((C,H,W) or (H,W,C) with C in {1,3}; a shape that fits
    both layouts is read as (H,W,C) for arrays and as (C,H,W) for tensors). EXIF orientation
    of files and PIL images is applied, alpha is dropped and high bit depth gray is scaled to 8 bit.
    """
    if isinstance(source, _PathLike):
        return pil_to_rgb(_open(source, "image"))
    if isinstance(source, Image.Image):
        return pil_to_rgb(ImageOps.exif_transpose(source))
    arr = _as_numpy(source)
    if arr is None:
        raise TypeError(f"unsupported image type {type(source).__name__}")
    arr = _channels_last(arr)
    _check_float_range(arr)
    arr = _to_uint8(arr)
    return Image.fromarray(np.ascontiguousarray(arr)).convert("RGB")


def _check_float_range(arr: np.ndarray) -> None:
    """Refuse float pixels far below 0: an image normalised already (ImageNet mean/std, or to [-1, 1]) would
    otherwise be clipped to a nearly black picture. A resize's overshoot below 0 stays well within the margin."""
    if not np.issubdtype(arr.dtype, np.floating) or not arr.size:
        return
    low, high = float(np.nanmin(arr)), float(np.nanmax(arr))
    if low < -0.25 * max(high, 1.0):
        raise ValueError(f"float image values range from {low:.3g} to {high:.3g}: expected [0, 1] or 0..255; "
                         "pass the image before normalisation (the processor normalises it)")


# A float mask peaking at most this high is [0, 1] values with resampling overshoot; above it, 0..255 values.
FLOAT_MASK_OVERSHOOT = 2.0


def _mask_values(arr: np.ndarray) -> np.ndarray:
    """Map a 2-D mask array to float32 [0, 1].

    Integer masks whose max is <= 1 are 0/1 masks and kept as is; otherwise uint8 (and other
    integers up to 255) are divided by 255, uint16 by 65535 (by 255 when its max is <= 255: 8-bit
    data saved in 16 bits) and wider integers by their max. Float masks are read as [0, 1] unless
    their max exceeds 2 (then as 0..255): a resampled probability map overshoots 1 a little (bicubic, Lanczos:
    up to ~1.2) and is clipped, not read as near-empty 0..255 values.
    """
    arr = _native(arr)
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    a = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    peak = float(a.max()) if a.size else 0.0
    float_overshoot = np.issubdtype(arr.dtype, np.floating) and peak <= FLOAT_MASK_OVERSHOOT
    if peak > 1.0 and not float_overshoot:
        if arr.dtype == np.uint16 and peak > 255.0:
            a = a / 65535.0
        elif np.issubdtype(arr.dtype, np.integer) and peak > 255.0:
            a = a / peak
        else:
            a = a / 255.0
    return np.clip(a, 0.0, 1.0).astype(np.float32)


def _is_grey(colours: np.ndarray) -> bool:
    """Whether every colour of an (..., 3) uint8 array has R == G == B."""
    return bool(np.array_equal(colours[..., 0], colours[..., 1]) and np.array_equal(colours[..., 1], colours[..., 2]))


def _palette_colours(im: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """(the palette indices a "P" image uses, their RGB colours as a (n, 3) uint8 array)."""
    used = np.flatnonzero(np.bincount(np.asarray(im).ravel(), minlength=256))
    palette = np.zeros(768, np.uint8)
    entries = np.asarray(im.getpalette("RGB") or [], np.uint8)[:768]
    palette[: entries.size] = entries  # indices past a short palette are black, as Pillow converts them
    return used, palette.reshape(256, 3)[used]


def _binary_palette_mask(im: Image.Image) -> np.ndarray | None:
    """A VOC-style palette mask that holds two indices, 0 (background) and k (the object), with colours that are
    not all grey: foreground where the index is not 0. None for anything else (a grey palette - black/white or
    grey levels - reads as the grey it shows, as today)."""
    used, colours = _palette_colours(im)
    if used.size != 2 or used[0] != 0 or _is_grey(colours):
        return None
    return np.asarray(im) != 0


def _rgb_colours(im: Image.Image, most: int) -> np.ndarray | None:
    """The colours of an RGB(A) image, alpha left out, as a (n, 3) uint8 array when there are at most ``most`` of
    them, else None. Counted by PIL, which stops at the first colour past ``most``: a lossy JPEG mask or a photo is
    told apart without building any array."""
    rgb = im if im.mode == "RGB" else im.convert("RGB")
    found = rgb.getcolors(maxcolors=max(most, 1))
    if found is None or len(found) > most:
        return None
    return np.array([colour for _, colour in found], np.uint8).reshape(-1, 3)


def _binary_colour_mask(im: Image.Image) -> np.ndarray | None:
    """An RGB(A) mask of exactly two colours, one black and one not grey (a red object on black): foreground where
    not black. None for anything else (grey masks keep their grey; more colours read by luminance)."""
    colours = _rgb_colours(im, 2)
    if colours is None or not _is_binary_colours(colours):
        return None
    return np.asarray(im)[..., :3].any(axis=2)


def _is_binary_colours(colours: np.ndarray) -> bool:
    """Whether the (n, 3) colours an RGB mask holds are black and one colour that is not grey."""
    if len(colours) != 2:
        return False
    black = ~colours.any(axis=1)
    return bool(black.any()) and not _is_grey(colours[~black])


def _alpha_only_mask(im: Image.Image) -> np.ndarray | None:
    """The alpha channel of a mask whose pixels all have one colour and whose alpha varies (a shape cut out of a
    plain white or black layer): its colour says nothing, so the object is the alpha. None for anything else
    (alpha beside colours that vary is not read, as upstream's ``convert("L")``)."""
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode not in ("RGBA", "LA", "PA", "La", "RGBa"):
        return None
    alpha = im.getchannel("A")
    low, high = alpha.getextrema()
    if low == high or _rgb_colours(im, 1) is None:
        return None
    return np.asarray(alpha)


def _pil_mask_array(im: Image.Image) -> np.ndarray:
    alpha_only = _alpha_only_mask(im)
    if alpha_only is not None:
        return alpha_only
    if im.mode == "1":
        return np.asarray(im.convert("L"))
    if im.mode == "L" or im.mode.startswith("I") or im.mode == "F":
        return np.asarray(im)
    # Binary masks saved with colours: a palette PNG of indices {0, k}, a coloured object on black.
    if im.mode == "P":
        binary = _binary_palette_mask(im)
    elif im.mode in ("RGB", "RGBA"):
        binary = _binary_colour_mask(im)
    else:
        binary = None
    if binary is not None:
        return binary
    # RGB/RGBA/P/CMYK/LA...: luminance via PIL, which is what lossy colour-saved masks need.
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    return np.asarray(im.convert("L"))


def load_mask(source: Any, threshold: float | None = None) -> np.ndarray:
    """Load a segmentation mask as a float32 ``(H, W)`` array in ``[0, 1]``.

    ``source`` may be a path, a PIL image or an array (as for :func:`load_image`). 0/255 and 0/1
    masks give the same result, and so do the binary masks saved otherwise: a palette PNG holding the indices 0
    (background) and k with colours that are not grey (VOC style) is foreground where the index is not 0, an
    RGB(A) mask of exactly two colours, black and one that is not grey, is foreground where not black, and a
    16-bit mask whose maximum is <= 255 is read as 8-bit values, and a mask of one colour whose alpha varies (a
    shape cut out of a plain layer) is its alpha. Other colour masks are converted to gray
    (luminance; :func:`colour_coded_values` tells them apart for a warning). With ``threshold`` the mask is
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
        if arr.ndim == 3:  # read as the RGB file it would be
            arr = _pil_mask_array(Image.fromarray(np.ascontiguousarray(_to_uint8(arr))))
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
        elif source.mode in ("LA", "PA"):  # gray / palette with alpha: the values or indices, as RGBA drops alpha
            array = np.asarray(source.getchannel(0))
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
    multi-class labels (it would read class 3 as a foreground intensity of 3/255). A palette mask that
    :func:`load_mask` reads as binary (the indices 0 and k, colours not grey) gives None too."""
    try:
        if isinstance(source, _PathLike):
            source = _open(source, "label map")
        if isinstance(source, Image.Image) and source.mode == "P" and _binary_palette_mask(source) is not None:
            return None
        labels = load_label_map(source, ignore_index=ignore_index)
    except (OSError, ValueError, TypeError):
        return None
    classes = np.unique(labels)
    classes = classes[classes != ignore_index]
    if classes.size and 2 <= classes.max() <= most:
        return int(classes.max())
    return None


def colour_coded_values(source: Any, most: int = 256) -> int | None:
    """The number of colours of a colour-coded mask that :func:`load_mask` reads by its luminance: a palette or
    RGB(A) mask with colours that are not grey, at most ``most`` of them (palette masks: any number of indices),
    and none of the binary forms load_mask recognises (nor one colour with the object in its alpha). None for grey
    masks (also grey palettes and RGB files holding grey), binary ones, alpha-only ones, lossy files with more colours
    (a JPEG of a grey mask), arrays and anything unreadable. Used to warn that a binary model or the metrics would
    read such masks as faint foreground."""
    try:
        image = _open(source, "mask") if isinstance(source, _PathLike) else source
    except ImageReadError:
        return None
    if not isinstance(image, Image.Image):
        return None
    if _alpha_only_mask(image) is not None:  # one colour, the object in its alpha: load_mask reads the alpha
        return None
    if image.mode == "P":
        used, colours = _palette_colours(image)
        if _is_grey(colours) or _binary_palette_mask(image) is not None:
            return None
        return int(used.size)
    if image.mode not in ("RGB", "RGBA"):
        return None
    colours = _rgb_colours(image, most)
    if colours is None or _is_grey(colours) or _is_binary_colours(colours):
        return None
    return len(colours)


def decodable_cell(value: Any) -> Any:
    """What ``datasets`` may hand over -> something load_image/load_mask read: an undecoded Image cell
    (``{"bytes", "path"}``) becomes a PIL image or its path, nested lists become an array."""
    if value is None:
        raise ValueError("the cell is empty (None)")
    if isinstance(value, dict):
        if value.get("bytes"):
            try:
                with Image.open(io.BytesIO(value["bytes"])) as image:
                    image.load()
                    return image.copy()
            except Exception as err:  # decoders raise OSError, SyntaxError, struct.error, ... on bad data
                reason = str(err) or type(err).__name__
                raise ImageReadError(f"cannot decode the image bytes ({type(err).__name__}: {reason})") from err
        if value.get("path"):
            return value["path"]
        raise ValueError(f"cannot decode a dataset cell with keys {sorted(value)} and no bytes or path")
    if isinstance(value, (list, tuple)):
        return np.asarray(value)
    return value


def cell_path(value: Any) -> str | None:
    """The file a dataset cell comes from, when known: a path, an Image cell's ``path``, a PIL image's filename."""
    if isinstance(value, _PathLike):
        return os.fspath(value)
    if isinstance(value, dict):
        return value.get("path") or None
    return getattr(value, "filename", None) or None


def load_cell(load: Any, value: Any, column: str, sample_id: Any, *args: Any, **kwargs: Any) -> Any:
    """``load(decodable_cell(value), *args, **kwargs)`` (``load`` is :func:`load_image`, :func:`load_mask` or
    :func:`load_label_map`), where a cell that cannot be read is one ``ValueError`` naming the sample, the column and
    the cell's file when known: ``sample 7, column 'mask' (case_7.png): cannot decode the image bytes (...)``. A path
    cell's errors name their file already and pass unchanged."""
    try:
        return load(decodable_cell(value), *args, **kwargs)
    except (ValueError, TypeError, OSError) as err:  # ImageReadError is a ValueError
        if isinstance(value, _PathLike):
            raise
        path = cell_path(value)
        where = f"sample {sample_id}, column {column!r}" + (f" ({path})" if path and path not in str(err) else "")
        raise ValueError(f"{where}: {err}") from err

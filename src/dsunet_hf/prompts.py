"""Visual prompts (mask, box, scribble, point) rasterised to reference masks, as DINOv does.

DINOv feeds every visual prompt to its prompt encoder as a mask on the reference image: a user mask as it
is, a scribble as the pixels its brush covers, a box as a filled rectangle. It has no *content* point
prompt (points are only position queries there); here a point becomes a small disk, an approximation.

Coordinates are pixels: ``x`` is the column, ``y`` the row, and pixel ``(x, y)`` is the unit square
``[x, x + 1) x [y, y + 1)`` of the image, so integer coordinates name pixels (a point ``(x, y)`` lies in
pixel ``(floor(x), floor(y))``), a box's corners are pixel edges and pixel ``(i, j)``'s centre is
``(i + 0.5, j + 0.5)``: points and scribbles cover the pixels whose centres their disk / brush reaches (to
centre a disk exactly on pixel ``(i, j)``, e.g. a click on it, give ``i + 0.5, j + 0.5``). Every
``rasterize(height, width)`` returns a ``(height, width)`` bool array, and raises ``ValueError`` with a
message naming the problem (empty mask, wrong size, off the image, ...).

``parse_prompt`` reads the command-line syntax::

    box:x0,y0,x1,y1            a box (half-open: columns x0 .. x1-1, rows y0 .. y1-1)
    point:x,y[;x,y...]         one or more points, each a disk of radius ``radius`` px
    scribble:x,y;x,y[;...]     a polyline drawn with a round brush ``width`` px wide
    mask:path.png              a mask file (any non-zero pixel is foreground)
    path.png                   the same: a plain path with an image suffix is a mask
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .image_io import IMAGE_EXTENSIONS, load_image, load_mask
from .models.checked_config import check_finite_number

__all__ = [
    "IMAGE_SUFFIXES",
    "BoxPrompt",
    "MaskPrompt",
    "PointPrompt",
    "Prompt",
    "ScribblePrompt",
    "check_mask_threshold",
    "describe_prompt",
    "describe_reference",
    "parse_prompt",
    "reference_mask",
    "reference_masks",
]

# A bare prompt text ending in one of these is a mask file: the image files read everywhere else (image_io.py).
IMAGE_SUFFIXES = IMAGE_EXTENSIONS


def _size_text(height: int, width: int) -> str:
    return f"{width}x{height} (WxH)"


def _check_image_size(height: int, width: int) -> tuple[int, int]:
    height, width = int(height), int(width)
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {_size_text(height, width)}")
    return height, width


def _check_points(points, what: str) -> tuple[tuple[float, float], ...]:
    try:
        checked = tuple((float(x), float(y)) for x, y in points)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{what}: points must be (x, y) number pairs, got {points!r}") from error
    if not all(math.isfinite(v) for point in checked for v in point):
        raise ValueError(f"{what}: points must be finite numbers, got {points!r}")
    return checked


def _points_on_image(points, height: int, width: int, what: str) -> None:
    """Every point must lie on a pixel of the image: 0 <= x < width and 0 <= y < height."""
    off = [(x, y) for x, y in points if not (0 <= x < width and 0 <= y < height)]
    if off:
        shown = ", ".join(f"({_num(x)}, {_num(y)})" for x, y in off[:4])
        raise ValueError(
            f"{what}: point(s) {shown} off the image of size {_size_text(height, width)} "
            f"(x must be in [0, {width}), y in [0, {height}))"
        )


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _mark_point_pixels(points, height: int, width: int, out: np.ndarray) -> None:
    """Set the pixel each point lies in (pixel ``(x, y)`` spans ``x .. x + 1``): a point with a brush too thin to
    reach any pixel centre still marks its pixel, so a prompt is never empty."""
    for x, y in points:
        out[min(int(math.floor(y)), height - 1), min(int(math.floor(x)), width - 1)] = True


def _near_segment(height: int, width: int, a: tuple[float, float], b: tuple[float, float], radius: float,
                  out: np.ndarray) -> None:
    """Set ``out`` where the pixel centre lies within ``radius`` of the segment a-b (a capsule).

    Pixel ``(x, y)`` is the square ``[x, x + 1) x [y, y + 1)``, as for boxes: its centre is ``(x + 0.5, y + 0.5)``.
    Only the segment's bounding box (grown by the radius) is evaluated.
    """
    (ax, ay), (bx, by) = a, b
    x_lo = max(int(math.floor(min(ax, bx) - radius)), 0)
    x_hi = min(int(math.ceil(max(ax, bx) + radius)), width - 1)
    y_lo = max(int(math.floor(min(ay, by) - radius)), 0)
    y_hi = min(int(math.ceil(max(ay, by) + radius)), height - 1)
    if x_lo > x_hi or y_lo > y_hi:
        return
    ys, xs = np.mgrid[y_lo : y_hi + 1, x_lo : x_hi + 1].astype(np.float64) + 0.5  # pixel centres
    dx, dy = bx - ax, by - ay
    length2 = dx * dx + dy * dy
    if length2 > 0:
        t = np.clip(((xs - ax) * dx + (ys - ay) * dy) / length2, 0.0, 1.0)
    else:
        t = 0.0
    distance2 = (xs - (ax + t * dx)) ** 2 + (ys - (ay + t * dy)) ** 2
    # A small tolerance so that pixels exactly on the brush edge are in despite float rounding.
    out[y_lo : y_hi + 1, x_lo : x_hi + 1] |= distance2 <= radius * radius + 1e-9


class MaskPrompt:
    """A reference mask: an array, a PIL image, a tensor or a path (read with ``image_io.load_mask``).

    Any non-zero value is foreground; with ``threshold`` (on ``load_mask``'s [0, 1] scale, above 0 and at most 1)
    only values ``>= threshold``, e.g. 0.5 for lossy JPEG masks whose compression noise is not zero. The mask must
    have the reference image's size exactly.
    """

    def __init__(self, mask: Any, threshold: float | None = None):
        self.mask = mask
        self.threshold = None if threshold is None else check_mask_threshold(threshold)

    def _source_name(self) -> str:
        return f"mask {os.fspath(self.mask)}" if isinstance(self.mask, (str, os.PathLike)) else "mask"

    def rasterize(self, height: int, width: int) -> np.ndarray:
        height, width = _check_image_size(height, width)
        values = load_mask(self.mask)
        if values.shape != (height, width):
            # Width and height swapped: most likely a photo turned by its EXIF orientation (read as displayed) and a
            # mask drawn on its stored pixels, which the size on disk does not reveal.
            turned = ("; the reference is read as displayed, turned by its EXIF orientation if it has one: draw the "
                      "mask on the image as shown" if values.shape == (width, height) else "")
            raise ValueError(
                f"{self._source_name()} has size {_size_text(*values.shape)} but the image has size "
                f"{_size_text(height, width)}; a mask prompt must match its reference image{turned}"
            )
        mask = values > 0 if self.threshold is None else values >= self.threshold
        if not mask.any():
            foreground = "non-zero" if self.threshold is None else f">= the threshold {self.threshold} of 0-1"
            raise ValueError(f"{self._source_name()} is empty: it has no foreground ({foreground}) pixel")
        return mask

    def __eq__(self, other) -> bool:
        if not isinstance(other, MaskPrompt):
            return NotImplemented
        if self.threshold != other.threshold:
            return False
        if isinstance(self.mask, (str, os.PathLike)) and isinstance(other.mask, (str, os.PathLike)):
            return os.fspath(self.mask) == os.fspath(other.mask)
        return self.mask is other.mask

    __hash__ = None

    def __repr__(self) -> str:
        shown = repr(os.fspath(self.mask)) if isinstance(self.mask, (str, os.PathLike)) else type(self.mask).__name__
        return f"MaskPrompt({shown}{'' if self.threshold is None else f', threshold={self.threshold}'})"


def check_mask_threshold(threshold) -> float:
    """A mask prompt's threshold as a float in (0, 1] (``load_mask``'s scale): NaN or 128 (meant on 0-255) left every
    mask empty, said as "no non-zero pixel", and 0 made the whole image the prompt, silently."""
    threshold = check_finite_number("mask threshold (--mask-threshold)", threshold)
    if not 0 < threshold <= 1:
        raise ValueError(f"mask threshold (--mask-threshold) must be above 0 and at most 1 (mask values scaled to "
                         f"0-1), got {threshold}")
    return threshold


@dataclass(frozen=True)
class BoxPrompt:
    """A box, rasterised as a filled rectangle (DINOv turns boxes into masks the same way).

    Corners are pixel edges: the box covers ``x0 <= x < x1`` and ``y0 <= y < y1`` (half-open, like
    slicing ``mask[y0:y1, x0:x1]``). Fractional corners cover every pixel the box overlaps
    (columns ``floor(x0) .. ceil(x1) - 1``). A box partly outside the image is clipped to it; one
    entirely outside, or with ``x1 <= x0`` / ``y1 <= y0``, raises ``ValueError``.
    """

    x0: float
    y0: float
    x1: float
    y1: float

    def __post_init__(self):
        values = (self.x0, self.y0, self.x1, self.y1)
        try:
            finite = all(math.isfinite(float(v)) for v in values)
        except (TypeError, ValueError) as error:
            raise ValueError(f"box coordinates must be numbers, got {values!r}") from error
        if not finite:
            raise ValueError(f"box coordinates must be finite, got {values!r}")
        if self.x1 <= self.x0 or self.y1 <= self.y0:
            raise ValueError(
                f"box ({_num(self.x0)}, {_num(self.y0)}, {_num(self.x1)}, {_num(self.y1)}) is empty: "
                "it needs x1 > x0 and y1 > y0 (corners x0, y0, x1, y1 in pixels, not x, y, width, height)"
            )

    def rasterize(self, height: int, width: int) -> np.ndarray:
        height, width = _check_image_size(height, width)
        corners = (self.x0, self.y0, self.x1, self.y1)
        if (height, width) != (1, 1) and all(0 <= v <= 1 for v in corners) and corners != (0, 0, 1, 1):
            # Inside pixel (0, 0): fractions of the image size (YOLO, DINOv's own boxes), which would mark one pixel.
            scaled = (self.x0 * width, self.y0 * height, self.x1 * width, self.y1 * height)
            raise ValueError(
                f"box ({', '.join(_num(v) for v in corners)}) lies within pixel (0, 0): box corners are pixels, not "
                f"fractions of the image; as fractions of this {_size_text(height, width)} image it is "
                f"box:{','.join(_num(round(v, 2)) for v in scaled)}"
            )
        left, top = max(math.floor(self.x0), 0), max(math.floor(self.y0), 0)
        right, bottom = min(math.ceil(self.x1), width), min(math.ceil(self.y1), height)
        if left >= right or top >= bottom:
            raise ValueError(
                f"box ({_num(self.x0)}, {_num(self.y0)}, {_num(self.x1)}, {_num(self.y1)}) lies entirely "
                f"outside the image of size {_size_text(height, width)}"
            )
        mask = np.zeros((height, width), dtype=bool)
        mask[top:bottom, left:right] = True
        return mask


class PointPrompt:
    """One or more points, each rasterised as a disk: pixel ``(px, py)`` is foreground when its centre is within
    ``radius`` of a point, ``(px + 0.5 - x)**2 + (py + 0.5 - y)**2 <= radius**2``, and so is the pixel each point
    lies in (radius 0: exactly that pixel, ``(floor(x), floor(y))``). ``PointPrompt(i + 0.5, j + 0.5, r)`` is the
    digital disk centred on pixel ``(i, j)``; an integer point ``(i, j)`` is that pixel's top-left corner.

    DINOv has no content point prompt (its points are position queries); a small disk mask is the
    approximation used here. ``PointPrompt(x, y)`` or ``PointPrompt(points=[(x, y), ...])``. Every
    point must lie on the image (``0 <= x < width``, ``0 <= y < height``).
    """

    def __init__(self, x: float | None = None, y: float | None = None, radius: float = 8, *,
                 points: list[tuple[float, float]] | None = None):
        if points is not None and (x is not None or y is not None):
            raise ValueError("give either x, y or points=[(x, y), ...], not both")
        if points is None:
            if x is None or y is None:
                raise ValueError("a point prompt needs x and y, or points=[(x, y), ...]")
            points = [(x, y)]
        self.points = _check_points(points, "point prompt")
        if not self.points:
            raise ValueError("a point prompt needs at least one point")
        radius = float(radius)
        if not math.isfinite(radius) or radius < 0:
            raise ValueError(f"point radius must be a finite number >= 0, got {radius}")
        self.radius = radius

    def rasterize(self, height: int, width: int) -> np.ndarray:
        height, width = _check_image_size(height, width)
        _points_on_image(self.points, height, width, "point prompt")
        mask = np.zeros((height, width), dtype=bool)
        for point in self.points:
            _near_segment(height, width, point, point, self.radius, mask)
        _mark_point_pixels(self.points, height, width, mask)
        return mask

    def __eq__(self, other) -> bool:
        if not isinstance(other, PointPrompt):
            return NotImplemented
        return self.points == other.points and self.radius == other.radius

    def __hash__(self) -> int:
        return hash((self.points, self.radius))

    def __repr__(self) -> str:
        return f"PointPrompt(points={list(self.points)!r}, radius={_num(self.radius)})"


class ScribblePrompt:
    """A polyline through ``points`` drawn with a round brush ``width`` px wide (round joints and caps).

    Pixel ``(px, py)`` is foreground when its centre ``(px + 0.5, py + 0.5)`` is at most ``width / 2`` from the
    polyline (and so are the pixels its points lie in), so a width-1 scribble through pixel centres along a row,
    column or diagonal is exactly the pixels it passes through, and a one-point scribble is a dot of diameter
    ``width``. (DINOv's scribbles are strokes of 2.5-15 px brushes.) Every point must lie on the image.
    """

    def __init__(self, points: list[tuple[float, float]], width: float = 5):
        self.points = _check_points(points, "scribble")
        if len(self.points) < 1:
            raise ValueError("a scribble needs at least one point")
        width = float(width)
        if not math.isfinite(width) or width <= 0:
            raise ValueError(f"scribble width must be a positive number of pixels, got {width}")
        self.width = width

    def rasterize(self, height: int, width: int) -> np.ndarray:
        height, width = _check_image_size(height, width)
        _points_on_image(self.points, height, width, "scribble")
        mask = np.zeros((height, width), dtype=bool)
        radius = self.width / 2
        if len(self.points) == 1:
            _near_segment(height, width, self.points[0], self.points[0], radius, mask)
        for a, b in zip(self.points[:-1], self.points[1:]):
            _near_segment(height, width, a, b, radius, mask)
        _mark_point_pixels(self.points, height, width, mask)
        return mask

    def __eq__(self, other) -> bool:
        if not isinstance(other, ScribblePrompt):
            return NotImplemented
        return self.points == other.points and self.width == other.width

    def __hash__(self) -> int:
        return hash((self.points, self.width))

    def __repr__(self) -> str:
        return f"ScribblePrompt(points={list(self.points)!r}, width={_num(self.width)})"


Prompt = MaskPrompt | BoxPrompt | PointPrompt | ScribblePrompt

_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_PAIR = re.compile(rf"^\s*({_NUMBER})\s*,\s*({_NUMBER})\s*$")


def _number(text: str) -> float | int:
    value = float(text)
    return int(value) if value.is_integer() else value


def _pairs(body: str, original: str, kind: str) -> list[tuple[float, float]]:
    parts = body.split(";")
    if len(parts) > 1 and not parts[-1].strip():  # tolerate a trailing ';'
        parts = parts[:-1]
    pairs = []
    for part in parts:
        match = _PAIR.match(part)
        if not match:
            raise ValueError(f"malformed {kind} prompt {original!r}: {part.strip()!r} is not an 'x,y' pair")
        pairs.append((_number(match.group(1)), _number(match.group(2))))
    return pairs


def parse_prompt(text: str, radius: float = 8, width: float = 5, mask_threshold: float | None = None) -> Prompt:
    """Parse the command-line prompt syntax (see the module docstring) into a prompt object.

    ``radius`` is the disk radius of ``point:`` prompts, ``width`` the brush width of ``scribble:`` prompts and
    ``mask_threshold`` the :class:`MaskPrompt` threshold of mask files. Malformed text raises ``ValueError`` quoting
    it; a mask file that does not exist too.
    """
    if not isinstance(text, str):
        raise ValueError(f"a prompt must be text such as 'box:10,20,110,90', got {text!r}")
    stripped = text.strip()
    kind, sep, body = stripped.partition(":")
    kind = kind.strip().lower()
    if not sep or kind not in ("box", "point", "points", "scribble", "mask"):
        if Path(stripped).suffix.lower() in IMAGE_SUFFIXES:
            kind, body = "mask", stripped
        else:
            raise ValueError(
                f"malformed prompt {text!r}: expected 'box:x0,y0,x1,y1', 'point:x,y[;x,y...]', "
                "'scribble:x,y;x,y[;...]', 'mask:path.png' or a mask image path"
            )
    if kind == "box":
        values = [v.strip() for v in body.split(",")]
        if len(values) != 4 or not all(re.fullmatch(_NUMBER, v) for v in values):
            raise ValueError(f"malformed box prompt {text!r}: expected 'box:x0,y0,x1,y1' with 4 numbers")
        return BoxPrompt(*(_number(v) for v in values))
    if kind in ("point", "points"):
        return PointPrompt(points=_pairs(body, text, "point"), radius=radius)
    if kind == "scribble":
        return ScribblePrompt(_pairs(body, text, "scribble"), width=width)
    path = body.strip()
    if not path:
        raise ValueError(f"malformed mask prompt {text!r}: expected 'mask:path/to/mask.png'")
    if Path(path).is_dir():  # "no such file" would be wrong: the path is there
        raise ValueError(f"mask prompt {text!r}: {path} is a folder, not a mask image file")
    if not Path(path).is_file():
        raise ValueError(f"mask prompt {text!r}: no such file {path}")
    return MaskPrompt(path, mask_threshold)


def as_prompt(prompt: Any, mask_threshold: float | None = None) -> Prompt:
    """A prompt object as it is; text through :func:`parse_prompt`; anything else (array, PIL image,
    tensor, path object) as a :class:`MaskPrompt`. ``mask_threshold``: the threshold of the mask prompts made here
    (see :class:`MaskPrompt`)."""
    if isinstance(prompt, (MaskPrompt, BoxPrompt, PointPrompt, ScribblePrompt)):
        return prompt
    if isinstance(prompt, str):
        return parse_prompt(prompt, mask_threshold=mask_threshold)
    return MaskPrompt(prompt, mask_threshold)


def reference_mask(prompt: Any, image: Any, mask_threshold: float | None = None) -> np.ndarray:
    """The prompt rasterised on ``image`` (anything ``image_io.load_image`` reads, or a ``(height, width)``
    pair): a ``(height, width)`` bool mask. ``prompt`` goes through :func:`as_prompt` (with ``mask_threshold``)."""
    if isinstance(image, tuple) and len(image) == 2 and all(isinstance(v, (int, np.integer)) for v in image):
        height, width = image
    else:
        loaded = load_image(image)
        height, width = loaded.height, loaded.width
    return as_prompt(prompt, mask_threshold).rasterize(height, width)


def describe_prompt(prompt: Any) -> str:
    """How a prompt is named in errors and reports: its text, a mask array by its size (the app's painted prompts;
    its repr would be the pixels), anything else by its repr."""
    if isinstance(prompt, str):
        return prompt
    shape = getattr(prompt, "shape", None)
    return f"mask array {shape[1]}x{shape[0]}" if shape is not None and len(shape) == 2 else repr(prompt)


def describe_reference(reference: Any, index: int) -> str:
    """How a reference image is named in errors: its path when it is one, else its index in the references."""
    if isinstance(reference, (str, os.PathLike)):
        return f"reference {os.fspath(reference)}"
    return f"references[{index}] ({type(reference).__name__})"


def reference_masks(prompts: Any, images: Any, references: Any | None = None,
                    mask_threshold: float | None = None) -> list[np.ndarray]:
    """:func:`reference_mask` of each prompt on its image (with ``mask_threshold``); a bad prompt's ``ValueError``
    names the prompt and its reference (``references``: the references as given, paths or images, default
    ``images``), as in ``prompt 'box:...' on reference ref2.jpg: box ... lies entirely outside the image ...``."""
    prompts, images = list(prompts), list(images)
    references = images if references is None else list(references)
    masks = []
    for index, (prompt, image, given) in enumerate(zip(prompts, images, references)):
        try:
            masks.append(reference_mask(prompt, image, mask_threshold))
        except ValueError as error:
            raise ValueError(f"prompt {describe_prompt(prompt)} on {describe_reference(given, index)}: "
                             f"{error}") from error
    return masks

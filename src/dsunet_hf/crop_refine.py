"""Coarse-to-fine prediction for large images: a second pass on the crop around the foreground.

A model that takes a 5000x4000 photo at 1024x1024 spends most of its input pixels on background when the object
fills a small part of the frame, and its edges come back from a coarse map. BiRefNet's author answers such users
(their issues #41, #266) with: predict at low resolution, crop the region the object occupies, predict the crop
again. Here the crop is the box around the first pass's foreground (p >= 0.5), grown by a margin and then to the
image's aspect ratio, so that the model sees the object with the same proportions as in the first pass, only
larger. The second pass replaces the map inside the crop, its background blended into the first pass over the
crop's last 8 px (no rectangle seam in soft maps); outside it the first pass stays (below 0.5 there by
construction). An image whose crop would enlarge the object by less than ``min_gain`` keeps its first pass.

Several objects far apart (animals in a field, parts in a tray) get a crop each: one box around all of them would
span most of the photo and zoom in by little. The first pass's foreground is split into connected regions; regions
whose grown crops overlap share one crop, and specks (under ``min_area_fraction`` of the foreground) keep the first
pass. Crops never overlap, so each pixel's map comes from exactly one pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from PIL import Image

FOREGROUND = 0.5  # the first pass's foreground: what the crop must contain


Box = tuple[int, int, int, int]  # (top, left, bottom, right), bottom/right exclusive


def foreground_box(probability: np.ndarray, margin: float = 0.25) -> Box | None:
    """The crop for the second pass, ``(top, left, bottom, right)`` (bottom/right exclusive): the box around
    ``probability >= 0.5``, each side grown by ``margin`` times the box's longer side (at least 8 px), then grown to
    the map's aspect ratio as far as the map allows. None when nothing is foreground."""
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    mask = probability >= FOREGROUND
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return _crop_around((int(rows[0]), int(columns[0]), int(rows[-1]) + 1, int(columns[-1]) + 1), mask.shape, margin)


def foreground_boxes(probability: np.ndarray, margin: float = 0.25, min_area_fraction: float = 0.01,
                     max_boxes: int = 8) -> list[Box]:
    """One crop per group of foreground regions (``probability >= 0.5``, 8-connected): each region's box grown as
    in :func:`foreground_box`; regions whose crops overlap are merged (their joint box grown again) until no two
    crops overlap. Regions under ``min_area_fraction`` of the foreground area are left out (specks keep the first
    pass), and so are all but the ``max_boxes`` groups with the most foreground. A single object gives the same
    crop as :func:`foreground_box`. Sorted by position; empty when nothing is foreground."""
    from scipy import ndimage  # connected regions: scipy's labelling (a dependency of pysodmetrics too)

    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    mask = probability >= FOREGROUND
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if count == 0:
        return []
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    groups = [  # [tight box, foreground area] of the regions kept
        [(rows.start, columns.start, rows.stop, columns.stop), int(area)]
        for (rows, columns), area in zip(ndimage.find_objects(labels), areas)
        if area >= min_area_fraction * areas.sum()
    ]
    while (pair := _overlapping_pair([_crop_around(tight, mask.shape, margin) for tight, _ in groups])) is not None:
        (a, area_a), (b, area_b) = groups[pair[0]], groups.pop(pair[1])
        groups[pair[0]] = [(min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])), area_a + area_b]
    groups = sorted(groups, key=lambda group: -group[1])[:max_boxes]
    return sorted(_crop_around(tight, mask.shape, margin) for tight, _ in groups)


def _overlapping_pair(crops: list[Box]) -> tuple[int, int] | None:
    """The first (i, j), i < j, of two crops that overlap; None when none do."""
    def overlap(a: Box, b: Box) -> bool:
        return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]

    return next(((i, j) for i in range(len(crops)) for j in range(i + 1, len(crops)) if overlap(crops[i], crops[j])),
                None)


def _crop_around(tight: Box, shape: tuple[int, int], margin: float) -> Box:
    """``tight`` grown by ``margin`` of its longer side (at least 8 px), then to the aspect ratio of ``shape``."""
    height, width = shape
    top, left, bottom, right = tight
    pad = max(8, math.ceil(margin * max(bottom - top, right - left)))
    top, left, bottom, right = max(top - pad, 0), max(left - pad, 0), min(bottom + pad, height), min(right + pad, width)
    # The image's aspect: widen a tall box or heighten a wide one (centred, shifted back inside the image).
    crop_height, crop_width = bottom - top, right - left
    if crop_width * height < crop_height * width:
        left, right = _grow(left, right, min(width, math.ceil(crop_height * width / height)), width)
    else:
        top, bottom = _grow(top, bottom, min(height, math.ceil(crop_width * height / width)), height)
    return top, left, bottom, right


def _grow(start: int, end: int, length: int, limit: int) -> tuple[int, int]:
    """[start, end) grown to ``length`` around its centre, shifted to stay within [0, limit)."""
    start = max(0, min(start - (length - (end - start)) // 2, limit - length))
    return start, start + length


def zoom_gain(image_size: tuple[int, int], crop_size: tuple[int, int],
              input_size: Callable[[int, int], tuple[int, int]]) -> float:
    """How many more model-input pixels per image pixel (per side) the crop gets than the whole image did;
    ``input_size(height, width)`` is the size the model runs an image of that size at."""
    (image_height, image_width), (crop_height, crop_width) = image_size, crop_size
    image_input, crop_input = input_size(image_height, image_width), input_size(crop_height, crop_width)
    density = (crop_input[0] * crop_input[1] / (crop_height * crop_width)) / (
        image_input[0] * image_input[1] / (image_height * image_width))
    return math.sqrt(density)


def refine_with_crops(
    images: list[Image.Image],
    probabilities: list[np.ndarray],
    predict: Callable[[list[Image.Image], tuple[int, int] | None], list[np.ndarray]],
    input_size: Callable[[int, int], tuple[int, int]],
    *,
    margin: float = 0.25,
    min_gain: float = 1.25,
    batch_size: int = 4,
) -> list[np.ndarray]:
    """Second pass for every foreground crop (:func:`foreground_boxes`: one per object, or per group of nearby
    objects) that zooms in by ``min_gain`` or more.

    ``probabilities`` are the first pass's raw foreground maps at the images' sizes; ``predict(crops, size)``
    returns the maps of a batch of crops at their own sizes, each crop run at ``size`` (the model input size, None
    for the processor's own), and ``input_size(height, width)`` is that size for a crop or an image of that size.
    Crops that share an input size go through ``predict`` together, ``batch_size`` at a time. Returns new maps; the
    inputs are not modified.
    """
    if min_gain < 1 or margin < 0:
        raise ValueError(f"min_gain must be >= 1 and margin >= 0, got {min_gain} and {margin}")
    if len(images) != len(probabilities):
        raise ValueError(f"{len(images)} images but {len(probabilities)} maps")
    refined = [np.array(p, dtype=np.float32, copy=True) for p in probabilities]
    for index, (image, probability) in enumerate(zip(images, refined)):
        if probability.shape != (image.height, image.width):  # else the crops are cut from the wrong place
            raise ValueError(f"map {index} has shape {probability.shape} but its image is {image.height}x{image.width} "
                             f"(H x W): pass the first pass's maps at the images' sizes")
    jobs: dict[tuple[int, int], list[tuple[int, Box]]] = {}
    for index, probability in enumerate(refined):
        for box in foreground_boxes(probability, margin):
            top, left, bottom, right = box
            if zoom_gain(probability.shape, (bottom - top, right - left), input_size) >= min_gain:
                jobs.setdefault(input_size(bottom - top, right - left), []).append((index, box))
    for size, members in jobs.items():
        for start in range(0, len(members), batch_size):
            chunk = members[start:start + batch_size]
            crops = [images[index].crop((left, top, right, bottom)) for index, (top, left, bottom, right) in chunk]
            for (index, box), crop_map in zip(chunk, predict(crops, size)):
                _paste(refined[index], np.asarray(crop_map, dtype=np.float32), box)
    return refined


FEATHER = 8  # px: the crop's map blends into the first pass over this band (inside the crop's >= 8 px margin)


def _paste(full: np.ndarray, crop_map: np.ndarray, box: Box) -> None:
    """Put the crop's map into ``full`` (in place), its background blended linearly into the first pass over the
    last ``FEATHER`` pixels inside each crop side that is not an image border: soft maps disagree slightly there
    (e.g. 0.02 vs 0.0 of background), and a hard paste would leave the crop's rectangle visible in cut-out alpha.
    What the crop finds as foreground (>= 0.5) is kept as it is, in the band too: a thin part only the zoomed view
    sees is not faded out."""
    top, left, bottom, right = box
    height, width = crop_map.shape
    band = max(1, min(FEATHER, height // 4, width // 4))

    def ramp(length: int, start_open: bool, end_open: bool) -> np.ndarray:  # 1 inside, falling to the open sides
        weight = np.ones(length, np.float32)
        steps = (np.arange(band, dtype=np.float32) + 1) / (band + 1)
        if start_open:
            weight[:band] = np.minimum(weight[:band], steps)
        if end_open:
            weight[length - band:] = np.minimum(weight[length - band:], steps[::-1])
        return weight

    rows = ramp(height, top > 0, bottom < full.shape[0])
    columns = ramp(width, left > 0, right < full.shape[1])
    weight = np.minimum(rows[:, None], columns[None, :])
    blended = weight * crop_map + (1 - weight) * full[top:bottom, left:right]
    full[top:bottom, left:right] = np.where(crop_map >= FOREGROUND, crop_map, blended)


def refined_predictions(model, processor, images: list[Image.Image], probabilities: list, *, margin: float = 0.25,
                        batch_size: int = 4, input_size: Callable[[int, int], tuple[int, int]] | None = None
                        ) -> list[np.ndarray]:
    """:func:`refine_with_crops` for a model and its image processor: the maps of
    :func:`dsunet_hf.predict.probabilities_and_outputs` (tensors or arrays) refined on their crops, run at
    ``input_size(height, width)`` (the processor's fixed size when None)."""
    from .predict import input_size_function, probabilities_and_outputs

    def predict(crops, size):
        return [p.cpu().numpy() for p in probabilities_and_outputs(model, processor, crops, size=size)[0]]

    maps = [p.cpu().numpy() if hasattr(p, "cpu") else np.asarray(p) for p in probabilities]
    return refine_with_crops(images, maps, predict, input_size or input_size_function(processor), margin=margin,
                             batch_size=batch_size)


def minmax_normalized(probability: np.ndarray) -> np.ndarray:
    """SAM2-UNet ``test.py``'s per-image min-max normalisation (as the image processor's ``minmax_normalize``)."""
    return (probability - probability.min()) / (probability.max() - probability.min() + 1e-8)

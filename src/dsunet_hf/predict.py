"""Batch prediction: image files/folders -> mask PNGs (and optional overlays, RGBA cut-outs, composites on a new
background); videos -> the same as videos (see :mod:`dsunet_hf.video`).

Bad files are reported and skipped; every output is written atomically as soon as its batch is done,
and existing outputs are kept (re-running resumes where a previous run stopped).
"""

from __future__ import annotations

import collections
import contextlib
import glob
import logging
import math
import os
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .crop_refine import minmax_normalized, refine_with_crops
from .files import (
    expand_home,
    output_folder_problem,
    remove_stale_temporaries,
    save_image_atomic,
    write_json_atomic,
)
from .image_io import (
    IMAGE_EXTENSIONS,
    ImageReadError,
    displayed_size,
    load_image,
    load_image_file,
    picture_frames,
    pil_to_rgb,
)
from .image_processing import processor_for_model
from .modeling_utils import model_output
from .video import (
    TRANSPORT_SUFFIXES,
    VIDEO_SUFFIXES,
    is_video,
    looks_like_video,
    predict_video_into_report,
    video_output_path,
)

IMAGE_SUFFIXES = set(IMAGE_EXTENSIONS)  # the images training reads (data.py), the same list
MEDIA_SUFFIXES = IMAGE_SUFFIXES | VIDEO_SUFFIXES

logger = logging.getLogger(__name__)


@dataclass
class PredictionReport:
    written: list[str] = field(default_factory=list)
    skipped_existing: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        return (
            f"{len(self.written)} written, {len(self.skipped_existing)} already present, "
            f"{len(self.failed)} failed"
        )


# The folders predict writes into (the output folder's other files are no outputs of ours).
OUTPUT_KINDS = ("masks", "overlays", "cutouts", "composites", "scores")


def _is_pattern(item: str | Path) -> bool:
    return not Path(item).exists() and any(c in str(item) for c in "*?[")


def input_list(value: Any, item_ndim: int = 0) -> list:
    """Inputs as given (a list, tuple or other iterable), one given alone as a list of one: a file, folder or pattern
    (a string would be walked letter by letter: the target ``"photo.jpg"`` searched ``/``, the whole disk), a PIL
    image or prompt object. An array or tensor is one item up to ``item_ndim`` axes (paths: 0, so that an array of
    paths is several; an image: 3; a mask: 2), a stack of them with one more."""
    shape = getattr(value, "shape", None)  # arrays, tensors
    single = isinstance(value, (str, os.PathLike, Image.Image)) or (shape is not None and len(shape) <= item_ndim)
    return [value] if single or not isinstance(value, Iterable) else list(value)


def collect_images(inputs: list[str | Path], exclude: str | Path | None = None) -> list[tuple[Path, Path]]:
    """Expand files, folders and glob patterns into (image or video path, output name without suffix) pairs.

    Files in a folder keep their path relative to it, so equal names in sub-folders do not collide; the folders a
    pattern matches (``shots/*``) give their images, each keeping its folder's name; hidden files and folders in a
    folder are left out, as patterns leave them out. One file given twice under one name is predicted once; a
    folder or pattern without any image or video file is skipped with a warning naming it, an error when no input
    has one. Files in the output folders of ``exclude`` (the
    output directory: ``masks/``, ``overlays/``, ...) are left out, when it lies inside an input folder or under a
    pattern: a re-run would otherwise predict the previous run's outputs. Inputs that would write one output (equal
    names, or names that differ only in letter case: one file on macOS and Windows) are a ValueError naming them.
    """
    inputs = input_list(inputs)
    pairs: list[tuple[Path, Path]] = []
    expanded: list[tuple[Path, bool, str | Path]] = []  # (path, a folder matched by a pattern, the input giving it)
    without_media: list[str] = []  # a folder of .heic photos: said, not "0 written, 0 failed"
    for item in inputs:
        if _is_pattern(item):
            matches = [Path(m) for m in sorted(glob.glob(str(item), recursive=True))]
            if not matches:
                raise FileNotFoundError(f"{item}: the pattern matches no file")
            if not _holds_media(matches):
                without_media.append(_no_media_problem(item, matches))
                continue
            files = [m for m in matches if m.is_file() and _is_media(m)]
            # The files it matches, and the folders it matches whose files it does not reach itself: "shots/*" gives
            # the images beside the folders and the folders' images, "data/**" (data/, its folders and their files)
            # each file once, by its name; a folder inside another one matched ("shots/**/") comes with that one.
            reached = {parent for file in files for parent in file.parents}
            folders = [m for m in matches if m.is_dir() and m not in reached]
            outermost = set(folders)
            expanded += [(m, False, item) for m in files] + [(m, True, item) for m in folders
                                                            if not any(parent in outermost for parent in m.parents)]
        else:
            if Path(item).is_dir() and not _holds_media([Path(item)]):
                without_media.append(_no_media_problem(item, [Path(item)]))
                continue
            expanded.append((Path(item), False, item))
    outputs = [Path(exclude).resolve() / kind for kind in OUTPUT_KINDS] if exclude is not None else []

    def is_output(path: Path) -> bool:
        return any(path.resolve().is_relative_to(folder) for folder in outputs)

    outputs_only, predicted = [], set()  # the inputs that gave output files (left out), those that gave others
    for item, matched_folder, given in expanded:
        if item.is_dir():
            files = sorted(_visible_files(item, media_only=True))
            if any(folder.is_relative_to(item.resolve()) for folder in outputs):  # (resolving each file: only then)
                kept = [p for p in files if not is_output(p)]
                outputs_only += [given] if len(kept) < len(files) else []
                files = kept
            base = item.parent if matched_folder else item
            pairs += [(p, p.relative_to(base).with_suffix("")) for p in files]
            predicted |= {str(given)} if files else set()
        elif item.is_file():
            if outputs and is_output(item):
                outputs_only.append(given)
            else:
                pairs.append((item, Path(item.stem)))
                predicted.add(str(given))
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
    # An input whose images are all a run's outputs (masks/ passed back, with the same --output-dir): said, rather
    # than "0 written, 0 failed"; predicting them would write over them.
    outputs_only = list(dict.fromkeys(str(given) for given in outputs_only if str(given) not in predicted))
    for given in outputs_only:
        problem = (f"{given}: {'it lies' if Path(given).is_file() else 'its images lie'} in the output folders ({'/, '.join(OUTPUT_KINDS)}/) of --output-dir "
                   f"{exclude}, a run's outputs, which are not predicted (they would be written over)")
        if not pairs:
            raise ValueError(f"{problem}; pass another --output-dir")
        logger.warning("%s; skipped", problem)
    if without_media and not expanded:
        raise FileNotFoundError(without_media[0])
    for problem in without_media:  # the other inputs are predicted
        logger.warning("%s; skipped", problem)
    # One file given twice under one name ("*.jpg" and a.jpg) is predicted once.
    unique: dict = {}
    for path, name in pairs:
        unique.setdefault((os.path.abspath(path), name), (path, name))
    pairs = list(unique.values())
    # An image writes <kind>/<name>.png, a video <kind>/<name>.mp4 (.mov, .mkv): they collide with their own kind only.
    # Names are compared in lower case: A.jpg and a.jpg (or Shots/ and shots/) write one file on macOS and Windows, and
    # an output folder is copied there.
    def output_key(path: Path, name: Path) -> tuple[str, bool]:
        return str(name).lower(), is_video(path)  # not casefold(): "ß" and "ss" are two files everywhere

    counts = collections.Counter(output_key(path, name) for path, name in pairs)  # linear: a million photos
    if any(count > 1 for count in counts.values()):
        # One file named twice in different letter case (a.jpg typed for A.jpg, on macOS) is predicted once.
        seen, kept = set(), []
        for path, name in pairs:
            if counts[output_key(path, name)] > 1:
                stat = os.stat(path)
                same_file = (output_key(path, name), stat.st_dev, stat.st_ino)
                if same_file in seen:
                    continue
                seen.add(same_file)
            kept.append((path, name))
        pairs = kept
        counts = collections.Counter(output_key(path, name) for path, name in pairs)
    duplicates = sorted(key for key, count in counts.items() if count > 1)
    if duplicates:
        shown = duplicates[:5]
        inputs_of = {key: [] for key in shown}
        names_of = {key: [] for key in shown}
        for path, name in pairs:
            key = output_key(path, name)
            if key in inputs_of:
                inputs_of[key].append(str(path))
                names_of[key] += [str(name)] if str(name) not in names_of[key] else []
        more = f" (and {len(duplicates) - len(shown)} more)" if len(duplicates) > len(shown) else ""
        listed = "; ".join(f"{' / '.join(names_of[key])}{' (videos)' if key[1] else ''} from {', '.join(inputs_of[key])}"
                           for key in shown)
        case_only = [key for key in shown if len(names_of[key]) > 1]
        # Files of one name in one folder (p0.jpg and p0.png) stay together whatever folder is passed.
        one_folder = [inputs_of[key] for key in shown
                      if key not in case_only and len({Path(path).parent for path in inputs_of[key]}) == 1]
        advice = []
        if case_only:
            advice.append("names that differ only in letter case are one file on macOS and Windows: rename one of "
                          "them, or predict them into separate --output-dir folders")
        if one_folder:
            first = [Path(path) for path in one_folder[0]]
            runs = " and ".join(f"'{first[0].parent / ('*' + path.suffix)}'" for path in first[:2])
            advice.append(f"files of one name in one folder that differ only in their extension: rename one of them, "
                          f"or predict them in separate runs with separate --output-dir folders (e.g. {runs})")
        if len(case_only) + len(one_folder) < len(shown):
            advice.append("inputs from different folders: pass their folder so that sub-folders keep them apart"
                          if advice else "predict them into separate --output-dir folders, or pass their folder so "
                                         "that sub-folders keep them apart")
        raise ValueError(f"several inputs would write the same output name(s): {listed}{more}; {'; '.join(advice)}")
    return pairs


def check_inputs(inputs: list[str | Path]) -> None:
    """Raise FileNotFoundError for an input that is neither a file or folder nor a pattern matching one, or when no
    input holds an image or video (cheap: before a model loads; each folder is read up to its first image)."""
    found_media, first_problem = False, None
    for item in input_list(inputs):
        matches = [Path(m) for m in glob.glob(str(item), recursive=True)] if _is_pattern(item) else [Path(item)]
        if _is_pattern(item) and not matches:
            raise FileNotFoundError(f"{item}: the pattern matches no file")
        if not _is_pattern(item) and not Path(item).exists():
            raise FileNotFoundError(f"{item}: no such file or folder")
        if _holds_media(matches) or Path(item).is_file():  # a file named directly is read whatever its suffix
            found_media = True
        elif first_problem is None:
            first_problem = _no_media_problem(item, matches)
    if not found_media and first_problem is not None:
        raise FileNotFoundError(first_problem)


def _no_media_problem(item: str | Path, matches: list[Path]) -> str:
    """What a folder or pattern (``matches``: the folder, or what the pattern matches) without any image or video
    holds, naming its file types."""
    files = {f for path in matches for f in ([path] if path.is_file() else _visible_files(path))}
    kinds = collections.Counter(f.suffix.lower() or f.name for f in files).most_common(3)
    found = ", ".join(f"{count} {suffix}" for suffix, count in kinds) if kinds else "no file"
    if any(suffix in TRANSPORT_SUFFIXES for suffix, _ in kinds):
        found += "; .ts / .mts files that are no MPEG transport stream (TypeScript) are not videos"
    return f"{item}: no image or video file to predict (found {found}; the types read: {' '.join(sorted(MEDIA_SUFFIXES))})"


def _holds_media(paths: list[Path]) -> bool:
    """Whether one of ``paths`` is an image or video file, or a folder with one in it (found: no further reading)."""
    for path in paths:
        if path.is_dir():
            if next(_visible_files(path, media_only=True), None) is not None:
                return True
        elif path.is_file() and _is_media(path):
            return True
    return False


def _is_media(path: Path) -> bool:
    """Whether a file found in a folder or by a pattern is an image or video to predict (by its suffix; a ``.ts`` /
    ``.mts`` only when it is a transport stream: TypeScript sources share the suffixes)."""
    return path.suffix.lower() in MEDIA_SUFFIXES and (not is_video(path) or looks_like_video(path))


def _visible_files(folder: Path, media_only: bool = False):
    """The files under ``folder`` (only images and videos with ``media_only``: see :func:`_is_media`), hidden files
    and folders left out as training leaves them out (evaluation leaves out hidden files): macOS's ``._IMG_1.jpg``
    beside each photo on a USB drive or share (no image: each one a failure), a file manager's ``.thumbnails/``
    (predicted as photos)."""
    # The suffix first (no stat of the other files), _is_media last: it reads a .ts file's head, which only a
    # regular file may have read (opening a FIFO named clip.ts would block).
    for path in folder.rglob("*"):
        if ((not media_only or path.suffix.lower() in MEDIA_SUFFIXES)
                and not any(part.startswith(".") for part in path.relative_to(folder).parts) and path.is_file()
                and (not media_only or _is_media(path))):
            yield path


def output_file(name: Path, suffix: str) -> Path:
    """An output's path from an input's name without suffix: ``name`` + ``suffix`` (not ``with_suffix``, which would
    cut ``photo.v1`` to ``photo``)."""
    return name.with_name(name.name + suffix)


def output_paths(output_dir: Path, path: Path, name: Path, kinds: list[str], semantic: bool = False) -> list[Path]:
    """Where an input's outputs of each kind land: ``<kind>/<name>.png`` for an image (``scores``: ``.npy``); for
    a video ``<kind>/<name>.mp4`` (a multi-class model's masks: ``.mkv`` of class indices). An input is done when
    all of them exist (so a run interrupted between two of an input's outputs, or a re-run asking for one more
    kind, writes what is missing)."""
    if is_video(path):
        return [video_output_path(output_dir, "classes" if semantic and kind == "masks" else kind, name)
                for kind in kinds]
    return [Path(output_dir) / kind / output_file(name, ".npy" if kind == "scores" else ".png") for kind in kinds]


def is_finished(output_dir: Path, path: Path, name: Path, kinds: list[str], semantic: bool = False) -> bool:
    return all(output.exists() for output in output_paths(output_dir, path, name, kinds, semantic))


def overlay_image(image: Image.Image, probability: np.ndarray, color=(255, 0, 80), alpha: float = 0.5):
    """The image with the foreground tinted, for a quick visual check."""
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    weight = (alpha * probability)[..., None]
    blended = base * (1 - weight) + np.asarray(color, dtype=np.float32) * weight
    return Image.fromarray(blended.round().clip(0, 255).astype(np.uint8))


CUTOUT_COLORS = ("estimate", "original")


def foreground_colors(image: Image.Image, probability: np.ndarray, colors: str = "estimate",
                      device: str | torch.device = "cpu") -> Image.Image:
    """The RGB to show under the alpha: ``"estimate"``, the estimated foreground colours (blur-fusion, see
    :mod:`dsunet_hf.foreground`: the old background does not show as a halo); ``"original"``, the photo's own."""
    if colors not in CUTOUT_COLORS:
        raise ValueError(f"cut-out colors must be one of {CUTOUT_COLORS}, got {colors!r}")
    if colors == "estimate":
        from .foreground import refine_foreground

        return refine_foreground(image, probability, device=device)
    return pil_to_rgb(image).copy()  # not convert("RGB"): that clips a 16-bit photo to white, a float one to black


def cutout_image(image: Image.Image, probability: np.ndarray, colors: str = "estimate",
                 device: str | torch.device = "cpu") -> Image.Image:
    """RGBA with the probability as alpha: background removal (colours as :func:`foreground_colors`)."""
    rgba = foreground_colors(image, probability, colors, device)
    # floor(p * 255): the written mask, as BiRefNet's ToPILImage makes its alpha
    rgba.putalpha(Image.fromarray((np.clip(probability, 0, 1) * np.float32(255)).astype(np.uint8)))
    return rgba


class Backdrop:
    """A new background for composites: a colour (a name, ``#RRGGBB``, ``R,G,B``) or an image file, scaled to
    cover each image and centred (aspect kept, the overflow cropped), as a video editor fits a background."""

    def __init__(self, spec: str | tuple[int, int, int] | Image.Image):
        self.color, self.image = None, None
        if isinstance(spec, Image.Image):
            self.image = spec.convert("RGB")
        elif isinstance(spec, tuple):
            self.color = spec
        elif Path(spec).is_file():
            self.image = load_image(spec)  # an unreadable file: ImageReadError naming it
        else:
            from PIL import ImageColor

            text = str(spec).strip()
            # R,G,B, and rgb()/rgba() with fractional components (what Gradio's colour picker sends); the rest
            # (names, #RRGGBB, #RGB, hsl()) as Pillow reads them.
            components = re.fullmatch(r"(?:rgba?\()?\s*([\d.]+)\s*,\s*([\d.]+)\s*,\s*([\d.]+)\s*(?:,\s*[\d.]+\s*)?\)?",
                                      text, re.IGNORECASE)
            try:
                self.color = (tuple(round(float(v)) for v in components.groups()) if components
                              else ImageColor.getrgb(text)[:3])
            except ValueError as error:
                raise ValueError(f"background {spec!r}: neither an image file nor a colour (a name such as "
                                 f"white, #RRGGBB or R,G,B)") from error
            if len(self.color) != 3 or not all(0 <= v <= 255 for v in self.color):
                raise ValueError(f"background {spec!r}: colour components must be 0-255")
        self._cached: tuple[tuple[int, int], np.ndarray] | None = None

    def pixels(self, width: int, height: int) -> np.ndarray:
        """(height, width, 3) float32 in 0-255 (the last size is cached: a video's frames share it)."""
        cached = self._cached
        if cached is not None and cached[0] == (width, height):
            return cached[1]
        if self.image is not None:
            from PIL import ImageOps

            pixels = np.asarray(ImageOps.fit(self.image, (width, height), Image.BICUBIC), dtype=np.float32)
        else:
            pixels = np.broadcast_to(np.asarray(self.color, dtype=np.float32), (height, width, 3))
        self._cached = ((width, height), pixels)
        return pixels


def composite_image(image: Image.Image, probability: np.ndarray, backdrop: Backdrop, colors: str = "estimate",
                    device: str | torch.device = "cpu") -> Image.Image:
    """The foreground on a new background: ``F * alpha + B * (1 - alpha)`` with F as :func:`foreground_colors`
    (estimated colours keep the old background out of soft edges such as hair) and alpha the probability."""
    foreground = np.asarray(foreground_colors(image, probability, colors, device), dtype=np.float32)
    alpha = np.asarray(probability, dtype=np.float32)[..., None]
    blended = foreground * alpha + backdrop.pixels(image.width, image.height) * (1 - alpha)
    return Image.fromarray(blended.round().clip(0, 255).astype(np.uint8))


@dataclass(frozen=True)
class OutputOptions:
    """How the outputs of a foreground map are drawn (one set for a whole prediction run)."""

    threshold: float | None = None  # masks: binary at p >= threshold, else the probability
    colors: str = "estimate"  # cut-outs and composites: see foreground_colors
    backdrop: Backdrop | None = None  # composites
    device: str | torch.device = "cpu"  # where the foreground colours are estimated


def render_output(kind: str, image: Image.Image, probability: np.ndarray, options: OutputOptions) -> np.ndarray:
    """One output of an image (or video frame) as a uint8 array: ``masks`` (H, W), ``overlays`` and
    ``composites`` (H, W, 3), ``cutouts`` (H, W, 4)."""
    if kind == "masks":
        shown = probability >= options.threshold if options.threshold is not None else probability
        # floor(p * 255), as upstream test.py writes its maps and evaluation scores them (metrics.to_uint8_map)
        return (np.clip(shown, 0, 1) * np.float32(255)).astype(np.uint8)
    if kind == "overlays":
        return np.asarray(overlay_image(image, probability))
    if kind == "cutouts":
        return np.asarray(cutout_image(image, probability, options.colors, options.device))
    if kind == "composites":
        return np.asarray(composite_image(image, probability, options.backdrop, options.colors, options.device))
    raise ValueError(f"unknown output kind {kind!r}")


def output_renderer(kinds: Iterable[str], options: OutputOptions):
    """``render(kind, image, probability)`` as :func:`render_output`; where both cut-outs and composites are drawn
    with estimated colours, from one estimate per image (estimating is most of their cost; the pixels are the same)."""
    if options.colors != "estimate" or not {"cutouts", "composites"} <= set(kinds):
        return lambda kind, image, probability: render_output(kind, image, probability, options)
    return _SharedColorEstimate(options).render


@dataclass
class _ColorEstimate:
    image: Image.Image  # held: its id() keys the estimate until both outputs are drawn
    lock: threading.Lock = field(default_factory=threading.Lock)
    colors: Image.Image | None = None
    uses_left: int = 2  # the cut-out and the composite


class _SharedColorEstimate:
    """Each image's foreground colours estimated once, by whichever of its cut-out and composite is drawn first
    (a video draws each output in its own thread), then drawn as they are ("original") for both."""

    def __init__(self, options: OutputOptions):
        self.options = replace(options, colors="original")
        self.lock = threading.Lock()
        self.pending: dict[int, _ColorEstimate] = {}

    def render(self, kind: str, image: Image.Image, probability: np.ndarray) -> np.ndarray:
        if kind not in ("cutouts", "composites"):
            return render_output(kind, image, probability, self.options)
        with self.lock:
            entry = self.pending.setdefault(id(image), _ColorEstimate(image))
        with entry.lock:
            if entry.colors is None:
                entry.colors = foreground_colors(image, probability, "estimate", self.options.device)
            entry.uses_left -= 1
            if entry.uses_left == 0:  # both drawn: let it go
                with self.lock:
                    del self.pending[id(image)]
        return render_output(kind, entry.colors, probability, self.options)


def device_and_dtype(model) -> tuple[torch.device, torch.dtype]:
    """Where the model's inputs go: its parameters' device and dtype (CPU fp32 for an onnxruntime graph)."""
    parameter = next(model.parameters(), None)
    if parameter is None:  # OnnxSegmentationModel: onnxruntime takes CPU float32 arrays
        return torch.device("cpu"), torch.float32
    return parameter.device, parameter.dtype


def pixel_inputs(batch, device=None, dtype=None) -> dict[str, torch.Tensor]:
    """Every image input a model takes (``pixel_values`` and e.g. DSU-Net's ``dino_pixel_values``)."""
    return {k: v.to(device=device, dtype=dtype) for k, v in batch.items() if k.endswith("pixel_values")}


def probabilities_and_outputs(model, processor, images: list, minmax_normalize: bool = False, masks=None,
                              size: tuple[int, int] | None = None):
    """One forward pass over a batch of PIL images: (foreground probabilities (H, W) at each image's original size,
    the model's output). With ``masks`` ((H, W) floats in [0, 1], one per image) they are resized to the model's
    size as in training and passed as labels, so the output carries the model's loss. ``size`` (height, width):
    the input size for this batch instead of the processor's (``resolution="native"``)."""
    device, dtype = device_and_dtype(model)
    processor = processor_for_model(processor, model)  # the model's upstream resizing and post-processing order
    inputs = processor(images, masks=masks, size=None if size is None else {"height": size[0], "width": size[1]})
    labels = {} if masks is None else {"labels": torch.as_tensor(inputs["labels"]).to(device=device, dtype=dtype)}
    outputs = model_output(model, **pixel_inputs(inputs, device, dtype), **labels)
    probabilities = processor.post_process_probabilities(  # the model's upstream order
        outputs.logits.float(), target_sizes=inputs["original_sizes"], minmax_normalize=minmax_normalize
    )
    return probabilities, outputs


def check_max_side(max_side: int, divisor: int = 32) -> None:
    """``max_side`` (``--max-side``) is at least one multiple of ``divisor``: below that every image would silently
    run at ``divisor`` x ``divisor``."""
    whole = isinstance(max_side, (int, float, np.integer, np.floating)) and float(max_side).is_integer()
    if isinstance(max_side, bool) or not whole or max_side < divisor:  # 1024.0 (YAML, a Gradio number) is fine
        raise ValueError(f"max_side (--max-side) must be an integer >= {divisor} (the longest input side, in "
                         f"multiples of {divisor}), got {max_side!r}")


DEFAULT_MAX_SIDE = 2048  # --max-side


def native_size(height: int, width: int, max_side: int = DEFAULT_MAX_SIDE, divisor: int = 32) -> tuple[int, int]:
    """An image's own resolution as a model input: scaled down (aspect kept) so that no side exceeds
    ``max_side``, then each side rounded to the nearest multiple of ``divisor`` (at least one multiple)."""
    check_max_side(max_side, divisor)
    scale = min(1.0, max_side / max(height, width))
    return tuple(max(divisor, round(side * scale / divisor) * divisor) for side in (height, width))


def input_size_function(processor, resolution: str = "model", max_side: int | None = DEFAULT_MAX_SIDE):
    """``f(height, width)``: the (height, width) the model runs an image of that size at, the processor's fixed
    size or, ``resolution="native"``, the image's own (:func:`native_size`; ``max_side`` None: 2048, the
    command line's default)."""
    max_side = DEFAULT_MAX_SIDE if max_side is None else max_side
    check_max_side(max_side)  # also at the model's size: a bad --max-side is refused, not silently ignored
    if resolution == "native":
        return lambda height, width: native_size(height, width, max_side)
    fixed = (processor.size["height"], processor.size["width"])
    return lambda height, width: fixed


def add_resolution_arguments(parser) -> None:
    """``--resolution`` and ``--max-side``, the same for predict, evaluate, app and space."""
    parser.add_argument("--resolution", default="model", choices=["model", "native"],
                        help="foreground models: native = each image at its own size (multiples of 32, at most "
                             "--max-side; BiRefNet_dynamic/_HR, SAM2-UNet, dynamic-size ONNX), batched by equal size")
    # None: not given (refused without --resolution native by the command line, which then fills in 2048).
    parser.add_argument("--max-side", type=int, default=None,
                        help=f"--resolution native: longest input side (default {DEFAULT_MAX_SIDE})")


def stored_size(path: Path) -> tuple[int, int] | None:
    """(height, width) after EXIF orientation from the file header alone; None if it cannot be read
    (the file then fails, and is reported, when it is decoded)."""
    try:
        width, height = displayed_size(path)  # the size load_image gives (a rotated TIFF: once turned, not twice)
        return height, width
    except Exception:  # any unreadable header: decoding reports the real error
        return None


def size_buckets(sizes: list[tuple[int, int] | None], batch_size: int) -> list[list[int]]:
    """Batches of indices whose inputs share one size (order of first appearance), so that images at
    their own resolution still run in full batches; unknown sizes go one per batch."""
    buckets: dict = {}
    for index, size in enumerate(sizes):
        buckets.setdefault(size if size is not None else ("unknown", index), []).append(index)
    return [members[i:i + batch_size] for members in buckets.values() for i in range(0, len(members), batch_size)]


class _ImageFiles(torch.utils.data.Dataset):
    """Decoding and resizing in DataLoader workers, so the device does not wait on JPEG decoding.
    ``sizes`` (one per item, or None for the processor's size) resize each image to its own input size."""

    def __init__(self, items: list[tuple[Path, Path]], processor, preprocess: bool, sizes: list | None = None):
        self.items, self.processor, self.preprocess, self.sizes = items, processor, preprocess, sizes

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        path, name = self.items[index]
        try:
            image, frames = load_image_file(path)
        except (ImageReadError, ValueError, OSError) as error:
            return {"path": path, "name": name, "error": str(error)}
        warn_if_several_frames(path, frames)
        size = self.sizes[index] if self.sizes else None
        inputs = self.processor([image], size=size) if self.preprocess else None
        return {"path": path, "name": name, "image": image, "inputs": inputs}


def _collate(items: list[dict]) -> dict:
    """The batch's per-image dicts (PIL images pass through) and, stacked here in the worker so that the
    loader's ``pin_memory`` pins them and the copy to the GPU can be asynchronous, the readable images' inputs."""
    good = [item for item in items if "error" not in item and item["inputs"] is not None]
    batch = {"items": items, "pixel_values": {}, "original_sizes": []}
    if good:
        keys = [k for k in good[0]["inputs"].keys() if k.endswith("pixel_values")]
        batch["pixel_values"] = {k: torch.cat([item["inputs"][k] for item in good]) for k in keys}
        batch["original_sizes"] = [size for item in good for size in item["inputs"]["original_sizes"]]
    return batch


def warn_if_several_frames(path: Path, frames: int | None = None) -> None:
    """An animated GIF, WebP or PNG, or a multi-page TIFF, is predicted on its first frame only: a warning names it.
    ``frames``: the count :func:`dsunet_hf.image_io.load_image_file` gave (else the file is opened to count them).
    A JPEG's MPF images (MPO: a phone's preview or Ultra HDR gain map) are not frames left out: no warning."""
    if frames is None:
        try:
            with Image.open(path) as image:
                frames = picture_frames(image)
        except Exception:  # unreadable: load_image has reported it
            return
    if frames > 1:
        logger.warning("%s: has %d frames (an animation or pages); only the first is predicted", path, frames)


def rgb_icc_profile(image: Image.Image) -> bytes | None:
    """The image's embedded ICC colour profile when it describes RGB (e.g. a phone's Display P3), else None (a
    CMYK or gray profile does not describe the RGB pixels written from it)."""
    profile = image.info.get("icc_profile")
    return profile if isinstance(profile, bytes) and profile[16:20] == b"RGB " else None


def _write_binary_outputs(item: dict, probability: np.ndarray, output_dir: Path, kinds: list[str],
                          options: OutputOptions) -> str:
    name = output_file(item["name"], ".png")
    profile = rgb_icc_profile(item["image"])  # the colour outputs keep the photo's colours; a mask has none
    render = output_renderer(kinds, options)
    for kind in kinds:
        save_image_atomic(Image.fromarray(render(kind, item["image"], probability)),
                          output_dir / kind / name, icc_profile=None if kind == "masks" else profile)
    return str(item["path"])


_SKIPPED = object()  # what a task queued after a failed write returns instead of running


class BackgroundWriter:
    """PNG encoding in threads (Pillow releases the GIL while it compresses), so that the device runs the
    next batch meanwhile. At most ``max_pending`` images wait, which bounds the memory they hold; a write
    that fails raises here, in the caller's thread. ``workers=0`` writes in the caller's thread (no overlap).

    After the first failed write no queued task runs (e.g. the next frame of a video whose container failed is
    never muxed into it). That first failure is the one error raised, once, from :meth:`submit` or :meth:`close`:
    a write failing beside it in another thread, or the tasks left out, never replace it (``close`` in a
    ``finally`` block lets it through and still waits for every write under way)."""

    def __init__(self, workers: int, max_pending: int, on_done):
        import threading
        from concurrent.futures import ThreadPoolExecutor

        if workers < 0:
            raise ValueError(f"write_workers must be 0 (write in this thread) or more, got {workers}")
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="predict-writer") if workers else None
        self.pending, self.max_pending, self.on_done = [], max_pending, on_done
        self.failure: BaseException | None = None  # the first failed write: the tasks queued after it do not run
        self._reported = False  # whether the failure has been raised to the caller
        self._lock = threading.Lock()

    def _run(self, fn, *args):
        if self.failure is not None:
            return _SKIPPED
        try:
            return fn(*args)
        except BaseException as error:
            with self._lock:
                if self.failure is None:
                    self.failure = error
            raise

    def _raise_failure(self) -> None:
        """Raise the first failure, unless the caller has had it already."""
        if self.failure is not None and not self._reported:
            self._reported = True
            raise self.failure

    def _finish(self, future) -> None:
        """Wait for one task; report its output, or raise the first failure (which may be another task's)."""
        try:
            result = future.result()
        except BaseException:  # recorded in self.failure (this one, or an earlier one)
            result = _SKIPPED
        if result is _SKIPPED:
            self._raise_failure()
        else:
            self.on_done(result)

    def submit(self, fn, *args) -> None:
        if self.failure is not None:  # nothing more runs after a failed write: the same error again
            self._reported = True
            raise self.failure
        if self.pool is None:
            try:
                result = self._run(fn, *args)
            finally:
                self._reported = self.failure is not None
            self.on_done(result)
            return
        self.pending.append(self.pool.submit(self._run, fn, *args))
        while len(self.pending) > self.max_pending:
            self._finish(self.pending.pop(0))

    def close(self) -> None:
        """Wait for every queued write (finished ones are reported), then raise the first failure if the caller has
        not had it yet."""
        try:
            while self.pending:
                future = self.pending.pop(0)
                try:
                    result = future.result()
                except BaseException:  # recorded in self.failure: raised below
                    continue
                if result is not _SKIPPED:
                    self.on_done(result)
        finally:
            if self.pool is not None:
                self.pool.shutdown(wait=True, cancel_futures=True)
        self._raise_failure()


@torch.inference_mode()
def predict_files(
    model,
    processor,
    inputs: list[str | Path],
    output_dir: str | Path,
    *,
    batch_size: int = 4,
    threshold: float | None = None,
    minmax_normalize: bool = False,
    overlay: bool = False,
    cutout: bool = False,
    cutout_colors: str = "estimate",
    background: str | tuple[int, int, int] | Image.Image | Backdrop | None = None,
    overwrite: bool = False,
    progress: bool = True,
    num_workers: int = 0,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    resolution: str = "model",
    max_side: int = 2048,
    write_workers: int = 2,
    schedule: str | None = None,
    crop_refine: bool = False,
    crop_margin: float = 0.25,
    temporal_smoothing: float = 0.0,
) -> PredictionReport:
    """Predict masks for image files/folders into ``output_dir`` (``masks/``, ``overlays/``, ``cutouts/``).

    Videos among the inputs (``.mp4``, ``.mov``, ...; the ``[video]`` extra) give ``masks/<name>.mp4``,
    ``overlays/<name>.mp4``, ``cutouts/<name>.mov`` (ProRes 4444 with alpha) and ``composites/<name>.mp4``, every
    frame predicted as an image would be (multi-class models: ``masks/<name>.mkv``, lossless class indices; see
    :mod:`dsunet_hf.video`); a video is reported as written once all its outputs are complete.

    Images are decoded and resized in ``num_workers`` DataLoader workers (pinned memory on CUDA). Under
    ``accelerate launch`` the files are split between the processes (each output is written by exactly one
    process) and the main process writes the merged report. ``autocast_dtype`` (bf16/fp16) runs the forward
    under autocast with fp32 weights; ``channels_last`` feeds NHWC inputs to the conv decoders (call
    ``model.to(memory_format=torch.channels_last)`` too). Outputs are encoded and written by ``write_workers``
    threads while the device runs the next batch.

    ``cutout`` writes RGBA cut-outs, with the foreground colours estimated under soft alpha
    (``cutout_colors="estimate"``, on the model's device) or the photo's own (``"original"``). ``background`` (a
    colour or an image, see :class:`Backdrop`) also writes ``composites/``: the foreground, with the same colours,
    on that background (videos: ``composites/<name>.mp4``).

    ``resolution="native"`` runs each image at its own size (see :func:`native_size`: at most ``max_side``,
    multiples of 32) instead of the processor's fixed size, for models that take any size (BiRefNet,
    notably BiRefNet_dynamic and _HR; SAM2-UNet); images are grouped into batches of equal input size
    (size bucketing), read from the file headers, so batches stay full without padding.

    ``schedule`` (multi-class models): ``single``, ``slide`` or ``multiscale`` (multi-scale + flip), the model's
    default (``slide`` for the DINOv2 heads) when None.

    ``crop_refine`` predicts once more on the crop around each image's (or frame's) foreground, grown by
    ``crop_margin`` (see :mod:`dsunet_hf.crop_refine`): finer edges for objects that fill a small part of a large
    image, at the cost of a second forward pass for those images.

    ``temporal_smoothing`` (0 to <1, videos): carry that share of the previous frame's map into the still parts of
    each frame (see :class:`dsunet_hf.video.TemporalSmoothing`; multi-class models: the class probabilities before
    the argmax): less flicker, no trail behind moving objects; 0 (default) predicts every frame as an image.
    """
    from accelerate.utils import broadcast_object_list, gather_object

    from .distributed import ProcessFailures, StopRequested, process_state

    device, dtype = device_and_dtype(model)
    state = process_state(device)
    output_dir = Path(output_dir)
    report = PredictionReport()
    processor = processor_for_model(processor, model)  # one saved before its order was: resized as its upstream
    batch_size = check_batch_options(output_dir, batch_size)
    semantic = getattr(model, "predicts_class_maps", False)  # palette PNGs of class indices, overlays + legend
    kinds = ["masks"] + ["overlays"] * overlay + ["cutouts"] * cutout + ["composites"] * (background is not None)
    stop = ProcessFailures(state)  # a process that fails makes the others stop: at the listing or their next batch
    pending, report.skipped_existing = _pending_inputs(inputs, output_dir, kinds, semantic, overwrite, state, stop)
    _check_prediction_options(
        model, processor, semantic, cutout_colors=cutout_colors, resolution=resolution, schedule=schedule,
        crop_margin=crop_margin, threshold=threshold, foreground_only={"cutout": cutout, "background": background is not None,
                                                  "threshold": threshold is not None,
                                                  "minmax_normalize": minmax_normalize, "crop_refine": crop_refine})
    if temporal_smoothing:
        from .video import TemporalSmoothing

        TemporalSmoothing(temporal_smoothing)  # a strength outside [0, 1) is refused here, before anything runs
    if any(is_video(path) for path, _ in pending):
        from .video import import_av

        import_av()  # a missing [video] extra is one clear error before anything runs
    backdrop = background if background is None or isinstance(background, Backdrop) else Backdrop(background)
    options = OutputOptions(threshold=threshold, colors=cutout_colors, backdrop=backdrop, device=device)

    input_size = input_size_function(processor, resolution, max_side)

    def precision():
        return torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()

    def probabilities_of(inputs: dict) -> list[np.ndarray]:
        """The model's foreground probabilities for one batch of processor outputs, at the original sizes."""
        pixel_values = {k: v.to(device=device, dtype=dtype, non_blocking=True)
                        for k, v in inputs.items() if k.endswith("pixel_values")}
        if channels_last:
            pixel_values = {k: v.contiguous(memory_format=torch.channels_last) for k, v in pixel_values.items()}
        with precision():
            logits = model_output(model, **pixel_values).logits
        probabilities = processor_for_model(processor, model).post_process_probabilities(
            logits.float(), target_sizes=inputs["original_sizes"])
        return [probability.cpu().numpy() for probability in probabilities]

    def foreground_maps(images: list[Image.Image], inputs: dict) -> list[np.ndarray]:
        """The maps written for a batch: the model's, refined on crops and min-max normalised as asked."""
        maps = probabilities_of(inputs)
        if crop_refine:
            maps = refine_with_crops(
                images, maps, lambda crops, size: probabilities_of(processor(crops, size=size if resolution == "native"
                                                                             else None)),
                input_size, margin=crop_margin, batch_size=batch_size,
            )
        return [minmax_normalized(m) for m in maps] if minmax_normalize else maps

    # Videos: (prepare a batch of frames in the reader thread, predict it, render each output of a frame).
    if semantic:
        from .semantic import predict_classes, render_class_output, smoothed_class_predictor

        video_kinds = ["classes"] + ["overlays"] * overlay

        def video_steps_for_one_video():  # class probabilities smoothed here (a fresh memory per video)
            predict = (smoothed_class_predictor(model, schedule, temporal_smoothing) if temporal_smoothing
                       else lambda frames: [predict_classes(model, f, schedule) for f in frames])

            def classes_of(frames):
                with precision():
                    return predict(frames)

            return (lambda frames: frames, classes_of,
                    lambda kind, frame, classes: render_class_output(model, kind, frame, classes))
    else:
        def prepare(frames):  # the frames of a video share one size: one input size for all
            size = native_size(frames[0].height, frames[0].width, max_side) if resolution == "native" else None
            return frames, processor(frames, size=size)

        video_kinds = kinds

        def video_steps_for_one_video():
            return prepare, lambda prepared: foreground_maps(*prepared), output_renderer(video_kinds, options)

    failure, own_error = None, None
    # Videos shared out apart from the images: listed together (a clips/ folder, sorted after the photos), they would
    # all fall to the last process, which would run every frame while the others had finished their photos.
    mine_videos = [item for item in pending if is_video(item[0])][state.process_index::state.num_processes]
    with state.split_between_processes([item for item in pending if not is_video(item[0])]) as mine:
        try:
            if resolution == "native":
                stored = [stored_size(path) for path, _ in mine]
                sizes = [native_size(*size, max_side=max_side) if size else None for size in stored]
                batching = {"batch_sampler": size_buckets(sizes, batch_size)}
            else:
                sizes, batching = None, {"batch_size": batch_size}
            loader = torch.utils.data.DataLoader(
                _ImageFiles(mine, processor, preprocess=not semantic, sizes=sizes), **batching,
                num_workers=num_workers, collate_fn=_collate, pin_memory=device.type == "cuda",
            ) if mine else []  # videos only: no decoding workers to start
            bar = tqdm(total=len(mine), desc="predict", unit="img", disable=not (progress and state.is_main_process and mine))

            def written(path: str) -> None:
                report.written.append(path)
                bar.update(1)

            writer = BackgroundWriter(write_workers, max_pending=4 * batch_size, on_done=written)
            try:
                for batch in loader:
                    stop.check()
                    for item in batch["items"]:
                        if "error" in item:
                            report.failed[str(item["path"])] = item["error"]
                    good = [item for item in batch["items"] if "error" not in item]
                    bar.update(len(batch["items"]) - len(good))
                    if not good:
                        continue
                    if semantic:
                        from .semantic import predict_classes, write_class_outputs

                        for item in good:
                            with precision():
                                classes = predict_classes(model, item["image"], schedule)
                            write_class_outputs(model, item["image"], classes, output_dir, item["name"], overlay)
                            written(str(item["path"]))
                        continue
                    probabilities = foreground_maps([item["image"] for item in good],
                                                    {**batch["pixel_values"], "original_sizes": batch["original_sizes"]})
                    for item, probability in zip(good, probabilities):
                        writer.submit(_write_binary_outputs, item, probability, output_dir, kinds, options)
            finally:
                writer.close()  # every finished image is written (and reported) even when a later batch fails
            bar.close()
            for path, name in mine_videos:
                stop.check()
                with tqdm(desc=f"predict {path.name}", unit="frame",
                          disable=not (progress and state.is_main_process)) as frames_bar:
                    predict_video_into_report(report, path, {kind: video_output_path(output_dir, kind, name)
                                                             for kind in video_kinds}, *video_steps_for_one_video(),
                                              batch_size=batch_size, on_frames=lambda n: (stop.check(), frames_bar.update(n)),
                                              temporal_smoothing=0.0 if semantic else temporal_smoothing)
        except StopRequested:  # another process failed: this one's finished outputs are kept and reported
            pass
        except Exception as error:
            if state.num_processes == 1:
                raise
            # Not raised yet: the other processes would wait for this one's part of the report (in gather_object,
            # up to the group's timeout). Every process reaches the gather; the report is written; all raise.
            failure, own_error = stop.fail(error), error
    failures = []
    if state.num_processes > 1:
        parts = gather_object([{**report.__dict__, "failure": failure}])
        report = PredictionReport(
            written=[p for part in parts for p in part["written"]],
            skipped_existing=parts[0]["skipped_existing"],
            failed={k: v for part in parts for k, v in part["failed"].items()},
        )
        failures = [part["failure"] for part in parts if part["failure"]]
    report_failure, report_error = None, None
    if state.is_main_process:
        try:
            output_dir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(output_dir / "prediction_report.json", report.__dict__)
        except Exception as error:
            if state.num_processes == 1:
                raise
            report_failure, report_error = stop.fail(error), error
    if state.num_processes > 1:
        # Every process waits for the report (torchrun ends the others once one exits) and learns whether it was
        # written: none returns as if all went well while the main process raises (and leaves the group).
        [report_failure] = broadcast_object_list([report_failure])
    stop.raise_for(failures, own_error)
    stop.raise_for([report_failure] if report_failure else [], report_error)
    return report


def check_batch_options(output_dir: Path, batch_size: int) -> int:
    """A ``batch_size`` of at least one, and an ``output_dir`` that is (or can become) a folder: said before a
    model runs, not at the first write. Returns the batch size as an int (a NumPy integer: torch's DataLoader
    refuses it, saying "batch_size should be a positive integer value, but got batch_size=2")."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size (--batch-size) must be an integer >= 1, got {batch_size!r}")
    problem = output_folder_problem(output_dir)
    if problem:
        raise ValueError(f"--output-dir {problem}")
    return int(batch_size)


def remove_leftover_temporaries(output_dir: Path) -> list[Path]:
    """The temporary files a killed run left in the output folders (see :func:`dsunet_hf.files.remove_stale_temporaries`:
    only those an hour old, so that a run writing into the same folder meanwhile keeps its own); removed at the
    start of a run, as it would otherwise leave them there for ever (a finished output is never rewritten)."""
    removed = remove_stale_temporaries(output_dir, recursive=False)  # prediction_report.json's
    for kind in OUTPUT_KINDS:
        removed += remove_stale_temporaries(Path(output_dir) / kind)
    return removed


def _pending_inputs(inputs: list[str | Path], output_dir: Path, kinds: list[str], semantic: bool,
                    overwrite: bool, state, stop) -> tuple[list[tuple[Path, Path]], list[str]]:
    """The (path, name) pairs of ``inputs`` still to predict and the paths whose outputs are already there, listed
    by the main process alone and sent to every other: processes listing the inputs (files still arriving, a
    permission error on one node) or the output folder (another process already writing) each on their own would
    split different lists, or fail on some processes only, which the others would wait for at the next collective.
    The main process first removes what a killed run left (before the others start writing). Should that or the
    listing fail there, its error is sent instead and every process raises it (``stop``: a
    :class:`~dsunet_hf.distributed.ProcessFailures`), rather than the others waiting in the broadcast for the
    group's timeout (30 minutes) when the main process lives on."""
    pending, skipped_existing, failure, error = [], [], None, None
    if state.is_main_process:
        try:
            images = collect_images(inputs, exclude=output_dir)
            remove_leftover_temporaries(output_dir)
            for path, name in images:
                if not overwrite and is_finished(output_dir, path, name, kinds, semantic):
                    skipped_existing.append(str(path))
                else:
                    pending.append((path, name))
        except Exception as caught:
            if state.num_processes == 1:
                raise
            failure, error = stop.fail(caught), caught
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        pending, skipped_existing, failure = broadcast_object_list([pending, skipped_existing, failure])
        stop.raise_for([failure] if failure else [], error, started=False)
    return pending, skipped_existing


def _check_prediction_options(model, processor, semantic: bool, *, cutout_colors: str, resolution: str,
                              schedule: str | None, crop_margin: float, threshold: float | None,
                              foreground_only: dict[str, bool]) -> None:
    """Refuse option combinations the model cannot honour, before anything runs."""
    if cutout_colors not in CUTOUT_COLORS:
        raise ValueError(f"cutout_colors must be one of {CUTOUT_COLORS}, got {cutout_colors!r}")
    if threshold is not None and not 0 <= threshold <= 1:  # e.g. 128 meant on the 0..255 masks: all black (NaN too)
        raise ValueError(f"threshold={threshold}: it applies to the foreground probabilities, between 0 and 1")
    if semantic and any(foreground_only.values()):
        raise ValueError(class_map_refusal(foreground_only, type(model).__name__))
    if foreground_only["crop_refine"] and not (math.isfinite(crop_margin) and crop_margin >= 0):
        raise ValueError(f"crop_margin must be >= 0 and finite (a fraction of the foreground box's longer side), got "
                         f"{crop_margin}")
    if schedule is not None and not semantic:
        raise ValueError(f"schedule={schedule!r}: inference schedules are for multi-class models (DINOv2 heads, "
                         f"multi-class SAM2-UNet / DSU-Net); {type(model).__name__} predicts one foreground map")
    check_resolution(model, processor, resolution, semantic)


def class_map_refusal(given: dict[str, bool], model_name: str) -> str:
    """The refusal of foreground-map options (``given``: their names, as keywords or flags) for a class-map model."""
    return (f"{', '.join(k for k, v in given.items() if v)}: for models that predict one foreground map; {model_name} "
            f"predicts class maps (palette masks, --overlay)")


def check_resolution(model, processor, resolution: str, semantic: bool = False) -> None:
    """``resolution`` is "model" or "native", and "native" only for a model that takes any size."""
    if resolution not in ("model", "native"):
        raise ValueError(f"resolution must be 'model' or 'native', got {resolution!r}")
    if resolution == "native" and (semantic or getattr(processor, "extra_sizes", None)):
        raise ValueError(f"resolution='native' needs a single-input binary model that takes any size (BiRefNet, "
                         f"SAM2-UNet); {type(model).__name__} has fixed-size inputs or its own multi-scale inference")
    from .onnx_export import OnnxSegmentationModel

    if resolution == "native" and isinstance(model, OnnxSegmentationModel) and not model.dynamic_size:
        raise ValueError(f"resolution='native': {model.folder} is an ONNX graph of fixed size "
                         f"{model.input_size}; export with --dynamic-size for one that takes any size")


def load_model_and_processor(name_or_path: str, device: str | None = None, dtype: torch.dtype | None = None, *,
                             verify_backbone_weights: bool = True, backbone_sources: dict | None = None, **kwargs):
    """Any dsunet-hf artifact (local folder or Hub id) with its saved image processor (or the default), ready
    for inference: in eval mode, with LoRA merged into the frozen weights (``merge_lora``).
    ``verify_backbone_weights=False`` loads a trainable-only artifact on frozen backbone weights other than those it
    was saved with (see ``from_pretrained``); ``backbone_sources`` (e.g. ``{"backbone_revision": "abc123"}``, fields
    of its config) loads its frozen backbones from another repo, folder or revision. An ONNX graph or official
    BiRefNet weights, which hold all their weights, refuse both. ``kwargs`` go to ``from_pretrained``: ``revision``
    (a Hub repo's branch, tag or commit: the processor, an ONNX export's graph too) and ``variant`` (weights saved
    with ``save_pretrained(variant=...)``; official BiRefNet weights: the official variant, ``from_official``'s;
    refused for an ONNX graph, which has none)."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageSegmentation

    from .convert.birefnet import is_official_birefnet_source
    from .onnx_export import OnnxSegmentationModel, is_onnx_export, onnx_export_from_hub

    name_or_path = expand_home(name_or_path)  # "~/models/x" (--model=~/..., which no shell expands)
    backbone_sources = backbone_sources or {}
    given = " and ".join(flag for flag, on in (("--no-verify-backbone-weights", not verify_backbone_weights),
                                               ("--backbone-source", bool(backbone_sources))) if on)
    # A folder written by `dsunet-hf export onnx`, or a Hub repo it was pushed to: run by onnxruntime.
    onnx_folder = name_or_path if is_onnx_export(name_or_path) else onnx_export_from_hub(name_or_path,
                                                                                          kwargs.get("revision"))
    if onnx_folder is not None:
        if (device is not None and str(device) != "cpu") or dtype not in (None, torch.float32):
            raise ValueError(f"{name_or_path} is an ONNX graph (fp32): onnxruntime picks its devices (CUDA with "
                             f"onnxruntime-gpu); leave out --device and --dtype")
        if given:  # rather than silently ignored
            raise ValueError(f"{name_or_path} is an ONNX graph, which holds all its weights: no backbone weights "
                             f"load apart to verify or choose; leave out {given}")
        if kwargs.get("variant"):  # rather than silently ignored: the graph is what it is
            raise ValueError(f"{name_or_path} is an ONNX graph: it has no weight variants (model.<variant>."
                             f"safetensors) to choose from; leave out --variant")
        model = OnnxSegmentationModel(onnx_folder)
        processor = AutoImageProcessor.from_pretrained(model.folder)
        _check_processor_sizes(processor, model.folder)
        return model, processor
    if is_official_birefnet_source(name_or_path, kwargs.get("revision")):
        # Official BiRefNet weights (Hub id such as ZhengPeng7/BiRefNet, folder or .pth/.safetensors file).
        from .models.birefnet import BiRefNetForImageSegmentation

        if given:  # rather than silently ignored
            raise ValueError(f"{name_or_path} holds BiRefNet's whole official weights: no backbone weights load apart "
                             f"to verify or choose; leave out {given}")

        with readable_weights(name_or_path):
            model = BiRefNetForImageSegmentation.from_official(name_or_path, **kwargs)
        return _to(model, device, dtype).eval(), model.default_image_processor()
    if given:  # rather than ignored (self-contained) or transformers' TypeError (a field it has not)
        config = AutoConfig.from_pretrained(name_or_path, revision=kwargs.get("revision"))
        if getattr(config, "backbone_weights_included", False):
            raise ValueError(f"{name_or_path} is self-contained (it holds its backbone weights): none load from "
                             f"elsewhere; leave out {given}")
        fields = [f"{stem}_{key}" for stem in ("backbone", "sam_backbone", "dino_backbone", "base")
                  for key in ("repo_id", "revision") if hasattr(config, f"{stem}_{key}")]
        for field in backbone_sources:
            if field not in fields:
                raise ValueError(f"a {config.model_type} model loads no backbone from {field} (--backbone-source); "
                                 f"its fields: {', '.join(fields) or 'none'}")
    # Inference only: LoRA folded into the frozen weights (in fp32, before the dtype cast).
    with readable_weights(name_or_path):
        model = AutoModelForImageSegmentation.from_pretrained(
            name_or_path, merge_lora=True, verify_backbone_weights=verify_backbone_weights,
            **{**kwargs, **backbone_sources})
    model = _to(model, device, dtype)
    try:
        processor = AutoImageProcessor.from_pretrained(name_or_path, revision=kwargs.get("revision"))
    except (OSError, ValueError) as error:
        saved = _saved_processor_config(name_or_path, kwargs.get("revision"))
        if saved is None:  # none saved (e.g. a converted checkpoint): the model's default
            processor = model.default_image_processor()
        else:  # a damaged one is not silently replaced by a default that may have another size or normalisation
            raise ValueError(f"{saved}: not a readable image processor config ({_first_line(error)})") from error
    _check_processor_sizes(processor, name_or_path)
    # A processor saved before the post-processing order was recorded: its model's order and upstream resizing.
    return model.eval(), processor_for_model(processor, model)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


@contextlib.contextmanager
def readable_weights(name_or_path: str | Path):
    """safetensors' SafetensorError (a truncated or damaged file) as an OSError naming the file, as the callers'
    ``except (ValueError, OSError)`` report every other unreadable model: it derives from Exception only."""
    from safetensors import SafetensorError

    try:
        yield
    except SafetensorError as error:
        path = Path(name_or_path)
        files = sorted(path.glob("*.safetensors")) if path.is_dir() else []
        where = files[0] if len(files) == 1 else path
        raise OSError(f"{where}: not a readable safetensors file, truncated or damaged ({error}); download or "
                      f"save it again") from error


def _saved_processor_config(name_or_path: str | Path, revision: str | None = None) -> Path | None:
    """The model's ``preprocessor_config.json`` (a folder's, or a Hub repo's in the local cache, where loading has
    just fetched it), None when there is none."""
    name = "preprocessor_config.json"
    if Path(name_or_path).is_dir():
        path = Path(name_or_path) / name
        return path if path.exists() else None
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(str(name_or_path), name, revision=revision)
    except ValueError:  # not a repo id
        return None
    return Path(cached) if isinstance(cached, str) else None


def _check_processor_sizes(processor, name_or_path) -> None:
    """A saved processor whose size (or a DSU-Net extra view's) is not positive: said now, not by every image in
    a loader worker."""
    sizes = {"size": getattr(processor, "size", None), **{f"extra_sizes.{key}": value for key, value in
                                                          (getattr(processor, "extra_sizes", None) or {}).items()}}
    for field_name, size in sizes.items():
        if not isinstance(size, dict):
            continue
        sides = [size.get(side) for side in ("height", "width") if side in size]
        if any(isinstance(side, bool) or not isinstance(side, int) or side < 1 for side in sides):
            where = (Path(name_or_path) / "preprocessor_config.json" if Path(name_or_path).is_dir()
                     else f"the preprocessor_config.json of {name_or_path}")
            raise ValueError(f"{where}: {field_name} {size}: height and width must be positive integers")


def _to(model, device, dtype):
    if dtype is not None:
        model = model.to(dtype)
    return model.to(device) if device is not None else model


def contact_sheet(rows: list[tuple[Image.Image, np.ndarray | None, np.ndarray]], cell: int = 160) -> Image.Image:
    """One PNG a person can look at: per row the image, its ground truth (if any) and the predicted overlay."""
    columns = 3 if any(gt is not None for _, gt, _ in rows) else 2
    sheet = Image.new("RGB", (columns * cell, len(rows) * cell), (255, 255, 255))
    for row, (image, ground_truth, probability) in enumerate(rows):
        tiles = [image.convert("RGB")]
        if columns == 3:
            gt = ground_truth if ground_truth is not None else np.zeros_like(probability)
            tiles.append(Image.fromarray((np.asarray(gt, dtype=np.float32) * 255).round().astype(np.uint8)).convert("RGB"))
        tiles.append(overlay_image(image, probability))
        for column, tile in enumerate(tiles):
            tile = tile.copy()
            tile.thumbnail((cell - 4, cell - 4))
            sheet.paste(tile, (column * cell + 2, row * cell + 2))
    return sheet

"""Segmentation data as ``datasets.Dataset``: local image/mask folders, imagefolder, Hub datasets.

Every loader returns a dataset with the columns ``image``, ``mask`` and ``sample_id`` (int, stable per
sample). For local folders ``image``/``mask`` hold file paths, decoded lazily by :mod:`dsunet_hf.image_io`
(EXIF orientation, gray/RGBA/CMYK/palette/16-bit images, 0/1, 0/255 and lossy 3-channel JPEG masks), so
every decoding error names its file. Imagefolder and Hub datasets keep what ``datasets`` decodes (PIL images).

:class:`SegmentationTransform` turns rows into model inputs with ``Dataset.with_transform``; its training
augmentation (SAM2-UNet's horizontal + vertical flips) is a pure function of ``(seed, epoch, sample_id)``
so that a resumed run replays exactly the augmentation of an uninterrupted one.

Files that a local folder holds but the dataset does not use (unpaired, unreadable, size mismatch,
duplicate names) are logged as warnings and recorded in ``dataset.info.description``;
:func:`dropped_files` returns them as ``{path: reason}``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from PIL import Image

from .image_io import (
    IMAGE_EXTENSIONS,
    ImageReadError,
    decodable_cell,
    displayed_size,
    load_cell,
    load_image,
    load_mask,
)

__all__ = [
    "IMAGE_DIR_NAMES",
    "MASK_DIR_NAMES",
    "IMAGE_EXTENSIONS",
    "DatasetUnavailableError",
    "PairScan",
    "SegmentationTransform",
    "collate_segmentation",
    "dataset_name",
    "dropped_files",
    "find_image_mask_pairs",
    "find_labels_file",
    "load_segmentation_dataset",
    "pair_folders",
    "train_validation_split",
    "verify_pairs",
]

logger = logging.getLogger(__name__)


# Recognised folder names, in order of preference. Names are compared case-insensitively with "-", "_" and
# spaces treated alike ("Ground Truth" == "ground_truth"). The two lists share no name, and a name like
# "DUTS-TR-Image" / "ISIC2018_Task1_Training_GroundTruth" is also recognised by its last word (see
# _IMAGE_WORDS / _MASK_WORDS), after every exact name.
IMAGE_DIR_NAMES = (
    "images", "image", "imgs", "img", "im", "jpegimages", "rgb", "input", "inputs", "original",
)
MASK_DIR_NAMES = (
    "masks", "mask", "gt", "gts", "gt_object", "gt_masks", "ground_truth", "ground_truth_mask",
    "ground_truth_masks", "groundtruth", "labels", "label", "annotations", "annotation", "segmentations",
    "segmentation", "segmentationclass", "segmentationclassaug", "segmentationobject",
)
_IMAGE_WORDS = ("image", "images", "img", "imgs", "input", "rgb")
_MASK_WORDS = ("mask", "masks", "gt", "gts", "groundtruth", "ground_truth", "label", "labels", "annotation",
               "annotations", "segmentation")
# Split folders (normalised: lower case, no separators) -> canonical split name.
_SPLIT_ALIASES = {
    **dict.fromkeys(("train", "training", "trainset", "traindataset", "traindata"), "train"),
    **dict.fromkeys(("val", "valid", "validation", "dev", "valset", "validationset", "valdataset"), "validation"),
    **dict.fromkeys(("test", "testing", "testset", "testdataset", "testdata"), "test"),
}
# Mask file names sometimes carry a suffix: ISIC_0000000_segmentation.png, 0001_mask.png, 0001-gt.png.
MASK_STEM_SUFFIXES = ("_segmentation", "_mask", "-mask", "_gt", "-gt", "_label", "_labels", "_anno", "_annotation")
_JUNK_FILES = {".ds_store", "thumbs.db", "desktop.ini"}
IMAGE_COLUMN_NAMES = ("image", "img", "images", "input", "rgb", "pixel_values")  # the last: transformers' examples
MASK_COLUMN_NAMES = ("mask", "label", "annotation", "segmentation", "gt",
                     "masks", "labels", "annotations", "segmentation_mask", "ground_truth", "gt_mask")
_DROPPED_MARKER = "dropped-files-json: "
# How many pairs a local folder held before verification dropped any: their sample_ids number them all, and
# train_validation_split splits them all (see there).
_PAIRS_FOUND_MARKER = "pairs-found: "
_DATASETS_BUILDER_NAMES = {"imagefolder", "parquet", "arrow", "json", "csv", "generator", "text", "webdataset"}


class DatasetUnavailableError(FileNotFoundError):
    """A Hub dataset could not be loaded (not cached offline, unknown id, no access); the message says what to do."""


@dataclass
class PairScan:
    """Images and masks of a folder matched by file name (relative path without extension).

    ``pairs`` are ``(image_path, mask_path)`` sorted by name; ``problems`` maps a file that is not used
    (besides the unpaired ones) to the reason, e.g. two images with the same name.
    """

    pairs: list[tuple[str, str]] = field(default_factory=list)
    unpaired_images: list[str] = field(default_factory=list)
    unpaired_masks: list[str] = field(default_factory=list)
    problems: dict[str, str] = field(default_factory=dict)
    root: str = ""
    image_dir: str = ""
    mask_dir: str = ""

    def relative(self, path: str) -> str:
        """``path`` relative to the scanned root, for messages."""
        try:
            return Path(path).relative_to(self.root).as_posix() if self.root else path
        except ValueError:
            return path


# ----------------------------------------------------------------------------------------- folder layouts
def _norm(name: str) -> str:
    return re.sub(r"[-_\s]+", "_", name.strip().lower())


def _split_key(name: str) -> str:
    return re.sub(r"[-_\s]+", "", name.strip().lower())


def _rank(name: str, exact: Sequence[str], words: Sequence[str]) -> int | None:
    """Preference rank of a folder name for a role (lower is better), or None if not recognised."""
    n = _norm(name)
    if n in exact:
        return exact.index(n)
    if any(n.endswith("_" + w) for w in words):
        return len(exact)
    return None


def _subdirs(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []


def _walk(folder: Path):
    """``os.walk`` into symlinked folders too (a dataset merged from others by links: ``images/kvasir -> ...``, whose
    files were silently left out), each real folder once (a link to a folder above would loop)."""
    seen = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        yield dirpath, dirnames, filenames


def _has_image_file(folder: Path) -> bool:
    return any(Path(name).suffix.lower() in IMAGE_EXTENSIONS for _, _, names in _walk(folder) for name in names)


def _pick(folder: Path, role: str, exact: Sequence[str], words: Sequence[str]) -> Path | None:
    ranked = [(r, p) for p in _subdirs(folder) if (r := _rank(p.name, exact, words)) is not None]
    if len(ranked) > 1:  # folders without image files are no candidates (Pascal VOC's Annotations/ holds XML)
        ranked = [(r, p) for r, p in ranked if _has_image_file(p)] or ranked
    if not ranked:
        return None
    best = min(r for r, _ in ranked)
    chosen = [p for r, p in ranked if r == best]
    if len(chosen) > 1:
        raise ValueError(
            f"{folder}: ambiguous {role} folders {[p.name for p in chosen]}; pass one of their parents or "
            "rename all but one"
        )
    others = [p.name for r, p in ranked if r != best]
    if others:
        logger.info("%s: using %s/ as the %s folder (also recognised: %s)", folder, chosen[0].name, role, others)
    return chosen[0]


def _layout(folder: Path) -> tuple[Path, Path] | None:
    """The (image folder, mask folder) directly inside ``folder``, or None."""
    image_dir = _pick(folder, "image", IMAGE_DIR_NAMES, _IMAGE_WORDS)
    mask_dir = _pick(folder, "mask", MASK_DIR_NAMES, _MASK_WORDS)
    return (image_dir, mask_dir) if image_dir is not None and mask_dir is not None else None


def _no_layout_error(root: Path, detail: str = "") -> ValueError:
    names = [p.name + "/" for p in _subdirs(root)]
    return ValueError(
        f"{root}: no image/mask folder pair found{detail} (subfolders: {names or 'none'}). Expected an image "
        f"folder named like {', '.join(IMAGE_DIR_NAMES[:6])} and a mask folder named like "
        f"{', '.join(MASK_DIR_NAMES[:8])} (case-insensitive), either in this folder or one level down "
        "(e.g. TrainDataset/image + TrainDataset/mask, train/images + train/masks); or a metadata.jsonl "
        "for an imagefolder dataset"
    )


@contextmanager
def _quiet():
    """This module's messages unsaid, in this thread: a second look at a folder's layout (the labels file, the folders
    a split reads), whose choices the loader says once."""
    thread = threading.get_ident()

    def silent(record: logging.LogRecord) -> bool:
        return record.thread != thread

    logger.addFilter(silent)
    try:
        yield
    finally:
        logger.removeFilter(silent)


def _resolve_layout(root: Path, split: str | None) -> tuple[Path, Path, Path]:
    """(base folder, image folder, mask folder) for ``root`` and an optional split."""
    children = _subdirs(root)
    split_dirs = {c: _SPLIT_ALIASES[_split_key(c.name)] for c in children if _split_key(c.name) in _SPLIT_ALIASES}
    if split is not None:
        wanted = _SPLIT_ALIASES.get(_split_key(split), _split_key(split))
        matches = [c for c in children if split_dirs.get(c) == wanted or _split_key(c.name) == _split_key(split)]
        if matches:
            base = _one_split_folder(root, matches, split)
            found = _layout(base)
            if found is None:
                raise _no_layout_error(base, f" in the {split!r} split folder")
            return (base, *found)
        with_layout = [c.name for c in split_dirs if _layout(c)]
        if with_layout:
            raise ValueError(f"{root}: no folder for split {split!r}; split folders found: {with_layout}")
    found = _layout(root)
    if found is not None:
        return (root, *found)
    candidates = [c for c in children if _layout(c) is not None]
    if len(candidates) == 1:
        return (candidates[0], *_layout(candidates[0]))
    if len(candidates) > 1:
        train = [c for c in candidates if split_dirs.get(c) == "train"]
        if split is None and train:
            base = _one_split_folder(root, train, None)
            logger.info("%s: no split given, using the %s/ split folder", root, base.name)
            return (base, *_layout(base))
        names = [c.name for c in candidates]
        raise ValueError(
            f"{root}: several image/mask folders found in {names}; pass one of them (e.g. {root / names[0]})"
            + (" or split=..." if split_dirs else "")
        )
    image_dir = _pick(root, "image", IMAGE_DIR_NAMES, _IMAGE_WORDS)
    mask_dir = _pick(root, "mask", MASK_DIR_NAMES, _MASK_WORDS)
    if image_dir is not None:
        raise _no_layout_error(root, f": image folder {image_dir.name}/ has no mask folder beside it")
    if mask_dir is not None:
        raise _no_layout_error(root, f": mask folder {mask_dir.name}/ has no image folder beside it")
    # The commonest slip: --train-data TrainDataset/Imgs, the image (or mask) folder itself.
    for role, exact, words in (("image", IMAGE_DIR_NAMES, _IMAGE_WORDS), ("mask", MASK_DIR_NAMES, _MASK_WORDS)):
        if _rank(root.name, exact, words) is not None and _has_image_file(root):
            raise _no_layout_error(root, f": {root.name}/ is the {role} folder itself; pass its parent {root.parent}")
    raise _no_layout_error(root)


def _split_folders(folder: Path) -> dict[str, list[Path]]:
    """Split-named subfolders of ``folder`` by split (``training/`` -> ``"train"``); a split may have several
    (``val/`` and ``validation/``), see :func:`_one_split_folder`."""
    found: dict[str, list[Path]] = {}
    for p in _subdirs(folder):
        if _split_key(p.name) in _SPLIT_ALIASES:
            found.setdefault(_SPLIT_ALIASES[_split_key(p.name)], []).append(p)
    return found


def _split_names(splits: dict[str, list[Path]]) -> list[str]:
    return sorted(p.name for folders in splits.values() for p in folders)


def _one_split_folder(parent: Path, folders: list[Path], split: str | None) -> Path:
    """The folder of one split among its names (``val/`` and ``validation/``, ``train/`` and ``training/``): the
    only one, or the one named exactly as ``split`` (said in a warning), else an error. An error, not a preference
    order: two such folders often hold different images (an old and a new validation set), and training or scoring
    on the wrong one would give no other sign."""
    if len(folders) == 1:
        return folders[0]
    exact = ([p for p in folders if p.name == split] or [p for p in folders if _split_key(p.name) == _split_key(split)]
             if split is not None else [])
    names = [p.name + "/" for p in folders]
    if len(exact) == 1:
        logger.warning("%s: using %s/ for split %r; left out: %s", parent, exact[0].name, split,
                       [n for n in names if n != exact[0].name + "/"])
        return exact[0]
    itself = f", or the folder itself (e.g. {folders[0]})" if _layout(folders[0]) is not None else ""
    raise ValueError(f"{parent}: ambiguous split folders {names} for split {split or 'train'!r}; pass the exact "
                     f"folder name as the split (e.g. split={folders[0].name!r}, evaluate's --split){itself}")


def _has_top_level_image(folder: Path) -> bool:
    return any(p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS for p in folder.iterdir())


def _select_split(image_dir: Path, mask_dir: Path, split: str | None) -> tuple[Path, Path, list[Path]]:
    """ADE20K keeps its splits inside the image and mask folders (``images/training`` + ``annotations/training``):
    with a split, that pair; without one, the train pair (as for split folders beside each other), never the splits
    mixed (evaluate would score training images). Without split folders in both, the folders are used whole, except
    that CAMO's one flat ``GT/`` for ``Images/Train`` + ``Images/Test`` (split folders on one side only, nothing
    beside them) gives the split's folder + the flat one. The third item: the other split folders of that side, whose
    partners in the flat folder belong to another split (not reported as unpaired)."""
    image_splits, mask_splits = _split_folders(image_dir), _split_folders(mask_dir)
    one_sided = [(splits, folder) for splits, folder in ((image_splits, image_dir), (mask_splits, mask_dir))
                 if splits and not _has_top_level_image(folder)]
    if bool(image_splits) != bool(mask_splits) and one_sided:
        splits, folder = one_sided[0]
        wanted = "train" if split is None else _SPLIT_ALIASES.get(_split_key(split), _split_key(split))
        if wanted not in splits:
            raise ValueError(f"{folder}: no folder for split {split or 'train'!r}; split folders found: "
                             f"{_split_names(splits)}")
        chosen = _one_split_folder(folder, splits[wanted], split)
        if split is None:
            logger.warning("%s: no split given, using %s/%s", folder.parent, folder.name, chosen.name)
        others = [p for folders in splits.values() for p in folders if p != chosen]
        return (chosen, mask_dir, others) if folder == image_dir else (image_dir, chosen, others)
    if not image_splits or not mask_splits:
        return image_dir, mask_dir, []
    if split is None:
        if "train" not in image_splits or "train" not in mask_splits:
            return image_dir, mask_dir, []
        image_split = _one_split_folder(image_dir, image_splits["train"], None)
        mask_split = _one_split_folder(mask_dir, mask_splits["train"], None)
        others = sorted(p.name for name, folders in image_splits.items() if name != "train" for p in folders)
        logger.warning("%s: no split given, using %s/%s + %s/%s (not %s; pass split=... for another)",
                       image_dir.parent, image_dir.name, image_split.name, mask_dir.name, mask_split.name, others)
        return image_split, mask_split, []
    wanted = _SPLIT_ALIASES.get(_split_key(split), _split_key(split))
    if wanted in image_splits and wanted in mask_splits:
        return (_one_split_folder(image_dir, image_splits[wanted], split),
                _one_split_folder(mask_dir, mask_splits[wanted], split), [])
    found = "; ".join(f"{folder.name}/: {_split_names(splits)}"
                      for folder, splits in ((image_dir, image_splits), (mask_dir, mask_splits)))
    raise ValueError(f"{image_dir.parent}: no folder for split {split!r}; split folders found in {found}")


def _list_files(folder: Path) -> tuple[dict[str, list[Path]], list[Path]]:
    """Image files under ``folder`` (recursive) keyed by relative path without extension, and other files."""
    images: dict[str, list[Path]] = {}
    others: list[Path] = []
    for dirpath, dirnames, filenames in _walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or name.lower() in _JUNK_FILES:
                continue
            path = Path(dirpath) / name
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                key = path.relative_to(folder).with_suffix("").as_posix()
                images.setdefault(key, []).append(path)
            else:
                others.append(path)
    return images, others


def _image_names(key: str) -> list[str]:
    """The image names a mask's name may stand for: itself, without a mask suffix (``0001_mask``), without the image's
    extension (``0001.jpg`` for ``0001.jpg.png``, as some annotation tools name a mask after its image file)."""
    lower = key.lower()
    names = [key] + [key[: -len(suffix)] for suffix in MASK_STEM_SUFFIXES if lower.endswith(suffix)]
    extension = Path(key).suffix
    if extension.lower() in IMAGE_EXTENSIONS:
        names.append(key[: -len(extension)])
    return names


def _mask_key(key: str, image_keys: set[str]) -> str:
    return next((name for name in _image_names(key) if name in image_keys), key)


def _pair_ignoring_case(image_keys: list[str], lone_masks: dict[str, Path]) -> dict[str, Path]:
    """Unpaired images and masks whose names differ in case only (``IMG_1.JPG`` + ``img_1.png``, as a dataset made
    on a case-insensitive file system has them), where the match is unique both ways: ``{image key: mask}``. The
    masks paired are removed from ``lone_masks``."""
    by_lower: dict[str, list[str]] = {}
    for key in image_keys:
        by_lower.setdefault(key.lower(), []).append(key)
    claims: dict[str, list[str]] = {}  # image key -> mask keys that match it
    for mask_key in lone_masks:
        matches = {key for name in _image_names(mask_key) for key in by_lower.get(name.lower(), [])}
        if len(matches) == 1:
            claims.setdefault(matches.pop(), []).append(mask_key)
    found = {key: lone_masks.pop(masks[0]) for key, masks in claims.items() if len(masks) == 1}
    if found:
        logger.info("paired %d image(s) with a mask whose name differs in case only", len(found))
    return found


def _preview(paths: Sequence[str], scan: PairScan, limit: int = 5) -> str:
    shown = ", ".join(scan.relative(p) for p in paths[:limit])
    return shown + (f", ... ({len(paths) - limit} more)" if len(paths) > limit else "")


def find_image_mask_pairs(root: str | os.PathLike, split: str | None = None) -> PairScan:
    """Find the image and mask folders of a benchmark-style dataset and match their files by name.

    The folders are looked for in ``root`` itself, else one level down (``TrainDataset/image`` +
    ``TrainDataset/mask``; with several candidates the ``train`` split folder, else an error). With
    ``split`` a split subfolder (``train/``, ``val/``/``validation/``, ``test/``, or any subfolder of that
    name) is used when there is one; inside the image and mask folders too (ADE20K: ``images/training`` +
    ``annotations/training``; there a split that is not found is an error, and no split is the train pair). Files are matched by their path relative to the image/mask folder
    without extension (a mask suffix like ``_mask`` or ``_segmentation``, or the image's own extension as in
    ``0001.jpg.png``, is tolerated); pairs are sorted by that name. Unpaired files and name clashes are reported in
    one warning. ``split`` may carry datasets' slice (``"test[:10%]"``): the pairs
    :func:`load_segmentation_dataset` takes for it (the files that are not used are still those of the whole split).

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        ValueError: no recognised layout (the message names ``root`` and its subfolders), or an ambiguous one.
    """
    split, spec = _split_slice(split)
    root_path = Path(os.path.abspath(os.path.expanduser(os.fspath(root))))
    if not root_path.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    scan = _scan_pairs(root_path, split)
    scan.pairs = [scan.pairs[i] for i in _slice_rows(spec, len(scan.pairs), str(root_path), "pairs")]
    return scan


def pair_folders(root: str | os.PathLike, split: str | None = None) -> tuple[Path, Path]:
    """The (image folder, mask folder) that :func:`find_image_mask_pairs` reads for ``split``, without listing their
    files and without a message (the loader says its choices and the files it leaves out, once). Raises as it does."""
    root_path = Path(os.path.abspath(os.path.expanduser(os.fspath(root))))
    if not root_path.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    split = split_name(split)
    with _quiet():
        _, image_dir, mask_dir = _resolve_layout(root_path, split)
        return _select_split(image_dir, mask_dir, split)[:2]


def _scan_pairs(root_path: Path, split: str | None) -> PairScan:
    """:func:`find_image_mask_pairs` for a split without a slice."""
    _, image_dir, mask_dir = _resolve_layout(root_path, split)
    image_dir, mask_dir, other_splits = _select_split(image_dir, mask_dir, split)
    scan = PairScan(root=str(root_path), image_dir=str(image_dir), mask_dir=str(mask_dir))

    images, image_others = _list_files(image_dir)
    masks, mask_others = _list_files(mask_dir)
    if other_splits:  # a flat folder shared by the splits: the other splits' files are theirs, not unpaired
        elsewhere = {key for folder in other_splits for key in _list_files(folder)[0]}
        if other_splits[0].parent == image_dir.parent:  # split images, one mask folder
            masks = {key: paths for key, paths in masks.items()
                     if _mask_key(key, set(images)) in images or _mask_key(key, elsewhere) not in elsewhere}
        else:  # split masks, one image folder
            mine = {_mask_key(key, set(images)) for key in masks}
            theirs = {_mask_key(key, set(images)) for key in elsewhere}
            images = {key: paths for key, paths in images.items() if key in mine or key not in theirs}
    for path in image_others + mask_others:
        scan.problems[str(path)] = f"{scan.relative(str(path))} is not an image file (extension {path.suffix or 'none'})"
    # Name clashes ("0001.jpg" + "0001.png"; "0001.png" + "0001_mask.png" for one image) are not guessed at:
    # every file involved, and its would-be partner, is reported and left out.
    clashes: dict[str, list[Path]] = {}
    for key, paths in images.items():
        if len(paths) > 1:
            clashes[key] = list(paths)
    image_keys = set(images)
    mask_claims: dict[str, list[Path]] = {}
    for key, paths in masks.items():
        for path in paths:
            mask_claims.setdefault(_mask_key(key, image_keys), []).append(path)
    for key, paths in mask_claims.items():
        if len(paths) > 1:
            clashes[key] = clashes.get(key, []) + paths
    for key, paths in clashes.items():
        involved = list(dict.fromkeys(paths + images.get(key, []) + mask_claims.get(key, [])))
        names = [scan.relative(str(p)) for p in involved]
        for path in involved:
            scan.problems[str(path)] = f"ambiguous name {key!r}: {', '.join(names)}"
    paired = {key: mask_claims[key][0] for key in images if key in mask_claims and key not in clashes}
    lone_masks = {key: paths[0] for key, paths in mask_claims.items() if key not in images and key not in clashes}
    paired.update(_pair_ignoring_case([key for key in images if key not in paired and key not in clashes], lone_masks))
    for key in sorted(images):
        if key in paired:
            scan.pairs.append((str(images[key][0]), str(paired[key])))
        elif key not in clashes:
            scan.unpaired_images.append(str(images[key][0]))
    scan.unpaired_masks = sorted(str(path) for path in lone_masks.values())

    messages = []
    if scan.unpaired_images:
        messages.append(f"{len(scan.unpaired_images)} image(s) without a mask in {mask_dir.name}/: "
                        + _preview(scan.unpaired_images, scan))
    if scan.unpaired_masks:
        messages.append(f"{len(scan.unpaired_masks)} mask(s) without an image in {image_dir.name}/: "
                        + _preview(scan.unpaired_masks, scan))
    if scan.problems:
        reasons = list(dict.fromkeys(scan.problems.values()))
        messages.append(f"{len(scan.problems)} file(s) skipped: " + "; ".join(reasons[:5])
                        + (f"; ... ({len(reasons) - 5} more)" if len(reasons) > 5 else ""))
    if messages:
        logger.warning("%s: %d pairs; ignored %s", root_path, len(scan.pairs), " | ".join(messages))
    return scan


# ----------------------------------------------------------------------------------------- verification
def _oriented_size(path: str) -> tuple[int, int]:
    """(width, height) after EXIF orientation, from the file header (pixel data is not decoded; a PNG's EXIF from
    the chunks before the pixels only): see :func:`dsunet_hf.image_io.displayed_size`."""
    return displayed_size(path, header_only=True)


def _decoded_size(path: str, what: str) -> tuple[int, int]:
    if what == "image":
        image = load_image(path)
        return image.width, image.height
    mask = load_mask(path)
    return mask.shape[1], mask.shape[0]


def _check_pair(pair: tuple[str, str], scan: PairScan, full: bool) -> tuple[str, dict[str, str]] | None:
    """None if the pair is usable, else (message, {file: reason} for both files of the pair)."""
    image_path, mask_path = pair
    image_name, mask_name = scan.relative(image_path), scan.relative(mask_path)
    sizes = {}
    for what, path, name in (("image", image_path, image_name), ("mask", mask_path, mask_name)):
        try:
            sizes[what] = _decoded_size(path, what) if full else _oriented_size(path)
        except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, ... on bad files
            cause = err.__cause__ if isinstance(err, ImageReadError) and err.__cause__ else err
            reason = f"{name} cannot be read ({type(cause).__name__}: {cause})"
            partner, partner_name = (mask_path, mask_name) if what == "image" else (image_path, image_name)
            return f"{reason}; {partner_name} dropped with it", {path: reason, partner: f"its partner {reason}"}
    (iw, ih), (mw, mh) = sizes["image"], sizes["mask"]
    if (iw, ih) != (mw, mh):
        reason = f"{mask_name} is {mw}x{mh} but {image_name} is {iw}x{ih} (width x height)"
        return reason, {mask_path: reason, image_path: reason}
    return None


def verify_pairs(scan: PairScan, *, full: bool = False, num_proc: int | None = None) -> PairScan:
    """Drop pairs with an unreadable file or different image/mask sizes; return the updated ``scan``.

    By default only headers are read (fast: sizes and the EXIF orientation tag; orientations 5-8 swap
    width and height). With ``full=True`` every file is decoded, which also catches truncated pixel
    data. Dropped files are added to ``scan.problems`` and named, with the reason, in ONE warning.
    """
    full = bool(full)
    pairs = list(scan.pairs)
    if num_proc and num_proc > 1 and len(pairs) > 1:
        with ThreadPoolExecutor(max_workers=num_proc) as pool:
            results = list(pool.map(lambda pair: _check_pair(pair, scan, full), pairs))
    else:
        results = [_check_pair(pair, scan, full) for pair in pairs]
    kept, lines = [], []
    for pair, result in zip(pairs, results):
        if result is None:
            kept.append(pair)
        else:
            lines.append(result[0])
            scan.problems.update(result[1])
    scan.pairs = kept
    if lines:
        logger.warning(
            "%s: dropped %d of %d image/mask pairs:\n  %s", scan.root or "dataset", len(lines), len(pairs),
            "\n  ".join(lines),
        )
    return scan


def dropped_files(dataset: datasets.Dataset) -> dict[str, str]:
    """``{path: reason}`` for the files of a local folder that :func:`load_segmentation_dataset` did not use.

    Covers unpaired files, unreadable files, size mismatches and name clashes. Read from
    ``dataset.info.description`` (so it survives ``select``, ``train_test_split`` and
    ``with_transform``); ``{}`` for datasets that were not loaded from a local folder of pairs.
    """
    description = getattr(getattr(dataset, "info", None), "description", None) or ""
    for line in description.splitlines():
        if line.startswith(_DROPPED_MARKER):
            return dict(json.loads(line[len(_DROPPED_MARKER):]))
    return {}


# ----------------------------------------------------------------------------------------- loading
def _is_int_feature(feature: Any) -> bool:
    return isinstance(feature, datasets.Value) and (
        feature.dtype.startswith("int") or feature.dtype.startswith("uint")
    )


def _is_class_feature(feature: Any) -> bool:
    """Features that hold per-image class labels or numbers, never masks."""
    if isinstance(feature, datasets.ClassLabel):
        return True
    return isinstance(feature, datasets.Value) and feature.dtype not in ("string", "large_string", "binary",
                                                                         "large_binary")


def _is_text_not_paths(dataset: datasets.Dataset, name: str) -> bool:
    """Column ``name`` holds text that is no image file path (judged by its first row): class names in a "label"
    column, which was taken for the masks ("cannot read mask polyp")."""
    feature = dataset.features[name]
    if not (isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string") and len(dataset)):
        return False
    value = dataset.select_columns([name])[0][name]
    return value is not None and os.path.splitext(value)[1].lower() not in IMAGE_EXTENSIONS and not os.path.isfile(value)


def _with_sample_ids(dataset: datasets.Dataset) -> datasets.Dataset:
    """Keep an existing unique integer ``sample_id`` (a subset keeps its parent's ids), else number 0..n-1."""
    if "sample_id" in dataset.column_names:
        if _is_int_feature(dataset.features["sample_id"]):
            ids = list(dataset["sample_id"])
            if len(set(ids)) == len(ids):
                return dataset
        dataset = dataset.remove_columns("sample_id")
    return dataset.add_column("sample_id", list(range(len(dataset))))


def _normalise_columns(
    dataset: datasets.Dataset, image_column: str | None, mask_column: str | None, source: str
) -> datasets.Dataset:
    """Select + rename the image and mask columns to ``image``/``mask`` and add ``sample_id``."""
    columns = dataset.column_names
    features = dataset.features

    def choose(role: str, given: str | None, defaults: Sequence[str], exclude: str | None,
               other_names: Sequence[str]) -> str:
        if given is not None:
            if given not in columns:
                raise ValueError(f"{source}: no column {given!r} for the {role} (columns: {columns})")
            if _is_class_feature(features[given]):
                raise ValueError(
                    f"{source}: column {given!r} holds {features[given]!r}, not {role}s; pass {role}_column="
                )
            return given
        # A column named "mask" ("image") is that; "label" & co. often hold class names instead (as text: "polyp").
        named = [name for name in defaults if name in columns and name != exclude
                 and not _is_class_feature(features[name]) and (name == role or not _is_text_not_paths(dataset, name))]
        if named:
            return named[0]
        # Another name ("semantic_segmentation"): the one Image column left that is not named for the other role.
        unnamed = [name for name, feature in features.items()
                   if isinstance(feature, datasets.Image) and name != exclude and name not in other_names]
        if len(unnamed) == 1:
            logger.warning("%s: no column named like %ss; using the image column %r (pass %s_column= for another)",
                           source, role, unnamed[0], role)
            return unnamed[0]
        raise ValueError(
            f"{source}: cannot tell which column holds the {role}s (columns: {columns}); "
            f"pass {role}_column=... (--{role}-column)"
        )

    mask_col = choose("mask", mask_column, MASK_COLUMN_NAMES, image_column, IMAGE_COLUMN_NAMES)
    image_col = choose("image", image_column, IMAGE_COLUMN_NAMES, mask_col, MASK_COLUMN_NAMES)
    if image_col == mask_col:
        raise ValueError(f"{source}: image_column and mask_column are both {image_col!r}")
    keep = [image_col, mask_col] + (["sample_id"] if "sample_id" in columns and "sample_id" not in
                                     (image_col, mask_col) else [])
    dataset = dataset.select_columns(keep)
    renames = {old: new for old, new in ((image_col, "image"), (mask_col, "mask")) if old != new}
    if renames:
        dataset = dataset.rename_columns(renames)
    return _with_sample_ids(dataset)


def undecoded_images(dataset: datasets.Dataset) -> datasets.Dataset:
    """``dataset`` with its ``Image`` columns cast to ``Image(decode=False)``: cells reach the transforms as
    ``{"bytes", "path"}`` and are decoded there (:func:`~dsunet_hf.image_io.load_cell`), so a bad cell is named by
    its sample, column and file instead of failing inside ``datasets`` ("Truncated File Read"). Only the features
    change; no row is rewritten. Training applies it; :func:`load_segmentation_dataset` keeps decoded images."""
    for name, feature in dataset.features.items():
        if isinstance(feature, datasets.Image) and feature.decode:
            dataset = dataset.cast_column(name, datasets.Image(mode=feature.mode, decode=False))
    return dataset


def _set_name(dataset: datasets.Dataset, name: str) -> datasets.Dataset:
    dataset.info.dataset_name = name
    return dataset


def _pick_split(loaded: datasets.DatasetDict, split: str | None, source: str,
                whole_if_single: bool = True) -> datasets.Dataset:
    """The split asked for, by name or alias. ``whole_if_single``: a lone split stands for any split asked for (a
    folder without split subfolders); not for a Hub repo, whose lone split is a split of its own."""
    names = list(loaded.keys())
    if split is None:
        if "train" in loaded or len(names) == 1:
            return loaded["train" if "train" in loaded else names[0]]
        raise ValueError(f"{source}: several splits {names}; pass split=...")
    wanted = _SPLIT_ALIASES.get(_split_key(split), split)
    for name in (split, wanted):
        if name in loaded:
            return loaded[name]
    # A DatasetDict's own names for the split ("val", "valid", "dev" for validation), as for split folders.
    same = [name for name in names if _SPLIT_ALIASES.get(_split_key(name)) == wanted]
    if len(same) == 1:
        return loaded[same[0]]
    if len(same) > 1:  # as for split folders: no preference order between, say, "val" and "dev"
        raise ValueError(f"{source}: ambiguous splits {same} for split {split!r}; pass the exact split name")
    if len(names) == 1 and whole_if_single:  # a folder without split subfolders is used whole, whatever the split
        return loaded[names[0]]
    raise ValueError(f"{source}: no split {split!r}; splits: {names}")


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE or datasets.config.HF_HUB_OFFLINE)


def _load_hub(repo_id: str, split: str | None, num_proc: int | None, load_kwargs: dict) -> datasets.Dataset:
    aliases_only = False  # the repo has no split of the name asked: only its aliases may stand for it
    try:
        try:
            loaded = datasets.load_dataset(repo_id, split=split or "train", num_proc=num_proc, **load_kwargs)
        except ValueError as err:  # 'Unknown split "validation". Should be one of [...]': the repo names it "val"
            if "unknown split" not in str(err).lower():
                raise
            loaded = datasets.load_dataset(repo_id, num_proc=num_proc, **load_kwargs)  # every split; then the aliases
            split, aliases_only = split or "train", True
    except (ConnectionError, FileNotFoundError, datasets.exceptions.DatasetNotFoundError) as err:
        first_line = (str(err).splitlines() or [""])[0]
        local = f" There is no local folder {os.path.abspath(repo_id)} either." if "/" in repo_id or "." in repo_id else ""
        if _hub_offline():
            advice = (
                f"Hub access is off (HF_HUB_OFFLINE) and {repo_id!r} is not in the datasets cache. Download it "
                f"once where the Hub is reachable (datasets.load_dataset({repo_id!r}) caches it), or pass a local "
                "folder of image/mask pairs."
            )
        else:
            advice = (
                "Check the id (and your token for a private or gated dataset), or pass a local folder of "
                "image/mask pairs."
            )
        raise DatasetUnavailableError(
            f"cannot load Hub dataset {repo_id!r}: {type(err).__name__}: {first_line}. {advice}{local}"
        ) from err
    if isinstance(loaded, datasets.DatasetDict):
        loaded = _pick_split(loaded, split, repo_id, whole_if_single=not aliases_only)
    return loaded


# datasets' slicing syntax: "train[:10%]", "test[10:20]", "train[:50%](pct1_dropremainder)".
_SLICED_SPLIT = re.compile(r"\s*(?P<name>[^\[\]()+]+?)\s*(?P<slice>\[[^\[\]]*\](?:\([^()]*\))?)\s*")


def _split_slice(split: str | None) -> tuple[str | None, str | None]:
    """``"train[:10%]"`` -> ``("train", "[:10%]")``, a plain split name -> ``(name, None)``."""
    if split is None or not any(c in split for c in "[]()+"):
        return split, None
    match = _SLICED_SPLIT.fullmatch(split)
    if match is None:
        joined = ", not several joined with '+'" if "+" in split else ""
        raise ValueError(f"split={split!r}: one split name with an optional slice is supported (as 'train[:10%]', "
                         f"'test[10:20]'){joined}")
    try:  # a bad slice is named before anything is loaded
        datasets.ReadInstruction.from_spec("split" + match["slice"])
    except (ValueError, AssertionError) as err:
        raise ValueError(f"split={split!r}: bad slice: {err}") from None
    return match["name"], match["slice"]


def split_name(split: str | None) -> str | None:
    """The split a (possibly sliced) split names: ``"test[:50%]"`` -> ``"test"`` (its folder, its labels file)."""
    return _split_slice(split)[0]


def _slice_rows(spec: str | None, n: int, label: str, unit: str = "rows") -> range:
    """The rows of ``label``'s split of ``n`` that ``datasets.load_dataset(..., split="name" + spec)`` reads: its own
    arithmetic (percent boundaries rounded to the closest row, negative indices, clipping), so that both agree. A
    slice that selects none of them is an error (an empty dataset, or select()'s bare IndexError past the end)."""
    if spec is None:
        return range(n)
    try:
        (rows,) = datasets.ReadInstruction.from_spec("split" + spec).to_absolute({"split": n})
    except ValueError as err:  # pct1_dropremainder on fewer than 100 rows
        raise ValueError(f"{label}: split slice {spec!r} of {n} {unit}: {err}") from None
    rows = range(max(rows.from_, 0), min(rows.to, n))
    if n and not rows:
        raise ValueError(f"{label}: split slice {spec} selects none of the {n} {unit}")
    return rows


def _take_slice(dataset: datasets.Dataset, spec: str | None, label: str) -> datasets.Dataset:
    return dataset if spec is None else dataset.select(_slice_rows(spec, len(dataset), label))


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def load_segmentation_dataset(
    source: str | os.PathLike | datasets.Dataset | datasets.DatasetDict,
    split: str | None = None,
    *,
    image_column: str | None = None,
    mask_column: str | None = None,
    verify: bool | str = True,
    num_proc: int | None = None,
    **load_kwargs: Any,
) -> datasets.Dataset:
    """Load image/mask pairs as a ``datasets.Dataset`` with the columns ``image``, ``mask``, ``sample_id``.

    ``source`` may be:

    * a local folder of pairs in a benchmark layout (see :func:`find_image_mask_pairs`): ``image``/``mask``
      are file paths. With ``split``, a ``train/``, ``val/``/``validation/``, ``test/`` (or same-named)
      subfolder is used when there is one (also inside the image and mask folders, as ADE20K's
      ``images/training``), else the whole folder. Two folders of one split (``val/`` and ``validation/``) are an
      error unless ``split`` is the exact name of one;
    * a folder with ``metadata.jsonl`` (or ``.csv``/``.parquet``): an imagefolder dataset, where every
      ``*_file_name`` column becomes an Image column; the mask column is ``mask_column`` or the first of
      ``mask``, ``label``, ``annotation``, ``segmentation``, ``gt``, ... (a text column other than ``mask`` only when
      it holds image file paths, not class names; with none of these, the only Image column not named like an image,
      said in a warning);
    * a folder written by ``Dataset.save_to_disk``, or holding ``*.parquet`` files;
    * a Hub dataset id (``split`` defaults to ``"train"``); offline it must be in the datasets cache,
      otherwise :class:`DatasetUnavailableError` names the id and says what to do;
    * a ``datasets.Dataset`` (or ``DatasetDict``), used as it is.

    ``split`` may carry datasets' slice (``"train[:10%]"``, ``"test[10:20]"``), for every source: the rows
    ``datasets.load_dataset`` reads for it, in file-name order for a folder of pairs.

    ``image_column``/``mask_column`` name the columns to use (renamed to ``image``/``mask``); other columns
    are dropped. ``sample_id`` is 0..n-1 in file-name order (a local folder numbers the pairs found, so a pair that
    verification drops leaves a gap), except that a dataset which already has a unique integer ``sample_id`` (e.g.
    a subset from :func:`train_validation_split`) keeps it.

    ``verify`` (local folders of pairs): ``True`` reads every file's header and drops unreadable files and
    image/mask size mismatches, ``"full"`` decodes every file (also catches truncated data), ``False``
    skips the check. Dropped files are named with the reason in one warning and recorded in
    ``dataset.info.description``; :func:`dropped_files` returns them. ``num_proc`` parallelises the check
    (threads) and is passed to ``datasets.load_dataset``; other keyword arguments (``cache_dir``,
    ``revision``, ``token``, ...) go to ``datasets.load_dataset`` too.
    """
    if load_kwargs.get("streaming") or isinstance(source, (datasets.IterableDataset, datasets.IterableDatasetDict)):
        raise ValueError(
            "streaming datasets (streaming=True, datasets.IterableDataset) are not supported: training and evaluation "
            "need the number of samples and random access. Load the dataset without streaming (it is downloaded "
            "and cached once), or pass a local folder of image/mask pairs"
        )
    split, spec = _split_slice(split)  # "train[:10%]": the train split's first 10%, as datasets reads it
    if isinstance(source, datasets.DatasetDict):
        source = _pick_split(source, split, "DatasetDict")
    if isinstance(source, datasets.Dataset):
        name = dataset_name(source)
        return _set_name(_take_slice(_normalise_columns(source, image_column, mask_column, name), spec, name), name)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"source must be a folder, a Hub dataset id or a datasets.Dataset, got {type(source).__name__}")

    text = os.fspath(source)
    path = Path(os.path.expanduser(text))
    name = dataset_name(source)
    if path.is_dir():
        dataset = _load_local(path, split, spec, image_column, mask_column, verify, num_proc, load_kwargs)
        return _set_name(dataset, name)
    if path.exists():
        raise ValueError(f"{text}: is a file; pass a folder of image/mask pairs, a Hub dataset id or a Dataset")
    if not _HUB_ID.match(text):
        raise FileNotFoundError(f"{text}: no such folder (and not a Hub dataset id)")
    dataset = _take_slice(_load_hub(text, split, num_proc, load_kwargs), spec, text)
    return _set_name(_normalise_columns(dataset, image_column, mask_column, text), name)


def _metadata_files(path: Path) -> list[Path]:
    names = ("metadata.jsonl", "metadata.csv", "metadata.parquet")
    found = [path / n for n in names if (path / n).is_file()]
    for child in _subdirs(path):
        found += [child / n for n in names if (child / n).is_file()]
    return found


def _load_local(
    path: Path, split: str | None, spec: str | None, image_column: str | None, mask_column: str | None,
    verify: bool | str, num_proc: int | None, load_kwargs: dict,
) -> datasets.Dataset:
    label = str(path)
    if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            loaded = _pick_split(loaded, split, label)
        return _normalise_columns(_take_slice(loaded, spec, label), image_column, mask_column, label)
    if _metadata_files(path):
        loaded = datasets.load_dataset("imagefolder", data_dir=str(path), num_proc=num_proc, **load_kwargs)
        return _normalise_columns(_take_slice(_pick_split(loaded, split, label), spec, label), image_column, mask_column, label)
    try:
        scan = _scan_pairs(Path(os.path.abspath(path)), split)
    except ValueError:
        if next(path.glob("**/*.parquet"), None) is not None:
            loaded = datasets.load_dataset(str(path), num_proc=num_proc, **load_kwargs)
            return _normalise_columns(_take_slice(_pick_split(loaded, split, label), spec, label), image_column, mask_column, label)
        raise
    # A slice takes its pairs in file-name order (imagefolder's order), which are then the dataset: numbered alone.
    rows = _slice_rows(spec, len(scan.pairs), str(path), "pairs")
    scan.pairs = [scan.pairs[i] for i in rows]
    # Numbered before verification drops any: a pair left out (a truncated file, after the hint to rerun with
    # --verify-data full) leaves a gap, and every other sample keeps its id, augmentation and validation side.
    found = {pair: index for index, pair in enumerate(scan.pairs)}
    if verify:
        verify_pairs(scan, full=verify == "full", num_proc=num_proc)
    if not scan.pairs:
        counts = [len(_list_files(Path(folder))[0]) for folder in (scan.image_dir, scan.mask_dir)]
        why = ("neither holds an image file" if counts == [0, 0] else
               f"they hold {counts[0]} and {counts[1]} image files; see the warnings above for why none is used")
        raise ValueError(
            f"{path}: no usable image/mask pairs in {scan.relative(scan.image_dir)}/ + "
            f"{scan.relative(scan.mask_dir)}/: {why}"
        )
    unused = dict(scan.problems)
    for p in scan.unpaired_images:
        unused[p] = f"no mask with the same name in {Path(scan.mask_dir).name}/"
    for p in scan.unpaired_masks:
        unused[p] = f"no image with the same name in {Path(scan.image_dir).name}/"
    description = (
        f"{len(scan.pairs)} image/mask pairs from {scan.root} (images: {scan.relative(scan.image_dir)}/, "
        f"masks: {scan.relative(scan.mask_dir)}/); {len(unused)} file(s) not used, see "
        f"dsunet_hf.data.dropped_files(dataset).\n{_DROPPED_MARKER}{json.dumps(unused)}\n"
        f"{_PAIRS_FOUND_MARKER}{len(found)}"
    )
    features = datasets.Features(
        {"image": datasets.Value("string"), "mask": datasets.Value("string"), "sample_id": datasets.Value("int64")}
    )
    return datasets.Dataset.from_dict(
        {
            "image": [image for image, _ in scan.pairs],
            "mask": [mask for _, mask in scan.pairs],
            "sample_id": [found[pair] for pair in scan.pairs],
        },
        info=datasets.DatasetInfo(description=description, features=features),
    )


def train_validation_split(
    dataset: datasets.Dataset, validation_ratio: float = 0.1, seed: int = 0
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Shuffle-split ``dataset`` into ``(train, validation)``; the same ``seed`` gives the same split.

    The validation part has ``ceil(validation_ratio * len(dataset))`` rows (as ``train_test_split``); rows
    keep their ``sample_id``. Raises ``ValueError`` if either part would be empty.

    A local folder whose verification dropped pairs is split by sample id over all the pairs found: the others stay
    on their side (at most one crosses), as they were before the drop. (Splitting the rows left would reshuffle the
    whole split: a run resumed after a truncated file was left out would validate on images it had trained on.)
    """
    if not 0.0 < float(validation_ratio) < 1.0:
        raise ValueError(f"validation_ratio must be between 0 and 1 (exclusive), got {validation_ratio}")
    n = len(dataset)
    n_validation = math.ceil(validation_ratio * n)
    if n_validation < 1 or n - n_validation < 1:
        raise ValueError(
            f"cannot split {n} sample(s) with validation_ratio={validation_ratio}: "
            f"{n - n_validation} train / {n_validation} validation; one side would be empty"
        )
    found = _pairs_found(dataset)
    if found is None or found == n:  # nothing dropped: the rows are the samples (sample_id = row)
        parts = dataset.train_test_split(test_size=n_validation, shuffle=True, seed=seed)
        return parts["train"], parts["test"]
    # train_test_split's permutation, of every pair found, skipping those dropped.
    row_of = {int(sample_id): row for row, sample_id in enumerate(dataset["sample_id"])}
    rows = [row_of[i] for i in np.random.default_rng(seed).permutation(found).tolist() if i in row_of]
    if len(rows) != n:  # ids that are not those of the pairs found (a dataset built otherwise): the rows as they are
        parts = dataset.train_test_split(test_size=n_validation, shuffle=True, seed=seed)
        return parts["train"], parts["test"]
    return dataset.select(rows[n_validation:]), dataset.select(rows[:n_validation])


def _pairs_found(dataset: datasets.Dataset) -> int | None:
    """How many pairs the local folder of ``dataset`` held before verification (None: not from a local folder)."""
    description = getattr(getattr(dataset, "info", None), "description", None) or ""
    for line in description.splitlines():
        if line.startswith(_PAIRS_FOUND_MARKER):
            return int(line[len(_PAIRS_FOUND_MARKER):])
    return None


def find_labels_file(source: Any, split: str | None = None) -> Path | None:
    """The ``id2label.json`` naming a local dataset's classes: in the folder itself, or, for a split folder
    (``organs/train``), beside the splits (``organs/id2label.json``), or beside the data the folder's layout
    resolves to for ``split`` (``organs/train/id2label.json`` for ``organs``, which loads ``organs/train``).
    None if there is none (or for a Hub id)."""
    split = split_name(split)  # "test[:50%]": the test folder's file
    folder = Path(os.path.expanduser(str(source)))  # "~/organs" (a recipe file, --train-data=~/...), as the loader
    candidates = [folder / "id2label.json"]
    if _split_key(folder.name) in _SPLIT_ALIASES:
        candidates.append(folder.parent / "id2label.json")
    if folder.is_dir():
        try:  # quiet: not "no split given" for the train split that training loads
            with _quiet():
                candidates.append(_resolve_layout(Path(os.path.abspath(folder)), split)[0] / "id2label.json")
        except ValueError:  # not a folder of pairs (imagefolder, saved dataset): its own file only
            pass
    return next((path for path in candidates if path.is_file()), None)


def read_labels_file(path: Path) -> dict[int, str]:
    """An ``id2label.json`` as ``{class id: name}``; ValueError naming the file when it is not a JSON object of
    integer ids (rather than a bare JSONDecodeError or ``int()`` error later)."""
    try:
        names = json.loads(Path(path).read_text())
        return {int(key): str(name) for key, name in names.items()}
    except (ValueError, AttributeError, UnicodeDecodeError) as error:  # JSONDecodeError is a ValueError
        raise ValueError(f"{path}: not a JSON object of class id -> name, e.g. {{\"0\": \"background\"}} "
                         f"({error})") from None


def dataset_name(source: Any) -> str:
    """A human name for model cards and reports.

    A folder gives its name (``"ECSSD"``); a generic split or layout folder name is qualified by its
    parent (``"COD10K (Train)"``). A Hub id is returned as is, and so is the repo of a Hub-cache snapshot folder
    (``.../datasets--org--COD10K/snapshots/<commit>[/Train]``: ``"org/COD10K [(Train)]"``, not the commit); a
    ``Dataset`` gives the name recorded by :func:`load_segmentation_dataset` (or ``"dataset"``).
    """
    if isinstance(source, datasets.DatasetDict):
        source = next(iter(source.values()), None)
    if isinstance(source, datasets.Dataset):
        info = source.info
        for name in (info.dataset_name, info.builder_name):
            if name and name not in _DATASETS_BUILDER_NAMES:
                return str(name)
        return "dataset"
    text = os.fspath(source).rstrip("/\\") if isinstance(source, (str, os.PathLike)) else str(source)
    path = Path(os.path.expanduser(text or "."))
    if path.exists():
        path = Path(os.path.abspath(path))
        name = path.name if path.is_dir() else path.stem
        generic = _split_key(name) in _SPLIT_ALIASES or _norm(name) in IMAGE_DIR_NAMES + MASK_DIR_NAMES
        if generic and path.parent.name:
            return f"{_hub_cache_repo(path.parent) or path.parent.name} ({name})"
        return _hub_cache_repo(path) or name or str(path)
    return text


def _hub_cache_repo(folder: Path) -> str | None:
    """``org/name`` for a Hub-cache snapshot folder (``datasets--org--name/snapshots/<commit>``, as
    ``snapshot_download`` returns it), whose own name is a commit hash; None for any other folder."""
    repo_folder = folder.parent.parent.name
    if folder.parent.name == "snapshots" and repo_folder.startswith("datasets--"):
        return repo_folder.split("--", 1)[1].replace("--", "/")
    return None


# ----------------------------------------------------------------------------------------- transform
def _describe(source: Any, sample_id: Any, what: str) -> str:
    if isinstance(source, (str, os.PathLike)):
        return f"{what} {os.fspath(source)}"
    filename = getattr(source, "filename", None)
    return f"{what} {filename}" if filename else f"the {what} of sample {sample_id}"


def class_index_mask_maximum(dataset, samples: int = 8) -> int | None:
    """k when the first ``samples`` masks of ``dataset`` are all class-index label maps (0..k with k >= 2, or palette
    PNGs; see :func:`~dsunet_hf.image_io.class_index_maximum`), else None (0/255 and 0/1 masks, soft masks,
    unreadable cells). Training and evaluation warn with it: a binary model reads class k as an intensity."""
    from .image_io import class_index_maximum

    found = []
    for index in range(min(samples, len(dataset))):
        try:
            found.append(class_index_maximum(decodable_cell(dataset[index]["mask"])))
        except (ImageReadError, ValueError, OSError, TypeError):  # unreadable: the run itself reports it
            return None
        if found[-1] is None:
            return None
    return max(found) if found else None


def colour_coded_mask_values(dataset, samples: int = 8) -> int | None:
    """The most colours among the first ``samples`` masks of ``dataset`` that are colour-coded (palette or RGB masks
    with colours that are not grey and not one of the binary forms; see
    :func:`~dsunet_hf.image_io.colour_coded_values`), or None when none is, or when one of the others is a mask read
    as it is with foreground in it (a mixed set, as :func:`class_index_mask_maximum` leaves it alone; an empty mask
    says nothing). Training and evaluation warn with it: such a mask is read by its luminance (a red object as 0.3)."""
    from .image_io import colour_coded_values

    found = []
    for index in range(min(samples, len(dataset))):
        try:
            cell = decodable_cell(dataset[index]["mask"])
            count = colour_coded_values(cell)
            if count is None and load_mask(cell).any():
                return None
        except (ImageReadError, ValueError, OSError, TypeError):  # unreadable: the run itself reports it
            continue
        if count is not None:
            found.append(count)
    return max(found) if found else None


def binary_mask_problem(dataset, samples: int = 8) -> tuple[str, int] | None:
    """What makes the first ``samples`` masks of ``dataset`` wrong for a foreground/background reading, for training
    and evaluation to warn about: ``("class indices", k)`` (:func:`class_index_mask_maximum`), else ``("colours", n)``
    (:func:`colour_coded_mask_values`), else None."""
    classes = class_index_mask_maximum(dataset, samples)
    if classes is not None:
        return "class indices", classes
    colours = colour_coded_mask_values(dataset, samples)
    return None if colours is None else ("colours", colours)


class SegmentationTransform:
    """Rows -> model inputs, for ``dataset.with_transform(SegmentationTransform(processor, train=...))``.

    Called with a batch ``{"image": [...], "mask": [...], "sample_id": [...]}`` (``dataset[i]`` is a batch
    of one), it decodes each pair (paths through :func:`~dsunet_hf.image_io.load_image` /
    :func:`~dsunet_hf.image_io.load_mask`, so errors name the file; PIL images and arrays as well), applies
    the training augmentation, and runs ``processor(images, masks=masks)``. It returns lists, one item per
    example: ``pixel_values`` (3, H, W) float tensor, ``labels`` (1, H, W) float tensor in [0, 1] (soft:
    bicubic-resized), ``sample_id`` and, when ``train=False``, ``ground_truth`` (the original-size mask as a
    uint8 (H, W) array, ``round(mask * 255)``) and ``original_size`` ``(height, width)``. Any other per-image
    tensor the processor returns is passed through the same way.

    Training augmentation is SAM2-UNet's: a random horizontal and a random vertical flip, p=0.5 each,
    identical for image and mask, before the processor's resize; ``augment`` adds a model's own (BiRefNet's). The flips are a pure function of
    ``(seed, epoch, sample_id)`` (see :meth:`flips`) and never of global RNG state, so a batch replayed
    after resuming is augmented exactly as before. The training loop sets :attr:`epoch` at the start of
    every epoch. With ``DataLoader(num_workers > 0)`` the workers hold a copy of this object made when the
    loader's iterator starts: set ``epoch`` before iterating, and do not use ``persistent_workers=True``
    (the workers would keep the first epoch's value).
    """

    def __init__(self, processor: Any, train: bool, hflip: bool = True, vflip: bool = True, seed: int = 0,
                 augment: Any = None):
        self.processor = processor
        self.train = bool(train)
        self.hflip = bool(hflip)
        self.vflip = bool(vflip)
        self.seed = int(seed)
        # A model's own training augmentation after the flips (BiRefNet's rotate / enhance / pepper):
        # ``augment(image, mask, rng, processor.size) -> (image, mask)``, a module-level function (workers pickle it).
        self.augment = augment
        self.epoch = 0

    def flips(self, sample_id: int, epoch: int | None = None) -> tuple[bool, bool]:
        """``(horizontal, vertical)`` flips of ``sample_id`` in ``epoch`` (default: the current epoch)."""
        epoch = self.epoch if epoch is None else epoch
        # A str seed is hashed with SHA-512 by random.Random: the same in every process and Python run.
        rng = random.Random(f"{self.seed}:{int(epoch)}:{int(sample_id)}")
        horizontal, vertical = rng.random() < 0.5, rng.random() < 0.5  # both always drawn: independent
        return (self.hflip and horizontal, self.vflip and vertical)

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        missing = [key for key in ("image", "mask", "sample_id") if key not in batch]
        if missing:
            raise KeyError(
                f"batch has no {missing} column(s) (has {list(batch)}); load the data with "
                "dsunet_hf.data.load_segmentation_dataset, which adds image, mask and sample_id"
            )
        images, masks, ground_truths, sizes = [], [], [], []
        for image_source, mask_source, sample_id in zip(batch["image"], batch["mask"], batch["sample_id"]):
            image = load_cell(load_image, image_source, "image", sample_id)  # a bad cell: its sample, column, file
            mask = load_cell(load_mask, mask_source, "mask", sample_id)
            if mask.shape != (image.height, image.width):
                raise ValueError(
                    f"{_describe(mask_source, sample_id, 'mask')} is {mask.shape[1]}x{mask.shape[0]} but "
                    f"{_describe(image_source, sample_id, 'image')} is {image.width}x{image.height} (width x height)"
                )
            if self.train:
                horizontal, vertical = self.flips(sample_id)
                if horizontal:
                    image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
                    mask = mask[:, ::-1]
                if vertical:
                    image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
                    mask = mask[::-1, :]
                mask = np.ascontiguousarray(mask)
                if self.augment is not None:  # its own stream: the flips stay what they were
                    rng = random.Random(f"{self.seed}:{int(self.epoch)}:{int(sample_id)}:augment")
                    image, mask = self.augment(image, mask, rng, self.processor.size)
            else:
                ground_truths.append(np.round(mask * 255.0).astype(np.uint8))
                sizes.append((image.height, image.width))
            images.append(image)
            masks.append(mask)

        encoded = self.processor(images, masks=masks)
        n = len(images)
        out: dict[str, list] = {}
        for key, value in encoded.items():
            if key in ("original_sizes", "sample_id", "ground_truth", "original_size"):
                continue
            if isinstance(value, np.ndarray):
                value = torch.from_numpy(value)
            if isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == n:
                out[key] = list(value)
        out["sample_id"] = [int(s) for s in batch["sample_id"]]
        if not self.train:
            out["ground_truth"] = ground_truths
            out["original_size"] = sizes
        return out


def collate_segmentation(examples: list[dict]) -> dict:
    """Collate transformed examples into a batch for the model.

    Tensors (``pixel_values``, ``labels``, ...) are stacked; ``sample_id`` becomes a LongTensor;
    ``ground_truth`` (original-size uint8 arrays, sizes differ) and ``original_size`` stay python lists.
    """
    if not examples:
        raise ValueError("cannot collate an empty list of examples")
    batch: dict[str, Any] = {}
    for key in examples[0]:
        values = [example[key] for example in examples]
        if key == "sample_id":
            batch[key] = torch.tensor([int(v) for v in values], dtype=torch.long)
        elif key == "original_size":
            batch[key] = [tuple(int(x) for x in v) for v in values]
        elif key != "ground_truth" and all(isinstance(v, torch.Tensor) for v in values):
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) > 1:
                raise ValueError(f"cannot stack {key!r}: examples have shapes {sorted(shapes)}")
            batch[key] = torch.stack(values)
        else:
            batch[key] = list(values)
    return batch

"""Segmentation data as ``datasets.Dataset``: local image/mask folders, imagefolder, Hub datasets.

Every loader returns a dataset with the columns ``image``, ``mask`` and ``sample_id``. For local folders
``image``/``mask`` hold file paths, decoded lazily by ``image_io`` (EXIF, gray/RGBA/CMYK/palette/16-bit,
lossy 3-channel JPEG masks), so every decoding error names its file. ``SegmentationTransform`` turns
rows into model inputs with ``Dataset.with_transform``.
"""

from __future__ import annotations

import logging
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .image_io import load_image, load_mask

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
# Folder names of the common benchmark layouts (compared case-insensitively).
IMAGE_DIR_NAMES = ("images", "image", "imgs", "img", "im", "jpegimages", "input", "inputs", "rgb")
MASK_DIR_NAMES = (
    "masks", "mask", "gt", "gts", "gt_object", "ground_truth", "ground_truth_mask", "groundtruth", "labels",
    "label", "annotations", "segmentationclass", "segmentationobject", "target", "targets",
)
SPLIT_DIR_NAMES = {
    "train": ("train", "training", "traindataset"),
    "validation": ("val", "valid", "validation", "dev"),
    "test": ("test", "testing", "testdataset"),
}
MASK_COLUMN_NAMES = ("mask", "label", "annotation", "segmentation", "gt")
# Mask files sometimes carry a suffix: ISIC_0000000_segmentation.png, 0001_mask.png, 0001-gt.png.
MASK_STEM_SUFFIXES = ("_segmentation", "_mask", "-mask", "_gt", "-gt", "_label", "_anno")


@dataclass
class PairScan:
    """The result of matching a folder's images and masks by file stem."""

    pairs: list[tuple[str, str]] = field(default_factory=list)
    unpaired_images: list[str] = field(default_factory=list)
    unpaired_masks: list[str] = field(default_factory=list)
    problems: dict[str, str] = field(default_factory=dict)  # file -> why its pair was dropped


def _image_files(folder: Path) -> dict[str, Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    return {p.stem: p for p in files}


def _last_word(name: str) -> str:
    """``DUTS-TR-Image`` -> ``image``: dataset folders often prefix the role with the set's name."""
    return re.split(r"[-_ ]", name.lower())[-1]


def _layout(folder: Path) -> tuple[Path, Path] | None:
    children = sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    found = []
    for names in (IMAGE_DIR_NAMES, MASK_DIR_NAMES):
        exact = {p.name.lower(): p for p in children}
        by_word = {_last_word(p.name): p for p in children}
        found.append(next((exact[n] for n in names if n in exact), None)
                     or next((by_word[n] for n in names if n in by_word), None))
    image_dir, mask_dir = found
    return (image_dir, mask_dir) if image_dir and mask_dir and image_dir != mask_dir else None


def _find_layout(root: Path, split: str | None) -> tuple[Path, Path]:
    """The image and mask folders under ``root``: root itself, a split folder, or one level down."""
    candidates = []
    if split:
        for name in SPLIT_DIR_NAMES.get(split, (split,)):
            candidates += [p for p in root.iterdir() if p.is_dir() and p.name.lower() == name]
    candidates.append(root)
    candidates += sorted(p for p in root.iterdir() if p.is_dir())
    for folder in candidates:
        if found := _layout(folder):
            return found
    subfolders = sorted(p.name for p in root.iterdir() if p.is_dir())
    raise ValueError(
        f"{root}: no image/mask folder pair found (subfolders: {subfolders}); expected e.g. images/+masks/, "
        f"Imgs/+GT/, im/+gt/, Image/+GT_Object/ (image folders {IMAGE_DIR_NAMES[:4]}, mask folders {MASK_DIR_NAMES[:6]})"
    )


def find_image_mask_pairs(root: str | Path, split: str | None = None) -> PairScan:
    """Match images and masks by file stem in a benchmark-style folder (sorted by name)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    image_dir, mask_dir = _find_layout(root, split)
    images, masks = _image_files(image_dir), _image_files(mask_dir)
    masks = {_image_stem(stem, images): path for stem, path in masks.items()}
    scan = PairScan(
        pairs=[(str(images[s]), str(masks[s])) for s in sorted(images.keys() & masks.keys())],
        unpaired_images=[str(images[s]) for s in sorted(images.keys() - masks.keys())],
        unpaired_masks=[str(masks[s]) for s in sorted(masks.keys() - images.keys())],
    )
    if scan.unpaired_images or scan.unpaired_masks:
        unpaired = scan.unpaired_images + scan.unpaired_masks
        logger.warning("%s: %d file(s) without a partner, ignored: %s%s", root, len(unpaired),
                       ", ".join(unpaired[:5]), " ..." if len(unpaired) > 5 else "")
    return scan


def _image_stem(mask_stem: str, images: dict) -> str:
    if mask_stem not in images:
        for suffix in MASK_STEM_SUFFIXES:
            if mask_stem.lower().endswith(suffix) and mask_stem[: -len(suffix)] in images:
                return mask_stem[: -len(suffix)]
    return mask_stem


def _oriented_size(path: str) -> tuple[int, int]:
    """(width, height) after EXIF orientation, reading only the header."""
    with Image.open(path) as image:
        width, height = image.size
        orientation = image.getexif().get(0x0112, 1)
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def verify_pairs(scan: PairScan) -> PairScan:
    """Drop pairs with an unreadable file or different image/mask sizes, recording why."""
    kept = []
    for image_path, mask_path in scan.pairs:
        try:
            image_size, mask_size = _oriented_size(image_path), _oriented_size(mask_path)
        except (OSError, UnidentifiedImageError, SyntaxError) as error:
            scan.problems[image_path] = f"cannot read {image_path} or {mask_path}: {error}"
            continue
        if image_size != mask_size:
            scan.problems[image_path] = (
                f"{mask_path} is {mask_size[0]}x{mask_size[1]} but {image_path} is {image_size[0]}x{image_size[1]}"
            )
            continue
        kept.append((image_path, mask_path))
    scan.pairs = kept
    if scan.problems:
        logger.warning("dropped %d pair(s):\n  %s", len(scan.problems), "\n  ".join(scan.problems.values()))
    return scan


def _with_sample_ids(dataset: datasets.Dataset) -> datasets.Dataset:
    if "sample_id" in dataset.column_names:
        dataset = dataset.remove_columns("sample_id")
    return dataset.add_column("sample_id", list(range(len(dataset))))


def _normalise_columns(dataset: datasets.Dataset, image_column: str | None, mask_column: str | None, source) -> datasets.Dataset:
    image_column = image_column or "image"
    if mask_column is None:
        mask_column = next((c for c in MASK_COLUMN_NAMES if c in dataset.column_names), None)
    for role, column in (("image", image_column), ("mask", mask_column)):
        if column is None or column not in dataset.column_names:
            raise ValueError(f"{source}: no {role} column (columns: {dataset.column_names}); "
                             f"pass --{role}-column / {role}_column=")
    renames = {c: n for c, n in ((image_column, "image"), (mask_column, "mask")) if c != n}
    dataset = dataset.rename_columns(renames) if renames else dataset
    extra = [c for c in dataset.column_names if c not in ("image", "mask")]
    return _with_sample_ids(dataset.remove_columns(extra) if extra else dataset)


def load_segmentation_dataset(
    source,
    split: str | None = None,
    *,
    image_column: str | None = None,
    mask_column: str | None = None,
    verify: bool = True,
) -> datasets.Dataset:
    """Load image/mask pairs as a ``datasets.Dataset`` with columns ``image``, ``mask``, ``sample_id``.

    ``source``: a ``datasets.Dataset``; a local folder of pairs in a benchmark layout (``split`` picks a
    ``train/``, ``val/`` or ``test/`` sub-folder when there is one); a folder with ``metadata.jsonl``
    (imagefolder; ``*_file_name`` columns become images); or a Hub dataset id (cached; offline-aware).
    With ``verify`` (local folders), pairs with an unreadable file or mismatched sizes are dropped with a
    warning naming the files; the dropped files are listed in ``dataset.info.description``.
    """
    if isinstance(source, datasets.Dataset):
        return _normalise_columns(source, image_column, mask_column, "dataset")
    path = Path(str(source))
    if path.is_dir() and any(path.glob("**/metadata.jsonl")):
        loaded = datasets.load_dataset("imagefolder", data_dir=str(path))
        name = split if split in loaded else next(iter(loaded))
        return _normalise_columns(loaded[name], image_column, mask_column, path)
    if path.is_dir():
        scan = find_image_mask_pairs(path, split)
        if verify:
            scan = verify_pairs(scan)
        if not scan.pairs:
            raise ValueError(f"{path}: no readable image/mask pairs")
        info = datasets.DatasetInfo(description="dropped: " + "; ".join(scan.problems.values()) if scan.problems else "")
        dataset = datasets.Dataset.from_dict(
            {"image": [p[0] for p in scan.pairs], "mask": [p[1] for p in scan.pairs]}, info=info
        )
        return _with_sample_ids(dataset)
    if path.exists() or str(source).startswith((".", "/", "~")):
        raise FileNotFoundError(f"{source}: not a folder of image/mask pairs")
    try:
        dataset = datasets.load_dataset(str(source), split=split or "train")
    except (FileNotFoundError, ConnectionError, OSError, ValueError) as error:
        raise FileNotFoundError(
            f"{source}: cannot load this Hub dataset ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}). "
            "Download it once where the Hub is reachable (it is then cached), or pass a local folder."
        ) from error
    return _normalise_columns(dataset, image_column, mask_column, source)


def train_validation_split(dataset: datasets.Dataset, validation_ratio: float = 0.1, seed: int = 0):
    """(train, validation) by ratio and seed; each keeps its rows' ``sample_id``."""
    if not 0 < validation_ratio < 1:
        raise ValueError(f"validation_ratio must be in (0, 1), got {validation_ratio}")
    count = round(len(dataset) * validation_ratio)
    if count < 1 or count >= len(dataset):
        raise ValueError(f"a {validation_ratio} split of {len(dataset)} samples leaves an empty side")
    split = dataset.train_test_split(test_size=count, seed=seed, shuffle=True)
    return split["train"], split["test"]


def dataset_name(source) -> str:
    """A human name for cards and reports: the folder's name, or the Hub id."""
    path = Path(str(source))
    if path.is_dir():
        generic = {n for names in SPLIT_DIR_NAMES.values() for n in names}
        return path.parent.name if path.name.lower() in generic else path.name
    return str(source)


class SegmentationTransform:
    """Rows -> model inputs, for ``Dataset.with_transform``.

    Training augmentation follows SAM2-UNet: random horizontal and vertical flips (p=0.5 each), the same
    for image and mask, then the processor's resize (image bilinear, mask bicubic and kept soft). The
    flips are a pure function of (seed, epoch, sample_id) — never of global RNG state — so a resumed run
    sees exactly the augmentation an uninterrupted one would. ``epoch`` is set by the training loop.
    Evaluation rows also carry the original-size ``ground_truth`` (uint8) and ``original_size``.
    """

    def __init__(self, processor, train: bool, hflip: bool = True, vflip: bool = True, seed: int = 0):
        self.processor = processor
        self.train = train
        self.hflip = hflip
        self.vflip = vflip
        self.seed = seed
        self.epoch = 0

    def _flip(self, image: Image.Image, mask: Image.Image, sample_id: int):
        rng = random.Random(f"{self.seed}:{self.epoch}:{sample_id}")
        flip_h, flip_v = rng.random() < 0.5, rng.random() < 0.5
        if self.hflip and flip_h:
            image, mask = (x.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for x in (image, mask))
        if self.vflip and flip_v:
            image, mask = (x.transpose(Image.Transpose.FLIP_TOP_BOTTOM) for x in (image, mask))
        return image, mask

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        images, masks, ground_truths = [], [], []
        for image_source, mask_source, sample_id in zip(batch["image"], batch["mask"], batch["sample_id"]):
            image = load_image(image_source)
            mask_array = load_mask(mask_source)
            if mask_array.shape != (image.height, image.width):
                raise ValueError(
                    f"mask {_describe(mask_source)} is {mask_array.shape[1]}x{mask_array.shape[0]} but image "
                    f"{_describe(image_source)} is {image.width}x{image.height}"
                )
            mask = Image.fromarray((mask_array * 255).round().astype(np.uint8))
            if self.train:
                image, mask = self._flip(image, mask, sample_id)
            else:
                ground_truths.append(np.asarray(mask))
            images.append(image)
            masks.append(mask)
        encoded = self.processor(images, masks=masks)
        out = {
            "pixel_values": list(encoded["pixel_values"]),
            "labels": list(encoded["labels"]),
            "sample_id": list(batch["sample_id"]),
        }
        if not self.train:
            out["ground_truth"] = ground_truths
            out["original_size"] = [gt.shape for gt in ground_truths]
        return out


def _describe(source) -> str:
    return source if isinstance(source, str) else getattr(source, "filename", None) or type(source).__name__


def collate_segmentation(examples: list[dict]) -> dict:
    """Stack tensors; keep original-size ground truths as a list (their sizes differ)."""
    batch = {
        "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
        "labels": torch.stack([e["labels"] for e in examples]),
        "sample_id": torch.tensor([int(e["sample_id"]) for e in examples], dtype=torch.long),
    }
    if "ground_truth" in examples[0]:
        batch["ground_truth"] = [e["ground_truth"] for e in examples]
        batch["original_size"] = [tuple(e["original_size"]) for e in examples]
    return batch

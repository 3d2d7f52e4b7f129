"""Episodes for visual in-context prompting, from any dataset whose masks are class-index label maps.

An episode is (reference image(s) + a prompt marking class ``c`` on each) -> (target image, mask of ``c`` on
it). Training draws them self-referring, as DINOv does: the prompt comes from the target image itself
(flipped independently) or from another image that contains the same class; the prompt is the class mask
turned into a mask, box, scribble or point prompt at random (DINOv trains with scribbles; users give all
four). Evaluation follows the COCO-20i / LVIS-92i protocol shape: one query per (target image, class
present), prompted from other images of that class, the foreground IoU accumulated per class and averaged
over classes (mIoU), next to the mean IoU per query.

Label value 0 is background and ``ignore_index`` (255) is ignored; neither is ever prompted.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ...image_io import load_image, load_label_map
from ...prompts import BoxPrompt, PointPrompt, ScribblePrompt

__all__ = ["PROMPT_KINDS", "VisualPromptEpisodes", "collate_visual_prompt", "evaluate_visual_prompt",
           "evaluation_episodes", "index_classes", "prompt_mask_from_region"]

PROMPT_KINDS = ("mask", "box", "scribble", "point")


def _cell(value: Any) -> Any:
    from ...image_io import decodable_cell

    return decodable_cell(value)


def index_classes(dataset, ignore_index: int = 255, min_pixels: int = 16) -> list[tuple[int, ...]]:
    """Per sample, the classes (not background 0, not ``ignore_index``) covering at least ``min_pixels``
    pixels. Reads every label map once (the cost of building the episode sampler)."""
    classes = []
    for index in range(len(dataset)):
        labels = load_label_map(_cell(dataset[index]["mask"]))
        values, counts = np.unique(labels, return_counts=True)
        classes.append(tuple(int(v) for v, n in zip(values, counts) if v not in (0, ignore_index) and n >= min_pixels))
    return classes


def samples_by_class(classes: list[tuple[int, ...]]) -> dict[int, list[int]]:
    """Class -> the indices of the samples that contain it (from :func:`index_classes`)."""
    samples_with: dict[int, list[int]] = {}
    for index, present in enumerate(classes):
        for value in present:
            samples_with.setdefault(value, []).append(index)
    return samples_with


def prompt_mask_from_region(region: np.ndarray, kind: str, rng: random.Random) -> np.ndarray:
    """A (H, W) bool prompt of ``kind`` made from a (H, W) bool class region: the region itself (``mask``), its
    bounding box (``box``), a 2-5 vertex polyline through random region pixels drawn with a 3-9 px brush and
    clipped to the region (``scribble``, DINOv clips its strokes to the mask), or a disk around one random
    region pixel (``point``, radius ~1/40 of the image side, not clipped: a click is a click)."""
    rows, cols = np.nonzero(region)
    if not len(rows):
        raise ValueError("cannot make a prompt from an empty region")
    height, width = region.shape
    if kind == "mask":
        return region.copy()
    if kind == "box":
        return BoxPrompt(int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1).rasterize(height, width)
    if kind == "point":
        pick = rng.randrange(len(rows))
        radius = max(2.0, min(height, width) / 40)
        return PointPrompt(int(cols[pick]) + 0.5, int(rows[pick]) + 0.5, radius=radius).rasterize(height, width)
    if kind == "scribble":
        picks = [rng.randrange(len(rows)) for _ in range(rng.randint(2, 5))]
        points = [(int(cols[p]) + 0.5, int(rows[p]) + 0.5) for p in picks]
        stroke = ScribblePrompt(points, width=rng.uniform(3, 9)).rasterize(height, width) & region
        if not stroke.any():  # a stroke that only crossed the gaps of a thin region: keep its vertices
            stroke[rows[picks], cols[picks]] = True
        return stroke
    raise ValueError(f"unknown prompt kind {kind!r}; choose from {PROMPT_KINDS}")


def _resize_masks(masks: np.ndarray, side: int) -> torch.Tensor:
    """(N, H, W) bool -> (N, side, side) float area fractions (adaptive average pooling: any size)."""
    return F.adaptive_avg_pool2d(torch.from_numpy(np.ascontiguousarray(masks)).float()[:, None], (side, side))[:, 0]


class VisualPromptEpisodes(torch.utils.data.Dataset):
    """Training episodes: item ``k`` is one target image with one prompted class, drawn as a pure function of
    ``(seed, epoch, k)`` (so a resumed run replays the same episodes). Returns ``pixel_values`` (3, S, S),
    ``labels`` (S, S) the prompted class's area fraction, ``reference_pixel_values`` (R, 3, S, S),
    ``reference_masks`` (R, S, S) (1 where the prompt touches), ``target_segments`` (M, S, S) one mask per
    class in the target and ``segment_is_prompted`` (M,) (1 for the prompted class).

    Args:
        dataset: rows with ``image`` and ``mask`` (a class-index label map), e.g. from
            ``dsunet_hf.data.load_segmentation_dataset``.
        processor: resizes and normalises images (the model's ``default_image_processor()``).
        seed: episode seed; ``epoch`` is set by the training loop.
        self_reference_ratio: probability that a reference is the target image itself (flipped independently).
        negative_ratio: probability that an episode prompts a class *absent* from the target (references from
            other images; the target mask is empty), so the model learns to answer "not here" too.
        prompt_kinds: the prompt kinds drawn from.
        num_references: references per episode (their prompt tokens are averaged).
        hflip: random horizontal flips of targets and references.
    """

    def __init__(self, dataset, processor, seed: int = 0, self_reference_ratio: float = 0.5, negative_ratio: float = 0.2,
                 prompt_kinds: Sequence[str] = PROMPT_KINDS, num_references: int = 1, hflip: bool = True,
                 ignore_index: int = 255, classes: list[tuple[int, ...]] | None = None):
        unknown = sorted(set(prompt_kinds) - set(PROMPT_KINDS))
        if unknown or not prompt_kinds:
            raise ValueError(f"prompt_kinds must be a non-empty subset of {PROMPT_KINDS}, got {list(prompt_kinds)}")
        if num_references < 1:
            raise ValueError(f"num_references must be at least 1, got {num_references}")
        self.dataset = dataset
        self.processor = processor
        self.seed = int(seed)
        self.self_reference_ratio = float(self_reference_ratio)
        self.negative_ratio = float(negative_ratio)
        self.prompt_kinds = tuple(prompt_kinds)
        self.num_references = int(num_references)
        self.hflip = bool(hflip)
        self.ignore_index = ignore_index
        self.epoch = 0
        self.classes = classes if classes is not None else index_classes(dataset, ignore_index)
        self.samples_with = samples_by_class(self.classes)
        self.items = [index for index, present in enumerate(self.classes) if present]
        if not self.items:
            raise ValueError("no sample has a labelled class (label maps hold only background 0 / ignored pixels): "
                             "visual-prompt training needs class-index masks")

    def __len__(self) -> int:
        return len(self.items)

    def _load(self, index: int) -> tuple[Any, np.ndarray]:
        row = self.dataset[index]
        image = load_image(_cell(row["image"]))
        labels = load_label_map(_cell(row["mask"]), ignore_index=self.ignore_index)
        if labels.shape != (image.height, image.width):
            raise ValueError(f"sample {index}: label map is {labels.shape[1]}x{labels.shape[0]} but the image is "
                             f"{image.width}x{image.height}")
        return image, labels

    def _flip(self, image, labels, rng: random.Random):
        if self.hflip and rng.random() < 0.5:
            from PIL import Image

            return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), labels[:, ::-1]
        return image, labels

    def __getitem__(self, item: int) -> dict:
        rng = random.Random(f"{self.seed}:{self.epoch}:{item}")
        index = self.items[item]
        image, labels = self._flip(*self._load(index), rng)
        prompted = rng.choice(self.classes[index])
        absent = sorted(set(self.samples_with) - set(self.classes[index]))
        negative = bool(absent) and rng.random() < self.negative_ratio
        if negative:
            prompted = rng.choice(absent)
        side = self.processor.size["height"]
        reference_images, reference_masks = [], []
        for _ in range(self.num_references):
            others = [j for j in self.samples_with[prompted] if j != index]
            self_reference = not negative and (not others or rng.random() < self.self_reference_ratio)
            source = index if self_reference else rng.choice(others)
            ref_image, ref_labels = self._flip(*self._load(source), rng)
            region = ref_labels == prompted
            reference_masks.append(prompt_mask_from_region(region, rng.choice(self.prompt_kinds), rng))
            reference_images.append(ref_image)
        present = self.classes[index]
        segments = np.stack([labels == value for value in present])
        pixel_values = self.processor([image, *reference_images], return_tensors="pt")["pixel_values"]
        return {
            "pixel_values": pixel_values[0],
            "labels": _resize_masks((labels == prompted)[None], side)[0],
            "reference_pixel_values": pixel_values[1:],
            "reference_masks": (_resize_masks(np.stack(reference_masks), side) > 0).float(),
            "target_segments": _resize_masks(segments, side),
            "segment_is_prompted": torch.tensor([int(value == prompted) for value in present]),
        }


def collate_visual_prompt(examples: list[dict]) -> dict:
    """Stack episodes; ``target_segments`` are zero-padded to the most classes in the batch and padding is
    marked -1 in ``segment_is_prompted``."""
    if not examples:
        raise ValueError("cannot collate an empty list of examples")
    batch = {key: torch.stack([example[key] for example in examples])
             for key in ("pixel_values", "labels", "reference_pixel_values", "reference_masks")}
    most = max(len(example["segment_is_prompted"]) for example in examples)
    side = examples[0]["labels"].shape[-1]
    segments = torch.zeros(len(examples), most, side, side)
    flags = torch.full((len(examples), most), -1, dtype=torch.long)
    for row, example in enumerate(examples):
        count = len(example["segment_is_prompted"])
        segments[row, :count] = example["target_segments"]
        flags[row, :count] = example["segment_is_prompted"]
    batch["target_segments"], batch["segment_is_prompted"] = segments, flags
    return batch


def evaluation_episodes(classes: list[tuple[int, ...]], shots: int = 1, seed: int = 0,
                        max_queries: int | None = None,
                        self_reference_fallback: bool = False) -> list[tuple[int, int, list[int]]]:
    """``(target index, class, reference indices)`` for every (image, class present) whose class appears in at
    least ``shots`` other images; references drawn as a function of ``(seed, target, class)``. With
    ``max_queries``, queries are taken round-robin over classes so every class is represented. With
    ``self_reference_fallback``, a class found in too few other images is prompted on the target itself
    (self-referring, as in training; for validation splits too small to pair images)."""
    if shots < 1:  # 0 asked the model for a prompt without references; < 0 failed inside random.sample
        raise ValueError(f"shots (--shots) must be at least 1, got {shots}")
    samples_with = samples_by_class(classes)
    per_class: dict[int, list[tuple[int, int, list[int]]]] = {}
    for index, present in enumerate(classes):
        for value in present:
            others = [j for j in samples_with[value] if j != index]
            rng = random.Random(f"{seed}:{index}:{value}")
            if len(others) >= shots:
                per_class.setdefault(value, []).append((index, value, rng.sample(others, shots)))
            elif self_reference_fallback:
                per_class.setdefault(value, []).append((index, value, [index] * shots))
    queues = [per_class[value] for value in sorted(per_class)]
    episodes = []
    while any(queues):
        for queue in queues:
            if queue:
                episodes.append(queue.pop(0))
    return episodes[:max_queries] if max_queries else episodes


@torch.no_grad()
def evaluate_visual_prompt(model, dataset, *, shots: int = 1, prompt_kind: str = "mask", seed: int = 0,
                           max_queries: int | None = None, threshold: float | None = None, id2label: dict | None = None,
                           progress: bool = False, classes: list[tuple[int, ...]] | None = None,
                           self_reference_fallback: bool = False, absent_queries: int = 0,
                           **predict_kwargs) -> dict:
    """Foreground IoU of ``model.predict_masks(references, prompts, [target])`` over :func:`evaluation_episodes`.

    Works for any object with that method (the trained head, the training-free matcher, a baseline). Prompts
    are the reference class masks (``prompt_kind="mask"``) or made from them (``box``, ``scribble``, ``point``,
    drawn as a function of ``seed``). IoU is computed at each target's original size.

    Returns ``mIoU`` (per class: total intersection / total union over its queries; then the mean over
    classes, as COCO-20i / LVIS-92i report), ``query_mIoU`` (mean IoU per query), ``FB-IoU`` (mean of the
    foreground and background IoU, accumulated over all queries), ``per_class_iou`` (by class name when
    ``id2label`` is given) and ``counts`` (``num_queries``, ``num_classes``, ``num_absent_queries``: what was
    scored, kept apart from the scores so that reports and cards do not rank them). ``self_reference_fallback``: see
    :func:`evaluation_episodes`; other keyword arguments go to ``predict_masks`` (e.g. the head's ``mode``).

    ``absent_queries``: also prompt up to this many (target, class *absent* from it) pairs, drawn as a function of
    ``seed``, and report ``absent_area``: the mean fraction of the target predicted for a class that is not
    there (0 is right; the COCO-20i protocol never asks, a user does).
    """
    if prompt_kind not in PROMPT_KINDS:
        raise ValueError(f"unknown prompt_kind {prompt_kind!r}; choose from {PROMPT_KINDS}")
    classes = classes if classes is not None else index_classes(dataset)
    episodes = evaluation_episodes(classes, shots, seed, max_queries, self_reference_fallback)
    if not episodes:
        raise ValueError(f"no evaluation query: no class (label value other than background 0 and ignore 255) "
                         f"appears in more than {shots} image(s); visual-prompt evaluation needs class-index label "
                         "maps (binary 0/255 masks hold no class)")
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    intersections: dict[int, float] = {}
    unions: dict[int, float] = {}
    query_ious = []
    fg_i = fg_u = bg_i = bg_u = 0.0
    cache: dict[int, tuple[Any, np.ndarray]] = {}

    def sample(index: int):
        if index not in cache:
            row = dataset[index]
            if len(cache) > 64:  # bounded: references repeat, but a dataset may be large
                cache.clear()
            cache[index] = (load_image(_cell(row["image"])), load_label_map(_cell(row["mask"])))
        return cache[index]

    for target_index, value, reference_indices in tqdm(episodes, desc="evaluate", disable=not progress):
        references, prompts = [], []
        for position, reference in enumerate(reference_indices):
            image, labels = sample(reference)
            rng = random.Random(f"{seed}:{target_index}:{value}:{position}")
            references.append(image)
            prompts.append(prompt_mask_from_region(labels == value, prompt_kind, rng))
        target, target_labels = sample(target_index)
        predicted = np.asarray(model.predict_masks(references, prompts, [target], threshold=threshold,
                                                   **predict_kwargs)[0], bool)
        truth = target_labels == value
        valid = target_labels != 255
        intersection = float((predicted & truth & valid).sum())
        union = float(((predicted | truth) & valid).sum())
        intersections[value] = intersections.get(value, 0.0) + intersection
        unions[value] = unions.get(value, 0.0) + union
        query_ious.append(intersection / union if union else 1.0)
        fg_i, fg_u = fg_i + intersection, fg_u + union
        bg_i += float((~predicted & ~truth & valid).sum())
        bg_u += float(((~predicted | ~truth) & valid).sum())
    absent_areas = []
    samples_with = samples_by_class(classes)
    rng = random.Random(f"{seed}:absent")
    for _ in range(absent_queries if len(samples_with) > 1 else 0):
        target_index = rng.randrange(len(classes))
        missing = sorted(set(samples_with) - set(classes[target_index]))
        if not missing:
            continue
        value = rng.choice(missing)
        image, labels = sample(rng.choice(samples_with[value]))
        target, _ = sample(target_index)
        predicted = np.asarray(model.predict_masks([image], [prompt_mask_from_region(labels == value, prompt_kind, rng)],
                                                   [target], threshold=threshold, **predict_kwargs)[0], bool)
        absent_areas.append(float(predicted.mean()))
    if hasattr(model, "train"):
        model.train(was_training)
    per_class = {value: intersections[value] / unions[value] if unions[value] else 1.0 for value in sorted(unions)}
    names = {value: (id2label or {}).get(value, (id2label or {}).get(str(value), str(value))) for value in per_class}
    return {
        "mIoU": float(np.mean(list(per_class.values()))),
        "query_mIoU": float(np.mean(query_ious)),
        "FB-IoU": float((fg_i / max(fg_u, 1.0) + bg_i / max(bg_u, 1.0)) / 2),
        **({"absent_area": float(np.mean(absent_areas))} if absent_areas else {}),
        "per_class_iou": {names[value]: iou for value, iou in per_class.items()},
        "counts": {"num_queries": len(episodes), "num_classes": len(per_class),
                   **({"num_absent_queries": len(absent_areas)} if absent_areas else {})},
    }

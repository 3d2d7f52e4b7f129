"""Evaluation with the upstream protocols: a model on datasets, or saved prediction maps against ground truth.

Protocol: each model's maps are brought to the ground-truth size as its upstream's test script does (the image
processor's ``post_processing``): SAM2-UNet's and DSU-Net's ``test.py`` upsample the logits bilinearly, apply the
sigmoid and min-max normalise each map; BiRefNet's ``inference.py`` applies the sigmoid, upsamples the probabilities
bilinearly with ``align_corners=True`` and does not normalise (``minmax_normalize`` overrides either default). The
maps are written as ``floor(p * 255)`` 8-bit maps and scored with pysodmetrics against the 8-bit ground truth (the
``eval.py`` step; see :mod:`dsunet_hf.metrics`). Unreadable or mismatched samples, and maps of a single pixel, are
skipped with a warning, never fatal.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .crop_refine import minmax_normalized, refined_predictions
from .files import write_json_atomic, write_text_atomic
from .image_io import IMAGE_EXTENSIONS, ImageReadError, load_cell, load_image, load_mask
from .image_processing import model_post_processing, processor_for_model
from .metrics import (
    DIS_METRIC_NAMES,
    HIGHER_IS_BETTER,
    METRIC_NAMES,
    SegmentationMetrics,
    check_map,
    to_uint8_map,
)
from .predict import (
    add_resolution_arguments,
    check_resolution,
    input_size_function,
    probabilities_and_outputs,
)

__all__ = [
    "evaluate_model",
    "evaluate_datasets",
    "evaluate_prediction_folders",
    "format_table",
    "write_report",
    "add_evaluate_parser",
    "run_evaluate_cli",
    "foreground_protocol",
]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = set(IMAGE_EXTENSIONS)  # the images training and predict read (image_io.py)
# Errors that mean "this sample cannot be used" (bad file, bad array, size mismatch), not a bug.
_SAMPLE_ERRORS = (ImageReadError, ValueError, OSError, TypeError)


# ---------------------------------------------------------------------------------------------- model
def _describe(item: Any, index: int) -> str:
    """A short name for a sample in log messages: its image path, sample_id or index."""
    if isinstance(item, Mapping):
        for key in ("image", "mask"):
            value = item.get(key)
            if isinstance(value, (str, os.PathLike)):
                return os.fspath(value)
            if isinstance(value, Mapping) and value.get("path"):
                return str(value["path"])
            filename = getattr(value, "filename", None)
            if filename:
                return str(filename)
        if item.get("sample_id") is not None:
            return f"sample {item['sample_id']}"
    return f"sample #{index}"


def _load_sample(item: Any, index: int = 0) -> tuple[Image.Image, np.ndarray]:
    """A dataset item -> (RGB image, uint8 GT map at the image's size); a cell that cannot be read is an error
    naming the sample, the column and its file."""
    image = load_cell(load_image, item["image"], "image", index)
    ground_truth = to_uint8_map(load_cell(load_mask, item["mask"], "mask", index))
    if ground_truth.shape != (image.height, image.width):
        raise ValueError(
            f"mask size {ground_truth.shape[1]}x{ground_truth.shape[0]} (WxH) differs from "
            f"image size {image.width}x{image.height}"
        )
    check_map(ground_truth, "ground truth")  # at least 2 pixels (a 1x1 map would wreck the dataset's E-measure)
    return image, ground_truth


def foreground_protocol(model, processor, minmax_normalize: bool | None = None):
    """``(processor, minmax_normalize)`` as :func:`evaluate_model` scores ``model``: the processor with the model's
    post-processing order when it records none (see :func:`dsunet_hf.image_processing.processor_for_model`), and
    the min-max normalisation asked for, or by default its upstream's: on after SAM2-UNet's and DSU-Net's
    ``test.py`` (``post_processing="sam2_unet"``), off after BiRefNet's ``inference.py`` (``"birefnet"``)."""
    processor = processor_for_model(processor, model)
    if minmax_normalize is None:
        minmax_normalize = getattr(processor, "post_processing", None) != "birefnet"
    return processor, bool(minmax_normalize)


def evaluate_model(
    model,
    processor,
    dataset,
    *,
    batch_size: int = 8,
    minmax_normalize: bool | None = None,
    progress: bool = True,
    max_samples: int | None = None,
    skipped: list[str] | None = None,
    with_loss: bool = False,
    dis_metrics: bool = False,
    crop_refine: bool = False,
    crop_margin: float = 0.25,
    resolution: str = "model",
    max_side: int = 2048,
    num_workers: int = 0,
    metric_workers: int = 0,
) -> dict[str, float]:
    """Score ``model`` on ``dataset`` with its upstream's protocol; returns :func:`SegmentationMetrics.compute`
    (and, ``with_loss``, the model's loss under ``"loss"``).

    Args:
        model: a segmentation model whose ``model(pixel_values=...).logits`` is (B, 1, h, w).
        processor: a :class:`~dsunet_hf.SegmentationImageProcessor` (or compatible).
        dataset: indexable with ``len()``; items are dicts with ``image`` and ``mask`` (paths, PIL
            images or arrays), e.g. a ``datasets.Dataset`` or a list of dicts.
        batch_size: images per forward pass.
        minmax_normalize: per-image min-max normalisation of the probabilities (SAM2-UNet's ``test.py``); None
            (default): the model's upstream's choice, on for SAM2-UNet and DSU-Net, off for BiRefNet (see
            :func:`foreground_protocol`). The maps reach the ground-truth size in the processor's
            ``post_processing`` order (BiRefNet's: sigmoid, then resize with ``align_corners=True``).
        progress: show a tqdm progress bar.
        max_samples: evaluate only the first ``max_samples`` samples.
        skipped: optional list that receives ``"<sample>: <reason>"`` for every skipped sample.
        with_loss: also the model's own loss (eval mode: BiRefNet's final map only, its IoU term a per-sample mean
            rather than upstream's sum over the batch; SAM2-UNet and DSU-Net with their side outputs), from the same
            forward pass with the masks resized to the model's size as in training; the mean over samples, the same
            whatever the batch size. What training logs as ``val/loss``.
        dis_metrics: also BiRefNet's DIS metrics (HCE, mBA, BIoU, MSE; see :class:`SegmentationMetrics`).
        crop_refine: predict once more on the crop around each image's foreground (grown by ``crop_margin``; see
            :mod:`dsunet_hf.crop_refine`), as ``dsunet-hf predict --crop-refine``; the loss stays the first pass's.
        resolution: ``"native"`` runs each image at its own size (at most ``max_side``, multiples of 32; see
            :func:`dsunet_hf.predict.native_size`), as ``dsunet-hf predict --resolution native``, for models that
            take any size (BiRefNet_dynamic / _HR, SAM2-UNet). Images wait in one queue per input size until a
            batch of that size is full (at most ``4 * batch_size`` images wait in all: the fullest queue runs
            first), so mixed-size datasets still run in full batches.
        num_workers: DataLoader worker processes reading and decoding samples while the model runs (0: in this
            process; ``dataset`` must be picklable for more, as ``datasets.Dataset`` and lists of dicts are).
        metric_workers: processes computing the metrics of each batch while the model runs the next (0: in this
            process); the metrics are merged in sample order, so the numbers are the same as without them. The
            metrics cost as much as a small model's forward pass on a CPU and far more than one on a GPU.

    Samples whose image or mask cannot be read, whose sizes differ, or of a single pixel (see
    :data:`~dsunet_hf.metrics.MIN_PIXELS`) are skipped with a logged warning. The model is put in eval mode for the run and restored to its previous mode afterwards.

    Raises:
        ValueError: if no sample at all could be evaluated.
    """
    for name, value, least in (("batch_size", batch_size, 1), ("num_workers", num_workers, 0),
                               ("metric_workers", metric_workers, 0)):
        if value < least:
            raise ValueError(f"{name} must be >= {least}, got {value}")
    check_resolution(model, processor, resolution)
    processor, minmax_normalize = foreground_protocol(model, processor, minmax_normalize)
    input_size = input_size_function(processor, resolution, max_side)

    total = len(dataset)
    if max_samples is not None:
        total = min(total, max(int(max_samples), 0))
    skipped_here: list[str] = []
    loss_sum = 0.0

    def score(size: tuple[int, int], samples: list[tuple[Image.Image, np.ndarray]]) -> None:
        nonlocal loss_sum
        images = [image for image, _ in samples]
        masks = [ground_truth.astype(np.float32) / 255.0 for _, ground_truth in samples] if with_loss else None
        probabilities, outputs = probabilities_and_outputs(
            model, processor, images, minmax_normalize and not crop_refine, masks, size=size)
        if with_loss:
            loss_sum += float(outputs.loss) * len(samples)
        if crop_refine:
            probabilities = refined_predictions(model, processor, images, probabilities, margin=crop_margin,
                                                batch_size=batch_size, input_size=input_size)
            if minmax_normalize:
                probabilities = [minmax_normalized(p) for p in probabilities]
        batched.add([(to_uint8_map(probability), ground_truth)
                     for probability, (_, ground_truth) in zip(probabilities, samples)])
        bar.update(len(samples))

    was_training = model.training
    model.eval()
    # Samples wait here by input size until a batch of one size is full (one queue at the model's fixed size).
    waiting: dict[tuple[int, int], list[tuple[Image.Image, np.ndarray]]] = {}
    try:
        with (torch.inference_mode(), _BatchedMetrics(dis_metrics, metric_workers) as batched,
              tqdm(total=total, desc="evaluate", unit="img", disable=not progress) as bar):
            for name, sample in _read_samples(dataset, total, num_workers):
                if isinstance(sample, str):  # why it cannot be used
                    skipped_here.append(f"{name}: {sample}")
                    logger.warning("skipping %s: %s", name, sample)
                    bar.update(1)
                    continue
                size = input_size(sample[0].height, sample[0].width)
                waiting.setdefault(size, []).append(sample)
                if len(waiting[size]) == batch_size:
                    score(size, waiting.pop(size))
                elif sum(map(len, waiting.values())) >= 4 * batch_size:
                    fullest = max(waiting, key=lambda key: len(waiting[key]))
                    score(fullest, waiting.pop(fullest))
            for size, samples in waiting.items():
                score(size, samples)
            metrics = batched.result()
    finally:
        model.train(was_training)
    if skipped is not None:
        skipped.extend(skipped_here)
    if skipped_here:
        logger.warning("skipped %d of %d samples (see the warnings above)", len(skipped_here), total)
    if len(metrics) == 0:
        raise ValueError(f"no sample could be evaluated ({total} requested, {len(skipped_here)} skipped)")
    results = metrics.compute()
    if with_loss:
        results["loss"] = loss_sum / len(metrics)
    return results


class _BatchedMetrics:
    """:class:`SegmentationMetrics` fed a batch of (prediction, ground truth) uint8 maps at a time, computed in
    ``workers`` processes when there are any (pysodmetrics is pure CPU work: ~25 ms per ECSSD image, seconds for
    DIS5K's 4K maps), their results merged in batch order: the same numbers as computing them here."""

    def __init__(self, dis: bool, workers: int = 0):
        if workers < 0:
            raise ValueError(f"metric_workers must be >= 0, got {workers}")  # evaluate_prediction_folders' check
        self.dis, self.workers, self.metrics = dis, workers, SegmentationMetrics(dis=dis)
        self.pool = concurrent.futures.ProcessPoolExecutor(workers) if workers else None
        self.pending: collections.deque = collections.deque()

    def add(self, maps: list[tuple[np.ndarray, np.ndarray]]) -> None:
        if not maps:
            return
        if self.pool is None:
            _update(self.metrics, maps)
            return
        self.pending.append(self.pool.submit(_scored, maps, self.dis))
        while len(self.pending) > 2 * self.workers:  # bounded memory; merged in order
            self.metrics.merge(self.pending.popleft().result())

    def result(self) -> SegmentationMetrics:
        while self.pending:
            self.metrics.merge(self.pending.popleft().result())
        return self.metrics

    def __enter__(self) -> _BatchedMetrics:
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)


def _update(metrics: SegmentationMetrics, maps: list[tuple[np.ndarray, np.ndarray]]) -> SegmentationMetrics:
    for prediction, ground_truth in maps:
        metrics.update(prediction, ground_truth)
    return metrics


def _scored(maps: list[tuple[np.ndarray, np.ndarray]], dis: bool) -> SegmentationMetrics:
    """One batch's metrics, in a worker process."""
    return _update(SegmentationMetrics(dis=dis), maps)


class _Samples(torch.utils.data.Dataset):
    """``(name, (image, ground truth))`` per sample, or ``(name, reason)`` when it cannot be used, read in
    DataLoader workers when there are any (decoding overlaps the model and the metrics)."""

    def __init__(self, dataset, total: int):
        self.dataset, self.total = dataset, total

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, index: int):
        name = f"sample #{index}"
        try:
            item = self.dataset[index]  # a datasets.Dataset decodes image columns here: may fail
            name = _describe(item, index)
            return name, _load_sample(item, index)
        except _SAMPLE_ERRORS as error:
            return name, str(error)


def _read_samples(dataset, total: int, num_workers: int):
    """The first ``total`` samples of ``dataset`` in order, through a DataLoader (one sample per step, no
    collation: PIL images and arrays pass through as they are). A ``datasets.Dataset``'s image columns are decoded
    here, not by ``datasets`` (where a bad cell fails without its file's name)."""
    import datasets

    if isinstance(dataset, datasets.Dataset):
        from .data import undecoded_images

        dataset = undecoded_images(dataset)
    return torch.utils.data.DataLoader(_Samples(dataset, total), batch_size=None, collate_fn=_as_is,
                                       num_workers=num_workers, prefetch_factor=8 if num_workers else None)


def _as_is(sample):
    return sample  # the default would turn the ground-truth arrays into tensors


def evaluate_datasets(model, processor, datasets: dict[str, object], **kwargs) -> dict[str, dict[str, float]]:
    """:func:`evaluate_model` on every dataset of ``{name: dataset}``; returns ``{name: metrics}``."""
    results: dict[str, dict[str, float]] = {}
    for name, dataset in datasets.items():
        logger.info("evaluating %s (%d samples)", name, len(dataset))
        results[name] = evaluate_model(model, processor, dataset, **kwargs)
    return results


def _warn_if_class_index_masks(dataset, where: str, samples: int = 8) -> int | None:
    """Warn when the first ``samples`` ground-truth masks of ``dataset`` (items with a ``mask``) are all class-index
    label maps (0..k with k >= 2, or palette PNGs; see :func:`~dsunet_hf.image_io.class_index_maximum`), as training
    does: the foreground metrics read a mask as an intensity, foreground ``> 128``, so class k counts as background
    and the ground truth is empty. Returns k, or None (0/255 and 0/1 masks, soft masks, unreadable files). Else, when
    one of them is colour-coded (a palette or RGB mask of several colours, read by its luminance), warns about that
    and returns the number of colours."""
    from .data import binary_mask_problem

    problem = binary_mask_problem(dataset, samples)
    if problem is None:
        return None
    kind, count = problem
    if kind == "colours":
        logger.warning(
            "%s: colour-coded ground-truth masks (%d colours in a palette or RGB mask), but the metrics read a "
            "mask by its luminance (> 128 is foreground): a dark colour counts as background. Save binary "
            "masks as 0/255 or 0/1 gray PNGs (a palette PNG of the indices 0 and k, or one colour on black, is "
            "read as binary too).", where, count,
        )
        return count
    logger.warning(
        "%s: the ground-truth masks hold class indices (0..%d), but the metrics read a mask as foreground intensity "
        "(> 128 is foreground): class %d counts as background and the ground truth is empty. Save binary masks as "
        "0/255 or 0/1; multi-class label maps need a multi-class model.", where, count, count,
    )
    return count


# -------------------------------------------------------------------------------------------- folders
def _index_images(folder: Path) -> dict[str, Path]:
    """Image files under ``folder`` keyed by relative path without suffix (the stem for flat folders).

    If one key has several files (``a.png`` and ``a.jpg``), the PNG wins.
    """
    index: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file() or path.name.startswith("."):
            continue
        key = path.relative_to(folder).with_suffix("").as_posix()
        if key in index:
            keep = path if path.suffix.lower() == ".png" and index[key].suffix.lower() != ".png" else index[key]
            logger.warning("several files for %s in %s; using %s", key, folder, keep.name)
            index[key] = keep
        else:
            index[key] = path
    return index


def _read_prediction(path: Path) -> np.ndarray:
    """A prediction map as gray uint8, raw values like upstream's ``cv2.imread(..., IMREAD_GRAYSCALE)``."""
    return np.asarray(load_image(path).convert("L"))


def evaluate_prediction_folders(
    predictions_dir, ground_truth_dir, *, progress: bool = True, dis_metrics: bool = False, metric_workers: int = 0
) -> tuple[dict[str, float], dict]:
    """Score saved prediction maps against ground-truth masks (upstream ``eval.py``).

    Files are matched by stem (relative path without suffix, for nested folders). A ``predict``
    output folder (with a ``masks/`` sub-folder and no images of its own) is read from ``masks/``.
    ``metric_workers`` processes compute the metrics of 8 pairs at a time while the next are read (the same
    numbers; see :func:`evaluate_model`).

    Returns:
        ``(metrics, info)`` with ``info = {"missing_predictions": [GT files without prediction],
        "unreadable": {file: reason} (unreadable files, size mismatches, 1-pixel maps), "matched": pairs found,
        "evaluated": pairs scored, "extra_predictions": [predictions without GT]}``.

    Raises:
        FileNotFoundError: a folder is missing or holds no images.
        ValueError: no prediction matches a ground-truth file, or none of the matches could be read.
    """
    predictions_dir, ground_truth_dir = Path(predictions_dir), Path(ground_truth_dir)
    for folder, what in ((predictions_dir, "predictions"), (ground_truth_dir, "ground truth")):
        if not folder.is_dir():
            raise FileNotFoundError(f"{what} folder {folder} does not exist")
    if (predictions_dir / "masks").is_dir() and not any(
        path.suffix.lower() in IMAGE_SUFFIXES and path.is_file() for path in predictions_dir.iterdir()
    ):  # a `dsunet-hf predict` output folder (masks/, overlays/, cutouts/)
        predictions_dir = predictions_dir / "masks"
    predictions = _index_images(predictions_dir)
    ground_truths = _index_images(ground_truth_dir)
    if not ground_truths:
        raise FileNotFoundError(f"no image files in ground truth folder {ground_truth_dir}")
    matched = [key for key in ground_truths if key in predictions]
    missing = [str(ground_truths[key]) for key in ground_truths if key not in predictions]
    extra = [str(predictions[key]) for key in predictions if key not in ground_truths]
    if not matched:
        raise ValueError(
            f"no prediction in {predictions_dir} matches a ground-truth file in {ground_truth_dir} by name "
            f"(e.g. GT {sorted(ground_truths)[:3]} vs predictions {sorted(predictions)[:3]})"
        )
    if missing:
        logger.warning("%d of %d ground-truth files have no prediction in %s", len(missing), len(ground_truths),
                       predictions_dir)
    if extra:  # often a naming mismatch (im1_pred.png for im1.png): said here, not only in evaluation.json
        logger.warning("%d prediction file(s) in %s have no ground truth in %s and are not scored: %s%s", len(extra),
                       predictions_dir, ground_truth_dir, ", ".join(extra[:5]), ", ..." if len(extra) > 5 else "")
    _warn_if_class_index_masks([{"mask": ground_truths[key]} for key in matched], str(ground_truth_dir))
    unreadable: dict[str, str] = {}
    with _BatchedMetrics(dis_metrics, metric_workers) as batched:
        maps = []
        for key in tqdm(matched, desc="evaluate", unit="img", disable=not progress):
            pair = _read_pair(predictions[key], ground_truths[key], unreadable)
            if pair is not None:
                maps.append(pair)
            if len(maps) == 8:
                batched.add(maps)
                maps = []
        batched.add(maps)
        metrics = batched.result()
    if len(metrics) == 0:
        raise ValueError(f"none of the {len(matched)} matched prediction/ground-truth pairs could be read")
    info = {
        "missing_predictions": missing,
        "unreadable": unreadable,
        "matched": len(matched),
        "evaluated": len(metrics),
        "extra_predictions": extra,
    }
    return metrics.compute(), info


def _read_pair(prediction_path: Path, ground_truth_path: Path, unreadable: dict[str, str]):
    """(prediction, ground truth) uint8 maps of one matched pair, or None with the reason in ``unreadable``."""
    try:
        ground_truth = to_uint8_map(load_mask(ground_truth_path))
        check_map(ground_truth, "ground truth")  # at least 2 pixels (a 1x1 map would wreck the E-measure)
    except _SAMPLE_ERRORS as error:
        unreadable[str(ground_truth_path)] = str(error)
        logger.warning("skipping %s: %s", ground_truth_path, error)
        return None
    try:
        prediction = _read_prediction(prediction_path)
    except _SAMPLE_ERRORS as error:
        unreadable[str(prediction_path)] = str(error)
        logger.warning("skipping %s: %s", prediction_path, error)
        return None
    if prediction.shape != ground_truth.shape:
        reason = (
            f"size {prediction.shape[1]}x{prediction.shape[0]} (WxH) differs from ground truth "
            f"{ground_truth_path} size {ground_truth.shape[1]}x{ground_truth.shape[0]}"
        )
        unreadable[str(prediction_path)] = reason
        logger.warning("skipping %s: %s", prediction_path, reason)
        return None
    return prediction, ground_truth


# --------------------------------------------------------------------------------------------- report
TRACKING_METRIC_NAMES = ("J&F", "J_mean", "J_recall", "J_decay", "F_mean", "F_recall", "F_decay")  # DAVIS's order


def _ordered_metrics(results: dict[str, dict[str, float]]) -> list[str]:
    present = {name for values in results.values() for name in values}
    known = (*METRIC_NAMES, *DIS_METRIC_NAMES, *TRACKING_METRIC_NAMES)
    names = [name for name in known if name in present]
    extras = sorted(present.difference(known))
    return names + extras


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


# Decimals in the table: errors are small numbers; HCE counts corrections (whole, as BiRefNet's tables print it).
_DECIMALS = {"MAE": 4, "MSE": 4, "HCE": 0}


def format_table(results: dict[str, dict[str, float]]) -> str:
    """A Markdown table: one row per dataset, one column per metric (MAE and MSE with 4 decimals, HCE whole, others 3)."""
    names = _ordered_metrics(results)
    header = ["Dataset"] + [f"{name} {'↑' if HIGHER_IS_BETTER.get(name, True) else '↓'}" for name in names]
    lines = [
        "| " + " | ".join(_cell(h) for h in header) + " |",
        "|" + "|".join([":---"] + ["---:"] * len(names)) + "|",
    ]
    for dataset, values in results.items():
        cells = [_cell(dataset)]
        for name in names:
            value = values.get(name)
            if value is None:
                cells.append("–")
            else:
                cells.append(f"{float(value):.{_DECIMALS.get(name, 3)}f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _versions() -> dict[str, str]:
    from .hub import package_versions

    return package_versions("dsunet-hf", "pysodmetrics", "torch", "transformers")


SOD_PROTOCOL = ("SAM2-UNet test.py/eval.py: bilinear upsampling to GT size, sigmoid, optional per-image min-max, "
                "floor(p*255) uint8 maps scored with pysodmetrics; mDice/mIoU averaged over 256 thresholds")
SEMANTIC_PROTOCOL = "dataset-level confusion matrix at each label map's size: mIoU over classes, pixel accuracy"
VISUAL_PROMPT_PROTOCOL = (
    "one query per (target image, class present), prompted on other image(s) of the class; foreground IoU "
    "accumulated per class (mIoU = mean over classes, COCO-20i style), query_mIoU = mean IoU per query, "
    "FB-IoU = mean of foreground and background IoU; absent_area = mean fraction of a target predicted for a "
    "prompted class it does not contain")

_POST_PROCESSING_PROTOCOLS = {
    "sam2_unet": "SAM2-UNet/DSU-Net test.py: bilinear upsampling of the logits to GT size, sigmoid",
    "birefnet": "BiRefNet inference.py: sigmoid, bilinear upsampling to GT size (align_corners=True)",
}


def sod_protocol(post_processing: str | None, minmax_normalize: bool) -> str:
    """The report's protocol line for a foreground model scored with this post-processing order and min-max."""
    steps = _POST_PROCESSING_PROTOCOLS.get(post_processing or "sam2_unet", _POST_PROCESSING_PROTOCOLS["sam2_unet"])
    return (f"{steps}, {'per-image min-max' if minmax_normalize else 'no min-max'}, floor(p*255) uint8 maps scored "
            f"with pysodmetrics (eval.py); mDice/mIoU averaged over 256 thresholds")


def _strict_json(value):
    """``value`` with NaN / inf as ``null``: strict JSON readers (jq, JavaScript, pandas' default) refuse
    Python's ``NaN``, which a metric undefined on the data (e.g. the IoU of a class absent everywhere) is."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(item) for item in value]
    return value


def write_report(results: dict[str, dict[str, float]], output_dir, extra: dict | None = None,
                 protocol: str = SOD_PROTOCOL) -> tuple[Path, Path]:
    """Write ``evaluation.json`` (every metric per dataset, ``extra`` under ``"info"``) and ``evaluation.md``.

    Both files are written atomically (temporary file + ``os.replace``). Returns their paths.
    """
    output_dir = Path(output_dir)
    payload = {
        "results": {name: {k: float(v) for k, v in values.items()} for name, values in results.items()},
        "metric_names": _ordered_metrics(results),
        "higher_is_better": {name: HIGHER_IS_BETTER.get(name, True) for name in _ordered_metrics(results)},
        "protocol": protocol,
        "versions": _versions(),
        "info": extra or {},
    }
    json_path, markdown_path = output_dir / "evaluation.json", output_dir / "evaluation.md"
    write_json_atomic(json_path, _strict_json(payload))
    lines = ["# Evaluation", "", format_table(results), ""]
    lines.append(f"↑ higher is better, ↓ lower is better. Protocol: {protocol}.")
    if extra:
        lines += ["", "## Details", ""]
        for key, value in extra.items():
            if isinstance(value, (dict, list, tuple)):
                value = json.dumps(value, default=str)
                if len(value) > 300:
                    value = value[:300] + "… (see evaluation.json)"
            lines.append(f"- **{key}**: {value}")
    write_text_atomic(markdown_path, "\n".join(lines) + "\n")
    return json_path, markdown_path


# ------------------------------------------------------------------------------------------------ CLI
def add_evaluate_parser(subparsers):
    """Register ``evaluate`` on an argparse ``subparsers`` object; returns the new sub-parser."""
    parser = subparsers.add_parser(
        "evaluate",
        help="score a model on datasets, or prediction folders against ground truth",
        description=(
            "Either  --model M --data PATH [--data PATH ...]  (run the model, its upstream's protocol)  or  "
            "--predictions DIR --ground-truth DIR  (score saved maps, matched by file name)."
        ),
    )
    parser.add_argument("--model", help="artifact folder or Hub repo id")
    parser.add_argument("--data", action="append", default=None, metavar="PATH",
                        help="dataset (folder or Hub id); repeat for several")
    parser.add_argument("--split", default=None,
                        help="dataset split to evaluate (default: the loader's choice): a Hub dataset's split, or a "
                             "local folder's split folder (train/, val/, test/, ...); a local folder without split "
                             "folders is scored whole (said in a warning) and recorded as that split")
    parser.add_argument("--predictions", metavar="DIR", help="folder of predicted maps (PNG)")
    parser.add_argument("--ground-truth", metavar="DIR", help="folder of ground-truth masks")
    parser.add_argument("--output-dir", default="evaluation", help="where evaluation.json/.md go")
    # Options of running a model default to None (not given: refused on saved maps), filled in by run_evaluate_cli.
    parser.add_argument("--batch-size", type=int, default=None, help="foreground models: images per batch (default 8)")
    parser.add_argument("--metric-workers", type=int, default=None,
                        help="processes computing the metrics while the model runs or the next files are read (the "
                             "same numbers; default: one per CPU core, at most 8; 0: in this process)")
    parser.add_argument("--num-workers", type=int, default=None,
                        help="foreground models: DataLoader workers reading and decoding samples while the model "
                             "runs (default 0: in this process; decoding is ~8%% of a 2-core CPU run, more with large "
                             "photos on a GPU)")
    parser.add_argument("--minmax-normalize", default=None, action=argparse.BooleanOptionalAction,
                        help="foreground models: per-image min-max normalisation of the maps (SAM2-UNet's test.py); "
                             "default: as the model's upstream evaluates, on for SAM2-UNet and DSU-Net, off for "
                             "BiRefNet (its inference.py)")
    parser.add_argument("--max-samples", type=int, default=None,
                        help="evaluate only the first N per dataset (visual-prompt models: N queries)")
    parser.add_argument("--shots", type=int, default=None,
                        help="visual-prompt models: reference images per query (other images of the class; default 1)")
    parser.add_argument("--absent-queries", type=int, default=None,
                        help="visual-prompt models: also prompt N classes absent from the target (absent_area; "
                             "default 50)")
    parser.add_argument("--track-memory", type=int, default=None,
                        help="visual-prompt models on a DAVIS-layout folder (JPEGImages/, Annotations/): frames kept "
                             "in each tracker's memory beside the first annotated frame (default 8)")
    parser.add_argument("--save-predictions", metavar="DIR", default=None,
                        help="tracking on a DAVIS-layout folder: also write the results in the DAVIS format "
                             "(DIR/<dataset>/<sequence>/<frame>.png, palette object ids; YouTube-VOS: "
                             "DIR/<dataset>/Annotations/...) for the evaluation server; required where only first "
                             "appearances are annotated (DAVIS test-dev, YouTube-VOS valid)")
    parser.add_argument("--prompt-kind", default=None, choices=["mask", "box", "scribble", "point"],
                        help="visual-prompt models: the prompt made from each reference's class mask (default mask)")
    parser.add_argument("--dis-metrics", action="store_true",
                        help="also the rest of BiRefNet's table: HCE (human correction effort), mBA, BIoU (max/mean), "
                             "MSE; slower (HCE skeletonises every ground truth)")
    parser.add_argument("--crop-refine", action="store_true",
                        help="foreground models: predict once more on the crop around each image's foreground (finer "
                             "edges for small objects in large images), as predict --crop-refine")
    parser.add_argument("--crop-margin", type=float, default=None,
                        help="--crop-refine: margin around the foreground, a fraction of its box's longer side "
                             "(default 0.25)")
    add_resolution_arguments(parser)
    parser.add_argument("--schedule", default=None, choices=["single", "slide", "multiscale"],
                        help="multi-class models: inference schedule (default: the model's; DINOv2 heads: slide; "
                             "multiscale = the paper's multi-scale + flip)")
    parser.add_argument("--reduce-zero-label", default=None, action=argparse.BooleanOptionalAction,
                        help="multi-class label maps: 0 is 'other' (ignored), classes start at 1 (ADE20K); "
                             "default: as the model was trained (its processor's do_reduce_labels)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="the model's weights and arithmetic (default float32)")
    from .cli import BACKBONE_SOURCE_HELP, VERIFY_HELP, add_model_source_arguments

    parser.add_argument("--no-verify-backbone-weights", dest="verify_backbone_weights", action="store_false",
                        help=VERIFY_HELP)
    parser.add_argument("--backbone-source", action="append", metavar="FIELD=VALUE", help=BACKBONE_SOURCE_HELP)
    add_model_source_arguments(parser)
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    parser.set_defaults(func=run_evaluate_cli)
    return parser


def _visual_prompt_model(name_or_path: str, verify_backbone_weights: bool = True, backbone_sources=None,
                         **kwargs):
    """The trained in-context head or the matcher when ``name_or_path`` holds one, else None; a model that cannot be
    loaded (damaged weights, other DINOv2 weights than those it was saved with) is one line naming it."""
    from .cli import load_failure
    from .prompt_predict import load_visual_prompt_model, visual_prompt_model_type

    if not visual_prompt_model_type(name_or_path, revision=kwargs.get("revision")):
        return None
    try:
        return load_visual_prompt_model(name_or_path, verify_backbone_weights=verify_backbone_weights,
                                        backbone_sources=backbone_sources, **kwargs)
    except (ValueError, OSError) as error:
        raise load_failure("evaluate", name_or_path, error, revision=kwargs.get("revision")) from error


def _dataset_labels(source, split: str | None = None) -> dict | None:
    """Class names of a local dataset folder (``id2label.json`` in it, beside its split folders, or in the ``split``
    folder it loads), if it has them."""
    from .data import find_labels_file, read_labels_file

    path = find_labels_file(source, split)
    return {str(k): v for k, v in read_labels_file(path).items()} if path else None


def _scored_whole(source, split: str) -> bool:
    """A local folder of image/mask pairs without a folder for ``split`` (a benchmark's test set is often one flat
    folder): the loader takes all of it, as it does with no split given."""
    from .data import pair_folders

    path = Path(os.path.expanduser(str(source)))
    saved = ("state.json", "dataset_dict.json", "metadata.jsonl", "metadata.csv", "metadata.parquet")
    if not path.is_dir() or any((path / name).is_file() for name in saved):  # Hub ids, datasets: their splits
        return False
    try:  # the folders a split that no folder is named after gets: the same, where the loader found no split folder
        return pair_folders(path, split)[0] == pair_folders(path, "no-such-split-folder")[0]  # lists no files, says nothing
    except ValueError:  # "no folder for split ...": it has split folders, and the split chose one
        return False


def _source_record(source) -> str:
    """How a dataset is recorded in the report: a local folder by its absolute path (``push --evaluation`` then
    knows it from a Hub dataset id wherever it runs), a Hub id as given."""
    return str(Path(source).resolve()) if Path(str(source)).exists() else str(source)


def _folder_name(folder: Path) -> str:
    """Dataset name for a GT folder: its name, or its parent's for generic names like ``masks``."""
    folder = folder.resolve()
    generic = {"masks", "mask", "gt", "gts", "ground_truth", "groundtruth", "labels", "annotations"}
    return folder.parent.name if folder.name.lower() in generic and folder.parent.name else folder.name


def _naming(source, error: Exception) -> str:
    """``error``'s message, led by ``source`` unless it names it already."""
    return str(error) if os.fspath(source) in str(error) else f"{source}: {error}"


def _unique(name: str, taken: dict) -> str:
    candidate, n = name, 2
    while candidate in taken:
        candidate, n = f"{name}-{n}", n + 1
    return candidate


def run_evaluate_cli(args) -> int:
    """Run ``dsunet-hf evaluate``: print the table, write the report into ``--output-dir``. Returns 0."""
    folders_mode = args.predictions is not None or args.ground_truth is not None
    model_mode = args.model is not None or bool(args.data)
    if folders_mode and model_mode:
        raise SystemExit("evaluate: use either --model/--data or --predictions/--ground-truth, not both")
    tracking_only = {"--save-predictions": args.save_predictions is not None,
                     "--track-memory": args.track_memory is not None}
    if folders_mode and any(tracking_only.values()):
        raise SystemExit(f"evaluate: {', '.join(k for k, v in tracking_only.items() if v)}: tracking, for --model on "
                         f"DAVIS-layout folders")
    # Options of running a model mean nothing to saved maps; one given there would be silently ignored. (Their
    # parser defaults are None, not given, filled in below; --crop-margin and --max-side left so by the command line.)
    # Named as given: --no-reduce-zero-label and --no-minmax-normalize are refused too, and said so.
    reduce_flag = "--no-reduce-zero-label" if args.reduce_zero_label is False else "--reduce-zero-label"
    minmax_flag = "--no-minmax-normalize" if args.minmax_normalize is False else "--minmax-normalize"
    prompting_options = {"--shots": args.shots is not None, "--absent-queries": args.absent_queries is not None,
                         "--prompt-kind": args.prompt_kind is not None}
    model_only = {"--crop-refine": args.crop_refine, "--crop-margin": args.crop_margin is not None,
                  "--resolution native": args.resolution == "native", "--max-side": args.max_side is not None,
                  "--schedule": args.schedule is not None, reduce_flag: args.reduce_zero_label is not None,
                  minmax_flag: args.minmax_normalize is not None, "--split": args.split is not None,
                  "--max-samples": args.max_samples is not None, "--dtype": args.dtype is not None,
                  "--device": args.device is not None, "--batch-size": args.batch_size is not None,
                  "--num-workers": args.num_workers is not None,
                  "--no-verify-backbone-weights": not args.verify_backbone_weights,
                  "--backbone-source": bool(args.backbone_source), "--revision": args.revision is not None,
                  "--variant": args.variant is not None, **prompting_options}
    if folders_mode and any(model_only.values()):
        raise SystemExit(f"evaluate: {', '.join(k for k, v in model_only.items() if v)}: for --model/--data, not "
                         f"for --predictions/--ground-truth (saved maps are scored as they are)")
    from .cli import DEFAULT_CROP_MARGIN
    from .predict import DEFAULT_MAX_SIDE

    for name, default in (("batch_size", 8), ("num_workers", 0), ("dtype", "float32"), ("shots", 1),
                          ("absent_queries", 50), ("prompt_kind", "mask"), ("crop_margin", DEFAULT_CROP_MARGIN),
                          ("max_side", DEFAULT_MAX_SIDE)):
        if getattr(args, name) is None:
            setattr(args, name, default)
    # Default: a worker per core (at most 8): the same numbers, and the metrics, not the model, bound a GPU run.
    metric_workers = min(8, os.cpu_count() or 1) if args.metric_workers is None else args.metric_workers
    for flag, value, least in (("--batch-size", args.batch_size, 1), ("--num-workers", args.num_workers, 0),
                               ("--metric-workers", metric_workers, 0), ("--shots", args.shots, 1),
                               ("--absent-queries", args.absent_queries, 0)):  # before a model loads
        if value < least:
            raise SystemExit(f"evaluate: {flag} must be >= {least}, got {value}")
    if folders_mode:
        if args.predictions is None or args.ground_truth is None:
            raise SystemExit("evaluate: --predictions and --ground-truth go together")
        try:
            metrics, info = evaluate_prediction_folders(args.predictions, args.ground_truth, progress=args.progress,
                                                        dis_metrics=args.dis_metrics, metric_workers=metric_workers)
        except (FileNotFoundError, ValueError) as error:  # a folder missing or empty, no match, no pair readable
            raise SystemExit(f"evaluate: {error}") from error
        results = {_folder_name(Path(args.ground_truth)): metrics}
        extra = {"mode": "prediction folders", "predictions": str(args.predictions),
                 "ground_truth": str(args.ground_truth), **info}
        for path in info["missing_predictions"]:
            logger.warning("no prediction for %s", path)
    elif args.model is None or not args.data:
        raise SystemExit("evaluate: give --model and at least one --data, or --predictions and --ground-truth")
    else:
        from .cli import backbone_sources, load_failure, model_source, not_visual_prompt
        from .data import dataset_name, dropped_files, load_segmentation_dataset
        from .predict import load_model_and_processor
        from .prompt_predict import visual_prompt_model_type
        from .tracking_evaluation import evaluate_tracking, is_davis_layout, split_list

        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
        sources = backbone_sources("evaluate", args.backbone_source)
        model_version = model_source("evaluate", args)  # --revision, --variant
        # Read from its config alone: the options for visual-prompt models are refused before any model loads.
        is_visual_prompt = visual_prompt_model_type(args.model, revision=args.revision) is not None
        if not is_visual_prompt and any(prompting_options.values()):
            given = ", ".join(k for k, v in prompting_options.items() if v)
            raise not_visual_prompt("evaluate", args.model, f"evaluate: {given}: for visual-prompt models; {args.model} "
                                    "is not one", revision=args.revision)
        if any(tracking_only.values()) and (not is_visual_prompt or not all(map(is_davis_layout, args.data))):
            raise SystemExit(f"evaluate: {', '.join(k for k, v in tracking_only.items() if v)}: tracking, for a "
                             f"visual-prompt model on DAVIS-layout folders (JPEGImages/, Annotations/)")
        # Options the other kinds of model do not use (refused rather than ignored): a visual-prompt model is known
        # from its config (refused before it loads), a multi-class one once loaded.
        foreground_options = {"--dis-metrics": args.dis_metrics, "--crop-refine": args.crop_refine,
                              "--resolution native": args.resolution == "native",
                              minmax_flag: args.minmax_normalize is not None,
                              "--batch-size": model_only["--batch-size"], "--num-workers": model_only["--num-workers"],
                              "--metric-workers": args.metric_workers is not None}
        semantic_options = {"--schedule": args.schedule is not None,
                            reduce_flag: args.reduce_zero_label is not None}

        def refuse_unused_options(multi_class: bool) -> None:
            if any(foreground_options.values()) and (is_visual_prompt or multi_class):
                raise SystemExit(f"evaluate: {', '.join(k for k, v in foreground_options.items() if v)}: for models "
                                 f"that predict one foreground map; {args.model} is not such a model")
            if not multi_class and any(semantic_options.values()):
                raise SystemExit(f"evaluate: {', '.join(k for k, v in semantic_options.items() if v)} apply to "
                                 f"multi-class models (DINOv2 heads, multi-class SAM2-UNet / DSU-Net) only, not to {args.model}")

        if is_visual_prompt:
            refuse_unused_options(multi_class=False)
        visual_prompt = (_visual_prompt_model(args.model, args.verify_backbone_weights, sources, **model_version)
                         if is_visual_prompt else None)
        track_memory = 8 if args.track_memory is None else args.track_memory
        if visual_prompt is not None:
            model, processor = visual_prompt.to(device=args.device or "cpu", dtype=dtype).eval(), None
        else:
            try:
                model, processor = load_model_and_processor(args.model, device=args.device, dtype=dtype,
                                                            verify_backbone_weights=args.verify_backbone_weights,
                                                            backbone_sources=sources, **model_version)
            except (ValueError, OSError, ImportError) as error:  # not a model folder, a Hub id neither cached nor
                # reachable, an ONNX export without onnxruntime, other backbone weights than it was saved with
                raise load_failure("evaluate", args.model, error, revision=args.revision) from error
        multi_class = getattr(model, "predicts_class_maps", False)  # mIoU / accuracies, per-class IoU with names
        refuse_unused_options(multi_class)
        reduce_zero_label = (args.reduce_zero_label if args.reduce_zero_label is not None
                             else bool(getattr(processor, "do_reduce_labels", False)))
        # Every --data is loaded (its files checked) before the model runs any of them: a typo costs nothing.
        loaded = []
        for source in args.data:
            if visual_prompt is not None and is_davis_layout(source):
                loaded.append(None)  # videos: evaluate_tracking reads the folder itself
                continue
            try:
                loaded.append(load_segmentation_dataset(source) if args.split is None
                              else load_segmentation_dataset(source, split=args.split))
            except (ValueError, OSError) as error:  # no pairs in it, a file, no such folder, a Hub id unavailable
                raise SystemExit(f"evaluate: --data {_naming(source, error)}") from error
            if args.split is not None and _scored_whole(source, args.split):  # said: a typo would pass unseen
                from .data import split_name

                logger.warning("--data %s has no %r split folder: the whole folder is evaluated%s (the report "
                               "records split %r)", source, split_name(args.split),
                               f" (sliced: {args.split})" if split_name(args.split) != args.split else "", args.split)
        # Foreground models: the post-processing order and min-max normalisation evaluate_model uses, for the report.
        foreground = (None if visual_prompt is not None or multi_class
                      else foreground_protocol(model, processor, args.minmax_normalize))
        results, skipped_per_dataset, sources, per_class, per_object = {}, {}, {}, {}, {}
        query_counts = {}  # visual prompting: how many queries / classes each score is over
        results_only, evaluated = {}, {}  # tracking sequences for a server; samples scored per dataset
        sequence_lists: dict[str, str | None] = {}  # tracking: the ImageSets list that chose the sequences
        failed: dict[str, str] = {}  # datasets nothing could be scored on: the others are still reported
        for source, dataset in zip(args.data, loaded):
            name = _unique(dataset_name(source), {**sources, **failed})
            skipped: list[str] = []
            try:
                if dataset is None:  # videos: tracking, DAVIS J&F
                    list_path, _ = split_list(source, args.split)  # DAVIS's ImageSets list, when the folder has it
                    sequence_lists[name] = None if list_path is None else str(list_path)
                    unscored: list[str] = []
                    results[name], per_object[name] = evaluate_tracking(
                        model, source, memory_size=track_memory, max_sequences=args.max_samples,
                        progress=args.progress, unscored=unscored, split=args.split,
                        save_dir=None if args.save_predictions is None else Path(args.save_predictions) / name)
                    if unscored:  # first-appearance annotations only: the benchmark's server scores the results
                        results_only[name] = unscored
                        print(f"{name}: {len(unscored)} sequence(s) annotated on their objects' first appearances "
                              f"only, not scored here: results for the server in {Path(args.save_predictions) / name}")
                elif visual_prompt is not None:  # one query per (image, class): foreground IoU per class
                    from .models.visual_prompt import evaluate_visual_prompt

                    scores = evaluate_visual_prompt(model, dataset, shots=args.shots, prompt_kind=args.prompt_kind,
                                                    max_queries=args.max_samples, progress=args.progress,
                                                    id2label=_dataset_labels(source, args.split),
                                                    absent_queries=args.absent_queries)
                    per_class[name] = scores.pop("per_class_iou")
                    query_counts[name] = scores.pop("counts")  # not scores: in the report's info
                    results[name] = scores
                elif multi_class:
                    from .semantic import evaluate_semantic

                    semantic = evaluate_semantic(model, dataset, schedule=args.schedule, max_samples=args.max_samples,
                                                 reduce_zero_label=reduce_zero_label, skipped=skipped)
                    per_class[name] = semantic.pop("per_class_iou")
                    results[name] = semantic
                else:
                    _warn_if_class_index_masks(dataset, str(source))
                    results[name] = evaluate_model(
                        model, processor, dataset, batch_size=args.batch_size, minmax_normalize=args.minmax_normalize,
                        progress=args.progress, max_samples=args.max_samples, skipped=skipped,
                        dis_metrics=args.dis_metrics, crop_refine=args.crop_refine, crop_margin=args.crop_margin,
                        resolution=args.resolution, max_side=args.max_side, num_workers=args.num_workers,
                        metric_workers=metric_workers,
                    )
            except ValueError as error:  # no sample readable, a class the model does not have: go on with the rest
                failed[name] = _naming(source, error)
                logger.warning("%s: not scored: %s", name, failed[name])
            else:
                sources[name] = _source_record(source)
                if visual_prompt is None:  # (visual prompts count queries, in their scores)
                    requested = len(dataset) if args.max_samples is None else min(args.max_samples, len(dataset))
                    evaluated[name] = requested - len(skipped)
            if dataset is not None:  # files the loader left out (unpaired, unreadable, sizes differ): say so
                skipped += [f"{path}: {reason} (left out when loading)"
                            for path, reason in dropped_files(dataset).items()]
            skipped_per_dataset[name] = skipped  # a dataset not scored too: why its samples were skipped
        if not results:
            raise SystemExit(f"evaluate: {'; '.join(failed.values())}")
        from .modeling_utils import cached_commit

        # The commit --revision (or main) resolved to, where the local Hub cache tells it: a branch or tag moves.
        commit = cached_commit(args.model, args.revision)
        extra = {"mode": "model", "model": str(args.model), **model_version, **({"commit": commit} if commit else {}),
                 "data": sources, "split": args.split,
                 "batch_size": args.batch_size, "minmax_normalize": args.minmax_normalize,
                 "max_samples": args.max_samples, "dtype": args.dtype, "skipped": skipped_per_dataset,
                 "evaluated_samples": evaluated}
        if foreground is not None:  # foreground maps were scored: how they were post-processed
            # The order used: a processor that records none post-processes in its model's (processor_for_model).
            extra.update(post_processing=getattr(foreground[0], "post_processing", None) or model_post_processing(model),
                         minmax_normalize=foreground[1])
        if args.crop_refine:
            extra.update(crop_refine=True, crop_margin=args.crop_margin)
        if args.resolution == "native":
            extra.update(resolution="native", max_side=args.max_side)
        if per_class:
            extra["per_class_iou"] = per_class
        if per_object:
            extra.update(per_object_jf=per_object, track_memory=track_memory, sequence_lists=sequence_lists)
        if results_only:
            extra["unscored_sequences"] = results_only
        if args.save_predictions is not None:
            extra["predictions"] = str(args.save_predictions)
        if multi_class:
            extra.update(schedule=args.schedule or model.default_schedule, reduce_zero_label=reduce_zero_label)
        if visual_prompt is not None:
            extra.update(shots=args.shots, prompt_kind=args.prompt_kind, query_counts=query_counts)
        if failed:
            extra["failed_datasets"] = failed
    print(format_table(results))
    for name, ious in extra.get("per_class_iou", {}).items():
        print(f"per-class IoU, {name}: " + ", ".join(f"{label} {iou:.3f}" for label, iou in ious.items()))
    protocol = SOD_PROTOCOL
    if "post_processing" in extra:  # a foreground model: how its maps were made
        protocol = sod_protocol(extra["post_processing"], extra["minmax_normalize"])
    if extra.get("per_class_iou"):
        protocol = VISUAL_PROMPT_PROTOCOL if "prompt_kind" in extra else SEMANTIC_PROTOCOL
    if "track_memory" in extra:
        from .tracking_evaluation import PROTOCOL as TRACKING_PROTOCOL

        protocol = TRACKING_PROTOCOL if not extra.get("per_class_iou") else f"{protocol}; videos: {TRACKING_PROTOCOL}"
    json_path, markdown_path = write_report(results, args.output_dir, extra=extra, protocol=protocol)
    print(f"report: {json_path} and {markdown_path}")
    if extra.get("failed_datasets"):  # the others' results are in the report; the run still fails
        failed = extra["failed_datasets"]
        raise SystemExit(f"evaluate: {len(failed)} of {len(failed) + len(results)} datasets not scored "
                         f"({'; '.join(failed.values())}); the report of the others: {json_path}")
    return 0

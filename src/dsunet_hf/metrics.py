"""Saliency / binary-segmentation metrics, computed with ``pysodmetrics`` exactly as SAM2-UNet's ``eval.py``.

Every value comes from a ``py_sod_metrics`` object fed the same 8-bit gray maps that upstream reads
from disk (prediction ``floor(p * 255)``, as upstream ``test.py``'s ``(res * 255).astype(np.uint8)``; ground truth binarised by pysodmetrics at ``> 128``):

============================  ================================================================
``mDice`` / ``mIoU``          mean over the 256 thresholds of ``FmeasureV2``'s dynamic Dice / IoU
                              curves (per-sample mean first), as printed by upstream ``eval.py``
``S-measure``                 ``Smeasure`` ``sm``
``wF-measure``                ``WeightedFmeasure`` ``wfm``
``F-measure (adaptive)``      ``Fmeasure`` ``fm["adp"]`` (upstream's ``F_beta``); ``(mean)`` / ``(max)`` of its curve
``E-measure (mean)``          mean of ``Emeasure``'s curve (upstream's ``E_phi``); ``(adaptive)`` / ``(max)`` too
``MAE``                       ``MAE`` ``mae``
============================  ================================================================

With ``dis=True``, the rest of BiRefNet's table (its ``eval_existingOnes.py``, DIS and HR tasks; checked equal to
its ``evaluation/metrics.py`` in an opt-in parity test):

============================  ================================================================
``HCE``                       ``HumanCorrectionEffortMeasure`` ``hce`` (relax 5, epsilon 2; human correction
                              effort, lower is better) on the prediction binarised at ``> 128``
``mBA``                       mean boundary accuracy (CascadePSP): pixel accuracy of the ``> 128`` prediction in
                              the ground truth's morphological-gradient band, averaged over 5 radii from 1 to
                              ``(H + W) / 300``
``BIoU (max)`` / ``(mean)``   Boundary IoU (Cheng et al. 2021; band of ``round(0.02 * diagonal)`` pixels) over 256
                              thresholds of the min-max normalised map, averaged over images, then max / mean
``MSE``                       mean squared error of the min-max normalised map (matting)
============================  ================================================================
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import cv2  # pysodmetrics depends on OpenCV; the DIS boundary metrics use its morphology too
import numpy as np
import py_sod_metrics as psm
from py_sod_metrics.utils import prepare_data

__all__ = ["METRIC_NAMES", "DIS_METRIC_NAMES", "HIGHER_IS_BETTER", "MIN_PIXELS", "to_uint8_map", "check_map",
           "SegmentationMetrics", "SemanticSegmentationMetrics", "is_better"]

METRIC_NAMES: tuple[str, ...] = (
    "mDice",
    "mIoU",
    "S-measure",
    "wF-measure",
    "F-measure (adaptive)",
    "F-measure (mean)",
    "F-measure (max)",
    "E-measure (adaptive)",
    "E-measure (mean)",
    "E-measure (max)",
    "MAE",
)
# Multi-class scalar metrics of SemanticSegmentationMetrics (mIoU there is the class-wise mean IoU).
SEMANTIC_METRIC_NAMES: tuple[str, ...] = ("mIoU", "mAcc", "aAcc")
HIGHER_IS_BETTER: dict[str, bool] = {name: name != "MAE" for name in (*METRIC_NAMES, *SEMANTIC_METRIC_NAMES)}
# Visual prompting: the area predicted for a prompted class that is absent from the target.
HIGHER_IS_BETTER["absent_area"] = False
# BiRefNet's dichotomous-segmentation metrics (optional, see SegmentationMetrics(dis=True)).
DIS_METRIC_NAMES: tuple[str, ...] = ("HCE", "mBA", "BIoU (max)", "BIoU (mean)", "MSE")
HIGHER_IS_BETTER.update({"HCE": False, "mBA": True, "BIoU (max)": True, "BIoU (mean)": True, "MSE": False})
# Training's validation loss (the model's own loss on the validation set, in eval mode).
HIGHER_IS_BETTER["loss"] = False
# DAVIS tracking: a decay is how much a score drops from the first quarter of the frames to the last.
HIGHER_IS_BETTER.update({"J_decay": False, "F_decay": False})


def to_uint8_map(probability: Any) -> np.ndarray:
    """A ``(H, W)`` probability map in ``[0, 1]`` (numpy or torch) -> uint8 ``floor(p * 255)``: upstream ``test.py`` writes
    ``(res * 255).astype(np.uint8)`` (truncation; rounding moves wF-measure by ~0.003).

    The arithmetic is float32, like the mask PNGs written by :mod:`dsunet_hf.predict`, so a map
    evaluated in memory equals the same map saved and read back. Values are clipped to ``[0, 1]`` and
    NaN counts as 0. Bool maps give 0/255; uint8 maps (numpy or torch) are returned unchanged. Other integer
    maps follow :func:`dsunet_hf.image_io.load_mask`: 0/1 masks give 0/255, larger values up to 255 are gray.
    """
    if hasattr(probability, "detach"):  # torch.Tensor, without importing torch here
        probability = probability.detach().cpu()
        # Keep bool / integer tensors as they are (a uint8 tensor is a gray map, not probabilities to clip).
        if probability.is_floating_point():
            probability = probability.float()
        probability = probability.numpy()
    arr = np.asarray(probability)
    if arr.ndim != 2:
        raise ValueError(f"expected a (H, W) map, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr.copy()
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * np.uint8(255)
    if np.issubdtype(arr.dtype, np.integer):
        low, high = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        if low < 0 or high > 255:
            raise ValueError(f"integer map with values {low}..{high}: expected a 0/1 mask or 8-bit gray 0..255")
        return arr.astype(np.uint8) * np.uint8(255 if high <= 1 else 1)
    if not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(f"expected a numeric probability map, got dtype {arr.dtype}")
    p = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    return np.floor(np.clip(p, 0.0, 1.0) * np.float32(255.0)).astype(np.uint8)


# Fewer pixels make pysodmetrics' E-measure divide by (pixels - 1) = 0: ~2e15 for one sample, which then swamps the
# whole dataset's mean without any error. update() refuses such maps; evaluate skips and reports them.
MIN_PIXELS = 2


def check_map(array: Any, what: str) -> None:
    """Raise unless ``array`` is what :meth:`SegmentationMetrics.update` scores: a uint8 ``(H, W)`` numpy map of at
    least :data:`MIN_PIXELS` pixels (TypeError for the type, ValueError for the shape); ``what`` names it."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"{what} must be a numpy array, got {type(array).__name__}")
    if array.dtype != np.uint8:
        raise TypeError(
            f"{what} must be uint8 gray 0..255 (got dtype {array.dtype}); convert with to_uint8_map()"
        )
    if array.ndim != 2 or array.size == 0:
        raise ValueError(f"{what} must be a non-empty (H, W) map, got shape {array.shape}")
    if array.size < MIN_PIXELS:
        raise ValueError(f"{what} is {array.shape[1]}x{array.shape[0]} (WxH) pixels: the metrics need at least "
                         f"{MIN_PIXELS} (pysodmetrics' E-measure divides by the pixel count - 1)")


def boundary_accuracy(prediction: np.ndarray, ground_truth: np.ndarray) -> float | None:
    """CascadePSP's boundary accuracy as BiRefNet computes it: the share of pixels where the prediction
    (``> 128``) equals the ground truth (``> 128``) inside the ground truth's morphological gradient, for 5
    elliptical radii from 1 up to ``(H + W) / 300``, averaged. None when the ground truth has no boundary."""
    prediction, ground_truth = prediction > 128, (ground_truth > 128).astype(np.uint8)
    height, width = ground_truth.shape
    largest = (width + height) / 300
    accuracies = []
    for step in range(5):
        radius = 1 + int((largest - 1) / 5 * step)  # int() truncates towards zero, as the reference does
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        band = cv2.morphologyEx(ground_truth, cv2.MORPH_GRADIENT, kernel) > 0
        if not band.any():
            return None
        accuracies.append(float(np.mean(prediction[band] == ground_truth[band].astype(bool))))
    return sum(accuracies) / len(accuracies)


def _boundary_band(mask: np.ndarray, iterations: int) -> np.ndarray:
    """``mask`` minus its erosion by a 3x3 square ``iterations`` times, outside the image counting as 0 (so the
    image border is boundary too); on gray maps erosion is the minimum filter."""
    height, width = mask.shape
    padded = cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    eroded = cv2.erode(padded, np.ones((3, 3), np.uint8), iterations=iterations)[1:height + 1, 1:width + 1]
    return mask - eroded


def boundary_iou_curve(normalised: np.ndarray, ground_truth: np.ndarray, dilation_ratio: float = 0.02) -> np.ndarray:
    """Boundary IoU (Cheng et al. 2021) at the 256 thresholds 255..0 of a min-max normalised map, as BiRefNet
    computes it: the band is ``round(dilation_ratio * diagonal)`` pixels wide (at least 1); the map's band is
    taken on its 8-bit gray values (truncated, not rounded), the ground truth's on ``> 128``."""
    height, width = ground_truth.shape
    iterations = max(1, int(round(dilation_ratio * np.hypot(height, width))))
    prediction_band = _boundary_band((normalised * 255).astype(np.uint8), iterations)
    truth_band = _boundary_band((ground_truth > 128).astype(np.uint8) * np.uint8(255), iterations) > 128
    # Pixels at or above each threshold, from 255 down to 0: cumulative counts of the flipped histograms.
    inside = np.cumsum(np.bincount(prediction_band[truth_band], minlength=256)[::-1])
    outside = np.cumsum(np.bincount(prediction_band[~truth_band], minlength=256)[::-1])
    return inside / (max(int(truth_band.sum()), 1) + outside)


# The per-sample lists each pysodmetrics object keeps (its internals, checked with pysodmetrics 1.6): what
# SegmentationMetrics.merge joins. pysodmetrics has no merge of its own; a changed layout is an error there.
_PER_SAMPLE_LISTS = {
    "_smeasure": ("sms",),
    "_emeasure": ("adaptive_ems", "changeable_ems"),
    "_wfmeasure": ("weighted_fms",),
    "_mae": ("maes",),
    "_fmeasure": ("precisions", "recalls", "adaptive_fms", "changeable_fms"),
    "_hce": ("hces",),
}


def _per_sample_list(metric: Any, attribute: str) -> list:
    value = getattr(metric, attribute, None)
    if not isinstance(value, list):
        raise RuntimeError(f"pysodmetrics' {type(metric).__name__}.{attribute} is not a per-sample list in this "
                           f"version: metrics computed apart cannot be merged (evaluate with metric_workers=0)")
    return value


class SegmentationMetrics:
    """Accumulates pysodmetrics objects over samples; :meth:`compute` returns the dataset averages.

    >>> metrics = SegmentationMetrics()
    >>> metrics.update(prediction_uint8, ground_truth_uint8)  # doctest: +SKIP
    >>> metrics.compute()["mDice"]  # doctest: +SKIP
    """

    def __init__(self, dis: bool = False) -> None:
        # The DIS metrics (HCE skeletonises every ground truth) are slower: only on request.
        self.dis = dis
        self.reset()

    def reset(self) -> None:
        """Forget every sample seen so far."""
        self._smeasure = psm.Smeasure()
        self._emeasure = psm.Emeasure()
        self._wfmeasure = psm.WeightedFmeasure()
        self._mae = psm.MAE()
        with warnings.catch_warnings():
            # pysodmetrics 1.6 flags Fmeasure as "will be removed"; upstream eval.py uses it for F_beta.
            warnings.filterwarnings("ignore", message="This class will be removed", category=UserWarning)
            self._fmeasure = psm.Fmeasure()
        self._fmeasure_v2 = psm.FmeasureV2(
            metric_handlers={
                "dice": psm.DICEHandler(with_dynamic=True, with_adaptive=False),
                "iou": psm.IOUHandler(with_dynamic=True, with_adaptive=False),
            }
        )
        self._hce = psm.HumanCorrectionEffortMeasure(relax=5, epsilon=2.0) if self.dis else None
        self._boundary_accuracies: list[float] = []
        self._boundary_iou_curves: list[np.ndarray] = []
        self._squared_errors: list[float] = []
        self._count = 0

    def update(self, prediction: np.ndarray, ground_truth: np.ndarray) -> None:
        """Add one sample: both uint8 ``(H, W)`` gray maps of the same size (GT foreground is ``> 128``).

        Raises:
            TypeError: a map is not a uint8 numpy array.
            ValueError: a map is not 2-D, has fewer than :data:`MIN_PIXELS` pixels, or the sizes differ.
        """
        check_map(prediction, "prediction")
        check_map(ground_truth, "ground truth")
        if prediction.shape != ground_truth.shape:
            raise ValueError(
                f"prediction shape {prediction.shape} differs from ground truth shape {ground_truth.shape}"
            )
        for metric in (
            self._smeasure, self._emeasure, self._wfmeasure, self._mae, self._fmeasure, self._fmeasure_v2
        ):
            metric.step(pred=prediction, gt=ground_truth)
        if self.dis:
            # pysodmetrics binarises at p > 0.5 (>= 128 in 8 bits); BiRefNet's and DIS's own code at > 128.
            self._hce.step(pred=np.where(prediction > 128, 255, 0).astype(np.uint8), gt=ground_truth)
            accuracy = boundary_accuracy(prediction, ground_truth)
            if accuracy is not None:  # a ground truth without any boundary (empty or full) has no band to score
                self._boundary_accuracies.append(accuracy)
            normalised, foreground = prepare_data(prediction, ground_truth)  # min-max map in [0, 1], GT > 128
            self._boundary_iou_curves.append(boundary_iou_curve(normalised, ground_truth))
            self._squared_errors.append(float(np.mean((normalised - foreground) ** 2)))
        self._count += 1

    def compute(self) -> dict[str, float]:
        """Dataset averages of every metric in :data:`METRIC_NAMES` (then :data:`DIS_METRIC_NAMES` with ``dis``)."""
        if self._count == 0:
            raise ValueError("no samples: call update() before compute()")
        fm = self._fmeasure.get_results()["fm"]
        em = self._emeasure.get_results()["em"]
        v2 = self._fmeasure_v2.get_results()
        values = {
            "mDice": v2["dice"]["dynamic"].mean(),
            "mIoU": v2["iou"]["dynamic"].mean(),
            "S-measure": self._smeasure.get_results()["sm"],
            "wF-measure": self._wfmeasure.get_results()["wfm"],
            "F-measure (adaptive)": fm["adp"],
            "F-measure (mean)": fm["curve"].mean(),
            "F-measure (max)": fm["curve"].max(),
            "E-measure (adaptive)": em["adp"],
            "E-measure (mean)": em["curve"].mean(),
            "E-measure (max)": em["curve"].max(),
            "MAE": self._mae.get_results()["mae"],
        }
        results = {name: float(values[name]) for name in METRIC_NAMES}
        if self.dis:
            curve = np.mean(self._boundary_iou_curves, axis=0)
            results.update({
                "HCE": float(self._hce.get_results()["hce"]),
                "mBA": float(np.mean(self._boundary_accuracies)) if self._boundary_accuracies else math.nan,
                "BIoU (max)": float(curve.max()), "BIoU (mean)": float(curve.mean()),
                "MSE": float(np.mean(self._squared_errors)),
            })
        return results

    def merge(self, other: SegmentationMetrics) -> None:
        """Add the samples ``other`` has seen, after this one's: the same results as updating this object with
        them in that order (what lets worker processes compute metrics for batches of samples)."""
        if other.dis != self.dis:
            raise ValueError("cannot merge metrics with and without the DIS metrics")
        for name, attributes in _PER_SAMPLE_LISTS.items():
            if getattr(self, name) is None:  # _hce without dis
                continue
            for attribute in attributes:
                _per_sample_list(getattr(self, name), attribute).extend(
                    _per_sample_list(getattr(other, name), attribute))
        for name, handler in self._fmeasure_v2._metric_handlers.items():  # mDice / mIoU: dynamic curves only
            _per_sample_list(handler, "dynamic_results").extend(
                _per_sample_list(other._fmeasure_v2._metric_handlers[name], "dynamic_results"))
        self._boundary_accuracies += other._boundary_accuracies
        self._boundary_iou_curves += other._boundary_iou_curves
        self._squared_errors += other._squared_errors
        self._count += other._count

    def __len__(self) -> int:
        return self._count

    def __repr__(self) -> str:
        return f"{type(self).__name__}(samples={self._count})"


def is_better(metric: str, new: float, best: float | None) -> bool:
    """Whether ``new`` improves on ``best`` for ``metric`` (lower MAE, higher everything else).

    ``best=None`` (nothing recorded yet) counts as worse than any number; a NaN ``new`` never wins.
    """
    if metric not in HIGHER_IS_BETTER:
        raise KeyError(f"unknown metric {metric!r}; expected one of {list(METRIC_NAMES)}")
    new = float(new)
    if math.isnan(new):
        return False
    if best is None or math.isnan(float(best)):
        return True
    return new > best if HIGHER_IS_BETTER[metric] else new < best


class SemanticSegmentationMetrics:
    """Multi-class mean IoU, per-class IoU, pixel accuracy and mean class accuracy, accumulated as one
    confusion matrix over the whole split (mmseg's ``mean_iou``, which the DINOv2 paper reports).

    A short confusion-matrix routine rather than a dependency: ``tests/test_metrics_semantic.py`` checks it
    against ``torchmetrics`` and against values computed by hand. Classes absent from both the predictions
    and the labels have no IoU and are skipped by the mean (NaN in ``per_class_iou``).
    ``reduce_zero_label`` applies ADE20K's convention to the labels: 0 -> ignore, every other label - 1.
    A prediction outside ``0..num_labels - 1`` (e.g. 255 in a saved map) is wrong for its pixel's label and counts
    as no class's prediction, as in mmseg (its histograms drop such values).
    """

    def __init__(self, num_labels: int, ignore_index: int = 255, reduce_zero_label: bool = False):
        self.num_labels = num_labels
        self.ignore_index = ignore_index
        self.reduce_zero_label = reduce_zero_label
        # rows: label, columns: prediction; the extra last column counts predictions outside the classes
        self.confusion = np.zeros((num_labels, num_labels + 1), dtype=np.int64)

    def update(self, prediction: Any, label: Any) -> None:
        prediction, label = np.asarray(prediction).astype(np.int64), np.asarray(label).astype(np.int64)
        if prediction.shape != label.shape:
            raise ValueError(f"prediction {prediction.shape} and label {label.shape} differ in shape")
        if self.reduce_zero_label:
            label = np.where(label == 0, self.ignore_index, label - 1)
            label[label == self.ignore_index - 1] = self.ignore_index
        keep = label != self.ignore_index
        if np.any((label[keep] < 0) | (label[keep] >= self.num_labels)):
            raise ValueError(f"labels outside 0..{self.num_labels - 1} (and not {self.ignore_index})")
        predicted = prediction[keep]
        predicted = np.where((predicted >= 0) & (predicted < self.num_labels), predicted, self.num_labels)
        columns = self.num_labels + 1
        index = label[keep] * columns + predicted
        self.confusion += np.bincount(index, minlength=self.num_labels * columns).reshape(self.num_labels, columns)

    def compute(self) -> dict[str, Any]:
        if not self.confusion.any():
            raise ValueError("no labelled pixels seen")
        intersection = np.diag(self.confusion).astype(np.float64)
        label_count = self.confusion.sum(1)
        union = self.confusion[:, :self.num_labels].sum(0) + label_count - intersection
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(union > 0, intersection / union, np.nan)
            accuracy = np.where(label_count > 0, intersection / label_count, np.nan)
        return {
            "mIoU": float(np.nanmean(iou)),
            "mAcc": float(np.nanmean(accuracy)),
            "aAcc": float(intersection.sum() / self.confusion.sum()),
            "per_class_iou": [float(v) for v in iou],
        }

"""SegmentationMetrics must report exactly what pysodmetrics reports on the same uint8 maps."""

from __future__ import annotations

import warnings

import numpy as np
import py_sod_metrics
import pytest
import torch

from dsunet_hf.metrics import (
    DIS_METRIC_NAMES,
    HIGHER_IS_BETTER,
    METRIC_NAMES,
    SegmentationMetrics,
    is_better,
    to_uint8_map,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (see conftest)

EXPECTED_KEYS = {
    "S-measure", "wF-measure", "MAE", "E-measure (adaptive)", "E-measure (mean)", "E-measure (max)",
    "F-measure (adaptive)", "F-measure (mean)", "F-measure (max)", "mDice", "mIoU",
}


def disc(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    y, x = np.mgrid[:h, :w]
    return ((y - cy) ** 2 + (x - cx) ** 2 <= r * r).astype(np.uint8) * 255


def soft_disc(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    y, x = np.mgrid[:h, :w]
    d = np.sqrt((y - cy) ** 2 + (x - cx) ** 2)
    return np.round(255 / (1 + np.exp((d - r) / 2.0))).astype(np.uint8)


def samples() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    pairs = [
        (rng.integers(0, 256, (32, 48), dtype=np.uint8), rng.integers(0, 256, (32, 48), dtype=np.uint8)),
        (soft_disc(50, 50, 22, 27, 12), disc(50, 50, 25, 25, 14)),
        (soft_disc(41, 29, 10, 10, 6), disc(41, 29, 30, 20, 7)),  # mostly wrong
        (rng.integers(0, 256, (24, 24), dtype=np.uint8), np.zeros((24, 24), np.uint8)),  # empty GT
        (np.full((20, 30), 200, np.uint8), np.full((20, 30), 255, np.uint8)),  # full GT, constant pred
        (soft_disc(37, 61, 18, 30, 10), rng.integers(0, 256, (37, 61), dtype=np.uint8)),  # gray GT (> 128)
    ]
    return pairs


def direct_pysodmetrics(pairs) -> dict[str, float]:
    """The same computation as SAM2-UNet's eval.py, written against pysodmetrics directly."""
    sm, em, wfm, mae = (py_sod_metrics.Smeasure(), py_sod_metrics.Emeasure(),
                        py_sod_metrics.WeightedFmeasure(), py_sod_metrics.MAE())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fm = py_sod_metrics.Fmeasure()
    v2 = py_sod_metrics.FmeasureV2(
        metric_handlers={
            "dice": py_sod_metrics.DICEHandler(with_dynamic=True, with_adaptive=True),
            "iou": py_sod_metrics.IOUHandler(with_dynamic=True, with_adaptive=True),
        }
    )
    for pred, gt in pairs:
        for metric in (sm, em, wfm, mae, fm, v2):
            metric.step(pred=pred, gt=gt)
    fm_results, em_results = fm.get_results()["fm"], em.get_results()["em"]
    v2_results = v2.get_results()
    return {
        "mDice": v2_results["dice"]["dynamic"].mean(),
        "mIoU": v2_results["iou"]["dynamic"].mean(),
        "S-measure": sm.get_results()["sm"],
        "wF-measure": wfm.get_results()["wfm"],
        "F-measure (adaptive)": fm_results["adp"],
        "F-measure (mean)": fm_results["curve"].mean(),
        "F-measure (max)": fm_results["curve"].max(),
        "E-measure (adaptive)": em_results["adp"],
        "E-measure (mean)": em_results["curve"].mean(),
        "E-measure (max)": em_results["curve"].max(),
        "MAE": mae.get_results()["mae"],
    }


def test_every_metric_equals_direct_pysodmetrics():
    pairs = samples()
    metrics = SegmentationMetrics()
    for pred, gt in pairs:
        metrics.update(pred, gt)
    assert len(metrics) == len(pairs)
    got = metrics.compute()
    expected = direct_pysodmetrics(pairs)
    # HIGHER_IS_BETTER also covers the multi-class accuracies, visual prompting's absent_area, training's
    # validation loss and DAVIS's decays (lower is better for those four).
    assert set(got) == EXPECTED_KEYS == set(METRIC_NAMES) == set(HIGHER_IS_BETTER) - {
        "mAcc", "aAcc", "absent_area", "loss", "J_decay", "F_decay", *DIS_METRIC_NAMES}
    assert not any(HIGHER_IS_BETTER[name] for name in ("absent_area", "loss", "J_decay", "F_decay"))
    assert list(got) == list(METRIC_NAMES)
    for name in EXPECTED_KEYS:
        assert type(got[name]) is float, name
        assert got[name] == float(expected[name]), name
    # compute() does not consume anything: more samples keep accumulating
    metrics.update(*pairs[1])
    assert metrics.compute()["MAE"] == float(direct_pysodmetrics(pairs + [pairs[1]])["MAE"])


def test_single_sample_values_are_plausible():
    gt = disc(40, 40, 20, 20, 10)
    metrics = SegmentationMetrics()
    metrics.update(soft_disc(40, 40, 20, 20, 10), gt)
    values = metrics.compute()
    # (pysodmetrics' E-measure divides the alignment sum by H*W - 1, so it can exceed 1 by a hair)
    assert all(0.0 <= v <= 1.01 for v in values.values()), values
    assert values["S-measure"] > 0.8 and values["MAE"] < 0.2


def test_perfect_prediction():
    metrics = SegmentationMetrics()
    for h, w in [(30, 40), (45, 33)]:
        gt = disc(h, w, h / 2, w / 2, min(h, w) / 3)
        metrics.update(gt.copy(), gt)
    values = metrics.compute()
    assert values["S-measure"] == pytest.approx(1.0, abs=1e-6)
    assert values["MAE"] == 0.0
    # threshold-averaged: only the ">= 0" threshold (everything foreground) is imperfect
    assert values["mDice"] == pytest.approx(1.0, abs=0.01)
    assert values["mIoU"] == pytest.approx(1.0, abs=0.01)
    assert values["F-measure (max)"] == pytest.approx(1.0, abs=1e-6)
    assert values["E-measure (max)"] == pytest.approx(1.0, abs=0.01)


def test_shape_mismatch_and_types():
    metrics = SegmentationMetrics()
    with pytest.raises(ValueError, match=r"\(10, 12\).*\(12, 10\)"):
        metrics.update(np.zeros((10, 12), np.uint8), np.zeros((12, 10), np.uint8))
    with pytest.raises(TypeError, match="uint8"):
        metrics.update(np.zeros((10, 10), np.float32), np.zeros((10, 10), np.uint8))
    with pytest.raises(TypeError, match="uint8"):
        metrics.update(np.zeros((10, 10), np.uint8), np.zeros((10, 10), bool))
    with pytest.raises(ValueError, match="shape"):
        metrics.update(np.zeros((10, 10, 3), np.uint8), np.zeros((10, 10, 3), np.uint8))
    assert len(metrics) == 0


def test_single_pixel_maps_are_refused():
    """A 1x1 pair made pysodmetrics' E-measure divide by (pixels - 1): ~2e15, silently, for the whole dataset."""
    metrics = SegmentationMetrics()
    metrics.update(disc(10, 10, 5, 5, 3), disc(10, 10, 4, 5, 3))
    with pytest.raises(ValueError, match=r"prediction is 1x1 \(WxH\) pixels: the metrics need at least 2"):
        metrics.update(np.zeros((1, 1), np.uint8), np.full((1, 1), 255, np.uint8))
    assert len(metrics) == 1 and metrics.compute()["E-measure (max)"] <= 1  # the dataset's numbers are untouched
    with warnings.catch_warnings():  # S-measure splits so small a map into empty quadrants: numpy warns
        warnings.simplefilter("ignore", RuntimeWarning)
        metrics.update(np.array([[0, 255]], np.uint8), np.array([[0, 255]], np.uint8))  # 2 pixels are scored
    assert len(metrics) == 2


def test_compute_without_samples_raises():
    with pytest.raises(ValueError, match="no samples"):
        SegmentationMetrics().compute()
    metrics = SegmentationMetrics()
    metrics.update(disc(10, 10, 5, 5, 3), disc(10, 10, 5, 5, 3))
    metrics.reset()
    assert len(metrics) == 0
    with pytest.raises(ValueError):
        metrics.compute()


def test_is_better():
    assert is_better("MAE", 0.04, 0.05) and not is_better("MAE", 0.06, 0.05)
    assert is_better("S-measure", 0.9, 0.8) and not is_better("S-measure", 0.7, 0.8)
    assert not is_better("S-measure", 0.8, 0.8) and not is_better("MAE", 0.05, 0.05)
    assert is_better("MAE", 0.5, None) and is_better("mDice", 0.0, None)
    assert not is_better("mDice", float("nan"), 0.1)
    assert HIGHER_IS_BETTER["MAE"] is False and HIGHER_IS_BETTER["mIoU"] is True
    with pytest.raises(KeyError):
        is_better("accuracy", 1.0, 0.5)


def test_to_uint8_map():
    p = np.array([[0.0, 0.5, 1.0], [0.2, 1.5, -0.1]], np.float32)
    # floor, as upstream test.py's (res * 255).astype(np.uint8): 0.5 -> 127 (rounding gave 128), 0.999 -> 254
    expected = np.array([[0, 127, 255], [51, 255, 0]], np.uint8)
    np.testing.assert_array_equal(to_uint8_map(p), expected)
    np.testing.assert_array_equal(to_uint8_map(torch.from_numpy(p)), expected)
    assert to_uint8_map(p).dtype == np.uint8
    np.testing.assert_array_equal(to_uint8_map(np.array([[True, False]])), [[255, 0]])
    np.testing.assert_array_equal(to_uint8_map(np.array([[np.nan, 0.25, 0.999]])), [[0, 63, 254]])
    with pytest.raises(ValueError, match="shape"):
        to_uint8_map(np.zeros((1, 2, 2)))



def test_to_uint8_map_keeps_integer_gray_maps():
    # A uint8 tensor is a gray map like a uint8 array (it was cast to float and clipped: 100 -> 255).
    gray = np.array([[0, 100], [200, 255]], np.uint8)
    np.testing.assert_array_equal(to_uint8_map(torch.from_numpy(gray)), gray)
    np.testing.assert_array_equal(to_uint8_map(gray.astype(np.int64)), gray)
    np.testing.assert_array_equal(to_uint8_map(torch.tensor([[0, 1]])), [[0, 255]])  # 0/1 mask, as load_mask
    np.testing.assert_array_equal(to_uint8_map(torch.tensor([[True, False]])), [[255, 0]])
    with pytest.raises(ValueError, match="integer map with values 0..300"):
        to_uint8_map(np.array([[0, 300]]))

def test_dis_metrics_score_boundaries_and_correction_effort():
    """With dis=True (optional): 0 HCE / MSE and full mBA / BIoU for a perfect map; more correction effort and lower
    boundary scores for worse maps; the prediction is binarised at > 128 as in BiRefNet's and DIS's code
    (pysodmetrics alone would count 128 as foreground). Parity with the authors' evaluation code is the opt-in test
    in test_upstream_parity.py."""
    yy, xx = np.mgrid[:96, :128]
    gt = (np.hypot(yy - 48, xx - 64) < 30).astype(np.uint8) * 255
    assert "HCE" not in _single(gt, gt)
    perfect = SegmentationMetrics(dis=True)
    perfect.update(gt.copy(), gt)
    scores = perfect.compute()
    assert list(scores) == [*METRIC_NAMES, *DIS_METRIC_NAMES]
    assert (scores["HCE"], scores["MSE"], scores["mBA"], scores["BIoU (max)"]) == (0.0, 0.0, 1.0, 1.0)
    worse = []
    for blobs in (1, 3):
        prediction = gt.copy()
        for blob in range(blobs):
            prediction[2 + 32 * blob: 26 + 32 * blob, 100:124] = 255  # false positives away from the object
        prediction[40:56, 30:40] = 0  # a bite out of the object's left edge
        metrics = SegmentationMetrics(dis=True)
        metrics.update(prediction, gt)
        worse.append(metrics.compute())
    assert 0 < worse[0]["HCE"] < worse[1]["HCE"] and 0 < worse[0]["MSE"] < worse[1]["MSE"]
    assert worse[0]["mBA"] < 1 and worse[1]["BIoU (max)"] < worse[0]["BIoU (max)"] < 1
    plateau = gt.copy()
    plateau[2:26, 100:124] = 128  # exactly 128: background, as in the DIS code
    metrics = SegmentationMetrics(dis=True)
    metrics.update(plateau, gt)
    assert metrics.compute()["HCE"] == 0.0
    direct = py_sod_metrics.HumanCorrectionEffortMeasure(relax=5, epsilon=2.0)
    direct.step(pred=plateau, gt=gt)
    assert direct.get_results()["hce"] > 0  # what the plain pysodmetrics call would have said
    empty = SegmentationMetrics(dis=True)  # no boundary in an empty ground truth: no mBA, not a NaN in the mean
    empty.update(np.zeros_like(gt), np.zeros_like(gt))
    empty.update(gt.copy(), gt)
    assert empty.compute()["mBA"] == 1.0


def _single(prediction, gt) -> dict:
    metrics = SegmentationMetrics()
    metrics.update(prediction, gt)
    return metrics.compute()


def test_metrics_computed_apart_merge_to_the_same_numbers(monkeypatch):
    """What evaluate's metric workers rely on: metrics of two halves, merged in order (after a pickle round trip,
    as from a worker process), equal those of the whole in one object, DIS metrics included."""
    import pickle

    rng = np.random.default_rng(3)
    pairs = [(rng.integers(0, 256, (30 + i, 40), dtype=np.uint8),
              (rng.random((30 + i, 40)) > 0.6).astype(np.uint8) * 255) for i in range(6)]
    for dis in (False, True):
        whole, first, second = SegmentationMetrics(dis=dis), SegmentationMetrics(dis=dis), SegmentationMetrics(dis=dis)
        for index, (prediction, ground_truth) in enumerate(pairs):
            whole.update(prediction, ground_truth)
            (first if index < 2 else second).update(prediction, ground_truth)
        first.merge(pickle.loads(pickle.dumps(second)))
        assert len(first) == 6 and first.compute() == whole.compute()
    with pytest.raises(ValueError, match="with and without the DIS metrics"):
        SegmentationMetrics().merge(SegmentationMetrics(dis=True))
    changed = SegmentationMetrics()
    monkeypatch.setattr(changed._mae, "maes", np.zeros(3))  # as if pysodmetrics kept a running array instead
    with pytest.raises(RuntimeError, match=r"MAE\.maes is not a per-sample list .* metric_workers=0"):
        SegmentationMetrics().merge(changed)

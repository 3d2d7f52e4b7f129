"""Multi-class metrics: by hand and against torchmetrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dsunet_hf.metrics import SemanticSegmentationMetrics

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (see conftest)


def test_miou_of_a_hand_made_pair():
    label = np.array([[0, 0, 1, 1],
                      [0, 2, 2, 1],
                      [255, 255, 2, 2]])
    prediction = np.array([[0, 1, 1, 1],
                           [0, 2, 1, 1],
                           [2, 0, 2, 0]])
    metrics = SemanticSegmentationMetrics(num_labels=4)
    metrics.update(prediction, label)
    result = metrics.compute()
    # Ignored pixels count nowhere (not even their predictions).
    # class 0: labelled 3, predicted 3, I=2 -> U=4 -> 1/2;  class 1: labelled 3, predicted 5, I=3 -> U=5 -> 3/5
    # class 2: labelled 4, predicted 2, I=2 -> U=4 -> 1/2;  class 3: absent everywhere -> NaN, skipped by the mean
    assert result["per_class_iou"][:3] == pytest.approx([1 / 2, 3 / 5, 1 / 2]) and math.isnan(result["per_class_iou"][3])
    assert result["mIoU"] == pytest.approx((1 / 2 + 3 / 5 + 1 / 2) / 3)
    assert result["aAcc"] == pytest.approx(7 / 10)
    assert result["mAcc"] == pytest.approx((2 / 3 + 3 / 3 + 2 / 4) / 3)


def test_reduce_zero_label():
    metrics = SemanticSegmentationMetrics(num_labels=2, reduce_zero_label=True)
    metrics.update(np.array([[0, 1, 1]]), np.array([[0, 1, 2]]))  # label 0 ignored; 1 -> 0, 2 -> 1
    assert metrics.compute()["aAcc"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="outside"):
        SemanticSegmentationMetrics(num_labels=2).update(np.zeros((2, 2)), np.full((2, 2), 7))


def test_matches_torchmetrics_on_random_maps():
    torchmetrics = pytest.importorskip("torchmetrics", reason="torchmetrics (dev extra) is not installed")
    rng = np.random.default_rng(0)
    ours = SemanticSegmentationMetrics(num_labels=5)
    reference = torchmetrics.classification.MulticlassJaccardIndex(num_classes=5, ignore_index=255, average="none")
    accuracy = torchmetrics.classification.MulticlassAccuracy(num_classes=5, ignore_index=255, average="micro")
    for size in ((20, 30), (17, 11), (40, 8)):
        label = rng.integers(0, 4, size)  # class 4 never appears in labels
        label[rng.random(size) < 0.1] = 255
        prediction = rng.integers(0, 5, size)
        ours.update(prediction, label)
        reference.update(torch.from_numpy(prediction), torch.from_numpy(label))
        accuracy.update(torch.from_numpy(prediction), torch.from_numpy(label))
    result = ours.compute()
    np.testing.assert_allclose(result["per_class_iou"], reference.compute().numpy(), rtol=1e-6)
    assert result["aAcc"] == pytest.approx(accuracy.compute().item())


def test_predictions_outside_the_classes_count_as_no_class():
    # mmseg's mean_iou histograms (torch.histc over 0..num_classes - 1) drop such predictions: the pixel is a miss
    # for its label, but no class's predicted area grows (255 used to be clipped into the last class).
    rng = np.random.default_rng(1)
    label = rng.integers(0, 3, (12, 10))
    label[0, :4] = 255
    prediction = rng.integers(0, 3, (12, 10))
    prediction[rng.random((12, 10)) < 0.2] = 255
    prediction[5, :3] = -1
    metrics = SemanticSegmentationMetrics(num_labels=3)
    metrics.update(prediction, label)
    result = metrics.compute()

    keep = label != 255
    pred, lab = torch.from_numpy(prediction[keep]).float(), torch.from_numpy(label[keep]).float()
    def histogram(values):
        return torch.histc(values, bins=3, min=0, max=2).double().numpy()
    inter, area_pred, area_label = histogram(pred[pred == lab]), histogram(pred), histogram(lab)
    np.testing.assert_allclose(result["per_class_iou"], inter / (area_pred + area_label - inter), rtol=1e-12)
    assert result["aAcc"] == pytest.approx(inter.sum() / area_label.sum())
    assert result["mAcc"] == pytest.approx(np.mean(inter / area_label))

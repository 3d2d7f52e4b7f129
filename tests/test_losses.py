"""Loss edge cases: mixed precision and degenerate masks (formulas are checked against upstream elsewhere)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dsunet_hf.losses import birefnet_pixel_loss, iou_loss, ssim_loss

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (see conftest)


def _soft_target(size: int = 32) -> torch.Tensor:
    torch.manual_seed(0)
    return F.avg_pool2d((torch.rand(2, 1, size, size) > 0.5).float(), 5, 1, 2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_ssim_loss_is_float32_under_autocast(dtype):
    # The model computes its loss inside forward, i.e. under accelerate's autocast, where conv2d runs in half
    # precision and the SSIM variances (E[x^2] - E[x]^2) lose their digits.
    target = _soft_target()
    prediction = torch.sigmoid(torch.randn(2, 1, 32, 32) * 3)
    expected = ssim_loss(prediction, target)
    with torch.autocast("cpu", dtype=dtype):
        got = ssim_loss(prediction, target)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(expected.item(), abs=1e-6)


def test_birefnet_pixel_loss_is_float32_under_autocast():
    target = _soft_target()
    outputs = [torch.randn(2, 1, 16, 16) * 3, torch.randn(2, 1, 32, 32) * 3]
    weights = {"bce": 30, "iou": 0.5, "ssim": 10}
    expected = birefnet_pixel_loss(outputs, target, weights)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = birefnet_pixel_loss(outputs, target, weights)
    assert got.item() == pytest.approx(expected.item(), abs=1e-4)


def test_iou_loss_of_an_empty_mask_predicted_empty_is_finite():
    # sigmoid(-110) is 0 in float32: union 0, and 0/0 made the loss and all gradients NaN.
    target = torch.zeros(2, 1, 8, 8)
    target[0, :, 2:5, 2:5] = 1
    logits = torch.full((2, 1, 8, 8), -110.0, requires_grad=True)
    loss = birefnet_pixel_loss([logits], target, {"bce": 1, "iou": 0.5})
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    # The empty image's IoU loss is 1 (the limit of any prediction for an empty mask); ordinary values unchanged.
    assert iou_loss(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)).item() == 1.0
    prediction, mask = torch.rand(2, 1, 4, 4), (torch.rand(2, 1, 4, 4) > 0.5).float()
    inter = (prediction * mask).sum((1, 2, 3))
    union = prediction.sum((1, 2, 3)) + mask.sum((1, 2, 3)) - inter
    assert iou_loss(prediction, mask).item() == pytest.approx((1 - inter / union).sum().item())


def test_multiclass_labels_outside_the_classes_are_named():
    """Was torch's "IndexError: Target 9 is out of bounds" (a device-side assert on a GPU); ignored pixels pass."""
    from dsunet_hf.losses import multiclass_deep_supervision_loss

    logits = [torch.randn(2, 3, 4, 4)]
    labels = torch.zeros(2, 4, 4, dtype=torch.long)
    labels[0, 0, 0], labels[1, 1, 1] = 255, 2
    assert torch.isfinite(multiclass_deep_supervision_loss(logits, labels, [1.0]))
    labels[1, 2, 2] = 9
    with pytest.raises(ValueError, match=r"labels hold class 9, but the model has 3 classes \(0..2; 255 = ignored\)"):
        multiclass_deep_supervision_loss(logits, labels, [1.0])
    # One-hot (B, K, H, W) labels trained on their background channel ([:, 0]); 1.7 was truncated to class 1.
    one_hot = torch.nn.functional.one_hot(torch.zeros(2, 4, 4, dtype=torch.long), 3).permute(0, 3, 1, 2)
    with pytest.raises(ValueError, match=r"class-index maps \(B, H, W\) or \(B, 1, H, W\), got shape \(2, 3, 4, 4\)"):
        multiclass_deep_supervision_loss(logits, one_hot, [1.0])
    with pytest.raises(ValueError, match="got fractional values"):
        multiclass_deep_supervision_loss(logits, torch.full((2, 1, 4, 4), 1.7), [1.0])
    assert torch.isfinite(multiclass_deep_supervision_loss(logits, torch.ones(2, 1, 4, 4), [1.0]))  # whole floats
    # One (H, W) map: cross-entropy named its height as the "target batch_size".
    with pytest.raises(ValueError, match=r"got shape \(4, 4\); a single map needs its batch dimension"):
        multiclass_deep_supervision_loss([torch.randn(1, 3, 4, 4)], torch.zeros(4, 4, dtype=torch.long), [1.0])

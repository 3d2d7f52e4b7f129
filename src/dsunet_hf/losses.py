"""Segmentation losses (SAM2-UNet structure loss; BiRefNet pixel and OutRef losses).

``structure_loss`` is the PraNet / SAM2-UNet loss: weighted IoU + BCE, with pixel weights
``w = 1 + 5 * |AvgPool31(G) - G|`` that emphasise boundaries.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

BCE_WEIGHTINGS = ("global", "boundary")


def structure_loss(logits: torch.Tensor, target: torch.Tensor, bce_weighting: str = "global") -> torch.Tensor:
    """Weighted IoU + BCE for (B, 1, H, W) logits and soft targets in [0, 1].

    ``bce_weighting``:
      - ``"global"`` (default) is what upstream SAM2-UNet actually executes: its legacy
        ``reduce='none'`` argument makes the BCE term a plain mean over all pixels of the batch, so
        only the IoU term is boundary-weighted. Use it to reproduce the published numbers.
      - ``"boundary"`` is the formulation as written (PraNet's intent): a per-image BCE weighted by the
        same boundary weights. The two differ by about 1e-3 on random data.
    """
    if bce_weighting not in BCE_WEIGHTINGS:
        raise ValueError(f"bce_weighting must be one of {BCE_WEIGHTINGS}, got {bce_weighting!r}")
    if logits.shape != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in shape")
    # At least float32: under bf16/fp16 autocast the logits are half precision, and sums over H*W pixels in
    # 8 mantissa bits would lose most of their digits (BiRefNet's losses cast the same way).
    dtype = torch.promote_types(logits.dtype, torch.float32)
    logits, target = logits.to(dtype), target.to(dtype)
    weight = 1 + 5 * torch.abs(F.avg_pool2d(target, kernel_size=31, stride=1, padding=15) - target)
    if bce_weighting == "global":
        bce = F.binary_cross_entropy_with_logits(logits, target)
    else:
        pixel_bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        bce = (weight * pixel_bce).sum(dim=(2, 3)) / weight.sum(dim=(2, 3))
    probabilities = torch.sigmoid(logits)
    intersection = (probabilities * target * weight).sum(dim=(2, 3))
    union = ((probabilities + target) * weight).sum(dim=(2, 3))
    weighted_iou = 1 - (intersection + 1) / (union - intersection + 1)
    return (bce + weighted_iou).mean()


def deep_supervision_loss(
    outputs: Sequence[torch.Tensor],
    target: torch.Tensor,
    weights: Sequence[float],
    bce_weighting: str = "global",
) -> torch.Tensor:
    """Weighted sum of ``structure_loss`` over several full-resolution outputs (final map first)."""
    if len(outputs) != len(weights):
        raise ValueError(f"{len(outputs)} outputs but {len(weights)} loss weights")
    return sum(w * structure_loss(o, target, bce_weighting) for o, w in zip(outputs, weights))


def class_index_labels(labels: torch.Tensor, size: torch.Size, num_classes: int, ignore_index: int = 255
                       ) -> torch.Tensor:
    """``labels`` (B, H, W) or (B, 1, H, W) class indices (0..num_classes-1 or ``ignore_index``) of spatial ``size``
    as a long (B, H, W) tensor; anything else is refused in one line rather than trained on wrongly."""
    if labels.ndim == 4 and labels.shape[1] != 1:  # one-hot (B, K, H, W): [:, 0] would train on the background
        raise ValueError(f"labels must be class-index maps (B, H, W) or (B, 1, H, W), got shape {tuple(labels.shape)}")
    labels = labels[:, 0] if labels.ndim == 4 else labels
    if labels.ndim != 3:  # one (H, W) map: cross-entropy took its height for a batch size
        raise ValueError(f"labels must be class-index maps (B, H, W) or (B, 1, H, W), got shape {tuple(labels.shape)}"
                         + ("; a single map needs its batch dimension: labels[None]" if labels.ndim == 2 else ""))
    if labels.shape[-2:] != size:
        raise ValueError(f"labels {tuple(labels.shape)} must match the input size {tuple(size)}")
    if torch.compiler.is_compiling():  # a check syncs the device: not inside a compiled graph
        return labels.long()
    # Soft maps (the processor's ``masks``: gray / 255) would be truncated to class 0 without a word.
    if labels.is_floating_point() and not torch.equal(labels, labels.round()):
        raise ValueError("labels must be class indices (0..num_labels-1, or the ignore index), got fractional "
                         "values: the processor's `masks` are soft foreground maps for binary models; give a "
                         "multi-class model its label maps as integer tensors")
    labels = labels.long()
    # Was torch's "Target 9 is out of bounds" (on a GPU a device-side assert that kills the process).
    bad = labels[(labels != ignore_index) & ((labels < 0) | (labels >= num_classes))]
    if bad.numel():
        raise ValueError(f"labels hold class {int(bad[0])}, but the model has {num_classes} classes (0.."
                         f"{num_classes - 1}; {ignore_index} = ignored): check num_labels / id2label")
    return labels


def multiclass_deep_supervision_loss(
    outputs: Sequence[torch.Tensor], labels: torch.Tensor, weights: Sequence[float], ignore_index: int = 255
) -> torch.Tensor:
    """Weighted sum of softmax cross-entropy over several full-resolution outputs (final map first), each
    averaged over the labelled pixels (0 when none is labelled, instead of NaN)."""
    if len(outputs) != len(weights):
        raise ValueError(f"{len(outputs)} outputs but {len(weights)} loss weights")
    labels = class_index_labels(labels, outputs[0].shape[-2:], outputs[0].shape[1], ignore_index)
    labelled = (labels != ignore_index).sum().clamp(min=1)
    return sum(
        w * F.cross_entropy(o.float(), labels, ignore_index=ignore_index, reduction="sum") / labelled
        for o, w in zip(outputs, weights)
    )


# --- BiRefNet --------------------------------------------------------------------------------------------

def _gaussian_window(size: int = 11, sigma: float = 1.5, like: torch.Tensor | None = None) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    window = (g[:, None] * g[None, :]).view(1, 1, size, size)
    return window.to(like) if like is not None else window


def ssim_loss(prediction: torch.Tensor, target: torch.Tensor, window_size: int = 11) -> torch.Tensor:
    """``1 - (1 + SSIM) / 2`` with an 11x11 Gaussian window (sigma 1.5, zero padding), SSIM averaged over all
    pixels of the batch: BiRefNet's boundary-level loss. Inputs are probabilities (B, 1, H, W).

    Always float32, autocast or not: the variances are differences of blurred squares, which a bf16/fp16
    convolution (autocast runs conv2d in half precision) would lose (upstream computes its loss outside autocast)."""
    prediction, target = prediction.float(), target.float()
    window = _gaussian_window(window_size, like=prediction)
    pad = window_size // 2

    def blur(x):
        with torch.autocast(x.device.type, enabled=False):
            return F.conv2d(x, window, padding=pad)

    mu_p, mu_t = blur(prediction), blur(target)
    var_p = blur(prediction * prediction) - mu_p**2
    var_t = blur(target * target) - mu_t**2
    cov = blur(prediction * target) - mu_p * mu_t
    c1, c2 = 0.01**2, 0.03**2
    ssim = ((2 * mu_p * mu_t + c1) * (2 * cov + c2)) / ((mu_p**2 + mu_t**2 + c1) * (var_p + var_t + c2))
    return 1 - (1 + ssim.mean()) / 2


def iou_loss(prediction: torch.Tensor, target: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """Soft IoU loss ``1 - |P∩G| / |P∪G|`` per image, **summed** over the batch (as upstream trains), or with
    ``reduction="mean"`` averaged over it (a per-sample value that does not grow with the batch size)."""
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    intersection = (prediction * target).flatten(1).sum(1)
    union = prediction.flatten(1).sum(1) + target.flatten(1).sum(1) - intersection
    # An empty mask predicted empty to float precision (sigmoid(logit < -103) == 0) has union 0: loss 1 (the limit
    # of any empty-mask IoU) instead of 0/0 = NaN, which would poison the loss and every gradient.
    per_image = 1 - intersection / union.clamp(min=torch.finfo(union.dtype).tiny)
    return per_image.sum() if reduction == "sum" else per_image.mean()


def _pixel_term(name: str, logits: torch.Tensor, target: torch.Tensor, iou_reduction: str = "sum") -> torch.Tensor:
    if name == "bce":
        return F.binary_cross_entropy_with_logits(logits, target)
    probabilities = torch.sigmoid(logits)
    if name == "iou":
        return iou_loss(probabilities, target, reduction=iou_reduction)
    if name == "ssim":
        return ssim_loss(probabilities, target)
    if name == "mae":
        return F.l1_loss(probabilities, target)
    if name == "mse":
        return F.mse_loss(probabilities, target)
    raise ValueError(f"unknown BiRefNet loss {name!r}")


def birefnet_pixel_loss(
    outputs: Sequence[torch.Tensor], target: torch.Tensor, weights: dict[str, float], iou_reduction: str = "sum"
) -> torch.Tensor:
    """BiRefNet's ``PixLoss``: every output (auxiliary maps first, final last) is resized to the target
    (bilinear, align_corners=True) and scored with the weighted BCE / IoU / SSIM / MAE / MSE on its sigmoid,
    all levels with equal weight. The BCE is computed from logits (upstream applies ``nn.BCELoss`` to the
    sigmoid: the same value without its log clamp, and safe under autocast).

    The other terms are means over the batch, the IoU term upstream's sum over it (``iou_reduction="sum"``, what
    training optimises); ``"mean"`` makes the whole loss a per-sample mean, independent of the batch size (what
    the model reports in eval mode, as the validation loss)."""
    total = target.new_zeros(())
    for logits in outputs:
        logits = logits.float()  # resize in float32 too, as upstream does on accelerate's float32 outputs
        if logits.shape[-2:] != target.shape[-2:]:
            logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=True)
        for name, weight in weights.items():
            if weight:
                total = total + weight * _pixel_term(name, logits, target, iou_reduction)
    return total


def outward_reference_loss(gradient_logits: Sequence[torch.Tensor], gradient_targets: Sequence[torch.Tensor]):
    """Sum over stages of ``BCE(sigmoid(resize(prediction)), sigmoid(target))`` (soft targets), the OutRef
    supervision; computed from logits."""
    total = 0.0
    for logits, target in zip(gradient_logits, gradient_targets):
        logits = F.interpolate(logits.float(), size=target.shape[-2:], mode="bilinear", align_corners=True)
        total = total + F.binary_cross_entropy_with_logits(logits, torch.sigmoid(target.float()))
    return total

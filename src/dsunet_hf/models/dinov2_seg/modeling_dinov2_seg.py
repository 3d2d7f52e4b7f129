"""DINOv2 semantic segmentation: frozen DINOv2 tokens -> BatchNorm -> 1x1 conv (the official ``BNHead``).

Per crop, as upstream: centre zero-padding of the normalised image to a multiple of 14; final-LayerNorm'd
patch tokens of the last block (``linear``) or the last four blocks concatenated (``multilayer``); BN +
1x1 conv at token resolution; logits resized bilinearly straight to the *unpadded* crop size (the padding
border is stretched, not cropped). ``segment`` adds the sliding-window and multi-scale + flip schedules.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import SemanticSegmenterOutput

from ...backbones.dinov2 import DINOv2Backbone, load_dinov2_state_dict
from ...losses import class_index_labels
from ...modeling_utils import (
    SegmentationPreTrainedModel,
    check_image_batch,
    refuse_unknown_kwargs,
    run_backbone,
    wants_hidden_states,
)
from .configuration_dinov2_seg import Dinov2SegConfig

SCHEDULES = ("single", "slide", "multiscale")


def sliding_window_logits(logits_of, pixel_values: torch.Tensor, crop: int, stride: int, num_labels: int):
    """Average the logits (``logits_of(window)``) of overlapping crop x crop windows, mmseg-style: windows keep
    the full crop length, the last one flush with the border (smaller only when the image is). The sums are
    float32 whatever the model's dtype (a bf16 sum rounds every addition)."""
    batch, _, height, width = pixel_values.shape
    total = pixel_values.new_zeros(batch, num_labels, height, width, dtype=torch.float32)
    count = pixel_values.new_zeros(1, 1, height, width, dtype=torch.float32)
    for row in range(math.ceil(max(height - crop, 0) / stride) + 1):
        for column in range(math.ceil(max(width - crop, 0) / stride) + 1):
            y2, x2 = min(row * stride + crop, height), min(column * stride + crop, width)
            y1, x1 = max(y2 - crop, 0), max(x2 - crop, 0)
            total[:, :, y1:y2, x1:x2] += logits_of(pixel_values[:, :, y1:y2, x1:x2]).float()
            count[:, :, y1:y2, x1:x2] += 1
    return total / count


def rescaled_size(height: int, width: int, short_side: int, max_long_side: int | None = None) -> tuple[int, int]:
    """mmcv's keep-ratio rescale to a short side (and at most ``max_long_side`` on the long one): scale
    s = min(short_side / min(height, width), max_long_side / max(height, width)), each side int(side * s + 0.5)."""
    scale = short_side / min(height, width)
    if max_long_side:
        scale = min(scale, max_long_side / max(height, width))
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


def segment_with_schedule(logits_of, pixel_values: torch.Tensor | list[torch.Tensor], schedule: str, config,
                          output_size: tuple[int, int] | None = None) -> torch.Tensor:
    """The three inference schedules of the DINOv2 heads around any ``logits_of(crop)`` (the PyTorch head, or
    its ONNX graph): float32 class probabilities (B, K, *output_size*), whatever the model's dtype.

    As upstream (mmseg), each view's logits (window-averaged for ``slide`` / ``multiscale``) are bilinearly
    resized to ``output_size`` *before* the softmax; flipped views are flipped back after it; ``multiscale``
    averages the probabilities of all scale x flip views. ``output_size`` defaults to the input's size (the first
    view's for a list); upstream's is the original image's.

    ``pixel_values``: a (B, 3, H, W) tensor, or for ``multiscale`` a list of them, one per ``config.test_scales``
    (upstream's views: each made from the original image, short side int(base x ratio)). From a single tensor the
    views are resized from it (bilinear): short side int(short x ratio), each side int(side x s + 0.5).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    views = list(pixel_values) if isinstance(pixel_values, (list, tuple)) else None
    if views is not None:
        if schedule != "multiscale":
            raise ValueError(f"a list of per-scale inputs is for the 'multiscale' schedule, got {schedule!r}")
        if len(views) != len(config.test_scales):
            raise ValueError(f"{len(views)} per-scale inputs for {len(config.test_scales)} test scales "
                             f"{config.test_scales}")
    for view in views if views is not None else [pixel_values]:  # a (3, H, W) image: "not enough values to unpack"
        check_image_batch(view)
    size = tuple(output_size or (views[0] if views is not None else pixel_values).shape[-2:])

    def probabilities_of(logits):
        logits = logits.float()  # resize, softmax and the average over views in float32, also for a bf16 model
        if tuple(logits.shape[-2:]) != size:
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits.softmax(dim=1)

    if schedule == "single":
        return probabilities_of(logits_of(pixel_values))

    def slide(view):
        return sliding_window_logits(logits_of, view, config.crop_size, config.stride, config.num_labels)

    if schedule == "slide":
        return probabilities_of(slide(pixel_values))
    if views is None:  # lazily, one scale at a time
        height, width = pixel_values.shape[-2:]
        scaled_sizes = [rescaled_size(height, width, int(min(height, width) * scale)) for scale in config.test_scales]
        views = (pixel_values if scaled == (height, width) else
                 F.interpolate(pixel_values, size=scaled, mode="bilinear", align_corners=False)
                 for scaled in scaled_sizes)
    probabilities, count = None, 0
    for view in views:
        for flip in (False, True) if config.test_flip else (False,):
            view_probabilities = probabilities_of(slide(view.flip(-1) if flip else view))
            if flip:
                view_probabilities = view_probabilities.flip(-1)
            probabilities = view_probabilities if probabilities is None else probabilities.add_(view_probabilities)
            count += 1
    return probabilities.div_(count)


class BNHead(nn.Module):
    """BatchNorm over the (concatenated) token channels, then a 1x1 conv to the classes."""

    def __init__(self, channels: int, num_labels: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.conv_seg = nn.Conv2d(channels, num_labels, kernel_size=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.conv_seg(self.bn(features))


def center_pad(pixel_values: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad (the mean colour after normalisation) to a multiple: floor(p/2) before, ceil(p/2) after."""
    height, width = pixel_values.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    return F.pad(pixel_values, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))


class Dinov2ForSemanticSegmentation(SegmentationPreTrainedModel):
    config_class = Dinov2SegConfig
    config: Dinov2SegConfig
    base_model_prefix = "dinov2_seg"
    _no_split_modules = ["Dinov2Layer"]
    unused_parameters = ("backbone.encoder.embeddings.mask_token",)
    predicts_class_maps = True
    default_schedule = "slide"

    def __init__(self, config: Dinov2SegConfig):
        super().__init__(config)
        self.backbone = DINOv2Backbone(config.get_dino_config(), config.upstream_position_interpolation)
        self.layers = [-1] if config.head_type == "linear" else list(range(-config.num_layers, 0))
        self.decode_head = BNHead(len(self.layers) * self.backbone.channels, config.num_labels)
        self.finish_init(lora_module=self.backbone.encoder)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, BNHead):  # upstream: conv_seg ~ N(0, 0.01), bias 0
            nn.init.normal_(module.conv_seg.weight, std=0.01)
            nn.init.zeros_(module.conv_seg.bias)

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, return_dict: bool | None = None,
                output_hidden_states: bool | None = None, output_attentions: bool | None = None,
                **kwargs) -> SemanticSegmenterOutput | tuple:
        """``hidden_states`` (with ``output_hidden_states=True``): the patch-token maps (B, C, h, w) of the blocks the
        head takes (the last one, or the last four for ``multilayer``), final-LayerNorm'd, at token resolution."""
        refuse_unknown_kwargs(self, kwargs)
        with_hidden = wants_hidden_states(self, output_hidden_states, output_attentions)
        check_image_batch(pixel_values)  # a uint8 tensor ran (transformers' patch embedding casts it): wrong logits
        size = pixel_values.shape[-2:]
        maps = run_backbone(
            self.backbone, center_pad(pixel_values, self.backbone.patch_size), self.layers, method="forward_layers"
        )
        logits = F.interpolate(self.decode_head(torch.cat(maps, dim=1)), size=size, mode="bilinear",
                               align_corners=False)
        loss = None
        if labels is not None:
            loss = self.loss(logits, labels)
        output = SemanticSegmenterOutput(loss=loss, logits=logits, hidden_states=tuple(maps) if with_hidden else None)
        return self.output_as_asked(output, return_dict)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy ignoring ``semantic_loss_ignore_index``, averaged over ALL pixels (mmseg's
        ``avg_non_ignore=False``, as the official heads were trained)."""
        labels = class_index_labels(labels, logits.shape[-2:], self.config.num_labels,
                                    self.config.semantic_loss_ignore_index)
        per_pixel = F.cross_entropy(logits, labels, ignore_index=self.config.semantic_loss_ignore_index,
                                    reduction="none")
        return per_pixel.sum() / per_pixel.numel()

    # --- inference schedules ---------------------------------------------------------------------------
    @torch.no_grad()
    def segment(self, pixel_values: torch.Tensor | list[torch.Tensor], schedule: str = "slide",
                output_size: tuple[int, int] | None = None) -> torch.Tensor:
        """float32 class probabilities (B, K, *output_size*): ``single`` pass, ``slide`` (sliding window), or
        ``multiscale`` (sliding window at each of ``config.test_scales``, plus flipped views, probabilities
        averaged). Each view's logits are resized to ``output_size`` (default: the input's size) before the
        softmax, as upstream does at the original image's size.

        Prepare the input at the base short side (512 linear, 640 multi-layer) as upstream does. For
        ``multiscale``, upstream's views are a list of tensors, one per test scale, each resized from the
        original image to short side int(base x ratio) (``dsunet_hf.semantic`` does this); from a single
        tensor the views are resized from it instead."""
        return segment_with_schedule(lambda crop: self(crop, return_dict=True).logits, pixel_values, schedule, self.config,
                                     output_size=output_size)

    def default_image_processor(self):
        from ...image_processing import SegmentationImageProcessor

        # Crops are fed at their size; resizing to the base short side is the caller's (see ``segment``).
        return SegmentationImageProcessor(size=self.config.crop_size)

    def model_card(self, metrics=None, dataset_names=None, repo_id=None, **extra):
        config = self.config
        card_data = self.card_metadata(
            license="apache-2.0", base_models=[config.backbone_repo_id], dataset_names=dataset_names,
            tags=["semantic-segmentation", "dinov2", "dsunet-hf", f"head-{config.head_type}"],
        )
        return self.render_card("dinov2_seg.md", card_data, metrics=metrics, dataset_names=dataset_names,
                                repo_id=repo_id, labels=[config.id2label[i] for i in sorted(config.id2label)], **extra)

    # --- frozen backbone --------------------------------------------------------------------------------
    def load_frozen_backbones(self, **download_kwargs) -> None:
        state_dict, commit = load_dinov2_state_dict(self.config.backbone_repo_id, self.config.backbone_revision,
                                                    **download_kwargs)
        self.backbone.load_encoder_state_dict(state_dict, source=self.config.backbone_repo_id)
        self.config.backbone_revision = commit or self.config.backbone_revision
        self.record_frozen_weights()


__all__ = ["BNHead", "Dinov2ForSemanticSegmentation", "center_pad"]

"""Class maps for the single-map models of the SAM2-UNet family (SAM2-UNet, DSU-Net).

Two classes (the default, background / foreground) keep the papers' single sigmoid map and structure loss; more
(``config.num_labels > 2``) give every head one logit map per class, softmax cross-entropy on the deep-supervision
outputs, and the semantic path of training, evaluation and prediction (label maps, mIoU, palette PNGs), as the
SAM2-UNet authors advise for multi-class and medical data.
"""

from __future__ import annotations

import torch

from ..losses import deep_supervision_loss, multiclass_deep_supervision_loss
from ..modeling_utils import labels_like, probabilities_from_one_pass


def check_ignore_index(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"semantic_loss_ignore_index must be an integer label value, got {value!r}")
    return value


class ClassMapsConfig:
    """Config mixin: ``num_labels`` decides between the single foreground map and one map per class."""

    @property
    def is_multiclass(self) -> bool:
        return self.num_labels > 2

    @property
    def num_output_channels(self) -> int:
        return self.num_labels if self.is_multiclass else 1

    @property
    def crop_size(self) -> int:
        """The multi-class training crop (and evaluation short side): the model's input size."""
        return self.image_size


class ClassMapsModel:
    """Model mixin (before ``SegmentationPreTrainedModel`` in the bases) for a ``ClassMapsConfig`` model: its loss
    and, with more than two classes, ``segment`` for the semantic path. ``display_name`` names it in messages."""

    display_name = "this model"
    default_schedule = "single"

    @property
    def predicts_class_maps(self) -> bool:
        return self.config.is_multiclass

    def class_maps_loss(self, outputs: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        """The deep-supervision loss of ``outputs`` (in the order of ``config.loss_weights``): cross-entropy on
        class-index maps (B, H, W) with more than two classes, else the structure loss on foreground masks."""
        config = self.config
        if config.is_multiclass:
            return multiclass_deep_supervision_loss(outputs, labels, config.loss_weights,
                                                    config.semantic_loss_ignore_index)
        return deep_supervision_loss(outputs, labels_like(labels, outputs[0]), config.loss_weights,
                                     config.bce_weighting)

    @torch.no_grad()
    def segment(self, pixel_values: torch.Tensor, schedule: str = "single",
                output_size: tuple[int, int] | None = None) -> torch.Tensor:
        """Class probabilities (B, K, H, W) at ``output_size`` (default: the input size) from one pass at
        ``config.image_size`` (the input is resized to the square the model was trained at, the probabilities
        back)."""
        if not self.config.is_multiclass:
            raise ValueError("segment() is for multi-class models (num_labels > 2); this one predicts one "
                             "foreground map: use the logits (sigmoid) or the image processor")
        if schedule != "single":
            raise ValueError(f"{self.display_name} has one inference schedule, 'single' (a pass at "
                             f"{self.config.image_size}px); got {schedule!r}")
        square = (self.config.image_size, self.config.image_size)
        return probabilities_from_one_pass(lambda pixels: self(pixels, return_dict=True).logits, pixel_values, square, output_size)


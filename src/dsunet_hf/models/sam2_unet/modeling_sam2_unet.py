"""SAM2-UNet: frozen SAM 2 Hiera trunk with bottleneck adapters, RFB blocks and a U-Net decoder.

Forward (as upstream): four Hiera stage maps -> RFB to 64 channels -> three up blocks (1/16, 1/8, 1/4)
-> side heads; every output is bilinearly resized to the input size. Upstream's unused ``up4`` is not
built, so DDP needs no ``find_unused_parameters``. With more than two classes (``config.num_labels``) the
three heads predict one logit map per class, trained with softmax cross-entropy (``models/class_maps.py``).
"""

from __future__ import annotations

import torch
from torch import nn

from ...backbones.hiera import HieraBackbone, load_hiera_state_dict
from ...finetune import uses_adapters
from ...modeling_utils import (
    SegmentationOutput,
    SegmentationPreTrainedModel,
    check_pixel_values,
    refuse_unknown_kwargs,
    run_backbone,
    wants_hidden_states,
)
from ...modules.adapters import BottleneckAdapter
from ...modules.decoder_blocks import UpBlock, decode_with_side_outputs
from ...modules.rfb import RFB
from ..class_maps import ClassMapsModel
from .configuration_sam2_unet import Sam2UNetConfig


class Sam2UNetOutput(SegmentationOutput):
    """SAM2-UNet output: ``logits`` (final map), ``aux_logits`` (side outputs from 1/16 and 1/8; in training, with
    ``labels``, or with ``output_aux_logits=True``), ``loss``, ``hidden_states`` (with ``output_hidden_states=True``:
    the four Hiera stage maps, strides 4 to 32, that the RFB blocks take)."""


class Sam2UNetForImageSegmentation(ClassMapsModel, SegmentationPreTrainedModel):
    config_class = Sam2UNetConfig
    config: Sam2UNetConfig
    base_model_prefix = "sam2_unet"
    _no_split_modules = ["Sam2MultiScaleBlock"]
    display_name = "SAM2-UNet"

    def __init__(self, config: Sam2UNetConfig):
        super().__init__(config)
        self.backbone = HieraBackbone(config.get_hiera_config())
        if uses_adapters(config.finetune_strategy):
            self.backbone.insert_adapters(lambda dim: BottleneckAdapter(dim, config.adapter_dim))
        c1, c2, c3, c4 = self.backbone.channels
        width = config.rfb_channels
        self.rfb1, self.rfb2 = RFB(c1, width), RFB(c2, width)
        self.rfb3, self.rfb4 = RFB(c3, width), RFB(c4, width)
        self.up1 = UpBlock(2 * width, width)
        self.up2 = UpBlock(2 * width, width)
        self.up3 = UpBlock(2 * width, width)
        classes = config.num_output_channels  # 1 (foreground logit) or one per class
        self.side1 = nn.Conv2d(width, classes, kernel_size=1)
        self.side2 = nn.Conv2d(width, classes, kernel_size=1)
        self.head = nn.Conv2d(width, classes, kernel_size=1)
        self.finish_init(lora_module=self.backbone.encoder)

    def forward(
        self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, return_dict: bool | None = None,
        output_aux_logits: bool | None = None, output_hidden_states: bool | None = None,
        output_attentions: bool | None = None, **kwargs
    ) -> Sam2UNetOutput | tuple:
        refuse_unknown_kwargs(self, kwargs)
        with_hidden = wants_hidden_states(self, output_hidden_states, output_attentions)
        check_pixel_values(pixel_values, 32)
        size = pixel_values.shape[-2:]
        if self.rfb4.training and pixel_values.shape[0] * (size[0] // 32) * (size[1] // 32) == 1:
            # Else PyTorch's "Expected more than 1 value per channel" from deep inside RFB4.
            raise ValueError(
                f"cannot train on one {size[0]}x{size[1]} image: the deepest (1/32) map is 1x1, and RFB4's "
                f"BatchNorm needs more than one value per channel in training; use batches of 2 or more, or "
                f"inputs of at least 64 px (image_size)"
            )
        x1, x2, x3, x4 = run_backbone(self.backbone, pixel_values)
        hidden_states = (x1, x2, x3, x4) if with_hidden else None
        x1, x2, x3, x4 = self.rfb1(x1), self.rfb2(x2), self.rfb3(x3), self.rfb4(x4)
        side1, side2, logits = decode_with_side_outputs(
            [x1, x2, x3, x4], [self.up1, self.up2, self.up3], [self.side1, self.side2, self.head], size
        )

        loss = None
        if labels is not None:  # 0/1 masks, or class-index maps (B, H, W) with more than two classes
            loss = self.class_maps_loss([logits, side1, side2], labels)
        # The side outputs where they are used (training, a loss) or asked for: a tuple of maps in an inference
        # output breaks transformers' pipeline, which splits every output field by image.
        with_aux = self.training or labels is not None or bool(output_aux_logits)
        output = Sam2UNetOutput(loss=loss, logits=logits, aux_logits=(side1, side2) if with_aux else None,
                                hidden_states=hidden_states)
        return self.output_as_asked(output, return_dict)

    # --- frozen backbone ------------------------------------------------------------------------------
    def load_frozen_backbones(self, **download_kwargs) -> None:
        state_dict, commit = load_hiera_state_dict(self.config.backbone_repo_id, self.config.backbone_revision,
                                                   **download_kwargs)
        self.backbone.load_trunk_state_dict(state_dict, source=self.config.backbone_repo_id)
        if commit is not None:
            self.config.backbone_revision = commit
        self.record_frozen_weights()

    def default_image_processor(self):
        from ...image_processing import SegmentationImageProcessor

        return SegmentationImageProcessor(size={"height": self.config.image_size, "width": self.config.image_size})

    def model_card(self, metrics=None, dataset_names=None, repo_id=None, **extra):
        config = self.config
        card_data = self.card_metadata(
            license="apache-2.0", base_models=[config.backbone_repo_id], dataset_names=dataset_names,
            tags=["image-segmentation", "sam2-unet", "sam2", "dsunet-hf", f"finetune-{config.finetune_strategy}"],
        )
        return self.render_card("sam2_unet.md", card_data, metrics=metrics, dataset_names=dataset_names,
                                repo_id=repo_id, **extra)


__all__ = ["Sam2UNetForImageSegmentation", "Sam2UNetOutput"]

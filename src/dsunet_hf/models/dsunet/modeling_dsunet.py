"""DSU-Net: SAM 2 Hiera (with adapters) on a 352 px view, DINOv2 on a 518 px view of the same image.

Forward (as upstream ``DGSUNet``): Hiera stage maps x1..x4; the DINOv2 patch-token map resized
bilinearly to x4's size, projected by a depthwise-separable WTConv, fused into x4 by CGAFusion; RFB to 64
channels; three SFF decoders (1/16, 1/8, 1/4) with side heads; outputs resized to the input size. With more
than two classes (``config.num_labels``) the three heads predict one logit map per class, trained with softmax
cross-entropy (``models/class_maps.py``, as SAM2-UNet).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...backbones.dinov2 import DINOv2Backbone, load_dinov2_state_dict
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
from ...modules.decoder_blocks import decode_with_side_outputs
from ...modules.fusion import CGAFusion
from ...modules.rfb import RFB
from ...modules.sff import SFF
from ...modules.wtconv import DepthwiseSeparableWTConv
from ..class_maps import ClassMapsModel
from .configuration_dsunet import DSUNetConfig


class DSUNetOutput(SegmentationOutput):
    """DSU-Net output: ``logits`` (final map), ``aux_logits`` (side outputs from 1/16 and 1/8; in training, with
    ``labels``, or with ``output_aux_logits=True``), ``loss``, ``hidden_states`` (with ``output_hidden_states=True``:
    the four Hiera stage maps, strides 4 to 32, the last one fused with DINOv2's, that the RFB blocks take)."""


class DSUNetForImageSegmentation(ClassMapsModel, SegmentationPreTrainedModel):
    config_class = DSUNetConfig
    config: DSUNetConfig
    base_model_prefix = "dsunet"
    _no_split_modules = ["Sam2MultiScaleBlock", "Dinov2Layer"]
    frozen_backbone_prefixes = ("backbone_sam.", "backbone_dino.")
    _keys_to_ignore_on_load_missing = [r"^backbone_(sam|dino)\.(?!.*(\.adapter\.|lora_))"]
    unused_parameters = ("backbone_dino.encoder.embeddings.mask_token",)
    display_name = "DSU-Net"

    def __init__(self, config: DSUNetConfig):
        super().__init__(config)
        self.backbone_sam = HieraBackbone(config.get_hiera_config())
        self.backbone_dino = DINOv2Backbone(config.get_dino_config())
        if uses_adapters(config.finetune_strategy):
            self.backbone_sam.insert_adapters(lambda dim: BottleneckAdapter(dim, config.adapter_dim))
        c1, c2, c3, c4 = self.backbone_sam.channels
        width = config.decoder_channels
        self.dino2sam_down14 = DepthwiseSeparableWTConv(
            self.backbone_dino.channels, c4, config.wtconv_kernel_size, config.wtconv_levels
        )
        self.fusion4 = CGAFusion(c4, config.fusion_reduction)
        self.rfb1, self.rfb2 = RFB(c1, width), RFB(c2, width)
        self.rfb3, self.rfb4 = RFB(c3, width), RFB(c4, width)
        self.decoder1, self.decoder2, self.decoder3 = SFF(width), SFF(width), SFF(width)
        classes = config.num_output_channels  # 1 (foreground logit) or one per class
        self.side1 = nn.Conv2d(width, classes, kernel_size=1)
        self.side2 = nn.Conv2d(width, classes, kernel_size=1)
        self.head = nn.Conv2d(width, classes, kernel_size=1)
        self.finish_init(lora_module=self.backbone_sam.encoder)

    def forward(
        self,
        pixel_values: torch.Tensor,
        dino_pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
        output_aux_logits: bool | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> DSUNetOutput | tuple:
        """``pixel_values``: the 352 px view; ``dino_pixel_values``: the 518 px view of the same image (the
        image processor makes both). Without it, the 352 px view is resized bilinearly (an approximation; what the
        multi-class path does: it trains on crops and segments with one tensor). ``labels``: 0/1 masks, or with
        more than two classes class-index maps (B, H, W)."""
        refuse_unknown_kwargs(self, kwargs)
        with_hidden = wants_hidden_states(self, output_hidden_states, output_attentions)
        check_pixel_values(pixel_values, 32)
        if min(pixel_values.shape[-2:]) < 128:
            raise ValueError(f"DSU-Net needs inputs of at least 128 px, got {tuple(pixel_values.shape[-2:])}")
        size = pixel_values.shape[-2:]
        if dino_pixel_values is None:
            dino_size = (self.config.dino_image_size, self.config.dino_image_size)
            dino_pixel_values = F.interpolate(pixel_values, size=dino_size, mode="bilinear", align_corners=False)
        check_pixel_values(dino_pixel_values, self.backbone_dino.patch_size, "dino_pixel_values")
        if dino_pixel_values.shape[0] != pixel_values.shape[0]:  # else the fusion broadcasts one image's DINO map
            raise ValueError(f"dino_pixel_values holds {dino_pixel_values.shape[0]} images, pixel_values "
                             f"{pixel_values.shape[0]}: they must be two views of the same batch")
        x1, x2, x3, x4 = run_backbone(self.backbone_sam, pixel_values)
        dino = run_backbone(self.backbone_dino, dino_pixel_values)
        dino = F.interpolate(dino, size=x4.shape[-2:], mode="bilinear", align_corners=False)
        x4 = self.fusion4(x4, self.dino2sam_down14(dino))
        hidden_states = (x1, x2, x3, x4) if with_hidden else None
        x1, x2, x3, x4 = self.rfb1(x1), self.rfb2(x2), self.rfb3(x3), self.rfb4(x4)
        side1, side2, logits = decode_with_side_outputs(
            [x1, x2, x3, x4], [self.decoder1, self.decoder2, self.decoder3], [self.side1, self.side2, self.head], size
        )

        loss = None
        if labels is not None:
            loss = self.class_maps_loss([side1, side2, logits], labels)
        # The side outputs where they are used (training, a loss) or asked for: a tuple of maps in an inference
        # output breaks transformers' pipeline, which splits every output field by image.
        with_aux = self.training or labels is not None or bool(output_aux_logits)
        output = DSUNetOutput(loss=loss, logits=logits, aux_logits=(side1, side2) if with_aux else None,
                              hidden_states=hidden_states)
        return self.output_as_asked(output, return_dict)

    # --- frozen backbones -----------------------------------------------------------------------------
    def load_frozen_backbones(self, **download_kwargs) -> None:
        config = self.config
        hiera, commit = load_hiera_state_dict(config.sam_backbone_repo_id, config.sam_backbone_revision,
                                              **download_kwargs)
        self.backbone_sam.load_trunk_state_dict(hiera, source=config.sam_backbone_repo_id)
        config.sam_backbone_revision = commit or config.sam_backbone_revision
        dino, commit = load_dinov2_state_dict(config.dino_backbone_repo_id, config.dino_backbone_revision,
                                              **download_kwargs)
        self.backbone_dino.load_encoder_state_dict(dino, source=config.dino_backbone_repo_id)
        config.dino_backbone_revision = commit or config.dino_backbone_revision
        self.record_frozen_weights()

    def default_image_processor(self):
        from ...image_processing import SegmentationImageProcessor

        return SegmentationImageProcessor(
            size=self.config.image_size, extra_sizes={"dino_pixel_values": self.config.dino_image_size}
        )

    def model_card(self, metrics=None, dataset_names=None, repo_id=None, **extra):
        config = self.config
        card_data = self.card_metadata(
            license="apache-2.0", base_models=[config.sam_backbone_repo_id, config.dino_backbone_repo_id],
            dataset_names=dataset_names,
            tags=["image-segmentation", "dsunet", "sam2", "dinov2", "dsunet-hf", f"finetune-{config.finetune_strategy}"],
        )
        return self.render_card("dsunet.md", card_data, metrics=metrics, dataset_names=dataset_names, repo_id=repo_id,
                                **extra)


__all__ = ["DSUNetForImageSegmentation", "DSUNetOutput"]

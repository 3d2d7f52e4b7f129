"""Configuration of DSU-Net (DGSUNet, Xu et al., 2025): SAM 2 Hiera + DINOv2 with WTConv/CGAFusion, SFF decoder."""

from __future__ import annotations

from transformers import Dinov2Config, PreTrainedConfig, Sam2HieraDetConfig

from ...backbones.dinov2 import DINOV2_PRESETS, dinov2_config, dinov2_config_dict, dinov2_hub_repo
from ...backbones.hiera import HIERA_LORA_TARGETS, HIERA_PRESETS, hiera_config_dict, hiera_hub_repo
from ...finetune import set_finetune_fields
from ...labels import FOREGROUND_LABELS, set_default_labels
from ...losses import BCE_WEIGHTINGS
from ..checked_config import CheckedOverrides, check_class_ids, check_loss_weights, check_positive_int
from ..class_maps import ClassMapsConfig, check_ignore_index


class DSUNetConfig(ClassMapsConfig, CheckedOverrides, PreTrainedConfig):
    """DSU-Net configuration. Defaults reproduce the paper's model (SAM 2.1 Hiera-L at 352 px, DINOv2-L at 518 px).

    Args:
        sam_preset (`str`, defaults to `"large"`): Hiera size (tiny, small, base_plus, large).
        hiera_config (`dict`, *optional*): `Sam2HieraDetConfig` fields overriding the preset (tiny test configs).
        sam_backbone_repo_id (`str`, defaults to the preset's SAM 2.1 repo, e.g. `"facebook/sam2.1-hiera-large"`): Hub repo / local path of the
            frozen Hiera weights (DSU-Net was trained from SAM 2.1).
        sam_backbone_revision (`str`, *optional*): its revision; pinned to the exact commit once loaded.
        dino_preset (`str`, defaults to `"large"`): DINOv2 size (small, base, large, giant).
        dino_config (`dict`, *optional*): `Dinov2Config` fields overriding the preset.
        dino_backbone_repo_id (`str`, defaults to the preset's repo, e.g. `"facebook/dinov2-large"`): Hub repo / local path of DINOv2.
        dino_backbone_revision (`str`, *optional*): its revision; pinned once loaded.
        image_size (`int`, defaults to 352): the Hiera input size (a multiple of 32).
        dino_image_size (`int`, defaults to 518): the DINOv2 input size (a multiple of 14).
        adapter_dim (`int`, defaults to 32): bottleneck width of the Hiera block adapters.
        fusion_reduction (`int`, defaults to 8): CGAFusion channel-attention reduction.
        wtconv_kernel_size (`int`, defaults to 3): kernel of the WTConv DINO -> SAM projection.
        wtconv_levels (`int`, defaults to 1): wavelet levels of that projection.
        decoder_channels (`int`, defaults to 64): RFB output and SFF width.
        finetune_strategy (`str`, defaults to `"adapter"`): adapter, lora, full or frozen.
        lora_rank, lora_alpha, lora_dropout, lora_target_modules: LoRA on the Hiera linears (`lora` strategy).
        loss_weights (`list[float]`, defaults to `[0.25, 0.5, 1.0]`): structure-loss weights of the 1/16 side
            output, the 1/8 side output and the final map (upstream order, since commit a63c7fa).
        bce_weighting (`str`, defaults to `"global"`): see `losses.structure_loss`.
        semantic_loss_ignore_index (`int`, defaults to 255): multi-class only: the label value that no loss
            or metric counts.
        num_labels / id2label: two classes (the default: background, foreground) give the paper's single
            sigmoid map and structure loss; more give one logit map per class on the three heads, softmax
            cross-entropy on the three outputs and the multi-class path (label maps, mIoU, palette predictions),
            as SAM2-UNet's (see `models/class_maps.py`).
    """

    model_type = "dsunet"

    def __init__(
        self,
        sam_preset: str = "large",
        hiera_config: dict | None = None,
        sam_backbone_repo_id: str | None = None,
        sam_backbone_revision: str | None = None,
        dino_preset: str = "large",
        dino_config: dict | None = None,
        dino_backbone_repo_id: str | None = None,
        dino_backbone_revision: str | None = None,
        image_size: int = 352,
        dino_image_size: int = 518,
        adapter_dim: int = 32,
        fusion_reduction: int = 8,
        wtconv_kernel_size: int = 3,
        wtconv_levels: int = 1,
        decoder_channels: int = 64,
        finetune_strategy: str = "adapter",
        lora_rank: int = 8,
        lora_alpha: int = 16,
        lora_dropout: float = 0.0,
        lora_target_modules: list[str] | None = None,
        loss_weights: list[float] | None = None,
        bce_weighting: str = "global",
        semantic_loss_ignore_index: int = 255,
        **kwargs,
    ):
        if sam_preset not in HIERA_PRESETS:
            raise ValueError(f"unknown sam_preset {sam_preset!r}; choose one of {sorted(HIERA_PRESETS)}")
        if dino_preset not in DINOV2_PRESETS:
            raise ValueError(f"unknown dino_preset {dino_preset!r}; choose one of {sorted(DINOV2_PRESETS)}")
        check_positive_int("image_size", image_size)
        check_positive_int("dino_image_size", dino_image_size)
        if image_size % 32 or image_size < 128:
            raise ValueError(
                f"image_size must be a multiple of 32 (Hiera's total stride) and at least 128 (CGAFusion's "
                f"reflect-padded 7x7 convs need a 4x4 deepest map), got {image_size}"
            )
        if bce_weighting not in BCE_WEIGHTINGS:
            raise ValueError(f"bce_weighting must be one of {BCE_WEIGHTINGS}, got {bce_weighting!r}")
        self.sam_preset = sam_preset
        self.hiera_config = hiera_config_dict(sam_preset, hiera_config)
        self.sam_backbone_repo_id = sam_backbone_repo_id or hiera_hub_repo(sam_preset, "2.1")
        self.sam_backbone_revision = sam_backbone_revision
        self.dino_preset = dino_preset
        self.dino_config = dinov2_config_dict(dino_preset, dino_config)
        if dino_image_size % self.dino_config["patch_size"]:
            raise ValueError(f"dino_image_size must be a multiple of the patch size {self.dino_config['patch_size']}")
        self.dino_backbone_repo_id = dino_backbone_repo_id or dinov2_hub_repo(dino_preset)
        self.dino_backbone_revision = dino_backbone_revision
        self.image_size = image_size
        self.dino_image_size = dino_image_size
        for name, value in [("adapter_dim", adapter_dim), ("fusion_reduction", fusion_reduction),
                            ("wtconv_kernel_size", wtconv_kernel_size), ("wtconv_levels", wtconv_levels),
                            ("decoder_channels", decoder_channels)]:
            check_positive_int(name, value)
        deepest = self.get_hiera_config().embed_dim_per_stage[-1]
        if fusion_reduction > deepest:  # CGAFusion's channel attention narrows the deepest channels by it
            raise ValueError(f"fusion_reduction ({fusion_reduction}) must be at most the deepest Hiera stage's "
                             f"{deepest} channels (CGAFusion's channel attention narrows them to channels // fusion_reduction)")
        self.adapter_dim = adapter_dim
        self.fusion_reduction = fusion_reduction
        self.wtconv_kernel_size = wtconv_kernel_size
        self.wtconv_levels = wtconv_levels
        self.decoder_channels = decoder_channels
        set_finetune_fields(self, finetune_strategy, lora_rank, lora_alpha, lora_dropout,
                            (HIERA_LORA_TARGETS if lora_target_modules is None else lora_target_modules))
        self.loss_weights = check_loss_weights([0.25, 0.5, 1.0] if loss_weights is None else loss_weights,
                                               "side 1/16, side 1/8, final")
        self.bce_weighting = bce_weighting
        self.semantic_loss_ignore_index = check_ignore_index(semantic_loss_ignore_index)
        set_default_labels(kwargs, FOREGROUND_LABELS)
        super().__init__(**kwargs)
        check_class_ids(self)  # the multi-class path names every class by its id

    def get_hiera_config(self) -> Sam2HieraDetConfig:
        return Sam2HieraDetConfig(**self.hiera_config)

    def get_dino_config(self) -> Dinov2Config:
        return dinov2_config(self.dino_preset, **self.dino_config)


__all__ = ["DSUNetConfig"]

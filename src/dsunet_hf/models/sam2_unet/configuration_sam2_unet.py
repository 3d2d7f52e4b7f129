"""Configuration of SAM2-UNet (Xiong et al., 2024): frozen SAM 2 Hiera + adapters + RFB + U-Net decoder."""

from __future__ import annotations

from transformers import PreTrainedConfig, Sam2HieraDetConfig

from ...backbones.hiera import HIERA_LORA_TARGETS, HIERA_PRESETS, hiera_config_dict, hiera_hub_repo
from ...finetune import set_finetune_fields
from ...labels import FOREGROUND_LABELS, set_default_labels
from ...losses import BCE_WEIGHTINGS
from ..checked_config import CheckedOverrides, check_class_ids, check_loss_weights, check_positive_int
from ..class_maps import ClassMapsConfig, check_ignore_index


class Sam2UNetConfig(ClassMapsConfig, CheckedOverrides, PreTrainedConfig):
    """SAM2-UNet configuration. Defaults reproduce the paper's model (SAM 2.0 Hiera-L, 352 px).

    Args:
        backbone_preset (`str`, defaults to `"large"`): Hiera size: tiny, small, base_plus or large.
        hiera_config (`dict`, *optional*): `Sam2HieraDetConfig` fields overriding the preset (tiny test
            configs); the full resolved backbone config is stored here after init.
        backbone_repo_id (`str`, defaults to the preset's SAM 2 repo, e.g. `"facebook/sam2-hiera-large"`): Hub repo (or local folder /
            checkpoint file) of the frozen trunk weights; SAM2-UNet was trained from SAM 2.0, not 2.1.
        backbone_revision (`str`, *optional*): Hub revision of the trunk; set to the exact commit once the
            weights are loaded from the Hub, so a saved artifact pins the backbone it was trained with.
        adapter_dim (`int`, defaults to 32): bottleneck width of the per-block adapters.
        rfb_channels (`int`, defaults to 64): width of the RFB outputs and of the decoder.
        image_size (`int`, defaults to 352): training/inference input size (a multiple of 32).
        finetune_strategy (`str`, defaults to `"adapter"`): adapter, lora, full or frozen (see `finetune.py`).
        lora_rank (`int`, defaults to 8): LoRA rank for the `lora` strategy.
        lora_alpha (`int`, defaults to 16): LoRA scaling numerator.
        lora_dropout (`float`, defaults to 0.0): dropout on the LoRA branch.
        lora_target_modules (`list[str]`): module-name suffixes that get LoRA (Hiera attention and MLP linears).
        loss_weights (`list[float]`, defaults to `[1.0, 1.0, 1.0]`): structure-loss weights of the final map and
            the two side outputs (upstream: equal).
        bce_weighting (`str`, defaults to `"global"`): `"global"` is the BCE upstream executes (plain mean);
            `"boundary"` the per-image boundary-weighted BCE as written (see `losses.structure_loss`).
        semantic_loss_ignore_index (`int`, defaults to 255): multi-class only: the label value that no loss
            or metric counts.
        num_labels / id2label: two classes (the default: background, foreground) give the paper's single
            sigmoid map and structure loss; more give one logit map per class, softmax cross-entropy on the
            three outputs, and the multi-class path (label maps, mIoU, palette predictions), as the authors
            advise for multi-class and medical data.
    """

    model_type = "sam2_unet"

    def __init__(
        self,
        backbone_preset: str = "large",
        hiera_config: dict | None = None,
        backbone_repo_id: str | None = None,
        backbone_revision: str | None = None,
        adapter_dim: int = 32,
        rfb_channels: int = 64,
        image_size: int = 352,
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
        if backbone_preset not in HIERA_PRESETS:
            raise ValueError(f"unknown backbone_preset {backbone_preset!r}; choose one of {sorted(HIERA_PRESETS)}")
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size % 32 or image_size < 32:
            raise ValueError(f"image_size must be a positive multiple of 32 (Hiera's total stride), got {image_size!r}")
        if bce_weighting not in BCE_WEIGHTINGS:
            raise ValueError(f"bce_weighting must be one of {BCE_WEIGHTINGS}, got {bce_weighting!r}")
        self.backbone_preset = backbone_preset
        self.hiera_config = hiera_config_dict(backbone_preset, hiera_config)
        self.backbone_repo_id = backbone_repo_id or hiera_hub_repo(backbone_preset, "2.0")
        self.backbone_revision = backbone_revision
        check_positive_int("adapter_dim", adapter_dim)
        check_positive_int("rfb_channels", rfb_channels)
        self.adapter_dim = adapter_dim
        self.rfb_channels = rfb_channels
        self.image_size = image_size
        set_finetune_fields(self, finetune_strategy, lora_rank, lora_alpha, lora_dropout,
                            (HIERA_LORA_TARGETS if lora_target_modules is None else lora_target_modules))
        self.loss_weights = check_loss_weights([1.0, 1.0, 1.0] if loss_weights is None else loss_weights,
                                               "final, side1, side2")
        self.bce_weighting = bce_weighting
        self.semantic_loss_ignore_index = check_ignore_index(semantic_loss_ignore_index)
        set_default_labels(kwargs, FOREGROUND_LABELS)
        super().__init__(**kwargs)
        check_class_ids(self)  # the multi-class path names every class by its id

    def get_hiera_config(self) -> Sam2HieraDetConfig:
        return Sam2HieraDetConfig(**self.hiera_config)


__all__ = ["Sam2UNetConfig"]

"""Configuration of the DINOv2 semantic-segmentation heads (Oquab et al., 2023): frozen DINOv2 + BN + 1x1 conv."""

from __future__ import annotations

from transformers import Dinov2Config, PreTrainedConfig
from transformers.utils import logging

from ...backbones.dinov2 import DINOV2_PRESETS, dinov2_config, dinov2_config_dict, dinov2_hub_repo
from ...finetune import check_strategy, set_finetune_fields
from ...labels import set_default_labels
from ..checked_config import CheckedOverrides, check_class_ids

logger = logging.get_logger(__name__)

HEAD_TYPES = ("linear", "multilayer")
# Crop / stride of the official sliding-window inference per head type.
SLIDE_DEFAULTS = {"linear": (512, 341), "multilayer": (640, 320)}
VOC_LABELS = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]

# ADE20K SceneParsing's 150 classes in mmseg's order (class c is raw label c + 1; 0 is "other").
ADE20K_LABELS = """wall|building|sky|floor|tree|ceiling|road|bed|windowpane|grass|cabinet|sidewalk|person|earth|door|
table|mountain|plant|curtain|chair|car|water|painting|sofa|shelf|house|sea|mirror|rug|field|armchair|seat|fence|desk|
rock|wardrobe|lamp|bathtub|railing|cushion|base|box|column|signboard|chest of drawers|counter|sand|sink|skyscraper|
fireplace|refrigerator|grandstand|path|stairs|runway|case|pool table|pillow|screen door|stairway|river|bridge|bookcase|
blind|coffee table|toilet|flower|book|hill|bench|countertop|stove|palm|kitchen island|computer|swivel chair|boat|bar|
arcade machine|hovel|bus|towel|light|truck|tower|chandelier|awning|streetlight|booth|television receiver|airplane|
dirt track|apparel|pole|land|bannister|escalator|ottoman|bottle|buffet|poster|stage|van|ship|fountain|conveyer belt|
canopy|washer|plaything|swimming pool|stool|barrel|basket|waterfall|tent|bag|minibike|cradle|oven|ball|food|step|tank|
trade name|microwave|pot|animal|bicycle|lake|dishwasher|screen|blanket|sculpture|hood|sconce|vase|traffic light|tray|
ashcan|fan|pier|crt screen|plate|monitor|bulletin board|shower|radiator|glass|clock|flag""".replace("\n", "").split("|")


class Dinov2SegConfig(CheckedOverrides, PreTrainedConfig):
    """DINOv2 linear / multi-layer segmentation head configuration (defaults: ViT-L/14, linear, VOC labels).

    Args:
        backbone_preset (`str`, defaults to `"large"`): DINOv2 size (small, base, large, giant).
        dino_config (`dict`, *optional*): `Dinov2Config` fields overriding the preset (tiny test configs).
        backbone_repo_id (`str`, defaults to the preset's repo, e.g. `"facebook/dinov2-large"`): Hub repo / local path of DINOv2.
        backbone_revision (`str`, *optional*): its revision; pinned to the exact commit once loaded.
        head_type (`str`, defaults to `"linear"`): `linear` reads the last block; `multilayer` (the paper's
            "+ms") concatenates the last four blocks.
        num_layers (`int`, defaults to 4): how many last blocks `multilayer` concatenates.
        crop_size / stride (`int`, *optional*): sliding-window inference (512/341 linear, 640/320 multilayer);
            the stride at most the crop size (a smaller crop's default stride is the crop size).
        test_scales (`list[float]`): multi-scale inference ratios (upstream 1.0, 1.32, 1.73, 2.28, 3.0).
        test_flip (`bool`, defaults to `True`): add horizontally flipped views in multi-scale inference.
        max_long_side (`int`, *optional*): the keep-ratio resize to the crop size also keeps the long side within
            this (mmseg's VOC linear heads: scale (2048, 512)); training scales it with the jitter. None: no cap.
        semantic_loss_ignore_index (`int`, defaults to 255): label value ignored by the loss and metrics.
        upstream_position_interpolation (`bool`, defaults to `True`): interpolate position embeddings for other
            grids than 37x37 with DINOv2's original ``(grid + 0.1) / 37`` scale factors, as the official heads were
            trained (transformers' own rule differs at e.g. 640-px crops).
        finetune_strategy (`str`, defaults to `"frozen"`): frozen (head only, as the paper), lora or full.
        id2label / label2id / num_labels: the classes (default: the 21 Pascal VOC classes).
    """

    model_type = "dinov2_seg"

    def __init__(
        self,
        backbone_preset: str = "large",
        dino_config: dict | None = None,
        backbone_repo_id: str | None = None,
        backbone_revision: str | None = None,
        head_type: str = "linear",
        num_layers: int = 4,
        crop_size: int | None = None,
        stride: int | None = None,
        test_scales: list[float] | None = None,
        test_flip: bool = True,
        max_long_side: int | None = None,
        semantic_loss_ignore_index: int = 255,
        upstream_position_interpolation: bool = True,
        finetune_strategy: str = "frozen",
        lora_rank: int = 8,
        lora_alpha: int = 16,
        lora_dropout: float = 0.0,
        lora_target_modules: list[str] | None = None,
        **kwargs,
    ):
        if backbone_preset not in DINOV2_PRESETS:
            raise ValueError(f"unknown backbone_preset {backbone_preset!r}; choose one of {sorted(DINOV2_PRESETS)}")
        if head_type not in HEAD_TYPES:
            raise ValueError(f"head_type must be one of {HEAD_TYPES}, got {head_type!r}")
        if check_strategy(finetune_strategy) == "adapter":
            raise ValueError("the DINOv2 heads have no adapters: use finetune_strategy frozen, lora or full")
        set_default_labels(kwargs, VOC_LABELS)
        self.backbone_preset = backbone_preset
        self.dino_config = dinov2_config_dict(backbone_preset, dino_config)
        self.backbone_repo_id = backbone_repo_id or dinov2_hub_repo(backbone_preset)
        self.backbone_revision = backbone_revision
        if head_type == "multilayer" and num_layers < 1:  # (more than the blocks: refused by the forward)
            raise ValueError(f"num_layers must be at least 1, got {num_layers}")
        self.head_type = head_type
        self.num_layers = num_layers
        default_crop, default_stride = SLIDE_DEFAULTS[head_type]
        crop_size = default_crop if crop_size is None else crop_size
        if crop_size < 1:
            raise ValueError(f"crop_size must be a positive number of pixels, got {crop_size}")
        stride = min(default_stride, crop_size) if stride is None else stride  # a small crop: windows side by side
        if stride < 1:
            raise ValueError(f"stride must be a positive number of pixels, at most crop_size ({crop_size}), "
                             f"got {stride}")
        if stride > crop_size:  # windows further apart than they are long leave pixels uncovered: 0/0 (NaN)
            logger.warning("stride %d is larger than crop_size %d: windows side by side (stride %d) instead, so "
                           "that they cover the image", stride, crop_size, crop_size)
            stride = crop_size
        test_scales = [1.0, 1.32, 1.73, 2.28, 3.0] if test_scales is None else list(test_scales)
        if not test_scales or min(test_scales) <= 0:
            raise ValueError(f"test_scales must be a non-empty list of positive ratios, got {test_scales}")
        self.crop_size = crop_size
        self.stride = stride
        self.test_scales = test_scales
        self.test_flip = test_flip
        self.max_long_side = max_long_side
        self.semantic_loss_ignore_index = semantic_loss_ignore_index
        self.upstream_position_interpolation = upstream_position_interpolation
        set_finetune_fields(self, finetune_strategy, lora_rank, lora_alpha, lora_dropout,
                            (["q_proj", "v_proj"] if lora_target_modules is None else lora_target_modules))
        super().__init__(**kwargs)
        check_class_ids(self)

    def to_diff_dict(self) -> dict:
        # transformers leaves out an id2label equal to its own default (LABEL_0, LABEL_1): read back without one,
        # a 2-class config would get the 21 VOC classes (and its head would not load). Always write the classes.
        diff = super().to_diff_dict()
        full = self.to_dict()
        for key in ("id2label", "label2id"):
            diff.setdefault(key, full[key])
        return diff

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        # A saved config.json (it records transformers_version) always names its classes since to_diff_dict does;
        # one written earlier without any is a 2-class head whose LABEL_0 / LABEL_1 transformers left out as its
        # own default (read as the 21 VOC classes, its head failed to load). Dicts built by hand keep VOC.
        if ("transformers_version" in config_dict and "num_labels" not in kwargs
                and not {"id2label", "num_labels"} & set(config_dict)):
            config_dict = {**config_dict, "num_labels": 2}
        return super().from_dict(config_dict, **kwargs)

    def get_dino_config(self) -> Dinov2Config:
        return dinov2_config(self.backbone_preset, **self.dino_config)


__all__ = ["Dinov2SegConfig"]

"""Configuration of the training-free visual-prompt matcher (frozen DINOv2, Matcher/PerSAM-style)."""

from __future__ import annotations

from transformers import Dinov2Config, PreTrainedConfig

from ...backbones.dinov2 import DINOV2_PRESETS, dinov2_config, dinov2_config_dict, dinov2_hub_repo

MATCHING_MODES = ("prototype", "bidirectional")


class VisualPromptMatcherConfig(PreTrainedConfig):
    """Reference image + visual prompt -> target mask, without training (defaults: DINOv2 ViT-L/14 at 518 px).

    Args:
        dino_preset (`str`, defaults to `"large"`): DINOv2 size (small, base, large, giant).
        dino_config (`dict`, *optional*): `Dinov2Config` fields overriding the preset (tiny test configs).
        dino_backbone_repo_id (`str`, *optional*): Hub repo / local path of the DINOv2 weights; defaults to
            Meta's repo for the preset (`facebook/dinov2-large` for `large`, as DSU-Net and dinov2-seg use).
        dino_backbone_revision (`str`, *optional*): its revision; pinned to the exact commit once loaded.
        image_size (`int`, defaults to 518): every image is resized to this square (a multiple of the patch
            size, 14), as Matcher does (37 x 37 tokens).
        feature_layer (`int`, defaults to -1): which block's output the patch features are read from,
            1-based (negative counts from the end; -1 = the last block).
        feature_layer_norm (`bool`, defaults to `False`): pass the features through DINOv2's final LayerNorm.
            Matcher uses the last block *before* the final norm (`x_prenorm`, `hidden_states[24]` for ViT-L).
        background_prototype (`bool`, defaults to `True`): also pool a background prototype from the
            reference patches outside the prompt and score `cos(fg) - cos(bg)` (suppresses look-alikes).
        matching (`str`, defaults to `"prototype"`): `prototype` scores target patches by cosine to the mean
            prompt feature; `bidirectional` keeps only the reference patches whose Matcher-style forward /
            reverse matches are cycle-consistent and scores by max cosine to them (see `matcher.py`).
        threshold (`float`, *optional*): a patch / pixel matches when its score is `> threshold`. Default: 0.0
            with a background prototype (fg wins over bg), 0.5 cosine without. With SAM 2 refinement it picks the
            coarse mask that prompts SAM 2, and `predict_masks` thresholds SAM 2's logits at 0 instead.
        sam_repo_id (`str`, *optional*): a transformers SAM 2 repo (e.g. `facebook/sam2.1-hiera-large`, loaded
            with `Sam2Model.from_pretrained`) that refines the coarse map PerSAM-style (positive points at the
            top-scoring patches, negative points at the lowest, the coarse mask's box); `segment` then returns
            SAM 2's mask logits. `None` (default) = no refinement.
        sam_revision (`str`, *optional*): its revision.
        sam_num_points (`int`, defaults to 3): positive and negative points given to SAM 2 (each at most this
            many; positives only among patches above the threshold, at least the best one).
        sam_use_box (`bool`, defaults to `True`): also give SAM 2 the bounding box of the coarse mask.
    """

    model_type = "visual_prompt_matcher"

    def __init__(
        self,
        dino_preset: str = "large",
        dino_config: dict | None = None,
        dino_backbone_repo_id: str | None = None,
        dino_backbone_revision: str | None = None,
        image_size: int = 518,
        feature_layer: int = -1,
        feature_layer_norm: bool = False,
        background_prototype: bool = True,
        matching: str = "prototype",
        threshold: float | None = None,
        sam_repo_id: str | None = None,
        sam_revision: str | None = None,
        sam_num_points: int = 3,
        sam_use_box: bool = True,
        **kwargs,
    ):
        if dino_preset not in DINOV2_PRESETS:
            raise ValueError(f"unknown dino_preset {dino_preset!r}; choose one of {sorted(DINOV2_PRESETS)}")
        if matching not in MATCHING_MODES:
            raise ValueError(f"matching must be one of {MATCHING_MODES}, got {matching!r}")
        # No trainable parameters: the shared base class reads the strategy to decide what is saved.
        strategy = kwargs.pop("finetune_strategy", "frozen")
        if strategy != "frozen":
            raise ValueError(f"the visual-prompt matcher has nothing to train: finetune_strategy must be 'frozen', "
                             f"got {strategy!r}")
        self.dino_preset = dino_preset
        self.dino_config = dinov2_config_dict(dino_preset, dino_config)
        patch = self.dino_config["patch_size"]
        if image_size % patch or image_size < patch:
            raise ValueError(f"image_size must be a positive multiple of the patch size {patch}, got {image_size}")
        depth = self.dino_config["num_hidden_layers"]
        if not (1 <= feature_layer <= depth or -depth <= feature_layer <= -1):
            raise ValueError(f"feature_layer {feature_layer} is out of range for a {depth}-block DINOv2 "
                             f"(use 1..{depth} or -{depth}..-1)")
        self.dino_backbone_repo_id = dino_backbone_repo_id or dinov2_hub_repo(dino_preset)
        self.dino_backbone_revision = dino_backbone_revision
        self.image_size = int(image_size)
        self.feature_layer = int(feature_layer)
        self.feature_layer_norm = bool(feature_layer_norm)
        self.background_prototype = bool(background_prototype)
        self.matching = matching
        self.threshold = None if threshold is None else float(threshold)
        self.sam_repo_id = sam_repo_id
        self.sam_revision = sam_revision
        if sam_num_points < 1:
            raise ValueError(f"sam_num_points must be at least 1, got {sam_num_points}")
        self.sam_num_points = int(sam_num_points)
        self.sam_use_box = bool(sam_use_box)
        self.finetune_strategy = "frozen"
        super().__init__(**kwargs)

    @property
    def score_threshold(self) -> float:
        """`threshold`, or its default: 0.0 on `cos(fg) - cos(bg)`, 0.5 on `cos(fg)` alone."""
        if self.threshold is not None:
            return self.threshold
        return 0.0 if self.background_prototype else 0.5

    def get_dino_config(self) -> Dinov2Config:
        return dinov2_config(self.dino_preset, **self.dino_config)


__all__ = ["MATCHING_MODES", "VisualPromptMatcherConfig"]

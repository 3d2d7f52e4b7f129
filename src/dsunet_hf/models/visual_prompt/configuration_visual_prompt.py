"""Configurations of visual in-context prompting: the training-free matcher (frozen DINOv2, Matcher/PerSAM-
style) and the trained in-context head (frozen DINOv2 + a DINOv-style prompt encoder and query decoder)."""

from __future__ import annotations

from transformers import Dinov2Config, PreTrainedConfig

from ...backbones.dinov2 import DINOV2_PRESETS, dinov2_config, dinov2_config_dict, dinov2_hub_repo
from ...finetune import check_strategy, set_finetune_fields
from ..checked_config import CheckedOverrides, check_finite_number, check_positive_int, is_loss_weight

MATCHING_MODES = ("prototype", "bidirectional")


def _set_dino_fields(config, preset: str, overrides: dict | None, repo_id: str | None, revision: str | None,
                     image_size: int) -> int:
    """The frozen-DINOv2 fields both visual-prompt configs share, checked; returns the backbone's depth."""
    if preset not in DINOV2_PRESETS:
        raise ValueError(f"unknown dino_preset {preset!r}; choose one of {sorted(DINOV2_PRESETS)}")
    config.dino_preset = preset
    config.dino_config = dinov2_config_dict(preset, overrides)
    check_positive_int("image_size", image_size)  # a string or 2.5: an opaque TypeError or a truncated size
    patch = config.dino_config["patch_size"]
    if image_size % patch or image_size < patch:
        raise ValueError(f"image_size must be a positive multiple of the patch size {patch}, got {image_size}")
    config.dino_backbone_repo_id = repo_id or dinov2_hub_repo(preset)
    config.dino_backbone_revision = revision
    config.image_size = int(image_size)
    return config.dino_config["num_hidden_layers"]


def _check_layer(layer: int, depth: int, what: str) -> None:
    if isinstance(layer, bool) or not isinstance(layer, int):  # 1.5 was truncated to block 1, "1" a TypeError
        raise ValueError(f"{what} must be an integer block index (1..{depth} or -{depth}..-1), got {layer!r}")
    if not (1 <= layer <= depth or -depth <= layer <= -1):
        raise ValueError(f"{what} {layer} is out of range for a {depth}-block DINOv2 (use 1..{depth} or -{depth}..-1)")


class VisualPromptMatcherConfig(CheckedOverrides, PreTrainedConfig):
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
        if matching not in MATCHING_MODES:
            raise ValueError(f"matching must be one of {MATCHING_MODES}, got {matching!r}")
        # No trainable parameters: the shared base class reads the strategy to decide what is saved.
        strategy = kwargs.pop("finetune_strategy", "frozen")
        if strategy != "frozen":
            raise ValueError(f"the visual-prompt matcher has nothing to train: finetune_strategy must be 'frozen', "
                             f"got {strategy!r}")
        depth = _set_dino_fields(self, dino_preset, dino_config, dino_backbone_repo_id, dino_backbone_revision,
                                 image_size)
        _check_layer(feature_layer, depth, "feature_layer")
        self.feature_layer = int(feature_layer)
        self.feature_layer_norm = bool(feature_layer_norm)
        self.background_prototype = bool(background_prototype)
        self.matching = matching
        self.threshold = None if threshold is None else check_finite_number("threshold", threshold)
        self.sam_repo_id = sam_repo_id
        self.sam_revision = sam_revision
        check_positive_int("sam_num_points", sam_num_points)  # "3": a TypeError, 2.5: silently 2 points
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


INFERENCE_MODES = ("prompt", "generic", "referring")


def default_feature_layers(depth: int) -> list[int]:
    """Four evenly spaced blocks ending with the last one (6, 12, 18, 24 for ViT-L/14), fewer when the
    backbone has fewer than four blocks."""
    return sorted({max(1, depth * k // 4) for k in range(1, 5)})


class VisualPromptConfig(CheckedOverrides, PreTrainedConfig):
    """Trained visual in-context segmentation head (DINOv / SINE-like) on frozen DINOv2 (defaults: ViT-L/14, 518 px).

    A reference image with a visual prompt (mask, box, scribble or point, rasterised to a mask) becomes one
    *prompt token*: a learnable content token doing masked cross-attention over the reference's multi-layer
    DINOv2 features, one layer per feature level (DINOv's prompt encoder; several references are averaged).
    A small query decoder over the target's features decodes ``num_queries`` learnable proposal queries
    plus the prompt token; proposals never attend to the prompt (and the prompt never to them), so they are
    reusable across prompts. Heads: mask embeddings (dot product with upsampled mask features), and DINOv's
    prompt classifier: ``score_i = <W LN(proposal_i), W LN(prompt)>`` (sigmoid: generic, every matching
    proposal; softmax over proposals: referring, the one matching instance).

    Args:
        dino_preset / dino_config / dino_backbone_repo_id / dino_backbone_revision: the frozen DINOv2 (as the
            matcher; tiny test configs through ``dino_config``).
        image_size (`int`, defaults to 518): square input size, a multiple of the patch size.
        feature_layers (`list[int]`, *optional*): 1-based DINOv2 blocks read as feature levels (each through
            the final LayerNorm); default: four evenly spaced blocks ending with the last.
        hidden_size (`int`, defaults to 256): width of the prompt encoder and decoder (DINOv: 256).
        num_attention_heads (`int`, defaults to 8).
        intermediate_size (`int`, defaults to 2048): decoder FFN width (DINOv: 2048).
        num_decoder_layers (`int`, defaults to 6): query-decoder layers (DINOv: 9 deformable layers); layer
            ``i`` cross-attends to feature level ``i mod levels`` (Mask2Former's round robin).
        num_queries (`int`, defaults to 100): learnable proposal queries (DINOv: 300).
        projection_dim (`int`, defaults to 512): the prompt classifier's projection (DINOv's DIM_PROJ).
        inference_mode (`str`, defaults to `"prompt"`): what ``segment`` returns: `prompt` the prompt token's
            own mask; `generic` every proposal the classifier accepts, ``max_i sigmoid(score_i) sigmoid(mask_i)``
            (all instances of the concept); `referring` the mask of the best proposal (softmax over proposals).
        mask_bce_weight / mask_dice_weight (`float`, defaults to 5.0 / 5.0): mask losses (DINOv's weights).
        score_weight (`float`, defaults to 4.0): BCE of the generic scores (DINOv: focal class loss x4).
        match_weight (`float`, defaults to 2.0): cross-entropy of the referring scores over proposals (DINOv).
        deep_supervision (`bool`, defaults to `True`): losses after every decoder layer (shared heads).
        finetune_strategy (`str`, defaults to `"frozen"`): frozen (the head only, DINOv2 fixed), lora or full.
    """

    model_type = "visual_prompt"

    def __init__(
        self,
        dino_preset: str = "large",
        dino_config: dict | None = None,
        dino_backbone_repo_id: str | None = None,
        dino_backbone_revision: str | None = None,
        image_size: int = 518,
        feature_layers: list[int] | None = None,
        hidden_size: int = 256,
        num_attention_heads: int = 8,
        intermediate_size: int = 2048,
        num_decoder_layers: int = 6,
        num_queries: int = 100,
        projection_dim: int = 512,
        inference_mode: str = "prompt",
        mask_bce_weight: float = 5.0,
        mask_dice_weight: float = 5.0,
        score_weight: float = 4.0,
        match_weight: float = 2.0,
        deep_supervision: bool = True,
        finetune_strategy: str = "frozen",
        lora_rank: int = 8,
        lora_alpha: int = 16,
        lora_dropout: float = 0.0,
        lora_target_modules: list[str] | None = None,
        **kwargs,
    ):
        if check_strategy(finetune_strategy) == "adapter":
            raise ValueError("the visual-prompt head has no adapters: use finetune_strategy frozen, lora or full")
        if inference_mode not in INFERENCE_MODES:
            raise ValueError(f"inference_mode must be one of {INFERENCE_MODES}, got {inference_mode!r}")
        sizes = {"hidden_size": hidden_size, "num_attention_heads": num_attention_heads,
                 "intermediate_size": intermediate_size, "num_decoder_layers": num_decoder_layers,
                 "num_queries": num_queries, "projection_dim": projection_dim}
        for name, value in sizes.items():  # "3": an opaque TypeError, 2.5: silently truncated, 0: a 0-wide layer
            check_positive_int(name, value)
        if hidden_size % num_attention_heads:
            raise ValueError(f"hidden_size {hidden_size} must be divisible by num_attention_heads {num_attention_heads}")
        if hidden_size % 8:
            raise ValueError(f"hidden_size must be a multiple of 8 (the mask features use hidden_size / 8), got {hidden_size}")
        weights = {"mask_bce_weight": mask_bce_weight, "mask_dice_weight": mask_dice_weight,
                   "score_weight": score_weight, "match_weight": match_weight}
        for name, value in weights.items():
            if not is_loss_weight(value):  # also NaN, inf and "1" (a TypeError)
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        depth = _set_dino_fields(self, dino_preset, dino_config, dino_backbone_repo_id, dino_backbone_revision,
                                 image_size)
        layers = list(feature_layers) if feature_layers else default_feature_layers(depth)
        for layer in layers:
            _check_layer(layer, depth, "feature layer")
        self.feature_layers = [int(v) for v in layers]
        self.hidden_size = int(hidden_size)
        self.num_attention_heads = int(num_attention_heads)
        self.intermediate_size = int(intermediate_size)
        self.num_decoder_layers = int(num_decoder_layers)
        self.num_queries = int(num_queries)
        self.projection_dim = int(projection_dim)
        self.inference_mode = inference_mode
        self.mask_bce_weight = float(mask_bce_weight)
        self.mask_dice_weight = float(mask_dice_weight)
        self.score_weight = float(score_weight)
        self.match_weight = float(match_weight)
        self.deep_supervision = bool(deep_supervision)
        set_finetune_fields(self, finetune_strategy, lora_rank, lora_alpha, lora_dropout,
                            (["q_proj", "v_proj"] if lora_target_modules is None else lora_target_modules))
        super().__init__(**kwargs)

    def get_dino_config(self) -> Dinov2Config:
        return dinov2_config(self.dino_preset, **self.dino_config)


__all__ = ["INFERENCE_MODES", "MATCHING_MODES", "VisualPromptConfig", "VisualPromptMatcherConfig",
           "default_feature_layers"]

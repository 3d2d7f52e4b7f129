"""Training-free visual-prompt segmentation on frozen DINOv2 features (Matcher / PerSAM-style).

Given reference images with a visual prompt each (mask, box, scribble or point; see ``dsunet_hf.prompts``)
and target images, score every target patch for "looks like the prompted region":

1. Every image is resized to ``config.image_size`` (518 -> 37 x 37 patches) and ImageNet-normalised, and
   DINOv2 patch features are read after block ``config.feature_layer`` (default: the last block before the
   final LayerNorm, Matcher's ``x_prenorm``); features are L2-normalised per patch.
2. The prompt is rasterised to a mask at the reference's own size and reduced to patches with
   :func:`patch_mask` (a patch is foreground when any mask pixel overlaps it, as Matcher's average-pool > 0).
3. ``matching="prototype"``: :func:`prototypes` mean-pools the foreground (and background) patches of each
   reference into unit prototypes and averages them over the references (DINOv averages prompt tokens over
   references); :func:`similarity_map` scores target patches by ``cos(fg)`` or ``cos(fg) - cos(bg)``.
   ``matching="bidirectional"``: :func:`bidirectional_matches` (Matcher's forward + reverse matching) keeps
   the reference foreground patches whose match in the target maps back inside the reference mask, and
   :func:`nearest_similarity_map` scores target patches by their max cosine to those patches (minus the max
   cosine to the reference background patches).
4. The patch scores are resized bilinearly to each target's original size; ``predict_masks`` thresholds
   them (``score > threshold``).
5. Optionally (``config.sam_repo_id``), SAM 2 refines each coarse map, PerSAM-style: positive points at the
   best patches, negative points at the worst, plus the coarse mask's box (:func:`sam_prompts`); the map
   returned is then SAM 2's mask logits. (Matcher's robust prompt sampling, EMD ranking and mask merging
   are not implemented.)

The functions work on plain feature maps so they can be checked with known features; ``segment`` takes a
``feature_fn`` (pixel values -> (B, C, h, w) features) to replace DINOv2 the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers.utils import logging

from ...backbones.dinov2 import DINOv2Backbone, load_dinov2_state_dict
from ...hub import PLACEHOLDER_REPO_ID, card_revision_kwarg, hub_download_kwargs
from ...image_io import load_image
from ...modeling_utils import (
    SegmentationPreTrainedModel,
    check_pixel_values,
    clean_loading_info,
    pop_dtype,
    refuse_unknown_kwargs,
    wants_hidden_states,
)
from ...prompts import reference_masks
from ..checked_config import check_finite_number, positive_int
from .configuration_visual_prompt import VisualPromptMatcherConfig

__all__ = [
    "SOLVERS",
    "DinoVisualPromptModel",
    "VisualPromptMatcher",
    "bidirectional_matches",
    "have_scipy",
    "linear_assignment",
    "nearest_similarity_map",
    "patch_mask",
    "prototypes",
    "sam_prompts",
    "similarity_map",
]

logger = logging.get_logger(__name__)

SOLVERS = ("auto", "hungarian", "greedy")
FeatureFn = Callable[[torch.Tensor], torch.Tensor]


# --- pure functions over feature maps ---------------------------------------------------------------------

def patch_mask(mask: Any, grid_hw: tuple[int, int], min_coverage: float = 0.0) -> torch.Tensor:
    """A ``(height, width)`` mask (array or tensor, non-zero = foreground) -> ``grid_hw`` bool patch mask.

    A patch is foreground when any foreground pixel overlaps it, i.e. the mask's average over the patch is
    > 0 (Matcher pools 14 x 14 and thresholds at 0). The mask may have any size: patch ``i`` of ``n`` along
    an axis of length ``L`` covers ``[i L / n, (i + 1) L / n)`` (adaptive average pooling), so a mask at the
    image's original size gives the patches of the image resized to the grid. ``min_coverage`` > 0: only the
    patches the mask covers at least that much, or every touched patch where none is (a thin object).
    """
    tensor = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask)
    if tensor.ndim != 2:
        raise ValueError(f"mask must be 2-D (height, width), got shape {tuple(tensor.shape)}")
    pooled = F.adaptive_avg_pool2d((tensor != 0).float()[None, None], tuple(int(v) for v in grid_hw))[0, 0]
    core = pooled >= min_coverage if min_coverage > 0 else pooled > 0
    return core if core.any() else pooled > 0


def _stack_maps(maps, ndim: int) -> torch.Tensor:
    """A batch of ``ndim``-D maps from a tensor (one map gets a batch axis) or a list of maps."""
    stacked = maps if isinstance(maps, torch.Tensor) else torch.stack([torch.as_tensor(m) for m in maps])
    return stacked[None] if stacked.ndim == ndim - 1 else stacked


def _unit(vectors: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return F.normalize(vectors.float(), dim=dim)


def prototypes(features: torch.Tensor | Sequence[torch.Tensor], patch_masks: torch.Tensor | Sequence[torch.Tensor],
               background: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Unit foreground (and background) prototypes from N references.

    ``features``: (N, C, h, w) (or a list of (C, h, w)); ``patch_masks``: (N, h, w) bool (or a list).
    Per reference, patch features are L2-normalised, averaged over its foreground patches and normalised
    again; the references' prototypes are then averaged with equal weights (whatever their mask sizes)
    and normalised once more. The background prototype is built the same way from the patches outside the
    masks (of the references that have any); it is None when ``background`` is False or no reference has a
    background patch. Returns ``(fg, bg)``, each (C,).
    """
    features = _stack_maps(features, 4)
    masks = _stack_maps(patch_masks, 3).bool()
    if features.ndim != 4 or masks.ndim != 3 or masks.shape[0] != features.shape[0] or masks.shape[-2:] != features.shape[-2:]:
        raise ValueError(f"patch masks {tuple(masks.shape)} do not match the features {tuple(features.shape)}")
    fg_list, bg_list = [], []
    for index, (feature, mask) in enumerate(zip(features, masks)):
        tokens = _unit(feature.flatten(1), dim=0)  # (C, h*w)
        flat = mask.flatten()
        if not flat.any():
            raise ValueError(f"reference {index} has no foreground patch: its prompt is empty")
        fg_list.append(_unit(tokens[:, flat].mean(1)))
        if background and not flat.all():
            bg_list.append(_unit(tokens[:, ~flat].mean(1)))
    fg = _unit(torch.stack(fg_list).mean(0))
    bg = _unit(torch.stack(bg_list).mean(0)) if bg_list else None
    return fg, bg


def similarity_map(target_features: torch.Tensor, fg: torch.Tensor, bg: torch.Tensor | None = None) -> torch.Tensor:
    """Per-patch score of (C, h, w) or (B, C, h, w) target features: the cosine to ``fg``, minus the cosine
    to ``bg`` when a background prototype is given (background suppression). Returns (h, w) / (B, h, w)."""
    channel_dim = target_features.ndim - 3
    tokens = _unit(target_features, dim=channel_dim)
    score = torch.einsum("...chw,c->...hw", tokens, _unit(fg))
    if bg is not None:
        score = score - torch.einsum("...chw,c->...hw", tokens, _unit(bg))
    return score


def nearest_similarity_map(target_features: torch.Tensor, fg_tokens: torch.Tensor,
                           bg_tokens: torch.Tensor | None = None) -> torch.Tensor:
    """Per-patch score of (C, h, w) or (B, C, h, w) target features: the max cosine to any of the (n, C)
    foreground tokens, minus the max cosine to the (m, C) background tokens when given (and m > 0)."""
    channel_dim = target_features.ndim - 3
    tokens = _unit(target_features, dim=channel_dim)
    score = torch.einsum("...chw,nc->...nhw", tokens, _unit(fg_tokens)).amax(dim=-3)
    if bg_tokens is not None and len(bg_tokens):
        score = score - torch.einsum("...chw,nc->...nhw", tokens, _unit(bg_tokens)).amax(dim=-3)
    return score


def have_scipy() -> bool:
    try:
        from scipy.optimize import linear_sum_assignment  # noqa: F401
    except ImportError:
        return False
    return True


def _greedy_assignment(similarity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy one-to-one matching, highest similarity first, computed as rounds of mutual nearest
    neighbours among the unassigned rows and columns (each round assigns every row/column pair that is
    each other's best; the global best is always such a pair, ties going to the lowest indices)."""
    n_rows, n_cols = similarity.shape
    rows_left = torch.ones(n_rows, dtype=torch.bool)
    cols_left = torch.ones(n_cols, dtype=torch.bool)
    rows_out, cols_out = [], []
    while rows_left.any() and cols_left.any():
        masked = similarity.masked_fill(~rows_left[:, None] | ~cols_left[None, :], float("-inf"))
        best_col = masked.argmax(dim=1)  # per row
        best_row = masked.argmax(dim=0)  # per column
        rows = torch.nonzero(rows_left).flatten()
        mutual = rows[best_row[best_col[rows]] == rows]
        rows_out.append(mutual)
        cols_out.append(best_col[mutual])
        rows_left[mutual] = False
        cols_left[best_col[mutual]] = False
    rows, cols = torch.cat(rows_out), torch.cat(cols_out)
    order = torch.argsort(rows)
    return rows[order], cols[order]


def linear_assignment(similarity: torch.Tensor, solver: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """One-to-one matching maximising total similarity: (rows, cols) index tensors, rows ascending.

    ``hungarian``: ``scipy.optimize.linear_sum_assignment`` (optimal); ``greedy``: :func:`_greedy_assignment`
    (no scipy needed; optimal when every row's best column is distinct); ``auto``: Hungarian when scipy is
    importable, else greedy. ``min(rows, cols)`` pairs either way.
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    if solver == "auto":
        solver = "hungarian" if have_scipy() else "greedy"
    similarity = torch.nan_to_num(similarity.detach().float().cpu(), nan=-1e4, posinf=1e4, neginf=-1e4)
    if solver == "greedy":
        return _greedy_assignment(similarity)
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError as error:
        raise ImportError("solver='hungarian' needs scipy (pip install scipy); use solver='greedy'") from error
    rows, cols = linear_sum_assignment(similarity.double().numpy(), maximize=True)
    return torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)


def bidirectional_matches(ref_features: torch.Tensor, ref_patch_mask: torch.Tensor, target_features: torch.Tensor,
                          solver: str = "auto", return_pairs: bool = False):
    """Matcher's bidirectional patch matching between one reference and one target.

    ``ref_features`` (C, h, w), ``ref_patch_mask`` (h, w) bool, ``target_features`` (C, h', w'); cosine
    similarity of L2-normalised patch features. Forward: a one-to-one assignment (:func:`linear_assignment`)
    of the masked reference patches to target patches. Reverse: a one-to-one assignment of those matched
    target patches to *all* reference patches. A pair is kept when its target patch's reverse match lands
    inside the reference mask (cycle consistency).

    Returns the kept target patch indices (flat, row-major over h' x w'), in the order of their reference
    patches; with ``return_pairs`` ``(reference_indices, target_indices)`` of the kept forward pairs.
    """
    mask = torch.as_tensor(ref_patch_mask).bool().flatten()
    ref = _unit(ref_features.flatten(1), dim=0)  # (C, Nr)
    tgt = _unit(target_features.flatten(1), dim=0)  # (C, Nt)
    if mask.numel() != ref.shape[1]:
        raise ValueError(f"reference patch mask has {mask.numel()} patches, the features {ref.shape[1]}")
    fg_index = torch.nonzero(mask).flatten()
    empty = torch.zeros(0, dtype=torch.long)
    if fg_index.numel() == 0:
        return (empty, empty) if return_pairs else empty
    forward_rows, forward_cols = linear_assignment(ref[:, fg_index].T @ tgt, solver)
    reverse_rows, reverse_cols = linear_assignment(tgt[:, forward_cols].T @ ref, solver)
    back = torch.full((forward_cols.numel(),), -1, dtype=torch.long)
    back[reverse_rows] = reverse_cols
    keep = (back >= 0) & mask[back.clamp(min=0)]
    ref_kept, tgt_kept = fg_index[forward_rows[keep]], forward_cols[keep]
    return (ref_kept, tgt_kept) if return_pairs else tgt_kept


def sam_prompts(patch_scores: torch.Tensor, score_map: np.ndarray, threshold: float, num_points: int = 3,
                use_box: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """PerSAM / Matcher-style SAM prompts from a coarse match of one target.

    ``patch_scores`` (h, w) and ``score_map`` (H, W, the image's size). Positive points: the centres of the
    ``num_points`` highest-scoring patches among those ``> threshold`` (at least the best patch, as PerSAM's
    argmax); negative points: the centres of the ``num_points`` lowest-scoring other patches (PerSAM's
    argmin). Points are (x, y) pixel indices of the image. ``box``: ``[x0, y0, x1, y1]`` (inclusive pixel
    indices) around the pixels of ``score_map > threshold``, None when there are none or ``use_box`` is off.
    Returns ``(points (N, 2) float, labels (N,) int 1/0, box)``.
    """
    grid_h, grid_w = patch_scores.shape
    height, width = score_map.shape
    flat = patch_scores.flatten().float()
    order = torch.argsort(flat, descending=True, stable=True)
    n_positive = max(1, min(num_points, int((flat > threshold).sum())))
    positive = order[:n_positive]
    negative = order[n_positive:].flip(0)[:num_points]
    chosen = torch.cat([positive, negative])
    rows, cols = (chosen // grid_w).numpy(), (chosen % grid_w).numpy()
    points = np.stack([(cols + 0.5) * width / grid_w - 0.5, (rows + 0.5) * height / grid_h - 0.5], axis=1)
    labels = np.array([1] * len(positive) + [0] * len(negative), dtype=np.int64)
    box = None
    foreground = score_map > threshold
    if use_box and foreground.any():
        ys, xs = np.nonzero(foreground)
        box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.float64)
    return points.astype(np.float64), labels, box


# --- the model --------------------------------------------------------------------------------------------

def _as_list(items) -> list:
    return list(items) if isinstance(items, (list, tuple)) else [items]


class DinoVisualPromptModel(SegmentationPreTrainedModel):
    """What both visual-prompt models share: a frozen DINOv2 under ``backbone.`` loaded from
    ``config.dino_backbone_repo_id``, a square-resize processor and the card metadata."""

    def load_frozen_backbones(self, **download_kwargs) -> None:
        repo = self.config.dino_backbone_repo_id
        state_dict, commit = load_dinov2_state_dict(repo, self.config.dino_backbone_revision, **download_kwargs)
        self.backbone.load_encoder_state_dict(state_dict, source=repo)
        self.config.dino_backbone_revision = commit or self.config.dino_backbone_revision
        self.record_frozen_weights()

    def default_image_processor(self):
        from ...image_processing import SegmentationImageProcessor

        return SegmentationImageProcessor(size=self.config.image_size)

    def card_data(self, extra_tags: list[str], dataset_names=None):
        return self.card_metadata(
            license="apache-2.0", base_models=[self.config.dino_backbone_repo_id], dataset_names=dataset_names,
            tags=["visual-prompting", "in-context-segmentation", "dinov2", "dsunet-hf", *extra_tags],
        )


class VisualPromptMatcher(DinoVisualPromptModel):
    """Reference images + visual prompts -> score maps on target images, from a frozen DINOv2 (no training).

    Build with ``from_pretrained_backbones(config)`` (DINOv2 weights from ``config.dino_backbone_repo_id``);
    ``save_pretrained`` writes the config (no tensors train, so ``model.safetensors`` holds none unless
    ``include_backbone=True``) and ``from_pretrained`` reloads the backbone from the recorded repo/revision.
    """

    config_class = VisualPromptMatcherConfig
    config: VisualPromptMatcherConfig
    base_model_prefix = "visual_prompt_matcher"
    supports_gradient_checkpointing = False
    _no_split_modules = ["Dinov2Layer"]
    unused_parameters = ("backbone.encoder.embeddings.mask_token",)

    def __init__(self, config: VisualPromptMatcherConfig):
        super().__init__(config)
        self.backbone = DINOv2Backbone(config.get_dino_config())
        self.post_init()
        self.apply_finetune_strategy()  # frozen: nothing trains

    # --- features ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised pixels -> (B, C, S/14, S/14) patch features of ``config.feature_layer``
        (before the final LayerNorm unless ``config.feature_layer_norm``). Not normalised: the matching
        functions L2-normalise."""
        backbone = self.backbone
        check_pixel_values(pixel_values, backbone.patch_size)
        index = backbone.block_index(self.config.feature_layer)
        parameter = next(self.parameters())
        pixel_values = pixel_values.to(device=parameter.device, dtype=parameter.dtype)
        hidden = backbone.block_tokens(pixel_values, [index])[index]
        if self.config.feature_layer_norm:
            hidden = backbone.encoder.layernorm(hidden)
        return backbone._to_map(hidden, *pixel_values.shape[-2:]).float()

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool | None = None,
                output_attentions: bool | None = None, **kwargs) -> torch.Tensor:
        """The patch features used for matching (see :meth:`features`)."""
        refuse_unknown_kwargs(self, kwargs)
        # Asked for (also through config.output_hidden_states, as for every model): refused, not silently ignored.
        if output_attentions or wants_hidden_states(self, output_hidden_states, False):
            raise ValueError("VisualPromptMatcher: output_attentions/output_hidden_states are not supported: its "
                             "forward returns the patch features (a tensor), see features()")
        return self.features(pixel_values)

    def _extract(self, images: list, feature_fn: FeatureFn | None, batch_size: int) -> torch.Tensor:
        batch_size = positive_int("batch_size", batch_size)  # 0 failed inside range(), a float inside slicing
        processor = self.default_image_processor()
        extract = feature_fn or self.features
        maps = []
        for start in range(0, len(images), batch_size):
            pixel_values = processor(images[start : start + batch_size], return_tensors="pt")["pixel_values"]
            with torch.no_grad():
                maps.append(extract(pixel_values).detach().float().cpu())
        return torch.cat(maps)

    # --- inference --------------------------------------------------------------------------------------
    @torch.no_grad()
    def segment(self, references: Sequence[Any], prompts: Sequence[Any], targets: Sequence[Any],
                feature_fn: FeatureFn | None = None, batch_size: int = 4,
                refine: bool | None = None) -> list[np.ndarray]:
        """Score maps of the prompted concept on each target, at the target's original size.

        Args:
            references: reference images (paths, PIL images, arrays; see ``image_io.load_image``).
            prompts: one visual prompt per reference: a ``dsunet_hf.prompts`` object, prompt text
                (``"box:10,10,60,80"``) or a mask (array / PIL / path) the reference's size.
            targets: the images to segment.
            feature_fn: replaces DINOv2: ``(B, 3, S, S)`` pixel values (``config.image_size``, ImageNet-
                normalised) -> ``(B, C, h, w)`` features. ``None``: :meth:`features`.
            batch_size: images per feature-extraction batch.
            refine: refine with SAM 2 (:meth:`refine_with_sam`); default: when ``config.sam_repo_id`` is set.

        Returns:
            one float32 ``(height, width)`` map per target: the matching score ``cos(fg) - cos(bg)`` in [-2, 2]
            with a background prototype, ``cos(fg)`` in [-1, 1] without (max-cosine variants for
            ``bidirectional``); with SAM 2 refinement, SAM 2's mask logits (foreground > 0).
        """
        references, prompts, targets = _as_list(references), _as_list(prompts), _as_list(targets)
        if not references or len(references) != len(prompts):
            raise ValueError(f"need one prompt per reference image, got {len(references)} references and "
                             f"{len(prompts)} prompts")
        if not targets:
            raise ValueError("no target image to segment")
        reference_images = [load_image(image) for image in references]
        masks = reference_masks(prompts, reference_images, references)  # errors name the prompt and the reference
        memory = self.reference_memory(reference_images, masks, feature_fn=feature_fn, batch_size=batch_size)
        return self.segment_with_memory(memory, targets, feature_fn=feature_fn, batch_size=batch_size, refine=refine)

    @torch.no_grad()
    def encode_frames(self, images: Sequence[Any], feature_fn: FeatureFn | None = None,
                      batch_size: int = 4) -> list[torch.Tensor]:
        """Each image's (C, h, w) matching features, for :meth:`reference_memory` and :meth:`segment_with_memory`
        to share (one backbone pass per video frame when tracking)."""
        return list(self._extract([load_image(image) for image in images], feature_fn, batch_size))

    @torch.no_grad()
    def reference_memory(self, images: Sequence[Any], masks: Sequence[np.ndarray], feature_fn: FeatureFn | None = None,
                         batch_size: int = 4, min_coverage: float = 0.0,
                         encodings: Sequence[torch.Tensor] | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """One ``(features (C, h, w), patch mask (h, w) bool)`` entry per reference image and its prompt mask
        (a bool array the image's size): what :meth:`segment_with_memory` matches against. Video tracking adds
        the frames it has segmented (:class:`dsunet_hf.prompt_predict.PromptTracker`) with ``min_coverage`` 0.5
        (see :func:`patch_mask`): a found mask's soft edge reaches into the background's patches. ``encodings``:
        the images' :meth:`encode_frames`, when already computed."""
        features = (self.encode_frames(images, feature_fn=feature_fn, batch_size=batch_size) if encodings is None
                    else list(encodings))
        grid = tuple(features[0].shape[-2:])
        return [(feature, patch_mask(mask, grid, min_coverage)) for feature, mask in zip(features, masks)]

    @torch.no_grad()
    def segment_with_memory(self, memory: Sequence[tuple[torch.Tensor, torch.Tensor]], targets: Sequence[Any],
                            feature_fn: FeatureFn | None = None, batch_size: int = 4, refine: bool | None = None,
                            encodings: Sequence[torch.Tensor] | None = None) -> list[np.ndarray]:
        """:meth:`segment` with the references already encoded by :meth:`reference_memory`; ``encodings``: the
        targets' :meth:`encode_frames`, when already computed."""
        refine = bool(self.config.sam_repo_id) if refine is None else refine
        if not len(memory):
            raise ValueError("need at least one encoded reference")
        targets = _as_list(targets)
        if not targets:
            raise ValueError("no target image to segment")
        ref_features = [feature for feature, _ in memory]
        patch_masks = [mask for _, mask in memory]
        for index, mask in enumerate(patch_masks):  # both matchings (bidirectional failed inside torch's amax)
            if not mask.any():
                raise ValueError(f"reference {index} has no foreground patch: its prompt is empty")
        target_images = [load_image(image) for image in targets]
        target_features = (self._extract(target_images, feature_fn, batch_size) if encodings is None
                           else torch.stack(list(encodings)))
        background = self.config.background_prototype

        if self.config.matching == "prototype":
            fg, bg = prototypes(ref_features, patch_masks, background=background)
            scores = similarity_map(target_features, fg, bg)
        else:
            bg_tokens = None
            if background:
                bg_tokens = torch.cat([f.flatten(1)[:, ~m.flatten()].T for f, m in zip(ref_features, patch_masks)])
            all_fg = torch.cat([f.flatten(1)[:, m.flatten()].T for f, m in zip(ref_features, patch_masks)])
            scores = []
            for target in target_features:
                kept = []
                for feature, mask in zip(ref_features, patch_masks):
                    ref_index, _ = bidirectional_matches(feature, mask, target, return_pairs=True)
                    kept.append(feature.flatten(1)[:, ref_index].T)
                fg_tokens = torch.cat(kept)
                # No cycle-consistent match at all: fall back to every prompted reference patch.
                scores.append(nearest_similarity_map(target, fg_tokens if len(fg_tokens) else all_fg, bg_tokens))
            scores = torch.stack(scores)

        results = []
        for score, image in zip(scores, target_images):
            size = (image.height, image.width)
            resized = F.interpolate(score[None, None].float(), size=size, mode="bilinear", align_corners=False)
            score_map = resized[0, 0].numpy().astype(np.float32)
            results.append(self.refine_with_sam(image, score, score_map) if refine else score_map)
        return results

    def prompt_threshold(self, refine: bool | None = None) -> float:
        """The default threshold on :meth:`segment`'s maps: 0.0 on SAM 2's logits when refining (``refine``, as
        :meth:`segment` takes it: default when ``config.sam_repo_id`` is set), else ``config.score_threshold``."""
        refine = bool(self.config.sam_repo_id) if refine is None else refine
        return 0.0 if refine else self.config.score_threshold

    def predict_masks(self, references: Sequence[Any], prompts: Sequence[Any], targets: Sequence[Any],
                      threshold: float | None = None, **kwargs) -> list[np.ndarray]:
        """Bool masks ``map > threshold`` of :meth:`segment`. Default threshold: ``config.score_threshold``
        (0.0 with a background prototype, i.e. foreground wins over background; 0.5 cosine without), or 0.0
        on SAM 2's logits when refining."""
        if threshold is None:
            threshold = self.prompt_threshold(kwargs.get("refine"))
        threshold = check_finite_number("threshold", threshold)  # before the backbone runs
        return [score > threshold for score in self.segment(references, prompts, targets, **kwargs)]

    # --- SAM 2 refinement -------------------------------------------------------------------------------
    def sam_model(self):
        """The SAM 2 model refining the masks: the one given to :meth:`set_sam_model`, else
        ``transformers.Sam2Model.from_pretrained(config.sam_repo_id, revision=config.sam_revision)`` (loaded
        once). Kept outside the module tree, so it is never saved with the matcher."""
        sam = self.__dict__.get("_sam_model")
        if sam is None:
            if not self.config.sam_repo_id:
                raise ValueError("SAM 2 refinement needs config.sam_repo_id (e.g. 'facebook/sam2.1-hiera-large')")
            from transformers import Sam2Model

            sam = Sam2Model.from_pretrained(self.config.sam_repo_id, revision=self.config.sam_revision)
            self.set_sam_model(sam)
        return sam

    def set_sam_model(self, sam) -> None:
        """Use this ``Sam2Model`` (e.g. already loaded, or a tiny one in tests) for refinement."""
        self.__dict__["_sam_model"] = sam.eval()

    @torch.no_grad()
    def refine_with_sam(self, image, patch_scores: torch.Tensor, score_map: np.ndarray) -> np.ndarray:
        """SAM 2 mask logits (float32, the image's size) for one target, prompted by :func:`sam_prompts` from
        its (h, w) patch scores and full-size score map. The image is resized to SAM 2's square input
        (1024 for the released models) and ImageNet-normalised, as ``Sam2ImageProcessor`` does; one mask
        (``multimask_output=False``) is upsampled bilinearly to the image size."""
        from ...image_processing import SegmentationImageProcessor

        sam = self.sam_model()
        side = sam.config.prompt_encoder_config.image_size
        side = int(side[0] if isinstance(side, (list, tuple)) else side)
        height, width = score_map.shape
        points, labels, box = sam_prompts(patch_scores, score_map, self.config.score_threshold,
                                          self.config.sam_num_points, self.config.sam_use_box)
        scale = np.array([side / width, side / height])
        parameter = next(sam.parameters())
        inputs = {
            "pixel_values": SegmentationImageProcessor(size=side)(image)["pixel_values"].to(parameter),
            # Pixel indices -> the resized image's pixel indices (pixel centres map onto pixel centres).
            "input_points": torch.tensor((points + 0.5) * scale - 0.5)[None, None].to(parameter),
            "input_labels": torch.tensor(labels, dtype=torch.long)[None, None].to(parameter.device),
        }
        if box is not None:
            corners = (box.reshape(2, 2) + 0.5) * scale - 0.5
            inputs["input_boxes"] = torch.tensor(corners.reshape(4))[None, None].to(parameter)
        logits = sam(**inputs, multimask_output=False).pred_masks[0, 0, :1]  # (1, h, w)
        logits = F.interpolate(logits[None].float(), size=(height, width), mode="bilinear", align_corners=False)
        return logits[0, 0].cpu().numpy().astype(np.float32)

    # --- frozen backbone, saving ----------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """Load a saved matcher: its ``config.json`` (local folder or Hub repo), then the DINOv2 weights from
        the recorded ``dino_backbone_repo_id`` / revision.

        A config-only artifact (the default ``save_pretrained``: nothing trains) has no weights file, so it is
        built here from the config; a self-contained copy (``save_pretrained(include_backbone=True)``) goes
        through the shared loader. Config fields can be overridden as keyword arguments, e.g.
        ``from_pretrained(path, dino_backbone_repo_id="/local/dinov2-large", matching="bidirectional")``;
        ``dtype`` / ``torch_dtype`` cast the model. Hub arguments (``revision``, ``cache_dir``, ``token``,
        ``local_files_only``...) apply to the config; ``cache_dir``, ``token``, ``local_files_only`` and
        ``force_download`` to the DINOv2 repo too. DINOv2 weights other than those it was saved with are refused
        unless ``verify_backbone_weights=False`` (see ``SegmentationPreTrainedModel.from_pretrained``).
        """
        original = dict(kwargs)
        verify = kwargs.pop("verify_backbone_weights", True)
        download = hub_download_kwargs(kwargs)
        want_info = kwargs.pop("output_loading_info", False)
        dtype = pop_dtype(kwargs)
        config = kwargs.pop("config", None)
        if config is None:
            config, unused = cls.config_class.from_pretrained(
                pretrained_model_name_or_path, return_unused_kwargs=True, **kwargs
            )
        else:
            unused = kwargs
        if getattr(config, "backbone_weights_included", False):
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, **original)
        # The Hub arguments every loader is given (AutoModel passes them all, with the config it read) are not
        # ignored: they are used above, or have nothing left to apply to.
        standard = {"cache_dir", "force_download", "local_files_only", "proxies", "subfolder", "revision", "token",
                    "trust_remote_code", "adapter_kwargs", "code_revision"}
        ignored = sorted(k for k in unused if not k.startswith("_") and k not in standard)
        if ignored:
            logger.warning("VisualPromptMatcher.from_pretrained ignores %s", ", ".join(ignored))
        if not verify:  # see SegmentationPreTrainedModel.from_pretrained
            config.__dict__.pop("backbone_fingerprint", None)
        config.name_or_path = str(pretrained_model_name_or_path)  # named in errors; its processor found on a re-save
        with torch.device("meta"):  # every tensor is the backbone's, overwritten by the loader below
            model = cls(config)
        model.to_empty(device="cpu")
        model.load_frozen_backbones_named(**download)  # checks the fingerprint (record_frozen_weights)
        model.remember_load_source(original, download)  # for its image processor when saved or pushed again
        if dtype is not None:
            model.to(dtype)
        model.eval()
        return (model, clean_loading_info()) if want_info else model

    def model_card(self, metrics=None, dataset_names=None, repo_id=None, **extra):
        from huggingface_hub import ModelCard

        config = self.config
        repo = config.dino_backbone_repo_id
        card_data = self.card_data(["training-free"])
        name = repo_id or PLACEHOLDER_REPO_ID
        revision_kwarg = card_revision_kwarg(extra.get("revision"))  # pushed to a branch: the snippet loads it
        content = f"""---
{card_data.to_yaml()}
---

# Visual-prompt matcher (training-free, DINOv2)

Segments the concept shown by a visual prompt (mask, box, scribble or point) on reference images in target
images, by matching frozen DINOv2 patch features (Matcher / PerSAM-style; no trained parameters).

- DINOv2: `{repo}` (revision `{config.dino_backbone_revision}`), features of block {config.feature_layer}
  ({'after' if config.feature_layer_norm else 'before'} the final LayerNorm) at {config.image_size} px
- matching: `{config.matching}`, background prototype: {config.background_prototype},
  threshold: {config.score_threshold}, SAM 2 refinement: `{config.sam_repo_id}`

```python
from dsunet_hf.models.visual_prompt import VisualPromptMatcher
from dsunet_hf.prompts import BoxPrompt

model = VisualPromptMatcher.from_pretrained("{name}"{revision_kwarg})
masks = model.predict_masks(["reference.jpg"], [BoxPrompt(40, 30, 200, 180)], ["target.jpg"])
```
"""
        return ModelCard(content)


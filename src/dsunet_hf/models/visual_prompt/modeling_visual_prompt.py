"""Trained visual in-context segmentation (DINOv / SINE-like) on frozen DINOv2 features.

Reference image + visual prompt -> one *prompt token*; target image -> proposals and masks:

1. Frozen DINOv2 features of ``config.feature_layers`` (each through the final LayerNorm) are projected to
   ``hidden_size`` (Linear + LayerNorm): the feature *levels*. ViT levels share one stride; they play the
   role of DINOv's multi-scale levels.
2. Prompt encoder (DINOv's visual prompt extractor): a learnable content token (+ a learnable query
   position) does masked cross-attention over each level of the reference in turn, attending only to the
   patches the prompt mask touches (a patch counts when any mask pixel overlaps it, so thin scribbles and
   small points survive); a reference whose mask touches no patch attends to the whole image (DINOv's
   fallback). Residual + post-LayerNorm, no FFN, one layer per level. Several references: the tokens are
   averaged (DINOv averages prompt tokens over examples).
3. Query decoder over the target: ``num_queries`` learnable proposal queries plus the prompt token (plus a
   learned prompt-query embedding, DINOv's ``label_enc + pb_embedding``). Per layer: cross-attention to one
   target level (round robin), self-attention, FFN, each residual + post-LayerNorm. The self-attention mask
   keeps proposals and the prompt apart (DINOv's CONTENT_INDEPENDENT): proposals do not depend on the
   prompt, so they can be computed once and scored against any number of prompts. (Mask2Former's masked
   attention and DINOv's deformable attention / box anchors are not used: plain attention, no CUDA op.)
4. Heads after a shared LayerNorm: mask embeddings dotted with mask features (the summed levels upsampled
   4x by two transposed convolutions, SAM-style), and DINOv's prompt classifier
   ``score_i = <W LN(proposal_i), W LN(prompt)>`` (W: ``hidden_size -> projection_dim``, no bias).

Training (``labels`` = the prompted concept's mask on the target): BCE + Dice on the prompt token's mask;
with ``target_segments`` (one mask per concept present in the target) proposals are matched one-to-one to
segments (Hungarian on BCE + Dice cost) and trained with BCE + Dice, the generic scores with a sigmoid
focal loss (1 for the proposal matched to the prompted segment) and the referring scores with a
cross-entropy over proposals (DINOv's match loss). Losses after every decoder layer (deep supervision).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers.initialization import normal_, xavier_uniform_, zeros_
from transformers.utils import ModelOutput

from ...backbones.dinov2 import DINOv2Backbone
from ...image_io import load_image
from ...modeling_utils import check_pixel_values, refuse_unknown_kwargs, run_backbone, wants_hidden_states
from ...prompts import reference_masks
from ..checked_config import check_finite_number, positive_int
from .configuration_visual_prompt import INFERENCE_MODES, VisualPromptConfig
from .matcher import DinoVisualPromptModel, _as_list, linear_assignment, patch_mask

__all__ = ["PromptEncoder", "QueryDecoderLayer", "VisualPromptForSegmentation", "VisualPromptOutput",
           "dice_loss", "pairwise_mask_cost", "sigmoid_focal_loss"]


@dataclass
class VisualPromptOutput(ModelOutput):
    """
    loss: the training loss (when ``labels`` are given).
    logits: (B, 1, H, W) the prompt token's mask logits at the input size.
    proposal_logits: (B, num_queries, h, w) proposal mask logits at the mask-feature size (4x the patch grid).
    proposal_scores: (B, num_queries) prompt-classifier logits (sigmoid: generic, softmax: referring).
    prompt_embeddings: (B, hidden_size) the prompt tokens used (reusable through ``prompt_embeddings=``).
    hidden_states: with ``output_hidden_states=True``: the target's projected feature levels the decoder attends to
        (``features(pixel_values)``), each (B, hidden_size, S/p, S/p).
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    proposal_logits: torch.Tensor | None = None
    proposal_scores: torch.Tensor | None = None
    prompt_embeddings: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


# --- losses ----------------------------------------------------------------------------------------------

def dice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over masks of ``1 - (2 |p t| + 1) / (|p| + |t| + 1)``; ``logits``/``targets`` (N, ...)."""
    probabilities = logits.sigmoid().flatten(1)
    targets = targets.flatten(1)
    numerator = 2 * (probabilities * targets).sum(1) + 1
    return (1 - numerator / (probabilities.sum(1) + targets.sum(1) + 1)).mean()


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0):
    """Summed focal loss (Lin et al.; DINOv's class loss, alpha 0.25, gamma 2). Written out: torchvision's
    version would make torchvision a dependency for five lines."""
    probabilities = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = probabilities * targets + (1 - probabilities) * (1 - targets)
    weight = alpha * targets + (1 - alpha) * (1 - targets)
    return (weight * ce * (1 - p_t) ** gamma).sum()


def pairwise_mask_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(N, P) mask logits vs (M, P) targets in [0, 1] -> (N, M) mean BCE + Dice cost (Mask2Former's matcher)."""
    logits, targets = logits.float(), targets.float()
    pixels = logits.shape[1]
    bce = (F.softplus(logits).sum(1, keepdim=True) - logits @ targets.T) / pixels
    probabilities = logits.sigmoid()
    dice = 1 - (2 * probabilities @ targets.T + 1) / (probabilities.sum(1, keepdim=True) + targets.sum(1)[None] + 1)
    return bce + dice


# --- blocks ----------------------------------------------------------------------------------------------

class PromptEncoder(nn.Module):
    """DINOv's prompt encoder: one content token, masked cross-attention over each reference level."""

    def __init__(self, hidden_size: int, num_heads: int, num_levels: int):
        super().__init__()
        self.num_heads = num_heads
        self.content_token = nn.Embedding(1, hidden_size)
        self.position = nn.Embedding(1, hidden_size)
        self.attentions = nn.ModuleList(nn.MultiheadAttention(hidden_size, num_heads, batch_first=True)
                                        for _ in range(num_levels))
        self.norms = nn.ModuleList(nn.LayerNorm(hidden_size) for _ in range(num_levels))

    def forward(self, levels: Sequence[torch.Tensor], patch_masks: torch.Tensor) -> torch.Tensor:
        """``levels``: per level (N, L, C) reference tokens; ``patch_masks``: (N, L) bool, True = prompted.
        Returns (N, C) prompt tokens."""
        blocked = ~patch_masks.bool()
        blocked[blocked.all(1)] = False  # an empty prompt attends to the whole image (DINOv's fallback)
        attention_mask = blocked[:, None, :].repeat_interleave(self.num_heads, dim=0)  # (N * heads, 1, L)
        count = patch_masks.shape[0]
        token = self.content_token.weight.expand(count, 1, -1)
        position = self.position.weight[None]
        for tokens, attention, norm in zip(levels, self.attentions, self.norms):
            attended = attention(token + position, tokens, tokens, attn_mask=attention_mask, need_weights=False)[0]
            token = norm(token + attended)
        return token[:, 0]


class QueryDecoderLayer(nn.Module):
    """Cross-attention to the target level, masked self-attention, FFN; each residual + post-LayerNorm."""

    def __init__(self, hidden_size: int, num_heads: int, intermediate_size: int):
        super().__init__()
        self.cross_attention = nn.MultiheadAttention(hidden_size, num_heads, batch_first=True)
        self.cross_norm = nn.LayerNorm(hidden_size)
        self.self_attention = nn.MultiheadAttention(hidden_size, num_heads, batch_first=True)
        self.self_norm = nn.LayerNorm(hidden_size)
        self.ffn = nn.Sequential(nn.Linear(hidden_size, intermediate_size), nn.ReLU(),
                                 nn.Linear(intermediate_size, hidden_size))
        self.ffn_norm = nn.LayerNorm(hidden_size)

    def forward(self, queries, positions, memory, self_attention_mask):
        attended = self.cross_attention(queries + positions, memory, memory, need_weights=False)[0]
        queries = self.cross_norm(queries + attended)
        keys = queries + positions
        attended = self.self_attention(keys, keys, queries, attn_mask=self_attention_mask, need_weights=False)[0]
        queries = self.self_norm(queries + attended)
        return self.ffn_norm(queries + self.ffn(queries))


class MaskFeatureUpsampler(nn.Module):
    """Summed levels (B, C, h, w) -> mask features (B, C/8, 4h, 4w): two 2x transposed convs (SAM's upscaling)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.up1 = nn.ConvTranspose2d(hidden_size, hidden_size // 4, kernel_size=2, stride=2)
        self.norm = nn.GroupNorm(1, hidden_size // 4)
        self.up2 = nn.ConvTranspose2d(hidden_size // 4, hidden_size // 8, kernel_size=2, stride=2)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.up2(F.gelu(self.norm(self.up1(features)))))


class MLP(nn.Sequential):
    def __init__(self, in_size: int, hidden: int, out_size: int, layers: int = 3):
        sizes = [in_size] + [hidden] * (layers - 1) + [out_size]
        modules = []
        for index, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            modules.append(nn.Linear(a, b))
            if index < layers - 1:
                modules.append(nn.ReLU())
        super().__init__(*modules)


# --- the model -------------------------------------------------------------------------------------------

class VisualPromptForSegmentation(DinoVisualPromptModel):
    config_class = VisualPromptConfig
    config: VisualPromptConfig
    base_model_prefix = "visual_prompt"
    _no_split_modules = ["Dinov2Layer"]
    unused_parameters = ("backbone.encoder.embeddings.mask_token",)
    # Batch entries besides *pixel_values the training loop passes to forward.
    extra_input_names = ("reference_masks", "target_segments", "segment_is_prompted")

    def __init__(self, config: VisualPromptConfig):
        super().__init__(config)
        self.backbone = DINOv2Backbone(config.get_dino_config())
        width, levels = config.hidden_size, len(config.feature_layers)
        self.level_projections = nn.ModuleList(
            nn.Sequential(nn.Linear(self.backbone.channels, width), nn.LayerNorm(width)) for _ in range(levels)
        )
        self.prompt_encoder = PromptEncoder(width, config.num_attention_heads, levels)
        self.query_content = nn.Embedding(config.num_queries, width)
        self.query_position = nn.Embedding(config.num_queries, width)
        self.prompt_query_embedding = nn.Embedding(1, width)
        self.prompt_query_position = nn.Embedding(1, width)
        self.decoder_layers = nn.ModuleList(
            QueryDecoderLayer(width, config.num_attention_heads, config.intermediate_size)
            for _ in range(config.num_decoder_layers)
        )
        self.decoder_norm = nn.LayerNorm(width)
        self.mask_features = MaskFeatureUpsampler(width)
        self.mask_embed = MLP(width, width, width // 8)
        self.score_projection = nn.Linear(width, config.projection_dim, bias=False)
        self.finish_init(lora_module=self.backbone.encoder)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, nn.Embedding):
            normal_(module.weight, std=1.0)  # PyTorch's default for embeddings
        if module is getattr(self, "score_projection", None):
            normal_(module.weight, std=0.02)  # DINOv: trunc-normal std 0.02 on the class projection
        if isinstance(module, nn.MultiheadAttention):
            xavier_uniform_(module.in_proj_weight)  # nn.MultiheadAttention's own init
            zeros_(module.in_proj_bias)
            zeros_(module.out_proj.bias)

    # --- features --------------------------------------------------------------------------------------
    def features(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, S, S) normalised pixels -> per level (B, hidden_size, S/p, S/p) projected features."""
        check_pixel_values(pixel_values, self.backbone.patch_size)
        maps = run_backbone(self.backbone, pixel_values, self.config.feature_layers, method="forward_layers")
        return [projection(m.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) for projection, m in zip(self.level_projections, maps)]

    def encode_prompt(self, reference_pixel_values: torch.Tensor, reference_masks: torch.Tensor,
                      reference_valid: torch.Tensor | None = None) -> torch.Tensor:
        """Prompt tokens (B, hidden_size) from (B, R, 3, S, S) references (or (B, 3, S, S): R = 1) and their
        (B, R, h, w) prompt masks (any size; non-zero = prompted), averaged over the R references
        (``reference_valid`` (B, R) bool excludes padded ones)."""
        if reference_pixel_values is None or reference_masks is None:
            raise ValueError("need reference_pixel_values and reference_masks (or prompt_embeddings)")
        if reference_pixel_values.ndim == 4:
            reference_pixel_values = reference_pixel_values[:, None]
        if reference_masks.ndim == 3:
            reference_masks = reference_masks[:, None]
        batch, count = reference_pixel_values.shape[:2]
        if reference_masks.shape[:2] != (batch, count):
            raise ValueError(f"reference_masks {tuple(reference_masks.shape)} do not match the references "
                             f"{tuple(reference_pixel_values.shape)}: need one mask per reference image")
        levels = self.features(reference_pixel_values.flatten(0, 1))
        tokens = self._prompt_tokens(levels, reference_masks.flatten(0, 1)).view(batch, count, -1)
        if reference_valid is None:
            return tokens.mean(1)
        weights = reference_valid.to(tokens.dtype)[..., None]
        return (tokens * weights).sum(1) / weights.sum(1).clamp_min(1)

    def _prompt_tokens(self, levels: list[torch.Tensor], masks: torch.Tensor) -> torch.Tensor:
        """(N, hidden_size) prompt tokens from N images' feature levels and their (N, h, w) masks (any size: a patch
        is prompted where the mask is non-zero anywhere in it)."""
        grid = tuple(levels[0].shape[-2:])
        patch_masks = F.adaptive_avg_pool2d((masks != 0).float()[:, None], grid)[:, 0] > 0
        return self.prompt_encoder([level.flatten(2).transpose(1, 2) for level in levels], patch_masks.flatten(1))

    def _self_attention_mask(self, device) -> torch.Tensor:
        """True = blocked: proposals and the prompt token never see each other."""
        total = self.config.num_queries + 1
        mask = torch.zeros(total, total, dtype=torch.bool, device=device)
        mask[:-1, -1] = mask[-1, :-1] = True
        return mask

    def _heads(self, queries: torch.Tensor, mask_features: torch.Tensor):
        normed = self.decoder_norm(queries)
        masks = torch.einsum("bqc,bchw->bqhw", self.mask_embed(normed), mask_features)
        projected = self.score_projection(normed)
        scores = torch.einsum("bqc,bc->bq", projected[:, :-1], projected[:, -1])
        return masks, scores

    # --- forward ---------------------------------------------------------------------------------------
    def forward(
        self,
        pixel_values: torch.Tensor,
        reference_pixel_values: torch.Tensor | None = None,
        reference_masks: torch.Tensor | None = None,
        prompt_embeddings: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        target_segments: torch.Tensor | None = None,
        segment_is_prompted: torch.Tensor | None = None,
        reference_valid: torch.Tensor | None = None,
        return_dict: bool | None = None,
        pixel_features: list[torch.Tensor] | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> VisualPromptOutput | tuple:
        """``pixel_values`` (B, 3, S, S) targets; the prompt either from references (``reference_pixel_values``
        (B, R, 3, S, S) + ``reference_masks`` (B, R, S, S)) or given as ``prompt_embeddings`` (B or 1, C).
        Training: ``labels`` (B, S, S) the prompted concept's mask on the target; optionally
        ``target_segments`` (B, M, S, S) every concept's mask on the target and ``segment_is_prompted`` (B, M)
        (1 = the prompted concept, 0 = another, -1 = padding). ``pixel_features``: ``self.features(pixel_values)``
        when already computed (video tracking encodes each frame once for every object and for its memory)."""
        refuse_unknown_kwargs(self, kwargs)
        with_hidden = wants_hidden_states(self, output_hidden_states, output_attentions)
        check_pixel_values(pixel_values, self.backbone.patch_size)
        batch = pixel_values.shape[0]
        if prompt_embeddings is None:
            prompt_embeddings = self.encode_prompt(reference_pixel_values, reference_masks, reference_valid)
        if prompt_embeddings.shape[0] == 1 and batch > 1:
            prompt_embeddings = prompt_embeddings.expand(batch, -1)
        if prompt_embeddings.shape != (batch, self.config.hidden_size):
            raise ValueError(f"prompt_embeddings {tuple(prompt_embeddings.shape)} must be (batch={batch} or 1, "
                             f"{self.config.hidden_size})")
        levels = self.features(pixel_values) if pixel_features is None else pixel_features
        mask_features = self.mask_features(torch.stack(levels).sum(0))
        memories = [level.flatten(2).transpose(1, 2) for level in levels]
        queries = torch.cat([self.query_content.weight.expand(batch, -1, -1),
                             (prompt_embeddings + self.prompt_query_embedding.weight)[:, None]], dim=1)
        positions = torch.cat([self.query_position.weight, self.prompt_query_position.weight])[None]
        attention_mask = self._self_attention_mask(pixel_values.device)
        predictions = []
        for index, layer in enumerate(self.decoder_layers):
            queries = layer(queries, positions, memories[index % len(memories)], attention_mask)
            if self.config.deep_supervision or index == len(self.decoder_layers) - 1:
                predictions.append(self._heads(queries, mask_features))
        masks, scores = predictions[-1]
        logits = F.interpolate(masks[:, -1:], size=pixel_values.shape[-2:], mode="bilinear", align_corners=False)
        loss = None
        if labels is not None:
            loss = self.loss(predictions, labels, target_segments, segment_is_prompted)
        output = VisualPromptOutput(loss=loss, logits=logits, proposal_logits=masks[:, :-1], proposal_scores=scores,
                                    prompt_embeddings=prompt_embeddings,
                                    hidden_states=tuple(levels) if with_hidden else None)
        return self.output_as_asked(output, return_dict)

    def loss(self, predictions, labels, target_segments=None, segment_is_prompted=None) -> torch.Tensor:
        config = self.config
        if labels.ndim == 4:
            labels = labels[:, 0]
        size = predictions[0][0].shape[-2:]
        # Targets at the mask-feature size: area-averaged (soft at borders), as the logits are predicted there.
        target = F.adaptive_avg_pool2d(labels.float()[:, None], size)[:, 0]
        segments = None
        if target_segments is not None:
            if segment_is_prompted is None:
                raise ValueError("target_segments need segment_is_prompted (1 prompted, 0 other, -1 padding)")
            segments = F.adaptive_avg_pool2d(target_segments.float(), size)
        total = labels.new_zeros((), dtype=torch.float32)
        for masks, scores in predictions:
            prompt_logits = masks[:, -1].float()
            total = total + config.mask_bce_weight * F.binary_cross_entropy_with_logits(prompt_logits, target)
            total = total + config.mask_dice_weight * dice_loss(prompt_logits, target)
            if segments is not None:
                total = total + self._proposal_loss(masks[:, :-1].float(), scores.float(), segments, segment_is_prompted)
        return total / len(predictions)

    def _proposal_loss(self, masks, scores, segments, segment_is_prompted) -> torch.Tensor:
        """Hungarian-matched proposal masks (BCE + Dice), generic focal scores and the referring CE."""
        config = self.config
        mask_terms, score_terms, match_terms = [], [], []
        for proposal_masks, proposal_scores, target, flags in zip(masks, scores, segments, segment_is_prompted):
            valid = flags >= 0
            if not valid.any():
                continue
            target, flags = target[valid].flatten(1), flags[valid]
            flat = proposal_masks.flatten(1)
            rows, cols = linear_assignment(-pairwise_mask_cost(flat, target))
            rows, cols = rows.to(flat.device), cols.to(flat.device)
            mask_terms.append(config.mask_bce_weight * F.binary_cross_entropy_with_logits(flat[rows], target[cols])
                              + config.mask_dice_weight * dice_loss(flat[rows], target[cols]))
            positives = rows[flags[cols] == 1]
            score_target = torch.zeros_like(proposal_scores)
            score_target[positives] = 1
            score_terms.append(sigmoid_focal_loss(proposal_scores, score_target) / max(1, len(positives)))
            if len(positives):
                match_terms.append(F.cross_entropy(proposal_scores[None], positives[:1]))
        loss = masks.new_zeros(())
        if mask_terms:
            loss = loss + torch.stack(mask_terms).mean()
            loss = loss + config.score_weight * torch.stack(score_terms).mean()
        if match_terms:
            loss = loss + config.match_weight * torch.stack(match_terms).mean()
        return loss

    # --- inference -------------------------------------------------------------------------------------
    @staticmethod
    def concept_logits(output: VisualPromptOutput, mode: str = "prompt") -> torch.Tensor:
        """(B, 1, h, w) logits of the prompted concept: ``prompt`` the prompt token's mask (input size),
        ``generic`` ``logit(max_i sigmoid(score_i) sigmoid(mask_i))`` over proposals, ``referring`` the mask
        logits of the best-scoring proposal (both at the mask-feature size)."""
        if mode == "prompt":
            return output.logits
        if mode == "generic":
            # float32: in bf16 / fp16 the clamp's 1 - 1e-6 rounds to 1, and logit(1) = inf turns to NaN when resized
            scores, masks = output.proposal_scores.float(), output.proposal_logits.float()
            probability = (scores.sigmoid()[..., None, None] * masks.sigmoid()).amax(1)
            return torch.logit(probability.clamp(1e-6, 1 - 1e-6))[:, None]
        if mode == "referring":
            best = output.proposal_scores.argmax(1)
            return output.proposal_logits[torch.arange(len(best), device=best.device), best][:, None]
        raise ValueError(f"mode must be one of {INFERENCE_MODES}, got {mode!r}")

    def prompt_threshold(self) -> float:
        """``segment`` returns logits: foreground where > 0."""
        return 0.0

    def _pixel_values(self, images: list) -> torch.Tensor:
        parameter = next(self.parameters())
        pixel_values = self.default_image_processor()(images, return_tensors="pt")["pixel_values"]
        return pixel_values.to(device=parameter.device, dtype=parameter.dtype)

    @torch.no_grad()
    def encode_frames(self, images: Sequence[Any]) -> list[list[torch.Tensor]]:
        """Each image's feature levels (each (hidden_size, S/p, S/p)), for :meth:`reference_memory` and
        :meth:`segment_with_memory` to share (one backbone pass per video frame when tracking)."""
        levels = self.features(self._pixel_values([load_image(image) for image in images]))
        return [[level[index] for level in levels] for index in range(len(images))]

    @torch.no_grad()
    def reference_memory(self, images: Sequence[Any], masks: Sequence[np.ndarray], min_coverage: float = 0.0,
                         encodings: Sequence[list[torch.Tensor]] | None = None) -> list[torch.Tensor]:
        """One prompt token (hidden_size,) per reference image and its prompt mask (a bool array the image's
        size): the entries :meth:`segment_with_memory` averages. A patch is prompted where the mask touches it
        (DINOv); ``min_coverage`` > 0: where the mask covers at least that much of it, or every touched patch
        where none is. Video tracking adds the frames it has segmented with 0.5
        (:class:`dsunet_hf.prompt_predict.PromptTracker`): a found mask's soft edge reaches into the background.
        ``encodings``: the images' :meth:`encode_frames`, when already computed."""
        for index, mask in enumerate(masks):  # the prompt encoder would attend to the whole image: another concept
            if not np.asarray(mask).any():
                raise ValueError(f"reference {index} has no foreground patch: its prompt is empty")
        encodings = self.encode_frames(images) if encodings is None else encodings
        levels = [torch.stack(level) for level in zip(*encodings)]
        side, grid = self.config.image_size, tuple(levels[0].shape[-2:])
        resized = [F.adaptive_avg_pool2d(torch.as_tensor(np.asarray(mask)).float()[None, None], (side, side))[0, 0]
                   for mask in masks]  # the input size first, as training's masks (then any touched patch counts)
        patch_masks = torch.stack([patch_mask(mask > 0, grid, min_coverage) for mask in resized])
        return list(self._prompt_tokens(levels, patch_masks.to(levels[0].device)))

    @torch.no_grad()
    def prompt_from_references(self, references: Sequence[Any], prompts: Sequence[Any]) -> torch.Tensor:
        """The (1, hidden_size) prompt token of one concept shown on N references (one prompt each)."""
        references, prompts = _as_list(references), _as_list(prompts)  # one alone, as the matcher takes it
        if not references or len(references) != len(prompts):
            raise ValueError(f"need one prompt per reference image, got {len(references)} references and "
                             f"{len(prompts)} prompts")
        images = [load_image(image) for image in references]
        masks = reference_masks(prompts, images, references)  # errors name the prompt and the reference
        return torch.stack(self.reference_memory(images, masks)).mean(0, keepdim=True)

    @torch.no_grad()
    def segment(self, references: Sequence[Any], prompts: Sequence[Any], targets: Sequence[Any],
                batch_size: int = 4, mode: str | None = None) -> list[np.ndarray]:
        """Logit maps (float32, each target's original size; foreground > 0) of the concept the prompts mark
        on the references (paths, PIL images or arrays; prompts as ``dsunet_hf.prompts`` objects, prompt text
        or masks), for each target. ``mode``: see :meth:`concept_logits` (default ``config.inference_mode``)."""
        prompt = self.prompt_from_references(references, prompts)
        return self._segment_with_prompt(prompt, targets, batch_size, mode)

    @torch.no_grad()
    def segment_with_memory(self, memory: Sequence[torch.Tensor], targets: Sequence[Any], batch_size: int = 4,
                            mode: str | None = None,
                            encodings: Sequence[list[torch.Tensor]] | None = None) -> list[np.ndarray]:
        """:meth:`segment` with the references already encoded by :meth:`reference_memory` (their tokens are
        averaged, as DINOv averages its examples and its video memory); ``encodings``: the targets'
        :meth:`encode_frames`, when already computed."""
        if not len(memory):
            raise ValueError("need at least one encoded reference")
        prompt = torch.stack(list(memory)).mean(0, keepdim=True)
        return self._segment_with_prompt(prompt, targets, batch_size, mode, encodings)

    def _segment_with_prompt(self, prompt: torch.Tensor, targets, batch_size: int, mode: str | None, encodings=None):
        mode = mode or self.config.inference_mode
        batch_size = positive_int("batch_size", batch_size)  # 0 failed inside range(), a float inside slicing
        targets = _as_list(targets)
        if not targets:
            raise ValueError("no target image to segment")
        results = []
        for start in range(0, len(targets), batch_size):
            images = [load_image(image) for image in targets[start : start + batch_size]]
            features = None
            if encodings is not None:
                features = [torch.stack(level) for level in zip(*encodings[start : start + batch_size])]
            output = self(pixel_values=self._pixel_values(images), prompt_embeddings=prompt, pixel_features=features,
                          return_dict=True)
            logits = self.concept_logits(output, mode).float()
            for logit, image in zip(logits, images):
                resized = F.interpolate(logit[None], size=(image.height, image.width), mode="bilinear", align_corners=False)
                results.append(resized[0, 0].cpu().numpy().astype(np.float32))
        return results

    def predict_masks(self, references, prompts, targets, threshold: float | None = None, **kwargs) -> list[np.ndarray]:
        """Bool masks ``logits > threshold`` (default 0) of :meth:`segment`."""
        # Before the backbone runs: a NaN threshold compared False everywhere (every mask empty, silently).
        threshold = self.prompt_threshold() if threshold is None else check_finite_number("threshold", threshold)
        return [logits > threshold for logits in self.segment(references, prompts, targets, **kwargs)]

    # --- card ------------------------------------------------------------------------------------------
    def model_card(self, metrics=None, dataset_names=None, repo_id=None, **extra):
        return self.render_card("visual_prompt.md", self.card_data([], dataset_names), metrics=metrics,
                                dataset_names=dataset_names, repo_id=repo_id, **extra)

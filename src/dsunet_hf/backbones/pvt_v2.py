"""BiRefNet's PVT-v2 backbone (``pvt_v2_b0|b1|b2|b5``) on transformers' ``PvtV2Backbone``.

``PvtV2Backbone(pvt_v2_config("pvt_v2_b2"))`` returns the four stage maps (NCHW, strides 4/8/16/32) after
the per-stage LayerNorms, as upstream's ``PyramidVisionTransformerImpr`` (``models/backbones/pvt_v2.py`` of
github.com/ZhengPeng7/BiRefNet) does; ``.channels`` lists their widths, shallow to deep.

Differences from a plain transformers ``PvtV2Backbone`` and how they are handled:

- upstream builds the overlapping patch-embedding norms and the spatial-reduction norms as
  ``nn.LayerNorm(dim)`` (eps 1e-5) and only the block and stage norms with eps 1e-6; transformers uses
  ``config.layer_norm_eps`` (1e-6) for all of them, so ``PvtV2Backbone`` sets those two kinds back to
  ``UPSTREAM_DEFAULT_EPS``;
- transformers computes the attention eagerly and keeps the stage-1 score matrix (``(H/4 * W/4) x
  (H/32 * W/32)`` per head: 256 MB per image at 1024 px); upstream calls ``F.scaled_dot_product_attention``,
  and so does ``PvtV2Backbone`` (``_sdpa_attention_forward``: the same operations and result, fused).

Official key map (upstream ``pvt_v2`` names without BiRefNet's ``bb.`` prefix -> ours, which are
``PvtV2Backbone.state_dict()`` names without the leading ``model.``; ``{i}`` stage from 0, ``{s}`` =
``{i}+1``, ``{j}`` block, ``{p}`` weight/bias). ``PVT_V2_KEY_MAP`` below is the table both converters use.

- ``patch_embed{s}.proj.{p}`` -> ``encoder.layers.{i}.patch_embedding.proj.{p}``
- ``patch_embed{s}.norm.{p}`` -> ``encoder.layers.{i}.patch_embedding.layer_norm.{p}``
- ``block{s}.{j}.norm1.{p}`` -> ``encoder.layers.{i}.blocks.{j}.layer_norm_1.{p}``
- ``block{s}.{j}.attn.q.{p}`` -> ``encoder.layers.{i}.blocks.{j}.attention.query.{p}``
- ``block{s}.{j}.attn.kv.{p}`` -> split in halves along dim 0 into
  ``encoder.layers.{i}.blocks.{j}.attention.key.{p}`` and ``...attention.value.{p}`` (upstream reshapes
  the kv output as ``(2, heads, head_dim)``)
- ``block{s}.{j}.attn.sr.{p}`` -> ``encoder.layers.{i}.blocks.{j}.attention.spatial_reduction.{p}``
  (stages with sr ratio > 1 only)
- ``block{s}.{j}.attn.norm.{p}`` -> ``encoder.layers.{i}.blocks.{j}.attention.layer_norm.{p}``
  (stages with sr ratio > 1 only)
- ``block{s}.{j}.attn.proj.{p}`` -> ``encoder.layers.{i}.blocks.{j}.attention.proj.{p}``
- ``block{s}.{j}.norm2.{p}`` -> ``encoder.layers.{i}.blocks.{j}.layer_norm_2.{p}``
- ``block{s}.{j}.mlp.fc1.{p}`` -> ``encoder.layers.{i}.blocks.{j}.mlp.dense1.{p}``
- ``block{s}.{j}.mlp.dwconv.dwconv.{p}`` -> ``encoder.layers.{i}.blocks.{j}.mlp.dwconv.dwconv.{p}``
- ``block{s}.{j}.mlp.fc2.{p}`` -> ``encoder.layers.{i}.blocks.{j}.mlp.dense2.{p}``
- ``norm{s}.{p}`` -> ``encoder.layers.{i}.layer_norm.{p}``
- ``head.*`` -> dropped if present (the ImageNet classifier of the PVT-v2 release files; BiRefNet has none)

Any other official key, and any of our keys left unproduced, is an error.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PvtV2Backbone as _TransformersPvtV2Backbone
from transformers import PvtV2Config

from .swin import (
    KeyMapRow,
    convert_with_key_map,
    expand_key_map,
    meta_state_shapes,
    preset_config,
    revert_with_key_map,
)

_PVT_COMMON = dict(
    sr_ratios=[8, 4, 2, 1], patch_sizes=[7, 3, 3, 3], strides=[4, 2, 2, 2], qkv_bias=True, hidden_act="gelu",
    layer_norm_eps=1e-6, drop_path_rate=0.1, linear_attention=False,
)
_WIDE = dict(hidden_sizes=[64, 128, 320, 512], num_attention_heads=[1, 2, 5, 8], **_PVT_COMMON)
# Upstream presets (pvt_v2.py): drop_path 0.1, qkv bias, LayerNorm eps 1e-6 in blocks and stage norms.
PVT_V2_PRESETS: dict[str, dict] = {
    "pvt_v2_b0": dict(hidden_sizes=[32, 64, 160, 256], num_attention_heads=[1, 2, 5, 8], depths=[2, 2, 2, 2],
                      mlp_ratios=[8, 8, 4, 4], **_PVT_COMMON),
    "pvt_v2_b1": dict(depths=[2, 2, 2, 2], mlp_ratios=[8, 8, 4, 4], **_WIDE),
    "pvt_v2_b2": dict(depths=[3, 4, 6, 3], mlp_ratios=[8, 8, 4, 4], **_WIDE),
    "pvt_v2_b5": dict(depths=[3, 6, 40, 3], mlp_ratios=[4, 4, 4, 4], **_WIDE),
}
# The eps of upstream's nn.LayerNorm(dim) in OverlapPatchEmbed and in the spatial-reduction branch.
UPSTREAM_DEFAULT_EPS = 1e-5


def pvt_v2_config(preset: str, overrides: dict | None = None) -> PvtV2Config:
    """The ``PvtV2Config`` of a BiRefNet PVT-v2 preset (``pvt_v2_b0|b1|b2|b5``), with optional overrides."""
    return preset_config(PvtV2Config, PVT_V2_PRESETS, preset, overrides)


def pvt_v2_min_input_size(config: PvtV2Config) -> int:
    """The smallest image side the backbone runs on (32 px for the presets): each stage's spatial reduction is a
    conv with kernel = stride = its sr ratio, so that stage's map must be at least that large, or the conv fails
    with a bare kernel-size error."""
    stride, minimum = 1, 1
    for step, ratio in zip(config.strides, config.sr_ratios):
        stride *= step
        minimum = max(minimum, stride * ratio)
    return minimum


def _sdpa_attention_forward(self, hidden_states: torch.Tensor, height: int, width: int,
                            output_attentions: bool = False) -> tuple[torch.Tensor, ...]:
    """transformers' ``PvtV2SelfAttention.forward`` with the score matrix, softmax, dropout and weighted sum
    fused into ``F.scaled_dot_product_attention``, as upstream BiRefNet computes it. The eager original still
    runs where the attention probabilities are asked for, or for the ``linear_attention`` variant."""
    if output_attentions or self.linear_attention:
        return type(self).forward(self, hidden_states, height, width, output_attentions)
    batch_size, seq_len, channels = hidden_states.shape
    query = self.transpose_for_scores(self.query(hidden_states))
    if self.spatial_reduction_ratio > 1:  # keys and values from a (H/sr, W/sr) map
        grid = hidden_states.transpose(1, 2).reshape(batch_size, channels, height, width)
        hidden_states = self.layer_norm(self.spatial_reduction(grid).flatten(2).transpose(1, 2))
    key = self.transpose_for_scores(self.key(hidden_states))
    value = self.transpose_for_scores(self.value(hidden_states))
    context = F.scaled_dot_product_attention(query, key, value,
                                             dropout_p=self.attn_drop.p if self.training else 0.0)
    context = context.transpose(1, 2).reshape(batch_size, seq_len, channels)
    return (self.proj_drop(self.proj(context)),)


class PvtV2Backbone(nn.Module):
    """PVT-v2 returning the four normed stage maps channels-first (BiRefNet's ``bb``)."""

    def __init__(self, config: PvtV2Config):
        super().__init__()
        self.config = config
        self.model = _TransformersPvtV2Backbone(config)
        for layer in self.model.encoder.layers:
            layer.patch_embedding.layer_norm.eps = UPSTREAM_DEFAULT_EPS
            for block in layer.blocks:
                if hasattr(block.attention, "layer_norm"):
                    block.attention.layer_norm.eps = UPSTREAM_DEFAULT_EPS
                # A partial of a module-level function, not types.MethodType: a pickled bound method is looked up
                # by its name on the instance when loaded, so torch.save(model) could not be loaded back.
                block.attention.forward = functools.partial(_sdpa_attention_forward, block.attention)
        self.channels: list[int] = list(config.hidden_sizes)
        self.min_input_size = pvt_v2_min_input_size(config)

    def forward(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        height, width = pixel_values.shape[-2:]
        # (Not while exporting: a shape guard would narrow a dynamic-size export's height and width.)
        if not torch.compiler.is_exporting() and (height < self.min_input_size or width < self.min_input_size):
            raise ValueError(f"PVT-v2 backbone: images need at least {self.min_input_size} px per side (its "
                             f"spatial-reduction convs), got {tuple(pixel_values.shape[-2:])}")
        return list(self.model(pixel_values).feature_maps)


_BLOCK = "encoder.layers.{i}.blocks.{j}."
PVT_V2_KEY_MAP: tuple[KeyMapRow, ...] = (
    KeyMapRow("stage", "patch_embed{s}.proj.{p}", ("encoder.layers.{i}.patch_embedding.proj.{p}",)),
    KeyMapRow("stage", "patch_embed{s}.norm.{p}", ("encoder.layers.{i}.patch_embedding.layer_norm.{p}",)),
    KeyMapRow("block", "block{s}.{j}.norm1.{p}", (_BLOCK + "layer_norm_1.{p}",)),
    KeyMapRow("block", "block{s}.{j}.attn.q.{p}", (_BLOCK + "attention.query.{p}",)),
    KeyMapRow("block", "block{s}.{j}.attn.kv.{p}",
              (_BLOCK + "attention.key.{p}", _BLOCK + "attention.value.{p}")),
    KeyMapRow("block", "block{s}.{j}.attn.sr.{p}", (_BLOCK + "attention.spatial_reduction.{p}",)),
    KeyMapRow("block", "block{s}.{j}.attn.norm.{p}", (_BLOCK + "attention.layer_norm.{p}",)),
    KeyMapRow("block", "block{s}.{j}.attn.proj.{p}", (_BLOCK + "attention.proj.{p}",)),
    KeyMapRow("block", "block{s}.{j}.norm2.{p}", (_BLOCK + "layer_norm_2.{p}",)),
    KeyMapRow("block", "block{s}.{j}.mlp.fc1.{p}", (_BLOCK + "mlp.dense1.{p}",)),
    KeyMapRow("block", "block{s}.{j}.mlp.dwconv.dwconv.{p}", (_BLOCK + "mlp.dwconv.dwconv.{p}",)),
    KeyMapRow("block", "block{s}.{j}.mlp.fc2.{p}", (_BLOCK + "mlp.dense2.{p}",)),
    KeyMapRow("stage", "norm{s}.{p}", ("encoder.layers.{i}.layer_norm.{p}",)),
)


def _is_classifier_head(key: str) -> bool:
    return key.startswith("head.")


def convert_official_pvt_v2_state_dict(
    state_dict: dict[str, torch.Tensor], config: PvtV2Config
) -> dict[str, torch.Tensor]:
    """Upstream ``pvt_v2`` backbone weights (no ``bb.`` prefix) -> ``PvtV2Backbone(config).state_dict()``.

    The fused ``attn.kv`` is split into ``key``/``value``; a classification ``head.*`` (in the PVT-v2
    ImageNet release files, not in BiRefNet) is dropped if present. Raises ``ValueError`` listing
    unconsumed official keys, model keys not produced and shape mismatches.
    """
    pairs = list(expand_key_map(PVT_V2_KEY_MAP, config.depths))
    return convert_with_key_map(
        state_dict, pairs, meta_state_shapes(PvtV2Backbone, config), "official PVT-v2 state dict",
        ignore=_is_classifier_head,
    )


def to_official_pvt_v2_state_dict(
    state_dict: dict[str, torch.Tensor], config: PvtV2Config
) -> dict[str, torch.Tensor]:
    """``PvtV2Backbone.state_dict()`` -> upstream ``pvt_v2`` names."""
    pairs = list(expand_key_map(PVT_V2_KEY_MAP, config.depths))
    return revert_with_key_map(state_dict, pairs, "PvtV2Backbone state dict")

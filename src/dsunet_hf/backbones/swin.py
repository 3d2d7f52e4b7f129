"""BiRefNet's Swin-v1 backbone (``swin_v1_t|s|b|l``) on transformers' ``SwinBackbone``.

``SwinBackbone(swin_config("swin_v1_l"))`` returns the four stage maps (NCHW, strides 4/8/16/32, sizes
rounded up for odd inputs) after the per-stage output LayerNorms, as upstream's ``SwinTransformer``
(``models/backbones/swin_v1.py`` of github.com/ZhengPeng7/BiRefNet) does. ``.channels`` lists their widths,
shallow to deep. transformers' backbone already matches upstream's padding: the image is padded to a
multiple of the patch size, every block pads its map to a multiple of the window (shifted windows are
masked on the padded map) and ``always_partition=True`` keeps the configured window and shift at every
resolution, like upstream (it never clamps the window to a small map). Two implementation differences that
do not change results in fp32: shifted-window masks are ``-100`` instead of ``-inf`` (an ``exp(-100)``
weight), and the unused final ``swin.layernorm`` of ``SwinModel`` is replaced by ``nn.Identity`` so the
parameters (and counts) are exactly upstream's.

Official key map (upstream ``swin_v1`` names without BiRefNet's ``bb.`` prefix -> ours, which are
``SwinBackbone.state_dict()`` names without the leading ``model.``; ``{i}`` stage, ``{s}`` = ``{i}+1``,
``{j}`` block, ``{p}`` weight/bias). ``SWIN_KEY_MAP`` below is the table both converters use.

- ``patch_embed.proj.{p}`` -> ``swin.embeddings.patch_embeddings.projection.{p}``
- ``patch_embed.norm.{p}`` -> ``swin.embeddings.norm.{p}``
- ``layers.{i}.blocks.{j}.norm1.{p}`` -> ``swin.encoder.layers.{i}.blocks.{j}.layernorm_before.{p}``
- ``layers.{i}.blocks.{j}.attn.qkv.{p}`` -> split in thirds along dim 0 into
  ``swin.encoder.layers.{i}.blocks.{j}.attention.q_proj.{p}``, ``...attention.k_proj.{p}`` and
  ``...attention.v_proj.{p}`` (upstream reshapes the qkv output as ``(3, heads, head_dim)``)
- ``layers.{i}.blocks.{j}.attn.proj.{p}`` -> ``swin.encoder.layers.{i}.blocks.{j}.attention.o_proj.{p}``
- ``layers.{i}.blocks.{j}.attn.relative_position_bias_table`` ->
  ``swin.encoder.layers.{i}.blocks.{j}.attention.relative_position_bias.relative_position_bias_table``
- ``layers.{i}.blocks.{j}.attn.relative_position_index`` (persistent int64 upstream) -> checked against the
  index transformers computes for the window, then dropped (a non-persistent buffer here); may be absent
- ``layers.{i}.blocks.{j}.norm2.{p}`` -> ``swin.encoder.layers.{i}.blocks.{j}.layernorm_after.{p}``
- ``layers.{i}.blocks.{j}.mlp.fc1.{p}`` -> ``swin.encoder.layers.{i}.blocks.{j}.mlp.fc1.{p}``
- ``layers.{i}.blocks.{j}.mlp.fc2.{p}`` -> ``swin.encoder.layers.{i}.blocks.{j}.mlp.fc2.{p}``
- ``layers.{i}.downsample.reduction.{p}`` -> ``swin.encoder.layers.{i}.downsample.reduction.{p}``
  (stages 0-2; weight only)
- ``layers.{i}.downsample.norm.{p}`` -> ``swin.encoder.layers.{i}.downsample.norm.{p}``
- ``norm{i}.{p}`` -> ``hidden_states_norms.stage{s}.{p}``

Any other official key, and any of our keys left unproduced, is an error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import torch
from torch import nn
from transformers import SwinBackbone as _TransformersSwinBackbone
from transformers import SwinConfig
from transformers.models.swin.modeling_swin import SwinRelativePositionBias

STAGES = ["stage1", "stage2", "stage3", "stage4"]

_SWIN_COMMON = dict(
    patch_size=4, mlp_ratio=4.0, qkv_bias=True, use_absolute_embeddings=False, drop_path_rate=0.2,
    hidden_act="gelu", layer_norm_eps=1e-5,
)
# Upstream presets (swin_v1.py); all: drop_path 0.2, patch 4, mlp ratio 4, qkv bias, no absolute position
# embedding, patch norm, nn.LayerNorm (eps 1e-5) everywhere.
SWIN_PRESETS: dict[str, dict] = {
    "swin_v1_t": dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7,
                      **_SWIN_COMMON),
    "swin_v1_s": dict(embed_dim=96, depths=[2, 2, 18, 2], num_heads=[3, 6, 12, 24], window_size=7,
                      **_SWIN_COMMON),
    "swin_v1_b": dict(embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], window_size=12,
                      **_SWIN_COMMON),
    "swin_v1_l": dict(embed_dim=192, depths=[2, 2, 18, 2], num_heads=[6, 12, 24, 48], window_size=12,
                      **_SWIN_COMMON),
}

_BOOKKEEPING = ("model_type", "transformers_version")


def preset_config(config_class: type, presets: dict[str, dict], preset: str, overrides: dict | None):
    """``config_class`` for ``presets[preset]`` with ``overrides``, all four stages as ``out_features``."""
    if preset not in presets:
        raise ValueError(f"unknown backbone preset {preset!r}; choose one of {sorted(presets)}")
    overrides = {k: v for k, v in (overrides or {}).items() if k not in _BOOKKEEPING}
    if "out_features" in overrides or "out_indices" in overrides:
        raise ValueError("BiRefNet backbones always return all four stages; drop out_features / out_indices")
    known = set(config_class.__dataclass_fields__)
    unknown = sorted(k for k in overrides if k not in known or k.startswith("_"))
    if unknown:
        raise ValueError(f"unknown {config_class.__name__} fields in the backbone overrides: {unknown}")
    # Per-stage lists (depths, heads, widths, ...) need one entry per stage; others fail deep in transformers.
    # (Per stage: a default of 4 entries; PvtV2Config's image_size is a (height, width) pair.)
    defaults = config_class()
    for key, value in overrides.items():
        default = getattr(defaults, key)
        per_stage = isinstance(default, (list, tuple)) and len(default) == len(STAGES)
        if per_stage and (not isinstance(value, (list, tuple)) or len(value) != len(STAGES)):
            raise ValueError(f"backbone override {key} must list the 4 stages of a BiRefNet backbone, got {value!r}")
    return config_class(**{**presets[preset], **overrides}, out_features=list(STAGES))


def swin_config(preset: str, overrides: dict | None = None) -> SwinConfig:
    """The ``SwinConfig`` of a BiRefNet Swin preset (``swin_v1_t|s|b|l``), with optional field overrides."""
    return preset_config(SwinConfig, SWIN_PRESETS, preset, overrides)


class SwinBackbone(nn.Module):
    """Swin-v1 returning the four normed stage maps channels-first (BiRefNet's ``bb``)."""

    def __init__(self, config: SwinConfig):
        super().__init__()
        self.config = config
        self.model = _TransformersSwinBackbone(config)
        # SwinModel's final LayerNorm only normalises its last_hidden_state, which a backbone never returns
        # (transformers ignores its missing weights on load); upstream has no such layer.
        self.model.swin.layernorm = nn.Identity()
        self.channels: list[int] = list(self.model.channels)

    def forward(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        # transformers' SwinBackbone runs with always_partition=True and returns the pre-downsampling state
        # of every stage through hidden_states_norms (upstream norm0..norm3).
        return list(self.model(pixel_values).feature_maps)


# --- official <-> transformers state dicts ---------------------------------------------------------------

class KeyMapRow(NamedTuple):
    """One row of a key table. ``scope``: "" (once), "stage", "downsample" (every stage but the last) or
    "block"; templates use ``{i}`` (stage), ``{s}`` (stage + 1), ``{j}`` (block) and ``{p}`` (weight/bias).
    ``ours``: one name (renamed), several (the official tensor is split along dim 0 in this order), or none
    (the official tensor is checked and dropped)."""

    scope: str
    official: str
    ours: tuple[str, ...]


_STAGE = "swin.encoder.layers.{i}."
_BLOCK = _STAGE + "blocks.{j}."
SWIN_KEY_MAP: tuple[KeyMapRow, ...] = (
    KeyMapRow("", "patch_embed.proj.{p}", ("swin.embeddings.patch_embeddings.projection.{p}",)),
    KeyMapRow("", "patch_embed.norm.{p}", ("swin.embeddings.norm.{p}",)),
    KeyMapRow("block", "layers.{i}.blocks.{j}.norm1.{p}", (_BLOCK + "layernorm_before.{p}",)),
    KeyMapRow("block", "layers.{i}.blocks.{j}.attn.qkv.{p}",
              tuple(_BLOCK + f"attention.{name}.{{p}}" for name in ("q_proj", "k_proj", "v_proj"))),
    KeyMapRow("block", "layers.{i}.blocks.{j}.attn.proj.{p}", (_BLOCK + "attention.o_proj.{p}",)),
    KeyMapRow("block", "layers.{i}.blocks.{j}.attn.relative_position_bias_table",
              (_BLOCK + "attention.relative_position_bias.relative_position_bias_table",)),
    KeyMapRow("block", "layers.{i}.blocks.{j}.attn.relative_position_index", ()),
    KeyMapRow("block", "layers.{i}.blocks.{j}.norm2.{p}", (_BLOCK + "layernorm_after.{p}",)),
    KeyMapRow("block", "layers.{i}.blocks.{j}.mlp.fc1.{p}", (_BLOCK + "mlp.fc1.{p}",)),
    KeyMapRow("block", "layers.{i}.blocks.{j}.mlp.fc2.{p}", (_BLOCK + "mlp.fc2.{p}",)),
    KeyMapRow("downsample", "layers.{i}.downsample.reduction.{p}", (_STAGE + "downsample.reduction.{p}",)),
    KeyMapRow("downsample", "layers.{i}.downsample.norm.{p}", (_STAGE + "downsample.norm.{p}",)),
    KeyMapRow("stage", "norm{i}.{p}", ("hidden_states_norms.stage{s}.{p}",)),
)
# Our state-dict names are the table's under the wrapper's attribute.
_PREFIX = "model."


def expand_key_map(rows: Sequence[KeyMapRow], depths: Sequence[int]) -> Iterator[tuple[str, tuple[str, ...]]]:
    """(official key, our keys) for every row, stage, block and weight/bias of a model with ``depths``."""
    stages = range(len(depths))
    for row in rows:
        if row.scope == "":
            places = [{}]
        elif row.scope in ("stage", "downsample"):
            last = len(depths) - (row.scope == "downsample")
            places = [dict(i=i, s=i + 1) for i in stages if i < last]
        elif row.scope == "block":
            places = [dict(i=i, s=i + 1, j=j) for i in stages for j in range(depths[i])]
        else:
            raise ValueError(f"unknown key-map scope {row.scope!r}")
        for place in places:
            for param in ("weight", "bias") if "{p}" in row.official else ("",):
                fields = dict(place, p=param)
                ours = tuple(_PREFIX + name.format(**fields) for name in row.ours)
                yield row.official.format(**fields), ours


def _listed(keys: Sequence[str], limit: int = 20) -> str:
    keys = list(keys)
    return f"{keys[:limit]}{f' ... ({len(keys)} in all)' if len(keys) > limit else ''}"


def convert_with_key_map(
    state_dict: dict[str, torch.Tensor],
    pairs: Sequence[tuple[str, tuple[str, ...]]],
    shapes: dict[str, torch.Size],
    what: str,
    check_dropped: Callable[[str, torch.Tensor], None] | None = None,
    ignore: Callable[[str], bool] = lambda key: False,
) -> dict[str, torch.Tensor]:
    """Rename/split an official state dict by ``pairs`` into a module whose state-dict shapes are ``shapes``.

    Pairs whose target keys the module lacks (e.g. biases of a ``qkv_bias=False`` config) are skipped, so a
    tensor for them is reported as unexpected. Keys with no targets are passed to ``check_dropped`` if
    present. ``ignore(key)`` official keys are dropped silently. Raises ``ValueError`` listing unexpected
    official keys, missing ones (and module keys the table never produces) and shape mismatches.
    """
    converted: dict[str, torch.Tensor] = {}
    consumed: set[str] = set()
    missing: list[str] = []
    for official, ours in pairs:
        if ours and not all(name in shapes for name in ours):
            continue
        if official not in state_dict:
            if ours:
                missing.append(official)
            continue
        tensor = state_dict[official]
        consumed.add(official)
        if not ours:
            if check_dropped is not None:
                check_dropped(official, tensor)
            continue
        sizes = [shapes[name][0] for name in ours]
        if len(ours) > 1:
            if tensor.shape[0] != sum(sizes) or tensor.shape[1:] != shapes[ours[0]][1:]:
                joined = (sum(sizes), *shapes[ours[0]][1:])
                raise ValueError(
                    f"{what}: {official} has shape {tuple(tensor.shape)}, expected {joined} "
                    f"to split into {len(ours)} parts"
                )
            parts = [part.clone() for part in torch.split(tensor, sizes)]  # clone: no shared storage to save
        else:
            parts = [tensor]
        for name, part in zip(ours, parts):
            if part.shape != shapes[name]:
                raise ValueError(
                    f"{what}: {official} has shape {tuple(part.shape)}, "
                    f"expected {tuple(shapes[name])} for {name}"
                )
            converted[name] = part
    unexpected = [key for key in state_dict if key not in consumed and not ignore(key)]
    produced = {name for _, ours in pairs for name in ours}
    unmapped = [name for name in shapes if name not in produced]
    if unexpected or missing or unmapped:
        raise ValueError(
            f"{what}: not an official state dict of this config; unexpected keys {_listed(unexpected)}, "
            f"missing keys {_listed(missing)}"
            + (f", module keys without an official source {_listed(unmapped)}" if unmapped else "")
        )
    return converted


def revert_with_key_map(
    state_dict: dict[str, torch.Tensor],
    pairs: Sequence[tuple[str, tuple[str, ...]]],
    what: str,
    make_dropped: Callable[[str], torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """The inverse of ``convert_with_key_map``: join/rename our tensors back into official names; keys with
    no targets are rebuilt by ``make_dropped`` (or left out). Raises ``ValueError`` on leftovers."""
    official: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for name, ours in pairs:
        if not ours:
            if make_dropped is not None:
                official[name] = make_dropped(name)
            continue
        present = [key in state_dict for key in ours]
        if not any(present):
            continue
        if not all(present):
            raise ValueError(f"{what}: {name} needs all of {list(ours)}")
        parts = [state_dict[key] for key in ours]
        official[name] = torch.cat(parts) if len(parts) > 1 else parts[0]
        used.update(ours)
    leftover = [key for key in state_dict if key not in used]
    if leftover:
        raise ValueError(f"{what}: keys with no official name {_listed(leftover)}")
    return official


def _official_relative_position_index(window_size: int) -> torch.Tensor:
    """The (window², window²) int64 index upstream stores, computed by transformers' own code."""
    with torch.device("cpu"):
        return SwinRelativePositionBias(1, (window_size, window_size))._create_relative_position_index()


def meta_state_shapes(module_class: type, config) -> dict[str, torch.Size]:
    """State-dict shapes of ``module_class(config)``, built on the meta device (no memory, no init)."""
    with torch.device("meta"):
        return {name: tensor.shape for name, tensor in module_class(config).state_dict().items()}


def convert_official_swin_state_dict(
    state_dict: dict[str, torch.Tensor], config: SwinConfig
) -> dict[str, torch.Tensor]:
    """Upstream ``swin_v1`` backbone weights (no ``bb.`` prefix) -> ``SwinBackbone(config).state_dict()``.

    The fused ``attn.qkv`` is split into ``q_proj``/``k_proj``/``v_proj``; each ``relative_position_index``
    must equal the index transformers computes for ``config.window_size`` and is then dropped. Raises
    ``ValueError`` listing unconsumed official keys, model keys not produced and shape mismatches.
    """
    expected_index = _official_relative_position_index(config.window_size)

    def check_index(key: str, tensor: torch.Tensor) -> None:
        index = tensor.detach().cpu().long()
        if index.shape != expected_index.shape or not torch.equal(index, expected_index):
            raise ValueError(
                f"official Swin state dict: {key} differs from the relative position index of a "
                f"{config.window_size}x{config.window_size} window (shape {tuple(tensor.shape)}, "
                f"expected {tuple(expected_index.shape)}); wrong window_size?"
            )

    pairs = list(expand_key_map(SWIN_KEY_MAP, config.depths))
    return convert_with_key_map(
        state_dict, pairs, meta_state_shapes(SwinBackbone, config), "official Swin state dict",
        check_dropped=check_index,
    )


def to_official_swin_state_dict(
    state_dict: dict[str, torch.Tensor], config: SwinConfig
) -> dict[str, torch.Tensor]:
    """``SwinBackbone.state_dict()`` -> upstream ``swin_v1`` names (with the persistent index buffers)."""
    index = _official_relative_position_index(config.window_size)
    return revert_with_key_map(
        state_dict, list(expand_key_map(SWIN_KEY_MAP, config.depths)), "SwinBackbone state dict",
        make_dropped=lambda key: index.clone(),
    )

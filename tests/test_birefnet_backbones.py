"""BiRefNet's Swin-v1 and PVT-v2 backbones on transformers: presets, official key conversion, shapes.

Official-layout state dicts are built here from the documented key list and shapes (not by our reverse
converters). The parity test against the authors' code is opt-in: set ``BIREFNET_UPSTREAM_DIR`` to a
checkout of github.com/ZhengPeng7/BiRefNet (its ``models/backbones/swin_v1.py`` and ``pvt_v2.py`` are
imported from there at run time, never copied here).
"""

from __future__ import annotations

import importlib
import math
import os
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import PvtV2Config

from dsunet_hf.backbones import pvt_v2 as pvt_module
from dsunet_hf.backbones import swin as swin_module
from dsunet_hf.backbones.pvt_v2 import (
    PVT_V2_PRESETS,
    PvtV2Backbone,
    convert_official_pvt_v2_state_dict,
    pvt_v2_config,
    to_official_pvt_v2_state_dict,
)
from dsunet_hf.backbones.swin import (
    SWIN_PRESETS,
    SwinBackbone,
    convert_official_swin_state_dict,
    swin_config,
    to_official_swin_state_dict,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (see conftest)

TINY_SWIN = dict(embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4], window_size=4)
TINY_PVT = dict(hidden_sizes=[16, 32, 48, 64], num_attention_heads=[1, 2, 2, 4], depths=[1, 1, 2, 1],
                mlp_ratios=[4, 4, 2, 2])

# Parameter counts measured from upstream HEAD 25cb930 (models/backbones/swin_v1.py, pvt_v2.py) built on the
# meta device: sum(p.numel() for p in model.parameters()); upstream's relative_position_index is a buffer.
UPSTREAM_PARAMETER_COUNTS = {
    "swin_v1_t": 27_520_698,
    "swin_v1_s": 48_838_602,
    "swin_v1_b": 86_880_376,
    "swin_v1_l": 195_201_204,
    "pvt_v2_b0": 3_409_760,
    "pvt_v2_b1": 13_496_000,
    "pvt_v2_b2": 24_849_856,
    "pvt_v2_b5": 81_443_008,
}
# config.py lateral_channels_in_collection, deepest first upstream; shallow -> deep here.
UPSTREAM_CHANNELS = {
    "swin_v1_t": [96, 192, 384, 768], "swin_v1_s": [96, 192, 384, 768], "swin_v1_b": [128, 256, 512, 1024],
    "swin_v1_l": [192, 384, 768, 1536], "pvt_v2_b0": [32, 64, 160, 256], "pvt_v2_b1": [64, 128, 320, 512],
    "pvt_v2_b2": [64, 128, 320, 512], "pvt_v2_b5": [64, 128, 320, 512],
}


def build(preset: str, overrides: dict | None = None):
    if preset.startswith("swin"):
        return SwinBackbone(swin_config(preset, overrides))
    return PvtV2Backbone(pvt_v2_config(preset, overrides))


# --- official layouts, from the documented key list -----------------------------------------------------

def official_relative_position_index(window: int) -> torch.Tensor:
    """Upstream's index: (dh + w - 1) * (2w - 1) + (dw + w - 1) for every pair of window positions."""
    rows, cols = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    rows, cols = rows.flatten(), cols.flatten()
    dh = rows[:, None] - rows[None, :] + window - 1
    dw = cols[:, None] - cols[None, :] + window - 1
    return dh * (2 * window - 1) + dw


def _random(shape, name: str) -> torch.Tensor:
    if "norm" in name and name.endswith("weight"):
        return 1 + 0.1 * torch.randn(shape)
    return 0.1 * torch.randn(shape)


def official_swin_state_dict(embed_dim, depths, num_heads, window_size, mlp_ratio=4) -> dict:
    shapes: dict[str, tuple] = {
        "patch_embed.proj.weight": (embed_dim, 3, 4, 4), "patch_embed.proj.bias": (embed_dim,),
        "patch_embed.norm.weight": (embed_dim,), "patch_embed.norm.bias": (embed_dim,),
    }
    for i, (depth, heads) in enumerate(zip(depths, num_heads)):
        dim, hidden = embed_dim * 2**i, embed_dim * 2**i * mlp_ratio
        for j in range(depth):
            block = f"layers.{i}.blocks.{j}."
            shapes.update({
                block + "norm1.weight": (dim,), block + "norm1.bias": (dim,),
                block + "attn.qkv.weight": (3 * dim, dim), block + "attn.qkv.bias": (3 * dim,),
                block + "attn.relative_position_bias_table": ((2 * window_size - 1) ** 2, heads),
                block + "attn.proj.weight": (dim, dim), block + "attn.proj.bias": (dim,),
                block + "norm2.weight": (dim,), block + "norm2.bias": (dim,),
                block + "mlp.fc1.weight": (hidden, dim), block + "mlp.fc1.bias": (hidden,),
                block + "mlp.fc2.weight": (dim, hidden), block + "mlp.fc2.bias": (dim,),
            })
        if i < len(depths) - 1:
            shapes.update({
                f"layers.{i}.downsample.reduction.weight": (2 * dim, 4 * dim),
                f"layers.{i}.downsample.norm.weight": (4 * dim,),
                f"layers.{i}.downsample.norm.bias": (4 * dim,),
            })
        shapes.update({f"norm{i}.weight": (dim,), f"norm{i}.bias": (dim,)})
    state_dict = {name: _random(shape, name) for name, shape in shapes.items()}
    for i, depth in enumerate(depths):
        for j in range(depth):
            index = official_relative_position_index(window_size)
            state_dict[f"layers.{i}.blocks.{j}.attn.relative_position_index"] = index
    return state_dict


def official_pvt_v2_state_dict(hidden_sizes, depths, mlp_ratios, sr_ratios=(8, 4, 2, 1)) -> dict:
    shapes: dict[str, tuple] = {}
    for i, (dim, depth, ratio, sr) in enumerate(zip(hidden_sizes, depths, mlp_ratios, sr_ratios)):
        s, kernel = i + 1, 7 if i == 0 else 3
        in_channels = 3 if i == 0 else hidden_sizes[i - 1]
        hidden = dim * ratio
        shapes.update({
            f"patch_embed{s}.proj.weight": (dim, in_channels, kernel, kernel),
            f"patch_embed{s}.proj.bias": (dim,),
            f"patch_embed{s}.norm.weight": (dim,), f"patch_embed{s}.norm.bias": (dim,),
            f"norm{s}.weight": (dim,), f"norm{s}.bias": (dim,),
        })
        for j in range(depth):
            block = f"block{s}.{j}."
            shapes.update({
                block + "norm1.weight": (dim,), block + "norm1.bias": (dim,),
                block + "attn.q.weight": (dim, dim), block + "attn.q.bias": (dim,),
                block + "attn.kv.weight": (2 * dim, dim), block + "attn.kv.bias": (2 * dim,),
                block + "attn.proj.weight": (dim, dim), block + "attn.proj.bias": (dim,),
                block + "norm2.weight": (dim,), block + "norm2.bias": (dim,),
                block + "mlp.fc1.weight": (hidden, dim), block + "mlp.fc1.bias": (hidden,),
                block + "mlp.dwconv.dwconv.weight": (hidden, 1, 3, 3),
                block + "mlp.dwconv.dwconv.bias": (hidden,),
                block + "mlp.fc2.weight": (dim, hidden), block + "mlp.fc2.bias": (dim,),
            })
            if sr > 1:
                shapes.update({
                    block + "attn.sr.weight": (dim, dim, sr, sr), block + "attn.sr.bias": (dim,),
                    block + "attn.norm.weight": (dim,), block + "attn.norm.bias": (dim,),
                })
    return {name: _random(shape, name) for name, shape in shapes.items()}


def tiny_official_swin():
    return official_swin_state_dict(**TINY_SWIN), swin_config("swin_v1_t", TINY_SWIN)


def tiny_official_pvt():
    return official_pvt_v2_state_dict(TINY_PVT["hidden_sizes"], TINY_PVT["depths"], TINY_PVT["mlp_ratios"]), \
        pvt_v2_config("pvt_v2_b0", TINY_PVT)


# --- presets ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("preset", list(UPSTREAM_PARAMETER_COUNTS))
def test_full_presets_have_upstream_parameter_counts(preset):
    with torch.device("meta"):
        model = build(preset)
    assert sum(p.numel() for p in model.parameters()) == UPSTREAM_PARAMETER_COUNTS[preset]
    assert model.channels == UPSTREAM_CHANNELS[preset]
    assert not any("relative_position_index" in name for name, _ in model.named_parameters())


def test_presets_and_config_validation():
    assert set(SWIN_PRESETS) == {"swin_v1_t", "swin_v1_s", "swin_v1_b", "swin_v1_l"}
    assert set(PVT_V2_PRESETS) == {"pvt_v2_b0", "pvt_v2_b1", "pvt_v2_b2", "pvt_v2_b5"}
    config = swin_config("swin_v1_b", {"window_size": 7})
    assert (config.embed_dim, config.window_size) == (128, 7)
    assert config.out_features == ["stage1", "stage2", "stage3", "stage4"]
    assert pvt_v2_config("pvt_v2_b5").mlp_ratios == [4, 4, 4, 4]
    with pytest.raises(ValueError, match="swin_v1_l"):
        swin_config("swin_v2_l")
    with pytest.raises(ValueError, match="pvt_v2_b2"):
        pvt_v2_config("pvt_v2_b3")
    with pytest.raises(ValueError, match="windw_size"):
        swin_config("swin_v1_t", {"windw_size": 7})
    with pytest.raises(ValueError, match="out_features"):
        pvt_v2_config("pvt_v2_b0", {"out_features": ["stage4"]})
    # Per-stage lists of another length failed deep in transformers (IndexError, "out_features must be a subset").
    for config_fn, preset, overrides in [(swin_config, "swin_v1_t", {"num_heads": [1, 1]}),
                                         (pvt_v2_config, "pvt_v2_b0", {"depths": [1, 1, 1]}),
                                         (pvt_v2_config, "pvt_v2_b0", {"sr_ratios": 8})]:
        with pytest.raises(ValueError, match=f"{next(iter(overrides))} must list the 4 stages"):
            config_fn(preset, overrides)
    # A list-valued field that is not per stage (PvtV2Config's image_size, a pair) is no stage list: it loads as before.
    assert tuple(pvt_v2_config("pvt_v2_b0", {"image_size": 512}).image_size) == (512, 512)
    assert list(pvt_v2_config("pvt_v2_b0", {"image_size": [512, 384]}).image_size) == [512, 384]


def test_pvt_v2_layer_norm_eps_follow_upstream():
    model = build("pvt_v2_b0", TINY_PVT)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.LayerNorm):
            upstream_default = "patch_embedding" in name or name.endswith("attention.layer_norm")
            assert module.eps == (1e-5 if upstream_default else 1e-6), name


def test_key_map_docstrings_cover_every_row():
    for module, table in ((swin_module, swin_module.SWIN_KEY_MAP), (pvt_module, pvt_module.PVT_V2_KEY_MAP)):
        for row in table:
            assert f"``{row.official}``" in module.__doc__
            for name in row.ours:
                assert name in module.__doc__ or name.split("blocks.{j}.")[-1] in module.__doc__, name


# --- Swin conversion -------------------------------------------------------------------------------------

def test_official_swin_layout_converts_and_loads_strictly():
    official, config = tiny_official_swin()
    model = SwinBackbone(config)
    result = model.load_state_dict(convert_official_swin_state_dict(official, config), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    block = model.model.swin.encoder.layers[1].blocks[1]
    q, k, v = official["layers.1.blocks.1.attn.qkv.weight"].chunk(3)
    assert torch.equal(block.attention.q_proj.weight, q) and torch.equal(block.attention.v_proj.weight, v)
    assert torch.equal(model.model.hidden_states_norms["stage3"].bias, official["norm2.bias"])
    # the reverse map restores the official dict exactly (index buffers included)
    back = to_official_swin_state_dict(model.state_dict(), config)
    assert back.keys() == official.keys()
    assert all(torch.equal(back[name], official[name]) for name in official)


def test_swin_conversion_errors_name_the_keys():
    official, config = tiny_official_swin()
    with pytest.raises(ValueError, match=r"layers\.0\.blocks\.0\.attn\.extra"):
        convert_official_swin_state_dict({**official, "layers.0.blocks.0.attn.extra": torch.zeros(1)}, config)
    incomplete = {k: v for k, v in official.items() if k != "layers.2.blocks.1.norm2.weight"}
    with pytest.raises(ValueError, match=r"missing keys \['layers\.2\.blocks\.1\.norm2\.weight'\]"):
        convert_official_swin_state_dict(incomplete, config)
    wrong_index = dict(official)
    wrong_index["layers.3.blocks.1.attn.relative_position_index"] = wrong_index[
        "layers.3.blocks.1.attn.relative_position_index"].flip(0)
    with pytest.raises(ValueError, match=r"layers\.3\.blocks\.1\.attn\.relative_position_index"):
        convert_official_swin_state_dict(wrong_index, config)
    with pytest.raises(ValueError, match=r"relative_position_bias_table has shape \(49, 1\)"):  # other window
        convert_official_swin_state_dict(official, swin_config("swin_v1_t", {**TINY_SWIN, "window_size": 3}))
    wrong_shape = {**official, "layers.0.blocks.0.attn.qkv.weight": torch.zeros(47, 16)}
    with pytest.raises(ValueError, match=r"layers\.0\.blocks\.0\.attn\.qkv\.weight"):
        convert_official_swin_state_dict(wrong_shape, config)
    # the index buffers carry no weights: a state dict without them converts too
    no_index = {k: v for k, v in official.items() if not k.endswith("relative_position_index")}
    converted = convert_official_swin_state_dict(no_index, config)
    assert converted.keys() == SwinBackbone(config).state_dict().keys()


def reference_window_attention(x, qkv_weight, qkv_bias, table, index, proj_weight, proj_bias, heads):
    """Upstream's WindowAttention (no shift mask) written from the official tensors."""
    windows, tokens, channels = x.shape
    q, k, v = F.linear(x, qkv_weight, qkv_bias).reshape(windows, tokens, 3, heads, -1).permute(2, 0, 3, 1, 4)
    bias = table[index.reshape(-1)].reshape(tokens, tokens, heads).permute(2, 0, 1)
    attention = (q * (channels // heads) ** -0.5 @ k.transpose(-2, -1) + bias).softmax(-1)
    output = (attention @ v).transpose(1, 2).reshape(windows, tokens, channels)
    return F.linear(output, proj_weight, proj_bias)


def test_split_qkv_gives_the_fused_attention():
    official, config = tiny_official_swin()
    model = SwinBackbone(config).eval()
    model.load_state_dict(convert_official_swin_state_dict(official, config))
    stage, block_index, heads, dim = 2, 1, TINY_SWIN["num_heads"][2], 64
    prefix = f"layers.{stage}.blocks.{block_index}.attn."
    attention = model.model.swin.encoder.layers[stage].blocks[block_index].attention
    x = torch.randn(3, TINY_SWIN["window_size"] ** 2, dim)
    with torch.no_grad():
        fused = torch.nn.functional.linear(x, official[prefix + "qkv.weight"], official[prefix + "qkv.bias"])
        split = torch.cat([attention.q_proj(x), attention.k_proj(x), attention.v_proj(x)], dim=-1)
        torch.testing.assert_close(split, fused, rtol=0, atol=0)
        expected = reference_window_attention(
            x, official[prefix + "qkv.weight"], official[prefix + "qkv.bias"],
            official[prefix + "relative_position_bias_table"], official[prefix + "relative_position_index"],
            official[prefix + "proj.weight"], official[prefix + "proj.bias"], heads,
        )
        torch.testing.assert_close(attention(x)[0], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("size", [(64, 96), (70, 100)])
def test_swin_output_shapes(size):
    model = build("swin_v1_t", TINY_SWIN).eval()
    with torch.no_grad():
        features = model(torch.randn(2, 3, *size))
    assert model.channels == [16, 32, 64, 128]
    expected, (height, width) = [], (math.ceil(size[0] / 4), math.ceil(size[1] / 4))
    for channels in model.channels:
        expected.append((2, channels, height, width))
        height, width = math.ceil(height / 2), math.ceil(width / 2)
    assert [tuple(f.shape) for f in features] == expected


def test_swin_built_on_meta_with_rebuilt_index_matches():
    """What a meta-device build does: empty tensors, then every module with
    ``_create_relative_position_index`` refills its (non-persistent, flat) buffer; then the converted
    weights load strictly."""
    official, config = tiny_official_swin()
    converted = convert_official_swin_state_dict(official, config)
    with torch.device("meta"):
        model = SwinBackbone(config)
    model.to_empty(device="cpu")
    rebuilt = 0
    for module in model.modules():
        if hasattr(module, "_create_relative_position_index"):
            buffer = module.relative_position_index
            buffer.copy_(module._create_relative_position_index().reshape(buffer.shape))
            assert torch.equal(buffer, official_relative_position_index(TINY_SWIN["window_size"]).flatten())
            rebuilt += 1
    assert rebuilt == sum(TINY_SWIN["depths"])
    model.load_state_dict(converted, strict=True)
    reference = SwinBackbone(config)
    reference.load_state_dict(converted, strict=True)
    x = torch.randn(1, 3, 70, 100)
    with torch.no_grad():
        for ours, theirs in zip(model.eval()(x), reference.eval()(x)):
            assert torch.equal(ours, theirs)


# --- PVT-v2 conversion -----------------------------------------------------------------------------------

def test_official_pvt_v2_layout_converts_and_loads_strictly():
    official, config = tiny_official_pvt()
    model = PvtV2Backbone(config)
    with_head = {**official, "head.weight": torch.zeros(1000, 64), "head.bias": torch.zeros(1000)}
    result = model.load_state_dict(convert_official_pvt_v2_state_dict(with_head, config), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    attention = model.model.encoder.layers[2].blocks[1].attention
    key, value = official["block3.1.attn.kv.weight"].chunk(2)
    assert torch.equal(attention.key.weight, key) and torch.equal(attention.value.weight, value)
    back = to_official_pvt_v2_state_dict(model.state_dict(), config)
    assert back.keys() == official.keys()
    assert all(torch.equal(back[name], official[name]) for name in official)


def test_pvt_v2_conversion_errors_name_the_keys():
    official, config = tiny_official_pvt()
    with pytest.raises(ValueError, match=r"block1\.0\.attn\.qkv\.weight"):
        convert_official_pvt_v2_state_dict({**official, "block1.0.attn.qkv.weight": torch.zeros(1)}, config)
    incomplete = {k: v for k, v in official.items() if k != "block2.0.attn.sr.bias"}
    with pytest.raises(ValueError, match=r"missing keys \['block2\.0\.attn\.sr\.bias'\]"):
        convert_official_pvt_v2_state_dict(incomplete, config)
    # stage 4 has sr ratio 1: a spatial-reduction conv there is not part of the model
    extra_sr = {**official, "block4.0.attn.sr.weight": torch.zeros(64, 64, 1, 1)}
    with pytest.raises(ValueError, match=r"block4\.0\.attn\.sr\.weight"):
        convert_official_pvt_v2_state_dict(extra_sr, config)


def test_split_kv_gives_the_fused_attention():
    official, config = tiny_official_pvt()
    model = PvtV2Backbone(config).eval()
    model.load_state_dict(convert_official_pvt_v2_state_dict(official, config))
    heads, dim, sr, (height, width) = 2, 32, 4, (8, 12)
    p = "block2.0.attn."
    x = torch.randn(2, height * width, dim)
    q = F.linear(x, official[p + "q.weight"], official[p + "q.bias"]).reshape(2, -1, heads, dim // heads)
    reduced = F.conv2d(x.transpose(1, 2).reshape(2, dim, height, width), official[p + "sr.weight"],
                       official[p + "sr.bias"], stride=sr).flatten(2).transpose(1, 2)
    reduced = F.layer_norm(reduced, (dim,), official[p + "norm.weight"], official[p + "norm.bias"], eps=1e-5)
    k, v = F.linear(reduced, official[p + "kv.weight"], official[p + "kv.bias"]).reshape(
        2, -1, 2, heads, dim // heads).permute(2, 0, 3, 1, 4)
    attention = (q.transpose(1, 2) @ k.transpose(-2, -1) * (dim // heads) ** -0.5).softmax(-1)
    expected = F.linear((attention @ v).transpose(1, 2).reshape(2, -1, dim), official[p + "proj.weight"],
                        official[p + "proj.bias"])
    with torch.no_grad():
        ours = model.model.encoder.layers[1].blocks[0].attention(x, height, width)[0]
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("size", [(64, 96), (70, 100)])
def test_pvt_v2_output_shapes(size):
    model = build("pvt_v2_b0", TINY_PVT).eval()
    with torch.no_grad():
        features = model(torch.randn(2, 3, *size))
    assert model.channels == [16, 32, 48, 64]
    expected, (height, width) = [], (math.ceil(size[0] / 4), math.ceil(size[1] / 4))
    for channels in model.channels:
        expected.append((2, channels, height, width))
        height, width = math.ceil(height / 2), math.ceil(width / 2)
    assert [tuple(f.shape) for f in features] == expected


def test_pvt_v2_survives_torch_save_and_load():
    """PVT-v2's fused attention was a bound method on each block: torch.save(model) wrote it by name, and
    torch.load failed ('PvtV2SelfAttention' object has no attribute '_sdpa_attention_forward'). (transformers'
    own Swin cannot be pickled at all: a local output-capturing hook.)"""
    import io

    model = build("pvt_v2_b0", TINY_PVT).eval()
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(model(pixels), loaded(pixels)))


# --- opt-in parity with the authors' code ---------------------------------------------------------------

UPSTREAM = os.environ.get("BIREFNET_UPSTREAM_DIR")


def _timm_layers_standin() -> dict[str, types.ModuleType]:
    """The three timm.layers names the upstream backbones import, for environments where timm cannot be
    imported (timm 1.x needs torchvision). Only DropPath acts at run time, and not in eval mode."""
    layers = types.ModuleType("timm.layers")

    class DropPath(torch.nn.Module):
        def __init__(self, drop_prob: float = 0.0):
            super().__init__()
            self.drop_prob = drop_prob

        def forward(self, x):
            if not self.training or self.drop_prob == 0.0:
                return x
            keep = 1 - self.drop_prob
            mask = torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), device=x.device).add_(keep).floor_()
            return x / keep * mask

    layers.DropPath = DropPath
    layers.to_2tuple = lambda x: tuple(x) if isinstance(x, (tuple, list)) else (x, x)
    layers.trunc_normal_ = torch.nn.init.trunc_normal_
    timm = types.ModuleType("timm")
    timm.layers = layers
    return {"timm": timm, "timm.layers": layers}


@pytest.fixture(scope="module")
def upstream():
    """Upstream's swin_v1 and pvt_v2 modules; sys.modules and sys.path are left as they were."""
    before = set(sys.modules)
    try:
        importlib.import_module("timm.layers")
    except ImportError:
        for name in set(sys.modules) - before:
            del sys.modules[name]
        sys.modules.update(_timm_layers_standin())
    sys.path.insert(0, UPSTREAM)
    try:
        swin_v1 = importlib.import_module("models.backbones.swin_v1")
        pvt_v2 = importlib.import_module("models.backbones.pvt_v2")
    finally:
        sys.path.remove(UPSTREAM)
        for name in set(sys.modules) - before:  # upstream's top-level `config`, `models`, and the stand-in
            del sys.modules[name]
    return types.SimpleNamespace(swin_v1=swin_v1, pvt_v2=pvt_v2)


def randomize_upstream(model: torch.nn.Module) -> torch.nn.Module:
    """Random 1-D parameters and position-bias tables (upstream initialises norms to 1/0, tables near 0), so
    every mapped tensor matters; matrices keep upstream's random init."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("relative_position_bias_table"):
                parameter.normal_(0, 1.0)
            elif parameter.ndim == 1 and "norm" in name and name.endswith("weight"):
                parameter.copy_(1 + 0.1 * torch.randn_like(parameter))
            elif parameter.ndim == 1:
                parameter.normal_(0, 0.1)
    model.eval()
    return model


TINY_UPSTREAM_SWIN = dict(embed_dim=32, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8], window_size=12)
# 200x296 pads every Swin stage to the window; at 224 the tiny Swin's 7x7 stage-4 map is padded to its
# 12x12 window (upstream never clamps the window). swin_v1_t keeps to two sizes to save time.
PARITY_SIZES = {
    "tiny_swin": [(224, 224), (256, 320), (200, 296)],
    "swin_v1_t": [(224, 224), (200, 296)],
    "pvt_v2_b0": [(224, 224), (256, 320), (200, 296)],
}


def upstream_and_ours(upstream, name: str):
    if name == "tiny_swin":
        reference = upstream.swin_v1.SwinTransformer(**TINY_UPSTREAM_SWIN)  # the constructor, custom args
        config = swin_config("swin_v1_t", TINY_UPSTREAM_SWIN)
    elif name.startswith("swin"):
        reference, config = getattr(upstream.swin_v1, name)(), swin_config(name)
    else:
        reference, config = getattr(upstream.pvt_v2, name)(), pvt_v2_config(name)
    randomize_upstream(reference)
    if isinstance(config, PvtV2Config):
        model = PvtV2Backbone(config)
        model.load_state_dict(convert_official_pvt_v2_state_dict(reference.state_dict(), config), strict=True)
    else:
        model = SwinBackbone(config)
        model.load_state_dict(convert_official_swin_state_dict(reference.state_dict(), config), strict=True)
    return reference, model.eval()


@pytest.mark.skipif(
    not UPSTREAM or not (Path(UPSTREAM) / "models" / "backbones" / "swin_v1.py").is_file(),
    reason="set BIREFNET_UPSTREAM_DIR to a checkout of ZhengPeng7/BiRefNet to compare the backbones with the "
           "authors' code",
)
@pytest.mark.parametrize("name", list(PARITY_SIZES))
def test_backbones_match_upstream(upstream, name):
    reference, model = upstream_and_ours(upstream, name)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in reference.parameters())
    for size in PARITY_SIZES[name]:
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            expected, ours = reference(x), model(x)
        assert len(ours) == len(expected) == 4
        for stage, (theirs, mine) in enumerate(zip(expected, ours)):
            assert mine.shape == theirs.shape, (size, stage)
            assert (mine - theirs).abs().max().item() <= 1e-5, (size, stage)

"""DINOv2 encoder: outputs vs ``Dinov2Model``, torch.hub / transformers-4 name conversion, Hub layouts, errors."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import save_file
from transformers import Dinov2Config, Dinov2Model

from dsunet_hf.backbones.dinov2 import (
    DINOV2_PRESETS,
    DINOv2Backbone,
    convert_dinov2_hub_state_dict,
    convert_dinov2_v4_state_dict,
    dinov2_config,
    dinov2_hub_repo,
    load_dinov2_state_dict,
)
from dsunet_hf.hub import BackboneNotAvailableError

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (see conftest)

TINY_DINOV2 = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, patch_size=14, image_size=56)
SIZE = 56  # 4x4 patches


def tiny_backbone(seed: int = 0, **overrides) -> DINOv2Backbone:
    torch.manual_seed(seed)
    backbone = DINOv2Backbone(dinov2_config(None, **dict(TINY_DINOV2, **overrides))).eval()
    with torch.no_grad():  # random everything (LayerScale, position embeddings and norms too)
        for parameter in backbone.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    return backbone


def to_hub_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The documented inverse map: transformers-5 ``Dinov2Model`` names -> torch.hub names (qkv fused)."""
    hub = {}
    renames = [
        (r"^embeddings\.cls_token$", "cls_token"),
        (r"^embeddings\.mask_token$", "mask_token"),
        (r"^embeddings\.position_embeddings$", "pos_embed"),
        (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
        (r"^layernorm\.", "norm."),
        (r"^encoder\.layer\.(\d+)\.attention\.o_proj\.", r"blocks.\1.attn.proj."),
        (r"^encoder\.layer\.(\d+)\.layer_scale([12])\.lambda1$", r"blocks.\1.ls\2.gamma"),
        (r"^encoder\.layer\.(\d+)\.mlp\.down_proj\.", r"blocks.\1.mlp.w3."),
        (r"^encoder\.layer\.(\d+)\.", r"blocks.\1."),
    ]
    for key, tensor in state_dict.items():
        fused = re.match(r"^encoder\.layer\.(\d+)\.(attention\.[qkv]_proj|mlp\.(gate|up)_proj)\.(\w+)$", key)
        if fused:
            layer, part, _, param = fused.groups()
            if part == "attention.q_proj":
                parts = [state_dict[f"encoder.layer.{layer}.attention.{p}_proj.{param}"] for p in "qkv"]
                hub[f"blocks.{layer}.attn.qkv.{param}"] = torch.cat(parts)
            elif part == "mlp.gate_proj":
                parts = [state_dict[f"encoder.layer.{layer}.mlp.{p}_proj.{param}"] for p in ("gate", "up")]
                hub[f"blocks.{layer}.mlp.w12.{param}"] = torch.cat(parts)
            continue
        for pattern, replacement in renames:
            new_key, count = re.subn(pattern, replacement, key)
            if count:
                hub[new_key] = tensor.clone()
                break
        else:
            raise AssertionError(f"no hub name for {key}")
    return hub


def to_v4_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers-5 -> transformers-4 names (what older ``facebook/dinov2-*`` safetensors hold)."""
    names = {"q_proj": "attention.query", "k_proj": "attention.key", "v_proj": "attention.value", "o_proj": "output.dense"}
    return {
        re.sub(r"\.attention\.([qkvo]_proj)\.", lambda m: f".attention.{names[m.group(1)]}.", k): v.clone()
        for k, v in state_dict.items()
    }


def assert_same_weights(a: DINOv2Backbone, b: DINOv2Backbone) -> None:
    sa, sb = a.encoder_state_dict(), b.encoder_state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


# --- outputs -------------------------------------------------------------------------------------

def test_forward_is_the_final_layernorm_patch_map():
    backbone = tiny_backbone()
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        out = backbone(x)
        expected = backbone.encoder(x).last_hidden_state[:, 1:].reshape(2, 4, 4, 32).permute(0, 3, 1, 2)
    assert out.shape == (2, 32, 4, 4) and backbone.channels == 32 and backbone.patch_size == 14
    assert torch.equal(out, expected)


def test_forward_matches_a_separate_dinov2_model():
    backbone = tiny_backbone()
    plain = Dinov2Model(Dinov2Config(**TINY_DINOV2)).eval()
    plain.load_state_dict(backbone.encoder_state_dict())
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        tokens = plain(x).last_hidden_state[:, 1:]
        assert torch.equal(backbone(x), tokens.reshape(1, 4, 4, 32).permute(0, 3, 1, 2))


def test_forward_layers():
    backbone = tiny_backbone()
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        last, first, last_again = backbone.forward_layers(x, [-1, 1, 2])
        assert torch.equal(last, backbone(x)) and torch.equal(last_again, last)
        hidden = backbone.encoder(x, output_hidden_states=True).hidden_states
        expected = backbone.encoder.layernorm(hidden[1])[:, 1:].reshape(1, 4, 4, 32).permute(0, 3, 1, 2)
        assert torch.equal(first, expected)
        assert torch.equal(backbone.forward_layers(x, [-2])[0], first)
    for bad in (0, 3, -3):
        with pytest.raises(ValueError, match="out of range"):
            backbone.forward_layers(x, [bad])


def test_non_square_input():
    backbone = tiny_backbone()
    with torch.no_grad():
        assert backbone(torch.randn(1, 3, 28, 70)).shape == (1, 32, 2, 5)
        # Sides that are not multiples of 14: the stride-14 patch embedding dropped the border pixels silently.
        for call in (backbone, lambda x: backbone.forward_layers(x, [-1]), lambda x: backbone.block_tokens(x, [1])):
            with pytest.raises(ValueError, match=r"multiples of the patch size 14, got 30x70 \(pad the image first\)"):
                call(torch.randn(1, 3, 30, 70))


# --- presets and counts ----------------------------------------------------------------------------

def test_presets_and_parameter_counts():
    counts = {}
    for preset in DINOV2_PRESETS:
        with torch.device("meta"):
            backbone = DINOv2Backbone(dinov2_config(preset))
        counts[preset] = sum(p.numel() for p in backbone.parameters())
        assert backbone.patch_size == 14 and backbone.config.image_size == 518
    # torch.hub's vit_{small,base,large,giant2}(patch_size=14, img_size=518, block_chunks=0), giant with
    # ffn_layer="swiglufused", built on the meta device from facebookresearch/dinov2 (checked)
    assert counts == {"small": 22_056_576, "base": 86_580_480, "large": 304_368_640, "giant": 1_136_480_768}
    assert dinov2_config("giant").use_swiglu_ffn and not dinov2_config("large").use_swiglu_ffn
    assert dinov2_config("large").layer_norm_eps == 1e-6 and dinov2_config("large").layerscale_value == 1.0
    assert dinov2_hub_repo("large") == "facebook/dinov2-large"
    assert dinov2_hub_repo("small") == "facebook/dinov2-small"
    with pytest.raises(ValueError, match="unknown DINOv2 preset 'huge'"):
        dinov2_config("huge")
    with pytest.raises(ValueError, match="unknown DINOv2 preset"):
        dinov2_hub_repo("huge")


# --- name conversion -------------------------------------------------------------------------------

@pytest.mark.parametrize("swiglu", [False, True])
def test_torch_hub_layout_round_trip(swiglu):
    source = tiny_backbone(seed=1, use_swiglu_ffn=swiglu)
    hub = to_hub_state_dict(source.encoder_state_dict())
    assert "blocks.0.attn.qkv.weight" in hub and hub["pos_embed"].shape == (1, 17, 32)
    assert ("blocks.1.mlp.w12.weight" in hub) == swiglu
    target = tiny_backbone(seed=2, use_swiglu_ffn=swiglu)
    target.load_encoder_state_dict(convert_dinov2_hub_state_dict(hub), "hub")
    assert_same_weights(source, target)
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.equal(source(x), target(x))


def test_torch_hub_block_chunks_and_unknown_keys():
    hub = to_hub_state_dict(tiny_backbone().encoder_state_dict())
    chunked = {re.sub(r"^blocks\.(\d+)\.", lambda m: f"blocks.{m.group(1)}.{m.group(1)}.", k): v for k, v in hub.items()}
    assert convert_dinov2_hub_state_dict(chunked).keys() == convert_dinov2_hub_state_dict(hub).keys()
    with pytest.raises(ValueError, match="head.weight"):
        convert_dinov2_hub_state_dict(dict(hub, **{"head.weight": torch.zeros(1)}))


def test_v4_names_convert_and_v5_names_pass_through():
    state = tiny_backbone().encoder_state_dict()
    v4 = to_v4_state_dict(state)
    assert "encoder.layer.0.attention.attention.query.weight" in v4
    assert "encoder.layer.0.attention.output.dense.bias" in v4
    converted = convert_dinov2_v4_state_dict(v4)
    assert converted.keys() == state.keys() and all(torch.equal(converted[k], state[k]) for k in state)
    assert convert_dinov2_v4_state_dict(state).keys() == state.keys()


# --- loading from files, folders and the Hub ---------------------------------------------------------

def test_load_v4_named_safetensors_with_prefix(tmp_path):
    source = tiny_backbone(seed=3)
    v4 = {f"dinov2.{k}": v for k, v in to_v4_state_dict(source.encoder_state_dict()).items()}
    v4["classifier.weight"] = torch.zeros(2, 64)  # e.g. Dinov2ForImageClassification: ignored
    save_file(v4, tmp_path / "model.safetensors")
    state_dict, commit = load_dinov2_state_dict(tmp_path)
    assert commit is None
    target = tiny_backbone(seed=4)
    target.load_encoder_state_dict(state_dict)
    assert_same_weights(source, target)


def test_load_torch_hub_pth_file_and_folder(tmp_path, monkeypatch):
    source = tiny_backbone(seed=5)
    path = tmp_path / "dinov2_vitl14_pretrain.pth"
    torch.save(to_hub_state_dict(source.encoder_state_dict()), path)
    monkeypatch.setenv("HOME", str(tmp_path))  # a path written with ~ was refused as missing
    for location in (path, tmp_path, "~/dinov2_vitl14_pretrain.pth", "~"):
        state_dict, commit = load_dinov2_state_dict(location)
        target = tiny_backbone(seed=6)
        target.load_encoder_state_dict(state_dict, str(location))
        assert_same_weights(source, target)
        assert commit is None


def test_load_from_offline_hub(tmp_path, offline_hub):
    source = tiny_backbone(seed=7)
    source.encoder.save_pretrained(tmp_path / "repo")
    sha = offline_hub.add("test-org/tiny-dinov2", tmp_path / "repo")
    state_dict, commit = load_dinov2_state_dict("test-org/tiny-dinov2")
    assert commit == sha
    target = tiny_backbone(seed=8)
    target.load_encoder_state_dict(state_dict, "test-org/tiny-dinov2")
    assert_same_weights(source, target)


def test_load_prefixed_torch_hub_weights_from_a_dsunet_checkpoint(tmp_path):
    source = tiny_backbone(seed=11)
    state = {f"backbone_dino.dino_encoder.{k}": v for k, v in to_hub_state_dict(source.encoder_state_dict()).items()}
    # The rest of DSU-Net is ignored, its SAM 2 Hiera trunk's patch_embed.proj (torch.hub's name too) included: it
    # was taken for a second DINOv2 encoder ("expected one DINOv2 encoder, found patch embeddings at [...]").
    for key, shape in [("patch_embed.proj.weight", (16, 3, 7, 7)), ("pos_embed", (1, 16, 4, 4)),
                       ("blocks.0.norm1.weight", (16,))]:
        state[f"backbone_sam.sam_encoder.{key}"] = torch.ones(shape)
    state["head.weight"] = torch.ones(1, 1, 1, 1)
    path = tmp_path / "DGSUNet-test.pth"
    torch.save(state, path)
    target = tiny_backbone(seed=12)
    target.load_encoder_state_dict(load_dinov2_state_dict(path)[0], str(path))
    assert_same_weights(source, target)


def test_missing_repo_offline_names_the_repo(offline_hub):
    with pytest.raises(BackboneNotAvailableError, match=r"'test-org/absent'.*HF_HUB_OFFLINE") as error:
        load_dinov2_state_dict("test-org/absent")
    assert "hf download test-org/absent" in str(error.value)
    with pytest.raises(BackboneNotAvailableError, match="nope"):
        load_dinov2_state_dict("/nowhere/nope.pth")


def test_empty_folder_and_unreadable_files(tmp_path):
    with pytest.raises(BackboneNotAvailableError, match="neither model.safetensors"):
        load_dinov2_state_dict(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match=r"model\.safetensors: cannot read"):
        load_dinov2_state_dict(tmp_path)
    save_file({"something.weight": torch.zeros(1)}, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match=r"other\.safetensors: expected one DINOv2 encoder"):
        load_dinov2_state_dict(tmp_path / "other.safetensors")


def test_wrong_size_checkpoint_changes_nothing(tmp_path):
    wider = tiny_backbone(seed=9, hidden_size=48)
    path = tmp_path / "wide.safetensors"
    save_file({k: v.contiguous() for k, v in wider.encoder_state_dict().items()}, path)
    state_dict, _ = load_dinov2_state_dict(path)
    target = tiny_backbone(seed=10)
    before = {k: v.clone() for k, v in target.encoder_state_dict().items()}
    with pytest.raises(ValueError, match=r"shape.*wrong size preset") as error:
        target.load_encoder_state_dict(state_dict, str(path))
    assert str(path) in str(error.value)
    assert all(torch.equal(before[k], v) for k, v in target.encoder_state_dict().items())


def test_deeper_checkpoint_names_unexpected_keys():
    deeper = tiny_backbone(num_hidden_layers=3).encoder_state_dict()
    target = tiny_backbone()
    before = {k: v.clone() for k, v in target.encoder_state_dict().items()}
    with pytest.raises(ValueError, match=r"deep: not a DINOv2 encoder of this size.*unexpected keys \['encoder\.layer\.2\."):
        target.load_encoder_state_dict(deeper, "deep")
    assert all(torch.equal(before[k], v) for k, v in target.encoder_state_dict().items())


def test_the_export_form_of_upstream_position_interpolation_matches_it():
    """``_upstream_grid_for_export`` (two matrix products the exporter keeps symbolic) against ``F.interpolate`` with
    upstream's scale factor (grid + 0.1) / 37; the trained 37 x 37 grid is returned as it is, as upstream does."""
    import torch.nn.functional as F

    from dsunet_hf.backbones.dinov2 import _upstream_grid_for_export

    torch.manual_seed(0)
    grid = torch.randn(8, 37, 37)
    assert torch.equal(_upstream_grid_for_export(grid, 37, 37), grid)
    for rows, columns in [(5, 7), (37, 40), (46, 46), (20, 37), (1, 3), (80, 90)]:
        expected = F.interpolate(grid[None], scale_factor=((rows + 0.1) / 37, (columns + 0.1) / 37), mode="bicubic",
                                 antialias=False)[0]
        got = _upstream_grid_for_export(grid, rows, columns)
        assert got.shape == expected.shape and torch.allclose(got, expected, atol=1e-5)  # measured: <= 3.1e-6


def test_a_folder_of_several_checkpoints_is_an_error(tmp_path):
    """A folder of several torch.hub checkpoints loaded whichever sorted first (vitb14 before vitl14) unnamed."""
    for seed, name in [(1, "dinov2_vitl14_pretrain.pth"), (2, "dinov2_vitb14_pretrain.pth")]:
        torch.save(to_hub_state_dict(tiny_backbone(seed=seed).encoder_state_dict()), tmp_path / name)
    with pytest.raises(ValueError, match=rf"^{tmp_path}: folder holds several DINOv2 checkpoints "
                                         r"\['dinov2_vitb14_pretrain\.pth', 'dinov2_vitl14_pretrain\.pth'\]"):
        load_dinov2_state_dict(tmp_path)
    state_dict, _ = load_dinov2_state_dict(tmp_path / "dinov2_vitl14_pretrain.pth")
    target = tiny_backbone(seed=3)
    target.load_encoder_state_dict(state_dict)
    assert_same_weights(target, tiny_backbone(seed=1))

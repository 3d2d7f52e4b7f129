"""SAM 2 Hiera trunk: parity with the official ``sam2`` package, parameter counts, Hub layouts, errors."""

from __future__ import annotations

import os
import re

import pytest
import torch
from conftest import TINY_HIERA, TINY_SIZE
from helpers import (
    tiny_hiera,
    to_official_name,
    write_meta_checkpoint,
    write_sam2_video_repo,
    write_transformers_trunk_repo,
)
from torch import nn
from transformers import Sam2HieraDetConfig, Sam2HieraDetModel

from dsunet_hf.backbones.hiera import (
    HIERA_PRESETS,
    HieraBackbone,
    _default_checkpoint_name,
    hiera_config,
    hiera_hub_repo,
    load_hiera_state_dict,
)
from dsunet_hf.hub import BackboneNotAvailableError

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (see conftest)

SAM2_MISSING = "the official sam2 package (extra [sam2]) is not installed; see README for the CPU install recipe"

# The official Hiera grows heads by head_mul=2 at every stage, so it cannot express TINY_HIERA's
# heads [1, 1, 2, 2]. This tiny config differs only in the heads, which double as in the official trunk.
PARITY_HIERA = dict(TINY_HIERA, num_attention_heads_per_stage=[1, 2, 4, 8])
PARITY_OFFICIAL = dict(
    embed_dim=16, num_heads=1, stages=[1, 1, 2, 1], global_att_blocks=[3],
    window_spec=[4, 4, 4, 2], window_pos_embed_bkg_spatial_size=[4, 4],
)  # default q_pool=3, q_stride=(2, 2), dim_mul=head_mul=2

# Official ``Hiera(**kwargs)`` per preset (sam2_hiera_{t,s,b+,l}.yaml), written from the SAM 2 configs.
OFFICIAL_PRESETS = {
    "tiny": dict(embed_dim=96, num_heads=1, stages=[1, 2, 7, 2], global_att_blocks=[5, 7, 9],
                 window_pos_embed_bkg_spatial_size=[7, 7]),
    "small": dict(embed_dim=96, num_heads=1, stages=[1, 2, 11, 2], global_att_blocks=[7, 10, 13],
                  window_pos_embed_bkg_spatial_size=[7, 7]),
    "base_plus": dict(embed_dim=112, num_heads=2),  # all other settings are Hiera's defaults
    "large": dict(embed_dim=144, num_heads=2, stages=[2, 6, 36, 4], global_att_blocks=[23, 33, 43],
                  window_spec=[8, 4, 16, 8], window_pos_embed_bkg_spatial_size=[7, 7]),
}
TRUNK_PARAMETERS = {"tiny": 26_849_472, "small": 33_947_328, "base_plus": 68_675_712, "large": 212_149_296}


def official_hiera_class():
    pytest.importorskip("sam2", reason=SAM2_MISSING)
    from sam2.modeling.backbones.hieradet import Hiera

    return Hiera


@torch.no_grad()
def randomise_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter random, position embeddings included (they start at zero); norms near 1."""
    torch.manual_seed(seed)
    for name, parameter in module.named_parameters():
        if re.search(r"norm\d?\.weight$", name):
            parameter.normal_(1.0, 0.1)
        elif name.startswith("pos_embed"):
            parameter.normal_()
        else:
            parameter.normal_(0.0, 0.1)
    return module.eval()


def write_official_checkpoint(path, official: nn.Module):
    """The official trunk's own state dict in Meta's checkpoint layout (official key names, untouched)."""
    state = {f"image_encoder.trunk.{k}": v for k, v in official.state_dict().items()}
    state["sam_mask_decoder.iou_token.weight"] = torch.zeros(1, 8)  # other SAM 2 parts are ignored
    torch.save({"model": state}, path)
    return path


def assert_same_state_dict(actual: dict, expected: dict):
    assert sorted(actual) == sorted(expected)
    for key, value in expected.items():
        assert torch.equal(actual[key], value), key


# --- 1. parity with the official trunk --------------------------------------------------------------

@pytest.mark.parametrize("height, width", [(64, 64), (64, 96)])
def test_matches_official_sam2_trunk(tmp_path, height, width):
    Hiera = official_hiera_class()
    official = randomise_(Hiera(**PARITY_OFFICIAL), seed=11)
    assert [official.blocks[i].dim_out for i in official.stage_ends] == PARITY_HIERA["embed_dim_per_stage"]
    assert [b.attn.num_heads for b in official.blocks] == [1, 2, 4, 4, 8]  # = PARITY_HIERA's heads
    assert official.pos_embed.abs().sum() > 0 and official.pos_embed_window.abs().sum() > 0

    checkpoint = write_official_checkpoint(tmp_path / "sam2_hiera_parity.pt", official)
    state_dict, commit = load_hiera_state_dict(checkpoint)
    assert commit is None
    ours = HieraBackbone(hiera_config("tiny", **PARITY_HIERA)).eval()
    before = {k: v.clone() for k, v in ours.trunk_state_dict().items()}
    ours.load_trunk_state_dict(state_dict, source=str(checkpoint))
    # Every tensor was overwritten by the official one (nothing silently kept from the random init).
    loaded = ours.trunk_state_dict()
    assert len(loaded) == len(official.state_dict())
    assert all(not torch.equal(loaded[k], before[k]) for k in loaded)

    torch.manual_seed(5)
    pixel_values = torch.randn(2, 3, height, width)
    with torch.no_grad():
        expected = official(pixel_values)
        actual = ours(pixel_values)
    assert len(expected) == len(actual) == 4
    for stage, (a, e) in enumerate(zip(actual, expected)):
        stride = 4 * 2**stage
        assert a.shape == e.shape == (2, PARITY_HIERA["embed_dim_per_stage"][stage], height // stride, width // stride)
        assert e.abs().max() > 0.1, "degenerate comparison"
        diff = (a - e).abs().max().item()
        assert diff <= 1e-5, f"stage {stage}: max abs diff {diff}"


def test_matches_official_sam2_trunk_tiny_preset(tmp_path):
    """The real tiny preset (26.8 M parameters, random weights): builds and runs in about a second."""
    Hiera = official_hiera_class()
    official = randomise_(Hiera(**OFFICIAL_PRESETS["tiny"]), seed=12)
    checkpoint = write_official_checkpoint(tmp_path / "sam2_hiera_tiny.pt", official)
    state_dict, _ = load_hiera_state_dict(checkpoint)
    with torch.device("meta"):  # skip the random init: every tensor is loaded below
        ours = HieraBackbone(hiera_config("tiny"))
    ours.to_empty(device="cpu").eval()
    ours.load_trunk_state_dict(state_dict, source=str(checkpoint))
    # to_empty leaves non-persistent buffers uninitialised; the trunk must not have any.
    assert not [n for n, _ in ours.named_buffers() if n not in ours.encoder.state_dict()]
    pixel_values = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = official(pixel_values)
        actual = ours(pixel_values)
    assert [a.shape[1] for a in actual] == ours.channels == [96, 192, 384, 768]
    for stage, (a, e) in enumerate(zip(actual, expected)):
        assert a.shape == e.shape
        diff = (a - e).abs().max().item()
        assert diff <= 1e-5, f"stage {stage}: max abs diff {diff}"


# --- 2. parameter counts ------------------------------------------------------------------------------

def build_official_on_meta(Hiera, monkeypatch, **settings) -> nn.Module:
    # Hiera computes its drop-path schedule with torch.linspace(...).item(), which meta tensors refuse.
    linspace = torch.linspace
    monkeypatch.setattr(torch, "linspace", lambda *a, **k: linspace(*a, **{**k, "device": "cpu"}))
    with torch.device("meta"):
        model = Hiera(**settings)
    monkeypatch.setattr(torch, "linspace", linspace)
    return model


@pytest.mark.parametrize("preset", list(TRUNK_PARAMETERS))
def test_parameter_counts_match_official(preset, monkeypatch):
    with torch.device("meta"):
        ours = HieraBackbone(hiera_config(preset))
    assert sum(p.numel() for p in ours.parameters()) == TRUNK_PARAMETERS[preset]

    Hiera = official_hiera_class()
    official = build_official_on_meta(Hiera, monkeypatch, **OFFICIAL_PRESETS[preset])
    assert sum(p.numel() for p in official.parameters()) == TRUNK_PARAMETERS[preset]
    # Stronger than the count: the renamed official keys are exactly ours, tensor by tensor.
    official_shapes = {to_official_name(k): v.shape for k, v in ours.trunk_state_dict().items()}
    assert official_shapes == {k: v.shape for k, v in official.state_dict().items()}
    assert ours.channels == [official.blocks[i].dim_out for i in official.stage_ends]


def test_presets_are_the_documented_sam2_settings():
    assert set(HIERA_PRESETS) == {"tiny", "small", "base_plus", "large"}
    large = hiera_config("large")
    assert (large.hidden_size, large.blocks_per_stage, large.global_attention_blocks) == (144, [2, 6, 36, 4], [23, 33, 43])
    assert large.window_size_per_stage == [8, 4, 16, 8]
    assert hiera_config("tiny", hidden_size=16).hidden_size == 16  # overrides win
    with pytest.raises(ValueError, match="unknown Hiera preset 'huge'"):
        hiera_config("huge")


# --- 3. loading the Hub layouts -----------------------------------------------------------------------

def test_load_transformers_trunk_repo(offline_hub, tmp_path):
    trunk = tiny_hiera(seed=2)
    sha = offline_hub.add("org/tiny-trunk", write_transformers_trunk_repo(tmp_path / "repo", trunk))
    state_dict, commit = load_hiera_state_dict("org/tiny-trunk")
    assert commit == sha
    assert_same_state_dict(state_dict, trunk.state_dict())


def test_load_sam2_video_repo(offline_hub, tmp_path):
    trunk = tiny_hiera(seed=3)
    sha = offline_hub.add("org/tiny-sam2-video", write_sam2_video_repo(tmp_path / "repo", trunk))
    state_dict, commit = load_hiera_state_dict("org/tiny-sam2-video")
    assert commit == sha
    assert_same_state_dict(state_dict, trunk.state_dict())  # neck / mask decoder tensors dropped


@pytest.mark.parametrize(
    "repo_id, filename",
    [("facebook/sam2-hiera-tiny", "sam2_hiera_tiny.pt"), ("facebook/sam2.1-hiera-base-plus", "sam2.1_hiera_base_plus.pt")],
)
def test_load_meta_checkpoint_repo(offline_hub, tmp_path, repo_id, filename):
    assert _default_checkpoint_name(repo_id) == filename
    trunk = tiny_hiera(seed=4)
    folder = tmp_path / "repo"
    write_meta_checkpoint(folder / filename, trunk)
    (folder / "README.md").write_text("Meta checkpoint only\n")
    sha = offline_hub.add(repo_id, folder)
    state_dict, commit = load_hiera_state_dict(repo_id)
    assert commit == sha
    assert_same_state_dict(state_dict, trunk.state_dict())
    backbone = HieraBackbone(Sam2HieraDetConfig(**TINY_HIERA))
    backbone.load_trunk_state_dict(state_dict, source=repo_id)  # strict: loads without complaint


def test_load_pins_the_requested_revision(offline_hub, tmp_path):
    old, new = tiny_hiera(seed=5), tiny_hiera(seed=6)
    old_sha = offline_hub.add("org/tiny-trunk", write_transformers_trunk_repo(tmp_path / "old", old))
    new_sha = offline_hub.add("org/tiny-trunk", write_transformers_trunk_repo(tmp_path / "new", new))
    assert old_sha != new_sha
    assert load_hiera_state_dict("org/tiny-trunk")[1] == new_sha
    state_dict, commit = load_hiera_state_dict("org/tiny-trunk", revision=old_sha)
    assert commit == old_sha
    assert_same_state_dict(state_dict, old.state_dict())


def test_load_local_folder_and_files(tmp_path, monkeypatch):
    trunk = tiny_hiera(seed=7)
    folder = write_transformers_trunk_repo(tmp_path / "folder", trunk)
    monkeypatch.setenv("HOME", str(tmp_path))  # a path written with ~ was refused as missing
    for source in (folder, folder / "model.safetensors", str(folder), "~/folder/model.safetensors", "~/folder"):
        state_dict, commit = load_hiera_state_dict(source)
        assert commit is None
        assert_same_state_dict(state_dict, trunk.state_dict())
    meta_folder = tmp_path / "meta"
    write_meta_checkpoint(meta_folder / "anything.pt", trunk)
    assert_same_state_dict(load_hiera_state_dict(meta_folder)[0], trunk.state_dict())


# --- 4. errors ------------------------------------------------------------------------------------

def test_missing_repo_names_the_repo_and_both_files(offline_hub):
    with pytest.raises(BackboneNotAvailableError) as error:
        load_hiera_state_dict("facebook/sam2-hiera-small")
    message = str(error.value)
    assert "facebook/sam2-hiera-small" in message
    assert "model.safetensors" in message and "sam2_hiera_small.pt" in message
    assert "HF_HUB_OFFLINE" in message
    assert isinstance(error.value, OSError)


def test_not_a_sam2_checkpoint(tmp_path):
    path = tmp_path / "resnet.pt"
    torch.save({"model": {"conv1.weight": torch.zeros(4, 3, 3, 3)}}, path)
    with pytest.raises(ValueError, match=re.escape(str(path))) as error:
        load_hiera_state_dict(path)
    assert "not a SAM 2 checkpoint" in str(error.value)


def test_not_a_sam2_checkpoint_in_a_hub_repo(offline_hub, tmp_path):
    folder = tmp_path / "repo"
    folder.mkdir()
    torch.save({"model": {"conv1.weight": torch.zeros(4, 3, 3, 3)}}, folder / "sam2_hiera_tiny.pt")
    offline_hub.add("facebook/sam2-hiera-tiny", folder)
    with pytest.raises(ValueError, match=r"sam2_hiera_tiny\.pt.*not a SAM 2 checkpoint"):
        load_hiera_state_dict("facebook/sam2-hiera-tiny")


def test_corrupt_checkpoint_file(tmp_path):
    path = tmp_path / "sam2_hiera_tiny.pt"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(ValueError, match=re.escape(str(path))):
        load_hiera_state_dict(path)


def test_trunk_of_another_size(tmp_path):
    doubled = dict(TINY_HIERA, hidden_size=32, embed_dim_per_stage=[32, 64, 128, 256])
    other = Sam2HieraDetModel(Sam2HieraDetConfig(**doubled))
    folder = write_transformers_trunk_repo(tmp_path / "big-trunk", other)
    state_dict, _ = load_hiera_state_dict(folder)
    backbone = HieraBackbone(Sam2HieraDetConfig(**TINY_HIERA))
    with pytest.raises(ValueError, match=r"shape") as error:
        backbone.load_trunk_state_dict(state_dict, source=str(folder))
    message = str(error.value)
    assert str(folder) in message
    assert re.search(r"\(32, 3, 7, 7\)|\(1, 32, 4, 4\)|\(32,\)|\(64,|\(96,", message), message


def test_trunk_of_another_depth(tmp_path):
    deeper = Sam2HieraDetModel(Sam2HieraDetConfig(**dict(TINY_HIERA, blocks_per_stage=[1, 1, 3, 1])))
    backbone = HieraBackbone(Sam2HieraDetConfig(**TINY_HIERA))
    with pytest.raises(ValueError, match=r"org/deeper: not a Hiera trunk of this size.*unexpected keys \['blocks\.5\."):
        backbone.load_trunk_state_dict(deeper.state_dict(), source="org/deeper")


def test_hub_repo_names():
    assert hiera_hub_repo("large") == "facebook/sam2-hiera-large"
    assert hiera_hub_repo("tiny", "2.1") == "facebook/sam2.1-hiera-tiny"
    assert hiera_hub_repo("base_plus", "2.1") == "facebook/sam2.1-hiera-base-plus"
    assert _default_checkpoint_name(hiera_hub_repo("large")) == "sam2_hiera_large.pt"
    with pytest.raises(ValueError, match="unknown Hiera preset"):
        hiera_hub_repo("huge")
    with pytest.raises(ValueError, match="unknown SAM 2 release"):
        hiera_hub_repo("large", "3.0")


# --- 5. the backbone module -----------------------------------------------------------------------

def test_channels_and_stage_shapes():
    backbone = HieraBackbone(Sam2HieraDetConfig(**TINY_HIERA)).eval()
    assert backbone.channels == [16, 32, 64, 128]
    with torch.no_grad():
        maps = backbone(torch.randn(2, 3, TINY_SIZE, TINY_SIZE))
    assert [tuple(m.shape) for m in maps] == [
        (2, c, TINY_SIZE // s, TINY_SIZE // s) for c, s in zip([16, 32, 64, 128], [4, 8, 16, 32])
    ]
    # Permuted without a copy: dense in NCHW or channels_last memory (transformers' stage outputs come in both),
    # which the decoders' convolutions take as is.
    assert all(m.is_contiguous() or m.is_contiguous(memory_format=torch.channels_last) for m in maps)
    # The NCHW maps are the transformers channels-last stage outputs, permuted (not reshaped).
    with torch.no_grad():
        native = backbone.encoder(torch.randn(1, 3, TINY_SIZE, TINY_SIZE))
    assert [tuple(s.shape) for s in native.intermediate_hidden_states][0] == (1, 16, 16, 16)


def test_channels_last_outputs_are_permuted():
    backbone = HieraBackbone(Sam2HieraDetConfig(**TINY_HIERA)).eval()
    pixel_values = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        maps = backbone(pixel_values)
        native = backbone.encoder(pixel_values).intermediate_hidden_states
    for nchw, nhwc in zip(maps, native):
        assert torch.equal(nchw, nhwc.permute(0, 3, 1, 2))
    assert [tuple(m.shape[2:]) for m in maps] == [(16, 24), (8, 12), (4, 6), (2, 3)]


class ZeroOutputAdapter(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.down = nn.Linear(dim, 4)
        self.up = nn.Linear(4, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x):
        return self.up(torch.nn.functional.gelu(self.down(x)))


def test_zero_adapters_leave_outputs_unchanged():
    torch.manual_seed(8)
    plain = HieraBackbone(Sam2HieraDetConfig(**TINY_HIERA)).eval()
    with torch.no_grad():
        plain.encoder.pos_embed.normal_()
    pixel_values = torch.randn(2, 3, TINY_SIZE, TINY_SIZE)
    with torch.no_grad():
        expected = plain(pixel_values)

    dims = []
    plain.insert_adapters(lambda dim: dims.append(dim) or ZeroOutputAdapter(dim))
    assert dims == plain.block_input_dims == [16, 16, 32, 64, 64]  # a stage's first block sees the old width
    with torch.no_grad():
        adapted = plain(pixel_values)
    for a, e in zip(adapted, expected):
        torch.testing.assert_close(a, e, rtol=0, atol=0)

    # ... and the adapters really are on the path: a non-zero up-projection changes every stage.
    with torch.no_grad():
        plain.encoder.blocks[0].adapter.up.bias.fill_(0.5)
        changed = plain(pixel_values)
    assert all(not torch.allclose(c, e) for c, e in zip(changed, expected))

    with pytest.raises(RuntimeError, match="already inserted"):
        plain.insert_adapters(ZeroOutputAdapter)


def test_trunk_state_dict_of_an_adapted_backbone():
    plain = HieraBackbone(Sam2HieraDetConfig(**TINY_HIERA))
    adapted = HieraBackbone(Sam2HieraDetConfig(**TINY_HIERA))
    adapted.insert_adapters(ZeroOutputAdapter)
    assert any(".adapter." in k for k in adapted.encoder.state_dict())
    assert sorted(adapted.trunk_state_dict()) == sorted(plain.trunk_state_dict())
    assert sorted(plain.trunk_state_dict()) == sorted(Sam2HieraDetModel(Sam2HieraDetConfig(**TINY_HIERA)).state_dict())

    # Round trip: plain weights load into the adapted trunk, and come back out unchanged.
    source = tiny_hiera(seed=9)
    adapted.load_trunk_state_dict(source.state_dict())
    assert_same_state_dict(adapted.trunk_state_dict(), source.state_dict())
    # The adapters themselves were not touched by the trunk load.
    assert all(torch.count_nonzero(b.adapter.up.weight) == 0 for b in adapted.encoder.blocks)


def test_failed_load_leaves_the_backbone_unchanged(tmp_path):
    wider = Sam2HieraDetModel(Sam2HieraDetConfig(**{**TINY_HIERA, "embed_dim_per_stage": [16, 32, 64, 256]}))
    backbone = HieraBackbone(hiera_config("tiny", **TINY_HIERA))
    before = {k: v.clone() for k, v in backbone.trunk_state_dict().items()}
    with pytest.raises(ValueError, match="shape"):
        backbone.load_trunk_state_dict(wider.state_dict())
    assert all(torch.equal(before[k], v) for k, v in backbone.trunk_state_dict().items())


def test_corrupt_safetensors_and_mistyped_paths_name_the_file(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match=r"model\.safetensors: cannot read"):
        load_hiera_state_dict(tmp_path / "model.safetensors")
    with pytest.raises(BackboneNotAvailableError, match="nope"):
        load_hiera_state_dict(str(tmp_path / "nope" / "sam2_hiera_large.pt"))
    with pytest.raises(BackboneNotAvailableError, match="nope"):
        load_hiera_state_dict("./nope")


def test_a_damaged_trunk_in_the_hub_cache_names_the_file_to_delete(offline_hub, tmp_path):
    """Deleting the snapshot's file (a link) does not help: a new download links the damaged blob again."""
    offline_hub.add("org/damaged-trunk", write_transformers_trunk_repo(tmp_path / "repo", tiny_hiera()))
    weights, blob = offline_hub.damage("org/damaged-trunk", "model.safetensors", keep_bytes=100)
    with pytest.raises(ValueError, match=rf"^{weights}: cannot read as safetensors: .*; delete {blob} \(the Hub "
                                         rf"cache's copy\) and load again, or load with force_download=True"):
        load_hiera_state_dict("org/damaged-trunk")


@pytest.mark.parametrize("height, width", [(72, 72), (64, 100), (80, 112), (48, 48), (0, 64)])
def test_input_sizes_not_multiples_of_32_are_refused(height, width):
    """transformers (as the official trunk) tiles the 4 x 4 window position embedding over the patch grid: 72 x 72
    failed with "The size of tensor a (18) must match the size of tensor b (16)"; an odd stride-16 grid (80 x 112)
    made the stage-4 query-pooling block put its windows back wrongly: stage maps of batch 2 for an image of batch 1."""
    backbone = HieraBackbone(Sam2HieraDetConfig(**TINY_HIERA)).eval()
    message = rf"^HieraBackbone: input height and width must be multiples of 32, got {height}x{width}$"
    with torch.no_grad(), pytest.raises(ValueError, match=message):
        backbone(torch.randn(1, 3, height, width))
    with torch.no_grad():
        assert [m.shape[0] for m in backbone(torch.randn(1, 3, 96, 32))] == [1, 1, 1, 1]
    assert backbone.input_size_multiple == 32


def test_a_folder_of_several_checkpoints_is_an_error(tmp_path):
    """SAM 2's download script leaves every size (and both releases) side by side: the folder loaded whichever
    sorted first (sam2.1_hiera_large.pt before sam2_hiera_large.pt) without a word."""
    write_meta_checkpoint(tmp_path / "sam2_hiera_large.pt", tiny_hiera(seed=1))
    write_meta_checkpoint(tmp_path / "sam2.1_hiera_large.pt", tiny_hiera(seed=2))
    with pytest.raises(ValueError, match=rf"^{tmp_path}: folder holds several SAM 2 checkpoints "
                                         r"\['sam2\.1_hiera_large\.pt', 'sam2_hiera_large\.pt'\]; name the file"):
        load_hiera_state_dict(tmp_path)
    state_dict, _ = load_hiera_state_dict(tmp_path / "sam2_hiera_large.pt")
    assert_same_state_dict(state_dict, tiny_hiera(seed=1).state_dict())


LFS_POINTER = b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"0" * 64 + b"\nsize 898083611\n"


@pytest.mark.parametrize("name, content, message", [
    ("sam2_hiera_large.pt", LFS_POINTER, r"a Git LFS pointer \(\d+ bytes\), not the weights: .*git lfs pull"),
    ("model.safetensors", LFS_POINTER, r"a Git LFS pointer \(\d+ bytes\), not the weights: .*git lfs pull"),
    ("sam2_hiera_large.pt", b"<!DOCTYPE html><html>404</html>", r"not a PyTorch checkpoint \(neither a zip archive "
                                                                  r"nor a pickle; it starts with b'<!DOCTYPE html><'\)$"),
], ids=["lfs-pointer-pt", "lfs-pointer-safetensors", "html-page-pt"])
def test_files_that_hold_no_weights_are_named_for_what_they_are(tmp_path, name, content, message):
    """A clone without git-lfs leaves pointers: torch.load advised weights_only=False ("Unsupported operand 118"),
    safetensors said "header too large"; an HTML page saved as .pt got the same weights_only advice."""
    from dsunet_hf.backbones.dinov2 import load_dinov2_state_dict

    (tmp_path / name).write_bytes(content)
    for load in (load_hiera_state_dict, load_dinov2_state_dict):
        with pytest.raises(ValueError, match=rf"^{tmp_path / name}: {message}") as error:
            load(tmp_path / name)
        assert "weights_only" not in str(error.value) and "\n" not in str(error.value)


def test_a_checkpoint_cut_short_and_a_birefnet_lfs_pointer_are_named(tmp_path):
    """A .pt cut at half its size (a partial download): was "cannot read as a PyTorch checkpoint: [Errno 22] Invalid
    argument"; a BiRefNet .safetensors pointer: was safetensors' "header too large"."""
    from dsunet_hf.convert.birefnet import read_checkpoint

    whole = tmp_path / "whole.pt"
    torch.save({"weight": torch.randn(64, 64)}, whole)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(ValueError, match=rf"^{cut}: truncated or corrupt checkpoint .*download or copy it again"):
        load_hiera_state_dict(cut)
    (tmp_path / "BiRefNet.safetensors").write_bytes(LFS_POINTER)
    with pytest.raises(ValueError, match=r"a Git LFS pointer \(\d+ bytes\), not the weights"):
        read_checkpoint(tmp_path / "BiRefNet.safetensors")

"""Original SAM2-UNet checkpoints -> dsunet-hf artifacts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from conftest import TINY_SIZE, tiny_sam2_unet_config

from dsunet_hf import Sam2UNetForImageSegmentation
from dsunet_hf.backbones.hiera import infer_hiera_preset
from dsunet_hf.cli import main as cli_main
from dsunet_hf.convert.sam2_unet import convert_sam2_unet_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (see conftest)


def to_upstream_key(key: str) -> str:
    """Our key -> the upstream SAM2UNet key, written from the reference's key list (inverse map)."""
    key = key.replace("backbone.encoder.", "encoder.", 1)
    key = re.sub(r"\.adapter\.down\.", ".prompt_learn.0.", key)
    key = re.sub(r"\.adapter\.up\.", ".prompt_learn.2.", key)
    for new, old in [("patch_embed.projection.", "patch_embed.proj."), ("layer_norm1.", "norm1."),
                     ("layer_norm2.", "norm2."), ("mlp.proj_in.", "mlp.layers.0."), ("mlp.proj_out.", "mlp.layers.1.")]:
        key = key.replace(new, old)
    return key


@pytest.fixture
def upstream_checkpoint(tmp_path):
    """A tiny model saved the way upstream saves: the bare full state dict, upstream names, with the
    unused ``up4`` module's tensors."""
    model = Sam2UNetForImageSegmentation(tiny_sam2_unet_config()).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        for name, buffer in model.named_buffers():
            if name.endswith("running_var"):
                buffer.uniform_(0.5, 1.5)
    state = {to_upstream_key(k): v for k, v in model.state_dict().items()}
    state.update({k.replace("up1.", "up4.", 1): v.clone() for k, v in model.state_dict().items() if k.startswith("up1.")})
    path = tmp_path / "SAM2UNet-COD.pth"
    torch.save(state, path)
    return model, path


def test_converted_checkpoint_reproduces_the_model(upstream_checkpoint, tmp_path, offline_hub):
    model, path = upstream_checkpoint
    converted = convert_sam2_unet_checkpoint(path, tmp_path / "out", include_backbone=True,
                                             config=tiny_sam2_unet_config())
    x = torch.randn(2, 3, TINY_SIZE, TINY_SIZE)
    with torch.no_grad():
        assert torch.equal(model(x).logits, converted(x).logits)
        reloaded = Sam2UNetForImageSegmentation.from_pretrained(tmp_path / "out")
        assert torch.equal(model(x).logits, reloaded(x).logits)
    assert (tmp_path / "out" / "preprocessor_config.json").is_file()


def test_trainable_only_conversion_leaves_the_trunk_out(upstream_checkpoint, tmp_path):
    _, path = upstream_checkpoint
    converted = convert_sam2_unet_checkpoint(path, tmp_path / "out", config=tiny_sam2_unet_config())
    from safetensors import safe_open

    with safe_open(str(tmp_path / "out" / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert keys == set(converted.trainable_state_dict())
    assert not any(k.startswith("up4") for k in keys)


def test_other_checkpoints_are_refused_with_names(tmp_path):
    torch.save({"model": {"image_encoder.trunk.pos_embed": torch.zeros(1)}}, tmp_path / "sam2.pt")
    with pytest.raises(ValueError, match=r"sam2\.pt: not a SAM2-UNet checkpoint"):
        convert_sam2_unet_checkpoint(tmp_path / "sam2.pt", tmp_path / "out")
    (tmp_path / "broken.pth").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match=r"broken\.pth: not a PyTorch checkpoint \(neither a zip archive nor a pickle"):
        convert_sam2_unet_checkpoint(tmp_path / "broken.pth", tmp_path / "out")


def test_unknown_keys_are_named(upstream_checkpoint, tmp_path):
    _, path = upstream_checkpoint
    state = torch.load(path, weights_only=True)
    state["decoder_extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match="decoder_extra.weight"):
        convert_sam2_unet_checkpoint(tmp_path / "extra.pth", tmp_path / "out", config=tiny_sam2_unet_config())


def test_a_two_class_cross_entropy_head_converts_to_the_foreground_logit():
    """The authors' advice (widen the head, train with cross-entropy) at two classes gave num_labels=2, i.e. our
    single-map model, which then refused the 2-channel heads: the checkpoint could not be converted at all."""
    from dsunet_hf.convert.sam2_unet import convert_sam2_unet_state_dict

    model = Sam2UNetForImageSegmentation(tiny_sam2_unet_config())
    state = {to_upstream_key(k): v for k, v in model.state_dict().items()}
    torch.manual_seed(3)
    for name in ("side1", "side2", "head"):  # background logit b, foreground b + the binary model's logit
        for kind in ("weight", "bias"):
            tensor = state[f"{name}.{kind}"]
            background = torch.randn_like(tensor)
            state[f"{name}.{kind}"] = torch.cat([background, background + tensor])
    converted, _ = convert_sam2_unet_state_dict(state, "SAM2UNet-ce.pth", infer=False)
    for name, tensor in model.state_dict().items():  # sigmoid(l1 - l0) is the softmax's foreground probability
        torch.testing.assert_close(converted[name], tensor, rtol=0, atol=1e-5)
    model.load_state_dict(converted, strict=True)


def test_preset_inference():
    def trunk(width, blocks):
        return {"patch_embed.projection.weight": torch.empty(width, 3, 7, 7),
                **{f"blocks.{i}.proj.weight": torch.empty(1) for i in range(blocks)}}

    assert infer_hiera_preset(trunk(144, 48)) == "large"
    assert infer_hiera_preset(trunk(112, 24)) == "base_plus"
    assert infer_hiera_preset(trunk(96, 12)) == "tiny" and infer_hiera_preset(trunk(96, 16)) == "small"
    with pytest.raises(ValueError, match="matches no preset"):
        infer_hiera_preset(trunk(64, 5))


def test_cli_converts_meta_hiera_checkpoint(tmp_path):
    """`dsunet-hf convert sam2-hiera` turns Meta's .pt into a backbone folder usable offline."""
    from helpers import write_meta_checkpoint
    from transformers import Sam2HieraDetModel

    from dsunet_hf import hiera_config

    torch.manual_seed(0)
    trunk = Sam2HieraDetModel(hiera_config("tiny")).eval()
    write_meta_checkpoint(tmp_path / "sam2_hiera_tiny.pt", trunk)
    assert cli_main(["convert", "sam2-hiera", str(tmp_path / "sam2_hiera_tiny.pt"), str(tmp_path / "hiera")]) == 0
    reloaded = Sam2HieraDetModel.from_pretrained(tmp_path / "hiera")
    assert all(torch.equal(v, reloaded.state_dict()[k]) for k, v in trunk.state_dict().items())


@pytest.mark.parametrize("overrides, kind", [("[1]", "list"), ("3", "int"), ('"use_bn"', "str")])
def test_cli_birefnet_config_overrides_must_be_a_json_object(tmp_path, overrides, kind):
    with pytest.raises(SystemExit, match=rf"^convert birefnet: --config-overrides must be a JSON object of config "
                                         rf"fields .*, got a JSON {kind}: "):
        cli_main(["convert", "birefnet", str(tmp_path / "weights.safetensors"), str(tmp_path / "out"),
                  "--config-overrides", overrides])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content", ["[1, 2]", '"BiRefNet"', "null"])
def test_a_config_that_is_json_but_no_object_is_named(tmp_path, content):
    """is_official_birefnet_source read ``config.get`` of any JSON: an AttributeError traceback in predict, export,
    app and evaluate."""
    from dsunet_hf.convert.birefnet import is_official_birefnet_source

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(content)
    (tmp_path / "model" / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match=rf"^{tmp_path}/model/config.json: not a model config \(a JSON object"):
        is_official_birefnet_source(tmp_path / "model")
    (tmp_path / "in.png").write_bytes(b"")
    with pytest.raises(SystemExit, match=rf"^predict: cannot load {tmp_path}/model: {tmp_path}/model/config.json: "
                                         rf"not a model config"):
        cli_main(["predict", "--model", str(tmp_path / "model"), str(tmp_path / "in.png"), "--output-dir",
                  str(tmp_path / "out")])


# --- how files are read and written ------------------------------------------------------------------------

@pytest.mark.parametrize("wrap", ["module_prefix", "resume_dict"])
def test_dataparallel_and_resume_checkpoints_convert(upstream_checkpoint, tmp_path, wrap):
    """`module.` (nn.DataParallel) names, and the maintainer's resume snippet {'model', 'optim', 'epoch', 'lr'}."""
    model, path = upstream_checkpoint
    state = torch.load(path, weights_only=True)
    if wrap == "module_prefix":
        state = {f"module.{k}": v for k, v in state.items()}
    else:
        state = {"model": state, "optim": {"state": {}, "param_groups": []}, "epoch": 20, "lr": 1e-7}
    torch.save(state, tmp_path / "wrapped.pth")
    converted = convert_sam2_unet_checkpoint(tmp_path / "wrapped.pth", tmp_path / "out", include_backbone=True,
                                             config=tiny_sam2_unet_config())
    x = torch.randn(1, 3, TINY_SIZE, TINY_SIZE)
    with torch.no_grad():
        assert torch.equal(model(x).logits, converted(x).logits)


def test_a_killed_conversions_staging_folder_is_removed_by_the_next_one(tmp_path):
    import os
    import time

    from dsunet_hf.convert import write_folder_atomically

    stale, fresh = tmp_path / ".out.abcd1234.tmp", tmp_path / ".out.efgh5678.tmp"  # killed: left behind
    for folder in (stale, fresh):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"\0" * 10)
    hour_ago = time.time() - 3700
    os.utime(stale, (hour_ago, hour_ago))
    write_folder_atomically(tmp_path / "out", lambda folder: (folder / "config.json").write_text("{}"))
    # An hour-old staging folder of the same output is removed; a recent one may be another conversion's, kept.
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.efgh5678.tmp", "out"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["config.json"]


def test_a_folder_of_other_files_is_not_written_over(tmp_path):
    """Converting into a project folder replaced its README.md with the model card (and another model's config and
    weights with the converted ones); an earlier conversion to the same kind of model is still replaced."""
    import json

    from dsunet_hf.convert import write_folder_atomically

    def write(model_type):
        def write_files(folder):
            (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
            (folder / "README.md").write_text(f"card of a {model_type}")
        return write_files

    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "README.md").write_text("my notes")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(tmp_path / 'project'))}: already holds README\.md, not those of a saved sam2_unet "
                                         r"model, which the converted model's files would replace: give a new or empty"):
        write_folder_atomically(tmp_path / "project", write("sam2_unet"))
    assert [p.name for p in (tmp_path / "project").iterdir()] == ["README.md"]
    assert (tmp_path / "project" / "README.md").read_text() == "my notes" and len(list(tmp_path.iterdir())) == 1
    write_folder_atomically(tmp_path / "out", write("sam2_unet"))
    write_folder_atomically(tmp_path / "out", write("sam2_unet"))  # converted again: replaced
    with pytest.raises(ValueError, match=r"already holds README\.md, config\.json, not those of a saved dsunet model"):
        write_folder_atomically(tmp_path / "out", write("dsunet"))
    assert (tmp_path / "out" / "README.md").read_text() == "card of a sam2_unet"

def test_a_failed_write_leaves_the_previous_artifact(upstream_checkpoint, tmp_path, monkeypatch):
    """A full disk while writing model.safetensors left a 1 kB file over the good artifact (from_pretrained then
    failed in safetensors), and a half-written folder where there was none; the error named no folder."""
    import errno

    import transformers.modeling_utils

    model, path = upstream_checkpoint
    convert_sam2_unet_checkpoint(path, tmp_path / "out", include_backbone=True, config=tiny_sam2_unet_config())

    def full_disk(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", full_disk)
    for output in ("out", "fresh"):
        with pytest.raises(OSError, match=rf"^{tmp_path / output}: the converted model could not be written "
                                          r"\(\[Errno 28\] No space left"):
            convert_sam2_unet_checkpoint(path, tmp_path / output, include_backbone=True, config=tiny_sam2_unet_config())
    monkeypatch.undo()
    assert not (tmp_path / "fresh").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["SAM2UNet-COD.pth", "out"]  # no temporary folder left
    reloaded = Sam2UNetForImageSegmentation.from_pretrained(tmp_path / "out")
    x = torch.randn(1, 3, TINY_SIZE, TINY_SIZE)
    with torch.no_grad():
        assert torch.equal(model(x).logits, reloaded(x).logits)


@pytest.mark.parametrize("case, message", [
    ("truncated", r"truncated or corrupt checkpoint \([\d,]+ bytes; PytorchStreamReader failed reading zip archive"),
    ("empty", r"truncated or corrupt checkpoint \(0 bytes; EOFError\); download or copy it again"),
    ("pickled_object", r"holds pickled argparse\.Namespace objects besides tensors, which are not loaded"),
    ("folder", r"a folder, not a checkpoint file"),
])
def test_unreadable_checkpoints_are_one_line_errors_naming_the_file(upstream_checkpoint, tmp_path, case, message):
    """torch.load's own messages: 6 lines with terminal colour codes (a pickled argparse.Namespace), an empty reason
    (an empty file), a FileNotFoundError for a folder."""
    import argparse

    _, path = upstream_checkpoint
    bad = tmp_path / "bad.pth"
    if case == "truncated":
        bad.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif case == "empty":
        bad.write_bytes(b"")
    elif case == "pickled_object":
        torch.save({"model": torch.load(path, weights_only=True), "args": argparse.Namespace(lr=1e-3)}, bad)
    else:
        bad.mkdir()
    with pytest.raises(ValueError, match=rf"^{bad}: {message}") as error:
        convert_sam2_unet_checkpoint(bad, tmp_path / "out")
    assert "\n" not in str(error.value) and "\x1b" not in str(error.value)
    assert not (tmp_path / "out").exists()


def test_a_trunk_without_patch_embedding_is_named(upstream_checkpoint, tmp_path):
    """The Hiera size is read from the patch embedding: without it, a KeyError traceback (sam2-unet, dsunet,
    sam2-hiera) that named no file."""
    from helpers import tiny_hiera, write_meta_checkpoint

    _, path = upstream_checkpoint
    state = torch.load(path, weights_only=True)
    del state["encoder.patch_embed.proj.weight"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match=r"partial\.pth: the SAM 2 Hiera trunk has no patch embedding"):
        convert_sam2_unet_checkpoint(tmp_path / "partial.pth", tmp_path / "out")
    meta = torch.load(write_meta_checkpoint(tmp_path / "sam2_hiera_tiny.pt", tiny_hiera()), weights_only=True)
    del meta["model"]["image_encoder.trunk.patch_embed.proj.weight"]
    torch.save(meta, tmp_path / "sam2_hiera_tiny.pt")
    with pytest.raises(SystemExit, match=r"^convert sam2-hiera: \S+sam2_hiera_tiny\.pt: the SAM 2 Hiera trunk has no "):
        cli_main(["convert", "sam2-hiera", str(tmp_path / "sam2_hiera_tiny.pt"), str(tmp_path / "hiera")])


@pytest.fixture(scope="module")
def meta_tiny_checkpoint(tmp_path_factory):
    """Meta's layout of a real-size Hiera-tiny (the size is read from the tensors), with other SAM 2 parts."""
    from helpers import write_meta_checkpoint
    from transformers import Sam2HieraDetModel

    from dsunet_hf import hiera_config

    torch.manual_seed(0)
    trunk = Sam2HieraDetModel(hiera_config("tiny")).eval()
    path = write_meta_checkpoint(tmp_path_factory.mktemp("meta") / "sam2.1_hiera_tiny.pt", trunk)
    return trunk, path


def test_sam2_hiera_conversion_is_strict_and_names_the_file(meta_tiny_checkpoint, tmp_path):
    """The sam2-hiera CLI loaded with load_state_dict: a two-line 'Error(s) in loading state_dict for
    Sam2HieraDetModel' naming no file. The SAM 2 parts besides the trunk are left out on purpose."""
    from transformers import Sam2HieraDetModel

    from dsunet_hf.convert.sam2 import convert_sam2_hiera_checkpoint

    trunk, path = meta_tiny_checkpoint
    converted, preset = convert_sam2_hiera_checkpoint(path, tmp_path / "hiera")
    reloaded = Sam2HieraDetModel.from_pretrained(tmp_path / "hiera")
    assert preset == "tiny" and reloaded.state_dict().keys() == trunk.state_dict().keys()
    assert all(torch.equal(v, reloaded.state_dict()[k]) for k, v in trunk.state_dict().items())
    meta = torch.load(path, weights_only=True)
    for change, message in [("drop", r"not a SAM 2 Hiera-tiny trunk; missing keys \['blocks\.3\.attn\.qkv\.weight'\]"),
                            ("resize", r"blocks\.3\.attn\.qkv\.weight has shape \(3, 3\), Hiera-tiny expects")]:
        state = dict(meta["model"])
        if change == "drop":
            del state["image_encoder.trunk.blocks.3.attn.qkv.weight"]
        else:
            state["image_encoder.trunk.blocks.3.attn.qkv.weight"] = torch.zeros(3, 3)
        torch.save({"model": state}, tmp_path / "bad.pt")
        with pytest.raises(ValueError, match=rf"^{tmp_path / 'bad.pt'}: {message}"):
            convert_sam2_hiera_checkpoint(tmp_path / "bad.pt", tmp_path / "bad-out")
        assert not (tmp_path / "bad-out").exists()


def test_dsunet_dinov2_key_errors_name_the_file():
    """convert_dinov2_hub_state_dict's errors named the key without its prefix and no file."""
    from dsunet_hf.convert.dsunet import convert_dsunet_state_dict

    state = {"backbone_sam.sam_encoder.blocks.0.prompt_learn.0.weight": torch.zeros(4, 4),
             "fusion4.conv.weight": torch.zeros(1),
             "backbone_dino.dino_encoder.blocks.0.attn.qkv.weight": torch.zeros(10, 4)}
    with pytest.raises(ValueError, match=r"^DGSUNet-5\.pth: backbone_dino\.dino_encoder\.blocks\.0\.attn\.qkv\.weight: "
                                         r"first dimension 10 does not split into 3"):
        convert_dsunet_state_dict(state, "DGSUNet-5.pth")


def test_a_checkpoint_given_to_the_other_converter_names_the_right_one():
    """A DSU-Net file given to the SAM2-UNet converter (or the reverse) was "not a SAM2-UNet checkpoint" with a key
    list, not the converter that reads it."""
    from dsunet_hf.convert.dsunet import convert_dsunet_state_dict
    from dsunet_hf.convert.sam2_unet import convert_sam2_unet_state_dict

    dsunet = {"backbone_sam.sam_encoder.blocks.0.prompt_learn.0.weight": torch.zeros(1),
              "fusion4.conv.weight": torch.zeros(1), "head.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match=r"^DGSUNet-5\.pth: a DSU-Net \(DGSUNet\) checkpoint, not a SAM2-UNet one: "
                                         r"convert it with `dsunet-hf convert dsunet`$"):
        convert_sam2_unet_state_dict(dsunet, "DGSUNet-5.pth")
    sam2_unet = {"encoder.blocks.0.prompt_learn.0.weight": torch.zeros(1), "head.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match=r"^SAM2UNet\.pth: a SAM2-UNet checkpoint, not a DSU-Net one: convert it with "
                                         r"`dsunet-hf convert sam2-unet`$"):
        convert_dsunet_state_dict(sam2_unet, "SAM2UNet.pth")


def test_birefnet_folder_of_several_checkpoints_is_refused(tmp_path):
    """A training run's folder (epoch_*.pth) converted whichever file sorted first (epoch_100 before epoch_95)."""
    from dsunet_hf.convert.birefnet import locate_birefnet_weights

    for epoch in (95, 100):
        torch.save({"bb.patch_embed.proj.weight": torch.zeros(1)}, tmp_path / f"epoch_{epoch}.pth")
    with pytest.raises(ValueError, match=rf"^{tmp_path}: holds 2 \.pth checkpoints \(epoch_100\.pth, epoch_95\.pth\); "
                                         r"give the file to use"):
        locate_birefnet_weights(tmp_path)
    with pytest.raises(SystemExit, match=r"^convert birefnet: .*holds 2 \.pth checkpoints"):
        cli_main(["convert", "birefnet", str(tmp_path), str(tmp_path / "out")])
    assert locate_birefnet_weights(tmp_path / "epoch_95.pth")[0] == tmp_path / "epoch_95.pth"


@pytest.mark.parametrize("given", ["folder", "file"])
def test_birefnet_is_not_converted_over_its_own_folder(tmp_path, given):
    """`convert birefnet FOLDER FOLDER` replaced the official model.safetensors, config.json and model card with the
    artifact's (upstream's code could no longer load the folder), and said it had converted."""
    folder = tmp_path / "BiRefNet"
    folder.mkdir()
    for name in ("model.safetensors", "config.json", "README.md"):
        (folder / name).write_text(f"official {name}")
    source = folder if given == "folder" else folder / "model.safetensors"
    with pytest.raises(SystemExit, match=rf"^convert birefnet: {re.escape(str(folder))}/?: the folder of the weights "
                                         r"being converted .*: give another output folder$"):
        cli_main(["convert", "birefnet", str(source), str(folder) + "/"])
    assert sorted(p.read_text() for p in folder.iterdir()) == [f"official {name}" for name in
                                                               ("README.md", "config.json", "model.safetensors")]

def test_a_birefnet_safetensors_cut_short_says_what_to_do(tmp_path):
    """Was "cannot read as safetensors: Error while deserializing header: incomplete metadata, file not fully
    covered": no size, no advice; a damaged file in the Hub cache is read again on every try until deleted."""
    from safetensors.torch import save_file

    from dsunet_hf.convert.birefnet import read_checkpoint

    snapshot = tmp_path / "models--ZhengPeng7--BiRefNet" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    save_file({"bb.patch_embed.proj.weight": torch.zeros(64, 64)}, str(tmp_path / "whole.safetensors"))
    whole = (tmp_path / "whole.safetensors").read_bytes()
    for path, advice in [(tmp_path / "cut.safetensors", "download or copy it again"),
                         (snapshot / "model.safetensors", rf"delete {re.escape(str(snapshot))}/model\.safetensors")]:
        path.write_bytes(whole[: len(whole) // 2])
        with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: cannot read as safetensors \({len(whole) // 2:,} "
                                             rf"bytes; .*\): cut short or of another format; {advice}"):
            read_checkpoint(path)

def test_birefnet_converter_names_other_checkpoints(tmp_path):
    """A SAM 2 .pt given to `convert birefnet`: 'not a state dict of tensors' (its tensors sit under 'model')."""
    from helpers import tiny_hiera, write_meta_checkpoint

    write_meta_checkpoint(tmp_path / "sam2_hiera_tiny.pt", tiny_hiera())
    with pytest.raises(SystemExit, match=r"^convert birefnet: \S+sam2_hiera_tiny\.pt: not a BiRefNet checkpoint "
                                         r"\(no 'bb\.\*' backbone tensors; first keys: \['image_encoder\.trunk\."):
        cli_main(["convert", "birefnet", str(tmp_path / "sam2_hiera_tiny.pt"), str(tmp_path / "out")])


def test_birefnet_release_file_names_give_their_variant_and_an_unknown_one_is_said(tmp_path, caplog):
    """GitHub release files (BiRefNet-general-epoch_244.pth) got the default variant silently, whatever variant
    their name started with: an _HR file ran at 1024² instead of 2048²."""
    from dsunet_hf.convert.birefnet import birefnet_config_for_weights, variant_for_source

    (tmp_path / "BiRefNet-general-epoch_244.pth").write_bytes(b"")
    assert variant_for_source(tmp_path / "BiRefNet-general-epoch_244.pth") == "BiRefNet"  # the released name
    # The rule: a variant's name, with -general and a final -epoch_N dropped, in any letter case.
    for name, variant in [("BiRefNet_HR-general-epoch_12.pth", "BiRefNet_HR"), ("birefnet_lite-epoch_3", "BiRefNet_lite"),
                          ("BiRefNet-matting-epoch_100.safetensors", "BiRefNet-matting"),
                          ("ZhengPeng7/BiRefNet_lite-2K", "BiRefNet_lite-2K"), ("BiRefNet-DIS-epoch_590.pth", "BiRefNet-DIS5K"),
                          ("BiRefNet-generalist", None), ("epoch_95.pth", None)]:
        assert variant_for_source(name) == variant, name
    state = {"bb.patch_embed.proj.weight": torch.zeros(192, 3, 4, 4),
             **{f"bb.layers.2.blocks.{i}.norm1.weight": torch.zeros(1) for i in range(18)}}
    config = birefnet_config_for_weights(tmp_path / "BiRefNet_HR-general-epoch_12.pth", state)
    assert config.image_size == [2048, 2048] and "no BiRefNet variant recognised" not in caplog.text
    config = birefnet_config_for_weights(tmp_path / "epoch_95.pth", state)
    assert (config.task, config.image_size, config.backbone) == ("General", [1024, 1024], "swin_v1_l")
    assert (f"{tmp_path / 'epoch_95.pth'}: no BiRefNet variant recognised in the name; assumed task General, image "
            f"size 1024x1024 (the general BiRefNet's; backbone and BatchNorm read from the weights): --variant (Python: "
            f"variant=) sets the variant, one of BiRefNet, BiRefNet_lite, ") in caplog.text
    caplog.clear()
    assert birefnet_config_for_weights(tmp_path / "epoch_95.pth", state, variant="BiRefNet_HR").image_size == [2048, 2048]
    assert "no BiRefNet variant recognised" not in caplog.text


def test_a_converted_checkpoint_refuses_another_trunk(tmp_path, offline_hub):
    """The trunk inside an authors' checkpoint is the one its adapters were trained on: a trainable-only conversion
    records it, and loading on another trunk (SAM 2.1's for one trained on SAM 2.0's) is refused."""
    from helpers import tiny_hiera, write_transformers_trunk_repo

    from dsunet_hf import CheckpointMismatchError

    model = Sam2UNetForImageSegmentation(tiny_sam2_unet_config()).eval()
    model.backbone.load_trunk_state_dict(tiny_hiera(1).state_dict())  # trained on trunk 1
    torch.save({to_upstream_key(k): v for k, v in model.state_dict().items()}, tmp_path / "SAM2UNet.pth")
    convert_sam2_unet_checkpoint(tmp_path / "SAM2UNet.pth", tmp_path / "out", config=tiny_sam2_unet_config())
    offline_hub.add("test-org/tiny-hiera", write_transformers_trunk_repo(tmp_path / "h2", tiny_hiera(2)))
    with pytest.raises(CheckpointMismatchError, match="frozen backbone weights loaded from test-org/tiny-hiera"):
        Sam2UNetForImageSegmentation.from_pretrained(tmp_path / "out")
    offline_hub.add("test-org/tiny-hiera", write_transformers_trunk_repo(tmp_path / "h1", tiny_hiera(1)))
    Sam2UNetForImageSegmentation.from_pretrained(tmp_path / "out")  # the trunk it was trained with: loads


# --- class names given for a converted head -----------------------------------------------------------------

def test_class_names_must_be_the_heads_ids_and_errors_name_the_names_file(upstream_checkpoint, tmp_path, monkeypatch):
    """A gap in the names ({"0": "a", "2": "b"} for a 2-class head) was refused by the DINOv2 config naming neither
    the names nor the checkpoint; the CLI's sam2-unet/dsunet refusal blamed the checkpoint, not the --id2label file;
    JSON-style string ids given in Python were refused as another class set."""
    import json

    import dsunet_hf.convert.sam2_unet
    from dsunet_hf.convert import head_classes
    from dsunet_hf.convert.dinov2_head import convert_dinov2_head_checkpoint
    from dsunet_hf.models.dinov2_seg.modeling_dinov2_seg import BNHead

    assert head_classes(2, {"0": "bg", "1": "fg"}, "x.pth") == {"id2label": {0: "bg", 1: "fg"}}
    # A list of names is taken in id order, as from_pretrained(id2label=[...]) takes it; other types are named.
    assert head_classes(2, ["bg", "fg"], "x.pth") == {"id2label": {0: "bg", 1: "fg"}}
    with pytest.raises(ValueError, match=r"^id2label must be a dict of class id -> name .* or a list of names, got a "
                                         r"int$"):
        head_classes(2, 2, "x.pth")
    head = tmp_path / "dinov2_vits14_custom_linear_head.pth"
    torch.save({"state_dict": {f"decode_head.{k}": v for k, v in BNHead(384, 2).state_dict().items()}}, head)
    (tmp_path / "gap.json").write_text(json.dumps({"0": "a", "2": "b"}))
    for names, given in [({"0": "a", "2": "b"}, "id2label"), (tmp_path / "gap.json", str(tmp_path / "gap.json"))]:
        with pytest.raises(ValueError, match=rf"^{re.escape(given)} names the class ids \[0, 2\], but the head in "
                                             rf"{re.escape(str(head))} predicts the ids 0\.\.1, one name each$"):
            convert_dinov2_head_checkpoint(head, tmp_path / "out", id2label=names)
    assert not (tmp_path / "out").exists()
    # The CLI hands the file on: the refusal names it (the trunk's size is read before the names are checked).
    _, path = upstream_checkpoint
    monkeypatch.setattr(dsunet_hf.convert.sam2_unet, "infer_hiera_preset", lambda trunk, source: "tiny")
    with pytest.raises(SystemExit, match=rf"^convert sam2-unet: {re.escape(str(tmp_path / 'gap.json'))} names the "
                                         rf"class ids \[0, 2\], but the head in \S+SAM2UNet-COD\.pth predicts"):
        cli_main(["convert", "sam2-unet", str(path), str(tmp_path / "out"), "--id2label", str(tmp_path / "gap.json")])
    assert not (tmp_path / "out").exists()


def test_the_saved_model_type_reader_is_public_and_shared(tmp_path):
    """convert/birefnet.py imported the private convert._model_type: one public reader both use."""
    import dsunet_hf.convert.birefnet
    from dsunet_hf.convert import saved_model_type

    assert dsunet_hf.convert.birefnet.saved_model_type is saved_model_type
    (tmp_path / "config.json").write_text('{"model_type": "birefnet"}')
    assert saved_model_type(tmp_path) == "birefnet" and saved_model_type(tmp_path / "none") is None
    (tmp_path / "config.json").write_text("[1]")
    assert saved_model_type(tmp_path) is None

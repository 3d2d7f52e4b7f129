"""Original SAM2-UNet checkpoints -> dsunet-hf artifacts."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import TINY_SIZE, tiny_sam2_unet_config

from dsunet_hf import Sam2UNetForImageSegmentation
from dsunet_hf.backbones.hiera import infer_hiera_preset
from dsunet_hf.cli import main as cli_main
from dsunet_hf.convert.sam2_unet import convert_sam2_unet_checkpoint


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
    with pytest.raises(ValueError, match=r"broken\.pth: cannot read"):
        convert_sam2_unet_checkpoint(tmp_path / "broken.pth", tmp_path / "out")


def test_unknown_keys_are_named(upstream_checkpoint, tmp_path):
    _, path = upstream_checkpoint
    state = torch.load(path, weights_only=True)
    state["decoder_extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match="decoder_extra.weight"):
        convert_sam2_unet_checkpoint(tmp_path / "extra.pth", tmp_path / "out", config=tiny_sam2_unet_config())


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

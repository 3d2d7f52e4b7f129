"""BiRefNet: exact sizes, forward contract, InRef / OutRef formulas, losses, official weights, fine-tuning
strategies, Hub round trips, training and prediction."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from dsunet_hf import BiRefNetConfig, BiRefNetForImageSegmentation
from dsunet_hf.losses import birefnet_pixel_loss, iou_loss, outward_reference_loss, ssim_loss
from dsunet_hf.models.birefnet.modeling_birefnet import grey_laplacian, image_to_patch_channels

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (see conftest)

TINY_SWIN = {"embed_dim": 8, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2], "window_size": 4}
SIZE = 64


def tiny_config(**overrides) -> BiRefNetConfig:
    fields = dict(backbone="swin_v1_t", backbone_config=TINY_SWIN, image_size=SIZE, base_repo_id="test-org/tiny-birefnet")
    fields.update(overrides)
    return BiRefNetConfig(**fields)


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


# --- sizes ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "variant, total, parts",
    [
        # Checked against the official code (HEAD 25cb930, built on the meta device): 220.18 M / 44.31 M.
        ("BiRefNet", 220_176_498, {"bb": 195_201_204, "squeeze_module": 6_657_780, "decoder": 18_317_514}),
        ("BiRefNet_lite", 44_313_720, {"bb": 27_520_698, "squeeze_module": 4_109_556, "decoder": 12_683_466}),
    ],
)
def test_full_size_variants_count_exactly(variant, total, parts):
    with torch.device("meta"):
        model = BiRefNetForImageSegmentation(BiRefNetConfig.from_variant(variant, finetune_strategy="full"))
    assert count(model) == total
    assert {name: count(getattr(model, name)) for name in parts} == parts


def test_lora_budget_on_the_swin_l_backbone():
    with torch.device("meta"):
        model = BiRefNetForImageSegmentation(BiRefNetConfig.from_variant("BiRefNet", lora_decoder=False))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    # r=8 on every backbone linear: equal to LoRA on the official fused-qkv Swin-L (measured on upstream HEAD)
    assert trainable == 2_374_656
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)


# --- formulas ---------------------------------------------------------------------------------------------

def test_patch_channels_follow_the_einops_order():
    image = torch.randn(2, 3, 64, 96)
    patches = image_to_patch_channels(image, (16, 32))
    grid_h, grid_w = 4, 3
    assert patches.shape == (2, 3 * grid_h * grid_w, 16, 32)
    for c in range(3):
        for i in range(grid_h):
            for j in range(grid_w):
                channel = c * grid_h * grid_w + i * grid_w + j
                assert torch.equal(patches[:, channel], image[:, c, i * 16:(i + 1) * 16, j * 32:(j + 1) * 32])


def test_gradient_target_is_the_normalised_5x5_laplacian_of_the_grey_image():
    image = torch.randn(1, 3, 12, 10)
    grey = image.mean(1)[0]
    padded = F.pad(grey[None, None], (2, 2, 2, 2), mode="reflect")[0, 0]
    expected = torch.empty_like(grey)
    for y in range(12):
        for x in range(10):
            window = padded[y:y + 5, x:x + 5]
            expected[y, x] = (window.sum() - 25 * window[2, 2]) / 48
    assert torch.allclose(grey_laplacian(image)[0, 0], expected, atol=1e-6)
    kornia = pytest.importorskip("kornia", reason="kornia (upstream's Laplacian) is not a dependency")
    assert torch.allclose(grey_laplacian(image), kornia.filters.laplacian(image.mean(1, keepdim=True), 5), atol=1e-6)


def test_losses_follow_their_definitions():
    torch.manual_seed(0)
    target = (torch.rand(2, 1, 24, 24) > 0.5).float()
    assert ssim_loss(target, target).item() == pytest.approx(0.0, abs=1e-6)
    probabilities = torch.rand(2, 1, 24, 24)
    per_image = [1 - (p * t).sum() / (p.sum() + t.sum() - (p * t).sum()) for p, t in zip(probabilities, target)]
    assert iou_loss(probabilities, target).item() == pytest.approx(sum(per_image).item(), rel=1e-6)  # summed
    logits = torch.randn(2, 1, 24, 24)
    coarse = torch.randn(2, 1, 6, 6)
    weights = {"bce": 30.0, "iou": 0.5, "ssim": 10.0, "mae": 100.0, "mse": 0.0}
    expected = 0
    for out in (coarse, logits):
        up = F.interpolate(out, size=(24, 24), mode="bilinear", align_corners=True)
        p = up.sigmoid()
        expected = expected + 30 * F.binary_cross_entropy(p, target) + 0.5 * iou_loss(p, target) \
            + 10 * ssim_loss(p, target) + 100 * (p - target).abs().mean()
    assert birefnet_pixel_loss([coarse, logits], target, weights).item() == pytest.approx(expected.item(), rel=1e-5)
    gradient_target = torch.randn(2, 1, 24, 24)
    manual = F.binary_cross_entropy(
        F.interpolate(coarse, size=(24, 24), mode="bilinear", align_corners=True).sigmoid(), gradient_target.sigmoid()
    )
    assert outward_reference_loss([coarse], [gradient_target]).item() == pytest.approx(manual.item(), rel=1e-5)


def test_iou_term_is_summed_in_training_and_a_per_sample_mean_in_eval_mode():
    """Training keeps upstream's loss (IoU summed over the batch: its value and gradient); eval mode (the validation
    loss) averages it, so that the loss of a batch is the mean of its samples' losses, whatever the batch size."""
    torch.manual_seed(0)
    target = (torch.rand(3, 1, 24, 24) > 0.5).float()
    probabilities = torch.rand(3, 1, 24, 24)
    assert iou_loss(probabilities, target, reduction="mean").item() == pytest.approx(
        iou_loss(probabilities, target).item() / 3, rel=1e-6)
    with pytest.raises(ValueError, match="reduction"):
        iou_loss(probabilities, target, reduction="none")
    logits = torch.randn(3, 1, 24, 24)
    weights = {"bce": 30.0, "iou": 0.5, "ssim": 10.0}
    summed = birefnet_pixel_loss([logits], target, weights)
    mean = birefnet_pixel_loss([logits], target, weights, iou_reduction="mean")
    assert (summed - mean).item() == pytest.approx(0.5 * (iou_loss(logits.sigmoid(), target) * 2 / 3).item(), rel=1e-5)

    model = BiRefNetForImageSegmentation(tiny_config(finetune_strategy="full")).eval()
    pixels, labels = torch.randn(3, 3, 64, 64), (torch.rand(3, 1, 64, 64) > 0.5).float()
    with torch.no_grad():
        batch = model(pixels, labels=labels).loss
        alone = [model(pixels[i : i + 1], labels=labels[i : i + 1]).loss for i in range(3)]
        final = model(pixels).logits
    assert batch.item() == pytest.approx(torch.stack(alone).mean().item(), rel=1e-5)
    assert batch.item() == pytest.approx(birefnet_pixel_loss([final], labels, model.config.loss_weights,
                                                             iou_reduction="mean").item(), rel=1e-5)
    model.train()
    torch.manual_seed(1)  # the same dropout as below
    out = model(pixels, labels=labels)
    torch.manual_seed(1)
    logits_again = model(pixels)
    weights = model.current_loss_weights()
    upstream = birefnet_pixel_loss([*logits_again.aux_logits, logits_again.logits], labels, weights)  # IoU summed
    upstream = upstream + model.config.outward_reference_loss_weight * outward_reference_loss(
        logits_again.gradient_logits, logits_again.gradient_targets)
    assert out.loss.item() == pytest.approx(upstream.item(), rel=1e-5)


def test_a_processor_saved_without_the_order_is_saved_again_with_birefnets(tmp_path):
    """A BiRefNet artifact saved before the order was recorded: saving the model again (with that processor, as
    re-publishing does) records "birefnet", for pipeline() and AutoImageProcessor users too."""
    import json

    from transformers import AutoImageProcessor

    model = BiRefNetForImageSegmentation(tiny_config())
    old = model.default_image_processor()
    old.post_processing = None
    model.save_pretrained(tmp_path / "resaved", image_processor=old)
    assert json.loads((tmp_path / "resaved" / "preprocessor_config.json").read_text())["post_processing"] == "birefnet"
    assert AutoImageProcessor.from_pretrained(tmp_path / "resaved").post_processing == "birefnet"
    assert old.post_processing is None  # the caller's processor is left as it was


def test_default_image_processor_post_processes_as_upstream_inference():
    """sigmoid, then the probabilities resized with align_corners=True (BiRefNet's inference.py)."""
    processor = BiRefNetForImageSegmentation(tiny_config()).default_image_processor()
    assert processor.post_processing == "birefnet"
    logits = 3 * torch.randn(1, 1, 8, 8)
    (probability,) = processor.post_process_probabilities(logits, target_sizes=[(21, 13)])
    expected = F.interpolate(logits.sigmoid(), size=(21, 13), mode="bilinear", align_corners=True)[0, 0]
    assert torch.allclose(probability, expected, atol=1e-6)


def test_last_epochs_schedule_compounds_like_upstream():
    config = tiny_config(task="DIS5K")  # 40 last epochs: bce off, iou halves each epoch
    assert config.loss_weights_at_epoch(0, 100) == config.loss_weights
    assert config.loss_weights_at_epoch(59, 100) == config.loss_weights  # upstream epoch 60: not yet
    first = config.loss_weights_at_epoch(60, 100)  # upstream epoch 61 > 100 - 40
    assert first["bce"] == 0 and first["iou"] == 0.25 and first["ssim"] == 10
    assert config.loss_weights_at_epoch(99, 100)["iou"] == pytest.approx(0.5 * 0.5**40)
    matting = tiny_config(task="Matting").loss_weights_at_epoch(149, 150)
    assert matting["bce"] == 30 and matting["ssim"] == pytest.approx(10 * 0.9**10) and matting["iou"] == 0
    assert tiny_config(finetune_last_epochs=0).loss_weights_at_epoch(99, 100) == tiny_config().loss_weights
    # A run shorter than the window (a short fine-tune of released weights) decays once per epoch run, from
    # the first: upstream's epoch 1 > 10 - 40 multiplies once (the weights were not decayed 31 times).
    assert config.loss_weights_at_epoch(0, 10)["iou"] == 0.25
    assert config.loss_weights_at_epoch(9, 10)["iou"] == pytest.approx(0.5 * 0.5**10)
    # Validation (eval mode) scores with the fixed task weights: a decayed loss would improve by construction.
    model = BiRefNetForImageSegmentation(config)
    model.set_epoch(5, 10)
    assert model.train().current_loss_weights()["iou"] == pytest.approx(0.5 * 0.5**6)
    assert model.eval().current_loss_weights() == config.loss_weights


# --- forward contract -------------------------------------------------------------------------------------

def test_eval_returns_the_final_map_and_train_the_auxiliary_and_gradient_outputs():
    model = BiRefNetForImageSegmentation(tiny_config(finetune_strategy="full"))
    pixels = torch.randn(2, 3, 64, 96)
    model.eval()
    with torch.no_grad():
        out = model(pixels)
    assert out.logits.shape == (2, 1, 64, 96) and out.aux_logits is None and out.gradient_logits is None
    model.train()
    out = model(pixels, labels=(torch.rand(2, 64, 96) > 0.5).float())
    assert [tuple(a.shape[-2:]) for a in out.aux_logits] == [(2, 3), (4, 6), (8, 12)]
    assert [tuple(g.shape[-2:]) for g in out.gradient_logits] == [(2, 3), (4, 6), (8, 12)]
    assert all(t.shape == (2, 1, 64, 96) for t in out.gradient_targets)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert model.decoder.decoder_block4.conv_in.weight.grad is not None
    # Its loss clamps labels to [0, 1] (as upstream): 0/255 uint8 masks give the loss of 0/1 ones.
    model.eval()
    mask = torch.rand(2, 64, 96) > 0.5
    with torch.no_grad():
        assert torch.equal(model(pixels, labels=mask.float()).loss, model(pixels, labels=mask.to(torch.uint8) * 255).loss)


def test_deformable_offsets_start_at_zero():
    model = BiRefNetForImageSegmentation(tiny_config(finetune_strategy="full"))
    offsets = [m for n, m in model.named_modules() if n.endswith(("offset_conv", "modulator_conv"))]
    assert len(offsets) == 2 * 4 * 5  # 5 deformable ASPPs (squeeze + 4 decoder blocks) x 4 branches
    assert all(m.weight.abs().sum() == 0 and m.bias.abs().sum() == 0 for m in offsets)


def test_bad_inputs_are_refused_clearly():
    model = BiRefNetForImageSegmentation(tiny_config(finetune_strategy="full")).eval()
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.randn(1, 3, 70, 64))
    with pytest.raises(ValueError, match="RGB"):
        model(torch.randn(1, 4, 64, 64))
    with pytest.raises(ValueError, match="adapter"):
        tiny_config(finetune_strategy="adapter")
    with pytest.raises(ValueError, match="multiple of 32"):
        tiny_config(image_size=1000)
    # 0 (or less) squeeze blocks built one all the same; a string count failed with a bare TypeError.
    for fields in ({"squeeze_block_count": 0}, {"squeeze_block_count": -1}, {"context_count": "3"}):
        with pytest.raises(ValueError, match=next(iter(fields))):
            tiny_config(**fields)
    # The string "false" (a YAML/JSON typo) counted as True: use_bn="false" built (and loaded) BatchNorm.
    for name in ("use_bn", "inward_reference", "inward_reference_split", "multi_scale_supervision",
                 "outward_reference", "lora_decoder"):
        with pytest.raises(ValueError, match=f"{name} must be true or false"):
            tiny_config(**{name: "false"})
    # A bare TypeError / int() error naming no field; a string OutRef weight failed in the first training step, a
    # negative or all-zero loss_weights trained away from the labels or on nothing.
    # image_size 1024.0 failed with "'float' object is not iterable"; [1024.5, 1024] was truncated to 1024.
    for fields in ({"dynamic_size": [256, 512]}, {"dynamic_size": [[256.5, 512], [256, 512]]},
                   {"finetune_last_epochs": "x"}, {"image_size": 1024.0},
                   {"image_size": [1024.5, 1024]}, {"image_size": [True, 1024]},
                   {"outward_reference_loss_weight": "1"}, {"outward_reference_loss_weight": -1.0},
                   {"loss_weights": {"bce": -1.0}}, {"loss_weights": {}}, {"loss_weights": {"bce": "30"}},
                   {"loss_weights": {"bce": float("nan")}}):
        with pytest.raises(ValueError, match=next(iter(fields))):
            tiny_config(**fields)
    assert tiny_config(finetune_last_epochs=-20, outward_reference_loss_weight=0).finetune_last_epochs == 20


def test_pvt_v2_minimum_size_is_a_clear_error():
    """PVT-v2's spatial-reduction convs need stage maps of at least their ratio (32 px input); with multi_scale_input
    the half-size pass needs that too. 32 px with 'cat' failed deep inside with "Kernel size can't be greater than
    actual input size", and a dynamic_size reaching below it would fail at a random later training step."""
    tiny_pvt = {"hidden_sizes": [8, 16, 24, 32], "depths": [1, 1, 1, 1], "num_attention_heads": [1, 1, 1, 1]}
    fast = {"decoder_attention": "", "finetune_strategy": "full"}  # (the attention is not what is tested)
    model = BiRefNetForImageSegmentation(BiRefNetConfig(backbone="pvt_v2_b0", backbone_config=tiny_pvt, image_size=64,
                                                        **fast)).eval()
    with torch.no_grad(), pytest.raises(ValueError, match="pvt_v2_b0 and multi_scale_input='cat' needs at least 64 px"):
        model(torch.randn(1, 3, 32, 64))
    with pytest.raises(ValueError, match="at least 32 px per side"):
        model.bb(torch.randn(1, 3, 16, 64))
    for sizes in ({"image_size": 32}, {"image_size": 64, "dynamic_size": [[32, 128], [64, 128]]}):
        with pytest.raises(ValueError, match="needs image_size and dynamic_size of at least 64 px"):
            BiRefNetConfig(backbone="pvt_v2_b0", backbone_config=tiny_pvt, **sizes)
    # Without the half-size pass 32 px is enough (as upstream).
    model = BiRefNetForImageSegmentation(BiRefNetConfig(backbone="pvt_v2_b0", backbone_config=tiny_pvt, image_size=32,
                                                        multi_scale_input="", **fast)).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).logits.shape == (1, 1, 32, 32)


def test_every_official_release_is_a_variant_named_by_its_repo_file_or_cache_path(tmp_path):
    """BiRefNet_HR-matting (upstream README), _lite-matting and _dynamic-matting were no variants: converted as the
    general 1024² model (task General), and --variant refused their names. A Hub file (<repo>/model.safetensors) or
    the Hub cache's snapshot path gave no variant either."""
    from dsunet_hf.convert.birefnet import (
        is_official_birefnet_source,
        official_variant_name,
        variant_for_source,
    )

    expected = {"BiRefNet_HR-matting": ("swin_v1_l", "Matting", [2048, 2048], None),
                "BiRefNet_lite-matting": ("swin_v1_t", "Matting", [1024, 1024], None),
                "BiRefNet_dynamic-matting": ("swin_v1_l", "Matting", [1024, 1024], [[256, 2304], [256, 2304]])}
    for variant, fields in expected.items():
        config = BiRefNetConfig.from_variant(variant)
        assert (config.backbone, config.task, config.image_size, config.dynamic_size) == fields
        assert config.base_repo_id == f"ZhengPeng7/{variant}" and official_variant_name(variant.lower()) == variant
        assert variant_for_source(f"ZhengPeng7/{variant}") == variant
    # GitHub release v1 files: BiRefNet_dynamic-matting's, and those whose names are not their variant's (the 512²
    # model ran at 1024²).
    for name, variant in [("BiRefNet_dynamic-matting-epoch_159.pth", "BiRefNet_dynamic-matting"),
                          ("BiRefNet-general-resolution_512x512-fp16-epoch_216.pth", "BiRefNet_512x512"),
                          ("BiRefNet-HRSOD_DHU-epoch_115.pth", "BiRefNet-HRSOD"),
                          ("BiRefNet-general-bb_swin_v1_tiny-epoch_232.pth", "BiRefNet_lite"),
                          # These were not recognised (the general model's task assumed, with a warning):
                          ("BiRefNet-massive-TR_DIS5K_TR_TEs-epoch_420.pth", "BiRefNet-DIS5K-TR_TEs"),
                          ("ZhengPeng7/BiRefNet-DIS5K-TR_TEs", "BiRefNet-DIS5K-TR_TEs"),
                          ("ZhengPeng7/BiRefNet-legacy", "BiRefNet-legacy"), ("ZhengPeng7/BiRefNet_T", "BiRefNet_lite"),
                          ("BiRefNet-DIS_ep580.pth", "BiRefNet-DIS5K"),
                          ("BiRefNet-portrait-TR_P3M_10k-epoch_120.pth", "BiRefNet-portrait"),
                          ("BiRefNet-massive-epoch_240.pth", None)]:  # task of that older "massive" not known
        assert variant_for_source(name) == variant, name
    assert BiRefNetConfig.from_variant("BiRefNet-DIS5K-TR_TEs").task == "DIS5K"
    (tmp_path / "BiRefNet_lite-2K").mkdir()
    (tmp_path / "BiRefNet_lite-2K" / "model.safetensors").write_bytes(b"")
    cache = "hub/models--ZhengPeng7--BiRefNet_HR/snapshots/0123abcd"
    for source, variant in [(tmp_path / "BiRefNet_lite-2K" / "model.safetensors", "BiRefNet_lite-2K"),
                            ("BiRefNet_HR-matting/pytorch_model.bin", "BiRefNet_HR-matting"),
                            (cache, "BiRefNet_HR"), (f"{cache}/model.safetensors", "BiRefNet_HR"),
                            ("runs/BiRefNet/epoch_95.pth", None), ("downloads/model.safetensors", None)]:
        assert variant_for_source(source) == variant, source
    # torch.save's .pt suffix: from_pretrained took the file for a Hub repo id ("Repo id must be in the form ...").
    (tmp_path / "BiRefNet_lite.pt").write_bytes(b"")
    assert is_official_birefnet_source(tmp_path / "BiRefNet_lite.pt")


def test_without_batchnorm_there_are_no_bn_tensors():
    model = BiRefNetForImageSegmentation(tiny_config(use_bn=False, finetune_strategy="full"))
    assert not [k for k in model.state_dict() if "running_mean" in k and not k.startswith("bb.")]
    model.eval()(torch.randn(1, 3, 64, 64))


# --- official weights -------------------------------------------------------------------------------------

# Documented official names and shapes (reference §5.4, Swin-L) that must exist under the same names here.
DOCUMENTED_SWIN_L_KEYS = {
    "squeeze_module.0.conv_in.weight": (64, 5760, 3, 3),
    "squeeze_module.0.conv_out.weight": (3072, 64, 3, 3),
    "squeeze_module.0.dec_att.aspp1.atrous_conv.offset_conv.weight": (2, 64, 1, 1),
    "squeeze_module.0.dec_att.aspp_deforms.2.atrous_conv.regular_conv.weight": (256, 64, 7, 7),
    "squeeze_module.0.dec_att.global_avg_pool.1.weight": (256, 64, 1, 1),
    "squeeze_module.0.dec_att.bn1.running_mean": (64,),
    "decoder.ipt_blk5.conv1.weight": (64, 3072, 3, 3),
    "decoder.ipt_blk1.conv1.weight": (64, 3, 3, 3),
    "decoder.ipt_blk4.conv_out.weight": (384, 64, 3, 3),
    "decoder.ipt_blk1.conv_out.weight": (48, 64, 3, 3),
    "decoder.decoder_block4.conv_in.weight": (64, 3456, 3, 3),
    "decoder.decoder_block1.conv_in.weight": (64, 480, 3, 3),
    "decoder.decoder_block1.conv_out.weight": (192, 64, 3, 3),
    "decoder.lateral_block4.conv.weight": (1536, 1536, 1, 1),
    "decoder.lateral_block2.conv.weight": (384, 384, 1, 1),
    "decoder.conv_ms_spvn_4.weight": (1, 1536, 1, 1),
    "decoder.gdt_convs_4.0.weight": (16, 1536, 3, 3),
    "decoder.gdt_convs_4.1.num_batches_tracked": (),
    "decoder.gdt_convs_pred_2.0.weight": (1, 16, 1, 1),
    "decoder.gdt_convs_attn_3.0.bias": (1,),
    "decoder.conv_out1.0.weight": (1, 240, 1, 1),
}


def test_decoder_names_and_shapes_are_the_official_ones():
    with torch.device("meta"):
        model = BiRefNetForImageSegmentation(BiRefNetConfig.from_variant("BiRefNet", finetune_strategy="full"))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: shapes.get(k) for k in DOCUMENTED_SWIN_L_KEYS} == DOCUMENTED_SWIN_L_KEYS
    # 754 official entries: 24 Swin blocks each lose the relative_position_index buffer (non-persistent here)
    # and turn a fused qkv weight+bias into three q/k/v pairs (+4).
    assert len(shapes) == 754 - 24 + 24 * 4


def official_tiny_state_dict(use_bn: bool = True) -> dict[str, torch.Tensor]:
    """A tiny checkpoint in the official layout: bb.* built from the documented Swin key list, the
    decoder/squeeze tensors under their (unchanged) official names, with DDP/compile prefixes."""
    from test_birefnet_backbones import official_swin_state_dict

    swin = official_swin_state_dict(TINY_SWIN["embed_dim"], TINY_SWIN["depths"], TINY_SWIN["num_heads"],
                                    TINY_SWIN["window_size"])
    decoder = BiRefNetForImageSegmentation(tiny_config(finetune_strategy="full", use_bn=use_bn)).state_dict()
    state = {f"module.bb.{k}": v for k, v in swin.items()}
    state.update({f"_orig_mod.{k}": v.clone() + (0.01 * torch.randn_like(v) if v.is_floating_point() else 0)
                  for k, v in decoder.items() if not k.startswith("bb.")})
    return state


def test_an_official_layout_checkpoint_loads_strictly_and_gives_its_outputs(tmp_path):
    from dsunet_hf.convert.birefnet import convert_birefnet_state_dict

    official = official_tiny_state_dict()
    config = tiny_config(finetune_strategy="full")
    model = BiRefNetForImageSegmentation(config).eval()
    converted = convert_birefnet_state_dict(official, config)
    result = model.load_state_dict(converted, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(model.decoder.conv_out1[0].weight, official["_orig_mod.decoder.conv_out1.0.weight"])
    with pytest.raises(ValueError, match="extra_head"):
        convert_birefnet_state_dict({**official, "extra_head.weight": torch.zeros(1)}, config)
    broken = dict(official)
    del broken["module.bb.norm3.weight"]
    with pytest.raises(ValueError, match="norm3"):
        convert_birefnet_state_dict(broken, config)


def test_convert_command_and_direct_loading_from_an_official_folder(tmp_path):
    from dsunet_hf.cli import main

    official = official_tiny_state_dict()
    folder = tmp_path / "BiRefNet-tiny"
    folder.mkdir()
    save_file({k.split(".", 1)[1]: v.contiguous() for k, v in official.items()}, str(folder / "model.safetensors"))
    # The official repos' remote-code config.json (no architecture fields in it).
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["BiRefNet"], "auto_map": {"AutoModelForImageSegmentation": "birefnet.BiRefNet"},
        "bb_pretrained": False}))
    overrides = {"backbone": "swin_v1_t", "backbone_config": TINY_SWIN, "image_size": SIZE}
    direct = BiRefNetForImageSegmentation.from_pretrained(str(folder), **overrides)
    assert direct.config.finetune_strategy == "full" and not direct.training
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = direct(pixels).logits
    output = tmp_path / "converted"
    assert main(["convert", "birefnet", str(folder), str(output), "--config-overrides", json.dumps(overrides)]) == 0
    converted = BiRefNetForImageSegmentation.from_pretrained(str(output))
    with torch.no_grad():
        assert torch.allclose(converted(pixels).logits, expected, atol=1e-6)
    assert "Bilateral Reference" in (output / "README.md").read_text()


def test_official_checkpoint_without_batchnorm_is_recognised(tmp_path):
    from dsunet_hf.convert.birefnet import uses_batchnorm

    official = official_tiny_state_dict(use_bn=False)
    assert uses_batchnorm(official) is False and uses_batchnorm(official_tiny_state_dict()) is True
    path = tmp_path / "no-bn.pth"
    torch.save({k: v for k, v in official.items()}, path)
    model = BiRefNetForImageSegmentation.from_official(path, backbone_config=TINY_SWIN, image_size=SIZE,
                                                       backbone="swin_v1_t")
    assert model.config.use_bn is False


# --- fine-tuning artifacts through the Hub ----------------------------------------------------------------

@pytest.fixture
def official_base(tmp_path, offline_hub):
    """The tiny official checkpoint published as a Hub repo (the base every fine-tuned artifact loads)."""
    official = official_tiny_state_dict()
    folder = tmp_path / "base"
    folder.mkdir()
    save_file({k.split(".", 1)[1]: v.contiguous() for k, v in official.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"architectures": ["BiRefNet"], "bb_pretrained": False}))
    sha = offline_hub.add("test-org/tiny-birefnet", folder)
    return sha


def test_official_weights_take_the_from_pretrained_arguments(official_base):
    """dtype / torch_dtype, output_loading_info and merge_lora are honoured on official weights too; any other
    argument is refused rather than dropped."""
    fields = dict(backbone="swin_v1_t", backbone_config=TINY_SWIN, image_size=SIZE)
    model, info = BiRefNetForImageSegmentation.from_pretrained(
        "test-org/tiny-birefnet", dtype=torch.bfloat16, output_loading_info=True, **fields
    )
    assert model.dtype == torch.bfloat16 and info["missing_keys"] == info["unexpected_keys"] == []
    half = BiRefNetForImageSegmentation.from_pretrained("test-org/tiny-birefnet", torch_dtype="float16", **fields)
    assert half.dtype == torch.float16
    lora = BiRefNetForImageSegmentation.from_pretrained(
        "test-org/tiny-birefnet", finetune_strategy="lora", merge_lora=True, **fields
    )
    assert lora.lora_is_merged
    with pytest.raises(TypeError, match="device_mapp"):
        BiRefNetForImageSegmentation.from_pretrained("test-org/tiny-birefnet", device_mapp="cpu", **fields)


def test_official_hub_repo_loads_directly(official_base):
    from dsunet_hf.predict import load_model_and_processor

    model = BiRefNetForImageSegmentation.from_pretrained(
        "test-org/tiny-birefnet", backbone="swin_v1_t", backbone_config=TINY_SWIN, image_size=SIZE
    )
    assert model.config.base_revision == official_base and model.config.base_repo_id == "test-org/tiny-birefnet"
    again, processor = load_model_and_processor(
        "test-org/tiny-birefnet", backbone="swin_v1_t", backbone_config=TINY_SWIN, image_size=SIZE
    )
    assert processor.size == {"height": SIZE, "width": SIZE}
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(again(pixels).logits, model(pixels).logits, rtol=0, atol=1e-6)


def test_official_weights_and_the_base_come_from_the_given_cache_dir(official_base, offline_hub, tmp_path):
    """cache_dir (like token, local_files_only) reaches the official repo's files and a fine-tuned model's base."""
    import shutil

    custom = tmp_path / "custom-cache"
    shutil.move(str(offline_hub.cache), str(custom))
    offline_hub.cache.mkdir()
    fields = dict(backbone="swin_v1_t", backbone_config=TINY_SWIN, image_size=SIZE)
    official = BiRefNetForImageSegmentation.from_pretrained("test-org/tiny-birefnet", cache_dir=str(custom),
                                                            local_files_only=True, **fields)
    assert official.config.base_revision == official_base
    model = BiRefNetForImageSegmentation.from_pretrained_backbones(tiny_config(finetune_strategy="lora"),
                                                                   cache_dir=str(custom))
    assert model.config.base_revision == official_base
    model.save_pretrained(tmp_path / "m")
    assert BiRefNetForImageSegmentation.from_pretrained(tmp_path / "m", cache_dir=str(custom)).config.base_revision \
        == official_base


@pytest.mark.parametrize("strategy", ["lora", "frozen"])
def test_fine_tuned_artifacts_push_and_pull_with_identical_outputs(strategy, official_base, offline_hub, tmp_path):
    config = tiny_config(finetune_strategy=strategy)
    model = BiRefNetForImageSegmentation.from_pretrained_backbones(config)
    assert model.config.base_revision == official_base
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and not any("offset_conv" in n or "modulator_conv" in n for n in trainable if strategy == "lora")
    # One optimiser step so the trained tensors differ from their initialisation.
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    bn = model.decoder.decoder_block4.bn_in
    running_before = bn.running_mean.clone()
    loss = model(torch.randn(2, 3, 64, 64), labels=(torch.rand(2, 64, 64) > 0.5).float()).loss
    loss.backward()
    optimizer.step()
    if strategy == "lora":  # BatchNorm statistics stay frozen under LoRA
        assert torch.equal(bn.running_mean, running_before) and not bn.training
    else:
        assert not torch.equal(bn.running_mean, running_before)
    model.eval()
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(pixels).logits
    model.push_to_hub("user/birefnet-" + strategy)
    pulled = BiRefNetForImageSegmentation.from_pretrained("user/birefnet-" + strategy)
    with torch.no_grad():
        # Every tensor is bit-identical (checked below); the outputs agree to float32 rounding (~6e-8 seen):
        # oneDNN picks conv kernels by memory alignment, which differs for tensors loaded from files.
        assert torch.allclose(pulled(pixels).logits, expected, rtol=0, atol=1e-6)
    reference = model.state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in pulled.state_dict().items())
    files = offline_hub.repo_dir("user/birefnet-" + strategy)
    weights = next(files.rglob("model.safetensors"))
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as handle:
        keys = list(handle.keys())
    assert not any(k.startswith("bb.") and "lora_" not in k for k in keys)  # the backbone is never saved
    if strategy == "lora":
        assert all("lora_" in k for k in keys)
    card = next(files.rglob("README.md")).read_text()
    assert "test-org/tiny-birefnet" in card and official_base in card


# --- training and prediction ------------------------------------------------------------------------------

def test_the_training_command_trains_birefnet(tmp_path, monkeypatch, hub_offline):
    """examples/train.py's entry point (training.main) fine-tunes BiRefNet. Run in this process: `accelerate launch`
    itself is covered by test_training (a launched interpreter cost this test about 20 s of imports)."""
    from dsunet_hf.synthetic import make_camouflage_dataset
    from dsunet_hf.training import main as train_main

    monkeypatch.chdir(tmp_path)
    data = make_camouflage_dataset(tmp_path / "data", num_pairs=8, size=(80, 72), seed=2)
    output = tmp_path / "run"
    overrides = json.dumps({"backbone_config": TINY_SWIN, "dynamic_size": [[64, 96], [64, 96]]})
    assert train_main(["--model", "birefnet", "--train-data", str(data), "--output-dir", str(output), "--backbone",
                       "random", "--backbone-preset", "swin_v1_t", "--config-overrides", overrides, "--image-size",
                       "64", "--finetune-strategy", "frozen", "--batch-size", "2", "--max-steps", "3", "--eval-steps",
                       "3", "--report-to", "none", "--no-progress"]) == 0
    args = json.loads((output / "training_args.json").read_text())
    assert args["learning_rate"] == pytest.approx(1e-5 * (2 / 4) ** 0.5) and args["weight_decay"] == 1e-2
    assert args["lr_schedule"] == "constant"
    config = json.loads((output / "model" / "config.json").read_text())
    assert config["model_type"] == "birefnet" and config["finetune_strategy"] == "frozen"
    logged = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert any("val/S-measure" in row for row in logged)


def test_prediction_handles_odd_sizes_grey_rgba_and_large_photos(tmp_path):
    from dsunet_hf.predict import load_model_and_processor, predict_files

    model = BiRefNetForImageSegmentation(tiny_config(finetune_strategy="full"))
    model.save_pretrained(tmp_path / "model")
    model.default_image_processor().save_pretrained(tmp_path / "model")
    model, processor = load_model_and_processor(str(tmp_path / "model"))
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (333, 501, 3), dtype=np.uint8)).save(images / "odd.jpg")
    Image.fromarray(rng.integers(0, 255, (70, 90), dtype=np.uint8), mode="L").save(images / "grey.png")
    Image.fromarray(rng.integers(0, 255, (64, 48, 4), dtype=np.uint8), mode="RGBA").save(images / "rgba.png")
    Image.fromarray(rng.integers(0, 255, (3000, 4000, 3), dtype=np.uint8)).save(images / "photo.jpg", quality=80)
    (images / "broken.png").write_bytes(b"not an image")
    report = predict_files(model, processor, [images], tmp_path / "out", cutout=True, progress=False)
    assert len(report.written) == 4 and list(report.failed) == [str(images / "broken.png")]
    for name, size in (("odd", (501, 333)), ("grey", (90, 70)), ("rgba", (48, 64)), ("photo", (4000, 3000))):
        mask = Image.open(tmp_path / "out" / "masks" / f"{name}.png")
        cutout = Image.open(tmp_path / "out" / "cutouts" / f"{name}.png")
        assert mask.size == size and cutout.size == size and cutout.mode == "RGBA"


def test_a_self_contained_copy_serves_as_the_base_of_a_fine_tune(tmp_path):
    full = BiRefNetForImageSegmentation(tiny_config(finetune_strategy="full")).eval()
    full.save_pretrained(tmp_path / "base", include_backbone=True)  # nested Swin saved under legacy names
    tuned = BiRefNetForImageSegmentation.from_pretrained_backbones(
        tiny_config(finetune_strategy="lora", base_repo_id=str(tmp_path / "base"))
    ).eval()
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():  # LoRA starts as the identity (B = 0)
        assert torch.allclose(tuned(pixels).logits, full(pixels).logits, rtol=0, atol=1e-6)


# --- training augmentation -----------------------------------------------------------------------------------

def test_training_augmentation_is_upstreams_rotate_enhance_pepper_and_repeats_per_epoch():
    """BiRefNet trains on cv2-resized pairs, rotated (p=0.2, both), colour-enhanced and peppered (0.15 % of the
    pixels black or white); the draws are a function of (seed, epoch, sample) like the flips."""
    from dsunet_hf import SegmentationImageProcessor
    from dsunet_hf.data import SegmentationTransform
    from dsunet_hf.models import get_model_spec
    from dsunet_hf.models.birefnet.augmentation import resize_like_upstream

    size = 128
    processor = SegmentationImageProcessor(size=size, do_normalize=False)
    transform = SegmentationTransform(processor, train=True, vflip=False, augment=get_model_spec("birefnet").augment)
    grey = Image.new("RGB", (200, 150), (128, 128, 128))
    batch = {"image": [grey] * 40, "mask": [np.ones((150, 200), np.float32)] * 40, "sample_id": list(range(40))}
    out = transform(batch)
    masks = torch.stack(out["labels"])[:, 0]
    rotated = masks.mean((1, 2)) < 0.99  # a rotated all-foreground mask has background corners
    assert masks.shape == (40, size, size) and 2 <= int(rotated.sum()) <= 20  # p=0.2 of 40
    for pixels in torch.stack(out["pixel_values"])[~rotated]:
        values = torch.round(pixels * 255)
        salt_and_pepper = ((values == 0) | (values == 255)).all(0)
        assert 20 <= int(salt_and_pepper.sum()) <= int(0.0015 * size * size)  # 24 drawn (a pixel may repeat)
        assert len(torch.unique(values[:, ~salt_and_pepper])) <= 3  # the rest one enhanced grey
    assert all(torch.equal(a, b) for a, b in zip(out["pixel_values"], transform(batch)["pixel_values"]))
    transform.epoch = 1
    assert not torch.equal(torch.stack(out["pixel_values"]), torch.stack(transform(batch)["pixel_values"]))

    # Resized at load as upstream: cv2 INTER_LINEAR for both (no antialiasing), not PIL's filter.
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 500, 3), dtype=np.uint8))
    image, mask = resize_like_upstream(photo, np.full((300, 500), 0.5, np.float32), {"height": size, "width": size})
    import cv2

    assert np.array_equal(np.asarray(image), cv2.resize(np.asarray(photo), (size, size), interpolation=cv2.INTER_LINEAR))
    assert mask.shape == (size, size) and np.allclose(mask, 128 / 255)

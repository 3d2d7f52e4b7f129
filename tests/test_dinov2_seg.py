"""DINOv2 segmentation heads: BNHead formula, padding/resize rule, schedules, official head files, Hub."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForSemanticSegmentation, Dinov2Config, Dinov2Model

from dsunet_hf import Dinov2ForSemanticSegmentation, Dinov2SegConfig, SegmentationImageProcessor
from dsunet_hf.convert.dinov2_head import convert_dinov2_head_checkpoint
from dsunet_hf.models.dinov2_seg.modeling_dinov2_seg import BNHead

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (see conftest)

TINY_DINO = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4)


def tiny(**overrides) -> Dinov2SegConfig:
    fields = dict(backbone_preset="small", dino_config=TINY_DINO, head_type="multilayer", crop_size=56, stride=28,
                  test_scales=[1.0, 1.5], id2label={0: "background", 1: "thing", 2: "stuff"},
                  backbone_repo_id="test-org/tiny-dinov2")
    fields.update(overrides)
    return Dinov2SegConfig(**fields)


def randomized(model, head_only=False):
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.startswith("decode_head.") or not head_only:
                parameter.add_(torch.randn_like(parameter) * 0.1)
        model.decode_head.bn.running_mean.normal_()
        model.decode_head.bn.running_var.uniform_(0.5, 2)
    return model.eval()


@pytest.mark.parametrize("head_type, channels", [("linear", 1024), ("multilayer", 4096)])
def test_official_head_shapes(head_type, channels):
    with torch.device("meta"):
        model = Dinov2ForSemanticSegmentation(Dinov2SegConfig(head_type=head_type))
    head = {k: tuple(v.shape) for k, v in model.decode_head.state_dict().items()}
    assert head["conv_seg.weight"] == (21, channels, 1, 1) and head["bn.running_var"] == (channels,)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == 21 * channels + 21 + 2 * channels  # K*C + K + 2C: the head only


def test_forward_follows_the_upstream_recipe():
    model = randomized(Dinov2ForSemanticSegmentation(tiny()))
    x = torch.randn(2, 3, 50, 61)  # padded to 56 x 70: +3/+3 rows, +4/+5 columns
    padded = F.pad(x, (4, 5, 3, 3))
    encoder = model.backbone.encoder
    hidden = encoder(padded, output_hidden_states=True).hidden_states
    maps = [encoder.layernorm(hidden[k])[:, 1:].reshape(2, 4, 5, 32).permute(0, 3, 1, 2) for k in (1, 2, 3, 4)]
    head = model.decode_head
    z = head.conv_seg(head.bn(torch.cat(maps, 1)))
    expected = F.interpolate(z, size=(50, 61), mode="bilinear", align_corners=False)  # padding stretched
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, expected)


def test_schedules_agree_and_slide_equals_single_when_one_window_covers_the_image():
    model = randomized(Dinov2ForSemanticSegmentation(tiny()))
    constant = torch.full((1, 3, 84, 112), 0.3)
    single, slide, multi = (model.segment(constant, s) for s in ("single", "slide", "multiscale"))
    for other in (slide, multi):
        torch.testing.assert_close(other.argmax(1), single.argmax(1))
    small = torch.randn(1, 3, 56, 42)  # the 56-px crop covers it
    torch.testing.assert_close(model.segment(small, "slide"), model.segment(small, "single"))
    one_view = randomized(Dinov2ForSemanticSegmentation(tiny(test_scales=[1.0], test_flip=False)))
    one_view.load_state_dict(model.state_dict())
    torch.testing.assert_close(one_view.segment(small, "multiscale"), model.segment(small, "slide"))
    with pytest.raises(ValueError, match="schedule"):
        model.segment(small, "tta")
    # A uint8 tensor ran (transformers' patch embedding casts it: logits of 0..255 values), as every other model
    # refuses it; one (3, H, W) image failed inside a schedule with "not enough values to unpack".
    with pytest.raises(ValueError, match=r"^pixel_values is torch.uint8: models take normalised float tensors"):
        model(torch.zeros(1, 3, 56, 42, dtype=torch.uint8))
    for schedule in ("single", "slide", "multiscale"):
        with pytest.raises(ValueError, match=r"must be \(batch, 3, height, width\) RGB, got shape \(3, 56, 42\)"):
            model.segment(small[0], schedule)


def test_windows_that_leave_gaps_and_empty_settings_are_refused(caplog):
    """A stride past the crop leaves pixels no window covers (their average was 0/0: NaN probabilities): such a
    config (saved by older versions, whose default stride ignored a small crop) runs its windows side by side, with
    a warning; an explicit 0 meant the default; no test scale or layer cannot be averaged. A small crop's default
    stride is the crop."""
    with caplog.at_level("WARNING"):
        assert tiny(crop_size=28, stride=42).stride == 28
    assert "stride 42 is larger than crop_size 28" in caplog.text
    for fields, message in [(dict(stride=0), "stride must be a positive number of pixels.*got 0"),
                            (dict(crop_size=0), "crop_size must be a positive"),
                            (dict(test_scales=[]), "test_scales must be a non-empty"),
                            (dict(num_layers=0), "num_layers must be at least 1, got 0")]:
        with pytest.raises(ValueError, match=message):
            tiny(**fields)
    config = tiny(crop_size=28, stride=None)
    assert config.stride == 28 and tiny(head_type="linear", num_layers=0).num_layers == 0  # unused by linear heads
    model = Dinov2ForSemanticSegmentation(config).eval()
    assert not model.segment(torch.randn(1, 3, 28, 100), "slide").isnan().any()


def test_loss_averages_over_all_pixels_including_ignored():
    model = Dinov2ForSemanticSegmentation(tiny()).eval()
    x = torch.randn(1, 3, 28, 28)
    labels = torch.randint(0, 3, (1, 28, 28))
    labels[0, :14] = 255
    out = model(x, labels=labels)
    per_pixel = F.cross_entropy(out.logits, labels, ignore_index=255, reduction="none")
    torch.testing.assert_close(out.loss, per_pixel.sum() / labels.numel())


def test_soft_or_out_of_range_labels_are_refused_by_the_loss():
    """The processor's ``masks`` are soft maps (class k -> k / 255): cast to long they all became class 0."""
    model = Dinov2ForSemanticSegmentation(tiny()).eval()
    x, classes = torch.randn(1, 3, 28, 28), torch.randint(0, 3, (1, 28, 28))
    with pytest.raises(ValueError, match="fractional"):
        model(x, labels=classes[:, None].float() / 255)
    assert model(x, labels=classes.float()).loss > 0  # integral floats are class indices
    with pytest.raises(ValueError, match=r"labels hold class 7, but the model has 3 classes \(0..2; 255 = ignored\)"):
        model(x, labels=torch.full((1, 28, 28), 7))


def test_only_the_head_trains_when_frozen():
    model = Dinov2ForSemanticSegmentation(tiny()).train()
    model(torch.randn(2, 3, 28, 28), labels=torch.randint(0, 3, (2, 28, 28))).loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.requires_grad == name.startswith("decode_head."), name
        assert (parameter.grad is not None) == name.startswith("decode_head."), name
    full = Dinov2ForSemanticSegmentation(tiny(finetune_strategy="full"))
    assert not full.backbone.encoder.embeddings.mask_token.requires_grad  # unused in forward
    with pytest.raises(ValueError, match="no adapters"):
        tiny(finetune_strategy="adapter")


def test_head_files_of_another_size_or_layout_are_refused(tmp_path):
    reference = Dinov2ForSemanticSegmentation(tiny())
    head_state = {f"decode_head.{k}": v for k, v in reference.decode_head.state_dict().items()}
    # Official layout, but 128 channels: neither a linear (384) nor a multi-layer (1536) head on ViT-S/14.
    torch.save({"meta": {}, "state_dict": head_state}, tmp_path / "dinov2_vits14_voc2012_ms_head.pth")
    with pytest.raises(ValueError, match="fit neither"):
        convert_dinov2_head_checkpoint(tmp_path / "dinov2_vits14_voc2012_ms_head.pth", tmp_path / "out")
    # Renamed, 1536 channels: a ViT-S/14 multi-layer head or a ViT-g/14 linear one; the CLI says how to tell.
    wide = {f"decode_head.{k}": v for k, v in BNHead(1536, 21).state_dict().items()}
    torch.save({"state_dict": wide}, tmp_path / "my_head.pth")
    from dsunet_hf.cli import main as cli_main

    with pytest.raises(SystemExit, match=r"my_head\.pth: cannot tell the backbone size \(1536 channels fit small and "
                                         r"giant\): name the file as Meta does \(dinov2_vits14_"):
        cli_main(["convert", "dinov2-head", str(tmp_path / "my_head.pth"), str(tmp_path / "out")])
    torch.save({"state_dict": {"decode_head.bn.weight": torch.ones(3)}}, tmp_path / "broken_head.pth")
    with pytest.raises(ValueError, match="not a DINOv2 BNHead"):
        convert_dinov2_head_checkpoint(tmp_path / "broken_head.pth", tmp_path / "out")
    # Names for another number of classes than the head's: the names are wrong, not the file.
    with pytest.raises(ValueError, match=r"id2label names 2 classes, but the head in .*my_head\.pth predicts 21"):
        convert_dinov2_head_checkpoint(tmp_path / "my_head.pth", tmp_path / "out", preset="small",
                                       id2label={0: "a", 1: "b"})


def test_full_size_official_head_converts_with_voc_labels(tmp_path):
    head = {"decode_head.bn.weight": torch.rand(1536), "decode_head.bn.bias": torch.rand(1536),
            "decode_head.bn.running_mean": torch.rand(1536), "decode_head.bn.running_var": torch.rand(1536) + 0.5,
            "decode_head.bn.num_batches_tracked": torch.tensor(40000),
            "decode_head.conv_seg.weight": torch.randn(21, 1536, 1, 1), "decode_head.conv_seg.bias": torch.randn(21)}
    torch.save({"state_dict": head}, tmp_path / "dinov2_vits14_voc2012_ms_head.pth")
    from dsunet_hf.cli import main as cli_main

    assert cli_main(["convert", "dinov2-head", str(tmp_path / "dinov2_vits14_voc2012_ms_head.pth"),
                     str(tmp_path / "out")]) == 0
    model = convert_dinov2_head_checkpoint(tmp_path / "dinov2_vits14_voc2012_ms_head.pth", tmp_path / "out")
    assert model.config.head_type == "multilayer" and model.config.id2label[15] == "person"
    assert model.config.max_long_side is None  # the ms configs: scale (99999999, 640)
    assert not SegmentationImageProcessor.from_pretrained(tmp_path / "out").do_reduce_labels  # VOC: indices as they are
    # Other names for the same 21 classes, from the command line as beside training data.
    import json

    (tmp_path / "id2label.json").write_text(json.dumps({str(i): f"thing{i}" for i in range(21)}))
    assert cli_main(["convert", "dinov2-head", str(tmp_path / "dinov2_vits14_voc2012_ms_head.pth"),
                     str(tmp_path / "named"), "--id2label", str(tmp_path / "id2label.json")]) == 0
    assert Dinov2SegConfig.from_pretrained(tmp_path / "named").id2label[15] == "thing15"
    from safetensors import safe_open

    with safe_open(str(tmp_path / "out" / "model.safetensors"), "pt") as f:
        assert set(f.keys()) == set(head)
        assert torch.equal(f.get_tensor("decode_head.conv_seg.weight"), head["decode_head.conv_seg.weight"])


def test_push_and_pull(tmp_path, offline_hub):
    add_tiny_dinov2(offline_hub, tmp_path)
    model = Dinov2ForSemanticSegmentation.from_pretrained_backbones(tiny())
    randomized(model, head_only=True).push_to_hub("me/dinov2-seg-tiny", metrics={"mIoU": 0.5}, dataset_names=["toy"])
    card = next((offline_hub.repo_dir("me/dinov2-seg-tiny") / "snapshots").iterdir()) / "README.md"
    assert "background, thing, stuff" in card.read_text() and "oquab2023dinov2" in card.read_text()
    assert "dsunet-hf export onnx --model me/dinov2-seg-tiny onnx/" in card.read_text()
    pulled = AutoModelForSemanticSegmentation.from_pretrained("me/dinov2-seg-tiny")
    x = torch.randn(1, 3, 42, 56)
    with torch.no_grad():
        assert torch.equal(model(x).logits, pulled(x).logits)


def add_tiny_dinov2(offline_hub, tmp_path) -> Dinov2Model:
    torch.manual_seed(1)
    dino = Dinov2Model(Dinov2Config(**TINY_DINO, image_size=518, patch_size=14))
    dino.save_pretrained(tmp_path / "dino")
    offline_hub.add("test-org/tiny-dinov2", tmp_path / "dino")
    return dino


def test_lora_model_loads_the_plain_backbone_and_round_trips(tmp_path, offline_hub):
    """LoRA wraps the DINOv2 linears (``q_proj.base_layer``, ``lora_A``...): the plain checkpoint still loads into
    them, LoRA left at its init; a saved LoRA artifact brings its LoRA tensors back on top of the backbone."""
    dino = add_tiny_dinov2(offline_hub, tmp_path)
    model = Dinov2ForSemanticSegmentation.from_pretrained_backbones(tiny(finetune_strategy="lora"))
    assert torch.equal(model.backbone.encoder_state_dict()["encoder.layer.0.attention.q_proj.weight"],
                       dino.state_dict()["encoder.layer.0.attention.q_proj.weight"])
    assert not model.backbone.encoder.encoder.layer[0].attention.q_proj.lora_B.default.weight.any()  # B = 0 start
    randomized(model)  # LoRA and head trained; the frozen backbone is perturbed too, so reset it from the repo
    model.load_frozen_backbones()
    model.save_pretrained(tmp_path / "lora")
    loaded = Dinov2ForSemanticSegmentation.from_pretrained(tmp_path / "lora")
    lora = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert lora and all(torch.equal(v, loaded.state_dict()[k]) for k, v in lora.items())
    x = torch.randn(1, 3, 42, 56)
    with torch.no_grad():
        assert torch.equal(model(x).logits, loaded(x).logits)


def test_repush_keeps_the_ade20k_processor(tmp_path, offline_hub):
    """push_to_hub() without a processor re-publishes the one the model was loaded with (do_reduce_labels)."""
    add_tiny_dinov2(offline_hub, tmp_path)
    processor = SegmentationImageProcessor(size=56, do_reduce_labels=True)
    Dinov2ForSemanticSegmentation.from_pretrained_backbones(tiny()).push_to_hub("me/ade", image_processor=processor)
    Dinov2ForSemanticSegmentation.from_pretrained("me/ade").push_to_hub("me/ade-copy")
    assert SegmentationImageProcessor.from_pretrained("me/ade-copy").do_reduce_labels
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['use_temp_dir'\]"):  # not silently dropped
        Dinov2ForSemanticSegmentation.from_pretrained("me/ade").push_to_hub("me/x", use_temp_dir=True)


@pytest.mark.parametrize("strategy, include_backbone, expected", [
    ("frozen", False, "This repository holds the head only"),
    ("frozen", True, "This repository is **self-contained**: the head ("),
    ("lora", False, "This repository holds the head and LoRA only"),
    ("lora", True, "This repository is **self-contained**: the head and LoRA ("),
    ("full", False, "This repository holds the **whole network**, the DINOv2 backbone included"),
])
def test_card_says_what_the_artifact_holds(tmp_path, strategy, include_backbone, expected):
    Dinov2ForSemanticSegmentation(tiny(finetune_strategy=strategy)).save_pretrained(
        tmp_path / "m", include_backbone=include_backbone)
    card = (tmp_path / "m" / "README.md").read_text()
    assert expected in card
    assert ("frozen backbone loads from" in card) == (not include_backbone and strategy != "full")
    assert ("frozen patch tokens" in card) == (strategy == "frozen")


def test_upstream_position_interpolation_uses_the_scale_factor_rule():
    from dsunet_hf.backbones.dinov2 import DINOv2Backbone, dinov2_config

    config = dinov2_config("small", **TINY_DINO)
    ours = DINOv2Backbone(config, upstream_position_interpolation=True)
    stock = DINOv2Backbone(config)
    stock.load_state_dict(ours.state_dict())
    embeddings = ours.encoder.embeddings
    with torch.no_grad():
        embeddings.position_embeddings.normal_()
        stock.encoder.embeddings.position_embeddings.copy_(embeddings.position_embeddings)
    tokens = torch.zeros(1, 1 + 46 * 40, 32)
    got = embeddings.interpolate_pos_encoding(tokens, 644, 560)
    grid = embeddings.position_embeddings[:, 1:].reshape(1, 37, 37, 32).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, scale_factor=(46.1 / 37, 40.1 / 37), mode="bicubic").permute(0, 2, 3, 1)
    torch.testing.assert_close(got[:, 1:], expected.reshape(1, -1, 32))
    assert not torch.allclose(got, stock.encoder.embeddings.interpolate_pos_encoding(tokens, 644, 560))
    square = torch.zeros(1, 1 + 37 * 37, 32)  # the trained grid: no interpolation at all
    assert torch.equal(embeddings.interpolate_pos_encoding(square, 518, 518), embeddings.position_embeddings)
    assert Dinov2ForSemanticSegmentation(tiny()).config.upstream_position_interpolation


def test_label_sets():
    from dsunet_hf.models.dinov2_seg.configuration_dinov2_seg import ADE20K_LABELS, VOC_LABELS

    assert len(ADE20K_LABELS) == 150 and len(set(ADE20K_LABELS)) == 150 and ADE20K_LABELS[:3] == ["wall", "building", "sky"]
    assert ADE20K_LABELS[-1] == "flag" and len(VOC_LABELS) == 21 and VOC_LABELS[15] == "person"


def test_a_two_class_config_reloads_with_its_classes_and_names_need_no_gaps(tmp_path):
    """transformers leaves LABEL_0 / LABEL_1 (its own default) out of config.json: read back, a num_labels=2 config
    got the 21 VOC classes and its saved head no longer loaded."""
    tiny(id2label=None, num_labels=2).save_pretrained(tmp_path)
    reloaded = Dinov2SegConfig.from_pretrained(tmp_path)
    assert reloaded.num_labels == 2 and reloaded.id2label == {0: "LABEL_0", 1: "LABEL_1"}
    assert reloaded.label2id == {"LABEL_0": 0, "LABEL_1": 1}
    # Names with a gap: 3 head outputs, class 2 nameless (evaluation ended in a KeyError): refused up front.
    with pytest.raises(ValueError, match=r"id2label must name the classes 0..2 .*got the ids \[0, 1, 3\]"):
        tiny(id2label={0: "a", 1: "b", 3: "d"})


def test_a_two_class_artifact_saved_without_its_classes_still_loads(tmp_path):
    """Artifacts saved before the classes were always written hold no id2label / num_labels at all for 2 classes:
    they were read as the 21 VOC classes and the saved 2-output head was refused (shape mismatch)."""
    import json

    model = randomized(Dinov2ForSemanticSegmentation(tiny(id2label=None, num_labels=2, head_type="linear")))
    model.save_pretrained(tmp_path, include_backbone=True)
    config = json.loads((tmp_path / "config.json").read_text())
    for key in ("id2label", "label2id"):  # as the older to_diff_dict wrote it
        del config[key]
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = Dinov2ForSemanticSegmentation.from_pretrained(tmp_path)
    assert loaded.config.id2label == {0: "LABEL_0", 1: "LABEL_1"}
    x = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x).logits, loaded(x).logits)
    # A dict without the bookkeeping of a saved file keeps the default classes; an explicit count is kept.
    assert Dinov2SegConfig.from_dict({"backbone_preset": "small"}).num_labels == 21
    assert Dinov2SegConfig.from_pretrained(tmp_path, num_labels=4).num_labels == 4


def test_ade20k_heads_convert_with_reduced_labels(tmp_path):
    """ADE20K annotations are 1..150 with 0 = other (the heads were trained with reduce_zero_label): the converted
    artifact's processor records it, so that `dsunet-hf evaluate` reads ADE20K masks correctly by itself."""
    head = {"decode_head.bn.weight": torch.rand(384), "decode_head.bn.bias": torch.rand(384),
            "decode_head.bn.running_mean": torch.rand(384), "decode_head.bn.running_var": torch.rand(384) + 0.5,
            "decode_head.bn.num_batches_tracked": torch.tensor(40000),
            "decode_head.conv_seg.weight": torch.randn(150, 384, 1, 1), "decode_head.conv_seg.bias": torch.randn(150)}
    torch.save({"state_dict": head}, tmp_path / "dinov2_vits14_ade20k_linear_head.pth")
    model = convert_dinov2_head_checkpoint(tmp_path / "dinov2_vits14_ade20k_linear_head.pth", tmp_path / "out")
    assert model.config.id2label[0] == "wall" and model.config.max_long_side is None  # (99999999, 512)
    assert SegmentationImageProcessor.from_pretrained(tmp_path / "out").do_reduce_labels
    convert_dinov2_head_checkpoint(tmp_path / "dinov2_vits14_ade20k_linear_head.pth", tmp_path / "raw",
                                   reduce_zero_label=False)
    assert not SegmentationImageProcessor.from_pretrained(tmp_path / "raw").do_reduce_labels
    voc = {**head, "decode_head.conv_seg.weight": torch.randn(21, 384, 1, 1), "decode_head.conv_seg.bias": torch.randn(21)}
    # A renamed file: the size is the one whose channels fit (384: ViT-S/14 linear), as the CLI has no --preset.
    torch.save({"state_dict": voc}, tmp_path / "voc2012_linear_head.pth")
    linear_voc = convert_dinov2_head_checkpoint(tmp_path / "voc2012_linear_head.pth", tmp_path / "voc")
    assert linear_voc.config.backbone_preset == "small" and linear_voc.config.head_type == "linear"
    assert linear_voc.config.max_long_side == 2048  # mmseg's VOC linear configs: scale (2048, 512)


def _class_logits(crop: torch.Tensor) -> torch.Tensor:
    """A stub head: the crop's own pixels (x4) as the logits of three classes (window averages are the image)."""
    return crop * 4


def test_logits_are_resized_to_the_output_size_before_the_softmax():
    """Upstream (mmseg): each view's window-averaged logits are resized to the original size, THEN the softmax;
    resizing the probabilities instead gives other numbers."""
    from dsunet_hf.models.dinov2_seg.modeling_dinov2_seg import segment_with_schedule

    config = tiny(crop_size=16, stride=8, test_scales=[1.0, 1.5], test_flip=True)
    torch.manual_seed(0)
    x = torch.randn(1, 3, 20, 26)
    out = (31, 43)

    def upstream(logits):
        return F.interpolate(logits, size=out, mode="bilinear", align_corners=False).softmax(1)

    for schedule in ("single", "slide"):
        got = segment_with_schedule(_class_logits, x, schedule, config, output_size=out)
        torch.testing.assert_close(got, upstream(x * 4))
        wrong_order = F.interpolate((x * 4).softmax(1), size=out, mode="bilinear", align_corners=False)
        assert (got - wrong_order).abs().max() > 1e-2
    views = [x, F.interpolate(x, size=(30, 39), mode="bilinear", align_corners=False)]
    got = segment_with_schedule(_class_logits, views, "multiscale", config, output_size=out)
    torch.testing.assert_close(got, (upstream(views[0] * 4) + upstream(views[1] * 4)) / 2)  # flips: the same here
    # The default output size is the input's (the first view's for a list): the public API as before.
    assert segment_with_schedule(_class_logits, x, "slide", config).shape == (1, 3, 20, 26)
    assert segment_with_schedule(_class_logits, views, "multiscale", config).shape == (1, 3, 20, 26)
    with pytest.raises(ValueError, match="per-scale inputs is for the 'multiscale'"):
        segment_with_schedule(_class_logits, views, "slide", config)
    with pytest.raises(ValueError, match="1 per-scale inputs for 2 test scales"):
        segment_with_schedule(_class_logits, views[:1], "multiscale", config)
    # The model's segment() takes it too.
    model = randomized(Dinov2ForSemanticSegmentation(tiny()))
    pixels = torch.randn(1, 3, 56, 70)
    with torch.no_grad():
        expected = F.interpolate(model(pixels).logits, size=(90, 113), mode="bilinear", align_corners=False).softmax(1)
    torch.testing.assert_close(model.segment(pixels, "single", output_size=(90, 113)), expected)


def test_a_bf16_model_averages_windows_and_views_in_float32():
    """bf16 logits (a model loaded in bf16) are summed over windows and views in float32: bf16 sums rounded each
    addition (probabilities summing to 0.995..1.006, other classes at near-ties)."""
    from dsunet_hf.models.dinov2_seg.modeling_dinov2_seg import segment_with_schedule

    config = tiny(crop_size=16, stride=4, test_scales=[1.0, 1.0, 1.0], test_flip=True)
    torch.manual_seed(0)
    x = (torch.randn(1, 3, 40, 44) * 3).bfloat16()  # a bf16 model's input, and its bf16 logits
    logits = _class_logits(x)
    for schedule, pixels in (("slide", x), ("multiscale", [x, x, x])):
        got = segment_with_schedule(_class_logits, pixels, schedule, config)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, logits.float().softmax(1), atol=1e-6, rtol=1e-5)


def test_multiscale_views_of_one_tensor_take_mmcv_sizes():
    """From a single tensor, the scale-r view has short side int(short x r) (mmcv's MultiScaleFlipAug floors
    640 x 1.32 = 844.8 to 844) and each side int(side x s + 0.5), s = 844 / 640."""
    from dsunet_hf.models.dinov2_seg.modeling_dinov2_seg import segment_with_schedule

    config = tiny(crop_size=10_000, stride=5_000, test_scales=[1.0, 1.32, 1.73, 2.28, 3.0], test_flip=False)
    seen = []

    def record(crop):  # one window covers a whole view
        seen.append(tuple(crop.shape[-2:]))
        return crop.new_zeros(crop.shape[0], 3, *crop.shape[-2:])

    segment_with_schedule(record, torch.zeros(1, 3, 640, 853), "multiscale", config)
    # (From the 500 x 375 original, the long sides would be 853, 1125, 1476, 1945, 2560: see test_semantic.)
    assert seen == [(640, 853), (844, 1125), (1107, 1475), (1459, 1945), (1920, 2559)]


def test_config_return_dict_false_gives_tuples():
    """``from_pretrained(repo, return_dict=False)`` (config.return_dict) gives tuples, as transformers' models (it
    was ignored); the call's own ``return_dict`` wins."""
    model = Dinov2ForSemanticSegmentation(tiny(return_dict=False)).eval()
    with torch.no_grad():
        output = model(torch.randn(1, 3, 56, 56), labels=torch.zeros(1, 56, 56, dtype=torch.long))
        assert isinstance(output, tuple) and len(output) == 2  # loss, logits
        assert not isinstance(model(torch.randn(1, 3, 56, 56), return_dict=True), tuple)

"""DSU-Net with more than two classes: one logit map per class, cross-entropy, the semantic path (as SAM2-UNet)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_HIERA
from PIL import Image
from test_dsunet import TINY_DINO, TINY_SIZE, inputs, tiny_config, to_upstream

from dsunet_hf import DSUNetForImageSegmentation
from dsunet_hf.synthetic import make_textured_shapes_dataset

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (see conftest)

CLASSES = {0: "background", 1: "stripes", 2: "checks", 3: "dots"}


def tiny_multiclass(**overrides):
    return DSUNetForImageSegmentation(tiny_config(id2label=CLASSES, **overrides)).eval()


def test_more_classes_widen_the_three_heads_and_train_with_cross_entropy():
    binary = DSUNetForImageSegmentation(tiny_config())
    assert binary.head.out_channels == binary.side1.out_channels == 1 and not binary.predicts_class_maps
    model = tiny_multiclass(loss_weights=[0.25, 0.5, 1.0])
    assert model.predicts_class_maps and model.config.label2id == {name: i for i, name in CLASSES.items()}
    assert set(model.state_dict()) == set(binary.state_dict())  # the same tensors, wider class maps
    sam, dino = inputs()
    labels = torch.randint(0, 4, (2, TINY_SIZE, TINY_SIZE))
    labels[:, :10] = 255
    out = model(sam, dino, labels=labels)
    side1, side2 = out.aux_logits
    assert out.logits.shape == side1.shape == side2.shape == (2, 4, TINY_SIZE, TINY_SIZE)
    # DSU-Net's order: weights of the 1/16 and 1/8 side outputs, then the final map.
    expected = sum(w * F.cross_entropy(m, labels, ignore_index=255)
                   for w, m in zip([0.25, 0.5, 1.0], [side1, side2, out.logits]))
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    assert model.head.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="labels hold class 7, but the model has 4 classes"):
        model(sam, dino, labels=torch.full_like(labels, 7))
    assert model(sam, dino).aux_logits is None  # inference: the final map only


def test_num_labels_sets_the_class_maps_and_the_ignore_index_is_checked():
    from dsunet_hf import BiRefNetConfig, DSUNetConfig

    assert DSUNetConfig(num_labels=5).num_output_channels == 5 and DSUNetConfig().num_output_channels == 1
    assert DSUNetConfig(num_labels=5).crop_size == 352 and DSUNetConfig().semantic_loss_ignore_index == 255
    with pytest.raises(ValueError, match="semantic_loss_ignore_index must be an integer label value, got 1.5"):
        DSUNetConfig(semantic_loss_ignore_index=1.5)
    # Gapped ids gave a 3-class head with class 2 unnamed: evaluation ended in a KeyError (as the DINOv2 heads).
    from dsunet_hf import Sam2UNetConfig

    for config_class in (DSUNetConfig, Sam2UNetConfig):
        with pytest.raises(ValueError, match=r"id2label must name the classes 0..2 \(one per head output\), got the "
                                             r"ids \[0, 1, 5\]"):
            config_class(id2label={0: "background", 1: "liver", 5: "kidney"})
    with pytest.raises(ValueError, match="num_labels must be at most 2, got 5; SAM2-UNet, DSU-Net and the DINOv2"):
        BiRefNetConfig(num_labels=5)


def test_segment_returns_class_probabilities_at_any_input_size():
    model = tiny_multiclass()
    probabilities = model.segment(torch.randn(1, 3, 50, 70))
    assert probabilities.shape == (1, 4, 50, 70)
    torch.testing.assert_close(probabilities.sum(1), torch.ones(1, 50, 70))
    square = torch.randn(1, 3, TINY_SIZE, TINY_SIZE)  # at the model size: the softmax of the logits (DINO view resized)
    with torch.no_grad():
        torch.testing.assert_close(model.segment(square), model(square).logits.softmax(1))
    with pytest.raises(ValueError, match="DSU-Net has one inference schedule, 'single'"):
        model.segment(square, "slide")
    with pytest.raises(ValueError, match="segment\\(\\) is for multi-class models"):
        DSUNetForImageSegmentation(tiny_config()).segment(square)


def test_a_wider_upstream_head_converts_with_its_class_count(tmp_path, monkeypatch):
    """A DGSUNet trained with a widened head: C > 2 channels give a C-class model, two channels (background,
    foreground) the binary model's single logit l1 - l0."""
    import dsunet_hf.models.dsunet as dsunet_models
    from dsunet_hf.convert.dsunet import convert_dsunet_checkpoint, convert_dsunet_state_dict

    model = tiny_multiclass()
    upstream: dict = {}
    for key, tensor in model.state_dict().items():
        to_upstream(key, tensor, upstream)
    torch.save(upstream, tmp_path / "DGSUNet-organs.pth")
    # The tiny trunks match no published preset: the inferred config is this tiny one, with what the converter reads.
    monkeypatch.setattr("dsunet_hf.convert.dsunet.infer_dsunet_presets", lambda *a: ("tiny", "small"))
    monkeypatch.setattr(dsunet_models, "DSUNetConfig",
                        lambda **kw: tiny_config(**{k: v for k, v in kw.items() if k in ("num_labels", "id2label")}))
    converted = convert_dsunet_checkpoint(tmp_path / "DGSUNet-organs.pth", tmp_path / "out", include_backbone=True)
    assert converted.config.num_labels == 4 and converted.head.out_channels == 4
    names = {0: "background", 1: "liver", 2: "kidney", 3: "spleen"}
    named = convert_dsunet_checkpoint(tmp_path / "DGSUNet-organs.pth", tmp_path / "named", id2label=names)
    assert named.config.id2label == names and named.head.out_channels == 4
    sam, dino = inputs(1)
    with torch.no_grad():
        torch.testing.assert_close(converted(sam, dino).logits, model(sam, dino).logits, rtol=0, atol=0)

    binary = DSUNetForImageSegmentation(tiny_config()).state_dict()
    for name in ("side1", "side2", "head"):  # channel 1 - channel 0 = the binary model's logit
        for kind in ("weight", "bias"):
            logit = binary[f"{name}.{kind}"]
            upstream[f"{name}.{kind}"] = torch.cat([-logit / 2, logit / 2])
    two = convert_dsunet_state_dict(upstream)
    for key in [f"{name}.{kind}" for name in ("side1", "side2", "head") for kind in ("weight", "bias")]:
        torch.testing.assert_close(two[key], binary[key])
    assert DSUNetForImageSegmentation(tiny_config()).load_state_dict(two, strict=False).unexpected_keys == []


@pytest.fixture(scope="module")
def shapes_data(tmp_path_factory):
    return make_textured_shapes_dataset(tmp_path_factory.mktemp("shapes") / "data", num_images=4, size=(80, 96),
                                        num_classes=3, seed=3)


def test_train_save_predict_and_evaluate_on_label_maps(shapes_data, tmp_path):
    """id2label.json beside the data makes DSU-Net multi-class: it trains on label maps, validates with mIoU, and
    the saved model keeps its classes, predicts palette PNGs and evaluates per class."""
    from dsunet_hf.cli import main as cli_main
    from dsunet_hf.predict import load_model_and_processor
    from dsunet_hf.semantic import predict_classes
    from dsunet_hf.training import TrainingArguments, train

    overrides = {"hiera_config": TINY_HIERA, "dino_preset": "small", "dino_config": TINY_DINO, "dino_image_size": 56,
                 "decoder_channels": 16, "fusion_reduction": 4}
    output = tmp_path / "run"
    train(TrainingArguments(
        model="dsunet", train_data=str(shapes_data), output_dir=str(output), backbone="random",
        backbone_preset="tiny", config_overrides=json.dumps(overrides), image_size=TINY_SIZE, batch_size=2,
        max_steps=2, eval_steps=2, save_steps=2, validation_ratio=0.25, report_to="none", progress=False,
        logging_steps=1,
    ))
    logged = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert any(0 <= row.get("val/mIoU", -1) <= 1 for row in logged)
    assert not any("val/S-measure" in row for row in logged)
    names = {int(k): v for k, v in json.loads((shapes_data / "id2label.json").read_text()).items()}
    model, _ = load_model_and_processor(str(output / "model"))
    assert isinstance(model, DSUNetForImageSegmentation) and model.config.id2label == names
    assert model.head.out_channels == len(names) == 4
    card = (output / "model" / "README.md").read_text()
    assert "DSU-Net](https://arxiv.org/abs/2503.21187) multi-class segmentation model (4 classes" in card
    assert "softmax cross-entropy (label 255 ignored)" in card

    assert cli_main(["predict", "--model", str(output / "model"), str(shapes_data / "images" / "0000.png"),
                     "--output-dir", str(tmp_path / "pred")]) == 0
    mask = Image.open(tmp_path / "pred" / "masks" / "0000.png")
    assert mask.mode == "P" and mask.size == (96, 80) and set(np.unique(np.asarray(mask))) <= {0, 1, 2, 3}
    image = Image.open(shapes_data / "images" / "0000.png").convert("RGB")
    np.testing.assert_array_equal(np.asarray(mask), predict_classes(model, image))

    assert cli_main(["evaluate", "--model", str(output / "model"), "--data", str(shapes_data), "--output-dir",
                     str(tmp_path / "eval"), "--no-progress", "--max-samples", "1"]) == 0
    report = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    (scores,) = report["results"].values()
    assert 0 <= scores["mIoU"] <= 1
    assert set(next(iter(report["info"]["per_class_iou"].values()))) == set(names.values())


def test_a_model_given_another_models_config_says_so():
    # Was: AttributeError 'DSUNetConfig' object has no attribute 'rfb_channels' (the README's snippet, followed
    # with the other config class, reached it).
    from dsunet_hf import DSUNetConfig, Sam2UNetConfig, Sam2UNetForImageSegmentation

    with pytest.raises(TypeError, match="^Sam2UNetForImageSegmentation takes a Sam2UNetConfig, got DSUNetConfig"):
        Sam2UNetForImageSegmentation(DSUNetConfig())
    with pytest.raises(TypeError, match="^DSUNetForImageSegmentation takes a DSUNetConfig, got Sam2UNetConfig"):
        DSUNetForImageSegmentation(Sam2UNetConfig())

"""SAM2-UNet with more than two classes: one logit map per class, cross-entropy, the semantic path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_HIERA, TINY_SIZE, tiny_sam2_unet_config
from PIL import Image

from dsunet_hf import BiRefNetConfig, DSUNetConfig, Sam2UNetConfig, Sam2UNetForImageSegmentation
from dsunet_hf.synthetic import make_textured_shapes_dataset

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (see conftest)

CLASSES = {0: "background", 1: "stripes", 2: "checks", 3: "dots"}


def tiny_multiclass(**overrides):
    return Sam2UNetForImageSegmentation(tiny_sam2_unet_config(id2label=CLASSES, **overrides)).eval()


def test_two_classes_stay_the_papers_single_map_and_more_get_one_map_each():
    binary = Sam2UNetForImageSegmentation(tiny_sam2_unet_config())
    assert not binary.config.is_multiclass and binary.head.out_channels == 1 and not binary.predicts_class_maps
    model = tiny_multiclass()
    assert model.config.num_labels == 4 and model.predicts_class_maps
    assert model.config.label2id == {name: index for index, name in CLASSES.items()}
    out = model(torch.randn(2, 3, TINY_SIZE, TINY_SIZE), output_aux_logits=True)
    assert out.logits.shape == (2, 4, TINY_SIZE, TINY_SIZE)
    assert [a.shape for a in out.aux_logits] == [(2, 4, TINY_SIZE, TINY_SIZE)] * 2
    assert model(torch.randn(2, 3, TINY_SIZE, TINY_SIZE)).aux_logits is None  # inference: the final map only


def test_loss_is_weighted_cross_entropy_over_the_three_maps_ignoring_255():
    model = tiny_multiclass(loss_weights=[1.0, 0.5, 0.25])
    pixels = torch.randn(2, 3, TINY_SIZE, TINY_SIZE)
    labels = torch.randint(0, 4, (2, TINY_SIZE, TINY_SIZE))
    labels[:, :10] = 255
    out = model(pixels, labels=labels)
    maps = [out.logits, *out.aux_logits]
    expected = sum(w * F.cross_entropy(m, labels, ignore_index=255) for w, m in zip([1.0, 0.5, 0.25], maps))
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    assert model.head.weight.grad is not None and model.head.weight.grad.abs().sum() > 0
    # Only ignored pixels: no signal, and no NaN.
    assert model(pixels, labels=torch.full_like(labels, 255)).loss.item() == 0.0
    with pytest.raises(ValueError, match="must match the input size"):
        model(pixels, labels=labels[:, :8])


def test_segment_returns_class_probabilities_at_any_input_size():
    model = tiny_multiclass()
    probabilities = model.segment(torch.randn(1, 3, 50, 70))
    assert probabilities.shape == (1, 4, 50, 70)
    torch.testing.assert_close(probabilities.sum(1), torch.ones(1, 50, 70))
    square = torch.randn(1, 3, TINY_SIZE, TINY_SIZE)  # at the model size: exactly the softmax of the logits
    torch.testing.assert_close(model.segment(square), model(square).logits.softmax(1))
    with pytest.raises(ValueError, match="one inference schedule"):
        model.segment(square, "slide")
    from PIL import Image

    from dsunet_hf.semantic import class_probabilities

    photo = Image.new("RGB", (40, 30))
    for schedule in ("slide", "multiscale"):  # multiscale was an AttributeError (no test_scales) before the model
        with pytest.raises(ValueError, match="one inference schedule"):
            class_probabilities(model, photo, schedule)
    with pytest.raises(ValueError, match="multi-class"):
        Sam2UNetForImageSegmentation(tiny_sam2_unet_config()).segment(square)


def test_single_map_models_refuse_more_classes_instead_of_ignoring_them():
    with pytest.raises(ValueError, match="num_labels must be at most 2"):
        BiRefNetConfig(num_labels=5)
    assert Sam2UNetConfig(num_labels=5).num_output_channels == 5
    assert DSUNetConfig(num_labels=5).num_output_channels == 5


def test_a_multiclass_upstream_checkpoint_converts_with_its_class_count(tmp_path):
    """The authors' advice for multi-class data is to widen the head: the converter reads C from it."""
    from test_convert import to_upstream_key

    from dsunet_hf.convert.sam2_unet import convert_sam2_unet_checkpoint

    model = Sam2UNetForImageSegmentation(Sam2UNetConfig(backbone_preset="tiny", num_labels=3)).eval()
    torch.save({to_upstream_key(k): v for k, v in model.state_dict().items()}, tmp_path / "SAM2UNet-organs.pth")
    converted = convert_sam2_unet_checkpoint(tmp_path / "SAM2UNet-organs.pth", tmp_path / "out", include_backbone=True)
    assert converted.config.num_labels == 3 and converted.config.backbone_preset == "tiny"
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(converted(pixels).logits, model(pixels).logits, rtol=0, atol=0)
    # The checkpoint holds no class names: --id2label gives them (was: LABEL_i, edited into config.json by hand).
    from dsunet_hf.cli import main

    (tmp_path / "id2label.json").write_text(json.dumps({"0": "background", "1": "liver", "2": "kidney"}))
    assert main(["convert", "sam2-unet", str(tmp_path / "SAM2UNet-organs.pth"), str(tmp_path / "named"),
                 "--id2label", str(tmp_path / "id2label.json")]) == 0
    assert Sam2UNetConfig.from_pretrained(tmp_path / "named").id2label == {0: "background", 1: "liver", 2: "kidney"}
    (tmp_path / "id2label.json").write_text(json.dumps({"0": "background", "1": "liver"}))
    with pytest.raises(SystemExit, match=r"id2label\.json names 2 classes, but the head in \S+SAM2UNet-organs\.pth "
                                         r"predicts 3$"):
        main(["convert", "sam2-unet", str(tmp_path / "SAM2UNet-organs.pth"), str(tmp_path / "other"),
              "--id2label", str(tmp_path / "id2label.json")])


@pytest.fixture(scope="module")
def shapes_data(tmp_path_factory):
    return make_textured_shapes_dataset(tmp_path_factory.mktemp("shapes") / "data", num_images=16, size=(80, 96),
                                        num_classes=3, seed=3)


def test_train_evaluate_predict_and_pipeline_on_label_maps(shapes_data, tmp_path, capsys):
    """id2label.json in the data makes SAM2-UNet multi-class: trains on label maps, validates with mIoU, and
    the saved model predicts palette PNGs, evaluates per class and runs in the transformers pipeline."""
    from transformers import pipeline

    from dsunet_hf.cli import main as cli_main
    from dsunet_hf.predict import load_model_and_processor
    from dsunet_hf.training import TrainingArguments, train

    output = tmp_path / "run"
    train(TrainingArguments(
        model="sam2-unet", train_data=str(shapes_data), output_dir=str(output), backbone="random",
        backbone_preset="tiny", config_overrides=json.dumps({"hiera_config": TINY_HIERA, "rfb_channels": 16}),
        image_size=TINY_SIZE, batch_size=4, max_steps=4, eval_steps=4, save_steps=4, validation_ratio=0.25,
        report_to="none", progress=False, logging_steps=1,
    ))
    logged = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert any(0 <= row.get("val/mIoU", -1) <= 1 for row in logged)
    assert not any("val/S-measure" in row for row in logged)
    config = json.loads((output / "model" / "config.json").read_text())
    names = json.loads((shapes_data / "id2label.json").read_text())
    assert config["id2label"] == names and len(names) == 4
    card = (output / "model" / "README.md").read_text()
    assert "multi-class segmentation model (4 classes" in card and "cross-entropy" in card and "onnx" in card

    with pytest.raises(ValueError, match=r"the validation of this model \(semantic\) computes mIoU, mAcc, aAcc"):
        train(TrainingArguments(model="sam2-unet", train_data=str(shapes_data), output_dir=str(tmp_path / "x"),
                                backbone="random", backbone_preset="tiny", metric_for_best_model="S-measure",
                                config_overrides=json.dumps({"hiera_config": TINY_HIERA, "rfb_channels": 16}),
                                image_size=TINY_SIZE, report_to="none", progress=False))

    model, processor = load_model_and_processor(str(output / "model"))
    assert cli_main(["predict", "--model", str(output / "model"), str(shapes_data / "images"), "--output-dir",
                     str(tmp_path / "pred"), "--overlay"]) == 0
    mask = Image.open(tmp_path / "pred" / "masks" / "0000.png")
    assert mask.mode == "P" and mask.size == (96, 80) and set(np.unique(np.asarray(mask))) <= {0, 1, 2, 3}
    from dsunet_hf.semantic import predict_classes

    image = Image.open(shapes_data / "images" / "0000.png").convert("RGB")
    np.testing.assert_array_equal(np.asarray(mask), predict_classes(model, image))

    assert cli_main(["evaluate", "--model", str(output / "model"), "--data", str(shapes_data), "--output-dir",
                     str(tmp_path / "eval"), "--no-progress"]) == 0
    report = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    (scores,) = report["results"].values()
    assert 0 <= scores["mIoU"] <= 1
    assert set(next(iter(report["info"]["per_class_iou"].values()))) == set(names.values())

    segments = pipeline("image-segmentation", model=model, image_processor=processor)(image)
    assert segments and {s["label"] for s in segments} <= set(names.values())
    assert all(s["mask"].size == image.size for s in segments)


def test_push_then_pull_keeps_the_classes_and_the_outputs(offline_hub, tmp_path):
    from helpers import tiny_hiera, write_transformers_trunk_repo
    from transformers import AutoModelForImageSegmentation

    offline_hub.add("test-org/tiny-hiera", write_transformers_trunk_repo(tmp_path / "trunk", tiny_hiera()))
    model = Sam2UNetForImageSegmentation.from_pretrained_backbones(tiny_sam2_unet_config(id2label=CLASSES)).eval()
    with torch.no_grad():
        model.head.bias.copy_(torch.tensor([0.3, -0.2, 0.1, 0.0]))
    model.push_to_hub("me/sam2unet-organs", metrics={"mIoU": 0.5})
    pulled = AutoModelForImageSegmentation.from_pretrained("me/sam2unet-organs").eval()
    assert pulled.config.id2label == CLASSES and pulled.head.out_channels == 4
    pixels = torch.randn(1, 3, TINY_SIZE, TINY_SIZE)
    with torch.no_grad():
        torch.testing.assert_close(pulled(pixels).logits, model(pixels).logits, rtol=0, atol=0)


def test_class_index_masks_given_to_a_binary_model_are_flagged(tmp_path, caplog):
    from dsunet_hf.image_io import class_index_maximum
    from dsunet_hf.semantic import palette_png
    from dsunet_hf.training import warn_if_class_index_masks

    classes = np.zeros((20, 30), np.uint8)
    classes[5:10, 5:10], classes[12:18, 20:28], classes[0, 0] = 1, 3, 255
    Image.fromarray(classes).save(tmp_path / "indices.png")
    palette_png(classes, 4).save(tmp_path / "palette.png")
    soft = np.linspace(0, 255, 600).reshape(20, 30).round().astype(np.uint8)
    for name, array in {"binary255": (classes > 0) * 255, "binary01": classes.clip(0, 1), "soft": soft}.items():
        Image.fromarray(np.asarray(array, np.uint8)).save(tmp_path / f"{name}.png")
    assert class_index_maximum(tmp_path / "indices.png") == 3 and class_index_maximum(tmp_path / "palette.png") == 3
    for name in ("binary255", "binary01", "soft"):
        assert class_index_maximum(tmp_path / f"{name}.png") is None, name
    (tmp_path / "text.png").write_text("not an image")
    assert class_index_maximum(tmp_path / "text.png") is None

    rows = [{"mask": str(tmp_path / "indices.png")}, {"mask": str(tmp_path / "palette.png")}]
    with caplog.at_level("WARNING"):
        assert warn_if_class_index_masks(rows, "organs/", "Sam2UNetForImageSegmentation") == 3
    assert "class indices (0..3)" in caplog.text and "num_labels" in caplog.text and "organs/" in caplog.text
    caplog.clear()
    assert warn_if_class_index_masks([{"mask": str(tmp_path / "binary255.png")}] + rows, "x", "M") is None
    assert not caplog.text


def test_a_label_beyond_the_models_classes_names_the_file(tmp_path):
    from dsunet_hf.semantic import SemanticSegmentationTransform

    labels = np.zeros((40, 40), np.uint8)
    labels[10:20, 10:20] = 5
    Image.fromarray(labels).save(tmp_path / "mask.png")
    Image.new("RGB", (40, 40)).save(tmp_path / "image.png")
    transform = SemanticSegmentationTransform(tiny_multiclass().default_image_processor(), train=True, crop_size=32,
                                              num_labels=4)
    batch = {"image": [str(tmp_path / "image.png")], "mask": [str(tmp_path / "mask.png")], "sample_id": [0]}
    with pytest.raises(ValueError, match=r"mask\.png.*class 5 in the label map, but the model has 4 classes"):
        transform(batch)
    labels[labels == 5] = 255  # ignored pixels are fine
    Image.fromarray(labels).save(tmp_path / "mask.png")
    assert transform(batch)["labels"][0].shape == (32, 32)


def test_a_trained_head_is_reused_for_other_classes_with_ignore_mismatched_sizes(tmp_path):
    four = tiny_multiclass()
    four.save_pretrained(tmp_path / "four", include_backbone=True)
    from dsunet_hf.modeling_utils import CheckpointMismatchError

    six = {i: f"class {i}" for i in range(6)}
    with pytest.raises(CheckpointMismatchError, match=r"shape mismatches: .*head"):  # unasked: refused, naming it
        Sam2UNetForImageSegmentation.from_pretrained(tmp_path / "four", id2label=six)
    reused = Sam2UNetForImageSegmentation.from_pretrained(tmp_path / "four", id2label=six, ignore_mismatched_sizes=True)
    assert reused.config.num_labels == 6 and reused.head.out_channels == 6
    class_maps = ("head.", "side1.", "side2.")  # the final and the two deep-supervision maps
    kept = {k: v for k, v in four.state_dict().items() if not k.startswith(class_maps)}
    assert [k for k, v in kept.items() if not torch.equal(reused.state_dict()[k], v)] == []

"""Multi-class path: label maps, augmentation, evaluation, palette output."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from dsunet_hf import Dinov2ForSemanticSegmentation, Dinov2SegConfig, SegmentationImageProcessor
from dsunet_hf.image_io import load_label_map
from dsunet_hf.semantic import (
    SemanticSegmentationTransform,
    evaluate_semantic,
    overlay_with_legend,
    palette_png,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (see conftest)


def test_label_maps_from_palette_gray_and_rgb_files(tmp_path):
    classes = np.array([[0, 1, 2], [255, 2, 1]], dtype=np.uint8)
    palette_png(classes, 3).save(tmp_path / "p.png")
    Image.fromarray(classes).save(tmp_path / "l.png")
    Image.fromarray(np.stack([classes] * 3, -1)).save(tmp_path / "gray_rgb.png")
    # With an alpha channel (GIMP exports): the values or palette indices, as RGBA drops alpha (was "must be 2-D").
    Image.fromarray(np.stack([classes, np.full_like(classes, 255)], -1), "LA").save(tmp_path / "la.png")
    for name in ("p.png", "l.png", "gray_rgb.png", "la.png"):
        assert np.array_equal(load_label_map(tmp_path / name), classes), name
    colour = np.zeros((2, 2, 3), np.uint8)
    colour[0, 0] = (128, 0, 0)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    with pytest.raises(ValueError, match="colour.png: an RGB colour label map"):
        load_label_map(tmp_path / "colour.png")
    assert np.array_equal(load_label_map(tmp_path / "l.png", reduce_zero_label=True), [[255, 0, 1], [255, 1, 0]])


@pytest.fixture
def rows(tmp_path):
    rng = np.random.default_rng(0)
    for index in range(3):
        Image.fromarray(rng.integers(0, 255, (30 + index, 40, 3), dtype=np.uint8)).save(tmp_path / f"i{index}.png")
        palette_png(rng.integers(0, 3, (30 + index, 40)), 3).save(tmp_path / f"m{index}.png")
    return datasets.Dataset.from_dict({"image": [str(tmp_path / f"i{i}.png") for i in range(3)],
                                       "mask": [str(tmp_path / f"m{i}.png") for i in range(3)], "sample_id": [0, 1, 2]})


def test_training_transform_crops_pads_and_is_deterministic(rows):
    transform = SemanticSegmentationTransform(SegmentationImageProcessor(), train=True, crop_size=48, base_size=28,
                                              scale_range=(0.5, 1.0), seed=3)
    first = transform(rows[:3])
    assert all(p.shape == (3, 48, 48) for p in first["pixel_values"])
    assert all(labels.shape == (48, 48) and labels.dtype == torch.int64 for labels in first["labels"])
    assert all((labels == 255).any() for labels in first["labels"])  # padding is ignored, image smaller than crop
    again = transform(rows[:3])
    assert all(torch.equal(a, b) for a, b in zip(first["labels"], again["labels"]))
    transform.epoch = 1
    assert any(not torch.equal(a, b) for a, b in zip(first["labels"], transform(rows[:3])["labels"]))


def test_evaluate_semantic_reports_named_classes(rows):
    config = Dinov2SegConfig(backbone_preset="small", dino_config=dict(hidden_size=32, num_hidden_layers=2,
                             num_attention_heads=4), crop_size=28, stride=14, id2label={0: "a", 1: "b", 2: "c"})
    result = evaluate_semantic(Dinov2ForSemanticSegmentation(config), rows, schedule="slide")
    assert set(result["per_class_iou"]) == {"a", "b", "c"} and 0 <= result["mIoU"] <= 1 and 0 <= result["aAcc"] <= 1


@pytest.mark.parametrize("names, reported", [(("a", "b", "c"), ("a", "b", "c")),
                                             (("void", "b", "void"), ("void (0)", "b", "void (2)"))])
def test_evaluate_semantic_against_a_hand_computed_case(tmp_path, names, reported):
    """Two ADE20K-style label maps (0 = other, 255 unlabelled) read reduced, fixed predictions: dataset-level
    intersections / unions counted by hand. A name shared by two classes keeps both IoUs (one was dropped)."""
    labels = [np.array([[1, 1, 2, 2], [0, 3, 3, 255]], np.uint8), np.array([[2, 2, 2, 0], [1, 1, 3, 3]], np.uint8)]
    predictions = iter([np.array([[0, 0, 1, 0], [2, 2, 2, 2]]), np.array([[1, 1, 0, 0], [0, 2, 2, 2]])])
    for index, label in enumerate(labels):
        Image.fromarray(label).save(tmp_path / f"m{index}.png")
        Image.fromarray(np.zeros((2, 4, 3), np.uint8)).save(tmp_path / f"i{index}.png")
    rows = datasets.Dataset.from_dict({"image": [str(tmp_path / f"i{i}.png") for i in range(2)],
                                       "mask": [str(tmp_path / f"m{i}.png") for i in range(2)]})
    config = Dinov2SegConfig(backbone_preset="small", dino_config=dict(hidden_size=32, num_hidden_layers=1,
                             num_attention_heads=4), crop_size=28, id2label=dict(enumerate(names)))
    model = Dinov2ForSemanticSegmentation(config)
    model.segment = lambda inputs, schedule, output_size: torch.nn.functional.one_hot(
        torch.as_tensor(next(predictions)), 3).permute(2, 0, 1)[None].float()
    result = evaluate_semantic(model, rows, reduce_zero_label=True)
    # reduced labels [[0, 0, 1, 1], [-, 2, 2, -]] and [[1, 1, 1, -], [0, 0, 2, 2]]: I / U = 3/6, 3/5, 4/5
    assert result["per_class_iou"] == pytest.approx(dict(zip(reported, (0.5, 0.6, 0.8))))
    assert result["mIoU"] == pytest.approx(1.9 / 3) and result["aAcc"] == pytest.approx(10 / 13)


def test_overlay_has_a_legend_of_present_classes():
    image = Image.new("RGB", (40, 30), (200, 200, 200))
    classes = np.zeros((30, 40), dtype=np.int64)
    classes[:, 20:] = 2
    sheet = overlay_with_legend(image, classes, {0: "background", 1: "cat", 2: "dog"})
    assert sheet.size == (200, 44) and sheet.getpixel((10, 10)) != sheet.getpixel((30, 10))


def test_cli_predict_and_evaluate_a_semantic_model(rows, tmp_path, capsys):
    import json
    import shutil

    from dsunet_hf.cli import main as cli_main

    config = Dinov2SegConfig(backbone_preset="small", dino_config=dict(hidden_size=32, num_hidden_layers=2,
                             num_attention_heads=4), crop_size=28, stride=14, id2label={0: "a", 1: "b", 2: "c"})
    model = Dinov2ForSemanticSegmentation(config).eval()
    model.save_pretrained(tmp_path / "model", include_backbone=True)
    data = tmp_path / "data"
    for kind, column in (("images", "image"), ("masks", "mask")):
        (data / kind).mkdir(parents=True)
        for i, path in enumerate(rows[column]):
            shutil.copy(path, data / kind / f"{i}.png")
    assert cli_main(["predict", "--model", str(tmp_path / "model"), str(data / "images"), "--output-dir",
                     str(tmp_path / "out"), "--overlay"]) == 0
    written = Image.open(tmp_path / "out" / "masks" / "1.png")
    assert written.mode == "P" and written.size == (40, 31) and set(np.unique(np.asarray(written))) <= {0, 1, 2}
    assert Image.open(tmp_path / "out" / "overlays" / "1.png").width == 40 + 160
    for flags in (["--cutout"], ["--threshold", "0.5"], ["--background", "white"]):  # foreground-map options: refused
        with pytest.raises(SystemExit, match="predicts class maps"):
            cli_main(["predict", "--model", str(tmp_path / "model"), str(data / "images"), "--output-dir",
                      str(tmp_path / "refused"), *flags])
    assert cli_main(["evaluate", "--model", str(tmp_path / "model"), "--data", str(data), "--output-dir",
                     str(tmp_path / "eval")]) == 0
    report = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert "mIoU" in report["results"]["data"] and set(report["info"]["per_class_iou"]["data"]) == {"a", "b", "c"}
    assert "per-class IoU" in capsys.readouterr().out
    # A truncated image (its header reads) is skipped, not fatal; an image without a mask was left out when the
    # data loaded: the report names both and counts what was scored.
    count = len(rows["image"])
    whole = (data / "images" / "0.png").read_bytes()
    (data / "images" / "truncated.png").write_bytes(whole[: len(whole) // 2])
    shutil.copy(data / "masks" / "0.png", data / "masks" / "truncated.png")
    shutil.copy(data / "images" / "0.png", data / "images" / "unpaired.png")
    assert cli_main(["evaluate", "--model", str(tmp_path / "model"), "--data", str(data), "--output-dir",
                     str(tmp_path / "eval-bad")]) == 0
    info = json.loads((tmp_path / "eval-bad" / "evaluation.json").read_text())["info"]
    skipped = info["skipped"]["data"]
    assert len(skipped) == 2 and "truncated.png" in skipped[0] and "unpaired.png" in skipped[1]
    assert not skipped[0].endswith("(left out when loading)") and skipped[1].endswith("(left out when loading)")
    assert info["evaluated_samples"] == {"data": count}
    # A local folder is recorded by its absolute path: `push --evaluation` run from elsewhere still knows it is no
    # Hub dataset id.
    assert info["data"] == {"data": str(data.resolve())}


def test_crops_avoid_a_dominant_class_when_they_can():
    labels = torch.zeros(100, 100, dtype=torch.int64)
    labels[:, 50:] = 1  # 29 of 41 crop positions mix the classes within the 0.75 ratio
    transform = SemanticSegmentationTransform(SegmentationImageProcessor(), train=True, crop_size=60, seed=0)
    import random

    for seed in range(20):
        top, left = transform._crop_origin(labels, random.Random(seed))
        crop = labels[top: top + 60, left: left + 60]
        share = (crop == 1).float().mean().item()
        assert 0.25 < share < 0.75, (seed, left)  # a mixed crop was found within 10 tries


def test_photometric_distortion_is_seeded_and_keeps_size():
    import random

    from dsunet_hf.semantic import photometric_distortion

    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8))
    a, b = photometric_distortion(image, random.Random(1)), photometric_distortion(image, random.Random(1))
    assert a.size == image.size and a.mode == "RGB" and np.array_equal(np.asarray(a), np.asarray(b))
    assert any(not np.array_equal(np.asarray(photometric_distortion(image, random.Random(s))), np.asarray(image))
               for s in range(4))

    class Choices:  # the draws in order: p < 0.5 applies a step; uniform() gives its amount
        def __init__(self, draws, amounts):
            self.draws, self.amounts = iter(draws), iter(amounts)

        def random(self):
            return next(self.draws)

        def uniform(self, low, high):
            return next(self.amounts)

    # mmseg's contrast multiplies the pixels (PIL's blends with the mean grey: (115, 55, 25) here) ...
    flat = Image.new("RGB", (4, 4), (100, 60, 40))
    contrast = photometric_distortion(flat, Choices([0.9, 0.1, 0.1, 0.9, 0.9], [1.5]))
    assert np.asarray(contrast)[0, 0].tolist() == [150, 90, 60]
    # ... and its saturation scales HSV's S (PIL's blends with the grey version).
    saturated = np.asarray(photometric_distortion(flat, Choices([0.9, 0.9, 0.1, 0.9, 0.9], [0.5])))[0, 0]
    hsv = np.asarray(Image.fromarray(saturated[None, None]).convert("HSV"))[0, 0]
    assert abs(int(hsv[1]) - 153 // 2) <= 2 and abs(int(hsv[2]) - 100) <= 1  # S 153 -> 76, V kept


def test_size_mismatch_names_both_files(tmp_path):
    Image.new("RGB", (40, 30)).save(tmp_path / "img.png")
    palette_png(np.zeros((10, 10), np.uint8), 2).save(tmp_path / "lab.png")
    rows = datasets.Dataset.from_dict({"image": [str(tmp_path / "img.png")], "mask": [str(tmp_path / "lab.png")],
                                       "sample_id": [0]})
    transform = SemanticSegmentationTransform(SegmentationImageProcessor(), train=True, crop_size=16)
    with pytest.raises(ValueError, match=r"lab\.png / .*img\.png: label map is 10x10 but the image is 40x30"):
        transform(rows[:1])



def test_a_label_outside_the_classes_after_reduction_names_its_file(tmp_path):
    """With --reduce-zero-label, a label beyond the classes is reported with its file and its own value (evaluation
    said only "labels outside 0..2"; training told to pass the flag it had)."""
    Image.new("RGB", (40, 30)).save(tmp_path / "img.png")
    Image.fromarray(np.full((30, 40), 4, np.uint8)).save(tmp_path / "lab.png")  # 4 -> class 3 of a 3-class model
    rows = datasets.Dataset.from_dict({"image": [str(tmp_path / "img.png")], "mask": [str(tmp_path / "lab.png")],
                                       "sample_id": [0]})
    message = r"lab\.png / .*img\.png: label 4 in the label map \(class 3 after --reduce-zero-label\), but the model has 3"
    config = Dinov2SegConfig(backbone_preset="small", dino_config=dict(hidden_size=32, num_hidden_layers=1,
                             num_attention_heads=4), crop_size=28, stride=14, id2label={0: "a", 1: "b", 2: "c"})
    with pytest.raises(ValueError, match=message):
        evaluate_semantic(Dinov2ForSemanticSegmentation(config), rows, reduce_zero_label=True)
    transform = SemanticSegmentationTransform(SegmentationImageProcessor(), train=True, crop_size=16,
                                              reduce_zero_label=True, num_labels=3)
    with pytest.raises(ValueError, match=message) as error:
        transform(rows[:1])
    assert "pass --reduce-zero-label" not in str(error.value)

def _tiny_head(tmp_path, processor_reduces: bool):
    config = Dinov2SegConfig(backbone_preset="small", dino_config=dict(hidden_size=32, num_hidden_layers=2,
                             num_attention_heads=4), crop_size=28, stride=14, id2label={0: "a", 1: "b", 2: "c"},
                             test_scales=[1.0, 1.5])  # multiscale: a few windows, not the default 5 scales' hundreds
    model = Dinov2ForSemanticSegmentation(config).eval()
    model.save_pretrained(tmp_path / "model", include_backbone=True)
    processor = model.default_image_processor()
    processor.do_reduce_labels = processor_reduces
    processor.save_pretrained(tmp_path / "model")
    return model


def test_evaluate_reads_ade20k_style_labels_as_the_model_was_trained_and_takes_a_schedule(tmp_path, capsys):
    """ADE20K labels (0 = other, classes 1..K): the saved processor's do_reduce_labels decides how evaluate reads
    them; --schedule picks the inference schedule; both land in the report."""
    import json

    from dsunet_hf.cli import main as cli_main

    rng = np.random.default_rng(1)
    data = tmp_path / "ade"
    for kind in ("images", "masks"):
        (data / kind).mkdir(parents=True)
    for index in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 44, 3), dtype=np.uint8)).save(data / "images" / f"{index}.png")
        Image.fromarray(rng.integers(0, 4, (40, 44)).astype(np.uint8)).save(data / "masks" / f"{index}.png")  # 0..3
    rows = datasets.Dataset.from_dict({"image": sorted(str(p) for p in (data / "images").iterdir()),
                                       "mask": sorted(str(p) for p in (data / "masks").iterdir())})
    model = _tiny_head(tmp_path, processor_reduces=True)
    assert SegmentationImageProcessor.from_pretrained(tmp_path / "model").do_reduce_labels
    expected = {schedule: evaluate_semantic(model, rows, schedule=schedule, reduce_zero_label=True)
                for schedule in ("slide", "multiscale")}
    assert expected["slide"]["mIoU"] != expected["multiscale"]["mIoU"]  # the schedule changes the numbers here
    for schedule in ("slide", "multiscale"):
        out = tmp_path / f"eval-{schedule}"
        assert cli_main(["evaluate", "--model", str(tmp_path / "model"), "--data", str(data), "--schedule", schedule,
                         "--output-dir", str(out)]) == 0
        report = json.loads((out / "evaluation.json").read_text())
        assert report["results"]["ade"]["mIoU"] == pytest.approx(expected[schedule]["mIoU"], abs=1e-12)
        assert report["info"]["schedule"] == schedule and report["info"]["reduce_zero_label"] is True
    # Read as class indices, label 3 is beyond the three classes: an error naming the mask file.
    with pytest.raises(SystemExit, match=r"masks.0\.png .*: class 3 .* pass --reduce-zero-label"):
        cli_main(["evaluate", "--model", str(tmp_path / "model"), "--data", str(data), "--no-reduce-zero-label",
                  "--output-dir", str(tmp_path / "eval-raw")])


def test_schedule_options_reach_predict_and_are_refused_for_binary_models(tmp_path, rows):
    from conftest import tiny_sam2_unet_config

    from dsunet_hf import Sam2UNetForImageSegmentation
    from dsunet_hf.cli import main as cli_main
    from dsunet_hf.predict import predict_files
    from dsunet_hf.semantic import predict_classes

    model = _tiny_head(tmp_path, processor_reduces=False)
    image = Image.open(rows["image"][0]).convert("RGB")
    masks = {}
    for schedule in ("single", "multiscale"):
        predict_files(model, model.default_image_processor(), [rows["image"][0]], tmp_path / schedule,
                      schedule=schedule, progress=False)
        masks[schedule] = np.asarray(Image.open(tmp_path / schedule / "masks" / "i0.png"))
        assert np.array_equal(masks[schedule], predict_classes(model, image, schedule))
    assert not np.array_equal(masks["single"], masks["multiscale"])
    # --autocast reaches multi-class models too (it was ignored for them).
    seen = []
    segment = model.segment
    model.segment = lambda *args, **kwargs: seen.append(torch.is_autocast_enabled("cpu")) or segment(*args, **kwargs)
    predict_files(model, model.default_image_processor(), [rows["image"][0]], tmp_path / "bf16", progress=False,
                  autocast_dtype=torch.bfloat16)
    assert seen == [True]
    binary = Sam2UNetForImageSegmentation(tiny_sam2_unet_config()).eval()
    binary.save_pretrained(tmp_path / "binary", include_backbone=True)
    with pytest.raises(SystemExit, match="schedules are for multi-class models"):
        cli_main(["predict", "--model", str(tmp_path / "binary"), rows["image"][0], "--schedule", "slide",
                  "--output-dir", str(tmp_path / "b")])
    with pytest.raises(SystemExit, match="--reduce-zero-label apply to multi-class models"):
        cli_main(["evaluate", "--model", str(tmp_path / "binary"), "--data", str(tmp_path), "--reduce-zero-label"])


def test_the_multilayer_heads_train_on_their_own_resize_range():
    from dsunet_hf.semantic import training_scale_range

    assert training_scale_range(Dinov2SegConfig(head_type="multilayer")) == (1.0, 3.0)  # the ms recipe: 640 x U[1, 3]
    assert training_scale_range(Dinov2SegConfig()) == (0.5, 2.0)


def test_undecoded_dataset_cells_are_read_as_the_binary_path_reads_them():
    """datasets.Image(decode=False) hands over {"bytes", "path"}: the multi-class transform decodes them too."""
    import io

    def png(array):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        return buffer.getvalue()

    labels = np.zeros((40, 40), np.uint8)
    labels[5:20, 5:20] = 1
    rows = datasets.Dataset.from_dict(
        {"image": [{"bytes": png(np.zeros((40, 40, 3), np.uint8)), "path": None}],
         "mask": [{"bytes": png(labels), "path": None}], "sample_id": [0]},
        features=datasets.Features({"image": datasets.Image(decode=False), "mask": datasets.Image(decode=False),
                                    "sample_id": datasets.Value("int64")}))
    transform = SemanticSegmentationTransform(SegmentationImageProcessor(), train=False, crop_size=32)
    example = rows.with_transform(transform)[0]
    assert torch.equal(example["labels"], torch.from_numpy(labels).long())


def test_0_255_binary_masks_are_refused_for_a_multi_class_model_and_label_maps_are_not(tmp_path):
    """0/255 masks given to a multi-class model (255 = the ignore index) trained the background only, silently."""
    from dsunet_hf.semantic import check_not_binary_255

    binary = np.zeros((20, 20), np.uint8)
    binary[5:15, 5:15] = 1
    classes = binary * 2
    classes[0] = 255  # VOC's void border beside real classes
    for name, array in {"b255": binary * 255, "b01": binary, "classes": classes, "empty": binary * 0}.items():
        Image.fromarray(array).save(tmp_path / f"{name}.png")
    rows = lambda *names: [{"mask": str(tmp_path / f"{name}.png")} for name in names]  # noqa: E731
    with pytest.raises(ValueError, match=r"organs/: the masks of the first 2 samples hold only 0 and 255.*0/1"):
        check_not_binary_255(rows("b255", "empty"), "organs/", "Dinov2ForSemanticSegmentation")
    for names in (("b01", "b01"), ("classes", "b255"), ("empty",), ("b255", "b01")):
        check_not_binary_255(rows(*names), "organs/", "Dinov2ForSemanticSegmentation")  # label maps: fine


def test_resizes_are_opencv_bilinear_without_antialiasing():
    """mmcv resizes with cv2 INTER_LINEAR: no antialiasing, other pixels than PIL's BILINEAR when downscaling."""
    import cv2

    original = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    processor = SegmentationImageProcessor()
    transform = SemanticSegmentationTransform(processor, train=False, crop_size=20)
    example = transform._example(Image.fromarray(original), np.zeros((48, 64), np.int64), 0)
    expected = cv2.resize(original, (27, 20), interpolation=cv2.INTER_LINEAR)  # 64 x 20/48 = 26.7 -> 27
    pil = np.asarray(Image.fromarray(original).resize((27, 20), Image.Resampling.BILINEAR))
    assert not np.array_equal(expected, pil)
    mean, std = np.asarray(processor.image_mean, np.float32), np.asarray(processor.image_std, np.float32)
    normalised = (expected.astype(np.float32) / np.float32(255.0) - mean) / std
    np.testing.assert_array_equal(example["pixel_values"].numpy(), normalised.transpose(2, 0, 1))


def test_the_voc_linear_heads_cap_the_long_side_as_mmseg():
    """mmseg's VOC linear configs resize to scale (2048, 512): the short side to 512 unless the long side would pass
    2048 (a panorama); training scales both with the jitter. Capped at 4x the crop here."""
    panorama = Image.fromarray(np.zeros((50, 600, 3), np.uint8))
    labels = np.zeros((50, 600), np.int64)
    capped = SemanticSegmentationTransform(SegmentationImageProcessor(), train=False, crop_size=20, max_long_side=80)
    assert tuple(capped._example(panorama, labels, 0)["pixel_values"].shape) == (3, 7, 80)  # not (3, 20, 240)
    plain = SemanticSegmentationTransform(SegmentationImageProcessor(), train=False, crop_size=20)
    assert tuple(plain._example(panorama, labels, 0)["pixel_values"].shape) == (3, 20, 240)
    from dsunet_hf.models.dinov2_seg.modeling_dinov2_seg import rescaled_size

    assert rescaled_size(500, 2100, 512, 2048) == (488, 2048) and rescaled_size(375, 500, 512, 2048) == (512, 683)


def test_training_label_maps_are_resized_as_opencv_nearest():
    """mmcv resizes label maps with cv2 INTER_NEAREST (source index floor(x * in / out)); PIL's NEAREST samples
    pixel centres: other labels."""
    import cv2

    labels = (np.arange(13 * 17).reshape(13, 17) % 200).astype(np.int64)
    image = Image.fromarray(np.zeros((13, 17, 3), np.uint8))
    # Short side 13 -> 20 (width 17 -> 26); the 26-px crop of the padded 26 x 26 map is the whole map.
    transform = SemanticSegmentationTransform(SegmentationImageProcessor(), train=True, crop_size=26, base_size=20,
                                              scale_range=(1.0, 1.0))
    got = transform._example(image, labels, 0)["labels"].numpy()
    expected = cv2.resize(labels.astype(np.uint8), (26, 20), interpolation=cv2.INTER_NEAREST)
    pil = np.asarray(Image.fromarray(labels.astype(np.int32), mode="I").resize((26, 20), Image.Resampling.NEAREST))
    assert not np.array_equal(expected, pil) and (got[20:] == 255).all()
    assert np.array_equal(got[:20], expected) or np.array_equal(got[:20, ::-1], expected)  # maybe flipped
    from dsunet_hf.semantic import _resize_labels

    for step, offset in ((300, 0), (1, -100), (50_000, 0)):  # uint16, int16, float32 inside: exact values
        resized = _resize_labels(labels * step + offset, 26, 20)
        assert resized.dtype == np.int64 and np.array_equal(resized, expected.astype(np.int64) * step + offset)
    with pytest.raises(ValueError, match="at most 2"):
        _resize_labels(labels * 100_000, 26, 20)


def test_multiscale_views_come_from_the_original_image_and_probabilities_from_its_size(rows):
    """mmcv's MultiScaleFlipAug: img_scale (99999999, 640) x ratios [1.0, 1.32, 1.73, 2.28, 3.0] rescales the
    ORIGINAL image to short sides 640, 844, 1107, 1459, 1920; the logits go to the original size before the softmax
    (the model's segment is given that size)."""
    import cv2

    from dsunet_hf.semantic import class_probabilities, predict_classes

    config = Dinov2SegConfig(backbone_preset="small", dino_config=dict(hidden_size=32, num_hidden_layers=2,
                             num_attention_heads=4), head_type="multilayer", id2label={0: "a", 1: "b", 2: "c"})
    assert config.crop_size == 640 and config.test_scales == [1.0, 1.32, 1.73, 2.28, 3.0]
    model = Dinov2ForSemanticSegmentation(config).eval()
    calls = []

    def segment(pixel_values, schedule="slide", output_size=None):  # a stub: records its inputs
        views = pixel_values if isinstance(pixel_values, list) else [pixel_values]
        calls.append(([tuple(v.shape[-2:]) for v in views], output_size, views[0]))
        probabilities = torch.zeros(1, 3, *output_size)
        probabilities[:, 1] = 1
        return probabilities

    model.segment = segment
    original = np.random.default_rng(0).integers(0, 255, (375, 500, 3), dtype=np.uint8)
    image = Image.fromarray(original)
    assert (predict_classes(model, image, "multiscale") == 1).all()
    sizes, output_size, first = calls.pop()
    assert sizes == [(640, 853), (844, 1125), (1107, 1476), (1459, 1945), (1920, 2560)]
    assert output_size == (375, 500)
    processor = model.default_image_processor()
    mean, std = np.asarray(processor.image_mean, np.float32), np.asarray(processor.image_std, np.float32)
    resized = cv2.resize(original, (853, 640), interpolation=cv2.INTER_LINEAR).astype(np.float32) / np.float32(255.0)
    np.testing.assert_array_equal(first[0].numpy(), ((resized - mean) / std).transpose(2, 0, 1))
    predict_classes(model, image, "slide")
    assert calls.pop()[:2] == ([(640, 853)], (375, 500))
    assert class_probabilities(model, image, "slide").shape == (1, 3, 640, 853)  # by default the working size
    # evaluate: the probabilities at each label map's size.
    model.config.crop_size = 28
    model.config.test_scales = [1.0, 1.5]
    evaluate_semantic(model, rows, schedule="multiscale")
    assert [(sizes, size) for sizes, size, _ in calls[1:]] == [([(28, 37), (42, 56)], (30, 40)),
                                                               ([(28, 36), (42, 54)], (31, 40)),
                                                               ([(28, 35), (42, 53)], (32, 40))]


def test_predictions_read_16_bit_images_and_arrays_as_the_processor_does(tmp_path):
    """PIL's convert("RGB") clips 16-bit gray to white: the model saw a blank picture."""
    from dsunet_hf.semantic import class_probabilities, predict_classes

    config = Dinov2SegConfig(backbone_preset="small", dino_config=dict(hidden_size=32, num_hidden_layers=1,
                             num_attention_heads=4), crop_size=28, id2label={0: "a", 1: "b", 2: "c"})
    model = Dinov2ForSemanticSegmentation(config).eval()
    gray = np.random.default_rng(0).integers(0, 256, (28, 35)).astype(np.uint16)
    Image.fromarray(gray * 257).save(tmp_path / "g16.png")
    wide = Image.open(tmp_path / "g16.png")
    assert wide.mode.startswith("I")
    eight_bit = Image.fromarray(gray.astype(np.uint8)).convert("RGB")
    torch.testing.assert_close(class_probabilities(model, wide, "single"),
                               class_probabilities(model, eight_bit, "single"))
    expected = predict_classes(model, eight_bit, "single")
    assert np.array_equal(predict_classes(model, wide, "single"), expected)
    assert np.array_equal(predict_classes(model, np.asarray(eight_bit), "single"), expected)
    assert np.array_equal(np.asarray(overlay_with_legend(wide, expected, config.id2label))[:28, :35],
                          np.asarray(overlay_with_legend(eight_bit, expected, config.id2label))[:28, :35])

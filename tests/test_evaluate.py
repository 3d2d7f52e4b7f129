"""evaluate_model / prediction folders / report / CLI, on a tiny random SAM2-UNet and generated files."""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_sam2_unet_config
from PIL import Image

from dsunet_hf import (
    BiRefNetConfig,
    BiRefNetForImageSegmentation,
    Sam2UNetForImageSegmentation,
    SegmentationImageProcessor,
)
from dsunet_hf.data import binary_mask_problem
from dsunet_hf.evaluate import (
    add_evaluate_parser,
    evaluate_datasets,
    evaluate_model,
    evaluate_prediction_folders,
    format_table,
    run_evaluate_cli,
    write_report,
)
from dsunet_hf.image_processing import processor_for_model
from dsunet_hf.metrics import METRIC_NAMES, SegmentationMetrics
from dsunet_hf.predict import native_size

SIZES = [(48, 40), (64, 64), (30, 70), (90, 52)]  # (height, width)


def disc_mask(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:h, :w]
    cy, cx, r = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w, rng.uniform(0.2, 0.35) * min(h, w)
    return ((y - cy) ** 2 + (x - cx) ** 2 <= r * r).astype(np.uint8) * 255


@pytest.fixture
def model():
    torch.manual_seed(0)
    return Sam2UNetForImageSegmentation(tiny_sam2_unet_config()).eval()


@pytest.fixture
def processor(model):
    return model.default_image_processor()


@pytest.fixture
def samples(tmp_path):
    """Image (JPEG/PNG) + 0/255 mask PNG files of various sizes."""
    rng = np.random.default_rng(1)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    items = []
    for i, (h, w) in enumerate(SIZES):
        mask = disc_mask(h, w, i)
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        image[mask > 0] = np.clip(image[mask > 0].astype(int) + 90, 0, 255).astype(np.uint8)
        image_path = tmp_path / "images" / f"s{i}.{'jpg' if i % 2 else 'png'}"
        mask_path = tmp_path / "masks" / f"s{i}.png"
        Image.fromarray(image).save(image_path)
        Image.fromarray(mask).save(mask_path)
        items.append({"image": str(image_path), "mask": str(mask_path)})
    return items


def by_hand(model, processor, items, minmax_normalize=True) -> dict[str, float]:
    """Upstream test.py + eval.py steps, spelled out: upsample to GT size, sigmoid, min-max, *255, score."""
    images = [Image.open(item["image"]).convert("RGB") for item in items]
    with torch.no_grad():
        pixel_values = processor(images)["pixel_values"]
        logits = model(pixel_values=pixel_values).logits
    metrics = SegmentationMetrics()
    for i, item in enumerate(items):
        gt = np.asarray(Image.open(item["mask"]))  # 0/255 "L" PNG, exactly what cv2 gray would give
        x = F.interpolate(logits[i : i + 1].float(), size=gt.shape, mode="bilinear", align_corners=False)
        p = x.sigmoid()[0, 0]
        if minmax_normalize:
            p = (p - p.min()) / (p.max() - p.min() + 1e-8)
        metrics.update((p.numpy() * 255).astype(np.uint8), gt)
    return metrics.compute()


def test_evaluate_model_equals_manual_protocol(model, processor, samples):
    got = evaluate_model(model, processor, samples, batch_size=8, progress=False)
    assert list(got) == list(METRIC_NAMES)
    assert all(type(v) is float for v in got.values())
    assert got == by_hand(model, processor, samples)

    raw = evaluate_model(model, processor, samples, batch_size=8, progress=False, minmax_normalize=False)
    assert raw == by_hand(model, processor, samples, minmax_normalize=False)
    assert raw != got

    # smaller batches: same numbers up to float noise of batched convolutions
    batched = evaluate_model(model, processor, samples, batch_size=3, progress=False)
    for name in METRIC_NAMES:
        assert batched[name] == pytest.approx(got[name], abs=1e-3), name

    first_two = evaluate_model(model, processor, samples, batch_size=8, progress=False, max_samples=2)
    assert first_two == by_hand(model, processor, samples[:2])


def losses_one_by_one(model, processor, samples) -> list[float]:
    """The model's loss on each sample alone, its mask at the model's size, as training computes it."""
    losses = []
    for item in samples:
        inputs = processor([Image.open(item["image"]).convert("RGB")],
                           masks=[np.asarray(Image.open(item["mask"]), np.float32) / 255])
        with torch.no_grad():
            losses.append(float(model(pixel_values=inputs["pixel_values"], labels=inputs["labels"]).loss))
    return losses


def test_validation_loss_is_the_models_own_loss_from_the_same_pass(model, processor, samples):
    """with_loss (what training logs as val/loss): the mean over samples of the model's loss on each image with
    its mask at the model's size, as training computes it; the metrics are unchanged."""
    plain = evaluate_model(model, processor, samples, batch_size=8, progress=False)
    scored = evaluate_model(model, processor, samples, batch_size=8, progress=False, with_loss=True)
    assert {k: v for k, v in scored.items() if k != "loss"} == plain
    assert scored["loss"] == pytest.approx(np.mean(losses_one_by_one(model, processor, samples)), rel=1e-5)
    in_threes = evaluate_model(model, processor, samples, batch_size=3, progress=False, with_loss=True)
    assert in_threes["loss"] == pytest.approx(scored["loss"], rel=1e-5)  # a mean over samples, not over batches


def tiny_birefnet() -> BiRefNetForImageSegmentation:
    torch.manual_seed(0)
    swin = {"embed_dim": 8, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2], "window_size": 4}
    config = BiRefNetConfig(backbone="swin_v1_t", backbone_config=swin, image_size=64,
                            base_repo_id="test-org/tiny-birefnet")
    return BiRefNetForImageSegmentation(config).eval()


def birefnet_by_hand(model, processor, items, minmax_normalize=False) -> dict[str, float]:
    """BiRefNet's inference.py, spelled out: sigmoid, then the probabilities resized to the GT size with
    align_corners=True, ToPILImage's floor(p * 255); no min-max unless asked."""
    images = [Image.open(item["image"]).convert("RGB") for item in items]
    with torch.no_grad():
        logits = model(pixel_values=processor(images)["pixel_values"]).logits
    metrics = SegmentationMetrics()
    for i, item in enumerate(items):
        gt = np.asarray(Image.open(item["mask"]))
        p = F.interpolate(logits[i : i + 1].float().sigmoid(), size=gt.shape, mode="bilinear", align_corners=True)[0, 0]
        if minmax_normalize:
            p = (p - p.min()) / (p.max() - p.min() + 1e-8)
        metrics.update((p.numpy() * 255).astype(np.uint8), gt)
    return metrics.compute()


def test_birefnet_is_evaluated_as_its_upstream_inference_py(samples):
    """BiRefNet's maps: sigmoid, then resize (align_corners=True), no min-max, as its inference.py; with its own
    processor, and with one that records no order (saved before it was recorded). minmax_normalize=True still
    normalises; SAM2-UNet's order would give other numbers."""
    model = tiny_birefnet()
    recorded, unrecorded = model.default_image_processor(), SegmentationImageProcessor(size=64)
    assert recorded.post_processing == "birefnet" and unrecorded.post_processing is None
    expected = birefnet_by_hand(model, recorded, samples)
    for processor in (recorded, unrecorded):
        assert evaluate_model(model, processor, samples, batch_size=8, progress=False) == expected
    assert unrecorded.post_processing is None  # the caller's processor is not changed
    normalised = evaluate_model(model, recorded, samples, batch_size=8, progress=False, minmax_normalize=True)
    assert normalised == birefnet_by_hand(model, recorded, samples, minmax_normalize=True) and normalised != expected
    sam2_order = SegmentationImageProcessor(size=64, post_processing="sam2_unet")
    assert evaluate_model(model, sam2_order, samples, batch_size=8, progress=False, minmax_normalize=False) != expected


def test_birefnet_validation_loss_does_not_depend_on_the_batch_size(samples):
    """BiRefNet's IoU term is summed over the batch in training (upstream); the loss evaluate reports is the mean over
    samples of each one's loss alone, whatever the batch size."""
    model = tiny_birefnet()
    processor = model.default_image_processor()
    alone = losses_one_by_one(model, processor, samples)
    for batch_size in (1, 3, 8):
        scored = evaluate_model(model, processor, samples, batch_size=batch_size, progress=False, with_loss=True)
        assert scored["loss"] == pytest.approx(np.mean(alone), rel=1e-5), batch_size


def test_native_resolution_scores_what_predict_native_writes(model, processor, samples, tmp_path):
    """resolution="native": each image at its own size (multiples of 32), exactly the maps `predict
    --resolution native` writes, scored as the prediction-folder mode scores them; the loss at those sizes too."""
    from dsunet_hf.predict import predict_files

    native = evaluate_model(model, processor, samples, batch_size=8, progress=False, resolution="native",
                            minmax_normalize=False)
    predict_files(model, processor, [item["image"] for item in samples], tmp_path / "out", resolution="native",
                  progress=False)
    from_files, _ = evaluate_prediction_folders(tmp_path / "out" / "masks", tmp_path / "masks", progress=False)
    for name in METRIC_NAMES:
        assert native[name] == pytest.approx(from_files[name], abs=1e-6), name
    assert native != evaluate_model(model, processor, samples, batch_size=8, progress=False, minmax_normalize=False)
    losses = []
    for item in samples:  # each sample's loss with its mask at the image's own input size
        image = Image.open(item["image"]).convert("RGB")
        size = dict(zip(("height", "width"), native_size(image.height, image.width)))
        inputs = processor([image], masks=[np.asarray(Image.open(item["mask"]), np.float32) / 255], size=size)
        with torch.no_grad():
            losses.append(float(model(pixel_values=inputs["pixel_values"], labels=inputs["labels"]).loss))
    scored = evaluate_model(model, processor, samples, batch_size=3, progress=False, resolution="native",
                            with_loss=True)
    assert scored["loss"] == pytest.approx(np.mean(losses), rel=1e-5)
    with pytest.raises(ValueError, match="resolution must be 'model' or 'native'"):
        evaluate_model(model, processor, samples, progress=False, resolution="full")


def test_native_batches_are_filled_across_the_dataset(model, processor, samples, monkeypatch):
    """Mixed sizes in turn (A, B, C, A, B, C, ...): samples wait by input size, so every forward pass but the last
    of each size is a full batch (batching neighbours only would run one image at a time); the same numbers as
    one image per pass."""
    from dsunet_hf import evaluate as evaluate_module

    interleaved = [samples[i % 3] for i in range(12)]  # 48x40, 64x64, 30x70: three input sizes, four of each
    passes = []
    real = evaluate_module.probabilities_and_outputs

    def counted(model, processor, images, *args, size=None, **kwargs):
        passes.append((size, len(images)))
        return real(model, processor, images, *args, size=size, **kwargs)

    monkeypatch.setattr(evaluate_module, "probabilities_and_outputs", counted)
    batched = evaluate_model(model, processor, interleaved, batch_size=2, progress=False, resolution="native")
    assert sorted(count for _, count in passes) == [2] * 6 and len({size for size, _ in passes}) == 3
    passes.clear()
    single = evaluate_model(model, processor, interleaved, batch_size=1, progress=False, resolution="native")
    assert len(passes) == 12
    for name in METRIC_NAMES:  # batched convolutions differ at float noise
        assert batched[name] == pytest.approx(single[name], abs=1e-5), name
    passes.clear()  # 12 of each size, batch 8: one full batch per size, the rest at the end
    evaluate_model(model, processor, interleaved * 3, batch_size=8, progress=False, resolution="native")
    assert sorted(count for _, count in passes) == [4, 4, 4, 8, 8, 8]


def test_at_most_four_batches_of_samples_wait(model, processor, monkeypatch):
    """Nine sizes, batch 2: no size fills a batch, but once 4 * 2 samples wait the fullest size runs, before the
    ninth sample is read (memory stays bounded on datasets of all-different sizes)."""
    from dsunet_hf import evaluate as evaluate_module

    rng = np.random.default_rng(0)
    sizes = [(32 * (1 + i // 3), 32 * (1 + i % 3)) for i in range(9)]  # nine native input sizes
    read = []

    class Recorded(list):
        def __getitem__(self, index):
            read.append(index)
            return super().__getitem__(index)

    items = Recorded({"image": Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)),
                      "mask": disc_mask(h, w, 0)} for h, w in sizes)
    read_before_pass = []
    real = evaluate_module.probabilities_and_outputs

    def counted(*args, **kwargs):
        read_before_pass.append(len(read))
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate_module, "probabilities_and_outputs", counted)
    evaluate_model(model, processor, items, batch_size=2, progress=False, resolution="native")
    assert read_before_pass[0] == 8 and len(read_before_pass) == 9


def test_worker_processes_read_the_samples_with_the_same_numbers_and_skips(model, processor, samples, tmp_path):
    import os

    corrupt = tmp_path / "images" / "corrupt.png"
    corrupt.write_bytes(b"not a PNG")
    items = samples + [{"image": str(corrupt), "mask": samples[0]["mask"]}] + samples
    in_process, in_workers = [], []
    expected = evaluate_model(model, processor, items, batch_size=3, progress=False, skipped=in_process)

    class ReadInWorkersOnly(list):  # a sample read in this process would mean num_workers was ignored
        def __getitem__(self, index):
            if os.getpid() == parent:
                raise AssertionError(f"sample {index} read in the main process")
            return super().__getitem__(index)

    parent = os.getpid()
    got = evaluate_model(model, processor, ReadInWorkersOnly(items), batch_size=3, progress=False,
                         skipped=in_workers, num_workers=2)
    assert got == expected and in_workers == in_process and len(in_process) == 1 and "corrupt.png" in in_process[0]
    with pytest.raises(ValueError, match="num_workers must be >= 0, got -1"):
        evaluate_model(model, processor, samples, progress=False, num_workers=-1)


def test_metric_workers_give_the_same_numbers(model, processor, samples, folders, tmp_path, monkeypatch):
    """Metrics computed in worker processes and merged in order: the same numbers as computed here, for a model
    (DIS metrics too, a bad sample skipped) and for prediction folders."""
    corrupt = tmp_path / "images" / "corrupt.png"
    corrupt.write_bytes(b"not a PNG")
    items = samples + [{"image": str(corrupt), "mask": samples[0]["mask"]}] + samples * 2
    here, apart = [], []
    expected = evaluate_model(model, processor, items, batch_size=2, progress=False, dis_metrics=True, skipped=here)
    merged = []  # each batch scored in a worker comes back through merge (here, in the main process)
    real_merge = SegmentationMetrics.merge
    monkeypatch.setattr(SegmentationMetrics, "merge", lambda self, other: (merged.append(len(other)),
                                                                           real_merge(self, other)))
    got = evaluate_model(model, processor, items, batch_size=2, progress=False, dis_metrics=True, skipped=apart,
                         metric_workers=2)
    assert got == expected and apart == here and len(here) == 1
    assert merged == [2] * 6  # the 12 readable samples, in batches of 2, every one merged from a worker
    pred_dir, gt_dir = folders
    assert (evaluate_prediction_folders(pred_dir, gt_dir, progress=False, metric_workers=2)
            == evaluate_prediction_folders(pred_dir, gt_dir, progress=False))
    with pytest.raises(ValueError, match="metric_workers must be >= 0"):
        evaluate_model(model, processor, samples, progress=False, metric_workers=-1)


def test_evaluate_model_restores_training_mode(model, processor, samples):
    model.train()
    evaluate_model(model, processor, samples[:1], progress=False)
    assert model.training


def test_evaluate_model_accepts_pil_items_and_hf_datasets(model, processor, samples):
    datasets = pytest.importorskip("datasets")
    expected = evaluate_model(model, processor, samples, progress=False)
    pil_items = [{"image": Image.open(s["image"]), "mask": Image.open(s["mask"])} for s in samples]
    assert evaluate_model(model, processor, pil_items, progress=False) == expected

    table = datasets.Dataset.from_dict({key: [s[key] for s in samples] for key in ("image", "mask")})
    assert evaluate_model(model, processor, table, progress=False) == expected  # path strings
    decoded = table.cast_column("image", datasets.Image()).cast_column("mask", datasets.Image())
    assert evaluate_model(model, processor, decoded, progress=False) == expected  # PIL cells


def test_a_corrupt_dataset_cell_is_skipped_naming_its_sample_column_and_file(model, processor, samples):
    """datasets decoded the Image cells itself and failed with "Truncated File Read", naming no file."""
    datasets = pytest.importorskip("datasets")
    masks = [open(s["mask"], "rb").read() for s in samples]
    masks[1] = b"\x89PNG\r\n\x1a\n truncated"
    table = datasets.Dataset.from_dict(
        {"image": [s["image"] for s in samples], "mask": [{"bytes": m, "path": f"m{i}.png"} for i, m in enumerate(masks)]},
        features=datasets.Features({"image": datasets.Image(), "mask": datasets.Image()}))
    skipped: list[str] = []
    got = evaluate_model(model, processor, table, progress=False, skipped=skipped)
    assert got == by_hand(model, processor, samples[:1] + samples[2:])
    [reason] = skipped
    assert "sample 1, column 'mask' (m1.png): cannot decode the image bytes" in reason


def test_bad_samples_are_skipped_and_logged(model, processor, samples, tmp_path, caplog):
    corrupt = tmp_path / "images" / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n this is not a PNG")
    small_mask = tmp_path / "masks" / "small.png"
    Image.fromarray(disc_mask(10, 10, 0)).save(small_mask)
    bad = [
        {"image": str(corrupt), "mask": samples[0]["mask"]},
        {"image": samples[1]["image"], "mask": str(small_mask)},  # size differs from its image
        {"image": str(tmp_path / "missing.jpg"), "mask": samples[0]["mask"]},
        # 1x1: scored, its E-measure (~2e15) would swamp the dataset's
        {"image": Image.new("RGB", (1, 1)), "mask": np.full((1, 1), 255, np.uint8), "sample_id": "one-pixel"},
    ]
    skipped: list[str] = []
    with caplog.at_level(logging.WARNING, logger="dsunet_hf.evaluate"):
        got = evaluate_model(model, processor, bad[:1] + samples + bad[1:], batch_size=8, progress=False,
                             skipped=skipped)
    assert got == by_hand(model, processor, samples)
    assert len(skipped) == 4
    assert "corrupt.png" in caplog.text and "missing.jpg" in caplog.text
    assert "differs" in caplog.text and "skipped 4 of 8" in caplog.text
    assert "sample one-pixel: ground truth is 1x1 (WxH) pixels: the metrics need at least 2" in skipped[-1]

    with pytest.raises(ValueError, match="no sample could be evaluated"):
        evaluate_model(model, processor, bad, progress=False)


def test_evaluate_datasets(model, processor, samples):
    results = evaluate_datasets(model, processor, {"A": samples[:2], "B": samples[2:]}, progress=False)
    assert list(results) == ["A", "B"]
    assert results["A"] == by_hand(model, processor, samples[:2])
    assert results["B"] == by_hand(model, processor, samples[2:])


@pytest.fixture
def folders(tmp_path):
    """GT masks (PNG and BMP) and prediction PNGs; s3 has no prediction, extra.png has no GT."""
    rng = np.random.default_rng(2)
    gt_dir, pred_dir = tmp_path / "ECSSD" / "masks", tmp_path / "preds"
    gt_dir.mkdir(parents=True)
    pred_dir.mkdir()
    for i, (h, w) in enumerate(SIZES):
        Image.fromarray(disc_mask(h, w, i)).save(gt_dir / f"s{i}.{'bmp' if i == 1 else 'png'}")
        if i != 3:
            Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)).save(pred_dir / f"s{i}.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(pred_dir / "extra.png")
    return pred_dir, gt_dir


def test_evaluate_prediction_folders(folders, caplog):
    pred_dir, gt_dir = folders
    with caplog.at_level("WARNING", logger="dsunet_hf.evaluate"):
        metrics, info = evaluate_prediction_folders(pred_dir, gt_dir)
    # Was: a prediction without ground truth (a misnamed file, typically) was only in evaluation.json, never said.
    assert f"1 prediction file(s) in {pred_dir} have no ground truth in {gt_dir} and are not scored: " \
           f"{pred_dir / 'extra.png'}" in caplog.text
    expected = SegmentationMetrics()
    for i in range(3):
        gt_file = gt_dir / f"s{i}.{'bmp' if i == 1 else 'png'}"
        expected.update(np.asarray(Image.open(pred_dir / f"s{i}.png")), np.asarray(Image.open(gt_file)))
    assert metrics == expected.compute()
    assert info["missing_predictions"] == [str(gt_dir / "s3.png")]
    assert info["matched"] == 3 and info["evaluated"] == 3 and info["unreadable"] == {}
    assert info["extra_predictions"] == [str(pred_dir / "extra.png")]


def test_prediction_folders_skip_bad_files_and_need_a_match(folders, tmp_path):
    pred_dir, gt_dir = folders
    (pred_dir / "s0.png").write_bytes(b"garbage")
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(pred_dir / "s2.png")  # wrong size
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(pred_dir / "one.png")  # 1x1: would swamp the E-measure
    Image.fromarray(np.full((1, 1), 255, np.uint8)).save(gt_dir / "one.png")
    metrics, info = evaluate_prediction_folders(pred_dir, gt_dir)
    assert info["evaluated"] == 1 and set(info["unreadable"]) == {str(pred_dir / "s0.png"), str(pred_dir / "s2.png"),
                                                                  str(gt_dir / "one.png")}
    assert "1x1 (WxH) pixels" in info["unreadable"][str(gt_dir / "one.png")]
    only_s1 = SegmentationMetrics()
    only_s1.update(np.asarray(Image.open(pred_dir / "s1.png")), np.asarray(Image.open(gt_dir / "s1.bmp")))
    assert metrics == only_s1.compute()

    other = tmp_path / "other"
    other.mkdir()
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(other / "nothing-alike.png")
    with pytest.raises(ValueError, match="matches"):
        evaluate_prediction_folders(other, gt_dir)
    with pytest.raises(FileNotFoundError):
        evaluate_prediction_folders(tmp_path / "nope", gt_dir)


def test_prediction_folders_match_predict_output_layout(folders, tmp_path):
    pred_dir, gt_dir = folders
    predict_output = tmp_path / "predict-run"
    (predict_output / "masks").mkdir(parents=True)
    for path in pred_dir.iterdir():
        (predict_output / "masks" / path.name).write_bytes(path.read_bytes())
    assert evaluate_prediction_folders(predict_output, gt_dir)[0] == evaluate_prediction_folders(pred_dir, gt_dir)[0]


def test_format_table_and_write_report(tmp_path):
    results = {
        "ECSSD": {name: 0.5 + i / 100 for i, name in enumerate(METRIC_NAMES)},
        "Kvasir|SEG": {name: 0.25 for name in METRIC_NAMES},
    }
    table = format_table(results)
    lines = table.splitlines()
    assert len(lines) == 4 and lines[2].startswith("| ECSSD |") and "Kvasir\\|SEG" in lines[3]
    assert all(name in lines[0] for name in METRIC_NAMES)
    assert "0.510" in lines[2] and "0.6000" in lines[2]  # mDice 3 decimals, MAE (last) 4

    json_path, md_path = write_report(results, tmp_path / "out", extra={"model": "tiny", "skipped": {"ECSSD": []}})
    assert json_path == tmp_path / "out" / "evaluation.json" and md_path == tmp_path / "out" / "evaluation.md"
    payload = json.loads(json_path.read_text())
    assert payload["results"] == results
    assert payload["info"]["model"] == "tiny"
    assert payload["higher_is_better"]["MAE"] is False
    markdown = md_path.read_text()
    assert "ECSSD" in markdown and "Kvasir\\|SEG" in markdown and "tiny" in markdown
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["evaluation.json", "evaluation.md"]


def test_the_report_is_strict_json_with_undefined_metrics_as_null(tmp_path):
    # Python wrote NaN (a class absent from every label map has no IoU), which jq / JavaScript / strict readers refuse.
    results = {"ADE": {"mIoU": 0.5, "mAcc": math.nan}}
    json_path, md_path = write_report(results, tmp_path, extra={"per_class_iou": {"ADE": {"wall": 0.5, "cat": math.nan}}})

    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    payload = json.loads(json_path.read_text(), parse_constant=refuse)
    assert payload["results"]["ADE"] == {"mIoU": 0.5, "mAcc": None}
    assert payload["info"]["per_class_iou"]["ADE"] == {"wall": 0.5, "cat": None}
    assert "| ADE | 0.500 |" in md_path.read_text()


def make_parser():
    parser = argparse.ArgumentParser(prog="dsunet-hf")
    add_evaluate_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_prediction_folders(folders, tmp_path, capsys):
    pred_dir, gt_dir = folders
    out = tmp_path / "report"
    args = make_parser().parse_args(
        ["evaluate", "--predictions", str(pred_dir), "--ground-truth", str(gt_dir), "--output-dir", str(out)]
    )
    assert args.func is run_evaluate_cli
    assert run_evaluate_cli(args) == 0
    printed = capsys.readouterr().out
    assert "| ECSSD |" in printed  # generic "masks" folder -> its parent's name
    payload = json.loads((out / "evaluation.json").read_text())
    assert payload["results"]["ECSSD"] == evaluate_prediction_folders(pred_dir, gt_dir)[0]
    assert payload["info"]["missing_predictions"] == [str(gt_dir / "s3.png")]
    assert "ECSSD" in (out / "evaluation.md").read_text() and "HCE" not in payload["results"]["ECSSD"]
    args = make_parser().parse_args(["evaluate", "--predictions", str(pred_dir), "--ground-truth", str(gt_dir),
                                     "--output-dir", str(tmp_path / "dis"), "--dis-metrics"])
    assert run_evaluate_cli(args) == 0
    dis = json.loads((tmp_path / "dis" / "evaluation.json").read_text())
    assert dis["results"]["ECSSD"] == evaluate_prediction_folders(pred_dir, gt_dir, dis_metrics=True)[0]
    assert dis["results"]["ECSSD"]["HCE"] > 0 and 0 < dis["results"]["ECSSD"]["mBA"] < 1
    assert dis["metric_names"][-5:] == ["HCE", "mBA", "BIoU (max)", "BIoU (mean)", "MSE"]
    assert dis["higher_is_better"]["HCE"] is False and "HCE ↓" in (tmp_path / "dis" / "evaluation.md").read_text()

    with pytest.raises(SystemExit):
        run_evaluate_cli(make_parser().parse_args(["evaluate", "--predictions", str(pred_dir)]))
    with pytest.raises(SystemExit):
        run_evaluate_cli(make_parser().parse_args(
            ["evaluate", "--model", "m", "--predictions", str(pred_dir), "--ground-truth", str(gt_dir)]))
    for flag, value, least in (("--metric-workers", "-1", 0), ("--num-workers", "-2", 0), ("--batch-size", "0", 1),
                               ("--shots", "0", 1), ("--absent-queries", "-1", 0)):  # the last two: once it loaded
        # --num-workers and --batch-size run a model (refused on saved maps, below): checked before it loads
        mode = ["--predictions", str(pred_dir), "--ground-truth", str(gt_dir)] if flag == "--metric-workers" else \
            ["--model", "m", "--data", "d"]
        with pytest.raises(SystemExit, match=f"evaluate: {flag} must be >= {least}, got {value}"):
            run_evaluate_cli(make_parser().parse_args(["evaluate", *mode, flag, value]))
    # Options of running a model were silently ignored on saved maps.
    for given, named in ((["--crop-refine"], "--crop-refine"), (["--minmax-normalize"], "--minmax-normalize"),
                         (["--schedule", "slide", "--dtype", "bfloat16"], "--schedule, --dtype"),
                         (["--shots", "3"], "--shots")):
        with pytest.raises(SystemExit, match=f"^evaluate: {named}: for --model/--data, not for --predictions"):
            run_evaluate_cli(make_parser().parse_args(
                ["evaluate", "--predictions", str(pred_dir), "--ground-truth", str(gt_dir), *given]))
    # Bad folders: one line naming the folder and the problem, no traceback (and no report).
    (tmp_path / "empty").mkdir()
    (tmp_path / "other").mkdir()
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "other" / "nothing-alike.png")
    for predictions, ground_truth, problem in (
        (tmp_path / "nope", gt_dir, f"predictions folder {tmp_path / 'nope'} does not exist"),
        (pred_dir, tmp_path / "empty", f"no image files in ground truth folder {tmp_path / 'empty'}"),
        (tmp_path / "other", gt_dir, f"no prediction in {tmp_path / 'other'} matches a ground-truth file in {gt_dir}"),
    ):
        with pytest.raises(SystemExit, match=f"^evaluate: {re.escape(problem)}"):
            run_evaluate_cli(make_parser().parse_args(
                ["evaluate", "--predictions", str(predictions), "--ground-truth", str(ground_truth), "--output-dir",
                 str(tmp_path / "failed")]))
    assert not (tmp_path / "failed").exists()


def test_class_index_ground_truth_is_flagged(folders, tmp_path, caplog):
    """Foreground metrics read GT > 128 as foreground: class-index masks (0/3) are empty ground truth, so warn."""
    pred_dir, _ = folders
    labels = tmp_path / "labels"
    labels.mkdir()
    for i, (h, w) in enumerate(SIZES[:3]):
        Image.fromarray((disc_mask(h, w, i) > 0).astype(np.uint8) * 3).save(labels / f"s{i}.png")
    with caplog.at_level(logging.WARNING, logger="dsunet_hf.evaluate"):
        evaluate_prediction_folders(pred_dir, labels, progress=False)
    assert f"{labels}: the ground-truth masks hold class indices (0..3)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dsunet_hf.evaluate"):
        evaluate_prediction_folders(*folders, progress=False)  # 0/255 masks
    assert "class indices" not in caplog.text


def test_cli_model_on_datasets(model, processor, samples, tmp_path, monkeypatch, capsys, offline_hub):
    """--model/--data wiring, with stand-ins for the dataset loader and the model loader."""
    import dsunet_hf.predict

    data = {"setA": samples[:2], "setB": samples[2:]}
    fake = types.ModuleType("dsunet_hf.data")

    def load_segmentation_dataset(source, split=None, **kwargs):  # the real loader's errors for bad sources
        if source.startswith("hub/"):
            raise FileNotFoundError(f"cannot load Hub dataset {source!r}: not in the cache (offline)")
        if source not in data:
            raise ValueError(f"{source}: no image/mask folder pair found")
        return data[source]

    fake.load_segmentation_dataset = load_segmentation_dataset
    fake.dataset_name = lambda source: f"name-{source}"
    fake.dropped_files = lambda dataset: {}
    fake.binary_mask_problem = binary_mask_problem  # the real check
    monkeypatch.setitem(sys.modules, "dsunet_hf.data", fake)
    loaded = {}

    def fake_loader(name_or_path, device=None, dtype=None, **kwargs):
        loaded.update(name=name_or_path, device=device, dtype=dtype, revision=kwargs.get("revision"),
                      variant=kwargs.get("variant"))
        return model, processor

    monkeypatch.setattr(dsunet_hf.predict, "load_model_and_processor", fake_loader)
    (tmp_path / "tagged").mkdir()
    (tmp_path / "tagged" / "config.json").write_text("{}")
    tagged = offline_hub.add("some/model", tmp_path / "tagged", branch="v1.0")  # the commit the tag points to
    out = tmp_path / "report"
    args = make_parser().parse_args(
        ["evaluate", "--model", "some/model", "--data", "setA", "--data", "setB", "--output-dir", str(out),
         "--batch-size", "2", "--no-minmax-normalize", "--max-samples", "1", "--no-progress", "--revision", "v1.0",
         "--variant", "fp16"]
    )
    assert run_evaluate_cli(args) == 0
    # Was: no --revision / --variant (the latest weights without a variant only), nor recorded in the report.
    assert loaded == {"name": "some/model", "device": None, "dtype": torch.float32, "revision": "v1.0",
                      "variant": "fp16"}
    payload = json.loads((out / "evaluation.json").read_text())
    assert list(payload["results"]) == ["name-setA", "name-setB"]
    assert payload["results"]["name-setB"] == by_hand(model, processor, samples[2:3], minmax_normalize=False)
    assert payload["info"]["minmax_normalize"] is False and payload["info"]["max_samples"] == 1
    assert payload["info"]["post_processing"] == "sam2_unet"  # was None: its processor records no order
    assert payload["info"]["evaluated_samples"] == {"name-setA": 1, "name-setB": 1}
    assert payload["info"]["revision"] == "v1.0" and payload["info"]["variant"] == "fp16"
    assert payload["info"]["commit"] == tagged  # was: the tag only, which moves (transformers 5 records no commit)
    assert "name-setA" in capsys.readouterr().out
    # The visual-prompting options were silently ignored for other models (some/model has no config to tell its
    # kind by: it cannot be reached, which is said first; a model of another kind: tests/test_cli.py).
    with pytest.raises(SystemExit, match=r"^evaluate: cannot load some/model: "):
        run_evaluate_cli(make_parser().parse_args(["evaluate", "--model", "some/model", "--data", "setA", "--shots",
                                                   "5", "--prompt-kind", "box", "--output-dir", str(out)]))


def test_cli_records_the_post_processing_of_a_birefnet(samples, tmp_path, monkeypatch, offline_hub):
    """A BiRefNet (its saved processor from before the order was recorded) is evaluated in its upstream's order
    without min-max; the report says so; --minmax-normalize still normalises."""
    import dsunet_hf.predict

    model, processor = tiny_birefnet(), SegmentationImageProcessor(size=64)
    fake = types.ModuleType("dsunet_hf.data")
    fake.load_segmentation_dataset = lambda source, split=None, **kwargs: samples
    fake.dataset_name = lambda source: f"name-{source}"
    fake.dropped_files = lambda dataset: {}
    fake.binary_mask_problem = binary_mask_problem
    monkeypatch.setitem(sys.modules, "dsunet_hf.data", fake)
    monkeypatch.setattr(dsunet_hf.predict, "load_model_and_processor", lambda *args, **kwargs: (model, processor))
    for flags, minmax in (([], False), (["--minmax-normalize"], True)):
        out = tmp_path / f"report{len(flags)}"
        args = make_parser().parse_args(["evaluate", "--model", "m", "--data", "set", "--output-dir", str(out),
                                         "--no-progress", "--metric-workers", "0", *flags])
        assert run_evaluate_cli(args) == 0
        payload = json.loads((out / "evaluation.json").read_text())
        # By hand with the processor as resolved for a BiRefNet (its order; its upstream's resizing where recorded).
        resolved = processor_for_model(processor, model)
        assert payload["results"]["name-set"] == birefnet_by_hand(model, resolved, samples, minmax_normalize=minmax)
        assert payload["info"]["post_processing"] == "birefnet" and payload["info"]["minmax_normalize"] is minmax
        assert payload["protocol"].startswith("BiRefNet inference.py: sigmoid, bilinear upsampling to GT size "
                                              "(align_corners=True), " + ("per-image min-max" if minmax else "no min-max"))


def test_cli_model_keeps_finished_datasets(model, processor, samples, tmp_path, monkeypatch, caplog,
                                            offline_hub):
    """Every --data is loaded before the model runs any (a bad one costs nothing); a dataset nothing can be scored on
    is reported, the others are scored and written, and the run still fails with one line naming it."""
    import dsunet_hf.predict

    read = []

    class Recorded(list):
        def __getitem__(self, index):
            read.append(index)
            return super().__getitem__(index)

    labels = [{"image": Image.open(item["image"]), "mask": (np.asarray(Image.open(item["mask"])) > 0) * np.uint8(3)}
              for item in samples[:2]]  # class-index masks (0/3): empty ground truth for a foreground model
    data = {"setA": Recorded(samples[:2]), "setB": samples[2:], "labels": labels,
            "unreadable": [{"image": str(tmp_path / "missing.jpg"), "mask": samples[0]["mask"]}]}

    def load_segmentation_dataset(source, split=None, **kwargs):
        if source.startswith("hub/"):
            raise FileNotFoundError(f"cannot load Hub dataset {source!r}: not in the cache (offline)")
        if source not in data:
            raise ValueError(f"{source}: no image/mask folder pair found")
        return data[source]

    fake = types.ModuleType("dsunet_hf.data")
    fake.load_segmentation_dataset = load_segmentation_dataset
    fake.dataset_name = lambda source: f"name-{source}"
    fake.dropped_files = lambda dataset: {"lonely.jpg": "no mask"} if dataset is data["unreadable"] else {}
    fake.binary_mask_problem = binary_mask_problem  # the real check
    monkeypatch.setitem(sys.modules, "dsunet_hf.data", fake)
    monkeypatch.setattr(dsunet_hf.predict, "load_model_and_processor", lambda *args, **kwargs: (model, processor))

    def run(*data_args, out):
        return run_evaluate_cli(make_parser().parse_args(
            ["evaluate", "--model", "m", *(f"--data={source}" for source in data_args), "--output-dir", str(out),
             "--max-samples", "1", "--no-progress", "--metric-workers", "0"]))

    for bad, problem in (("typo", "typo: no image/mask folder pair found"),
                         ("hub/typo", "cannot load Hub dataset 'hub/typo': not in the cache")):
        with pytest.raises(SystemExit, match=f"^evaluate: --data {re.escape(problem)}"):
            run("setA", bad, out=tmp_path / "typo")
    assert read == [] and not (tmp_path / "typo").exists()  # setA was never run

    out = tmp_path / "report"
    with caplog.at_level(logging.WARNING, logger="dsunet_hf.evaluate"):
        with pytest.raises(SystemExit, match=re.escape(
                "evaluate: 1 of 4 datasets not scored (unreadable: no sample could be evaluated (1 requested, 1 "
                f"skipped)); the report of the others: {out / 'evaluation.json'}")):
            run("setA", "unreadable", "labels", "setB", out=out)
    payload = json.loads((out / "evaluation.json").read_text())
    assert list(payload["results"]) == ["name-setA", "name-labels", "name-setB"]
    assert payload["results"]["name-setB"] == by_hand(model, processor, samples[2:3])
    assert payload["info"]["failed_datasets"] == {
        "name-unreadable": "unreadable: no sample could be evaluated (1 requested, 1 skipped)"}
    assert "name-unreadable" not in payload["info"]["data"]
    skipped = payload["info"]["skipped"]["name-unreadable"]
    assert "missing.jpg" in skipped[0] and skipped[1] == "lonely.jpg: no mask (left out when loading)"
    assert "labels: the ground-truth masks hold class indices (0..3)" in caplog.text
    assert "setA: the ground-truth masks hold class indices" not in caplog.text

    with pytest.raises(SystemExit, match=r"^evaluate: unreadable: no sample could be evaluated \(1 requested"):
        run("unreadable", out=tmp_path / "none")  # nothing scored: nothing to report
    assert not (tmp_path / "none").exists()


def test_a_split_of_a_folder_without_split_folders_is_said_to_score_the_whole_folder(model, processor, samples,
                                                                                      tmp_path, monkeypatch, caplog,
                                                                                      offline_hub):
    """Was: --split test on a flat benchmark folder (images/ + masks/) scored all of it without a word, so a typo
    (--split tset) or a folder that mixes splits passed unseen, and the report said split 'test'."""
    import shutil

    import dsunet_hf.predict

    monkeypatch.setattr(dsunet_hf.predict, "load_model_and_processor", lambda *args, **kwargs: (model, processor))
    for folder in ("flat", "split/test"):  # a folder with split folders: the split is taken, nothing to say
        for kind in ("images", "masks"):
            shutil.copytree(tmp_path / kind, tmp_path / folder / kind)
    stray = next((tmp_path / "flat" / "images").iterdir())  # an image without a mask: said once (was three times)
    shutil.copy(stray, stray.with_name("stray" + stray.suffix))
    # A sliced split (datasets' "test[:50%]") is a slice of the split's folder: said as such (was "no 'test[:50%]'
    # split folder: the whole folder is evaluated" on a flat folder, of which half was scored).
    for data, said, split in ((tmp_path / "flat", True, "test"), (tmp_path / "split", False, "test"),
                              (tmp_path / "flat", True, "test[:50%]"), (tmp_path / "split", False, "test[:50%]")):
        caplog.clear()
        out = tmp_path / f"report-{said}"
        with caplog.at_level(logging.WARNING):
            assert run_evaluate_cli(make_parser().parse_args(
                ["evaluate", "--model", "m", "--data", str(data), "--split", split, "--max-samples", "1",
                 "--output-dir", str(out), "--no-progress", "--metric-workers", "0"])) == 0
        line = ("--data {} has no 'test' split folder: the whole folder is evaluated{} (the report records split"
                .format(data, " (sliced: test[:50%])" if "[" in split else ""))
        assert (line in caplog.text) is said, caplog.text
        assert caplog.text.count("without a mask") == (1 if data.name == "flat" else 0), caplog.text
        assert json.loads((out / "evaluation.json").read_text())["info"]["split"] == split

"""Data loading: benchmark layouts, imagefolder, Hub ids offline, verification, split, transform."""

from __future__ import annotations

import json
import logging

import datasets
import numpy as np
import pytest
import torch
from conftest import SHARED_DATA
from PIL import Image

from dsunet_hf.data import (
    SegmentationTransform,
    collate_segmentation,
    dataset_name,
    find_image_mask_pairs,
    load_segmentation_dataset,
    train_validation_split,
)
from dsunet_hf.image_processing import SegmentationImageProcessor
from dsunet_hf.synthetic import make_camouflage_dataset


def write_pairs(folder, image_dir, mask_dir, stems, size=(40, 30), mask_suffix=".png"):
    (folder / image_dir).mkdir(parents=True, exist_ok=True)
    (folder / mask_dir).mkdir(parents=True, exist_ok=True)
    for i, stem in enumerate(stems):
        Image.new("RGB", size, (i * 20, 100, 50)).save(folder / image_dir / f"{stem}.jpg")
        mask = Image.new("L", size, 0)
        mask.paste(255, (0, 0, size[0] // 2, size[1]))
        mask.save(folder / mask_dir / f"{stem}{mask_suffix}")
    return folder


@pytest.mark.parametrize("image_dir, mask_dir", [("images", "masks"), ("Imgs", "GT"), ("im", "gt"),
                                                 ("Image", "GT_Object"), ("TrainDataset/image", "TrainDataset/mask"),
                                                 ("DUTS-TR-Image", "DUTS-TR-Mask")])
def test_benchmark_layouts_pair_by_stem(tmp_path, image_dir, mask_dir, caplog):
    write_pairs(tmp_path, image_dir, mask_dir, ["b", "a", "c"])
    (tmp_path / image_dir / "lonely.jpg").write_bytes((tmp_path / image_dir / "a.jpg").read_bytes())
    with caplog.at_level(logging.WARNING):
        scan = find_image_mask_pairs(tmp_path)
    assert [p[0].rsplit("/", 1)[-1] for p in scan.pairs] == ["a.jpg", "b.jpg", "c.jpg"]
    assert [p[1].rsplit("/", 1)[-1] for p in scan.pairs] == ["a.png", "b.png", "c.png"]
    assert [s.rsplit("/", 1)[-1] for s in scan.unpaired_images] == ["lonely.jpg"]
    assert "lonely.jpg" in caplog.text


def test_mask_file_suffixes_are_matched(tmp_path):
    write_pairs(tmp_path, "images", "masks", ["ISIC_001"], mask_suffix="_segmentation.png")
    write_pairs(tmp_path, "images", "masks", ["0002"], mask_suffix="_mask.png")
    scan = find_image_mask_pairs(tmp_path)
    assert [(a.rsplit("/", 1)[-1], b.rsplit("/", 1)[-1]) for a, b in scan.pairs] == [
        ("0002.jpg", "0002_mask.png"), ("ISIC_001.jpg", "ISIC_001_segmentation.png")]
    assert not scan.unpaired_images and not scan.unpaired_masks


def test_split_folders_and_unknown_layouts(tmp_path):
    write_pairs(tmp_path / "train", "images", "masks", ["a", "b", "c"])
    write_pairs(tmp_path / "val", "images", "masks", ["x"])
    assert len(load_segmentation_dataset(tmp_path, split="train")) == 3
    assert len(load_segmentation_dataset(tmp_path, split="validation")) == 1
    assert dataset_name(tmp_path / "train") == tmp_path.name
    (tmp_path / "odd" / "pictures").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"odd: no image/mask folder pair found \(subfolders: \['pictures'\]\)"):
        find_image_mask_pairs(tmp_path / "odd")


def test_verify_drops_bad_pairs_and_names_them(tmp_path, caplog):
    write_pairs(tmp_path, "images", "masks", ["good", "small", "broken"])
    Image.new("L", (10, 10)).save(tmp_path / "masks" / "small.png")
    (tmp_path / "images" / "broken.jpg").write_bytes(b"not a jpeg")
    with caplog.at_level(logging.WARNING):
        dataset = load_segmentation_dataset(tmp_path)
    assert [row["image"].rsplit("/", 1)[-1] for row in dataset] == ["good.jpg"]
    assert "masks/small.png is 10x10 but" in caplog.text and "images/small.jpg is 40x30" in caplog.text
    assert "broken.jpg" in caplog.text and "broken.jpg" in dataset.info.description
    assert dataset.column_names == ["image", "mask", "sample_id"]


def test_imagefolder_with_metadata(tmp_path):
    write_pairs(tmp_path / "train", "images", "masks", ["0", "1"])
    rows = [{"file_name": f"images/{i}.jpg", "mask_file_name": f"masks/{i}.png"} for i in range(2)]
    (tmp_path / "train" / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    dataset = load_segmentation_dataset(tmp_path)
    assert sorted(dataset.column_names) == ["image", "mask", "sample_id"] and len(dataset) == 2
    assert isinstance(dataset[0]["image"], Image.Image) and dataset[0]["mask"].size == (40, 30)


def test_in_memory_dataset_columns_are_renamed():
    raw = datasets.Dataset.from_dict({"img": ["a.png"], "seg": ["a_mask.png"], "extra": [1]})
    dataset = load_segmentation_dataset(raw, image_column="img", mask_column="seg")
    assert dataset.column_names == ["image", "mask", "sample_id"]
    with pytest.raises(ValueError, match="no mask column"):
        load_segmentation_dataset(datasets.Dataset.from_dict({"image": ["a"], "other": ["b"]}))


def test_hub_dataset_offline_and_not_cached_names_the_id(offline_hub):
    with pytest.raises(FileNotFoundError, match="someone/camouflage-set.*local folder"):
        load_segmentation_dataset("someone/camouflage-set")


def test_split_is_reproducible_and_disjoint(tmp_path):
    dataset = load_segmentation_dataset(make_camouflage_dataset(tmp_path / "d", num_pairs=20, size=(32, 32)))
    train_a, val_a = train_validation_split(dataset, 0.25, seed=3)
    train_b, val_b = train_validation_split(dataset, 0.25, seed=3)
    assert val_a["sample_id"] == val_b["sample_id"] and len(val_a) == 5
    assert not set(train_a["sample_id"]) & set(val_a["sample_id"])
    assert train_validation_split(dataset, 0.25, seed=4)[1]["sample_id"] != val_a["sample_id"]
    with pytest.raises(ValueError, match="empty"):
        train_validation_split(dataset.select([0]), 0.5)


def test_transform_flips_image_and_mask_together_deterministically(tmp_path):
    # An asymmetric scene whose mask is derived from the image: flips must keep them aligned.
    image = np.zeros((32, 48, 3), dtype=np.uint8)
    image[4:12, 6:30] = 255
    Image.fromarray(image).save(tmp_path / "img.png")
    Image.fromarray(image[..., 0]).save(tmp_path / "mask.png")
    rows = datasets.Dataset.from_dict({"image": [str(tmp_path / "img.png")] * 16,
                                       "mask": [str(tmp_path / "mask.png")] * 16, "sample_id": list(range(16))})
    processor = SegmentationImageProcessor(size={"height": 32, "width": 48}, do_normalize=False)
    transform = SegmentationTransform(processor, train=True, seed=7)
    first = transform(rows[:16])
    for pixels, labels in zip(first["pixel_values"], first["labels"]):
        torch.testing.assert_close(pixels[0:1], labels, atol=0.02, rtol=0)  # aligned after any flip
    flipped = [not torch.equal(p, first["pixel_values"][0]) for p in first["pixel_values"]]
    assert any(flipped) and not all(flipped)
    again = transform(rows[:16])
    assert all(torch.equal(a, b) for a, b in zip(first["pixel_values"], again["pixel_values"]))
    transform.epoch = 1
    later = transform(rows[:16])
    assert any(not torch.equal(a, b) for a, b in zip(first["pixel_values"], later["pixel_values"]))


def test_evaluation_rows_keep_the_original_ground_truth(tmp_path):
    write_pairs(tmp_path, "images", "masks", ["a", "b"], size=(50, 34), mask_suffix=".jpg")  # lossy JPEG masks
    dataset = load_segmentation_dataset(tmp_path)
    processor = SegmentationImageProcessor(size=32)
    batch = collate_segmentation([dataset.with_transform(SegmentationTransform(processor, train=False))[i]
                                  for i in range(2)])
    assert batch["pixel_values"].shape == (2, 3, 32, 32) and batch["labels"].shape == (2, 1, 32, 32)
    assert batch["sample_id"].tolist() == [0, 1]
    ground_truth = batch["ground_truth"][0]
    assert ground_truth.dtype == np.uint8 and ground_truth.shape == (34, 50) == batch["original_size"][0]
    assert (np.abs(ground_truth.astype(int) - 127.5) > 100).mean() > 0.95  # near 0/255 despite JPEG
    assert 0 <= batch["labels"].min() and batch["labels"].max() <= 1


def test_synthetic_data_is_deterministic_and_not_trivial(tmp_path):
    a = make_camouflage_dataset(tmp_path / "a", num_pairs=6, size=(64, 64), seed=5)
    b = make_camouflage_dataset(tmp_path / "b", num_pairs=6, size=(64, 64), seed=5)
    for name in ("images/0003.png", "masks/0003.png"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    for index in range(6):
        image = np.asarray(Image.open(a / f"images/{index:04d}.png"), dtype=np.float32)
        mask = np.asarray(Image.open(a / f"masks/{index:04d}.png")) > 127
        assert 0.02 < mask.mean() < 0.6
        colour_gap = np.abs(image[mask].mean(0) - image[~mask].mean(0)).max()
        assert colour_gap < 80  # the object is not a flat colour blob on a different background


@pytest.mark.skipif(not (SHARED_DATA / "ECSSD").is_dir(), reason=f"real benchmark samples not found under {SHARED_DATA}")
def test_real_ecssd_folder():
    dataset = load_segmentation_dataset(SHARED_DATA / "ECSSD")
    assert len(dataset) == 200 and dataset_name(SHARED_DATA / "ECSSD") == "ECSSD"
    row = dataset.with_transform(SegmentationTransform(SegmentationImageProcessor(size=64), train=False))[0]
    assert row["pixel_values"].shape == (3, 64, 64) and row["ground_truth"].dtype == np.uint8

"""Data loading: folder layouts, imagefolder / Dataset / Hub sources, verification, splits, the transform,
collation and the built-in synthetic data. All files are tiny and generated in tmp_path."""

from __future__ import annotations

import json
import logging
import pickle
import random
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from dsunet_hf import SegmentationImageProcessor
from dsunet_hf.data import (
    DatasetUnavailableError,
    PairScan,
    SegmentationTransform,
    collate_segmentation,
    dataset_name,
    dropped_files,
    find_image_mask_pairs,
    find_labels_file,
    load_segmentation_dataset,
    pair_folders,
    train_validation_split,
)
from dsunet_hf.image_io import ImageReadError
from dsunet_hf.synthetic import make_camouflage_dataset, make_camouflage_sample

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
LOGGER = "dsunet_hf.data"


# ------------------------------------------------------------------------------------------ helpers
def _rgb(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _mask(w: int, h: int) -> Image.Image:
    arr = np.zeros((h, w), np.uint8)
    arr[h // 4 : h // 2, w // 3 :] = 255
    return Image.fromarray(arr)


def write_pairs(root: Path, image_dir: str, mask_dir: str, stems, size=(20, 16), image_ext=".jpg") -> None:
    (root / image_dir).mkdir(parents=True, exist_ok=True)
    (root / mask_dir).mkdir(parents=True, exist_ok=True)
    for i, stem in enumerate(stems):
        _rgb(*size, seed=i).save(root / image_dir / f"{stem}{image_ext}")
        _mask(*size).save(root / mask_dir / f"{stem}.png")


def warnings_text(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING)


@pytest.fixture
def processor():
    return SegmentationImageProcessor(size=32)


# ------------------------------------------------------------------------------------------ layouts
@pytest.mark.parametrize(
    "image_dir, mask_dir",
    [
        ("images", "masks"),
        ("image", "mask"),
        ("Imgs", "GT"),
        ("im", "gt"),
        ("Image", "GT_Object"),
        ("TrainDataset/image", "TrainDataset/mask"),
        ("JPEGImages", "SegmentationClass"),
        ("images", "ground_truth_mask"),
        ("DUTS-TR-Image", "DUTS-TR-Mask"),
    ],
)
def test_layouts_pair_by_stem_and_report_unpaired(tmp_path, caplog, image_dir, mask_dir):
    write_pairs(tmp_path, image_dir, mask_dir, ["b", "a", "c"])
    _rgb(20, 16).save(tmp_path / image_dir / "only_image.jpg")
    _mask(20, 16).save(tmp_path / mask_dir / "only_mask.png")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        scan = find_image_mask_pairs(tmp_path)
    assert isinstance(scan, PairScan)
    assert [(Path(i).name, Path(m).name) for i, m in scan.pairs] == [("a.jpg", "a.png"), ("b.jpg", "b.png"),
                                                                      ("c.jpg", "c.png")]
    assert all(Path(i).parent.name == Path(image_dir).name for i, _ in scan.pairs)
    assert [Path(p).name for p in scan.unpaired_images] == ["only_image.jpg"]
    assert [Path(p).name for p in scan.unpaired_masks] == ["only_mask.png"]
    text = warnings_text(caplog)
    assert "only_image.jpg" in text and "only_mask.png" in text and "1 image(s) without a mask" in text


def test_cod10k_layout_ignores_edge_and_instance_folders(tmp_path):
    write_pairs(tmp_path, "Image", "GT_Object", ["x1", "x2"])
    (tmp_path / "GT_Edge").mkdir()
    (tmp_path / "GT_Instance").mkdir()
    scan = find_image_mask_pairs(tmp_path)
    assert {Path(m).parent.name for _, m in scan.pairs} == {"GT_Object"}
    assert len(scan.pairs) == 2


def test_mask_name_suffix_and_name_clash(tmp_path, caplog):
    write_pairs(tmp_path, "images", "masks", ["p1"])
    _rgb(20, 16).save(tmp_path / "images" / "p2.jpg")
    _mask(20, 16).save(tmp_path / "masks" / "p2_segmentation.png")  # ISIC-style suffix
    _rgb(20, 16).save(tmp_path / "images" / "p3.jpg")
    _mask(20, 16).save(tmp_path / "masks" / "p3_mask.png")
    _rgb(20, 16).save(tmp_path / "images" / "p4.jpg")
    _mask(20, 16).save(tmp_path / "masks" / "p4.jpg.png")  # named after the image file (was: both unpaired)
    _rgb(20, 16).save(tmp_path / "images" / "dup.jpg")
    _rgb(20, 16).save(tmp_path / "images" / "dup.png")
    _mask(20, 16).save(tmp_path / "masks" / "dup.png")
    _rgb(20, 16).save(tmp_path / "images" / "two.jpg")  # two masks for it: a clash, as before
    _mask(20, 16).save(tmp_path / "masks" / "two.png")
    _mask(20, 16).save(tmp_path / "masks" / "two.jpg.png")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        scan = find_image_mask_pairs(tmp_path)
    assert [Path(m).name for _, m in scan.pairs] == ["p1.png", "p2_segmentation.png", "p3_mask.png", "p4.jpg.png"]
    assert sorted(Path(p).relative_to(tmp_path).as_posix() for p in scan.problems) == [
        "images/dup.jpg", "images/dup.png", "images/two.jpg", "masks/dup.png", "masks/two.jpg.png", "masks/two.png"]
    assert not scan.unpaired_images and not scan.unpaired_masks
    assert "ambiguous name 'dup'" in warnings_text(caplog)


def test_names_differing_in_case_only_pair_when_unique(tmp_path):
    """IMG_1.JPG + img_1.png (a dataset made on a case-insensitive file system) were left unpaired, the sample lost."""
    write_pairs(tmp_path, "images", "masks", ["p1"])
    _rgb(20, 16).save(tmp_path / "images" / "IMG_1.JPG")
    _mask(20, 16).save(tmp_path / "masks" / "img_1.png")
    _rgb(20, 16).save(tmp_path / "images" / "Cam_2.jpg")
    _mask(20, 16).save(tmp_path / "masks" / "cam_2_Mask.png")
    _rgb(20, 16).save(tmp_path / "images" / "Ext_3.jpg")
    _mask(20, 16).save(tmp_path / "masks" / "ext_3.JPG.png")
    _rgb(20, 16).save(tmp_path / "images" / "Two.jpg")  # two masks for it: not guessed at
    _mask(20, 16).save(tmp_path / "masks" / "two.png")
    _mask(20, 16).save(tmp_path / "masks" / "TWO.png")
    scan = find_image_mask_pairs(tmp_path)
    assert [(Path(i).name, Path(m).name) for i, m in scan.pairs] == [
        ("Cam_2.jpg", "cam_2_Mask.png"), ("Ext_3.jpg", "ext_3.JPG.png"), ("IMG_1.JPG", "img_1.png"),
        ("p1.jpg", "p1.png")]
    assert [Path(p).name for p in scan.unpaired_images] == ["Two.jpg"]
    assert [Path(p).name for p in scan.unpaired_masks] == ["TWO.png", "two.png"]


def test_symlinked_subfolders_are_read_once(tmp_path):
    """A dataset merged by links (images/kvasir -> ../../kvasir/images) lost the linked files without a word; a link
    to a folder above is not followed round."""
    write_pairs(tmp_path / "kvasir", "images", "masks", ["k1", "k2"], size=(8, 8))
    write_pairs(tmp_path / "merged", "images/local", "masks/local", ["m1"], size=(8, 8))
    for side in ("images", "masks"):
        (tmp_path / "merged" / side / "kvasir").symlink_to(tmp_path / "kvasir" / side, target_is_directory=True)
    (tmp_path / "merged" / "images" / "local" / "up").symlink_to(tmp_path / "merged" / "images", target_is_directory=True)
    scan = find_image_mask_pairs(tmp_path / "merged")
    assert [Path(i).relative_to(tmp_path / "merged" / "images").with_suffix("").as_posix() for i, _ in scan.pairs] == [
        "kvasir/k1", "kvasir/k2", "local/m1"]
    assert not scan.unpaired_images and not scan.unpaired_masks and not scan.problems


def test_split_subfolders(tmp_path):
    write_pairs(tmp_path / "train", "images", "masks", ["t1", "t2", "t3"])
    write_pairs(tmp_path / "val", "Imgs", "GT", ["v1", "v2"])
    assert len(load_segmentation_dataset(tmp_path, split="train")) == 3
    for split in ("validation", "val", "VAL"):
        ds = load_segmentation_dataset(tmp_path, split=split)
        assert [Path(p).stem for p in ds["image"]] == ["v1", "v2"]
    assert len(find_image_mask_pairs(tmp_path).pairs) == 3  # no split: the train folder
    # A sliced split: its folder's pairs, sliced as the loader slices them (was "no folder for split 'val[:50%]'").
    assert [Path(i).stem for i, _ in find_image_mask_pairs(tmp_path, "val[:50%]").pairs] == ["v1"]
    assert [Path(i).stem for i, _ in find_image_mask_pairs(tmp_path, "train[-2:]").pairs] == ["t2", "t3"]
    with pytest.raises(ValueError, match=r"no folder for split 'test'.*train.*val"):
        load_segmentation_dataset(tmp_path, split="test")


def test_split_subfolders_inside_the_image_and_mask_folders(tmp_path, caplog):
    # ADE20K: images/{training,validation} + annotations/{training,validation}; a split must not see the other's files.
    write_pairs(tmp_path, "images/training", "annotations/training", ["t1", "t2"])
    write_pairs(tmp_path, "images/validation", "annotations/validation", ["v1"])
    assert [Path(p).stem for p in load_segmentation_dataset(tmp_path, split="train")["image"]] == ["t1", "t2"]
    for split in ("validation", "val"):
        assert [Path(p).stem for p in load_segmentation_dataset(tmp_path, split=split)["image"]] == ["v1"]
    with pytest.raises(ValueError, match=r"no folder for split 'test'; split folders found in "
                                         r"images/: \['training', 'validation'\]; annotations/: "):
        load_segmentation_dataset(tmp_path, split="test")
    # No split (evaluate without --split): the train pair, as for split folders side by side; mixing both splits
    # scored training images with the validation ones.
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert [Path(i).stem for i, _ in find_image_mask_pairs(tmp_path).pairs] == ["t1", "t2"]
    assert "no split given, using images/training + annotations/training (not ['validation']" in warnings_text(caplog)


def test_labels_file_is_found_beside_the_data_in_any_layout(tmp_path, caplog, monkeypatch):
    """id2label.json in the folder, beside split folders, or inside the split folder that --train-data organs loads
    (organs/train/): that last one was missed, and a multi-class run built a binary model."""
    write_pairs(tmp_path / "organs" / "train", "images", "masks", ["a"])
    write_pairs(tmp_path / "organs" / "val", "images", "masks", ["b"])
    inner = tmp_path / "organs" / "train" / "id2label.json"
    inner.write_text('{"0": "background", "1": "liver"}')
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert find_labels_file(tmp_path / "organs") == inner
    assert not caplog.records  # training loads split="train": its log said "no split given, using the train/ ..."
    assert find_labels_file(tmp_path / "organs" / "train") == inner
    assert find_labels_file(tmp_path / "organs", split="val") is None  # val/ has none of its own
    assert find_labels_file(tmp_path / "organs", split="train[:50%]") == inner  # a sliced split: its folder's
    beside = tmp_path / "organs" / "id2label.json"
    beside.write_text('{"0": "background", "1": "liver"}')
    assert find_labels_file(tmp_path / "organs" / "val") == beside
    assert find_labels_file(tmp_path / "photos") is None and find_labels_file("org/name") is None
    monkeypatch.setenv("HOME", str(tmp_path))  # "~/organs" (a recipe's train_data) loads, and had no labels file
    assert find_labels_file("~/organs/val") == beside and len(load_segmentation_dataset("~/organs", "val")) == 1
    assert len(find_image_mask_pairs("~/organs", "val").pairs) == 1 and pair_folders("~/organs")[0] == inner.parent / "images"


def test_split_folders_on_one_side_with_one_flat_folder_for_all_splits(tmp_path, caplog):
    """CAMO as released: Images/Train + Images/Test and one flat GT/. Every split paired nothing (the image names
    carried the split folder); now a split takes its folder, and the other split's masks are not called unpaired."""
    write_pairs(tmp_path / "CAMO", "Images/Train", "GT", ["c1", "c2"])
    write_pairs(tmp_path / "CAMO", "Images/Test", "GT", ["c3"])
    _mask(20, 16).save(tmp_path / "CAMO" / "GT" / "orphan.png")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        train = find_image_mask_pairs(tmp_path / "CAMO", "train")
    assert [(Path(i).stem, Path(m).stem) for i, m in train.pairs] == [("c1", "c1"), ("c2", "c2")]
    assert [Path(p).name for p in train.unpaired_masks] == ["orphan.png"]  # c3.png is the test split's
    assert "orphan.png" in warnings_text(caplog) and "c3" not in warnings_text(caplog)
    assert [Path(i).stem for i in load_segmentation_dataset(tmp_path / "CAMO", split="test")["image"]] == ["c3"]
    assert [Path(i).stem for i, _ in find_image_mask_pairs(tmp_path / "CAMO").pairs] == ["c1", "c2"]  # no split
    with pytest.raises(ValueError, match=r"Images: no folder for split 'val'; split folders found: \['Test', 'Train'\]"):
        find_image_mask_pairs(tmp_path / "CAMO", "val")
    # The folders a split reads, said by no message (evaluate --split asks whether a split folder was found: each
    # warning above was said three times).
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert pair_folders(tmp_path / "CAMO") == (tmp_path / "CAMO" / "Images" / "Train", tmp_path / "CAMO" / "GT")
        assert pair_folders(tmp_path / "CAMO", "test[:1]")[0].name == "Test"
    assert not caplog.records
    # The other way round: one image folder, masks split.
    write_pairs(tmp_path / "flipped", "images", "masks/train", ["a", "b"])
    write_pairs(tmp_path / "flipped", "images", "masks/test", ["z"])
    scan = find_image_mask_pairs(tmp_path / "flipped", "test")
    assert [Path(i).stem for i, _ in scan.pairs] == ["z"] and not scan.unpaired_images


def test_pascal_voc_layout_takes_its_masks_from_segmentation_class(tmp_path):
    # Annotations/ (a mask-folder name) holds VOC's XML boxes; SegmentationClass/ the masks.
    write_pairs(tmp_path, "JPEGImages", "SegmentationClass", ["2007_000032", "2007_000033"])
    write_pairs(tmp_path, "JPEGImages", "SegmentationObject", ["2007_000032", "2007_000033"])
    (tmp_path / "Annotations").mkdir()
    for stem in ("2007_000032", "2007_000033", "2007_000039"):
        (tmp_path / "Annotations" / f"{stem}.xml").write_text("<annotation/>")
    scan = find_image_mask_pairs(tmp_path)
    assert [(Path(i).parent.name, Path(m).parent.name) for i, m in scan.pairs] == [("JPEGImages", "SegmentationClass")] * 2


def test_folder_without_split_subfolders_is_used_whole_for_any_split(tmp_path):
    write_pairs(tmp_path, "images", "masks", ["a", "b"])
    assert len(load_segmentation_dataset(tmp_path, split="validation")) == 2


def test_several_datasets_one_level_down_is_an_error(tmp_path):
    write_pairs(tmp_path / "Kvasir", "images", "masks", ["a"])
    write_pairs(tmp_path / "CVC-300", "images", "masks", ["b"])
    with pytest.raises(ValueError, match=r"several image/mask folders.*CVC-300.*Kvasir"):
        find_image_mask_pairs(tmp_path)
    assert len(load_segmentation_dataset(tmp_path, split="Kvasir")) == 1  # a subfolder picked by name


def test_unrecognised_layout_error_names_root_and_subfolders(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "outlines").mkdir()
    with pytest.raises(ValueError) as info:
        load_segmentation_dataset(tmp_path)
    assert str(tmp_path) in str(info.value) and "photos/" in str(info.value) and "outlines/" in str(info.value)
    (tmp_path / "images").mkdir()
    with pytest.raises(ValueError, match="image folder images/ has no mask folder"):
        find_image_mask_pairs(tmp_path)
    # The image or mask folder itself passed (--train-data TrainDataset/Imgs): said, with the folder to pass.
    write_pairs(tmp_path / "TrainDataset", "Imgs", "GT", ["a"])
    for inner in ("Imgs", "GT"):
        role = "image" if inner == "Imgs" else "mask"
        with pytest.raises(ValueError, match=f"{inner}/ is the {role} folder itself; pass its parent .*TrainDataset "):
            load_segmentation_dataset(tmp_path / "TrainDataset" / inner)


def test_local_dataset_columns_and_stable_sample_ids(tmp_path):
    write_pairs(tmp_path / "MySet", "images", "masks", ["c", "a", "b"])
    ds = load_segmentation_dataset(tmp_path / "MySet")
    assert ds.column_names == ["image", "mask", "sample_id"]
    assert list(ds["sample_id"]) == [0, 1, 2]
    assert [Path(p).stem for p in ds["image"]] == ["a", "b", "c"]
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in list(ds["image"]) + list(ds["mask"]))
    assert dataset_name(tmp_path / "MySet") == "MySet" == dataset_name(ds)
    assert dropped_files(ds) == {}


# ------------------------------------------------------------------------------------------ other sources
def _write_imagefolder(root: Path, n: int = 3) -> None:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    with open(root / "metadata.jsonl", "w") as handle:
        for i in range(n):
            _rgb(12, 10, seed=i).save(root / "images" / f"{i}.png")
            _mask(12, 10).save(root / "masks" / f"{i}.png")
            handle.write(json.dumps({"file_name": f"images/{i}.png", "mask_file_name": f"masks/{i}.png"}) + "\n")


def test_imagefolder_with_metadata(tmp_path, processor):
    _write_imagefolder(tmp_path / "folder")
    ds = load_segmentation_dataset(tmp_path / "folder", cache_dir=str(tmp_path / "cache"))
    assert ds.column_names == ["image", "mask", "sample_id"]
    assert isinstance(ds.features["image"], datasets.Image) and isinstance(ds.features["mask"], datasets.Image)
    assert list(ds["sample_id"]) == [0, 1, 2] and len(ds) == 3
    row = ds[1]
    assert row["mask"].size == (12, 10) and np.asarray(row["mask"].convert("L")).max() == 255
    item = ds.with_transform(SegmentationTransform(processor, train=False))[1]
    assert item["ground_truth"].shape == (10, 12) and item["pixel_values"].shape == (3, 32, 32)
    assert dataset_name(ds) == "folder"


def test_dataset_object_with_renamed_columns():
    source = datasets.Dataset.from_dict(
        {"photo": [np.zeros((4, 5, 3), np.uint8)] * 2, "seg": [np.ones((4, 5), np.uint8)] * 2,
         "note": ["x", "y"], "class": [0, 1]}
    )
    with pytest.raises(ValueError, match=r"columns: \['photo', 'seg', 'note', 'class'\]"):
        load_segmentation_dataset(source)
    ds = load_segmentation_dataset(source, image_column="photo", mask_column="seg")
    assert ds.column_names == ["image", "mask", "sample_id"] and list(ds["sample_id"]) == [0, 1]
    assert np.asarray(ds[0]["image"]).shape == (4, 5, 3)
    item = ds.with_transform(SegmentationTransform(SegmentationImageProcessor(size=8), train=False))[1]
    assert item["ground_truth"].shape == (4, 5) and item["labels"].shape == (1, 8, 8)
    labelled = datasets.Dataset.from_dict(
        {"image": ["a.png"], "label": [1]}, features=datasets.Features(
            {"image": datasets.Value("string"), "label": datasets.ClassLabel(names=["no", "yes"])})
    )
    with pytest.raises(ValueError, match="mask"):  # a class label is not a mask column
        load_segmentation_dataset(labelled)


def test_hub_id_offline_not_cached_names_the_id(offline_hub):
    with pytest.raises(DatasetUnavailableError) as info:
        load_segmentation_dataset("test-org/no-such-seg-dataset")
    message = str(info.value)
    assert "test-org/no-such-seg-dataset" in message
    assert "HF_HUB_OFFLINE" in message and "local folder" in message and "Download" in message
    assert isinstance(info.value, FileNotFoundError)


def test_dataset_name(tmp_path):
    assert dataset_name("facebook/some-dataset") == "facebook/some-dataset"
    (tmp_path / "COD10K" / "Train").mkdir(parents=True)
    assert dataset_name(tmp_path / "COD10K" / "Train") == "COD10K (Train)"
    assert dataset_name(str(tmp_path / "COD10K") + "/") == "COD10K"
    # A Hub-cache snapshot (what snapshot_download returns) is named by its repo: the model card named the commit.
    snapshot = tmp_path / "hub" / "datasets--some-org--COD10K" / "snapshots" / ("0123abcd" * 5)
    (snapshot / "Train").mkdir(parents=True)
    assert dataset_name(snapshot) == "some-org/COD10K" and dataset_name(str(snapshot) + "/") == "some-org/COD10K"
    assert dataset_name(snapshot / "Train") == "some-org/COD10K (Train)"


# ------------------------------------------------------------------------------------------ verification
def _with_orientation(image: Image.Image, path: Path, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(path, exif=exif.tobytes())


def test_verify_drops_mismatch_and_corrupt_files_with_one_warning(tmp_path, caplog):
    root = tmp_path / "set"
    write_pairs(root, "images", "masks", ["0001", "0002", "0003", "0004"], size=(40, 30))
    (root / "images" / "0002.jpg").write_bytes(b"this is not an image")
    _mask(30, 20).save(root / "masks" / "0003.png")
    # EXIF orientation 6 (rotate 90): stored 40x30, shown 30x40 -> the 30x40 mask matches.
    _with_orientation(_rgb(40, 30), root / "images" / "0004.jpg", 6)
    _mask(30, 40).save(root / "masks" / "0004.png")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        ds = load_segmentation_dataset(root)
    assert [Path(p).stem for p in ds["image"]] == ["0001", "0004"]
    drops = [r for r in caplog.records if r.name == LOGGER and "dropped" in r.getMessage()]
    assert len(drops) == 1
    text = drops[0].getMessage()
    assert "images/0002.jpg cannot be read" in text
    assert "masks/0003.png is 30x20 but images/0003.jpg is 40x30" in text
    dropped = {Path(p).relative_to(root).as_posix(): why for p, why in dropped_files(ds).items()}
    assert set(dropped) == {"images/0002.jpg", "masks/0002.png", "images/0003.jpg", "masks/0003.png"}
    assert "4 file(s) not used" in ds.info.description
    # the recorded drops survive a split
    assert dropped_files(train_validation_split(ds, 0.5)[1]) == dropped_files(ds)


def test_a_rotated_tiff_is_checked_at_the_size_it_is_shown(tmp_path):
    """Pillow's TIFF plugin reports a rotated TIFF's displayed size at open already: the header check turned it a
    second time and dropped a correct pair."""
    from dsunet_hf.data import _oriented_size
    from dsunet_hf.image_io import load_image

    root = tmp_path / "set"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    stored = _rgb(30, 40)  # stored 30 wide x 40 high; Orientation 6 shows it 40 x 30
    stored.save(root / "images" / "a.tif", tiffinfo={0x0112: 6})
    _with_orientation(stored, root / "images" / "b.jpg", 6)
    for name in ("a", "b"):
        _mask(40, 30).save(root / "masks" / f"{name}.png")
        path = next((root / "images").glob(f"{name}.*"))
        assert _oriented_size(str(path)) == load_image(path).size == (40, 30), path.name
    assert [Path(p).stem for p in load_segmentation_dataset(root)["image"]] == ["a", "b"]


def test_verify_false_keeps_everything_and_errors_name_the_file(tmp_path, processor):
    root = tmp_path / "set"
    write_pairs(root, "images", "masks", ["a", "b"])
    (root / "images" / "b.jpg").write_bytes(b"\xff\xd8 broken")
    _mask(8, 8).save(root / "masks" / "a.png")
    ds = load_segmentation_dataset(root, verify=False).with_transform(SegmentationTransform(processor, train=True))
    with pytest.raises(ValueError, match=r"mask .*a\.png is 8x8 but image .*a\.jpg is 20x16"):
        ds[0]
    with pytest.raises(ImageReadError, match=r"b\.jpg"):
        ds[1]


def test_verify_full_catches_truncated_data(tmp_path):
    root = tmp_path / "set"
    write_pairs(root, "images", "masks", ["a", "b"], size=(64, 48), image_ext=".png")
    data = (root / "images" / "b.png").read_bytes()
    (root / "images" / "b.png").write_bytes(data[: len(data) // 2])
    assert len(load_segmentation_dataset(root)) == 2  # headers are fine
    assert [Path(p).stem for p in load_segmentation_dataset(root, verify="full", num_proc=2)["image"]] == ["a"]


# ------------------------------------------------------------------------------------------ split
def test_train_validation_split_reproducible_and_disjoint():
    ds = load_segmentation_dataset(datasets.Dataset.from_dict({"image": ["i"] * 20, "mask": ["m"] * 20}))
    train, val = train_validation_split(ds, 0.25, seed=3)
    assert (len(train), len(val)) == (15, 5)
    assert not set(train["sample_id"]) & set(val["sample_id"])
    assert set(train["sample_id"]) | set(val["sample_id"]) == set(range(20))
    again = train_validation_split(ds, 0.25, seed=3)[1]
    assert list(val["sample_id"]) == list(again["sample_id"])
    assert set(train_validation_split(ds, 0.25, seed=4)[1]["sample_id"]) != set(val["sample_id"])
    # a subset passed back in keeps its ids (augmentation stays tied to the sample)
    assert list(load_segmentation_dataset(val)["sample_id"]) == list(val["sample_id"])
    with pytest.raises(ValueError, match="empty"):
        train_validation_split(ds.select([0]), 0.5)
    with pytest.raises(ValueError):
        train_validation_split(ds, 0.0)


def test_a_pair_dropped_by_verification_moves_no_other_sample_across_the_split(tmp_path):
    """The recovery the training error advises for a truncated file (--verify-data full, then resume) drops its pair;
    the split permuted the rows left, so half the validation images moved into training (and back)."""
    root = tmp_path / "d"
    write_pairs(root, "images", "masks", [f"{i:03d}" for i in range(40)])

    def split():
        ds = load_segmentation_dataset(root, verify="full")
        train, val = train_validation_split(ds, 0.25, seed=0)
        ids = {Path(image).stem: sample_id for image, sample_id in zip(ds["image"], ds["sample_id"])}
        return ids, {Path(p).stem for p in train["image"]}, {Path(p).stem for p in val["image"]}

    ids, train, val = split()
    ds = load_segmentation_dataset(root, verify="full")
    same = ds.train_test_split(test_size=10, seed=0)  # nothing dropped: the split runs had before
    assert list(train_validation_split(ds, 0.25, seed=0)[1]["sample_id"]) == list(same["test"]["sample_id"])
    assert list(train_validation_split(ds, 0.25, seed=0)[0]["sample_id"]) == list(same["train"]["sample_id"])
    for victim, in_validation in ((min(train), False), (min(val), True)):
        mask = root / "masks" / f"{victim}.png"
        data = mask.read_bytes()
        mask.write_bytes(data[: len(data) // 2])  # truncated: verification drops the pair
        dropped_ids, dropped_train, dropped_val = split()
        mask.write_bytes(data)
        assert victim not in dropped_ids and all(dropped_ids[stem] == ids[stem] for stem in dropped_ids)
        assert len(dropped_val) == 10
        if in_validation:  # one training image takes its place
            assert len(dropped_val - val) == 1 and dropped_train < train
        else:
            assert dropped_val == val and dropped_train == train - {victim}


def test_empty_image_and_mask_folders_are_named_as_empty(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(ValueError, match=r"no usable image/mask pairs in images/ \+ masks/: neither holds an image "
                                         r"file$"):
        load_segmentation_dataset(tmp_path)
    _rgb(8, 8).save(tmp_path / "images" / "a.jpg")
    with pytest.raises(ValueError, match="they hold 1 and 0 image files; see the warnings above"):
        load_segmentation_dataset(tmp_path)


# ------------------------------------------------------------------------------------------ transform
def _asymmetric_dataset(root: Path, n: int = 8, size: int = 24) -> datasets.Dataset:
    """Images whose mask is derived from the image itself: mask = red channel > 127 (an asymmetric L shape)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        red = np.where(((xx < 6 + i % 3) & (yy < 18)) | ((yy > 14) & (yy < 18) & (xx < 20)), 255, 0)
        image = np.stack([red, xx * 10, yy * 10], -1).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"{i:02d}.png")
        Image.fromarray((red > 127).astype(np.uint8) * 255).save(root / "masks" / f"{i:02d}.png")
    return load_segmentation_dataset(root)


def _unnormalise(pixel_values: torch.Tensor, proc: SegmentationImageProcessor) -> np.ndarray:
    mean = torch.tensor(proc.image_mean)[:, None, None]
    std = torch.tensor(proc.image_std)[:, None, None]
    return np.round(((pixel_values * std + mean) * 255).numpy()).astype(int)


def test_training_flips_identical_for_image_and_mask(tmp_path):
    proc = SegmentationImageProcessor(size=24)  # no resize: pixels can be compared exactly
    ds = _asymmetric_dataset(tmp_path / "asym")
    transform = SegmentationTransform(proc, train=True, seed=1)
    seen = set()
    for epoch in range(3):
        transform.epoch = epoch
        batch = ds.with_transform(transform)[:]
        assert "ground_truth" not in batch
        for sid, pixels, labels in zip(batch["sample_id"], batch["pixel_values"], batch["labels"]):
            original = np.asarray(Image.open(ds[sid]["image"]))
            flips = transform.flips(sid)
            seen.add(flips)
            expected = original[:, ::-1] if flips[0] else original
            expected = expected[::-1] if flips[1] else expected
            image = _unnormalise(pixels, proc)
            assert np.abs(image - expected.transpose(2, 0, 1)).max() <= 1
            np.testing.assert_array_equal(labels[0].numpy(), (image[0] > 127).astype(np.float32))
    assert seen == {(False, False), (True, False), (False, True), (True, True)}


def test_flips_are_a_pure_function_of_seed_epoch_and_sample(tmp_path):
    proc = SegmentationImageProcessor(size=24)
    ds = _asymmetric_dataset(tmp_path / "asym", n=4)
    a = SegmentationTransform(proc, train=True, seed=7)
    b = SegmentationTransform(proc, train=True, seed=7)
    a.epoch = b.epoch = 5
    random.seed(1)
    first = ds.with_transform(a)[:]
    random.seed(2)
    np.random.seed(3)
    torch.manual_seed(4)
    second = ds.with_transform(b)[::-1]  # other order, other global RNG state, another instance
    for i, sid in enumerate(first["sample_id"]):
        j = second["sample_id"].index(sid)
        assert torch.equal(first["pixel_values"][i], second["pixel_values"][j])
        assert torch.equal(first["labels"][i], second["labels"][j])
    ids = range(64)
    assert [a.flips(s, 0) for s in ids] != [a.flips(s, 1) for s in ids]  # epochs differ
    assert [a.flips(s, 0) for s in ids] != [SegmentationTransform(proc, True, seed=8).flips(s, 0) for s in ids]
    # turning one flip off leaves the other one's decisions unchanged
    assert [SegmentationTransform(proc, True, hflip=False).flips(s, 2) for s in ids] == [
        (False, v) for _, v in (SegmentationTransform(proc, True).flips(s, 2) for s in ids)
    ]
    # a pickled copy (what DataLoader workers get) decides the same
    clone = pickle.loads(pickle.dumps(a))
    assert clone.epoch == 5 and [clone.flips(s) for s in ids] == [a.flips(s) for s in ids]


def test_eval_transform_outputs(tmp_path, processor):
    root = tmp_path / "set"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    _rgb(50, 40).save(root / "images" / "x.jpg")
    mask = np.zeros((40, 50), np.uint8)
    mask[5:30, 10:45] = 255
    Image.fromarray(mask).save(root / "masks" / "x.png")
    item = load_segmentation_dataset(root).with_transform(SegmentationTransform(processor, train=False))[0]
    assert item["pixel_values"].shape == (3, 32, 32) and item["pixel_values"].dtype == torch.float32
    labels = item["labels"]
    assert labels.shape == (1, 32, 32) and labels.min() >= 0 and labels.max() <= 1
    assert ((labels > 0.02) & (labels < 0.98)).any()  # soft (bicubic) edges
    assert item["ground_truth"].dtype == np.uint8 and item["ground_truth"].shape == (40, 50)
    np.testing.assert_array_equal(item["ground_truth"], mask)
    assert item["original_size"] == (40, 50) and item["sample_id"] == 0


def test_lossy_three_channel_jpeg_mask_gives_near_binary_ground_truth(tmp_path, processor):
    root = tmp_path / "kvasir-like"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    _rgb(64, 48).save(root / "images" / "polyp.jpg")
    yy, xx = np.mgrid[0:48, 0:64]
    binary = ((yy - 24) ** 2 / 15**2 + (xx - 30) ** 2 / 20**2) < 1
    Image.fromarray(np.repeat(binary[..., None] * 255, 3, -1).astype(np.uint8)).save(
        root / "masks" / "polyp.jpg", quality=75)
    assert Image.open(root / "masks" / "polyp.jpg").mode == "RGB"
    gt = load_segmentation_dataset(root).with_transform(SegmentationTransform(processor, train=False))[0]["ground_truth"]
    assert gt.shape == (48, 64) and gt.dtype == np.uint8
    assert ((gt > 40) & (gt < 215)).mean() < 0.05
    assert ((gt >= 128) == binary).mean() > 0.98


def test_collate_types(tmp_path, processor):
    ds = _asymmetric_dataset(tmp_path / "asym", n=5)
    for train in (True, False):
        loader = DataLoader(ds.with_transform(SegmentationTransform(processor, train=train)), batch_size=3,
                            collate_fn=collate_segmentation)
        batch = next(iter(loader))
        assert batch["pixel_values"].shape == (3, 3, 32, 32) and batch["labels"].shape == (3, 1, 32, 32)
        assert batch["sample_id"].dtype == torch.long and batch["sample_id"].tolist() == [0, 1, 2]
        if train:
            assert set(batch) == {"pixel_values", "labels", "sample_id"}
        else:
            assert isinstance(batch["ground_truth"], list) and batch["ground_truth"][0].shape == (24, 24)
            assert batch["original_size"] == [(24, 24)] * 3
    with pytest.raises(ValueError):
        collate_segmentation([])


def _image_cells(n: int, mask=None) -> datasets.Dataset:
    masks = [_mask(12, 10)] * n if mask is None else mask
    return datasets.Dataset.from_dict({"image": [_rgb(12, 10, seed=i) for i in range(n)], "mask": masks},
                                      features=datasets.Features({"image": datasets.Image(), "mask": datasets.Image()}))


def test_hub_dataset_with_its_validation_split_named_val(tmp_path):
    """--val-data asks split="validation": a repo that names it "val" failed in datasets.load_dataset ('Unknown split')
    before the split aliases were looked at; a train split named "training" likewise."""
    from dsunet_hf.data import _load_hub

    root = tmp_path / "repo"
    (root / "data").mkdir(parents=True)
    _image_cells(3).to_parquet(str(root / "data" / "tr.parquet"))
    _image_cells(2).to_parquet(str(root / "data" / "va.parquet"))
    (root / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_files:\n  - split: training\n"
                                    "    path: data/tr.parquet\n  - split: val\n    path: data/va.parquet\n---\n")
    kwargs = {"cache_dir": str(tmp_path / "cache")}
    assert len(_load_hub(str(root), "validation", None, kwargs)) == 2
    assert len(_load_hub(str(root), "val", None, kwargs)) == 2
    assert len(_load_hub(str(root), None, None, kwargs)) == len(_load_hub(str(root), "train", None, kwargs)) == 3
    with pytest.raises(ValueError, match=r"no split 'test'; splits: \['training', 'val'\]"):
        _load_hub(str(root), "test", None, kwargs)
    # A repo with one split: that split is not any split asked for (a flat local folder is; a repo's is its own).
    (root / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n"
                                    "    path: data/tr.parquet\n---\n")
    (root / "data" / "va.parquet").unlink()
    assert len(_load_hub(str(root), None, None, kwargs)) == 3
    for split in ("validation", "test"):
        with pytest.raises(ValueError, match=rf"no split '{split}'; splits: \['train'\]"):
            _load_hub(str(root), split, None, kwargs)


def test_streaming_is_refused_clearly_and_pixel_values_is_an_image_column(tmp_path):
    """streaming=True failed with "object of type 'IterableDataset' has no len()"; transformers' examples name the
    image column pixel_values."""
    write_pairs(tmp_path / "set", "images", "masks", ["a", "b"])
    with pytest.raises(ValueError, match="streaming datasets .* are not supported"):
        load_segmentation_dataset(tmp_path / "set", streaming=True)
    with pytest.raises(ValueError, match="streaming datasets .* are not supported"):
        load_segmentation_dataset(_image_cells(2).to_iterable_dataset())
    renamed = _image_cells(2).rename_column("image", "pixel_values").rename_column("mask", "label")
    ds = load_segmentation_dataset(renamed)
    assert ds.column_names == ["image", "mask", "sample_id"] and ds[1]["image"].size == (12, 10)


def test_a_text_label_of_class_names_is_no_mask_column(caplog):
    """A text "label" of class names was taken as the mask column over a "segmentation" Image column (the transform
    then said "cannot read mask polyp"); a mask column of another name (cityscapes' "semantic_segmentation") was an
    error although it is the only other Image column."""
    cells = _image_cells(2)
    ds = load_segmentation_dataset(cells.rename_column("mask", "segmentation").add_column("label", ["polyp"] * 2))
    assert isinstance(ds[0]["mask"], Image.Image)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        ds = load_segmentation_dataset(cells.rename_column("mask", "semantic_segmentation"))
        # An imagefolder's seg_mask_file_name + a "label" of class names: was the class names.
        tagged = load_segmentation_dataset(cells.rename_column("mask", "seg_mask").add_column("label", ["cat"] * 2))
    assert isinstance(ds[0]["mask"], Image.Image) and np.asarray(ds[0]["mask"]).max() == 255
    assert isinstance(tagged[1]["mask"], Image.Image)
    assert "no column named like masks; using the image column 'semantic_segmentation'" in warnings_text(caplog)
    assert load_segmentation_dataset(datasets.Dataset.from_dict({"image": ["a.png"], "label": ["m/a.png"]}))[0][
        "mask"] == "m/a.png"  # a text column of paths still is one
    two = datasets.Dataset.from_dict({"image": [_rgb(4, 4)], "depth": [_mask(4, 4)], "seg": [_mask(4, 4)]}, features=
                                     datasets.Features(dict.fromkeys(("image", "depth", "seg"), datasets.Image())))
    with pytest.raises(ValueError, match=r"cannot tell which column holds the masks \(columns: \['image', 'depth'"):
        load_segmentation_dataset(two)


@pytest.mark.parametrize("cell", ["none", "corrupt"])
def test_a_bad_dataset_cell_names_its_sample_column_and_file(cell, processor):
    """A None mask cell was a TypeError traceback; corrupt Image bytes said "Truncated File Read", naming neither the
    row nor the column."""
    from dsunet_hf.data import undecoded_images

    bad = None if cell == "none" else {"bytes": b"\x89PNG\r\n\x1a\n truncated", "path": "case_2_mask.png"}
    ds = undecoded_images(load_segmentation_dataset(_image_cells(3, [_mask(12, 10), _mask(12, 10), bad])))
    assert ds.features["image"].decode is False and ds.column_names == ["image", "mask", "sample_id"]
    transformed = ds.with_transform(SegmentationTransform(processor, train=True))
    assert transformed[1]["labels"].shape == (1, 32, 32)  # the good cells decode as before
    expected = ("sample 2, column 'mask': the cell is empty" if cell == "none" else
                r"sample 2, column 'mask' \(case_2_mask.png\): cannot decode the image bytes \(.*Truncated File Read")
    with pytest.raises(ValueError, match=expected):
        transformed[2]


# ------------------------------------------------------------------------------------------ real samples
@pytest.mark.skipif(not (SHARED_DATA / "ECSSD").is_dir(), reason=f"real samples not found at {SHARED_DATA}/ECSSD")
def test_ecssd_real_samples(processor):
    ds = load_segmentation_dataset(SHARED_DATA / "ECSSD")
    assert len(ds) == 200 and dropped_files(ds) == {}
    assert Path(ds[0]["image"]).name == "0001.jpg" and Path(ds[0]["mask"]).name == "0001.png"
    item = ds.with_transform(SegmentationTransform(processor, train=False))[0]
    h, w = Image.open(ds[0]["image"]).size[::-1]
    assert item["ground_truth"].shape == (h, w) == item["original_size"]
    assert set(np.unique(item["ground_truth"])) <= {0, 255}
    assert item["pixel_values"].shape == (3, 32, 32) and 0 < item["labels"].mean() < 1
    assert dataset_name(SHARED_DATA / "ECSSD") == "ECSSD"


# ------------------------------------------------------------------------------------------ synthetic
def test_synthetic_dataset_deterministic_and_loadable(tmp_path):
    a = make_camouflage_dataset(tmp_path / "a", num_pairs=6, size=(64, 48), seed=0)
    b = make_camouflage_dataset(tmp_path / "b", num_pairs=4, size=(64, 48), seed=0)
    c = make_camouflage_dataset(tmp_path / "c", num_pairs=4, size=(64, 48), seed=1)
    assert sorted(p.name for p in (a / "images").iterdir()) == [f"{i:04d}.png" for i in range(6)]
    for name in ("images/0000.png", "masks/0000.png", "images/0003.png", "masks/0003.png"):
        assert (a / name).read_bytes() == (b / name).read_bytes()  # sample i depends on (seed, i) only
        assert (a / name).read_bytes() != (c / name).read_bytes()
    image, mask = Image.open(a / "images/0001.png"), Image.open(a / "masks/0001.png")
    assert image.mode == "RGB" and mask.mode == "L" and image.size == mask.size == (48, 64)
    assert set(np.unique(np.asarray(mask))) == {0, 255}
    assert len(load_segmentation_dataset(a)) == 6


def test_synthetic_data_is_camouflaged_but_has_a_texture_cue():
    fractions, colour_gaps, spreads, texture_ratios = [], [], [], []
    for i in range(24):
        image, mask = make_camouflage_sample(np.random.default_rng([0, i]), (96, 96))
        img = np.asarray(image, np.float32)
        m = np.asarray(mask) > 127
        fractions.append(m.mean())
        colour_gaps.append(np.linalg.norm(img[m].mean(0) - img[~m].mean(0)))
        spreads.append(np.linalg.norm(img[~m].std(0)))
        # local gradient energy: the object's texture is finer than the background's
        gray = img.mean(-1)
        energy = np.abs(np.diff(gray, axis=0))[:, :-1] + np.abs(np.diff(gray, axis=1))[:-1, :]
        inner = m[:-1, :-1] & m[1:, :-1] & m[:-1, 1:]
        outer = ~m[:-1, :-1] & ~m[1:, :-1] & ~m[:-1, 1:]
        texture_ratios.append(energy[inner].mean() / energy[outer].mean())
    assert 0.05 <= min(fractions) and max(fractions) <= 0.60
    # not separable by colour: the mean colours inside and outside differ by less than the background's spread
    assert np.median(colour_gaps) < 0.75 * np.median(spreads)
    assert max(colour_gaps) < 45
    # ... but learnable: a consistent texture difference
    assert np.median(texture_ratios) > 1.3
    assert np.mean(np.array(texture_ratios) > 1.0) >= 0.8
    with pytest.raises(ValueError):
        make_camouflage_sample(0, (8, 8))


def test_a_dataset_dicts_own_split_names_are_found_by_alias(tmp_path):
    """`val`, `valid`, `dev` in a DatasetDict (save_to_disk, load_dataset) are the validation split, as split
    folders are; training asks for "validation" and stopped with 'no split' before."""
    rows = {"image": [_rgb(8, 8, seed) for seed in range(3)], "mask": [Image.new("L", (8, 8), 255)] * 3}
    for name in ("val", "valid", "dev"):
        loaded = datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows),
                                       name: datasets.Dataset.from_dict({k: v[:2] for k, v in rows.items()})})
        assert len(load_segmentation_dataset(loaded, "validation")) == 2
        assert len(load_segmentation_dataset(loaded, "train")) == 3
    with pytest.raises(ValueError, match=r"no split 'test'; splits: \['train', 'dev'\]"):
        load_segmentation_dataset(loaded, "test")
    both = datasets.DatasetDict({"val": loaded["train"], "dev": loaded["dev"]})
    with pytest.raises(ValueError, match=r"ambiguous splits \['val', 'dev'\] for split 'validation'"):
        load_segmentation_dataset(both, "validation")


def test_two_folders_of_one_split_are_ambiguous_unless_the_split_names_one(tmp_path, caplog):
    """`val/` + `validation/` (or `images/train` + `images/training`) silently took the first: often an old and a
    new set, so a name that is not exactly one of them is an error naming both; the exact name takes it, said."""
    write_pairs(tmp_path / "side", "images", "masks", ["t"], size=(8, 8))
    write_pairs(tmp_path / "side" / "val", "images", "masks", ["old"], size=(8, 8))
    write_pairs(tmp_path / "side" / "validation", "images", "masks", ["new1", "new2"], size=(8, 8))
    with pytest.raises(ValueError, match=r"side: ambiguous split folders \['val/', 'validation/'\] for split 'valid'"):
        load_segmentation_dataset(tmp_path / "side", split="valid")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert [Path(p).stem for p in load_segmentation_dataset(tmp_path / "side", split="val")["image"]] == ["old"]
        assert find_labels_file(tmp_path / "side", "val") is None  # evaluate looks for class names: said once
    assert warnings_text(caplog).count("using val/ for split 'val'; left out: ['validation/']") == 1
    write_pairs(tmp_path / "ade", "images/train", "annotations/train", ["a"], size=(8, 8))
    write_pairs(tmp_path / "ade", "images/training", "annotations/training", ["b"], size=(8, 8))
    with pytest.raises(ValueError, match=r"images: ambiguous split folders \['train/', 'training/'\] for split 'train'"):
        find_image_mask_pairs(tmp_path / "ade")  # no split: the train pair, of which there are two
    assert [Path(p).stem for p in load_segmentation_dataset(tmp_path / "ade", split="training")["image"]] == ["b"]


def test_a_split_slice_selects_the_rows_datasets_selects(tmp_path):
    """`split="train[:10%]"` (datasets' syntax) used the whole folder; the rows are those load_dataset("imagefolder")
    reads: percent boundaries rounded to the closest row (15 rows: [10%:30%] is rows 2-3), negative indices."""
    stems = [f"s{i:02d}" for i in range(15)]
    write_pairs(tmp_path, "images", "masks", stems, size=(4, 4), image_ext=".png")
    for spec in ("train[:10%]", "train[10%:30%]", "train[33%:67%]", "train[-3:]", "train[2:4]"):
        reference = datasets.load_dataset("imagefolder", data_dir=str(tmp_path / "images"), split=spec,
                                          cache_dir=str(tmp_path / "cache"), drop_labels=True)
        expected = [Path(row["image"].filename).stem for row in reference]
        ds = load_segmentation_dataset(tmp_path, spec, verify=False)
        assert [Path(p).stem for p in ds["image"]] == expected, spec
        assert [Path(i).stem for i, _ in find_image_mask_pairs(tmp_path, spec).pairs] == expected, spec
        assert ds["sample_id"] == list(range(len(expected)))  # the slice is the dataset: train_validation_split's ids
    assert [Path(p).stem for p in load_segmentation_dataset(tmp_path, "train[10%:30%]")["image"]] == ["s02", "s03"]
    rows = datasets.Dataset.from_dict({"image": stems, "mask": stems})
    assert load_segmentation_dataset(rows, "train[-2:]")["image"] == ["s13", "s14"]
    # A Dataset sliced to nothing: was select()'s bare IndexError (past the end) or an empty dataset (10% of 5 rows).
    for spec in ("train[20:]", "train[:10%]"):
        with pytest.raises(ValueError, match=r"split slice \[(20:|:10%)\] selects none of the 5 rows"):
            load_segmentation_dataset(rows.select(range(5)), spec)
    with pytest.raises(ValueError, match=r"not several joined with '\+'"):
        load_segmentation_dataset(tmp_path, "train[:5]+test[:5]")
    with pytest.raises(ValueError, match=r"one split name with an optional slice is supported \(as 'train\[:10%\]', "
                                         r"'test\[10:20\]'\)$"):  # was "not several joined with '+'"
        load_segmentation_dataset(tmp_path, "train[:10%")
    with pytest.raises(ValueError, match=r"selects none of the 15 pairs"):
        load_segmentation_dataset(tmp_path, "train[20:]")

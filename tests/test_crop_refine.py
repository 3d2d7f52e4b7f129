"""Coarse-to-fine prediction: a second pass on the crop around the foreground (dsunet_hf.crop_refine)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import RedChannelModel
from PIL import Image

from dsunet_hf import SegmentationImageProcessor
from dsunet_hf.crop_refine import foreground_box, foreground_boxes, refine_with_crops, zoom_gain
from dsunet_hf.evaluate import evaluate_model
from dsunet_hf.predict import native_size, predict_files

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (see conftest)

BACKGROUND, RED = (40, 90, 60), (230, 30, 30)


def small_object_photo(width: int = 960, height: int = 720) -> tuple[Image.Image, np.ndarray, np.ndarray]:
    """A large photo with a small red object (a disk with a thin antenna), its exact mask and the antenna's."""
    rows, columns = np.mgrid[:height, :width]
    antenna = (np.abs(columns - 420) <= 2) & (rows >= 230) & (rows < 270)  # 5 px wide: lost at 15 px per input pixel
    mask = ((rows - 300) ** 2 + (columns - 420) ** 2 <= 30 ** 2) | antenna
    pixels = np.empty((height, width, 3), np.uint8)
    pixels[:] = BACKGROUND
    pixels[mask] = RED
    return Image.fromarray(pixels), mask, antenna


def iou(probability: np.ndarray, mask: np.ndarray) -> float:
    predicted = probability >= 0.5
    return float((predicted & mask).sum() / (predicted | mask).sum())


def written_mask(folder, name: str) -> np.ndarray:
    return np.asarray(Image.open(folder / "masks" / name), dtype=np.float32) / 255


def test_the_crop_holds_the_foreground_with_a_margin_at_the_image_aspect():
    probability = np.zeros((300, 400), np.float32)
    probability[100:140, 200:220] = 0.9  # 40 x 20
    top, left, bottom, right = foreground_box(probability, margin=0.25)
    assert top <= 100 - 10 and bottom >= 140 + 10 and left <= 200 - 10 and right >= 220 + 10
    assert (right - left) * 300 == pytest.approx((bottom - top) * 400, abs=400)  # grown to 4:3, not squeezed
    assert foreground_box(np.full((30, 40), 0.4, np.float32)) is None  # nothing at or above 0.5
    corner = np.zeros((300, 400), np.float32)
    corner[:30, 380:] = 1  # against two borders: shifted back inside the image
    top, left, bottom, right = foreground_box(corner, margin=0.1)
    assert top == 0 and right == 400 and bottom <= 300 and left >= 0 and left < 380
    with pytest.raises(ValueError, match="margin"):
        foreground_box(probability, margin=-0.1)


def test_objects_far_apart_get_a_crop_each_and_crops_never_overlap():
    probability = np.zeros((300, 400), np.float32)
    probability[20:50, 30:60] = 0.9  # top left
    probability[240:280, 330:370] = 0.9  # bottom right
    probability[150, 200] = 0.9  # a speck: under 1 % of the foreground, keeps the first pass
    boxes = foreground_boxes(probability)
    assert len(boxes) == 2
    (t0, l0, b0, r0), (t1, l1, b1, r1) = boxes
    assert t0 <= 20 and l0 <= 30 and b0 >= 50 and r0 >= 60 and t1 <= 240 and l1 <= 330 and b1 >= 280 and r1 >= 370
    assert b0 <= t1 or r0 <= l1  # disjoint
    assert not any(t <= 150 < b and left <= 200 < r for t, left, b, r in boxes)
    # One object: the same crop as foreground_box. Two objects whose crops would overlap: one crop around both.
    single = np.zeros((300, 400), np.float32)
    single[100:140, 200:220] = 0.9
    assert foreground_boxes(single) == [foreground_box(single)]
    near = single.copy()
    near[100:140, 232:250] = 0.9  # 12 px away: the grown crops overlap
    (box,) = foreground_boxes(near)
    assert box[1] <= 200 and box[3] >= 250
    # The largest groups first when there are more than max_boxes.
    many = np.zeros((300, 400), np.float32)
    for index, column in enumerate(range(10, 400, 80)):
        many[140:150 + 4 * index, column:column + 10 + 4 * index] = 0.9  # growing regions, 80 px apart
    kept = foreground_boxes(many, margin=0, max_boxes=2)
    assert len(kept) == 2 and kept[0][1] <= 250 < kept[0][3] and kept[1][1] <= 330 < kept[1][3]  # the two largest
    assert foreground_boxes(np.zeros((30, 40), np.float32)) == []


def test_each_of_two_small_objects_far_apart_is_refined(tmp_path):
    """One crop around both would span the photo (zoom < 1.25: no second pass); a crop each sharpens both."""
    photo, mask, _ = small_object_photo()
    pixels = np.asarray(photo).copy()
    rows, columns = np.mgrid[:720, :960]
    second = (rows - 675) ** 2 + (columns - 905) ** 2 <= 28 ** 2  # bottom right; the first disk is at (300, 420)
    pixels[second] = RED
    Image.fromarray(pixels).save(tmp_path / "two.png")
    mask = mask | second
    model, processor = RedChannelModel(), SegmentationImageProcessor(size=64)
    predict_files(model, processor, [tmp_path / "two.png"], tmp_path / "coarse", progress=False)
    calls_before = model.calls
    predict_files(model, processor, [tmp_path / "two.png"], tmp_path / "refined", progress=False, crop_refine=True)
    assert model.calls == calls_before + 2  # the whole image, then one batch of its two crops
    coarse_map, refined_map = written_mask(tmp_path / "coarse", "two.png"), written_mask(tmp_path / "refined", "two.png")
    for region in (np.s_[200:400, 300:540], np.s_[600:720, 800:960]):  # each object's surroundings
        assert iou(refined_map[region], mask[region]) > iou(coarse_map[region], mask[region]) + 0.03
    # The old single crop around both objects would not have zoomed in enough to run.
    top, left, bottom, right = foreground_box(coarse_map)
    assert zoom_gain((720, 960), (bottom - top, right - left), lambda h, w: (64, 64)) < 1.25


def test_the_crops_map_blends_into_the_first_pass_without_a_seam():
    """Soft maps disagree a little in the background (0.2 first, 0.0 in the crop): over the crop's last 8 px the
    two are blended (no rectangle in cut-out alpha), the object comes from the crop, image borders are not blended."""
    from dsunet_hf.crop_refine import FEATHER

    first = np.full((360, 480), 0.2, np.float32)
    first[170:190, 230:250] = 0.95  # the object, in the middle
    first[:12, :12] = 0.95  # another, in the top-left corner: its crop starts at the image's border
    image = Image.new("RGB", (480, 360))

    def predict(crops, size):
        maps = [np.zeros((crop.height, crop.width), np.float32) for crop in crops]
        for crop_map in maps:
            crop_map[-3, :] = 0.9  # a thin part only the zoomed view finds, inside the band
        return maps

    (refined,) = refine_with_crops([image], [first], predict, lambda h, w: (64, 64))
    boxes = foreground_boxes(first)
    assert len(boxes) == 2
    (corner_top, corner_left, corner_bottom, corner_right), (top, left, bottom, right) = boxes
    row = refined[(top + bottom) // 2]
    across_left_side = row[left - 2:left + FEATHER + 2]
    assert across_left_side[0] == pytest.approx(0.2) and across_left_side[-1] == 0  # first pass -> crop's map
    assert np.abs(np.diff(across_left_side)).max() <= 0.2 / (FEATHER + 1) + 1e-6  # a ramp, not a 0.2 step
    assert refined[top + FEATHER:bottom - FEATHER, left + FEATHER:right - FEATHER].max() == 0  # the crop's map
    assert (refined[bottom - 3, left:right] == np.float32(0.9)).all()  # its foreground is kept in the band too
    assert corner_top == 0 and corner_left == 0
    assert refined[0, :corner_right - FEATHER].max() == 0 and refined[:corner_bottom - FEATHER, 0].max() == 0


def test_zoom_gain_counts_model_input_pixels_per_image_pixel():
    fixed = lambda height, width: (64, 64)  # noqa: E731
    assert zoom_gain((720, 960), (180, 240), fixed) == pytest.approx(4.0)
    native = lambda height, width: native_size(height, width, max_side=1024)  # noqa: E731
    assert zoom_gain((4000, 3000), (1000, 750), native) == pytest.approx(1000 / 1024 * 4000 / 1000, rel=0.05)
    assert zoom_gain((800, 600), (400, 300), native) == pytest.approx(1.0, rel=0.05)  # full resolution already


def test_the_second_pass_recovers_what_the_coarse_pass_loses(tmp_path):
    photo, mask, antenna = small_object_photo()
    photo.save(tmp_path / "photo.png")
    model, processor = RedChannelModel(), SegmentationImageProcessor(size=64)
    coarse = predict_files(model, processor, [tmp_path / "photo.png"], tmp_path / "coarse", progress=False)
    calls_before = model.calls
    # A margin of 0.75 of the disk's diameter: the crop holds the antenna the first pass missed.
    refined = predict_files(model, processor, [tmp_path / "photo.png"], tmp_path / "refined", progress=False,
                            crop_refine=True, crop_margin=0.75)
    assert coarse.written == refined.written == [str(tmp_path / "photo.png")]
    assert model.calls == calls_before + 2  # the whole image, then its crop
    coarse_map, refined_map = written_mask(tmp_path / "coarse", "photo.png"), written_mask(tmp_path / "refined", "photo.png")
    assert iou(coarse_map, mask) < 0.9 < 0.98 < iou(refined_map, mask)  # measured: 0.894, 0.991
    assert (coarse_map[antenna] >= 0.5).mean() < 0.1 < 0.9 < (refined_map[antenna] >= 0.5).mean()  # 0.015, 0.99
    assert np.abs(refined_map - mask).mean() < 0.5 * np.abs(coarse_map - mask).mean()
    # The default margin: the disk's edges still sharpen.
    predict_files(model, processor, [tmp_path / "photo.png"], tmp_path / "default", progress=False, crop_refine=True)
    assert iou(written_mask(tmp_path / "default", "photo.png"), mask) > iou(coarse_map, mask) + 0.03


def test_images_the_crop_cannot_enlarge_keep_their_first_pass():
    filling = np.empty((120, 160, 3), np.uint8)
    filling[:] = RED
    filling[:8] = BACKGROUND  # the object fills the frame: a crop would zoom in by ~1
    empty = np.empty((120, 160, 3), np.uint8)
    empty[:] = BACKGROUND
    images = [Image.fromarray(filling), Image.fromarray(empty)]
    first = [np.where(np.asarray(image)[..., 0] > 100, 0.99, 0.01).astype(np.float32) for image in images]

    def predict(crops, size):
        raise AssertionError("no crop should be predicted")

    refined = refine_with_crops(images, first, predict, lambda h, w: (64, 64))
    for before, after in zip(first, refined):
        np.testing.assert_array_equal(before, after)
    assert refined[0] is not first[0]  # new maps: the caller's stay as they were


@pytest.mark.parametrize("height, width", [(300, 4000), (4000, 300), (1, 4000), (4000, 1)])
def test_panoramas_and_one_pixel_strips_crop_inside_the_image_at_its_aspect(height, width):
    # Extreme aspects: the crop stays inside the image, at its aspect, around the object; a strip one pixel across
    # cannot be zoomed in on (the crop spans it): its first pass is kept, nothing runs.
    first = np.zeros((height, width), np.float32)
    rows, columns = (slice(100, 140), slice(2000, 2040)) if height < width else (slice(2000, 2040), slice(100, 140))
    if min(height, width) == 1:
        rows, columns = (slice(0, 1), slice(2000, 2010)) if height == 1 else (slice(2000, 2010), slice(0, 1))
    first[rows, columns] = 0.9
    runs = []

    def predict(crops, size):
        runs.extend((crop.height, crop.width) for crop in crops)
        return [np.full((crop.height, crop.width), 0.7, np.float32) for crop in crops]

    refined = refine_with_crops([Image.new("RGB", (width, height))], [first], predict, lambda h, w: (64, 64))[0]
    if min(height, width) == 1:
        assert not runs and np.array_equal(refined, first)
        return
    (top, left, bottom, right), = foreground_boxes(first)
    assert 0 <= top <= rows.start and rows.stop <= bottom <= height and 0 <= left <= columns.start <= right <= width
    assert (right - left) * height == pytest.approx((bottom - top) * width, rel=0.02)
    assert runs == [(bottom - top, right - left)]
    assert np.all(refined[top:bottom, left:right] == np.float32(0.7))  # >= 0.5: kept as it is, in the band too
    outside = np.ones_like(first, bool)
    outside[top:bottom, left:right] = False
    assert np.array_equal(refined[outside], first[outside])



def test_maps_not_at_their_images_size_are_refused():
    """A map at another size (the model's 1024², a transposed EXIF-rotated photo) was cropped where its box would
    be on the image: the wrong part of the photo pasted in, silently."""
    first = np.zeros((100, 200), np.float32)
    first[10:20, 10:20] = 1

    def predict(crops, size):
        return [np.ones((crop.height, crop.width), np.float32) for crop in crops]

    for size in [(400, 200), (100, 200)]:  # (W, H): larger, transposed
        with pytest.raises(ValueError, match=r"map 0 has shape \(100, 200\) but its image is"):
            refine_with_crops([Image.new("RGB", size)], [first], predict, lambda h, w: (64, 64))

def test_crops_of_one_input_size_share_batches():
    photo, _, _ = small_object_photo(480, 360)
    first = [np.asarray(photo)[..., 0].astype(np.float32) / 255 > 0.5] * 5
    batches = []

    def predict(crops, size):
        batches.append((len(crops), size))
        return [np.zeros((crop.height, crop.width), np.float32) for crop in crops]

    refined = refine_with_crops([photo] * 5, [m.astype(np.float32) for m in first], predict, lambda h, w: (64, 64),
                                batch_size=2)
    assert batches == [(2, (64, 64)), (2, (64, 64)), (1, (64, 64))]
    assert all(m.max() == 0 for m in refined)  # the crop's map replaced the first pass where the object was


def test_evaluate_scores_the_refined_maps(tmp_path):
    photo, mask, antenna = small_object_photo()
    dataset = [{"image": photo, "mask": Image.fromarray(mask.astype(np.uint8) * 255)}]
    model, processor = RedChannelModel(), SegmentationImageProcessor(size=64)
    coarse = evaluate_model(model, processor, dataset, progress=False)
    refined = evaluate_model(model, processor, dataset, progress=False, crop_refine=True)
    assert refined["MAE"] < 0.5 * coarse["MAE"]  # measured: 0.00020 vs 0.00063
    assert refined["wF-measure"] > coarse["wF-measure"] + 0.03  # 0.978 vs 0.925


def test_command_line_refuses_crop_refine_for_class_maps_and_records_it_in_reports(tmp_path, monkeypatch):
    from conftest import tiny_sam2_unet_config

    from dsunet_hf import Sam2UNetForImageSegmentation
    from dsunet_hf.cli import main

    model = Sam2UNetForImageSegmentation(tiny_sam2_unet_config(num_labels=3))
    model.save_pretrained(tmp_path / "multi", include_backbone=True)
    SegmentationImageProcessor(size=64).save_pretrained(tmp_path / "multi")
    photo, mask, _ = small_object_photo(160, 120)
    photo.save(tmp_path / "photo.png")
    with pytest.raises(SystemExit, match="^predict: --cutout, --crop-refine: for models that predict one foreground "
                                         "map; .*multi predicts class maps"):  # were named "cutout, crop_refine"
        main(["predict", "--model", str(tmp_path / "multi"), "--crop-refine", "--cutout", str(tmp_path / "photo.png"),
              "--output-dir", str(tmp_path / "out")])
    (tmp_path / "data" / "images").mkdir(parents=True)
    (tmp_path / "data" / "masks").mkdir()
    photo.save(tmp_path / "data" / "images" / "a.png")
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "data" / "masks" / "a.png")
    with pytest.raises(SystemExit, match="--crop-refine, --resolution native: for models that predict one"):
        main(["evaluate", "--model", str(tmp_path / "multi"), "--data", str(tmp_path / "data"), "--crop-refine",
              "--resolution", "native", "--output-dir", str(tmp_path / "evaluation")])

    binary = Sam2UNetForImageSegmentation(tiny_sam2_unet_config())
    binary.save_pretrained(tmp_path / "binary", include_backbone=True)
    SegmentationImageProcessor(size=64).save_pretrained(tmp_path / "binary")
    assert main(["evaluate", "--model", str(tmp_path / "binary"), "--data", str(tmp_path / "data"), "--crop-refine",
                 "--crop-margin", "0.2", "--output-dir", str(tmp_path / "evaluation"), "--no-progress",
                 "--resolution", "native", "--max-side", "96"]) == 0
    report = json.loads((tmp_path / "evaluation" / "evaluation.json").read_text())
    assert report["info"]["crop_refine"] is True and report["info"]["crop_margin"] == 0.2
    assert report["info"]["resolution"] == "native" and report["info"]["max_side"] == 96
    with pytest.raises(SystemExit, match="crop_margin must be >= 0"):
        main(["predict", "--model", str(tmp_path / "binary"), "--crop-refine", "--crop-margin", "-1",
              str(tmp_path / "photo.png"), "--output-dir", str(tmp_path / "out")])
    assert not (tmp_path / "out" / "masks").exists()


def test_native_resolution_crops_run_at_their_own_size(tmp_path):
    photo, mask, _ = small_object_photo()
    photo.save(tmp_path / "photo.png")
    model, processor = RedChannelModel(), SegmentationImageProcessor(size=64)
    options = dict(progress=False, resolution="native", max_side=96)
    predict_files(model, processor, [tmp_path / "photo.png"], tmp_path / "coarse", **options)
    predict_files(model, processor, [tmp_path / "photo.png"], tmp_path / "refined", crop_refine=True, **options)
    assert model.input_sizes == {(64, 96)}  # 720 x 960 -> 72 x 96 -> 64 x 96; the crop, at the same aspect, too
    assert iou(written_mask(tmp_path / "refined", "photo.png"), mask) > iou(written_mask(tmp_path / "coarse", "photo.png"), mask) + 0.03

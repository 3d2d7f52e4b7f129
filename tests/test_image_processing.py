"""Tests for dsunet_hf.image_io and dsunet_hf.image_processing (CPU, small images, fast)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA
from PIL import Image

from dsunet_hf.image_io import ImageReadError, load_image, load_mask
from dsunet_hf.image_processing import SegmentationImageProcessor

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


@pytest.fixture
def processor() -> SegmentationImageProcessor:
    return SegmentationImageProcessor(size={"height": 16, "width": 24})


def _gradient(h: int = 20, w: int = 30) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 8, y * 12, (x + y) * 4], axis=-1).astype(np.uint8)


# ----------------------------------------------------------------------------- image_io: images
def test_constant_colour_normalisation(processor):
    out = processor(Image.new("RGB", (40, 30), (255, 0, 128)))
    pv = out["pixel_values"]
    assert pv.shape == (1, 3, 16, 24) and pv.dtype == torch.float32
    expected = (np.array([255, 0, 128], np.float32) / 255 - MEAN) / STD  # 2.2489, -2.0357, 0.4265
    assert np.allclose(expected, [2.2489, -2.0357, 0.4265], atol=1e-4)
    for c in range(3):
        assert torch.allclose(pv[0, c], torch.full((16, 24), float(expected[c])), atol=1e-6)
    assert out["original_sizes"] == [(30, 40)]
    assert "labels" not in out


def test_do_normalize_false_gives_unit_range():
    p = SegmentationImageProcessor(size=8, do_normalize=False)
    pv = p(Image.new("RGB", (8, 8), (51, 102, 255)), return_tensors="np")["pixel_values"]
    assert isinstance(pv, np.ndarray) and pv.shape == (1, 3, 8, 8)
    assert np.allclose(pv[0, :, 0, 0], [0.2, 0.4, 1.0])


def test_resize_matches_pil_bilinear(processor):
    img = Image.fromarray(_gradient())
    pv = SegmentationImageProcessor(size={"height": 16, "width": 24}, do_normalize=False)(img)["pixel_values"]
    ref = np.asarray(img.resize((24, 16), Image.Resampling.BILINEAR), np.float32) / 255
    assert np.array_equal(pv[0].permute(1, 2, 0).numpy(), ref)


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "CMYK"])
def test_modes_load_as_rgb(tmp_path, mode):
    src = Image.fromarray(_gradient()).convert(mode)
    path = tmp_path / f"img_{mode}.{'jpg' if mode == 'CMYK' else 'png'}"
    src.save(path)
    im = load_image(path)
    assert im.mode == "RGB" and im.size == (30, 20)
    if mode == "L":
        arr = np.asarray(im)
        assert np.array_equal(arr[..., 0], np.asarray(src)) and np.array_equal(arr[..., 0], arr[..., 2])


def test_rgba_drops_alpha():
    arr = np.zeros((4, 5, 4), np.uint8)
    arr[..., 0] = 200
    arr[..., 3] = 0  # fully transparent: colour must still be kept
    im = load_image(Image.fromarray(arr, "RGBA"))
    assert np.asarray(im)[0, 0].tolist() == [200, 0, 0]
    assert np.asarray(load_image(arr))[0, 0].tolist() == [200, 0, 0]


def test_palette_with_transparency(tmp_path):
    pal = Image.new("P", (6, 4))
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    pal.paste(1, (0, 0, 3, 4))
    pal.info["transparency"] = 0
    path = tmp_path / "palette.png"
    pal.save(path, transparency=0)
    arr = np.asarray(load_image(path))
    assert arr.shape == (4, 6, 3)
    assert arr[0, 0].tolist() == [10, 200, 30] and arr[0, 5].tolist() == [0, 0, 0]


def test_16bit_gray_scaled_by_dtype_range(tmp_path):
    data = np.array([[0, 257 * 100, 65535]], np.uint16)
    path = tmp_path / "gray16.png"
    Image.fromarray(data).save(path)
    with Image.open(path) as raw:
        assert raw.mode.startswith("I")
    assert np.asarray(load_image(path))[0, :, 0].tolist() == [0, 100, 255]
    assert np.asarray(load_image(data))[0, :, 1].tolist() == [0, 100, 255]


def test_16bit_big_endian_and_int32_modes():
    big = Image.frombytes("I;16B", (3, 1), np.array([0, 257 * 50, 65535], ">u2").tobytes())
    assert np.asarray(load_image(big))[0, :, 0].tolist() == [0, 50, 255]
    # Mode "I" with max > 255 is scaled by its max; with max <= 255 it is used as is.
    wide = Image.fromarray(np.array([[0, 500, 1000]], np.int32))
    assert wide.mode == "I"
    assert np.asarray(load_image(wide))[0, :, 0].tolist() == [0, 128, 255]
    small = Image.fromarray(np.array([[0, 7, 200]], np.int32))
    assert np.asarray(load_image(small))[0, :, 0].tolist() == [0, 7, 200]


def test_float_image_and_arrays():
    f_img = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32))
    assert f_img.mode == "F"
    assert np.asarray(load_image(f_img))[0, :, 0].tolist() == [0, 128, 255]
    hw1 = np.full((3, 2, 1), 0.2, np.float64)
    assert np.asarray(load_image(hw1)).tolist() == [[[51, 51, 51]] * 2] * 3
    t = torch.zeros(3, 5, 7)
    t[1] = 1.0
    im = load_image(t)
    assert im.size == (7, 5) and np.asarray(im)[0, 0].tolist() == [0, 255, 0]
    t8 = torch.full((1, 2, 2), 9, dtype=torch.uint8)
    assert np.asarray(load_image(t8))[0, 0].tolist() == [9, 9, 9]


def test_bfloat16_tensor_image():
    t = torch.zeros(3, 4, 5, dtype=torch.bfloat16)
    t[0] = 1.0
    assert np.asarray(load_image(t))[0, 0].tolist() == [255, 0, 0]  # numpy has no bfloat16: was a TypeError


def test_normalised_float_image_is_refused_and_overshoot_is_not():
    image = torch.rand(3, 6, 8, generator=torch.Generator().manual_seed(0))
    normalised = (image - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    with pytest.raises(ValueError, match="before normalisation"):  # was read as 0..255 and clipped: nearly black
        SegmentationImageProcessor(size=8)(normalised)
    with pytest.raises(ValueError, match="from -1"):
        load_image(np.full((2, 2, 3), -1.0, np.float32))
    overshoot = image.clone()
    overshoot[0, 0, 0] = -0.1  # a bicubic resize's ringing below 0 is still an image
    assert np.asarray(load_image(overshoot))[0, 0, 0] == 0
    assert np.asarray(load_image(overshoot * 255))[0, 0, 0] == 0


def test_empty_batch_and_empty_image_are_refused_clearly():
    processor = SegmentationImageProcessor(size=8)
    with pytest.raises(ValueError, match="no images given"):  # was numpy's "need at least one array to stack"
        processor([])
    with pytest.raises(ValueError, match=r"image #1 is empty \(5x0 pixels\)"):  # was a uniform picture
        processor([np.zeros((4, 5, 3), np.uint8), np.zeros((0, 5, 3), np.uint8)])


def test_exif_orientation_applied(tmp_path, processor):
    img = Image.fromarray(_gradient(20, 30))  # width 30, height 20
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rotated.jpg"
    img.save(path, exif=exif.tobytes())
    assert load_image(path).size == (20, 30)
    assert processor(str(path))["original_sizes"] == [(30, 20)]
    mask_path = tmp_path / "rotated_mask.png"
    Image.new("L", (30, 20), 255).save(mask_path, exif=exif.tobytes())
    assert load_mask(mask_path).shape == (30, 20)
    out = processor(path, masks=mask_path)  # both rotated: sizes agree
    assert out["labels"].shape == (1, 1, 16, 24)


def test_corrupt_and_missing_files(tmp_path):
    bad = tmp_path / "broken_photo.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    with pytest.raises(ImageReadError, match="broken_photo.png") as info:
        load_image(bad)
    assert str(info.value).startswith("cannot read image")
    with pytest.raises(ImageReadError, match="nothing_here.jpg"):
        load_image(tmp_path / "nothing_here.jpg")
    with pytest.raises(ImageReadError, match="broken_photo.png"):
        load_mask(bad)
    # Truncated data: a valid header whose pixel data is cut off.
    good = tmp_path / "cut.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(good)
    cut = tmp_path / "cut_short.png"
    cut.write_bytes(good.read_bytes()[:6000])
    with pytest.raises(ImageReadError, match="cut_short.png"):
        load_image(cut)
    assert issubclass(ImageReadError, ValueError)


@pytest.mark.parametrize("shape", [(5, 4, 2), (2, 5, 5)])
def test_bad_channel_count(shape):
    with pytest.raises(ValueError, match=r"1, 3 or 4 channels") as info:
        load_image(np.zeros(shape, np.uint8))
    assert str(shape) in str(info.value)
    with pytest.raises(ValueError, match=r"\(2, 4, 4\)"):
        load_image(torch.zeros(2, 4, 4))


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_channels_first_arrays_and_channels_last_tensors(channels):
    """transformers' processors read a (C, H, W) array and an (H, W, C) tensor (infer_channel_dimension_format);
    both were refused here. Either layout gives the pixel_values of the (H, W, C) array exactly."""
    processor = SegmentationImageProcessor(size=8)
    hwc = np.random.default_rng(channels).integers(0, 256, (6, 10, channels), dtype=np.uint8)
    expected = processor(hwc)["pixel_values"]
    assert torch.equal(processor(np.ascontiguousarray(hwc.transpose(2, 0, 1)))["pixel_values"], expected)
    if channels != 4:  # tensors take 1 or 3 channels in either layout, as transformers' processors
        assert torch.equal(processor(torch.from_numpy(hwc))["pixel_values"], expected)
        floats = hwc.astype(np.float32) / 255
        assert torch.equal(processor(torch.from_numpy(floats))["pixel_values"], processor(floats)["pixel_values"])
    mask = (hwc[..., 0] > 127).astype(np.uint8) * 255
    labels = processor(hwc, masks=mask)["labels"]
    assert torch.equal(processor(hwc, masks=mask[None])["labels"], labels)  # a (1, H, W) mask array
    assert torch.equal(processor(hwc, masks=torch.from_numpy(mask)[..., None])["labels"], labels)


def test_shape_fitting_both_layouts_keeps_its_reading():
    """(3, 5, 3) fits both layouts: an array stays (H, W, C), a tensor stays (C, H, W), as before."""
    values = np.arange(45, dtype=np.uint8).reshape(3, 5, 3)
    assert np.array_equal(np.asarray(load_image(values)), values)
    assert np.array_equal(np.asarray(load_image(torch.from_numpy(values))), values.transpose(1, 2, 0))
    with pytest.raises(ValueError, match=r"\(C, H, W\) or \(H, W, C\) tensor"):
        load_image(torch.zeros(4, 5, 4, dtype=torch.uint8))


# ----------------------------------------------------------------------------- image_io: masks
def test_mask_0_255_and_0_1_identical(tmp_path, processor):
    binary = np.zeros((20, 30), np.uint8)
    binary[5:15, 10:25] = 1
    Image.fromarray(binary * 255).save(tmp_path / "m255.png")
    Image.fromarray(binary).save(tmp_path / "m01.png")
    m255, m01 = load_mask(tmp_path / "m255.png"), load_mask(tmp_path / "m01.png")
    assert m255.dtype == np.float32 and m255.shape == (20, 30)
    assert np.array_equal(m255, m01) and np.array_equal(m01, binary.astype(np.float32))
    img = Image.fromarray(_gradient())
    a = processor([img, img], masks=[tmp_path / "m255.png", tmp_path / "m01.png"])
    assert a["labels"].shape == (2, 1, 16, 24) and a["labels"].dtype == torch.float32
    assert torch.equal(a["labels"][0], a["labels"][1])
    assert 0.0 <= a["labels"].min() and a["labels"].max() <= 1.0


def test_mask_16bit_and_soft_values(tmp_path):
    Image.fromarray(np.array([[0, 32768, 65535]], np.uint16)).save(tmp_path / "m16.png")
    assert np.allclose(load_mask(tmp_path / "m16.png"), [[0.0, 32768 / 65535, 1.0]])
    soft = np.array([[0, 64, 128, 255]], np.uint8)
    assert np.allclose(load_mask(soft), soft / 255)
    assert load_mask(soft, threshold=0.5).tolist() == [[0.0, 0.0, 1.0, 1.0]]
    assert load_mask(np.array([[0.0, 0.25, 1.0]])).tolist() == [[0.0, 0.25, 1.0]]
    # A bicubic-resized 0/1 map overshoots 1 a little: was read as 0..255 (foreground ~0.004, nearly empty).
    assert load_mask(np.array([[-0.08, 0.25, 1.12]], np.float32)).tolist() == [[0.0, 0.25, 1.0]]
    assert np.allclose(load_mask(np.array([[0.0, 64.0, 255.0]], np.float32)), [[0.0, 64 / 255, 1.0]])  # 0..255 floats


def test_binary_masks_saved_as_palette_colour_or_16_bit_read_as_0_1(tmp_path, caplog):
    """A VOC-style palette PNG of indices 0/1 read 0.149 (its colour's gray), a red object on black 0.298, a 16-bit
    PNG holding 0/255 0.004 (divided by 65535): faint foreground, silently, and no ground truth past the metrics'
    > 128 cut. Gray masks (palettes and RGB files holding gray too) read as they did; colour masks of more values
    keep their luminance reading, with a warning."""
    from dsunet_hf.image_io import class_index_maximum, colour_coded_values
    from dsunet_hf.training import warn_if_class_index_masks

    binary = np.zeros((20, 30), np.uint8)
    binary[5:15, 10:25] = 1
    expected = binary.astype(np.float32)

    def palette(indices, colours):
        image = Image.fromarray(np.asarray(indices, np.uint8))
        image.putpalette([value for colour in colours for value in colour])
        return image

    palette(binary, [(0, 0, 0), (128, 0, 0)]).save(tmp_path / "voc.png")
    palette(binary * 5, [(0, 0, 0)] * 5 + [(0, 64, 128)]).save(tmp_path / "voc5.png")  # the object as class 5
    Image.fromarray(np.dstack([binary * 255, binary * 0, binary * 0])).save(tmp_path / "red.png")
    Image.fromarray(np.dstack([binary * 0, binary * 200, binary * 0, np.full_like(binary, 255)])).save(tmp_path / "g.png")
    Image.fromarray(binary.astype(np.uint16) * 255).save(tmp_path / "m16_255.png")
    Image.fromarray(binary.astype(np.uint16)).save(tmp_path / "m16_01.png")
    Image.fromarray(binary.astype(np.uint16) * 65535).save(tmp_path / "m16_full.png")
    for name in ("voc", "voc5", "red", "g", "m16_255", "m16_01", "m16_full"):
        assert np.array_equal(load_mask(tmp_path / f"{name}.png"), expected), name
        assert class_index_maximum(tmp_path / f"{name}.png") is None, name
        assert colour_coded_values(tmp_path / f"{name}.png") is None, name
    assert np.array_equal(load_mask(np.dstack([binary * 255, binary * 0, binary * 0])), expected)  # arrays too
    assert np.array_equal(load_mask(Image.open(tmp_path / "voc.png")), expected)  # a datasets Image cell

    # Gray stays gray: a black/white or gray-level palette and an RGB file of gray are read by their gray level.
    palette(binary, [(0, 0, 0), (255, 255, 255)]).save(tmp_path / "bw.png")
    palette(binary, [(0, 0, 0), (128, 128, 128)]).save(tmp_path / "grey_palette.png")
    Image.fromarray(np.dstack([binary * 128] * 3)).save(tmp_path / "grey_rgb.png")
    assert np.array_equal(load_mask(tmp_path / "bw.png"), expected)
    for name in ("grey_palette", "grey_rgb"):
        assert np.allclose(load_mask(tmp_path / f"{name}.png"), expected * 128 / 255), name
        assert colour_coded_values(tmp_path / f"{name}.png") is None, name

    # More than two values: read as before (luminance), flagged. VOC's void border (255) makes three indices.
    voc_void = binary.copy()
    voc_void[4, 9:26] = 255
    colours = [(0, 0, 0), (128, 0, 0)] + [(0, 0, 0)] * 253 + [(224, 224, 192)]
    palette(voc_void, colours).save(tmp_path / "voc_void.png")
    three = np.dstack([binary * 255, binary * 0, binary * 0])
    three[0, 0] = (0, 255, 0)
    Image.fromarray(three).save(tmp_path / "three.png")
    gray = np.asarray(Image.open(tmp_path / "voc_void.png").convert("L")) / 255
    assert np.allclose(load_mask(tmp_path / "voc_void.png"), gray)
    assert np.allclose(load_mask(tmp_path / "three.png"), np.asarray(Image.fromarray(three).convert("L")) / 255)
    assert colour_coded_values(tmp_path / "voc_void.png") == 3 and colour_coded_values(tmp_path / "three.png") == 3
    rows = [{"mask": str(tmp_path / f"{name}.png")} for name in ("voc_void", "three", "red")]
    with caplog.at_level("WARNING"):
        assert warn_if_class_index_masks(rows[:2], "voc/", "Sam2UNetForImageSegmentation") == 3
    assert "colour-coded masks (3 colours" in caplog.text and "voc/" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):  # binary masks read as such, and a mixed set, are left alone
        assert warn_if_class_index_masks(rows[2:], "red/", "Sam2UNetForImageSegmentation") is None
        assert warn_if_class_index_masks(rows, "mixed/", "Sam2UNetForImageSegmentation") is None
    assert not caplog.text


def test_benchmark_masks_read_as_opencv_gray():
    """Evaluation reads ground truth as upstream's eval.py does (cv2.imread(path, IMREAD_GRAYSCALE)), pixel for pixel,
    for every mask of the real samples (gray PNGs, lossy RGB JPEGs)."""
    cv2 = pytest.importorskip("cv2", reason="OpenCV is not installed")
    from dsunet_hf.metrics import to_uint8_map

    files = sorted(SHARED_DATA.glob("*/masks/*"))
    if not files:
        pytest.skip(f"real benchmark samples not found under {SHARED_DATA}")
    for path in files:
        assert np.array_equal(to_uint8_map(load_mask(path)), cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)), path


def test_rgb_masks_are_told_from_binary_colour_masks_before_any_array_is_built(tmp_path, monkeypatch):
    """Gray RGB PNGs and lossy RGB JPEG masks (Kvasir's) read ~1.9x slower: the RGB pixels were copied into an
    array and compared channel by channel, then packed into 32-bit colours, before the luminance reading. PIL's
    getcolors(maxcolors=2) tells the binary colour masks from them first; the results are those of before."""
    from dsunet_hf.image_io import colour_coded_values

    binary = np.zeros((40, 48), np.uint8)
    binary[10:30, 12:36] = 1
    Image.fromarray(np.dstack([binary * 255] * 3)).save(tmp_path / "grey_rgb.png")
    Image.fromarray(np.dstack([binary * 255] * 3)).save(tmp_path / "lossy.jpg", quality=90)
    red = Image.fromarray(np.dstack([binary * 255, binary * 0, binary * 0]))
    alpha = np.random.default_rng(0).integers(0, 256, binary.shape, np.uint8)  # alpha is not a colour
    rgba = Image.fromarray(np.dstack([binary * 255, binary * 0, binary * 0, alpha]))
    decoded = {name: Image.open(tmp_path / name) for name in ("grey_rgb.png", "lossy.jpg")}
    for image in decoded.values():
        image.load()
    arrays, interface = [], Image.Image.__array_interface__

    def counted(image):
        arrays.append(image.mode)
        return interface.fget(image)

    monkeypatch.setattr(Image.Image, "__array_interface__", property(counted))
    assert np.array_equal(load_mask(decoded["grey_rgb.png"]), binary.astype(np.float32))
    lossy = load_mask(decoded["lossy.jpg"])
    assert arrays == ["L", "L"]  # each read once, as the gray picture it is
    assert np.array_equal(lossy, np.asarray(decoded["lossy.jpg"].convert("L"), np.float32) / 255)
    arrays.clear()
    assert colour_coded_values(decoded["lossy.jpg"]) is None and colour_coded_values(decoded["grey_rgb.png"]) is None
    assert arrays == []
    for image in (red, rgba, np.asarray(rgba)):
        assert np.array_equal(load_mask(image), binary.astype(np.float32))
        assert colour_coded_values(image) is None


def test_lossy_rgb_jpeg_mask_thresholded_is_binary(tmp_path):
    mask = np.zeros((40, 48, 3), np.uint8)
    mask[10:30, 12:36] = 255
    path = tmp_path / "mask.jpg"
    Image.fromarray(mask).save(path, quality=60)
    soft = load_mask(path)
    assert soft.shape == (40, 48)
    assert len(np.unique(soft)) > 2  # JPEG ringing makes it non-binary
    hard = load_mask(path, threshold=0.5)
    assert hard.dtype == np.float32 and set(np.unique(hard).tolist()) == {0.0, 1.0}
    assert np.array_equal(hard, (mask[..., 0] > 127).astype(np.float32))


def test_mask_size_mismatch_names_both_files(tmp_path, processor):
    Image.fromarray(_gradient(20, 30)).save(tmp_path / "photo_17.png")
    Image.new("L", (31, 20)).save(tmp_path / "label_17.png")
    with pytest.raises(ValueError) as info:
        processor(tmp_path / "photo_17.png", masks=tmp_path / "label_17.png")
    assert "photo_17.png" in str(info.value) and "label_17.png" in str(info.value)
    with pytest.raises(ValueError, match="#0"):
        processor(np.zeros((4, 4, 3), np.uint8), masks=np.zeros((5, 4), np.uint8))
    with pytest.raises(ValueError, match="2 images but 1 masks"):
        processor([np.zeros((4, 4, 3), np.uint8)] * 2, masks=[np.zeros((4, 4), np.uint8)])


def test_masks_resized_bicubic_and_kept_soft(processor):
    mask = np.zeros((20, 30), np.uint8)
    mask[:, 15:] = 255
    labels = processor(np.zeros((20, 30, 3), np.uint8), masks=mask)["labels"][0, 0].numpy()
    ref = np.asarray(Image.fromarray(mask).resize((24, 16), Image.Resampling.BICUBIC), np.float32) / 255
    assert np.array_equal(labels, ref)
    assert ((labels > 0) & (labels < 1)).any()  # soft edge, not re-binarised


# ----------------------------------------------------------------------------- post-processing
def test_post_process_probabilities_upsample_then_sigmoid(processor):
    logits = torch.tensor([[-3.0, 3.0], [0.0, 1.0]]).reshape(1, 1, 2, 2).repeat(2, 1, 1, 1)
    probs = processor.post_process_probabilities(logits, target_sizes=[(8, 6), (2, 2)])
    assert [tuple(p.shape) for p in probs] == [(8, 6), (2, 2)]
    for sizes in ([[8, 6], [2, 2]], ((8, 6), (2, 2)), torch.tensor([[8, 6], [2, 2]]), np.array([[8, 6], [2, 2]])):
        assert all(torch.equal(a, b) for a, b in zip(processor.post_process_probabilities(logits, sizes), probs))
    # One pair for the batch said "got 2 target sizes for a batch of 1", or failed inside with "'int' object is not
    # iterable"; a zero size inside F.interpolate.
    for batch in (logits[:1], logits):
        with pytest.raises(ValueError, match=r"^target_sizes: one \(height, width\) per image, got the single pair "
                                             r"\(8, 6\); for one image pass \[\(8, 6\)\]$"):
            processor.post_process_probabilities(batch, target_sizes=(8, 6))
    with pytest.raises(ValueError, match=r"^target_sizes\[1\]: \(0, 6\) is not a \(height, width\) of positive"):
        processor.post_process_semantic_segmentation(logits, target_sizes=[(8, 6), (0, 6)])
    for bad in (352, None, (8.5, 8)):  # were Python's bare TypeErrors, or 8.5 cut to 8
        with pytest.raises(ValueError, match=r"^target_sizes\[1\]: .* is not a \(height, width\) of positive integers$"):
            processor.post_process_semantic_segmentation(logits, target_sizes=[(8, 6), bad])
    assert probs[0].dtype == torch.float32
    assert torch.allclose(probs[1], torch.sigmoid(logits[1, 0]))
    ref = torch.sigmoid(
        torch.nn.functional.interpolate(logits[:1], (8, 6), mode="bilinear", align_corners=False)
    )
    assert torch.allclose(probs[0], ref[0, 0])


def test_post_process_semantic_segmentation_gives_class_index_maps(processor):
    """The transformers convention: int64 class indices, 1 = foreground where p >= threshold."""
    logits = torch.tensor([[-3.0, 3.0], [0.0, 1.0]]).reshape(1, 1, 2, 2)
    (labels,) = processor.post_process_semantic_segmentation(logits)
    assert labels.dtype == torch.int64
    assert labels.tolist() == [[0, 1], [1, 1]]  # sigmoid(0) == 0.5 counts (>=)
    (strict,) = processor.post_process_semantic_segmentation(logits, threshold=0.8)
    assert strict.tolist() == [[0, 1], [0, 0]]  # sigmoid(1) = 0.73


def test_post_process_multi_class_logits_take_the_argmax_of_the_upsampled_logits(processor):
    logits = torch.randn(2, 5, 4, 6)
    labels = processor.post_process_semantic_segmentation(logits, target_sizes=[(8, 12), (4, 6)])
    upsampled = torch.nn.functional.interpolate(logits[:1], (8, 12), mode="bilinear", align_corners=False)
    assert torch.equal(labels[0], upsampled[0].argmax(0)) and torch.equal(labels[1], logits[1].argmax(0))
    (probabilities, _) = processor.post_process_probabilities(logits)
    assert probabilities.shape == (5, 4, 6) and torch.allclose(probabilities.sum(0), torch.ones(4, 6))
    with pytest.raises(ValueError, match="single-channel"):
        processor.post_process_probabilities(logits, minmax_normalize=True)


def test_post_process_model_output_and_minmax(processor):
    class Output:
        logits = torch.tensor([[[[-2.0, 0.0], [1.0, 4.0]]]])

    (p,) = processor.post_process_probabilities(Output(), target_sizes=[(5, 5)], minmax_normalize=True)
    assert tuple(p.shape) == (5, 5)
    assert p.min().item() == 0.0 and abs(p.max().item() - 1.0) < 1e-6
    (raw,) = processor.post_process_probabilities(Output(), target_sizes=[(5, 5)])
    assert raw.min().item() > 0.1  # without min-max, min is sigmoid(-2)
    with pytest.raises(ValueError, match="target sizes"):
        processor.post_process_semantic_segmentation(Output.logits, target_sizes=[(2, 2), (3, 3)])
    with pytest.raises(ValueError, match="expected logits"):
        processor.post_process_probabilities(torch.zeros(2, 2))


def test_post_process_takes_the_tuple_of_a_return_dict_false_model(processor):
    """A return_dict=False model returns (logits, ...) or, with labels, (loss, logits, ...): the logits are used (the
    tuple failed inside NumPy, 'Can't call numpy() on Tensor that requires grad')."""
    logits = torch.tensor([[-3.0, 3.0], [0.0, 1.0]]).reshape(1, 1, 2, 2).requires_grad_()
    hidden = (torch.zeros(1, 4, 1, 1),)
    expected = [[0, 1], [1, 1]]
    for outputs in ((logits,), (logits, hidden), (torch.tensor(0.5), logits, hidden)):
        (labels,) = processor.post_process_semantic_segmentation(outputs)
        assert labels.tolist() == expected
    multi = torch.randn(2, 3, 2, 2)
    labels = processor.post_process_semantic_segmentation((torch.tensor(1.0), multi), target_sizes=[(2, 2), (2, 2)])
    assert [m.tolist() for m in labels] == [m.argmax(0).tolist() for m in multi]
    # Per-image logits in a tuple are no model output: they were read as the first image's alone (one map for two).
    with pytest.raises(ValueError, match=r"^outputs: a tuple of 2 logits tensors; give one \(B, C, h, w\) tensor"):
        processor.post_process_semantic_segmentation((logits, logits))


def test_birefnet_resizes_like_its_upstream_with_opencv_without_antialiasing(tmp_path):
    """BiRefNet's inference.py (and training) resize with cv2.resize INTER_LINEAR; SAM2-UNet's and DSU-Net's with
    torchvision's Resize on PIL images. Downscaling a detailed picture, the two differ by many grey levels."""
    import types

    import cv2

    from dsunet_hf.image_processing import processor_for_model

    pixels = np.random.default_rng(0).integers(0, 256, (90, 70, 3), dtype=np.uint8)
    opencv = cv2.resize(pixels, (24, 32), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255
    pil = np.asarray(Image.fromarray(pixels).resize((24, 32), Image.Resampling.BILINEAR), np.float32) / 255
    assert np.abs(opencv - pil).max() > 0.1

    def prepared(**kwargs):
        processor = SegmentationImageProcessor(size={"height": 32, "width": 24}, do_normalize=False, **kwargs)
        return processor(pixels, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)

    assert np.array_equal(prepared(post_processing="birefnet"), opencv)  # was PIL's
    assert np.array_equal(prepared(), pil) and np.array_equal(prepared(post_processing="sam2_unet"), pil)
    assert np.array_equal(prepared(post_processing="birefnet", antialias=True), pil)
    assert np.array_equal(prepared(antialias=False), opencv)
    cubic = cv2.resize(pixels, (24, 32), interpolation=cv2.INTER_CUBIC).astype(np.float32) / 255
    assert np.array_equal(prepared(antialias=False, resample=int(Image.Resampling.BICUBIC)), cubic)
    with pytest.raises(ValueError, match="antialias=False"):
        SegmentationImageProcessor(antialias=False, resample=int(Image.Resampling.LANCZOS))

    SegmentationImageProcessor(size=8, antialias=False).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "preprocessor_config.json").read_text())["antialias"] is False
    assert SegmentationImageProcessor.from_pretrained(tmp_path).resize_antialiases() is False
    # A BiRefNet processor saved before the order was recorded resizes as BiRefNet once given its model's order.
    birefnet = types.SimpleNamespace(config=types.SimpleNamespace(model_type="birefnet"))
    assert processor_for_model(SegmentationImageProcessor(), birefnet).resize_antialiases() is False


def test_birefnet_post_processing_is_sigmoid_then_align_corners_resize():
    """BiRefNet's inference.py: sigmoid first, then the probabilities resized with align_corners=True (not the logits
    with align_corners=False); multi-class logits likewise softmax first. A map already at its size is left as it is."""
    torch.manual_seed(0)
    logits = 4 * torch.randn(2, 1, 6, 5)
    birefnet = SegmentationImageProcessor(size=16, post_processing="birefnet")
    maps = birefnet.post_process_probabilities(logits, target_sizes=[(23, 17), (6, 5)])
    expected = torch.nn.functional.interpolate(logits[:1].sigmoid(), (23, 17), mode="bilinear", align_corners=True)
    assert torch.allclose(maps[0], expected[0, 0], atol=1e-6) and torch.allclose(maps[1], logits[1, 0].sigmoid())
    (sam2,) = SegmentationImageProcessor(size=16).post_process_probabilities(logits[:1], target_sizes=[(23, 17)])
    assert (sam2 - maps[0]).abs().max() > 1e-2  # the two upstream orders differ
    (minmax,) = birefnet.post_process_probabilities(logits[:1], target_sizes=[(23, 17)], minmax_normalize=True)
    assert minmax.min().item() == 0.0 and minmax.max().item() == pytest.approx(1.0, abs=1e-6)
    classes = torch.randn(1, 3, 4, 6)
    (probabilities,) = birefnet.post_process_probabilities(classes, target_sizes=[(9, 11)])
    expected = torch.nn.functional.interpolate(classes.softmax(1), (9, 11), mode="bilinear", align_corners=True)
    assert torch.allclose(probabilities, expected[0], atol=1e-6)
    (labels,) = birefnet.post_process_semantic_segmentation(logits[:1], target_sizes=[(23, 17)])
    assert torch.equal(labels, (maps[0] >= 0.5).long())
    with pytest.raises(ValueError, match="post_processing must be one of"):
        SegmentationImageProcessor(post_processing="bicubic")


def test_post_processing_order_is_saved_and_old_processors_take_their_models(tmp_path):
    """The order is a processor attribute saved in preprocessor_config.json; a processor saved before it existed (no
    key) still loads, records none, and processor_for_model gives it its model's upstream order."""
    import types

    from transformers import AutoImageProcessor

    from dsunet_hf.image_processing import model_post_processing, processor_for_model

    SegmentationImageProcessor(size=16, post_processing="birefnet").save_pretrained(tmp_path / "new")
    assert json.loads((tmp_path / "new" / "preprocessor_config.json").read_text())["post_processing"] == "birefnet"
    assert AutoImageProcessor.from_pretrained(tmp_path / "new").post_processing == "birefnet"

    SegmentationImageProcessor(size=16).save_pretrained(tmp_path / "old")
    config_path = tmp_path / "old" / "preprocessor_config.json"
    config = json.loads(config_path.read_text())
    config.pop("post_processing", None)
    config_path.write_text(json.dumps(config))
    old = SegmentationImageProcessor.from_pretrained(tmp_path / "old")
    assert old.post_processing is None

    def model(model_type):
        return types.SimpleNamespace(config=types.SimpleNamespace(model_type=model_type))

    assert model_post_processing(model("birefnet")) == "birefnet"
    assert model_post_processing(model("sam2_unet")) == model_post_processing(model("dsunet")) == "sam2_unet"
    resolved = processor_for_model(old, model("birefnet"))
    assert resolved.post_processing == "birefnet" and old.post_processing is None  # a copy; the original unchanged
    assert resolved.size == old.size
    assert processor_for_model(old, model("sam2_unet")) is old  # None already is SAM2-UNet's order
    recorded = SegmentationImageProcessor(post_processing="sam2_unet")
    assert processor_for_model(recorded, model("birefnet")) is recorded  # an explicit order is kept
    logits = 3 * torch.randn(1, 1, 5, 7)
    (got,) = resolved.post_process_probabilities(logits, target_sizes=[(13, 9)])
    (want,) = SegmentationImageProcessor(post_processing="birefnet").post_process_probabilities(
        logits, target_sizes=[(13, 9)])
    assert torch.equal(got, want)


def test_to_pil_masks(processor):
    pils = processor.to_pil_masks([torch.tensor([[0.0, 0.5], [1.0, 0.2]]), torch.tensor([[True, False]])])
    assert pils[0].mode == "L" and pils[0].size == (2, 2)
    assert np.asarray(pils[0]).tolist() == [[0, 127], [255, 51]]  # floor(p * 255), as upstream and the metrics
    assert np.asarray(pils[1]).tolist() == [[255, 0]]


# ----------------------------------------------------------------------------- serialisation
def test_save_load_round_trip(tmp_path):
    p = SegmentationImageProcessor(size=20, image_mean=(0.5, 0.5, 0.5), image_std=(0.25, 0.25, 0.25))
    p.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert config["image_processor_type"] == "SegmentationImageProcessor"
    assert config["size"] == {"height": 20, "width": 20} and config["resample"] == 2
    q = SegmentationImageProcessor.from_pretrained(tmp_path)
    assert q.to_dict() == p.to_dict() == json.loads(q.to_json_string())
    img = Image.fromarray(_gradient())
    assert torch.equal(p(img)["pixel_values"], q(img)["pixel_values"])
    assert SegmentationImageProcessor.from_pretrained(tmp_path, size=12).size == {"height": 12, "width": 12}
    # transformers' switches for steps it always (or never) takes: refused, where they were saved and ignored (the
    # images still resized); the value that says what it does is accepted and not saved.
    from transformers import AutoImageProcessor

    with pytest.raises(ValueError, match=r"^do_resize=False is not supported: .* resizes to size \(pass size=\(height, width\)"):
        AutoImageProcessor.from_pretrained(tmp_path, do_resize=False)
    for switch in ({"do_rescale": False}, {"do_pad": True}):
        with pytest.raises(ValueError, match=f"^{next(iter(switch))}="):
            SegmentationImageProcessor(**switch)
    assert SegmentationImageProcessor.from_pretrained(tmp_path, do_resize=True).to_dict() == p.to_dict()


def test_a_home_relative_path_saves_and_loads_in_the_home_folder(tmp_path, monkeypatch):
    """As the models' own: transformers wrote "~/procs/x" to ./~/procs/x and refused to load it (not a repo id)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    SegmentationImageProcessor(size=20).save_pretrained("~/procs/x")
    assert (tmp_path / "home" / "procs" / "x" / "preprocessor_config.json").is_file() and not (tmp_path / "~").exists()
    assert SegmentationImageProcessor.from_pretrained("~/procs/x").size == {"height": 20, "width": 20}


def test_defaults():
    p = SegmentationImageProcessor()
    assert p.size == {"height": 352, "width": 352} and p.resample == 2 and p.do_normalize
    assert p.image_mean == [0.485, 0.456, 0.406] and p.image_std == [0.229, 0.224, 0.225]
    assert p.model_input_names == ["pixel_values"]


def test_numpy_integers_are_sizes():
    # was "size must be an int, ...", e.g. for a size read from an array or a numpy config
    assert SegmentationImageProcessor(size=np.int64(12)).size == {"height": 12, "width": 12}
    assert SegmentationImageProcessor(size=8)(np.zeros((4, 4, 3), np.uint8), size=np.int32(6))["pixel_values"].shape[-1] == 6


# ----------------------------------------------------------------------------- real data
def test_real_kvasir_mask():
    files = sorted((SHARED_DATA / "Kvasir-SEG" / "masks").glob("*.jpg"))
    if not files:
        pytest.skip(f"real benchmark samples not found under {SHARED_DATA}")
    mask = load_mask(files[0])
    assert mask.ndim == 2 and mask.dtype == np.float32
    assert 0.0 <= mask.min() and mask.max() <= 1.0 and mask.max() > 0.9
    hard = load_mask(files[0], threshold=0.5)
    assert set(np.unique(hard).tolist()) <= {0.0, 1.0} and hard.sum() > 0


def test_a_shape_cut_out_of_a_plain_layer_reads_as_its_alpha(tmp_path):
    """A mask saved as one colour with the object in the alpha channel (white on transparent, an LA PNG) read as
    an all-foreground or empty mask: its colour says nothing, so the alpha is the mask. Alpha beside colours that
    vary is still not read."""
    shape = np.zeros((24, 32), np.uint8)
    shape[6:18, 8:20] = 255
    white_on_clear = Image.fromarray(np.dstack([np.full_like(shape, 255)] * 3 + [shape]), "RGBA")
    white_on_clear.save(tmp_path / "white.png")
    black_la = Image.fromarray(np.dstack([np.zeros_like(shape), shape]), "LA")
    for source in (tmp_path / "white.png", white_on_clear, black_la):
        assert np.array_equal(load_mask(source), shape / 255.0), source
    opaque_white = Image.fromarray(np.full((24, 32, 4), 255, np.uint8), "RGBA")
    assert load_mask(opaque_white).min() == 1.0  # alpha that does not vary: the colour, as before
    two_colours = np.dstack([shape, shape * 0, shape * 0, np.arange(24 * 32, dtype=np.uint8).reshape(24, 32)])
    assert np.array_equal(load_mask(Image.fromarray(two_colours, "RGBA")), shape / 255.0)


def test_a_coloured_shape_cut_out_of_a_plain_layer_is_not_warned_of_as_colour_coded(tmp_path):
    """Read as its alpha (above), but training and evaluate warned that it was read by its luminance ("a red one
    0.3"): colour_coded_values counted its one colour."""
    from dsunet_hf.data import binary_mask_problem, load_segmentation_dataset
    from dsunet_hf.image_io import colour_coded_values

    shape = np.zeros((24, 32), np.uint8)
    shape[6:18, 8:20] = 255
    red_on_clear = Image.fromarray(np.dstack([np.full_like(shape, 220), shape * 0, shape * 0, shape]), "RGBA")
    assert np.array_equal(load_mask(red_on_clear), shape / 255.0)
    assert colour_coded_values(red_on_clear) is None
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
    Image.new("RGB", (32, 24)).save(tmp_path / "images" / "a.png")
    red_on_clear.save(tmp_path / "masks" / "a.png")
    assert binary_mask_problem(load_segmentation_dataset(str(tmp_path))) is None
    red_opaque = Image.fromarray(np.dstack([np.full_like(shape, 220), shape * 0, shape * 0, shape | 255]), "RGBA")
    assert colour_coded_values(red_opaque) == 1  # its alpha says nothing: read by luminance, warned of as before

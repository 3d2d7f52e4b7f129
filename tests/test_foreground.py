"""Foreground colour estimation (blur-fusion) for cut-outs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dsunet_hf import estimate_foreground, refine_foreground
from dsunet_hf.foreground import box_blur, box_blur_torch
from dsunet_hf.predict import Backdrop, composite_image, cutout_image

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (see conftest)


def mirrored(index: int, length: int) -> int:
    """OpenCV's BORDER_REFLECT_101 written out: fold back at each end, the edge pixel not repeated."""
    if length == 1:
        return 0
    while not 0 <= index < length:
        index = -index if index < 0 else 2 * (length - 1) - index
    return index


def box_blur_by_definition(plane: np.ndarray, size: int) -> np.ndarray:
    """Mean over the size x size box whose anchor (size // 2, size // 2) sits on each pixel."""
    height, width = plane.shape
    out = np.zeros_like(plane, dtype=np.float64)
    for y in range(height):
        for x in range(width):
            total = 0.0
            for dy in range(size):
                for dx in range(size):
                    total += plane[mirrored(y + dy - size // 2, height), mirrored(x + dx - size // 2, width)]
            out[y, x] = total / size**2
    return out


@pytest.mark.parametrize("shape, size", [((6, 9), 3), ((6, 9), 4), ((5, 4), 9), ((1, 7), 6), ((3, 1), 2),
                                         ((8, 8), 1), ((7, 11), 7)])
def test_box_blur_is_the_mirrored_box_mean(shape, size):
    plane = np.random.default_rng(size).random(shape)
    expected = box_blur_by_definition(plane, size)
    np.testing.assert_allclose(box_blur_torch(torch.from_numpy(plane), size).numpy(), expected, rtol=0, atol=1e-12)
    # float32 on the CPU: OpenCV when installed, else the same tensor code
    blurred = box_blur(torch.from_numpy(plane.astype(np.float32)), size).numpy()
    np.testing.assert_allclose(blurred, expected, rtol=0, atol=1e-6)


def test_box_blur_keeps_leading_dimensions_and_dtype():
    x = torch.rand(2, 3, 10, 12)
    for blur in (box_blur, box_blur_torch):
        blurred = blur(x, 5)
        assert blurred.shape == x.shape and blurred.dtype == torch.float32
        torch.testing.assert_close(blurred[1, 2], blur(x[1, 2], 5))
    with pytest.raises(ValueError, match="at least 1"):
        box_blur(x, 0)


def test_tensor_box_blur_equals_opencv():
    cv2 = pytest.importorskip("cv2", reason="OpenCV is not installed (the definition test covers the semantics)")
    rng = np.random.default_rng(0)
    for shape, size in [((64, 80), 90), ((300, 200), 90), ((33, 20), 6), ((50, 50), 7), ((1, 9), 6)]:
        plane = rng.random(shape).astype(np.float32)
        np.testing.assert_allclose(box_blur_torch(torch.from_numpy(plane), size).numpy(),
                                   cv2.blur(plane, (size, size)), rtol=0, atol=1e-6)


def composite(height=96, width=160):
    """I = alpha F + (1 - alpha) B with a known foreground F, a smooth background B and a soft 24-px edge."""
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    foreground = np.stack([np.full_like(xx, 0.9), 0.2 + 0.3 * yy / height, np.full_like(xx, 0.1)])
    background = np.stack([0.1 + 0.2 * xx / width, np.full_like(xx, 0.8), np.full_like(xx, 0.3)])
    alpha = np.clip((width / 2 - xx) / 24 + 0.5, 0, 1)
    image = alpha * foreground + (1 - alpha) * background
    return image, alpha, foreground


def test_estimated_colours_recover_the_foreground_where_alpha_is_soft():
    image, alpha, foreground = composite()
    estimate = estimate_foreground(torch.from_numpy(image), torch.from_numpy(alpha)).numpy()
    soft = (alpha > 0.05) & (alpha < 0.95)
    photo_error = np.abs(image - foreground)[:, soft].mean()
    estimate_error = np.abs(estimate - foreground)[:, soft].mean()
    assert photo_error > 0.2 and estimate_error < 0.25 * photo_error, (photo_error, estimate_error)
    opaque = alpha == 1  # where alpha is 1 the photo already is the foreground: kept exactly
    np.testing.assert_allclose(estimate[:, opaque], image[:, opaque], atol=1e-5)


def test_estimate_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="alpha must be"):
        estimate_foreground(torch.rand(3, 8, 8), torch.rand(8, 9))
    with pytest.raises(ValueError, match="image must be"):
        estimate_foreground(torch.rand(8, 8), torch.rand(8, 8))


def test_refine_foreground_takes_pil_masks_of_another_size_and_arrays():
    image, alpha, _ = composite()
    photo = Image.fromarray((image.transpose(1, 2, 0) * 255).round().astype(np.uint8))
    from_array = refine_foreground(photo, alpha)
    assert from_array.mode == "RGB" and from_array.size == photo.size
    mask = Image.fromarray((alpha * 255).round().astype(np.uint8)).resize((80, 48), Image.NEAREST)
    assert refine_foreground(photo, mask).size == photo.size
    with pytest.raises(ValueError, match="alpha has shape"):
        refine_foreground(photo, alpha[:, :10])



def test_an_8bit_mask_array_reads_as_its_pil_mask_and_alpha_outside_0_1_is_refused():
    """np.asarray of an 8-bit mask (0..255) was read as alpha 0..255: colours of nothing, silently."""
    image, alpha, _ = composite()
    photo = Image.fromarray((image.transpose(1, 2, 0) * 255).round().astype(np.uint8))
    mask = Image.fromarray((alpha * 255).round().astype(np.uint8))
    np.testing.assert_array_equal(np.asarray(refine_foreground(photo, np.asarray(mask))),
                                  np.asarray(refine_foreground(photo, mask)))
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\], got values from 0 to 255 .*divide it by 255"):
        refine_foreground(photo, np.asarray(mask, dtype=np.float32))
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        estimate_foreground(torch.from_numpy(image), torch.from_numpy(alpha) * 255)
    binary = alpha > 0.5  # `(p > 0.5).astype(np.uint8)` is alpha 0/1, not 0/255 (was read as at most 1/255)
    np.testing.assert_array_equal(np.asarray(refine_foreground(photo, binary.astype(np.uint8))),
                                  np.asarray(refine_foreground(photo, binary.astype(np.float32))))



def test_pil_masks_are_read_by_their_values_not_as_8bit_grey():
    """convert("L") read a 0/1 PNG (L, I, P) as alpha <= 1/255 (colours of nothing), clipped a soft 16-bit mask to
    alpha 1 where its level was over 255 and truncated a float ("F") mask to 0/1 levels."""
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))
    binary = np.zeros((20, 30), np.uint8)
    binary[4:16, 6:24] = 1
    soft = np.linspace(0, 1, 600, dtype=np.float32).reshape(20, 30)
    levels16 = (soft * 65535).round().astype(np.uint16)
    for alpha, masks in [
        (binary.astype(np.float32), [Image.fromarray(binary), Image.fromarray(binary * 255).convert("1"),
                                     Image.fromarray(binary).convert("P"), Image.fromarray(binary.astype(np.int32), "I"),
                                     binary, binary.astype(bool), binary.astype(np.int64) * 255]),
        (soft, [Image.fromarray(levels16), Image.frombytes("I;16B", (30, 20), levels16.astype(">u2").tobytes()),
                Image.fromarray(levels16.astype(np.int32), "I"), Image.fromarray(soft, "F"), levels16]),
    ]:
        expected = np.asarray(refine_foreground(photo, alpha))
        for mask in masks:
            name = getattr(mask, "mode", getattr(mask, "dtype", None))
            np.testing.assert_array_equal(np.asarray(refine_foreground(photo, mask)), expected, err_msg=str(name))
    with pytest.raises(ValueError, match=r"the alpha mask is 20x30 \(W x H\) but the image 30x20: transposed"):
        refine_foreground(photo, Image.fromarray(binary * 255).transpose(Image.Transpose.TRANSPOSE))
    with pytest.raises(ValueError, match="alpha of dtype int64 has values up to 1000: pass alpha as floats"):
        refine_foreground(photo, (soft * 1000).astype(np.int64))


def test_16bit_and_float_photos_are_scaled_not_clipped():
    """image.convert("RGB") clipped a 16-bit grey photo (I;16, I) to white and truncated a float ("F") one to black:
    the colours of the cut-out were lost. They are read as load_image reads them (scaled to 8 bit)."""
    levels = np.linspace(0, 1, 600, dtype=np.float32).reshape(20, 30)
    alpha = np.ones((20, 30), np.float32)
    expected = np.asarray(refine_foreground(Image.fromarray((levels * 255).round().astype(np.uint8)), alpha))
    levels16 = (levels * 65535).round().astype(np.uint16)
    for photo in (Image.fromarray(levels16), Image.fromarray(levels16.astype(np.int32) // 257, "I"),
                  Image.fromarray(levels, "F")):
        got = np.asarray(refine_foreground(photo, alpha)).astype(int)
        assert np.abs(got - expected).max() <= 1, photo.mode
    # The photo's own colours (--cutout-colors original) alike.
    from dsunet_hf.predict import cutout_image

    original = np.asarray(cutout_image(Image.fromarray(levels16), alpha, colors="original"))[..., 0].astype(int)
    assert np.abs(original - (levels * 255).round()).max() <= 1


def test_estimate_reads_uint8_images_as_0_255_and_refuses_float_colours_over_1():
    """A uint8 image tensor (torchvision's decode_image) was used as colours 0..255: clamped to white, silently."""
    image, alpha, _ = composite(24, 40)
    as_bytes = torch.from_numpy((image * 255).round().astype(np.uint8))
    torch.testing.assert_close(estimate_foreground(as_bytes, torch.from_numpy(alpha)),
                               estimate_foreground(as_bytes.float() / 255, torch.from_numpy(alpha)), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"image must be in \[0, 1\] \(or uint8\), got values from"):
        estimate_foreground(as_bytes.float(), torch.from_numpy(alpha))

def test_cutout_colours_estimated_or_original():
    image, alpha, foreground = composite()
    photo = Image.fromarray((image.transpose(1, 2, 0) * 255).round().astype(np.uint8))
    estimated, original = cutout_image(photo, alpha), cutout_image(photo, alpha, colors="original")
    for cut in (estimated, original):
        assert cut.mode == "RGBA"
        np.testing.assert_array_equal(np.asarray(cut)[..., 3], (alpha * np.float32(255)).astype(np.uint8))  # floor, as the written mask
    np.testing.assert_array_equal(np.asarray(original)[..., :3], np.asarray(photo))
    np.testing.assert_array_equal(np.asarray(estimated)[..., :3], np.asarray(refine_foreground(photo, alpha)))
    soft = (alpha > 0.05) & (alpha < 0.95)
    truth = foreground.transpose(1, 2, 0)[soft] * 255
    assert np.abs(np.asarray(estimated)[..., :3][soft] - truth).mean() < 0.2 * np.abs(
        np.asarray(original)[..., :3][soft] - truth).mean()
    with pytest.raises(ValueError, match="must be one of"):
        cutout_image(photo, alpha, colors="blurred")


def test_composite_puts_the_estimated_foreground_on_a_new_background():
    image, alpha, foreground = composite()
    photo = Image.fromarray((image.transpose(1, 2, 0) * 255).round().astype(np.uint8))
    backdrop = Backdrop("0,177,64")
    for colors in ("estimate", "original"):
        expected_rgb = np.asarray(refine_foreground(photo, alpha) if colors == "estimate" else photo, np.float32)
        expected = expected_rgb * alpha[..., None] + np.array([0, 177, 64], np.float32) * (1 - alpha[..., None])
        result = np.asarray(composite_image(photo, alpha, backdrop, colors))
        np.testing.assert_array_equal(result, expected.round().clip(0, 255).astype(np.uint8))
    # Against the true foreground on the new background, the estimate beats keeping the photo's colours: the
    # old background does not show through the soft edges.
    soft = (alpha > 0.05) & (alpha < 0.95)
    truth = (foreground.transpose(1, 2, 0) * 255 * alpha[..., None] + np.array([0, 177, 64]) * (1 - alpha[..., None]))
    errors = {colors: np.abs(np.asarray(composite_image(photo, alpha, backdrop, colors), np.float32) - truth)[soft].mean()
              for colors in ("estimate", "original")}
    assert errors["estimate"] < 0.5 * errors["original"]


def test_backdrop_colours_and_images_scaled_to_cover(tmp_path):
    assert Backdrop("white").color == (255, 255, 255) and Backdrop("#00b140").color == (0, 177, 64)
    assert Backdrop(" 0, 177 ,64").color == (0, 177, 64)
    # What Gradio's colour picker sends (some 5.x versions: rgba() with fractional components).
    assert Backdrop("rgb(102, 0, 71)").color == (102, 0, 71) and Backdrop("#abc").color == (170, 187, 204)
    assert Backdrop("rgba(49.83, 105.87, 134.61, 1)").color == (50, 106, 135)
    assert Backdrop((1, 2, 3)).pixels(4, 2).shape == (2, 4, 3)
    for bad in ("no-such-colour", "300,0,0", "1,2"):
        with pytest.raises(ValueError, match="background"):
            Backdrop(bad)
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="broken.jpg"):
        Backdrop(str(tmp_path / "broken.jpg"))
    # Three vertical bands on a 2:1 image, fitted to a square: the centre (most of the green band) is kept and the
    # sides are cropped, as an editor fits a background; stretching would keep a third of each.
    bands = np.zeros((100, 300, 3), np.uint8)
    bands[:, :100, 0], bands[:, 100:200, 1], bands[:, 200:, 2] = 255, 255, 255
    Image.fromarray(bands).save(tmp_path / "bands.png")
    fitted = Backdrop(str(tmp_path / "bands.png")).pixels(60, 60)
    assert fitted.shape == (60, 60, 3)
    assert np.mean(fitted[30, :, 1] > 128) == pytest.approx(1.0) and fitted[30, :, 0].max() < 128

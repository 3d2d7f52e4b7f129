"""Visual prompts: exact rasterisation of every prompt type, the command-line syntax, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dsunet_hf.prompts import (
    BoxPrompt,
    MaskPrompt,
    PointPrompt,
    ScribblePrompt,
    as_prompt,
    parse_prompt,
    reference_mask,
    reference_masks,
)


def pixels(mask: np.ndarray) -> set[tuple[int, int]]:
    """The foreground pixels as (x, y) pairs."""
    ys, xs = np.nonzero(mask)
    return {(int(x), int(y)) for x, y in zip(xs, ys)}


# --- rasterisation -----------------------------------------------------------------------------------------

def test_box_is_a_half_open_filled_rectangle():
    mask = BoxPrompt(2, 1, 5, 4).rasterize(6, 8)
    assert mask.dtype == bool and mask.shape == (6, 8)
    assert pixels(mask) == {(x, y) for x in range(2, 5) for y in range(1, 4)}
    expected = np.zeros((6, 8), bool)
    expected[1:4, 2:5] = True
    assert np.array_equal(mask, expected)


def test_fractional_box_covers_every_pixel_it_overlaps():
    assert pixels(BoxPrompt(1.5, 0.2, 3.1, 1.0).rasterize(5, 5)) == {(1, 0), (2, 0), (3, 0)}


def test_box_partly_outside_is_clipped():
    mask = BoxPrompt(-3, 4, 3, 20).rasterize(6, 8)
    assert pixels(mask) == {(x, y) for x in range(0, 3) for y in range(4, 6)}


def test_point_is_a_disk_of_the_radius():
    # Pixel (i, j) is the square [i, i+1) x [j, j+1): its centre is (i + 0.5, j + 0.5).
    mask = PointPrompt(5.5, 4.5, radius=2).rasterize(9, 10)
    expected = {(x, y) for x in range(10) for y in range(9) if (x - 5) ** 2 + (y - 4) ** 2 <= 4}
    assert pixels(mask) == expected
    assert len(expected) == 13  # the radius-2 digital disk: 1 + 4 + 4 + 4
    assert pixels(PointPrompt(0.5, 0.5, radius=0).rasterize(3, 3)) == {(0, 0)}
    # A disk at the border is cut by the image, not an error.
    assert pixels(PointPrompt(0.5, 0.5, radius=1).rasterize(3, 3)) == {(0, 0), (1, 0), (0, 1)}
    # An integer point is its pixel's top-left corner: radius 0 marks that pixel, a radius-1 disk the four
    # pixels around the corner.
    assert pixels(PointPrompt(0, 0, radius=0).rasterize(3, 3)) == {(0, 0)}
    assert pixels(PointPrompt(2, 2, radius=1).rasterize(5, 5)) == {(1, 1), (2, 1), (1, 2), (2, 2)}


def test_points_follow_the_boxes_pixel_convention():
    # Regression: points were rasterised with pixel centres at the integer coordinates, so the documented centre
    # of pixel (0, 0), (0.5, 0.5), marked pixel (1, 1), and a disk centred on a pixel was lopsided.
    for i, j in ((0, 0), (3, 1), (7, 5)):
        box = BoxPrompt(i, j, i + 1, j + 1).rasterize(6, 8)
        for dx, dy in ((0.0, 0.0), (0.5, 0.5), (0.9, 0.9), (0.1, 0.7)):
            assert np.array_equal(PointPrompt(i + dx, j + dy, radius=0).rasterize(6, 8), box), (i, j, dx, dy)
        assert np.array_equal(ScribblePrompt([(i + 0.5, j + 0.5)], width=1).rasterize(6, 8), box)
    assert pixels(PointPrompt(2.5, 2.5, radius=1).rasterize(6, 6)) == {(2, 2), (1, 2), (3, 2), (2, 1), (2, 3)}
    disk = PointPrompt(4.5, 4.5, radius=3).rasterize(9, 9)  # centred on the middle pixel: symmetric
    assert disk[4, 4] and np.array_equal(disk, disk[::-1]) and np.array_equal(disk, disk[:, ::-1])
    stroke = ScribblePrompt([(1.5, 4.5), (7.5, 4.5)], width=3).rasterize(9, 9)
    assert np.array_equal(stroke, stroke[::-1]) and np.array_equal(stroke, stroke[:, ::-1])


def test_several_points_are_several_disks():
    mask = PointPrompt(points=[(1.5, 1.5), (6.5, 3.5)], radius=1).rasterize(5, 8)
    assert pixels(mask) == {(1, 1), (0, 1), (2, 1), (1, 0), (1, 2), (6, 3), (5, 3), (7, 3), (6, 2), (6, 4)}
    assert PointPrompt(3, 4) == PointPrompt(points=[(3, 4)]) and PointPrompt(3, 4).radius == 8


def test_two_point_scribble_is_a_capsule_of_the_brush_width():
    # Horizontal stroke through the centres of pixels (2, 5) -> (8, 5), brush 5 px: every pixel whose centre is
    # within 2.5 px of the segment.
    mask = ScribblePrompt([(2.5, 5.5), (8.5, 5.5)], width=5).rasterize(11, 12)
    body = {(x, y) for x in range(2, 9) for y in range(3, 8)}
    caps = {(1, y) for y in range(3, 8)} | {(9, y) for y in range(3, 8)} | {(0, y) for y in (4, 5, 6)} | {
        (10, y) for y in (4, 5, 6)}
    assert pixels(mask) == body | caps


def test_one_pixel_scribble_is_exactly_the_pixels_it_passes():
    diagonal = ScribblePrompt([(0.5, 0.5), (3.5, 3.5)], width=1).rasterize(4, 4)
    assert np.array_equal(diagonal, np.eye(4, dtype=bool))
    bent = ScribblePrompt([(0.5, 1.5), (3.5, 1.5), (3.5, 4.5)], width=1).rasterize(5, 5)
    assert pixels(bent) == {(0, 1), (1, 1), (2, 1), (3, 1), (3, 2), (3, 3), (3, 4)}
    dot = ScribblePrompt([(2.5, 2.5)], width=3).rasterize(5, 5)  # one point: a dot of diameter 3
    assert pixels(dot) == {(x, y) for x in (1, 2, 3) for y in (1, 2, 3)}  # corners: sqrt(2) <= 1.5
    assert pixels(ScribblePrompt([(2.5, 2.5)], width=2).rasterize(5, 5)) == {(2, 2), (1, 2), (3, 2), (2, 1), (2, 3)}
    # Along a pixel edge (integer coordinates) a width-1 brush reaches the centres on both sides of it; the pixel
    # the last point (3, 2) lies in is marked too.
    edge = ScribblePrompt([(0, 2), (3, 2)], width=1).rasterize(4, 4)
    assert pixels(edge) == {(x, y) for x in range(3) for y in (1, 2)} | {(3, 2)}


def test_a_fractional_point_with_a_thin_brush_still_marks_its_pixel():
    # No pixel centre lies within 0 (or 0.25) px of these points: the pixel the point lies in is the prompt, not
    # nothing (an empty prompt would make the trained head attend to the whole image).
    assert pixels(PointPrompt(10.2, 10.9, radius=0).rasterize(20, 20)) == {(10, 10)}
    assert pixels(ScribblePrompt([(3.2, 3.9), (3.2, 3.9)], width=0.5).rasterize(8, 8)) == {(3, 3)}
    assert pixels(PointPrompt(19.6, 0.2, radius=0).rasterize(20, 20)) == {(19, 0)}  # the last column, not beyond


def test_mask_passes_through_any_non_zero_is_foreground(tmp_path):
    array = np.zeros((4, 6), np.uint8)
    array[1, 2], array[3, 5], array[0, 0] = 255, 1, 7
    assert np.array_equal(MaskPrompt(array).rasterize(4, 6), array > 0)
    assert np.array_equal(MaskPrompt(array > 0).rasterize(4, 6), array > 0)
    Image.fromarray(array).save(tmp_path / "m.png")
    assert np.array_equal(MaskPrompt(tmp_path / "m.png").rasterize(4, 6), array > 0)
    assert np.array_equal(MaskPrompt(Image.fromarray(array)).rasterize(4, 6), array > 0)
    assert pixels(MaskPrompt(array, threshold=0.5).rasterize(4, 6)) == {(2, 1)}  # 255 only: lossy-JPEG noise out


def test_a_mask_threshold_reaches_mask_files_and_arrays_and_is_checked(tmp_path):
    """Regression: a NaN threshold, or 128 meant on 0-255, was "mask is empty: no foreground (non-zero) pixel", 0
    silently made the whole image the prompt; the prompt text had no way to a threshold (--mask-threshold)."""
    array = np.zeros((4, 6), np.uint8)
    array[1, 2], array[3, 5] = 255, 7  # 7: a JPEG mask's noise
    Image.fromarray(array).save(tmp_path / "m.png")
    for prompt in (f"mask:{tmp_path / 'm.png'}", str(tmp_path / "m.png"), tmp_path / "m.png", array):
        assert pixels(reference_mask(prompt, (4, 6), mask_threshold=0.5)) == {(2, 1)}, prompt
        assert pixels(reference_masks([prompt], [(4, 6)], mask_threshold=0.5)[0]) == {(2, 1)}
    assert parse_prompt(str(tmp_path / "m.png"), mask_threshold=0.5) == MaskPrompt(str(tmp_path / "m.png"), 0.5)
    assert parse_prompt(str(tmp_path / "m.png")) != MaskPrompt(str(tmp_path / "m.png"), 0.5)
    assert reference_mask(BoxPrompt(0, 0, 2, 1), (4, 6), mask_threshold=0.5).sum() == 2  # other prompts as they are
    for bad in (float("nan"), 128, 0, -0.5, "0.5"):
        with pytest.raises(ValueError, match=r"^mask threshold \(--mask-threshold\) must be"):
            MaskPrompt(array, threshold=bad)
    with pytest.raises(ValueError, match=r"mask is empty: it has no foreground \(>= the threshold 1.0 of 0-1\) pixel"):
        MaskPrompt(array // 2, threshold=1).rasterize(4, 6)


def test_reference_mask_uses_the_image_size(tmp_path):
    image = Image.new("RGB", (8, 6))  # 8 wide, 6 high
    assert reference_mask(BoxPrompt(0, 0, 2, 2), image).shape == (6, 8)
    assert pixels(reference_mask("box:0,0,2,1", image)) == {(0, 0), (1, 0)}
    assert reference_mask(np.ones((6, 8)), image).all()  # an array is a mask prompt
    assert reference_mask(BoxPrompt(0, 0, 2, 2), (3, 4)).shape == (3, 4)


# --- command-line syntax ------------------------------------------------------------------------------------

def test_parse_each_syntax(tmp_path):
    assert parse_prompt("box:10,20,110,90") == BoxPrompt(10, 20, 110, 90)
    assert parse_prompt(" Box: 1.5, 2 ,3,4 ") == BoxPrompt(1.5, 2, 3, 4)
    assert parse_prompt("point:5,6") == PointPrompt(5, 6)
    assert parse_prompt("point:5,6;7,8", radius=3) == PointPrompt(points=[(5, 6), (7, 8)], radius=3)
    assert parse_prompt("scribble:1,2;3,4;5,6") == ScribblePrompt([(1, 2), (3, 4), (5, 6)], width=5)
    assert parse_prompt("scribble:1,2;3,4;", width=2) == ScribblePrompt([(1, 2), (3, 4)], width=2)
    Image.fromarray(np.full((3, 3), 255, np.uint8)).save(tmp_path / "ref.png")
    assert parse_prompt(f"mask:{tmp_path / 'ref.png'}") == MaskPrompt(str(tmp_path / "ref.png"))
    assert parse_prompt(str(tmp_path / "ref.png")) == MaskPrompt(str(tmp_path / "ref.png"))
    # A bare path is a mask for every image type the package reads (.jfif, .ppm, .pgm were "malformed prompt").
    from dsunet_hf.image_io import IMAGE_EXTENSIONS

    for suffix in IMAGE_EXTENSIONS + (".PGM",):
        path = tmp_path / f"ref{suffix}"
        Image.fromarray(np.full((3, 3), 255, np.uint8)).save(path, format="JPEG" if suffix == ".jfif" else None)
        assert parse_prompt(str(path)) == MaskPrompt(str(path)), suffix
    assert as_prompt("point:1,1") == PointPrompt(1, 1)


@pytest.mark.parametrize("text, message", [
    ("box:1,2,3", "malformed box prompt 'box:1,2,3'"),
    ("box:a,b,c,d", "malformed box prompt 'box:a,b,c,d'"),
    ("point:", "malformed point prompt 'point:'"),
    ("point:1;2", "malformed point prompt 'point:1;2'"),
    ("scribble:1,2;x,y", "malformed scribble prompt 'scribble:1,2;x,y'"),
    ("circle:1,2,3", "malformed prompt 'circle:1,2,3'"),
    ("hello", "malformed prompt 'hello'"),
    ("mask:", "malformed mask prompt 'mask:'"),
    ("mask:/no/such/mask.png", "no such file /no/such/mask.png"),
    ("mask:.", r"^mask prompt 'mask:\.': \. is a folder, not a mask image file$"),  # was "no such file ."
    ("box:5,0,5,3", r"box \(5, 0, 5, 3\) is empty"),
])
def test_malformed_text_is_quoted(text, message):
    with pytest.raises(ValueError, match=message):
        parse_prompt(text)


# --- clear errors -------------------------------------------------------------------------------------------

def test_bad_prompts_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="mask is empty"):
        MaskPrompt(np.zeros((4, 4))).rasterize(4, 4)
    with pytest.raises(ValueError, match=r"mask has size 6x4 \(WxH\) but the image has size 5x3 \(WxH\)"):
        MaskPrompt(np.ones((4, 6))).rasterize(3, 5)
    Image.fromarray(np.ones((4, 6), np.uint8)).save(tmp_path / "small.png")
    with pytest.raises(ValueError, match=r"mask .*small.png has size 6x4 \(WxH\) but the image has size 8x8"):
        MaskPrompt(tmp_path / "small.png").rasterize(8, 8)
    with pytest.raises(ValueError, match=r"box \(4, 0, 2, 3\) is empty: it needs x1 > x0"):
        BoxPrompt(4, 0, 2, 3)
    with pytest.raises(ValueError, match=r"lies entirely outside the image of size 8x6 \(WxH\)"):
        BoxPrompt(10, 0, 20, 3).rasterize(6, 8)
    with pytest.raises(ValueError, match=r"lies entirely outside"):
        BoxPrompt(-5, -5, 0, 0).rasterize(6, 8)  # half-open: ends right before pixel (0, 0)
    with pytest.raises(ValueError, match=r"point prompt: point\(s\) \(8, 2\) off the image of size 8x6"):
        PointPrompt(8, 2).rasterize(6, 8)
    with pytest.raises(ValueError, match=r"\(-1, 0\) off the image"):
        PointPrompt(points=[(1, 1), (-1, 0)]).rasterize(6, 8)
    with pytest.raises(ValueError, match="radius"):
        PointPrompt(1, 1, radius=-1)
    with pytest.raises(ValueError, match="needs x and y"):
        PointPrompt(1)
    with pytest.raises(ValueError, match="at least one point"):
        ScribblePrompt([])
    with pytest.raises(ValueError, match=r"scribble: point\(s\) \(3, 9\) off the image of size 8x6"):
        ScribblePrompt([(1, 1), (3, 9)]).rasterize(6, 8)
    with pytest.raises(ValueError, match="width"):
        ScribblePrompt([(1, 1)], width=0)


def test_a_box_in_fractions_of_the_image_is_refused_with_its_pixel_box():
    # box:0.1,0.1,0.9,0.9 (YOLO-style fractions) used to mark pixel (0, 0) alone, silently.
    with pytest.raises(ValueError, match=r"lies within pixel \(0, 0\).*not fractions.*it is box:8,6,72,54"):
        parse_prompt("box:0.1,0.1,0.9,0.9").rasterize(60, 80)
    with pytest.raises(ValueError, match="not fractions"):
        BoxPrompt(0, 0, 1, 0.5).rasterize(60, 80)
    # Pixel boxes near the corner still work, pixel (0, 0) itself too, and any box on a one-pixel image.
    assert pixels(BoxPrompt(0, 0, 1, 1).rasterize(60, 80)) == {(0, 0)}
    assert pixels(BoxPrompt(0.5, 0, 1.5, 1).rasterize(60, 80)) == {(0, 0), (1, 0)}
    assert BoxPrompt(0.2, 0.2, 0.8, 0.8).rasterize(1, 1).all()
    with pytest.raises(ValueError, match="not x, y, width, height"):
        parse_prompt("box:300,200,50,40")  # COCO's x, y, width, height


def test_a_mask_drawn_on_an_exif_turned_photo_s_stored_pixels_says_why_it_does_not_fit(tmp_path):
    # The photo is 80x60 on disk (what PIL's .size and most tools report) but shown, and read, 60x80: the bare size
    # mismatch pointed nowhere.
    photo = Image.fromarray(np.zeros((60, 80, 3), np.uint8))
    exif = photo.getexif()
    exif[0x0112] = 6  # turned 90 degrees, as phones record portrait photos
    photo.save(tmp_path / "phone.jpg", exif=exif)
    Image.fromarray(np.full((60, 80), 255, np.uint8)).save(tmp_path / "mask.png")
    with pytest.raises(ValueError, match=r"size 80x60 \(WxH\) but the image has size 60x80.*EXIF orientation"):
        reference_mask(f"mask:{tmp_path / 'mask.png'}", tmp_path / "phone.jpg")
    with pytest.raises(ValueError, match=r"must match its reference image$"):  # not swapped: no EXIF hint
        reference_mask(f"mask:{tmp_path / 'mask.png'}", (60, 70))

"""Batch prediction and the command line."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA, TINY_SIZE, tiny_sam2_unet_config
from PIL import Image

from dsunet_hf import Sam2UNetForImageSegmentation, SegmentationImageProcessor
from dsunet_hf.cli import main as cli_main
from dsunet_hf.predict import collect_images, predict_files

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (see conftest)


@pytest.fixture
def artifact(tmp_path):
    """A self-contained tiny model folder (no backbone repo needed)."""
    model = Sam2UNetForImageSegmentation(tiny_sam2_unet_config()).eval()
    model.save_pretrained(tmp_path / "model", include_backbone=True)
    SegmentationImageProcessor(size=TINY_SIZE).save_pretrained(tmp_path / "model")
    return model, tmp_path / "model"


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    Image.new("RGB", (50, 40), (10, 200, 30)).save(folder / "a.jpg")
    Image.new("L", (33, 47), 128).save(folder / "sub" / "b.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return folder


def test_predict_writes_masks_at_original_size_and_reports_bad_files(artifact, images, tmp_path):
    model, _ = artifact
    processor = SegmentationImageProcessor(size=TINY_SIZE)
    report = predict_files(model, processor, [images], tmp_path / "out", batch_size=2, overlay=True,
                           cutout=True, background="white", progress=False)
    assert len(report.written) == 2 and list(report.failed) == [str(images / "broken.png")]
    assert "broken.png" in report.failed[str(images / "broken.png")]
    assert Image.open(tmp_path / "out" / "masks" / "a.png").size == (50, 40)
    assert Image.open(tmp_path / "out" / "masks" / "sub" / "b.png").size == (33, 47)
    assert Image.open(tmp_path / "out" / "cutouts" / "a.png").mode == "RGBA"
    assert Image.open(tmp_path / "out" / "overlays" / "sub" / "b.png").size == (33, 47)
    composite = np.asarray(Image.open(tmp_path / "out" / "composites" / "a.png"), dtype=np.float32)
    cutout = np.asarray(Image.open(tmp_path / "out" / "cutouts" / "a.png"), dtype=np.float32)
    alpha = cutout[..., 3:] / 255  # the composite is the cut-out laid on white
    assert composite.shape == (40, 50, 3)
    # the 8-bit alpha is floor(p * 255): up to 1/255 of the colour difference, plus the composite's rounding
    assert np.abs(composite - (cutout[..., :3] * alpha + 255 * (1 - alpha))).max() <= 1.5
    saved_report = json.loads((tmp_path / "out" / "prediction_report.json").read_text())
    assert saved_report["failed"] == report.failed
    umask = os.umask(0)
    os.umask(umask)  # outputs get a new file's mode, not the private 0600 of the temporary file they were written to
    assert (tmp_path / "out" / "masks" / "a.png").stat().st_mode & 0o777 == 0o666 & ~umask

    # The mask is the model's probability map, resized: check against a direct forward pass.
    inputs = processor(str(images / "a.jpg"))
    with torch.no_grad():
        logits = model(pixel_values=inputs["pixel_values"]).logits
    (expected,) = processor.post_process_probabilities(logits, target_sizes=inputs["original_sizes"])
    written = np.asarray(Image.open(tmp_path / "out" / "masks" / "a.png"), dtype=np.float32) / 255
    difference = expected.numpy() - written  # floor(p * 255), as upstream writes its maps: 0 <= p - mask < 1/255
    assert difference.min() >= -1e-6 and difference.max() < 1 / 255 + 1e-6 and difference.max() > 0.5 / 255

    # A second run resumes: finished masks are kept, only the failure is retried.
    again = predict_files(model, processor, [images], tmp_path / "out", progress=False)
    assert len(again.skipped_existing) == 2 and not again.written


def test_threshold_writes_binary_masks(artifact, images, tmp_path):
    model, _ = artifact
    predict_files(model, SegmentationImageProcessor(size=TINY_SIZE), [images / "a.jpg"], tmp_path / "out",
                  threshold=0.5, progress=False)
    values = set(np.unique(np.asarray(Image.open(tmp_path / "out" / "masks" / "a.png"))))
    assert values <= {0, 255}
    # Regression: a NumPy batch size passed the check, then the DataLoader refused it ("batch_size should be a
    # positive integer value, but got batch_size=2").
    report = predict_files(model, SegmentationImageProcessor(size=TINY_SIZE), [images / "a.jpg"], tmp_path / "np",
                           batch_size=np.int64(2), progress=False)
    assert report.written == [str(images / "a.jpg")]
    with pytest.raises(ValueError, match="threshold=128: it applies to the foreground probabilities, between 0 and 1"):
        predict_files(model, SegmentationImageProcessor(size=TINY_SIZE), [images / "a.jpg"], tmp_path / "bad",
                      threshold=128, progress=False)


def test_duplicate_output_names_are_refused(images, tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    with pytest.raises(ValueError, match="same output name"):
        collect_images([images / "a.jpg", tmp_path / "a.png"])
    with pytest.raises(FileNotFoundError, match="nope"):
        collect_images([tmp_path / "nope"])



def test_a_pattern_gives_the_images_beside_its_folders_too_and_each_file_is_predicted_once(tmp_path):
    """"shots/*" over day1/, day2/ and cover.jpg predicted cover.jpg alone (the folders' images silently left out);
    "shots/**/" predicted each image twice (as shots/day1/a and day1/a); a file given twice was refused as two
    files "that differ only in their extension"."""
    shots = tmp_path / "shots"
    for name in ("day1/a.jpg", "day2/a.jpg", "cover.jpg"):
        (shots / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(shots / name)
    named = [(path.relative_to(shots).as_posix(), name.as_posix()) for path, name in collect_images([shots / "*"])]
    assert named == [("cover.jpg", "cover"), ("day1/a.jpg", "day1/a"), ("day2/a.jpg", "day2/a")]
    named = [(path.relative_to(shots).as_posix(), name.as_posix()) for path, name in collect_images([f"{shots}/**/"])]
    assert named == [("cover.jpg", "shots/cover"), ("day1/a.jpg", "shots/day1/a"), ("day2/a.jpg", "shots/day2/a")]
    cover = shots / "cover.jpg"
    assert collect_images([shots / "*.jpg", cover, Path(os.path.relpath(cover))]) == [(cover, Path("cover"))]
    # One input given alone, not in a list: a string was walked letter by letter ("/" first: the whole disk).
    from dsunet_hf.predict import check_inputs

    assert collect_images(str(cover)) == collect_images(cover) == [(cover, Path("cover"))]
    check_inputs(str(cover))


def test_a_folder_or_pattern_with_no_image_to_predict_is_one_clear_error(artifact, tmp_path, caplog):
    """A folder of iPhone .heic photos ended as "0 written, 0 already present, 0 failed" with exit code 0."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        (photos / f"IMG_{i}.HEIC").write_bytes(b"not read")
    with pytest.raises(SystemExit, match=rf"^predict: {re.escape(str(photos))}: no image or video file to predict "
                                         rf"\(found 3 \.heic; the types read: .*\.jpg .*\.mp4 "):
        cli_main(["predict", "--model", str(artifact[1]), str(photos), "--output-dir", str(tmp_path / "out")])
    model, processor = red_model_and_processor()
    (photos / "empty").mkdir()
    for given, found in ((photos / "*.HEIC", "3 .heic"), (photos / "empty", "no file")):
        with pytest.raises(FileNotFoundError, match=rf"{re.escape(str(given))}: no image or video file to predict "
                                                    rf"\(found {found};"):
            predict_files(model, processor, [given], tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    # Said before the model loads; one such folder among others is skipped with a warning, the others predicted.
    with pytest.raises(SystemExit, match=r"^predict: .*photos: no image or video file to predict \(found 3 \.heic;"):
        cli_main(["predict", "--model", str(photos / "empty"), str(photos), "--output-dir", str(tmp_path / "o")])
    Image.new("RGB", (8, 8)).save(tmp_path / "one.jpg")
    with caplog.at_level("WARNING"):
        assert collect_images([photos, tmp_path / "one.jpg", photos / "*.HEIC"]) == [(tmp_path / "one.jpg", Path("one"))]
    assert caplog.text.count("no image or video file to predict (found 3 .heic;") == 2
    from dsunet_hf.predict import check_inputs

    (tmp_path / "scan.jp2").write_bytes(b"named directly: read by its content, whatever its suffix")
    check_inputs([tmp_path / "scan.jp2"])


def test_hidden_files_and_folders_in_a_folder_are_left_out_as_training_leaves_them_out(tmp_path):
    """macOS writes ._IMG_1.jpg (no image) beside each photo on a USB drive or share: each one was a failure and the
    run's exit code 1; a file manager's .thumbnails/ was predicted as photos."""
    usb = tmp_path / "usb"
    (usb / ".thumbnails").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(usb / "IMG_1.jpg")
    (usb / "._IMG_1.jpg").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X" + bytes(64))
    Image.new("RGB", (8, 8)).save(usb / ".thumbnails" / "IMG_1.png")
    assert collect_images([usb]) == [(usb / "IMG_1.jpg", Path("IMG_1"))]
    assert collect_images([usb / "._IMG_1.jpg"]) == [(usb / "._IMG_1.jpg", Path("._IMG_1"))]  # named: read
    (usb / "IMG_1.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="usb: no image or video file to predict \\(found no file;"):
        collect_images([usb])

def test_output_names_keep_dots_patterns_expand_folders_and_outputs_inside_inputs_are_left_out(
        artifact, tmp_path, capsys):
    _, model = artifact
    shots = tmp_path / "shots"
    for folder, name in (("day1", "photo.v1.jpg"), ("day1", "photo.v2.jpg"), ("day2", "photo.v1.jpg"),
                         ("day2", "\U0001F642" * 62 + ".jpg")):  # 252 bytes: near the file system's limit
        (shots / folder).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (30 + len(name) % 7, 20), (200, 30, 30)).save(shots / folder / name)
    # A pattern matching folders predicts their images, named with the folder (day1/ and day2/ both hold photo.v1).
    out = tmp_path / "out"
    assert cli_main(["predict", "--model", str(model), str(shots / "day*"), "--output-dir", str(out)]) == 0
    written = sorted(str(p.relative_to(out / "masks")) for p in (out / "masks").rglob("*.png"))
    assert written == ["day1/photo.v1.png", "day1/photo.v2.png", "day2/photo.v1.png", "day2/" + "\U0001F642" * 62 + ".png"]
    assert not list((out / "masks").rglob(".*.tmp"))
    # The default output folder inside the input folder: a re-run does not predict the previous run's outputs.
    inside = shots / "predictions"
    for _ in range(2):
        cli_main(["predict", "--model", str(model), str(shots), "--output-dir", str(inside)])
    assert "0 written, 4 already present" in capsys.readouterr().out
    assert sorted(p.name for p in (inside / "masks").iterdir()) == ["day1", "day2"]
    # An output kind asked for on a re-run is written (the masks alone do not make an input done).
    assert cli_main(["predict", "--model", str(model), str(shots), "--output-dir", str(inside), "--overlay"]) == 0
    assert "4 written, 0 already present" in capsys.readouterr().out
    assert len(list((inside / "overlays").rglob("*.png"))) == 4
    # The output folder may be the input folder itself: the inputs are predicted, the outputs never read back.
    same = tmp_path / "same"
    same.mkdir()
    Image.new("RGB", (30, 20), (200, 30, 30)).save(same / "a.jpg")
    for _ in range(2):
        cli_main(["predict", "--model", str(model), str(same), "--output-dir", str(same)])
    assert "0 written, 1 already present" in capsys.readouterr().out
    assert sorted(p.name for p in (same / "masks").iterdir()) == ["a.png"]
    # "**" matches a folder, its sub-folders and their files: each file once, by its own name; the outputs under the
    # pattern are left out too.
    assert collect_images([str(same / "**")], exclude=same) == [(same / "a.jpg", Path("a"))]
    # A mistyped input is one line, before the model loads.
    with pytest.raises(SystemExit, match=r"^predict: .*nope.jpg: no such file or folder$"):
        cli_main(["predict", "--model", str(model), str(tmp_path / "nope.jpg")])
    with pytest.raises(SystemExit, match=r"^predict: .*\*.gif: the pattern matches no file$"):
        cli_main(["predict", "--model", str(model), str(shots / "*.gif")])


def test_an_input_of_a_runs_outputs_alone_is_said_not_silently_left_out(tmp_path, caplog):
    """Regression: masks/ passed back as the input with the same output folder (or a file or pattern in it) was left
    out silently: "0 written, 0 already present, 0 failed", exit 0."""
    out = tmp_path / "out"
    (out / "masks").mkdir(parents=True)
    Image.new("L", (4, 4)).save(out / "masks" / "a.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "b.jpg")
    for given in (out / "masks", out / "masks" / "a.png", str(out / "masks" / "*.png")):
        with pytest.raises(ValueError, match=rf"^{re.escape(str(given))}: (its images lie|it lies) in the output "
                                             rf"folders \(masks/, .*\) of --output-dir .*; pass another --output-dir$"):
            collect_images([given], exclude=out)
    with caplog.at_level(logging.WARNING, logger="dsunet_hf.predict"):  # beside other inputs: a warning
        assert collect_images([out / "masks", tmp_path / "b.jpg"], exclude=out) == [(tmp_path / "b.jpg", Path("b"))]
    assert "masks: its images lie in the output folders" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dsunet_hf.predict"):  # the usual case: out/ inside the input folder
        assert collect_images([tmp_path], exclude=out) == [(tmp_path / "b.jpg", Path("b"))]
    assert not caplog.text
    # One path alone, or an array of paths (a DataFrame column's values): each path an input.
    assert collect_images(str(tmp_path / "b.jpg")) == collect_images(np.array([str(tmp_path / "b.jpg")])) == \
        [(tmp_path / "b.jpg", Path("b"))]


def test_cli_predict(artifact, images, tmp_path, capsys):
    _, folder = artifact
    code = cli_main(["predict", "--model", str(folder), str(images), "--output-dir", str(tmp_path / "cli")])
    assert code == 1  # broken.png could not be read: the exit code says so
    captured = capsys.readouterr()
    assert "2 written" in captured.out and "1 failed" in captured.out and "broken.png" in captured.err
    assert cli_main(["predict", "--model", str(folder), str(images / "*.jpg"), "--output-dir",
                     str(tmp_path / "glob")]) == 0
    assert [p.name for p in (tmp_path / "glob" / "masks").iterdir()] == ["a.png"]
    assert (tmp_path / "cli" / "masks" / "a.png").is_file()


def test_cli_cutouts_estimate_the_foreground_colours_or_keep_the_photos(artifact, tmp_path):
    from dsunet_hf import refine_foreground

    _, folder = artifact
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8))
    photo.save(tmp_path / "noise.png")
    cutouts = {}
    for colors in ("estimate", "original"):
        extra = [] if colors == "estimate" else ["--cutout-colors", colors]  # estimate is the default
        assert cli_main(["predict", "--model", str(folder), str(tmp_path / "noise.png"), "--cutout", "--output-dir",
                         str(tmp_path / colors), *extra]) == 0
        cutouts[colors] = np.asarray(Image.open(tmp_path / colors / "cutouts" / "noise.png"))
    mask = np.asarray(Image.open(tmp_path / "estimate" / "masks" / "noise.png"))
    for cut in cutouts.values():
        np.testing.assert_array_equal(cut[..., 3], mask)  # alpha = the written soft mask
    np.testing.assert_array_equal(cutouts["original"][..., :3], np.asarray(photo))
    expected = np.asarray(refine_foreground(photo, mask.astype(np.float32) / 255), dtype=np.int16)
    assert np.abs(cutouts["estimate"][..., :3].astype(np.int16) - expected).max() <= 2  # alpha rounded to 8 bits
    assert np.abs(cutouts["estimate"][..., :3].astype(np.int16) - np.asarray(photo)).mean() > 10


@pytest.mark.skipif(not (SHARED_DATA / "ECSSD").is_dir(), reason=f"real benchmark samples not found under {SHARED_DATA}")
def test_predict_on_real_benchmark_images(artifact, tmp_path):
    model, _ = artifact
    files = sorted((SHARED_DATA / "ECSSD" / "images").glob("*.jpg"))[:3]
    report = predict_files(model, SegmentationImageProcessor(size=TINY_SIZE), files, tmp_path / "out", progress=False)
    assert len(report.written) == 3 and not report.failed
    for f in files:
        assert Image.open(tmp_path / "out" / "masks" / f"{f.stem}.png").size == Image.open(f).size


@pytest.mark.parametrize("native_bf16", [True, False])
def test_cli_info_names_the_fast_path_of_this_cpu(native_bf16, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert cli_main(["info"]) == 0
    device_line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("device: cpu"))
    assert ("--autocast bf16" in device_line) == native_bf16
    assert "export onnx" in device_line  # the exact-fp32 fast path applies to every CPU
    from dsunet_hf import foreground

    monkeypatch.setattr(foreground, "opencv_available", lambda: False)
    assert cli_main(["info"]) == 0
    assert "cut-out colours: torch (pip install opencv-python-headless" in capsys.readouterr().out


def test_cli_info_lists_the_optional_extras(monkeypatch, capsys):
    from importlib import metadata

    real_version = metadata.version

    def version(name):
        if name == "av":
            raise metadata.PackageNotFoundError(name)
        return real_version(name)

    monkeypatch.setattr(metadata, "version", version)
    assert cli_main(["info"]) == 0
    extras = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("extras: "))
    assert f"onnx: onnxruntime {real_version('onnxruntime')}" in extras
    assert "video: not installed (videos in predict: pip install 'dsunet-hf[video]')" in extras


def test_cli_info_and_push(artifact, offline_hub, capsys):
    _, folder = artifact
    assert cli_main(["info", str(folder)]) == 0
    assert '"model_type": "sam2_unet"' in capsys.readouterr().out
    assert cli_main(["push", str(folder), "me/pushed"]) == 0
    assert offline_hub.pushes[-1][0] == "me/pushed"
    loaded = Sam2UNetForImageSegmentation.from_pretrained("me/pushed")
    assert isinstance(loaded, Sam2UNetForImageSegmentation)
    import huggingface_hub

    def unreachable(*args, **kwargs):
        raise ConnectionError("Name or service not known")

    with pytest.MonkeyPatch.context() as patch:  # the Hub client's own error, said in one line, not a traceback
        patch.setattr(huggingface_hub.HfApi, "upload_folder", unreachable)
        with pytest.raises(SystemExit, match="uploading .* to me/pushed failed .ConnectionError: Name or service"):
            cli_main(["push", str(folder), "me/pushed"])


def test_push_puts_evaluation_results_on_the_card(artifact, tmp_path, offline_hub, capsys):
    """`dsunet-hf evaluate` -> `dsunet-hf push --evaluation`: the Hub's model-index results and a table on the card,
    equal to the report; pushing a newer report replaces its results instead of repeating them."""
    from huggingface_hub import ModelCard, hf_hub_download

    _, folder = artifact
    data = tmp_path / "CAMO"
    for kind in ("images", "masks"):
        (data / kind).mkdir(parents=True)
    for index in range(3):
        Image.new("RGB", (40, 30), (index * 60, 90, 20)).save(data / "images" / f"{index}.png")
        mask = np.zeros((30, 40), np.uint8)
        mask[5:20, 10:30] = 255
        Image.fromarray(mask).save(data / "masks" / f"{index}.png")
    assert cli_main(["evaluate", "--model", str(folder), "--data", str(data), "--output-dir", str(tmp_path / "ev")]) == 0
    report = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert cli_main(["push", str(folder), "me/scored", "--evaluation", str(tmp_path / "ev" / "evaluation.json")]) == 0
    card = ModelCard.load(hf_hub_download("me/scored", "README.md"))
    results = {(r.dataset_name, r.metric_name): r.metric_value for r in card.data.eval_results}
    assert results[("CAMO", "S-measure")] == round(report["results"]["CAMO"]["S-measure"], 4)
    assert len(results) == len(report["results"]["CAMO"]) and card.data.model_name == "scored"
    index = card.data.to_dict()["model-index"][0]["results"][0]
    assert index["task"]["type"] == "image-segmentation" and index["dataset"]["name"] == "CAMO"
    assert "## Benchmark results" in card.text and f"{report['results']['CAMO']['MAE']:.4f}" in card.text
    report["results"]["CAMO"]["S-measure"] = 0.5
    (tmp_path / "ev" / "evaluation.json").write_text(json.dumps(report))
    assert cli_main(["push", str(folder), "me/scored", "--evaluation", str(tmp_path / "ev" / "evaluation.json")]) == 0
    card = ModelCard.load(hf_hub_download("me/scored", "README.md"))
    assert [r.metric_value for r in card.data.eval_results if r.metric_name == "S-measure"] == [0.5]
    assert card.text.count("## Benchmark results") == 1
    (tmp_path / "not-a-report.json").write_text("{}")
    with pytest.raises(SystemExit, match="not-a-report.json: not a `dsunet-hf evaluate` report"):
        cli_main(["push", str(folder), "me/scored", "--evaluation", str(tmp_path / "not-a-report.json")])


def test_predict_on_a_folder_of_awkward_files(artifact, tmp_path, capsys):
    """Zero-byte, truncated, mislabelled files fail alone; CMYK, 16-bit and EXIF-rotated files work."""
    folder = tmp_path / "awkward"
    folder.mkdir()
    (folder / "empty.jpg").write_bytes(b"")
    Image.new("RGB", (64, 48), (120, 30, 200)).save(tmp_path / "full.jpg", quality=95)
    (folder / "truncated.jpg").write_bytes((tmp_path / "full.jpg").read_bytes()[:200])
    (folder / "notes.png").write_text("this is text, not a PNG")
    Image.new("CMYK", (40, 30), (10, 200, 30, 0)).save(folder / "cmyk.jpg")
    Image.fromarray(np.arange(50 * 20, dtype=np.uint16).reshape(20, 50) * 60).save(folder / "deep.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90°: a 30x20 file is shown 20x30
    Image.new("RGB", (30, 20), (200, 200, 10)).save(folder / "rotated.jpg", exif=exif)

    _, model_dir = artifact
    code = cli_main(["predict", "--model", str(model_dir), str(folder), "--output-dir", str(tmp_path / "out")])
    assert code == 1
    report = json.loads((tmp_path / "out" / "prediction_report.json").read_text())
    assert sorted(Path(p).name for p in report["failed"]) == ["empty.jpg", "notes.png", "truncated.jpg"]
    err = capsys.readouterr().err
    assert all(name in err for name in ("empty.jpg", "notes.png", "truncated.jpg"))
    sizes = {p.name: Image.open(p).size for p in (tmp_path / "out" / "masks").iterdir()}
    assert sizes == {"cmyk.png": (40, 30), "deep.png": (50, 20), "rotated.png": (20, 30)}


def test_worker_decoding_gives_the_same_masks(artifact, images, tmp_path):
    model, _ = artifact
    processor = SegmentationImageProcessor(size=TINY_SIZE)
    inline = predict_files(model, processor, [images], tmp_path / "inline", batch_size=2, progress=False)
    workers = predict_files(model, processor, [images], tmp_path / "workers", batch_size=2, progress=False,
                            num_workers=2)
    assert sorted(workers.written) == sorted(inline.written) and workers.failed == inline.failed
    for name in ("a.png", "sub/b.png"):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "inline" / "masks" / name)),
                              np.asarray(Image.open(tmp_path / "workers" / "masks" / name)))


def test_two_processes_split_the_files_and_write_each_output_once(artifact, tmp_path):
    import os
    import subprocess
    import sys

    _, folder = artifact
    from helpers import write_photos_and_a_bad_file

    images = tmp_path / "many"
    write_photos_and_a_bad_file(images, 7)
    videos = []
    if importlib.util.find_spec("av"):  # videos are split between the processes too, whole
        from test_video import square_frame, write_video

        videos = [write_video(images / f"clip{i}.mp4", [square_frame(j) for j in range(3 + i)]) for i in range(2)]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "dsunet_hf.cli",
               "predict", "--model", str(folder), str(images), "--output-dir", str(tmp_path / "out"),
               "--batch-size", "2", "--num-workers", "0"]
    # The second process looks at the output folder 3 s late, after the first has written its masks: the
    # processes must still split one listing (a late scan once saw "already present" files and split another).
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(
        "import os, pathlib, time\n"
        "if os.environ.get('RANK') == '1':\n"
        "    exists, late = pathlib.Path.exists, []\n"
        "    def slow_exists(self, *args, **kwargs):\n"
        "        if 'masks' in self.parts and not late:\n"
        "            late.append(time.sleep(3))\n"
        "        return exists(self, *args, **kwargs)\n"
        "    pathlib.Path.exists = slow_exists\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(hooks), *filter(None, [os.environ.get("PYTHONPATH")])])}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    report = json.loads((tmp_path / "out" / "prediction_report.json").read_text())
    # One process group (not two processes that each predict everything, as accelerate leaves torchrun on a
    # CPU-only machine unless told cpu=True): only the main process prints the summary.
    assert result.stdout.count(" written, ") == 1, result.stdout + result.stderr[-3000:]
    assert f"{7 + len(videos)} written, 0 already present, 1 failed" in result.stdout
    expected = [str(images / f"{i}.png") for i in range(7)] + [str(video) for video in videos]
    assert sorted(report["written"]) == sorted(expected), result.stderr[-2000:]
    assert list(report["failed"]) == [str(images / "bad.png")]
    assert len(list((tmp_path / "out" / "masks").iterdir())) == 7 + len(videos)


@pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                    reason="needs torch.distributed with gloo (two CPU processes)")
def test_a_failing_process_stops_every_process_promptly_and_the_report_is_kept(artifact, tmp_path):
    import subprocess
    import sys

    _, folder = artifact
    images = tmp_path / "many"
    images.mkdir()
    for i in range(24):  # process 0 takes 00..11, process 1 12..23
        Image.new("RGB", (40, 30), (i * 20, 100, 50)).save(images / f"{i:02d}.png")
    out = tmp_path / "out"
    (out / "overlays" / "12.png").mkdir(parents=True)  # process 1's first write fails (a folder in the way)
    # Process 0 writes slowly (0.5 s a picture): it must stop at its next batch, not finish its share (nor wait in
    # the final gather, up to the group's 30-minute timeout, when the failed process lives on).
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(
        "import os, time\n"
        "if os.environ.get('RANK') == '0':\n"
        "    from PIL import Image\n"
        "    save = Image.Image.save\n"
        "    def slow_save(self, *args, **kwargs):\n"
        "        time.sleep(0.5)\n"
        "        return save(self, *args, **kwargs)\n"
        "    Image.Image.save = slow_save\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(hooks), *filter(None, [os.environ.get("PYTHONPATH")])])}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
               "dsunet_hf.cli", "predict", "--model", str(folder), str(images), "--output-dir", str(out), "--overlay",
               "--batch-size", "1", "--num-workers", "0"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    # Every process ends with one line naming the failure (not gloo's "Connection closed by peer" on the others).
    assert "predict: process 1 of 2 failed (IsADirectoryError: [Errno 21] Is a directory:" in result.stderr, result.stderr[-3000:]
    assert "Connection closed" not in result.stderr and "Timed out" not in result.stderr
    # The report of what was finished is written, and process 0 stopped early.
    report = json.loads((out / "prediction_report.json").read_text())
    assert 0 < len(report["written"]) < 12, report
    for path in report["written"]:
        assert (out / "masks" / Path(path).name).exists() and (out / "overlays" / Path(path).name).exists()


def test_autocast_and_channels_last_stay_close_to_fp32(artifact, images, tmp_path):
    model, _ = artifact
    processor = SegmentationImageProcessor(size=TINY_SIZE)
    predict_files(model, processor, [images], tmp_path / "fp32", progress=False)
    predict_files(model.to(memory_format=torch.channels_last), processor, [images], tmp_path / "fast",
                  progress=False, autocast_dtype=torch.bfloat16, channels_last=True)
    reference = np.asarray(Image.open(tmp_path / "fp32" / "masks" / "a.png"), dtype=np.float32)
    fast = np.asarray(Image.open(tmp_path / "fast" / "masks" / "a.png"), dtype=np.float32)
    assert np.abs(reference - fast).max() <= 8  # bf16: about 2 of 255 grey levels


def test_cli_takes_the_short_precision_names_of_the_readme(artifact, images, tmp_path, monkeypatch):
    import dsunet_hf.predict as predict_module

    seen = {}

    def spy(model, processor, *args, **kwargs):
        seen.update(dtype=next(model.parameters()).dtype, autocast=kwargs["autocast_dtype"],
                    channels_last=kwargs["channels_last"])
        return original(model, processor, *args, **kwargs)

    original = predict_module.predict_files
    monkeypatch.setattr(predict_module, "predict_files", spy)
    _, folder = artifact
    assert cli_main(["predict", "--model", str(folder), str(images / "*.jpg"), "--output-dir", str(tmp_path / "out"),
                     "--dtype", "fp32", "--autocast", "bf16", "--channels-last"]) == 0
    assert seen == {"dtype": torch.float32, "autocast": torch.bfloat16, "channels_last": True}


def test_native_size_keeps_aspect_caps_the_longest_side_and_rounds_to_32():
    from dsunet_hf.predict import native_size

    assert native_size(63, 95) == (64, 96)
    assert native_size(1000, 3000, max_side=2048) == (672, 2048)  # x0.683, then multiples of 32
    assert native_size(10, 10) == (32, 32)
    assert native_size(2304, 1700, max_side=4096) == (2304, 1696)


def test_native_resolution_runs_each_image_at_its_size_in_batches_of_equal_size(artifact, tmp_path):
    from dsunet_hf.predict import native_size

    model, _ = artifact
    processor = SegmentationImageProcessor(size=TINY_SIZE)
    folder = tmp_path / "sizes"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):  # -> 64 x 96 inputs
        Image.fromarray(rng.integers(0, 255, (63, 95 + i, 3), dtype=np.uint8)).save(folder / f"wide{i}.png")
    for i in range(2):  # -> 96 x 64
        Image.fromarray(rng.integers(0, 255, (97 + i, 64, 3), dtype=np.uint8)).save(folder / f"tall{i}.png")
    rotated = Image.fromarray(rng.integers(0, 255, (64, 97, 3), dtype=np.uint8))  # stored wide, shown tall
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated.save(folder / "rotated.jpg", exif=exif)
    (folder / "bad.png").write_bytes(b"not an image")
    shapes = []
    hook = model.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs["pixel_values"].shape)), with_kwargs=True)
    try:
        report = predict_files(model, processor, [folder], tmp_path / "out", batch_size=2, resolution="native",
                               progress=False)
    finally:
        hook.remove()
    assert sorted(shapes) == sorted([(2, 3, 64, 96), (1, 3, 64, 96), (2, 3, 96, 64), (1, 3, 96, 64)])
    assert len(report.written) == 6 and list(report.failed) == [str(folder / "bad.png")]
    for path in sorted(folder.iterdir()):  # each mask equals that image alone at its own size
        if path.name == "bad.png":
            continue
        from dsunet_hf.image_io import load_image

        image = load_image(path)
        inputs = processor([image], size=native_size(image.height, image.width))
        with torch.no_grad():
            logits = model(pixel_values=inputs["pixel_values"]).logits
        expected = processor.post_process_probabilities(logits, target_sizes=inputs["original_sizes"])[0]
        written = np.asarray(Image.open(tmp_path / "out" / "masks" / f"{path.stem}.png"), dtype=np.float32)
        assert written.shape == (image.height, image.width)
        assert np.abs(written - (expected.numpy() * 255).round()).max() <= 1


def test_native_resolution_is_refused_for_fixed_size_models(artifact, images, tmp_path):
    model, _ = artifact
    two_views = SegmentationImageProcessor(size=TINY_SIZE, extra_sizes={"dino_pixel_values": 56})
    with pytest.raises(ValueError, match="native"):
        predict_files(model, two_views, [images], tmp_path / "out", resolution="native", progress=False)


def test_a_failing_batch_keeps_the_outputs_of_the_batches_before_it(artifact, tmp_path, monkeypatch):
    """Outputs are written in background threads while the next batch runs; an error in a later batch must
    still leave every earlier output on disk, whole, and an error while writing must not pass silently."""
    model, _ = artifact
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(6):
        Image.new("RGB", (30 + i, 20), (i * 40, 90, 20)).save(folder / f"{i}.png")
    forward, calls = model.forward, []

    def fails_on_the_third_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("device lost")
        return forward(*args, **kwargs)

    model.forward = fails_on_the_third_batch
    processor = SegmentationImageProcessor(size=TINY_SIZE)
    with pytest.raises(RuntimeError, match="device lost"):
        predict_files(model, processor, [folder], tmp_path / "out", batch_size=2, overlay=True, progress=False)
    masks = sorted(p.name for p in (tmp_path / "out" / "masks").iterdir())
    assert masks == ["0.png", "1.png", "2.png", "3.png"]  # the first two batches, each image whole
    assert all(Image.open(tmp_path / "out" / "masks" / name).size[1] == 20 for name in masks)

    model.forward = forward
    report = predict_files(model, processor, [folder], tmp_path / "out", batch_size=2, progress=False)
    assert sorted(Path(p).name for p in report.written) == ["4.png", "5.png"] and len(report.skipped_existing) == 4

    # An error while writing (here: a full disk) is raised, not swallowed by the writer threads.
    def disk_full(image, path, **options):
        raise OSError(f"{path}: No space left on device")

    monkeypatch.setattr("dsunet_hf.predict.save_image_atomic", disk_full)
    with pytest.raises(OSError, match="No space left on device"):
        predict_files(model, processor, [folder], tmp_path / "full", batch_size=2, progress=False)


def test_batches_are_stacked_in_the_loader_so_they_can_be_pinned():
    from dsunet_hf.predict import _collate

    processor = SegmentationImageProcessor(size=TINY_SIZE)
    good = [{"path": Path(f"{i}.png"), "name": Path(f"{i}.png"), "image": None,
             "inputs": processor([Image.new("RGB", (20 + i, 10))])} for i in range(2)]
    bad = {"path": Path("x.png"), "name": Path("x.png"), "error": "cannot read"}
    batch = _collate([good[0], bad, good[1]])
    assert batch["pixel_values"]["pixel_values"].shape == (2, 3, TINY_SIZE, TINY_SIZE)
    assert batch["original_sizes"] == [(10, 20), (10, 21)] and len(batch["items"]) == 3
    assert _collate([bad]) == {"items": [bad], "pixel_values": {}, "original_sizes": []}


def test_writing_in_the_callers_thread_gives_the_same_outputs(artifact, images, tmp_path):
    model, _ = artifact
    processor = SegmentationImageProcessor(size=TINY_SIZE)
    for workers in (0, 2):
        report = predict_files(model, processor, [images], tmp_path / f"w{workers}", overlay=True, cutout=True,
                               progress=False, write_workers=workers)
        assert len(report.written) == 2 and len(report.failed) == 1
    for name in ("masks/a.png", "cutouts/sub/b.png", "overlays/a.png"):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "w0" / name)), np.asarray(Image.open(tmp_path / "w2" / name)))
    with pytest.raises(ValueError, match="write_workers must be 0"):
        predict_files(model, processor, [images], tmp_path / "bad", progress=False, write_workers=-1)


@pytest.mark.parametrize("command", [["predict", "--model", "{model}", "{photos}"], ["app", "--model", "{model}"],
                                     ["evaluate", "--model", "{model}", "--data", "d"],
                                     ["export", "onnx", "--model", "{model}", "out"]])
def test_a_missing_model_folder_is_one_clear_error(tmp_path, command, monkeypatch):
    from dsunet_hf.cli import main

    missing = str(tmp_path / "runs" / "cod" / "model")
    photos = tmp_path / "photos"  # something to predict (checked before the model loads)
    photos.mkdir()
    Image.new("RGB", (8, 8)).save(photos / "a.png")
    with pytest.raises(SystemExit, match=f"^{command[0]}: {missing}: no such model folder or file$"):
        main([arg.format(model=missing, photos=photos) for arg in command])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SystemExit, match=f"^{command[0]}: cannot load {tmp_path}: "):  # a folder, but no model in it
        main([arg.format(model=tmp_path, photos=photos) for arg in command])


@pytest.mark.parametrize("options, message", [
    (["--output-dir", "{file}"], r"--output-dir \S+afile is a file, not a folder"),
    (["--output-dir", "{file}/sub"], r"--output-dir \S+afile/sub: \S+afile is a file, so no folder can be made under"),
    (["--device", "bogus"], r"--device 'bogus' is not a device name"),
    (["--device", "cuda:99"], r"--device cuda:99: "),  # no CUDA here, or fewer devices
    (["--device", "meta"], r"--device meta: not a device to run a model on"),
    (["--crop-refine", "--crop-margin", "nan"], r"--crop-margin: crop_margin must be >= 0 and finite .*got nan"),
    (["--crop-margin", "inf"], r"--crop-margin: crop_margin must be >= 0 and finite .*got inf"),
    (["--resolution", "native", "--max-side", "0"], r"--max-side must be >= 32 .*got 0"),
    (["--max-side", "-64"], r"--max-side must be >= 32 .*got -64"),
    (["--batch-size", "0"], r"--batch-size must be >= 1, got 0"),
    (["--reference", "r.jpg", "--prompt", "box:1,1,5,5", "--output-dir", "{file}"], r"--output-dir \S+ is a file"),
])
def test_cli_predict_refuses_bad_options_before_loading_the_model(tmp_path, options, message):
    """Each a one-line error naming the option (no model is loaded: the folder holds none)."""
    (tmp_path / "afile").write_text("a file where a folder should be")
    (tmp_path / "in.png").write_bytes(b"")
    options = [option.format(file=tmp_path / "afile") for option in options]
    with pytest.raises(SystemExit, match="^predict: " + message):
        cli_main(["predict", "--model", str(tmp_path), str(tmp_path / "in.png"), *options])


@pytest.mark.parametrize("command", [
    ["predict", "--model", "{model}", "{images}", "--output-dir", "{file}"],
    ["export", "onnx", "--model", "{model}", "{file}/onnx"],
    ["space", "{file}", "--model", "org/name"],
    ["demo", "--output-dir", "{file}"],
    ["evaluate", "--predictions", "{images}", "--ground-truth", "{images}", "--output-dir", "{file}"],
])
def test_an_output_folder_that_is_a_file_is_one_clear_error(tmp_path, images, command):
    (tmp_path / "afile").write_text("a file where a folder should be")
    args = [arg.format(model=tmp_path, images=images, file=tmp_path / "afile") for arg in command]
    with pytest.raises(SystemExit, match=rf"^{command[0]}: \S+ {tmp_path / 'afile'}(/onnx: \S+)? is a file"):
        cli_main(args)


@pytest.mark.parametrize("command", [["predict", "--model", "{model}", "{images}", "--output-dir", "{out}"],
                                     ["export", "onnx", "--model", "{model}", "{out}"], ["app", "--model", "{model}"],
                                     ["evaluate", "--model", "{model}", "--data", "{images}"]])
def test_a_truncated_weights_file_is_one_clear_error(artifact, images, tmp_path, command):
    """safetensors' own error (no OSError) named the problem but not the file, as a traceback."""
    _, folder = artifact
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # an interrupted download
    with pytest.raises(SystemExit, match=rf"^{command[0]}: cannot load {folder}: {weights}: not a readable "
                                         rf"safetensors file, truncated or damaged"):
        cli_main([arg.format(model=folder, images=images, out=tmp_path / "out") for arg in command])


@pytest.mark.parametrize("content, message", [
    ("{bad", r"preprocessor_config.json: not a readable image processor config"),
    (json.dumps({"image_processor_type": "SegmentationImageProcessor", "size": {"height": -5, "width": 0}}),
     r"preprocessor_config.json: size \{'height': -5, 'width': 0\}: height and width must be positive"),
])
def test_a_damaged_processor_config_is_an_error_not_the_default(artifact, content, message):
    """Only a missing preprocessor_config.json falls back to the model's default processor (a damaged one may have
    meant another size or normalisation)."""
    from dsunet_hf.predict import load_model_and_processor

    _, folder = artifact
    (folder / "preprocessor_config.json").write_text(content)
    with pytest.raises(ValueError, match=f"^{folder}/" + message):
        load_model_and_processor(str(folder))
    (folder / "preprocessor_config.json").unlink()
    _, processor = load_model_and_processor(str(folder))
    assert processor.size == {"height": TINY_SIZE, "width": TINY_SIZE}


@pytest.mark.parametrize("options, message", [
    ({"batch_size": 0}, r"batch_size \(--batch-size\) must be an integer >= 1, got 0"),
    ({"crop_refine": True, "crop_margin": float("nan")}, r"crop_margin must be >= 0 and finite .*got nan"),
    ({"resolution": "native", "max_side": 0}, r"max_side \(--max-side\) must be an integer >= 32"),
    ({"output_dir": "afile"}, r"--output-dir \S+afile is a file, not a folder"),
])
def test_predict_files_refuses_bad_options_before_anything_runs(artifact, images, tmp_path, options, message):
    model, _ = artifact
    (tmp_path / "afile").write_text("")
    output_dir = tmp_path / options.pop("output_dir", "out")
    with pytest.raises(ValueError, match=message):
        predict_files(model, SegmentationImageProcessor(size=TINY_SIZE), [images], output_dir, progress=False,
                      **options)
    assert not (tmp_path / "out").exists()


def test_a_killed_runs_temporary_files_are_removed_but_not_a_running_ones(artifact, images, tmp_path):
    """A killed run (SIGKILL, out of memory) leaves atomic_path's ``.<name>.<random>.tmp`` files; the next run
    removes those (an hour old), not a concurrent run's in-flight file nor other hidden files."""
    model, _ = artifact
    out = tmp_path / "out"
    (out / "masks" / "sub").mkdir(parents=True)
    (out / "overlays").mkdir()
    old = [out / "masks" / ".a.png.k2j4x_9q.tmp", out / "masks" / "sub" / ".b.png.abcdefgh.tmp",
           out / "overlays" / ".c.mp4.0a1b2c3d.tmp", out / ".prediction_report.json.zz_zz_zz.tmp"]
    kept = [out / "masks" / ".fresh.png.abcdefgh.tmp", out / "masks" / ".notes.tmp", out / "masks" / "keep.tmp"]
    for path in old + kept:
        path.write_bytes(b"partial")
    two_hours_ago = time.time() - 7200
    for path in old + kept[1:]:
        os.utime(path, (two_hours_ago, two_hours_ago))
    predict_files(model, SegmentationImageProcessor(size=TINY_SIZE), [images / "a.jpg"], out, progress=False)
    assert [path.exists() for path in old] == [False] * len(old)
    assert [path.exists() for path in kept] == [True] * len(kept)
    assert (out / "masks" / "a.png").is_file()


def test_an_image_and_a_video_of_one_name_do_not_collide_and_collisions_name_their_inputs(tmp_path):
    for name in ("shots/good.png", "clips/good.mp4", "more/good.jpg", "more/clip.mov", "clips/clip.mp4"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    pairs = collect_images([tmp_path / "shots" / "good.png", tmp_path / "clips" / "good.mp4"])
    assert [str(name) for _, name in pairs] == ["good", "good"]  # masks/good.png and masks/good.mp4
    with pytest.raises(ValueError, match=rf"same output name\(s\): clip \(videos\) from {tmp_path}/more/clip.mov, "
                                         rf"{tmp_path}/clips/clip.mp4; good from {tmp_path}/shots/good.png, "
                                         rf"{tmp_path}/more/good.jpg; "):
        collect_images([tmp_path / "shots" / "good.png", tmp_path / "more" / "clip.mov", tmp_path / "clips",
                        tmp_path / "more" / "good.jpg"])


def test_one_pass_resizes_the_input_to_the_model_whatever_the_output_size_and_max_side_takes_whole_floats():
    """The input's own size decides the resize to the model's (an output size equal to the model's skipped it); a
    whole-number float --max-side (YAML, a Gradio number) is a size, a fractional one is refused."""
    from dsunet_hf.modeling_utils import probabilities_from_one_pass
    from dsunet_hf.predict import native_size

    seen = []
    logits_of = lambda pixels: seen.append(tuple(pixels.shape[-2:])) or torch.zeros(1, 3, *pixels.shape[-2:])  # noqa: E731
    probabilities = probabilities_from_one_pass(logits_of, torch.randn(1, 3, 50, 70), (32, 32), output_size=(32, 32))
    assert seen == [(32, 32)] and tuple(probabilities.shape) == (1, 3, 32, 32)
    assert native_size(3000, 2000, max_side=1024.0) == native_size(3000, 2000, max_side=1024) == (1024, 672)
    with pytest.raises(ValueError, match="max_side"):
        native_size(3000, 2000, max_side=1000.5)


def red_model_and_processor():
    from helpers import RedChannelModel

    return RedChannelModel(), SegmentationImageProcessor(size=64)


def test_a_file_name_that_is_not_utf8_is_predicted_and_reported(tmp_path):
    """A Latin-1 name (surrogate-escaped by Python) stopped the whole batch: the temporary file's name was encoded
    as UTF-8."""
    from dsunet_hf.files import atomic_path

    folder = tmp_path / "photos"
    folder.mkdir()
    name = os.fsdecode(b"caf\xe9")
    try:
        Image.new("RGB", (20, 16), (200, 20, 20)).save(folder / f"{name}.png")
    except (OSError, UnicodeError):
        pytest.skip("this file system takes UTF-8 names only")
    Image.new("RGB", (20, 16)).save(folder / "ok.png")
    report = predict_files(*red_model_and_processor(), [folder], tmp_path / "out", overlay=True, progress=False)
    assert sorted(report.written) == sorted([str(folder / f"{name}.png"), str(folder / "ok.png")])
    assert Image.open(tmp_path / "out" / "overlays" / f"{name}.png").size == (20, 16)
    saved = json.loads((tmp_path / "out" / "prediction_report.json").read_text(encoding="utf-8"))
    assert str(folder / f"{name}.png") in saved["written"]
    # A long name is cut for the temporary file at 64 bytes, its bytes kept.
    long_name = os.fsdecode(b"\xe9" * 100 + b".png")
    with atomic_path(tmp_path / long_name) as temporary:
        assert os.fsencode(temporary.name).startswith(b"." + b"\xe9" * 64 + b".")
        temporary.write_bytes(b"x")
    assert (tmp_path / long_name).read_bytes() == b"x"


def test_a_disk_error_while_writing_names_the_output_file(tmp_path, monkeypatch):
    import errno

    Image.new("RGB", (20, 16)).save(tmp_path / "a.png")

    def full_disk(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full_disk)
    with pytest.raises(OSError, match=r"No space left on device: '.*out/masks/a\.png'") as raised:
        predict_files(*red_model_and_processor(), [tmp_path / "a.png"], tmp_path / "out", progress=False,
                      write_workers=0)
    assert raised.value.errno == errno.ENOSPC
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]  # no temporary file left


def test_the_background_writer_runs_nothing_after_a_failed_write():
    """A video's next frame was muxed into the container whose write had just failed (PyAV segfaults there)."""
    import threading

    from dsunet_hf.predict import BackgroundWriter

    ran, release = [], threading.Event()

    def write(index):
        release.wait(5)  # the later tasks are queued before the first one fails
        ran.append(index)
        if index == 0:
            raise OSError(28, "No space left on device")
        return index

    writer = BackgroundWriter(1, max_pending=10, on_done=lambda _: None)
    for index in range(5):
        writer.submit(write, index)
    release.set()
    with pytest.raises(OSError, match="No space left"):
        writer.close()
    assert ran == [0]


def test_a_disk_filling_up_under_two_writer_threads_ends_the_cli_with_one_line_naming_the_file(
        artifact, tmp_path, monkeypatch):
    """With the default write_workers=2 the first failed write raised out of submit, then close() (in predict_files'
    finally) took a task queued after it, whose RuntimeError replaced the OSError: a traceback past the CLI."""
    import errno
    import inspect
    import re
    import threading

    import dsunet_hf.predict as predict_module

    assert inspect.signature(predict_files).parameters["write_workers"].default == 2  # what the CLI runs
    photos = tmp_path / "photos"
    photos.mkdir()
    for index in range(40):
        Image.new("RGB", (20, 16), (200, 30, 30)).save(photos / f"{index:03d}.png")
    monkeypatch.setattr(predict_module, "load_model_and_processor", lambda *a, **k: red_model_and_processor())  # fast
    real_save, saved, lock, room = Image.Image.save, [], threading.Lock(), 5

    def filling_disk(self, fp, *args, **kwargs):
        if str(fp).endswith(".tmp"):  # an output's temporary file (the inputs were saved above)
            with lock:
                if len(saved) >= room:
                    raise OSError(errno.ENOSPC, "No space left on device", str(fp))
                saved.append(fp)
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", filling_disk)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as raised:
        cli_main(["predict", "--model", str(artifact[1]), str(photos), "--output-dir", str(out), "--batch-size", "4"])
    message = str(raised.value.code)
    assert "\n" not in message
    assert re.fullmatch(r"predict: \[Errno 28\] No space left on device: '.*/out/masks/0\d\d\.png'", message), message
    # The outputs written before the disk filled stay, whole; no temporary file is left.
    finished = sorted((out / "masks").iterdir())
    assert len(finished) == room and all(p.suffix == ".png" for p in finished)
    for path in finished:
        assert Image.open(path).size == (20, 16)


def test_the_background_writer_raises_its_first_failure_once_and_waits_for_the_writes_under_way():
    import threading
    import time

    from dsunet_hf.predict import BackgroundWriter

    done, started, submitted = [], threading.Barrier(2), threading.Event()

    def write(index):
        if index < 2:
            started.wait(5)  # both threads are writing when the first one fails
            if index == 0:
                submitted.wait(5)  # every task is queued before the first one fails
                raise OSError(28, "No space left on device", "first.png")
            deadline = time.monotonic() + 5
            while writer.failure is None and time.monotonic() < deadline:
                time.sleep(0.001)
            raise OSError(28, "No space left on device", "second.png")  # fails beside it: not the one reported
        return index

    writer = BackgroundWriter(2, max_pending=100, on_done=done.append)
    for index in range(6):
        writer.submit(write, index)
    submitted.set()
    with pytest.raises(OSError) as raised:
        writer.close()
    assert raised.value.filename == "first.png"
    assert done == []  # the tasks queued after the failure did not run
    writer.close()  # the failure was raised once: a close in a finally block lets it through
    with pytest.raises(OSError) as again:
        writer.submit(write, 9)  # nothing runs after it; the same error
    assert again.value is raised.value
    # Raised from submit (the queue full), close() in the caller's finally does not replace it.
    writer = BackgroundWriter(2, max_pending=1, on_done=done.append)

    def failing(index):
        raise OSError(28, "No space left on device", f"{index}.png")

    with pytest.raises(OSError) as raised:
        try:
            for index in range(10):
                writer.submit(failing if index == 0 else write, index + 10)
        finally:
            writer.close()
    assert raised.value.filename == "10.png"


def test_colour_outputs_keep_the_photos_icc_profile_and_masks_have_none(tmp_path):
    from PIL import ImageCms

    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()  # stands in for Display P3
    Image.new("RGB", (20, 16), (200, 30, 30)).save(tmp_path / "p3.jpg", icc_profile=profile)
    Image.new("CMYK", (20, 16)).save(tmp_path / "cmyk.jpg", icc_profile=b"\0" * 16 + b"CMYK" + b"\0" * 108)
    predict_files(*red_model_and_processor(), [tmp_path / "p3.jpg", tmp_path / "cmyk.jpg"], tmp_path / "out",
                  overlay=True, cutout=True, background="white", progress=False)
    for kind in ("overlays", "cutouts", "composites"):
        assert Image.open(tmp_path / "out" / kind / "p3.png").info.get("icc_profile") == profile, kind
        assert "icc_profile" not in Image.open(tmp_path / "out" / kind / "cmyk.png").info  # not an RGB profile
    assert "icc_profile" not in Image.open(tmp_path / "out" / "masks" / "p3.png").info


def test_predict_reads_every_image_type_training_reads_and_warns_of_frames_left_out(tmp_path, caplog):
    from dsunet_hf.data import IMAGE_EXTENSIONS
    from dsunet_hf.predict import IMAGE_SUFFIXES

    assert IMAGE_SUFFIXES == set(IMAGE_EXTENSIONS)
    folder = tmp_path / "photos"
    folder.mkdir()
    red = Image.new("RGB", (20, 16), (200, 30, 30))
    red.save(folder / "a.gif")
    red.save(folder / "b.jfif", format="JPEG")
    red.save(folder / "c.ppm")
    red.convert("L").save(folder / "d.pgm")
    red.save(folder / "pages.tif", save_all=True, append_images=[Image.new("RGB", (20, 16))] * 2)
    with caplog.at_level("WARNING", logger="dsunet_hf.predict"):
        report = predict_files(*red_model_and_processor(), [folder], tmp_path / "out", progress=False)
    assert len(report.written) == 5 and not report.failed
    assert sorted(p.name for p in (tmp_path / "out" / "masks").iterdir()) == [
        "a.png", "b.png", "c.png", "d.png", "pages.png"]
    assert f"{folder / 'pages.tif'}: has 3 frames" in caplog.text and "a.gif" not in caplog.text


def test_a_phone_jpeg_with_an_mpf_image_is_not_warned_of_and_each_input_is_opened_once(tmp_path, caplog,
                                                                                       monkeypatch):
    """Pillow opens a JPEG carrying an MPF second image (an Ultra HDR gain map, a camera's preview) as MPO with
    n_frames == 2: every such photo was warned of "frames left out". And the frames were counted by opening every
    input a second time."""
    from dsunet_hf.predict import warn_if_several_frames

    folder = tmp_path / "photos"
    folder.mkdir()
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 80, 3), np.uint8))
    photo.save(folder / "PXL_0001.jpg", format="MPO", save_all=True, append_images=[photo.resize((40, 30))])
    assert Image.open(folder / "PXL_0001.jpg").format == "MPO" and Image.open(folder / "PXL_0001.jpg").n_frames == 2
    red = Image.new("RGB", (20, 16), (200, 30, 30))
    red.save(folder / "anim.gif", save_all=True, append_images=[Image.new("RGB", (20, 16))])
    red.save(folder / "apng.png", save_all=True, append_images=[Image.new("RGB", (20, 16))])  # APNG
    opened, real_open = [], Image.open

    def counting_open(fp, *args, **kwargs):
        opened.append(Path(fp).name if isinstance(fp, (str, os.PathLike)) else None)
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", counting_open)
    with caplog.at_level("WARNING", logger="dsunet_hf.predict"):
        report = predict_files(*red_model_and_processor(), [folder], tmp_path / "out", progress=False)
        warn_if_several_frames(folder / "PXL_0001.jpg")  # counted from the path: the same rule
    assert len(report.written) == 3 and not report.failed
    assert "PXL_0001" not in caplog.text
    assert f"{folder / 'anim.gif'}: has 2 frames" in caplog.text and f"{folder / 'apng.png'}: has 2 frames" in caplog.text
    assert sorted(name for name in opened if name in ("PXL_0001.jpg", "anim.gif", "apng.png")) == [
        "PXL_0001.jpg", "PXL_0001.jpg", "anim.gif", "apng.png"]  # one each, + the PXL_0001 check after the run
    monkeypatch.undo()
    from dsunet_hf.image_io import load_image_file

    assert load_image_file(folder / "PXL_0001.jpg")[1] == 1 and load_image_file(folder / "anim.gif")[1] == 2
    assert load_image_file(folder / "anim.gif")[0].getpixel((0, 0)) == (200, 30, 30)  # the first frame, whole


def test_two_files_of_one_name_in_one_folder_get_advice_that_applies(tmp_path):
    for name in ("p0.jpg", "p0.png", "p1.jpg"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    with pytest.raises(ValueError) as raised:
        collect_images([tmp_path])
    message = str(raised.value)
    assert f"p0 from {tmp_path / 'p0.jpg'}, {tmp_path / 'p0.png'}" in message
    assert "rename one of them" in message and "separate --output-dir" in message
    assert "pass their folder" not in message  # they came from their folder already


def test_output_names_that_differ_only_in_letter_case_clash(tmp_path):
    """A.jpg and a.jpg (or Shots/x.jpg and shots/x.jpg) wrote masks/A.png and masks/a.png: one file on macOS and
    Windows, so one prediction silently replaced the other."""
    for name in ("one/A.jpg", "one/a.jpg", "two/Shots/x.jpg", "two/shots/x.jpg", "three/B.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    for folder, names, files in [("one", "A / a", ("A.jpg", "a.jpg")),
                                 ("two", "Shots/x / shots/x", ("Shots/x.jpg", "shots/x.jpg"))]:
        listed = ", ".join(re.escape(str(tmp_path / folder / file)) for file in files)
        with pytest.raises(ValueError, match=rf"^several inputs would write the same output name\(s\): "
                                             rf"{re.escape(names)} from {listed}; names that differ only in letter "
                                             rf"case are one file on macOS and Windows: rename one of them"):
            collect_images([tmp_path / folder])
    # One file named in two letter cases (a.jpg typed for B.jpg where the file system ignores case; here a hard
    # link) is predicted once.
    os.link(tmp_path / "three" / "B.jpg", tmp_path / "three" / "b.jpg")
    assert [str(name) for _, name in collect_images([tmp_path / "three"])] == ["B"]
    for name in ("four/Straße.jpg", "four/Strasse.jpg"):  # two files on every file system (casefold made them one)
        (tmp_path / name).parent.mkdir(exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    assert len(collect_images([tmp_path / "four"])) == 2


def test_a_rotated_tiff_runs_at_its_displayed_size(tmp_path):
    """Pillow's TIFF plugin reports a rotated TIFF's displayed size at open: stored_size turned it a second time,
    and --resolution native fed a squashed image."""
    from dsunet_hf.image_io import load_image
    from dsunet_hf.predict import stored_size

    stored = Image.new("RGB", (32, 64))  # stored portrait; Orientation 6 shows it 64 wide x 32 high
    stored.save(tmp_path / "photo.tif", tiffinfo={0x0112: 6})
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "twin.jpg", exif=exif)
    for name in ("photo.tif", "twin.jpg"):
        assert load_image(tmp_path / name).size == (64, 32)
        assert stored_size(tmp_path / name) == (32, 64), name
    model, processor = red_model_and_processor()
    predict_files(model, processor, [tmp_path / "photo.tif"], tmp_path / "out", resolution="native", progress=False)
    assert model.input_sizes == {(32, 64)}
    assert Image.open(tmp_path / "out" / "masks" / "photo.png").size == (64, 32)

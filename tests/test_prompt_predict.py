"""``dsunet-hf predict --reference ... --prompt ...``: visual-prompt batch prediction, overlays, bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_visual_prompt_head import tiny_model
from test_visual_prompt_matcher import ONE_HOT, RED, SIZE, P, colour_image, region, tiny_config

from dsunet_hf.cli import main
from dsunet_hf.models.visual_prompt import VisualPromptMatcher
from dsunet_hf.prompt_predict import PromptTracker, frame_order, predict_with_prompts, render_prompt

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (see conftest)


@pytest.fixture
def head_folder(tmp_path):
    tiny_model().save_pretrained(tmp_path / "head", include_backbone=True)
    return tmp_path / "head"


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "targets"
    folder.mkdir()
    for name, size in (("a", (50, 70)), ("b", (64, 64)), ("c", (33, 90))):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(folder / f"{name}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    reference = tmp_path / "reference.jpg"
    Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(reference)
    return reference, folder


def test_cli_writes_masks_overlays_and_scores_and_reports_broken_targets(tmp_path, head_folder, images):
    reference, folder = images
    out = tmp_path / "out"
    args = ["predict", "--model", str(head_folder), "--reference", str(reference), "--prompt", "box:5,5,40,30",
            "--reference", str(reference), "--prompt", "point:60,40", str(folder), "--output-dir", str(out),
            "--overlay", "--save-scores", "--batch-size", "2"]
    assert main(args) == 1  # one target could not be read
    report = json.loads((out / "prediction_report.json").read_text())
    assert sorted(report["failed"]) == [str(folder / "broken.png")] and "broken.png" in report["failed"][str(folder / "broken.png")]
    assert len(report["written"]) == 3 and report["prompts"] == ["box:5,5,40,30", "point:60,40"]
    for name, size in (("a", (50, 70)), ("b", (64, 64)), ("c", (33, 90))):
        mask = np.asarray(Image.open(out / "masks" / f"{name}.png"))
        assert mask.shape == size and set(np.unique(mask)) <= {0, 255}
        assert np.load(out / "scores" / f"{name}.npy").shape == size
        assert Image.open(out / "overlays" / f"{name}.png").height == 256
    before = (out / "masks" / "a.png").stat().st_mtime_ns
    assert main(args) == 1  # the re-run keeps finished outputs
    assert (out / "masks" / "a.png").stat().st_mtime_ns == before
    assert len(json.loads((out / "prediction_report.json").read_text())["skipped_existing"]) == 3


def test_cli_errors_name_the_problem(tmp_path, head_folder, images, capsys):
    reference, folder = images
    base = ["predict", "--model", str(head_folder), str(folder), "--output-dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit, match="one --prompt per --reference"):
        main([*base, "--reference", str(reference)])
    with pytest.raises(SystemExit, match="box:500,5,600,30.*entirely outside"):
        main([*base, "--reference", str(reference), "--prompt", "box:500,5,600,30"])
    with pytest.raises(SystemExit, match="malformed prompt"):
        main([*base, "--reference", str(reference), "--prompt", "circle:3"])
    with pytest.raises(SystemExit, match="visual-prompt model: pass --reference"):
        main(base)
    with pytest.raises(SystemExit, match="--prompt needs --reference"):
        main([*base, "--prompt", "box:1,1,5,5"])
    with pytest.raises(SystemExit, match="--cutout, --background: not for visual-prompt models"):
        main([*base, "--reference", str(reference), "--prompt", "box:5,5,40,30", "--cutout", "--background", "white"])
    with pytest.raises(SystemExit, match="--crop-refine: not for visual-prompt models"):
        main([*base, "--reference", str(reference), "--prompt", "box:5,5,40,30", "--crop-refine"])
    with pytest.raises(SystemExit, match="cannot read image .*missing.jpg"):
        main([*base, "--reference", str(tmp_path / "missing.jpg"), "--prompt", "box:1,1,5,5"])
    with pytest.raises(SystemExit, match="--save-scores, --track, --track-memory: for visual-prompt models with"):
        main([*base, "--save-scores", "--track", "--track-memory", "4"])
    with pytest.raises(SystemExit, match="--track-memory sets the memory of --track; add --track"):
        main([*base, "--reference", str(reference), "--prompt", "box:5,5,40,30", "--track-memory", "4"])
    with pytest.raises(SystemExit, match="tracking memory .* at least one frame, got 0"):
        main([*base, "--reference", str(reference), "--prompt", "box:5,5,40,30", "--track", "--track-memory", "0"])


def test_cli_bad_prompts_and_references_are_said_before_the_model_loads(tmp_path, images, monkeypatch):
    """A typo in a prompt was said only after the model had loaded (for a Hub model, after its download)."""
    from test_visual_prompt_head import tiny_config as tiny_head_config

    import dsunet_hf.prompt_predict as prompt_predict

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(prompt_predict, "load_visual_prompt_model", no_load)
    reference, folder = images
    tiny_head_config().save_pretrained(tmp_path / "head")  # the config alone: what is read before loading
    base = ["predict", "--model", str(tmp_path / "head"), str(folder), "--output-dir", str(tmp_path / "out")]
    for extra, message in [(["--prompt", "box:1,2"], "malformed box prompt 'box:1,2'"),
                           (["--prompt", "point:100,5"], r"point:100,5 on reference .*reference\.jpg: point prompt"),
                           (["--prompt", f"mask:{folder}"], "is a folder, not a mask image file"),
                           (["--prompt", "box:1,1,9,9", "--track", "--track-memory", "0"],
                            "tracking memory .* at least one frame, got 0"),
                           (["--prompt", "box:1,1,9,9", "--mask-threshold", "0.5"],
                            "--mask-threshold applies to mask prompts"),
                           (["--prompt", str(reference), "--mask-threshold", "128"],
                            r"mask threshold \(--mask-threshold\) must be above 0 and at most 1 .*got 128.0$"),
                           (["--prompt", str(reference), "--mask-threshold", "nan"],
                            r"mask threshold \(--mask-threshold\) must be a finite number, got nan$")]:
        with pytest.raises(SystemExit, match=f"^predict: .*{message}"):
            main([*base, "--reference", str(reference), *extra])
    with pytest.raises(SystemExit, match=r"^predict: cannot read image .*missing\.jpg"):
        main([*base, "--reference", str(tmp_path / "missing.jpg"), "--prompt", "box:1,1,9,9"])
    with pytest.raises(SystemExit, match=r"^predict: --mask-threshold: for visual-prompt models with --reference"):
        main([*base, "--mask-threshold", "0.5"])
    assert not (tmp_path / "out").exists()


def test_predicted_mask_is_the_prompted_colour_with_known_features(tmp_path):
    reference = colour_image({RED: [(2, 1, 5, 4)], (0, 255, 0): [(5, 5, 8, 8)]})
    target = colour_image({RED: [(0, 4, 2, 8), (6, 0, 8, 2)], (0, 255, 0): [(3, 3, 5, 5)]})
    Image.fromarray(target).save(tmp_path / "target.png")
    matcher = VisualPromptMatcher(tiny_config()).eval()
    report = predict_with_prompts(matcher, [reference], [f"box:{P},{2 * P},{4 * P},{5 * P}"], [tmp_path / "target.png"],
                                  tmp_path / "out", overlay=True, progress=False, feature_fn=ONE_HOT)
    assert report.written == [str(tmp_path / "target.png")]
    mask = np.asarray(Image.open(tmp_path / "out" / "masks" / "target.png")) > 0
    expected = region([(0, 4, 2, 8), (6, 0, 8, 2)])
    assert (mask & expected).sum() / (mask | expected).sum() > 0.9
    panel = Image.open(tmp_path / "out" / "overlays" / "target.png")
    assert panel.size == (256 + 6 + 256, 256)  # reference with its prompt, then the target


def test_a_matcher_not_refining_is_thresholded_on_its_matching_scores(tmp_path):
    """Regression: with ``refine=False`` the default threshold was still 0.0 (SAM 2's logits) when the config names
    a SAM 2 repo: on plain cosines (no background prototype, default 0.5) masks far larger than predict_masks'."""
    reference = colour_image({RED: [(2, 1, 5, 4)], (0, 255, 0): [(5, 5, 8, 8)]})
    Image.fromarray(colour_image({RED: [(0, 4, 2, 8)], (0, 255, 0): [(3, 3, 5, 5)]})).save(tmp_path / "target.png")
    matcher = VisualPromptMatcher(tiny_config(sam_repo_id="facebook/sam2.1-hiera-large", background_prototype=False))
    prompt, options = f"box:{P},{2 * P},{4 * P},{5 * P}", {"refine": False, "feature_fn": ONE_HOT}
    predict_with_prompts(matcher.eval(), [reference], [prompt], [tmp_path / "target.png"], tmp_path / "out",
                         progress=False, **options)
    mask = np.asarray(Image.open(tmp_path / "out" / "masks" / "target.png")) > 0
    assert np.array_equal(mask, matcher.predict_masks([reference], [prompt], [tmp_path / "target.png"], **options)[0])
    assert json.loads((tmp_path / "out" / "prediction_report.json").read_text())["threshold"] == 0.5
    assert matcher.prompt_threshold() == 0.0 and matcher.prompt_threshold(refine=False) == 0.5


def test_render_prompt_tints_and_outlines_only_around_the_prompt():
    image = Image.new("RGB", (SIZE, SIZE), (0, 0, 0))
    mask = np.zeros((SIZE, SIZE), bool)
    mask[20:40, 30:60] = True
    drawn = np.asarray(render_prompt(image, mask)).astype(int)
    assert drawn[30, 45].sum() > 0 and drawn[80, 80].sum() == 0 and drawn[20, 45].tolist() == [40, 220, 90]
    torch.manual_seed(0)


@pytest.fixture
def matcher_folder(tmp_path, offline_hub):
    """A config-only matcher artifact whose DINOv2 weights come from a tiny model in the offline Hub cache."""
    from test_visual_prompt_matcher import TINY_DINO
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(1)
    Dinov2Model(Dinov2Config(**TINY_DINO, image_size=518, patch_size=14)).save_pretrained(tmp_path / "dino")
    offline_hub.add("test-org/tiny-dinov2", tmp_path / "dino")
    VisualPromptMatcher.from_pretrained_backbones(tiny_config()).save_pretrained(tmp_path / "matcher")
    assert sorted(p.name for p in (tmp_path / "matcher").iterdir()) == ["README.md", "config.json", "preprocessor_config.json"]
    return tmp_path / "matcher"


def test_cli_with_a_config_only_matcher(tmp_path, matcher_folder, images):
    reference, folder = images
    (folder / "sub").mkdir()
    Image.new("RGB", (41, 23), (10, 200, 30)).save(folder / "sub" / "a.jpg")  # same stem, other folder
    out = tmp_path / "out"
    args = ["predict", "--model", str(matcher_folder), "--reference", str(reference), "--prompt", "scribble:5,5;40,30",
            str(folder), "--output-dir", str(out), "--overlay", "--batch-size", "3"]
    assert main(args) == 1
    report = json.loads((out / "prediction_report.json").read_text())
    assert list(report["failed"]) == [str(folder / "broken.png")]
    assert sorted(report["written"]) == sorted(str(folder / n) for n in ("a.png", "b.png", "c.png", "sub/a.jpg"))
    assert report["references"] == [str(reference)] and report["prompts"] == ["scribble:5,5;40,30"]
    matcher = VisualPromptMatcher.from_pretrained(matcher_folder)
    assert report["threshold"] == matcher.prompt_threshold()
    for name, source, size in (("a", "a.png", (50, 70)), ("b", "b.png", (64, 64)), ("c", "c.png", (33, 90)),
                               ("sub/a", "sub/a.jpg", (23, 41))):
        mask = np.asarray(Image.open(out / "masks" / f"{name}.png"))
        assert mask.shape == size and set(np.unique(mask)) <= {0, 255}
        # The same mask as the model's own predict_masks on that target.
        expected = matcher.predict_masks([reference], ["scribble:5,5;40,30"], [folder / source])[0]
        assert np.array_equal(mask > 0, expected)
        panel = Image.open(out / "overlays" / f"{name}.png")
        assert panel.height == 256 and panel.width == round(80 * 256 / 60) + 6 + round(size[1] * 256 / size[0])
    assert not (out / "scores").exists()  # only with --save-scores
    with pytest.raises(SystemExit, match="--mode applies to the trained visual-prompt head"):
        main([*args, "--mode", "generic"])
    with pytest.raises(SystemExit, match="visual-prompt model: pass --reference"):
        main(["predict", "--model", str(matcher_folder), str(folder), "--output-dir", str(out)])


def test_reference_needs_a_visual_prompt_model(tmp_path, images):
    from conftest import tiny_sam2_unet_config

    from dsunet_hf import Sam2UNetForImageSegmentation

    reference, folder = images
    Sam2UNetForImageSegmentation(tiny_sam2_unet_config()).save_pretrained(tmp_path / "sam2unet",
                                                                          include_backbone=True)
    with pytest.raises(SystemExit, match="need a visual-prompt model"):
        main(["predict", "--model", str(tmp_path / "sam2unet"), "--reference", str(reference), "--prompt",
              "box:1,1,9,9", str(folder), "--output-dir", str(tmp_path / "out")])


class _FixedScores:
    """Only what predict_with_prompts may rely on: the references encoded once, a config (no
    ``prompt_threshold``)."""

    def __init__(self, config):
        self.config, self.calls, self.encoded = config, [], 0

    def reference_memory(self, images, masks):
        self.encoded += len(images)
        return ["reference"] * len(images)

    def segment_with_memory(self, memory, targets, batch_size=4):
        assert memory == ["reference"]
        self.calls.append(len(targets))
        return [np.linspace(-1, 1, t.height * t.width, dtype=np.float32).reshape(t.height, t.width) for t in targets]


@pytest.mark.parametrize("config, threshold", [(type("C", (), {"score_threshold": 0.5})(), 0.5),
                                               (object(), 0.0)])
def test_default_threshold_falls_back_to_the_config_then_zero(tmp_path, images, config, threshold):
    reference, folder = images
    model = _FixedScores(config)
    report = predict_with_prompts(model, [reference], ["point:10,10"], [folder], tmp_path / "out", batch_size=2,
                                  save_scores=True, progress=False)
    assert model.calls == [2, 1]  # broken.png is dropped from the first chunk of (a, b, broken), then c
    assert model.encoded == 1  # the reference once, not with every batch
    assert len(report.written) == 3 and list(report.failed) == [str(folder / "broken.png")]
    for name in ("a", "b", "c"):
        score = np.load(tmp_path / "out" / "scores" / f"{name}.npy")
        mask = np.asarray(Image.open(tmp_path / "out" / "masks" / f"{name}.png")) > 0
        assert score.dtype == np.float32 and np.array_equal(mask, score > threshold)
    assert json.loads((tmp_path / "out" / "prediction_report.json").read_text())["threshold"] == threshold


@pytest.mark.parametrize("threshold", [np.float32(0.25), torch.tensor(0.25)])
def test_a_numpy_or_0d_tensor_threshold_is_a_number(tmp_path, images, threshold):
    """A threshold computed from scores (a NumPy scalar, a 0-d tensor) works as the float it holds."""
    reference, folder = images
    predict_with_prompts(_FixedScores(object()), [reference], ["point:10,10"], [folder / "a.png"], tmp_path / "out",
                         threshold=threshold, save_scores=True, progress=False)
    score = np.load(tmp_path / "out" / "scores" / "a.npy")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "masks" / "a.png")) > 0, score > 0.25)
    assert json.loads((tmp_path / "out" / "prediction_report.json").read_text())["threshold"] == 0.25


def test_a_numpy_integer_batch_size_is_taken_by_the_head_and_the_batch_run(tmp_path, images):
    """A batch size computed with NumPy (np.int64) works as the int it holds (check_positive_int refuses it: the head
    converts it first)."""
    rng = np.random.default_rng(0)
    targets = [rng.integers(0, 255, (40, 52, 3), dtype=np.uint8) for _ in range(3)]
    head = tiny_model()
    masks = head.predict_masks([targets[0]], ["box:2,2,20,20"], targets, batch_size=np.int64(2), mode="generic")
    expected = head.predict_masks([targets[0]], ["box:2,2,20,20"], targets, batch_size=2, mode="generic")
    assert len(masks) == 3 and all(np.array_equal(m, e) for m, e in zip(masks, expected))
    reference, folder = images
    model = _FixedScores(object())
    report = predict_with_prompts(model, [reference], ["point:10,10"], [folder], tmp_path / "out",
                                  batch_size=np.int64(2), progress=False)
    assert model.calls == [2, 1] and len(report.written) == 3


class _RecordingMasks(_FixedScores):
    def reference_memory(self, images, masks):
        self.masks = masks
        return super().reference_memory(images, masks)


def test_cli_reads_each_reference_and_mask_prompt_once_and_takes_a_mask_threshold(tmp_path, images, monkeypatch):
    """Regression: the references and mask prompts were read (decoded) before the model loaded and again to predict.
    --mask-threshold: a JPEG mask's compression noise is no prompt (MaskPrompt's threshold had no option)."""
    from test_visual_prompt_head import tiny_config as tiny_head_config

    import dsunet_hf.image_io as image_io
    import dsunet_hf.prompt_predict as prompt_predict

    reference, folder = images
    mask = np.zeros((60, 80), np.uint8)
    mask[10:30, 20:50] = 255
    Image.fromarray(mask).save(tmp_path / "mask.jpg", quality=50)
    jpeg = np.asarray(Image.open(tmp_path / "mask.jpg"))
    assert (jpeg > 0).sum() > (jpeg >= 128).sum()  # noise around the square
    model = _RecordingMasks(object())
    monkeypatch.setattr(prompt_predict, "load_visual_prompt_model", lambda *args, **kwargs: model)
    read, decode = [], image_io._decode
    monkeypatch.setattr(image_io, "_decode", lambda path, *args, **kwargs: (read.append(Path(path).name),
                                                                           decode(path, *args, **kwargs))[1])
    tiny_head_config().save_pretrained(tmp_path / "head")
    args = ["predict", "--model", str(tmp_path / "head"), "--reference", str(reference), "--prompt",
            str(tmp_path / "mask.jpg"), str(folder / "a.png"), "--output-dir", str(tmp_path / "out"), "--overwrite"]
    assert main(args) == 0
    assert sorted(read) == ["a.png", "mask.jpg", "reference.jpg"] and np.array_equal(model.masks[0], jpeg > 0)
    assert json.loads((tmp_path / "out" / "prediction_report.json").read_text())["mask_threshold"] is None
    assert main([*args, "--mask-threshold", "0.5"]) == 0
    assert np.array_equal(model.masks[0], jpeg >= 128)  # load_mask's 0-1 scale: >= 0.5 of 255
    # Was: the report named the prompt "mask.jpg" only, not the threshold it was read with.
    assert json.loads((tmp_path / "out" / "prediction_report.json").read_text())["mask_threshold"] == 0.5


def test_one_reference_prompt_and_target_may_be_given_alone(tmp_path, images, monkeypatch):
    """Regression: a string was iterated letter by letter: the target "/data/a.png" searched "/" (the whole disk),
    the reference "ref.jpg" was 7 references."""
    reference, folder = images
    monkeypatch.chdir(folder)  # on the old code, "a.png" gave the targets "a", ".", "p", ...: kept in tmp_path
    model = _FixedScores(object())
    report = predict_with_prompts(model, reference, "point:10,10", "a.png", tmp_path / "out", progress=False)
    assert report.written == ["a.png"] and model.encoded == 1
    mask = np.zeros((60, 80), bool)
    mask[5:9, 5:9] = True
    report = predict_with_prompts(model, Image.open(reference), mask, Path("b.png"), tmp_path / "out", progress=False)
    assert report.written == ["b.png"] and model.encoded == 2
    image = np.asarray(Image.open(reference))  # stacks of references and masks are several, as lists are
    report = predict_with_prompts(model, np.stack([image]), mask[None], ["c.png"], tmp_path / "out", progress=False)
    assert report.written == ["c.png"] and model.encoded == 3


def test_bad_prompt_or_reference_fails_before_any_target(tmp_path, images):
    reference, folder = images
    model = _FixedScores(object())
    with pytest.raises(ValueError, match="malformed box prompt 'box:1,2'"):
        predict_with_prompts(model, [reference], ["box:1,2"], [folder], tmp_path / "out", progress=False)
    with pytest.raises(ValueError, match="need one prompt per reference"):
        predict_with_prompts(model, [reference, reference], ["box:1,1,9,9"], [folder], tmp_path / "out")
    with pytest.raises(ValueError, match=r"got 1 reference\(s\) and 60 prompt\(s\); a 3-D mask array is a stack .* in a list$"):
        predict_with_prompts(model, [reference], np.zeros((60, 80, 4)), [folder], tmp_path / "out")  # RGBA, alone
    with pytest.raises(ValueError, match="^give the references and their prompts, or a ReferencePrompts with prompts"):
        predict_with_prompts(model, [reference], None, [folder], tmp_path / "out")  # was load_mask's TypeError
    with pytest.raises(Exception, match="broken.png"):
        predict_with_prompts(model, [folder / "broken.png"], ["box:1,1,9,9"], [folder], tmp_path / "out")
    # A reference given as an array is named by its index (its repr would be the pixels), a path by the path.
    with pytest.raises(ValueError, match=r"^prompt box:5,5,9,9 on references\[1\] \(ndarray\): box .* entirely outside"):
        predict_with_prompts(model, [reference, np.zeros((4, 4, 3), np.uint8)], ["box:1,1,9,9", "box:5,5,9,9"],
                             [folder], tmp_path / "out")
    with pytest.raises(ValueError, match=r"^prompt box:500,1,600,9 on reference .*reference\.jpg: box .* entirely outside"):
        predict_with_prompts(model, [reference], ["box:500,1,600,9"], [folder], tmp_path / "out")
    assert model.calls == [] and not (tmp_path / "out").exists()


def test_the_prompted_concept_is_found_in_every_frame_of_a_video(tmp_path):
    pytest.importorskip("av", reason="video targets need PyAV (the [video] extra)")
    from test_video import decoded, write_video

    reference = colour_image({RED: [(2, 1, 5, 4)], (0, 255, 0): [(5, 5, 8, 8)]})
    # A red block that moves one patch right per frame, a green one that stays: lossless frames (FFV1).
    boxes = [[(1, i, 3, i + 2)] for i in range(5)]
    frames = [colour_image({RED: red, (0, 255, 0): [(5, 5, 7, 7)]}) for red in boxes]
    clip = write_video(tmp_path / "clip.mkv", frames, codec="ffv1", pix_fmt="bgr0", rate=10)
    matcher = VisualPromptMatcher(tiny_config()).eval()
    report = predict_with_prompts(matcher, [reference], [f"box:{P},{2 * P},{4 * P},{5 * P}"], [clip], tmp_path / "out",
                                  overlay=True, progress=False, batch_size=2, feature_fn=ONE_HOT)
    assert report.written == [str(clip)] and not report.failed
    masks, _ = decoded(tmp_path / "out" / "masks" / "clip.mp4")
    assert len(masks) == 5
    for mask, red in zip(masks, boxes):  # each frame: the red block where it is in that frame, not the green one
        found, expected = mask > 127, region(red)
        assert (found & expected).sum() / (found | expected).sum() > 0.9
    overlays, _ = decoded(tmp_path / "out" / "overlays" / "clip.mp4", "rgb24")
    assert len(overlays) == 5 and overlays[0].shape == (SIZE, SIZE, 3)
    with pytest.raises(ValueError, match="clip.mkv: --save-scores .* not for videos"):
        predict_with_prompts(matcher, [reference], ["box:14,28,56,70"], [clip], tmp_path / "again", save_scores=True,
                             progress=False, feature_fn=ONE_HOT)


class _RecordingTracker:
    """Finds the object on frames whose first pixel is non-zero; records the memory each frame is segmented with."""

    def __init__(self):
        self.memories, self.coverages, self.encoded = [], [], 0

    def encode_frames(self, images):
        self.encoded += len(images)
        return [f"frame {int(np.asarray(image)[0, 0, 0])}" for image in images]

    def reference_memory(self, images, masks, min_coverage=0.0, encodings=None):
        self.coverages.append(min_coverage)
        return list(encodings)  # the frame's own encoding: no second pass

    def segment_with_memory(self, memory, targets, batch_size=4, encodings=None):
        self.memories.append(list(memory))
        return [np.full((4, 4), float(encoding != "frame 0")) for encoding in encodings]


def test_tracker_keeps_the_references_and_the_latest_frames_that_showed_the_object():
    model = _RecordingTracker()
    frames = [Image.new("RGB", (4, 4), (value, 0, 0)) for value in (1, 2, 0, 3, 4)]  # frame 0: nothing found
    tracker = PromptTracker(model, ["ref a", "ref b"], threshold=0.5, memory_size=2)
    masks = tracker(frames[:2]) + tracker(frames[2:])  # state carries across batches
    assert [m.max() for m in masks] == [1, 1, 0, 1, 1]
    assert model.memories == [["ref a", "ref b"], ["ref a", "ref b", "frame 1"], ["ref a", "ref b", "frame 1", "frame 2"],
                              ["ref a", "ref b", "frame 1", "frame 2"], ["ref a", "ref b", "frame 2", "frame 3"]]
    assert model.coverages == [0.5] * 4  # found masks join with their core patches
    assert model.encoded == 5  # one encoding per frame, shared by segmenting and joining the memory
    # Regression: 2.5 and "8" were bare TypeErrors ("an integer is required"), True a memory of one frame.
    for size in (0, 2.5, "8", True):
        with pytest.raises(ValueError, match=rf"^the tracking memory \(--track-memory\) must hold a whole number of "
                                             rf"frames, at least one frame, got {size!r}$"):
            PromptTracker(model, [], 0.5, memory_size=size)
    assert PromptTracker(model, [], 0.5, memory_size=np.int64(3)).recent.maxlen == 3
    with pytest.raises(ValueError, match="tracking needs a model with encode_frames"):
        PromptTracker(_FixedScores(object()), [], 0.5)


def test_tracking_follows_an_object_whose_colour_drifts_where_the_first_example_loses_it(tmp_path):
    """24 frames: a 2 x 2-patch block moves right while its colour turns from red to blue, on grey. Features are each
    patch's mean colour, so what is found follows from the pixels: prompted on frame 0 alone, the block is lost once
    it is more blue than red; tracked, every frame's block joins the prompt and it is found to the end."""
    pytest.importorskip("av", reason="video targets need PyAV (the [video] extra)")
    from test_video import decoded, write_video
    from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    def mean_colour(pixel_values):
        mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)
        return torch.nn.functional.avg_pool2d(pixel_values * std + mean, P)

    count, frames, boxes = 24, [], []
    for t in range(count):
        blue, column = t / (count - 1), t * 6 // (count - 1)
        frame = np.full((SIZE, SIZE, 3), 128, np.uint8)
        frame[3 * P : 5 * P, column * P : (column + 2) * P] = (round(255 * (1 - blue)), 0, round(255 * blue))
        frames.append(frame)
        boxes.append([(3, column, 5, column + 2)])
    clip = write_video(tmp_path / "clip.mkv", frames, codec="ffv1", pix_fmt="bgr0", rate=10)
    matcher = VisualPromptMatcher(tiny_config()).eval()
    ious = {}
    for track in (False, True):
        out = tmp_path / f"track-{track}"
        report = predict_with_prompts(matcher, [frames[0]], [region(boxes[0])], [clip], out, progress=False,
                                      batch_size=5, feature_fn=mean_colour, track=track)
        assert report.written == [str(clip)]
        masks, _ = decoded(out / "masks" / "clip.mp4")
        ious[track] = [((m > 127) & region(b)).sum() / ((m > 127) | region(b)).sum() for m, b in zip(masks, boxes)]
        assert json.loads((out / "prediction_report.json").read_text())["track_memory"] == (8 if track else None)
    assert max(ious[False][10:]) == 0 and ious[False][0] > 0.9  # lost from frame 10 on
    assert min(ious[True]) > 0.55 and min(ious[True][-6:]) > 0.85  # found in every frame (measured: 0.59, 0.86)

    # The same frames as a folder of images (DAVIS's JPEGImages/<sequence>/ layout): a sequence too, with --track.
    folder = tmp_path / "frames" / "drift"
    folder.mkdir(parents=True)
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{t:05d}.png")
    (folder / "00007.png").write_bytes(b"not a png")  # reported; the sequence goes on without it
    out = tmp_path / "frames-out"

    def run(**kwargs):
        return predict_with_prompts(matcher, [frames[0]], [region(boxes[0])], [tmp_path / "frames"], out,
                                    progress=False, feature_fn=mean_colour, track=True, **kwargs)

    report = run()
    assert list(report.failed) == [str(folder / "00007.png")] and len(report.written) == count - 1
    found = {t: np.asarray(Image.open(out / "masks" / "drift" / f"{t:05d}.png")) > 0 for t in range(count) if t != 7}
    frame_ious = {t: (found[t] & region(boxes[t])).sum() / (found[t] | region(boxes[t])).sum() for t in found}
    assert min(frame_ious.values()) > 0.55 and min(frame_ious[t] for t in range(18, count)) > 0.85
    # Resuming: a sequence with a frame left runs again from its first frame (its memory needs them all).
    (out / "masks" / "drift" / "00020.png").unlink()
    again = run()
    assert len(again.written) == count - 1 and again.skipped_existing == []
    assert np.array_equal(np.asarray(Image.open(out / "masks" / "drift" / "00020.png")) > 0, found[20])
    # All done but the unreadable frame (it never gets a mask): nothing runs again, the frame is reported again.
    done = run()
    assert done.written == [] and list(done.failed) == [str(folder / "00007.png")]
    assert len(done.skipped_existing) == count - 1


def test_frame_folders_are_tracked_in_numeric_order(tmp_path, monkeypatch):
    """Frames named 1.png .. 10.png (no zero padding) are a sequence in numeric order, not 1, 10, 2, ..."""
    import dsunet_hf.prompt_predict as prompt_predict

    assert [p.name for p in sorted(map(Path, ["f10.png", "f2.png", "f1.png"]), key=frame_order)] == [
        "f1.png", "f2.png", "f10.png"]
    folder = tmp_path / "frames" / "clip"
    folder.mkdir(parents=True)
    for t in range(1, 11):
        Image.new("RGB", (SIZE, SIZE), (200, 20, 20)).save(folder / f"{t}.png")
    read = []
    load = prompt_predict.load_image
    monkeypatch.setattr(prompt_predict, "load_image",
                        lambda source: read.append(getattr(source, "name", "reference")) or load(source))
    matcher = VisualPromptMatcher(tiny_config()).eval()
    reference = Image.new("RGB", (SIZE, SIZE), (200, 20, 20))
    predict_with_prompts(matcher, [reference], ["box:0,0,20,20"], [tmp_path / "frames"], tmp_path / "out",
                         progress=False, track=True)
    assert read == ["reference"] + [f"{t}.png" for t in range(1, 11)]


@pytest.mark.parametrize("options, message", [
    ({"threshold": float("nan")}, r"threshold \(--threshold\) must be a finite number, got nan \(on the model's "
                                  r"score scale, default 0.0\)"),
    ({"threshold": float("inf")}, r"threshold \(--threshold\) must be a finite number, got inf"),
    # Regression: text was float()'s bare "could not convert string to float", True a threshold of 1.0.
    ({"threshold": "abc"}, r"^threshold \(--threshold\) must be a finite number, got 'abc'"),
    ({"threshold": True}, r"^threshold \(--threshold\) must be a finite number, got True"),
    ({"threshold": "0.5"}, r"^threshold \(--threshold\) must be a finite number, got '0.5'"),  # text, as integers
    ({"threshold": np.float32("nan")}, r"^threshold \(--threshold\) must be a finite number, got np.float32\(nan\)"),
    ({"batch_size": 0}, r"batch_size \(--batch-size\) must be an integer >= 1, got 0"),
    ({"output_dir": "afile"}, r"--output-dir \S+afile is a file, not a folder"),
])
def test_bad_options_fail_before_any_target(tmp_path, images, options, message):
    """A NaN threshold wrote empty masks for everything; batch size 0 stopped on range() after the references."""
    reference, folder = images
    model = _FixedScores(object())
    (tmp_path / "afile").write_text("")
    output_dir = tmp_path / options.pop("output_dir", "out")
    with pytest.raises(ValueError, match=message):
        predict_with_prompts(model, [reference], ["box:1,1,9,9"], [folder], output_dir, progress=False, **options)
    assert model.calls == [] and model.encoded == 0 and not (tmp_path / "out").exists()


def test_cli_a_truncated_visual_prompt_model_is_one_clear_error(tmp_path, head_folder, images):
    reference, folder = images
    weights = head_folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(SystemExit, match=rf"^predict: cannot load {head_folder}: {weights}: not a readable "
                                         rf"safetensors file"):
        main(["predict", "--model", str(head_folder), "--reference", str(reference), "--prompt", "box:1,1,9,9",
              str(folder), "--output-dir", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match=r"^predict: --threshold must be a finite number"):
        main(["predict", "--model", str(head_folder), "--reference", str(reference), "--prompt", "box:1,1,9,9",
              str(folder), "--output-dir", str(tmp_path / "out"), "--threshold", "nan"])

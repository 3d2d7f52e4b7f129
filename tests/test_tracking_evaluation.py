"""DAVIS-2017 semi-supervised scores for visual-prompt tracking (dsunet_hf.tracking_evaluation, `evaluate` on a
DAVIS-layout folder)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from test_visual_prompt_head import tiny_model
from test_visual_prompt_matcher import ONE_HOT, RED, SIZE, colour_image, region, tiny_config

from dsunet_hf.cli import main
from dsunet_hf.models.visual_prompt import VisualPromptMatcher
from dsunet_hf.tracking_evaluation import boundary_f_measure, davis_sequences, evaluate_tracking, jaccard

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (see conftest)

GREEN = (0, 255, 0)


def square(top: int, left: int, side: int, size: int = 100) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    mask[top : top + side, left : left + side] = True
    return mask


def test_region_and_contour_scores_follow_the_davis_definitions():
    truth = square(20, 20, 40)
    assert jaccard(truth, truth) == 1.0 and boundary_f_measure(truth, truth) == 1.0
    assert jaccard(np.zeros_like(truth), np.zeros_like(truth)) == 1.0  # nothing to find, nothing found
    shifted = square(21, 20, 40)  # one pixel down: 39 of 41 rows shared
    assert jaccard(truth, shifted) == pytest.approx(39 / 41)
    # The tolerance is ceil(0.008 * diagonal) = ceil(1.13) = 2 px here: a 1-px shift keeps every contour pixel
    # matched, a 3-px one matches only the two sides that run along the shift.
    assert boundary_f_measure(truth, shifted) == 1.0
    far = boundary_f_measure(truth, square(23, 20, 40))
    assert 0.4 < far < 0.6
    assert boundary_f_measure(truth, np.zeros_like(truth)) == 0.0 and boundary_f_measure(np.zeros_like(truth), truth) == 0.0
    void = np.zeros_like(truth)
    void[:, 50:] = True  # the right half does not count: a prediction that differs only there scores 1
    different = truth.copy()
    different[20:60, 50:] = False
    assert jaccard(truth, different, void) == 1.0 and jaccard(truth, different) == pytest.approx(0.75)


def write_davis(root, frames: list[np.ndarray], labels: list[np.ndarray], name: str = "blocks", level: str = "480p",
                annotated: set[int] | None = None) -> None:
    """A DAVIS-layout folder: JPEGImages/480p/<name>/00000.jpg..., Annotations/480p/<name>/00000.png (palette);
    ``annotated``: only these frames' annotations (first appearances, as YouTube-VOS validation)."""
    images, annotations = root / "JPEGImages" / level / name, root / "Annotations" / level / name
    images.mkdir(parents=True)
    annotations.mkdir(parents=True)
    palette = [0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (253 * 3)
    for index, (frame, label) in enumerate(zip(frames, labels)):
        Image.fromarray(frame).save(images / f"{index:05d}.png")  # lossless: the colour features stay exact
        if annotated is not None and index not in annotated:
            continue
        annotation = Image.fromarray(label, mode="P")
        annotation.putpalette(palette)
        annotation.save(annotations / f"{index:05d}.png")


def moving_blocks(count: int = 6) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """A red block (object 1) moving right by a patch per frame and a green one (object 2) standing still; a void
    (255) strip along the top row of patches."""
    frames, labels = [], []
    for t in range(count):
        red, green = [(1, t, 3, t + 2)], [(5, 5, 7, 7)]
        frames.append(colour_image({RED: red, GREEN: green}))
        label = np.zeros((SIZE, SIZE), np.uint8)
        label[region(red)], label[region(green)], label[:4, :] = 1, 2, 255
        labels.append(label)
    return frames, labels


def test_every_first_frame_object_is_tracked_and_scored(tmp_path):
    frames, labels = moving_blocks()
    write_davis(tmp_path / "davis", frames, labels)
    [sequence] = davis_sequences(tmp_path / "davis")
    assert sequence.name == "blocks" and len(sequence.frames) == len(sequence.annotations) == 6 and sequence.scored
    matcher = VisualPromptMatcher(tiny_config()).eval()
    scores, per_object = evaluate_tracking(matcher, tmp_path / "davis", progress=False, feature_fn=ONE_HOT,
                                           save_dir=tmp_path / "results")
    assert sorted(per_object) == ["blocks_1", "blocks_2"]
    # Colour features: each object is found where it is in every frame (bilinear upsampling softens patch edges,
    # so not perfectly).
    assert 0.85 < scores["J_mean"] < 1 and scores["F_mean"] > 0.85 and scores["J_recall"] == scores["F_recall"] == 1.0
    assert scores["J&F"] == pytest.approx((scores["J_mean"] + scores["F_mean"]) / 2)
    assert min(per_object.values()) > 0.85
    # The scores are those of the masks written: J and F recomputed from the saved object-id maps, frames 1..4,
    # void (the top strip) as background, as the toolkit's semi-supervised evaluation scores it.
    predicted = [np.asarray(Image.open(tmp_path / "results" / "blocks" / f"{t:05d}.png")) for t in range(6)]
    j = {obj: [jaccard(labels[t] == obj, predicted[t] == obj) for t in range(1, 5)] for obj in (1, 2)}
    f = {obj: [boundary_f_measure(labels[t] == obj, predicted[t] == obj) for t in range(1, 5)] for obj in (1, 2)}
    mean = {key: {obj: np.mean(values[obj]) for obj in (1, 2)} for key, values in (("j", j), ("f", f))}
    assert scores["J_mean"] == pytest.approx((mean["j"][1] + mean["j"][2]) / 2)
    assert scores["F_mean"] == pytest.approx((mean["f"][1] + mean["f"][2]) / 2)
    assert per_object["blocks_2"] == pytest.approx((mean["j"][2] + mean["f"][2]) / 2)
    # Decay over 4 frames: bins [0, 1], [1], [2], [2, 3]; (first bin's mean - last's) averaged over the objects.
    expected_decay = np.mean([np.mean(j[obj][0:2]) - np.mean(j[obj][2:4]) for obj in (1, 2)])
    assert scores["J_decay"] == pytest.approx(expected_decay)


def test_the_threshold_follows_the_matchers_refine_option(tmp_path, monkeypatch):
    """A matcher configured with SAM 2 but run with refine=False gives matching scores: it was thresholded at 0 (the
    threshold of SAM 2's logits) however it was run."""
    import dsunet_hf.tracking_evaluation as tracking

    frames, labels = moving_blocks(3)
    write_davis(tmp_path / "davis", frames, labels)
    asked = []
    monkeypatch.setattr(tracking, "default_threshold", lambda model, kwargs=None: asked.append(kwargs) or 0.5)
    evaluate_tracking(VisualPromptMatcher(tiny_config()).eval(), tmp_path / "davis", progress=False,
                      feature_fn=ONE_HOT, refine=False)
    assert asked and all(kwargs.get("refine") is False for kwargs in asked)


def test_void_pixels_count_as_background_as_in_the_toolkits_semi_supervised_scores(tmp_path, monkeypatch):
    """A prediction that spills into the void strip loses J and F (the toolkit passes no void mask to its metrics
    in the semi-supervised evaluation)."""
    import dsunet_hf.tracking_evaluation as tracking

    frames, labels = moving_blocks(4)
    write_davis(tmp_path / "davis", frames, labels)
    exact = [np.where(label == 255, 0, label).astype(np.uint8) for label in labels]
    spilled = [np.where(label == 255, 1, label).astype(np.uint8) for label in labels]  # object 1 covers the void
    for predicted, expected_j1 in ((exact, 1.0), (spilled, None)):
        monkeypatch.setattr(tracking, "_track_sequence", lambda *args, predicted=predicted, **kwargs: predicted)
        scores, per_object = evaluate_tracking(None, tmp_path / "davis", progress=False)
        j1 = np.mean([jaccard(labels[t] == 1, predicted[t] == 1) for t in (1, 2)])
        assert scores["J_mean"] == pytest.approx((j1 + 1.0) / 2)
        if expected_j1 is not None:
            assert j1 == expected_j1 and per_object["blocks_1"] == 1.0
        else:
            assert j1 < 0.7 and per_object["blocks_1"] < 0.7  # ignoring void would have scored it 1


def test_davis_split_lists_choose_the_scored_sequences(tmp_path):
    frames, labels = moving_blocks(4)
    root = tmp_path / "davis"
    write_davis(root, frames, labels, name="blocks")
    write_davis(root, frames, labels, name="others")
    assert [sequence.name for sequence in davis_sequences(root)] == ["blocks", "others"]  # no ImageSets: all
    with pytest.raises(ValueError, match="no ImageSets/ folder listing the sequences of split 'val'"):
        davis_sequences(root, "val")
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("others\n")
    (root / "ImageSets" / "2017" / "train.txt").write_text("blocks\n")
    assert [sequence.name for sequence in davis_sequences(root)] == ["others"]  # the toolkit's default set: val
    assert [sequence.name for sequence in davis_sequences(root, "train")] == ["blocks"]
    with pytest.raises(ValueError, match=r"no list for split 'test-dev' .*lists found: train, val"):
        davis_sequences(root, "test-dev")
    (root / "ImageSets" / "2017" / "val.txt").unlink()  # only train.txt: the only list is taken
    assert [sequence.name for sequence in davis_sequences(root)] == ["blocks"]
    (root / "ImageSets" / "2017" / "test-dev.txt").write_text("others\n")  # two lists, no val: name one
    with pytest.raises(ValueError, match=r"no list for split 'val' .*lists found: test-dev, train; name one with"):
        davis_sequences(root)
    (root / "ImageSets" / "2017" / "train.txt").unlink()  # a test-dev download: test-dev.txt alone
    assert [sequence.name for sequence in davis_sequences(root)] == ["others"]
    (root / "ImageSets" / "2017" / "val.txt").write_text("others\nmissing\n")
    with pytest.raises(ValueError, match=r"val.txt: no annotations for the listed sequence\(s\) missing"):
        davis_sequences(root)


def test_annotations_are_read_as_the_toolkit_reads_them(tmp_path):
    from dsunet_hf.tracking_evaluation import read_annotation

    ids = np.zeros((8, 8), np.uint8)
    ids[:2], ids[2:4], ids[-1] = 1, 2, 255
    Image.fromarray(ids, mode="L").save(tmp_path / "grey.png")  # a grey index map: values are the ids
    assert np.array_equal(read_annotation(tmp_path / "grey.png"), ids)
    binary = np.where(ids == 1, 255, 0).astype(np.uint8)
    Image.fromarray(binary, mode="L").save(tmp_path / "binary.png")  # 0/255 only: one object
    assert np.array_equal(read_annotation(tmp_path / "binary.png"), (ids == 1).astype(np.uint8))
    # Within a grey index map's sequence, a frame showing only background and void keeps its void.
    void_only = np.where(ids == 255, 255, 0).astype(np.uint8)
    Image.fromarray(void_only, mode="L").save(tmp_path / "void-only.png")
    assert np.array_equal(read_annotation(tmp_path / "void-only.png", binary=False), void_only)
    assert np.array_equal(read_annotation(tmp_path / "binary.png", binary=True), (ids == 1).astype(np.uint8))
    Image.fromarray(ids == 2).save(tmp_path / "bits.png")
    assert np.array_equal(read_annotation(tmp_path / "bits.png"), (ids == 2).astype(np.uint8))
    Image.fromarray(np.stack([binary] * 3, -1)).save(tmp_path / "colour.png")
    with pytest.raises(ValueError, match=r"colour.png: a RGB annotation; DAVIS annotations are palette"):
        read_annotation(tmp_path / "colour.png")
    (tmp_path / "damaged.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ValueError, match=r"damaged.png: not a readable annotation"):
        read_annotation(tmp_path / "damaged.png")


def test_evaluate_command_on_a_davis_folder(tmp_path, capsys):
    frames, labels = moving_blocks(4)
    write_davis(tmp_path / "davis", frames, labels)
    tiny_model().save_pretrained(tmp_path / "head", include_backbone=True)
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(tmp_path / "head"), "--data", str(tmp_path / "davis"), "--output-dir",
                 str(out), "--track-memory", "2", "--no-progress", "--save-predictions", str(tmp_path / "results")]) == 0
    for index in range(4):  # the DAVIS results format: every frame, object ids, the first frame's annotation
        result = Image.open(tmp_path / "results" / "davis" / "blocks" / f"{index:05d}.png")
        assert result.mode == "P" and result.size == (SIZE, SIZE) and set(np.unique(result)) <= {0, 1, 2}
    first = np.asarray(Image.open(tmp_path / "results" / "davis" / "blocks" / "00000.png"))
    assert np.array_equal(first, np.where(labels[0] == 255, 0, labels[0]))
    report = json.loads((out / "evaluation.json").read_text())
    [(dataset, scores)] = report["results"].items()
    assert report["metric_names"] == ["J&F", "J_mean", "J_recall", "J_decay", "F_mean", "F_recall", "F_decay"]
    assert report["higher_is_better"]["J_decay"] is False
    assert all(-1 <= value <= 1 for value in scores.values())
    assert sorted(report["info"]["per_object_jf"][dataset]) == ["blocks_1", "blocks_2"]
    assert report["info"]["track_memory"] == 2 and report["protocol"].startswith("DAVIS-2017 semi-supervised")
    assert report["info"]["sequence_lists"] == {dataset: None}  # no ImageSets: every annotated sequence
    assert "J&F" in capsys.readouterr().out
    (tmp_path / "davis" / "ImageSets" / "2017").mkdir(parents=True)
    (tmp_path / "davis" / "ImageSets" / "2017" / "val.txt").write_text("blocks\n")
    assert main(["evaluate", "--model", str(tmp_path / "head"), "--data", str(tmp_path / "davis"), "--output-dir",
                 str(out), "--track-memory", "2", "--no-progress"]) == 0
    report = json.loads((out / "evaluation.json").read_text())
    assert report["info"]["sequence_lists"] == {dataset: str(tmp_path / "davis" / "ImageSets" / "2017" / "val.txt")}
    (tmp_path / "davis" / "ImageSets" / "2017" / "val.txt").unlink()
    with pytest.raises(SystemExit, match=r"ImageSets: no list for split 'val' .*lists found: none"):  # an empty ImageSets
        main(["evaluate", "--model", str(tmp_path / "head"), "--data", str(tmp_path / "davis"), "--output-dir", str(out)])
    shutil.rmtree(tmp_path / "davis" / "ImageSets")
    # Bad input: an annotation of another size than its frame, annotations without their frames.
    Image.fromarray(labels[1][:-2], mode="P").save(tmp_path / "davis" / "Annotations" / "480p" / "blocks" / "00001.png")
    with pytest.raises(SystemExit, match=r"00001.png: the annotation is 112x110, its frame 112x112"):
        main(["evaluate", "--model", str(tmp_path / "head"), "--data", str(tmp_path / "davis"), "--output-dir", str(out)])
    (tmp_path / "davis" / "JPEGImages" / "480p" / "blocks" / "00002.png").unlink()
    with pytest.raises(SystemExit, match="--save-predictions, --track-memory: tracking, for a visual-prompt model on"):
        main(["evaluate", "--model", str(tmp_path / "head"), "--data", str(tmp_path / "plain"), "--save-predictions",
              str(tmp_path / "results"), "--track-memory", "3"])
    with pytest.raises(SystemExit, match="no frame for the annotation"):
        main(["evaluate", "--model", str(tmp_path / "head"), "--data", str(tmp_path / "davis"), "--output-dir", str(out)])


def appearing_blocks() -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Frames where the red block (object 1) appears on frame 1 and the green one (object 2) on frame 3; the full
    labels, and the annotations YouTube-VOS validation gives (each object on its first frame only)."""
    frames, labels, given = [], [], []
    for t in range(6):
        red, green = [(1, t, 3, t + 2)] * (t >= 1), [(5, 5, 7, 7)] * (t >= 3)
        frames.append(colour_image({RED: red, GREEN: green}))
        label = np.zeros((SIZE, SIZE), np.uint8)
        label[region(red)], label[region(green)] = 1, 2
        labels.append(label)
        given.append(np.where(label == (1 if t == 1 else 2), label, 0).astype(np.uint8))
    return frames, labels, given


def test_objects_join_at_their_first_appearance_and_results_go_to_the_server(tmp_path, capsys):
    frames, labels, given = appearing_blocks()
    root = tmp_path / "ytvos"
    write_davis(root, frames, given, level="", annotated={1, 3})  # YouTube-VOS: no resolution level, meta.json
    (root / "meta.json").write_text(json.dumps({"videos": {"blocks": {"objects": {}}}}))
    [sequence] = davis_sequences(root)
    assert len(sequence.frames) == 6 and sorted(sequence.annotations) == [1, 3] and not sequence.scored
    matcher = VisualPromptMatcher(tiny_config()).eval()
    with pytest.raises(ValueError, match="blocks: annotated on some frames only .* --save-predictions"):
        evaluate_tracking(matcher, root, progress=False, feature_fn=ONE_HOT)
    unscored: list[str] = []
    scores, per_object = evaluate_tracking(matcher, root, progress=False, feature_fn=ONE_HOT, unscored=unscored,
                                           save_dir=tmp_path / "results")
    assert scores == per_object == {} and unscored == ["blocks"]
    # YouTube-VOS's results format: Annotations/<sequence>/<frame>.png for every frame, object ids.
    predicted = [np.asarray(Image.open(tmp_path / "results" / "Annotations" / "blocks" / f"{t:05d}.png"))
                 for t in range(6)]
    assert not predicted[0].any()  # before the first annotation: nothing
    assert np.array_equal(predicted[1], labels[1])  # a prompt frame: its annotation
    assert np.array_equal(predicted[3] == 2, labels[3] == 2)  # the new object's given mask, object 1 predicted beside it
    for t in (2, 3, 4, 5):  # object 1 followed from frame 1, object 2 from frame 3 on
        assert jaccard(labels[t] == 1, predicted[t] == 1) > 0.7, t
    for t in (4, 5):
        assert jaccard(labels[t] == 2, predicted[t] == 2) > 0.7, t
    assert not (predicted[2] == 2).any()  # not looked for before its annotation

    # The command: the results written, the sequence reported as not scored.
    tiny_model().save_pretrained(tmp_path / "head", include_backbone=True)
    out = tmp_path / "eval"
    command = ["evaluate", "--model", str(tmp_path / "head"), "--data", str(root), "--output-dir", str(out),
               "--no-progress"]
    with pytest.raises(SystemExit, match="annotated on some frames only"):
        main(command)
    assert main([*command, "--save-predictions", str(tmp_path / "served")]) == 0
    assert "1 sequence(s) annotated on their objects' first appearances only" in capsys.readouterr().out
    written = sorted(path.name for path in (tmp_path / "served" / "ytvos" / "Annotations" / "blocks").iterdir())
    assert written == [f"{t:05d}.png" for t in range(6)]
    report = json.loads((out / "evaluation.json").read_text())
    assert report["results"] == {"ytvos": {}} and report["info"]["unscored_sequences"] == {"ytvos": ["blocks"]}
    assert report["protocol"].startswith("DAVIS-2017 semi-supervised")
    # An unreadable frame, even one before the first annotation (only its size is needed there), is named.
    (root / "JPEGImages" / "blocks" / "00000.png").write_bytes(b"not a png")
    with pytest.raises(SystemExit, match=r"evaluate: cannot read image .*ytvos/JPEGImages/blocks/00000.png"):
        main([*command, "--save-predictions", str(tmp_path / "served")])

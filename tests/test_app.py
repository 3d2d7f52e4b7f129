"""The Gradio demo page (dsunet_hf.app): its handlers, the page served and called over HTTP, and Spaces."""

from __future__ import annotations

import ast
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_sam2_unet_config
from helpers import RedChannelModel
from packaging.requirements import Requirement
from PIL import Image, ImageDraw
from test_crop_refine import RED, iou, small_object_photo
from test_visual_prompt_matcher import ONE_HOT, SIZE, P, colour_image, region, tiny_config

from dsunet_hf import Sam2UNetForImageSegmentation, SegmentationImageProcessor
from dsunet_hf.app import Demo, build_app, default_requirement, write_space
from dsunet_hf.cli import main
from dsunet_hf.models.visual_prompt import VisualPromptMatcher

REFERENCE_BOXES = {RED: [(2, 1, 5, 4)], (0, 255, 0): [(5, 5, 8, 8)]}
TARGET_BOXES = {RED: [(0, 4, 2, 8), (6, 0, 8, 2)], (0, 255, 0): [(3, 3, 5, 5)]}


class OneHotMatcher(VisualPromptMatcher):
    """The training-free matcher on colour features: what it finds follows from the pixels."""

    def segment(self, *args, **kwargs):
        return super().segment(*args, **{**kwargs, "feature_fn": ONE_HOT})

    def encode_frames(self, *args, **kwargs):
        return super().encode_frames(*args, **{**kwargs, "feature_fn": ONE_HOT})

    def reference_memory(self, *args, **kwargs):
        return super().reference_memory(*args, **{**kwargs, "feature_fn": ONE_HOT})

    def segment_with_memory(self, *args, **kwargs):
        return super().segment_with_memory(*args, **{**kwargs, "feature_fn": ONE_HOT})


def red_demo() -> Demo:
    return Demo(RedChannelModel(), SegmentationImageProcessor(size=64))


def test_foreground_page_gives_mask_cutout_and_new_background(monkeypatch):
    import dsunet_hf.foreground
    from dsunet_hf.predict import Backdrop, OutputOptions, probabilities_and_outputs, render_output

    photo = Image.new("RGB", (60, 40), (40, 90, 60))
    ImageDraw.Draw(photo).rectangle((10, 5, 29, 24), fill=RED)
    estimates = []  # the foreground colours: estimated once for the cut-out and the composite (was twice)
    estimate = dsunet_hf.foreground.refine_foreground
    monkeypatch.setattr(dsunet_hf.foreground, "refine_foreground", lambda *a, **k: estimates.append(1) or estimate(*a, **k))
    mask, cutout, composite = red_demo().foreground(photo, threshold=0.5, background="#0000ff")
    assert len(estimates) == 1
    demo = red_demo()
    probability = probabilities_and_outputs(demo.model, demo.processor, [photo], size=(64, 64))[0][0].numpy()
    for kind, shown in (("cutouts", cutout), ("composites", composite)):  # as predict draws them
        drawn = render_output(kind, photo, probability, OutputOptions(backdrop=Backdrop("#0000ff")))
        assert np.array_equal(np.asarray(shown), drawn), kind
    inside = np.zeros((40, 60), bool)
    inside[5:25, 10:30] = True
    assert np.mean((np.asarray(mask) > 127) == inside) > 0.98
    assert cutout.mode == "RGBA" and np.mean((np.asarray(cutout)[..., 3] > 127) == inside) > 0.98
    composite = np.asarray(composite).astype(int)
    assert np.abs(composite[15, 20] - RED).max() < 10 and composite[35, 50].tolist() == [0, 0, 255]
    soft = np.asarray(red_demo().foreground(photo)[0])
    assert set(np.unique(soft).tolist()) - {0, 255}  # threshold 0: the soft map (a thresholded one is 0/255 only)


def test_crop_refine_on_the_page_is_the_predict_commands():
    photo, mask, _ = small_object_photo()
    coarse = np.asarray(red_demo().foreground(photo)[0]) / 255
    refined = np.asarray(red_demo().foreground(photo, crop_refine=True)[0]) / 255
    assert iou(refined, mask) > iou(coarse, mask) + 0.03


def test_native_resolution_on_the_page_runs_each_image_at_its_own_size(tmp_path, offline_hub):  # no Hub calls
    photo, mask, _ = small_object_photo()  # 960x720
    model = RedChannelModel()
    native = Demo(model, SegmentationImageProcessor(size=64), resolution="native", max_side=480)
    soft = np.asarray(native.foreground(photo)[0]) / 255
    assert model.input_sizes == {(352, 480)}  # 720x960 scaled to at most 480, multiples of 32
    coarse = np.asarray(red_demo().foreground(photo)[0]) / 255
    assert iou(soft, mask) > iou(coarse, mask) + 0.03
    native.foreground(photo, crop_refine=True)
    assert len(model.input_sizes) > 1  # the crop at its own size too
    with pytest.raises(ValueError, match="resolution='native' is for foreground models"):
        Demo(Sam2UNetForImageSegmentation(tiny_sam2_unet_config(num_labels=3)),
             SegmentationImageProcessor(size=64), resolution="native")
    write_space(tmp_path / "space", "ZhengPeng7/BiRefNet_dynamic", resolution="native", max_side=2304)
    app = (tmp_path / "space" / "app.py").read_text()
    assert "resolution='native', max_side=2304).launch()" in app
    ast.parse(app)


def test_class_page_shows_a_legend_and_palette_indices(tmp_path, monkeypatch):
    model = Sam2UNetForImageSegmentation(tiny_sam2_unet_config(num_labels=3))
    model.save_pretrained(tmp_path / "multi", include_backbone=True)
    SegmentationImageProcessor(size=64).save_pretrained(tmp_path / "multi")
    monkeypatch.setenv("HOME", str(tmp_path))
    demo = Demo.from_pretrained("~/multi")  # `app --model=~/multi`: the shell leaves it; was "not a valid repo id"
    assert demo.kind == "classes"
    overlay, classes = demo.classes(Image.new("RGB", (70, 50), (120, 80, 40)), "single")
    assert overlay.height == 50 and overlay.width > 70  # the legend beside the image
    assert classes.mode == "P" and classes.size == (70, 50) and np.asarray(classes).max() < 3
    with pytest.raises(ValueError, match="classes model, not a foreground one"):
        demo.foreground(Image.new("RGB", (8, 8)))
    if importlib.util.find_spec("av") is not None:  # the video section, with the [video] extra
        from test_video import decoded, square_frame, write_video

        clip = write_video(tmp_path / "clip.mp4", [square_frame(i) for i in range(3)])
        shown, indices = demo.classes_video(str(clip), "single", 0.5, output_dir=tmp_path / "video")
        assert Path(shown).suffix == ".mp4" and len(decoded(Path(shown), "rgb24")[0]) == 3
        classes_video = decoded(Path(indices))[0]
        assert len(classes_video) == 3 and max(frame.max() for frame in classes_video) < 3
        with pytest.raises(ValueError, match="no video"):
            demo.classes_video(None)


def test_prompt_page_finds_what_was_painted_or_typed():
    reference = Image.fromarray(colour_image(REFERENCE_BOXES))
    target = Image.fromarray(colour_image(TARGET_BOXES))
    demo = Demo(OneHotMatcher(tiny_config()).eval())
    assert demo.kind == "prompt"
    expected = region(TARGET_BOXES[RED])
    layer = Image.new("RGBA", reference.size, (0, 0, 0, 0))  # the editor's brush layer: a stroke over the red square
    ImageDraw.Draw(layer).rectangle((P + 2, 2 * P + 2, 4 * P - 3, 5 * P - 3), fill=(255, 0, 80, 255))
    editor_value = {"background": reference, "layers": [layer], "composite": reference}
    for given, text in ((editor_value, ""), (reference, f"box:{P},{2 * P},{4 * P},{5 * P}")):
        panel, mask = demo.prompt(given, text, target)
        found = np.asarray(mask) > 0
        assert (found & expected).sum() / (found | expected).sum() > 0.9
        assert panel.height == 256
    with pytest.raises(ValueError, match="paint over the thing to find"):
        demo.prompt({"background": reference, "layers": [Image.new("RGBA", reference.size)]}, "", target)
    # A second example: the panel shows both references; an unpainted one is an error naming it, an empty slot skipped.
    panel, mask = demo.prompt(editor_value, "", target, editor_value, {"background": None, "layers": []})
    assert panel.width == 3 * 256 + 2 * 6
    found = np.asarray(mask) > 0
    assert (found & expected).sum() / (found | expected).sum() > 0.9
    with pytest.raises(ValueError, match="reference 2: paint over the thing"):
        demo.prompt(editor_value, "", target, {"background": reference, "layers": []})
    with pytest.raises(ValueError, match="no image"):
        demo.prompt(reference, "point:3,3", None)
    # A typed mask path would read the server's files (a public Space): refused, whether the file exists or not.
    for text in ("mask:/etc/hostname", "/no/such/mask.png"):
        with pytest.raises(ValueError, match="paint a mask on the reference instead of naming a file"):
            demo.prompt(reference, text, target)


def test_video_tab_gives_a_composite_a_mask_video_and_a_transparent_one(tmp_path, monkeypatch):
    av = pytest.importorskip("av", reason="videos need PyAV (the [video] extra)")
    from test_video import decoded, square_frame, write_video

    import dsunet_hf.foreground

    clip = write_video(tmp_path / "clip.mp4", [square_frame(i) for i in range(4)])
    estimates = []  # each frame's foreground colours estimated once for its cut-out and composite (was twice)
    estimate = dsunet_hf.foreground.refine_foreground
    monkeypatch.setattr(dsunet_hf.foreground, "refine_foreground", lambda *a, **k: estimates.append(1) or estimate(*a, **k))
    composite, mask, cutout = red_demo().foreground_video(str(clip), threshold=0.5, background="#0000ff",
                                                          output_dir=tmp_path / "out")
    assert len(estimates) == 4
    assert Path(composite).suffix == ".mp4" and Path(cutout).suffix == ".mov"
    masks, _ = decoded(Path(mask))
    assert len(masks) == 4 and masks[0].shape == (64, 96)
    assert masks[0][20, 10] > 200 and masks[0][55, 80] < 50  # the red square, the background
    with av.open(cutout) as container:
        assert container.streams.video[0].codec_context.name == "prores"
    demo = red_demo()  # in temporary folders: the previous video's go when the next one is made
    first = Path(demo.foreground_video(str(clip))[0])
    second = Path(demo.foreground_video(str(clip))[0])
    assert second.is_file() and not first.exists()
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    with pytest.raises(ValueError, match="not a readable video"):
        red_demo().foreground_video(str(tmp_path / "broken.mp4"), output_dir=tmp_path / "out2")


def test_the_video_tab_smooths_flicker_on_request(tmp_path):
    pytest.importorskip("av", reason="videos need PyAV (the [video] extra)")
    from test_video import FlickeringRedChannelModel, decoded, square_frame, write_video

    clip = write_video(tmp_path / "still.mkv", [square_frame(0)] * 8, codec="ffv1", pix_fmt="bgr0")
    flicker = {}
    for strength in (0.0, 0.7):
        demo = Demo(FlickeringRedChannelModel(), SegmentationImageProcessor(size=64))
        mask = demo.foreground_video(str(clip), temporal_smoothing=strength, output_dir=tmp_path / str(strength))[1]
        flicker[strength] = np.abs(np.diff(np.stack(decoded(Path(mask))[0]).astype(float), axis=0)).mean()
    assert flicker[0.7] < 0.5 * flicker[0.0]


@pytest.fixture
def served(monkeypatch, tmp_path):
    """Serve a page on localhost and call it as a browser would (gradio_client, over HTTP)."""
    pytest.importorskip("gradio", reason="the demo page needs Gradio (the [app] extra)")
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    pages = []

    def serve(demo):
        from gradio_client import Client

        page = build_app(demo, title="test page")
        page.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
        pages.append(page)
        return Client(page.local_url, verbose=False)

    yield serve
    for page in pages:
        page.close()


def test_the_served_page_segments_over_http_and_reports_bad_input(served, tmp_path, monkeypatch):
    from gradio_client import handle_file

    client = served(red_demo())
    photo = Image.new("RGB", (60, 40), (40, 90, 60))
    ImageDraw.Draw(photo).rectangle((10, 5, 29, 24), fill=RED)
    photo.save(tmp_path / "photo.png")
    mask_file, cutout_file, composite_file = client.predict(handle_file(str(tmp_path / "photo.png")), 0.5, False,
                                                            "#00ff00", api_name="/segment")
    expected = red_demo().foreground(photo, threshold=0.5, background="#00ff00")
    for served_file, direct in zip((mask_file, cutout_file, composite_file), expected):
        assert np.array_equal(np.asarray(Image.open(served_file)), np.asarray(direct))  # PNG: lossless
    with pytest.raises(Exception, match="no image: upload one first"):
        client.predict(None, 0.5, False, "#00ff00", api_name="/segment")
    # Gradio opens an upload before the handler runs: a file Pillow cannot open was a generic "Error" on the page.
    (tmp_path / "notes.txt").write_text("not a picture")
    with pytest.raises(Exception, match=r"^notes\.txt: the image cannot be read \(not an image file\)$"):
        client.predict(handle_file(str(tmp_path / "notes.txt")), 0.5, False, "#00ff00", api_name="/segment")
    whole = (tmp_path / "photo.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(whole[: len(whole) // 2])  # its reason, not just "OSError"
    with pytest.raises(Exception, match=r"^cut\.png: the image cannot be read \(image file is truncated"):
        client.predict(handle_file(str(tmp_path / "cut.png")), 0.5, False, "#00ff00", api_name="/segment")
    with monkeypatch.context() as patch, pytest.raises(
            Exception, match=r"^photo\.png: too large to read, downscale it first \(Image size \(2400 "):
        patch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # photo.png (2400 pixels) over the decompression-bomb limit
        client.predict(handle_file(str(tmp_path / "photo.png")), 0.5, False, "#00ff00", api_name="/segment")
    if importlib.util.find_spec("av") is not None:  # the video tab is there with the [video] extra
        from test_video import decoded, square_frame, write_video

        clip = write_video(tmp_path / "clip.mp4", [square_frame(i) for i in range(3)])
        composite, mask_video, cutout_video = client.predict(handle_file(str(clip)), 0.5, False, "#00ff00", 0.0,
                                                             api_name="/segment_video")
        masks, _ = decoded(Path(mask_video))
        assert len(masks) == 3 and masks[0][20, 10] > 200
        assert Path(composite).suffix == ".mp4" and Path(cutout_video).suffix == ".mov"


def test_the_prompt_page_finds_the_painted_thing_through_a_video(tmp_path):
    pytest.importorskip("av", reason="videos need PyAV (the [video] extra)")
    from test_video import decoded, write_video

    reference = Image.fromarray(colour_image(REFERENCE_BOXES))
    boxes = [[(1, i, 3, i + 2)] for i in range(4)]  # a red block moving right, a green one still
    clip = write_video(tmp_path / "clip.mkv", [colour_image({RED: red, (0, 255, 0): [(5, 5, 7, 7)]}) for red in boxes],
                       codec="ffv1", pix_fmt="bgr0", rate=10)
    demo = Demo(OneHotMatcher(tiny_config()).eval())
    for track in (True, False):
        shown, mask_video = demo.prompt_video(reference, f"box:{P},{2 * P},{4 * P},{5 * P}", str(clip), track,
                                              output_dir=tmp_path / f"track-{track}")
        masks, _ = decoded(Path(mask_video))
        assert len(masks) == 4 and Path(shown).suffix == ".mp4" and len(decoded(Path(shown), "rgb24")[0]) == 4
        for mask, red in zip(masks, boxes):
            found, expected = mask > 127, region(red)
            assert (found & expected).sum() / (found | expected).sum() > 0.9
        report = json.loads((tmp_path / f"track-{track}" / "prediction_report.json").read_text())
        assert report["track_memory"] == (8 if track else None) and report["prompts"] == [f"mask array {SIZE}x{SIZE}"]
    with pytest.raises(ValueError, match="paint over the thing to find"):
        demo.prompt_video(reference, "", str(clip))
    with pytest.raises(ValueError, match="no video"):
        demo.prompt_video(reference, "point:20,40", None)


def test_the_prompt_page_is_served_with_an_image_editor(served, tmp_path):
    from gradio_client import handle_file

    client = served(Demo(OneHotMatcher(tiny_config()).eval()))
    Image.fromarray(colour_image(REFERENCE_BOXES)).save(tmp_path / "reference.png")
    Image.fromarray(colour_image(TARGET_BOXES)).save(tmp_path / "target.png")
    editor = {"background": handle_file(str(tmp_path / "reference.png")), "layers": [], "composite": None}
    empty = {"background": None, "layers": [], "composite": None}
    _, mask_file = client.predict(editor, f"box:{P},{2 * P},{4 * P},{5 * P}", handle_file(str(tmp_path / "target.png")),
                                  empty, None, api_name="/find")
    found, expected = np.asarray(Image.open(mask_file)) > 0, region(TARGET_BOXES[RED])
    assert (found & expected).sum() / (found | expected).sum() > 0.9
    (tmp_path / "notes.txt").write_text("not a picture")
    with pytest.raises(Exception, match=r"^notes\.txt: the image cannot be read \(not an image file\)$"):
        client.predict({**editor, "background": handle_file(str(tmp_path / "notes.txt"))}, "point:1,1",
                       handle_file(str(tmp_path / "target.png")), empty, None, api_name="/find")
    if importlib.util.find_spec("av") is not None:  # the video accordion is there with the [video] extra
        from test_video import decoded, write_video

        clip = write_video(tmp_path / "clip.mkv", [colour_image(TARGET_BOXES)] * 2, codec="ffv1", pix_fmt="bgr0")
        _, mask_video = client.predict(editor, f"box:{P},{2 * P},{4 * P},{5 * P}", handle_file(str(clip)), True, empty,
                                       None, api_name="/find_video")
        masks, _ = decoded(Path(mask_video))
        assert len(masks) == 2 and (((masks[1] > 127) & expected).sum() / ((masks[1] > 127) | expected).sum()) > 0.9


def test_space_folder_and_push(tmp_path, offline_hub, monkeypatch):
    assert main(["space", str(tmp_path / "space"), "--model", "me/sam2unet-cod", "--push-to-hub", "me/cod-demo"]) == 0
    app = (tmp_path / "space" / "app.py").read_text()
    ast.parse(app)
    assert "build_app('me/sam2unet-cod'" in app
    readme = (tmp_path / "space" / "README.md").read_text()
    assert readme.startswith("---\n") and "sdk: gradio" in readme and "app_file: app.py" in readme
    assert "- me/sam2unet-cod" in readme  # the model the Space links to
    assert (tmp_path / "space" / "requirements.txt").read_text() == default_requirement() + "\n"
    assert offline_hub.pushes == [("me/cod-demo", "dsunet-hf demo of me/sam2unet-cod")]
    assert offline_hub.repo_types == {"me/cod-demo": "space"}
    pushed = next(offline_hub.repo_dir("me/cod-demo").glob("snapshots/*"))
    assert sorted(p.name for p in pushed.iterdir()) == ["README.md", "app.py", "requirements.txt"]
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path / "space")
    folder = write_space("~/git", "me/x", requirement="dsunet-hf[app] @ git+https://github.com/dsunet-hf/dsunet-hf")
    assert folder == tmp_path / "git" and not (tmp_path / "space" / "~").exists()  # was written to ./~/git
    assert (tmp_path / "git" / "requirements.txt").read_text().startswith("dsunet-hf[app] @ git+https://")
    # --private: a new Space private, and an existing public one made private (not uploaded into it unchanged).
    assert offline_hub.private["me/cod-demo"] is False
    assert main(["space", str(tmp_path / "space"), "--model", "me/sam2unet-cod", "--push-to-hub", "me/cod-demo",
                 "--private"]) == 0
    assert offline_hub.private["me/cod-demo"] is True
    with pytest.raises(SystemExit, match="--private applies to --push-to-hub"):
        main(["space", str(tmp_path / "space2"), "--model", "me/sam2unet-cod", "--private"])
    # A Space loads its model from the Hub: a local folder would be a link to nowhere.
    with pytest.raises(SystemExit, match=r"--model .* is not a Hub repo id \(org/name\); push the model first"):
        main(["space", str(tmp_path / "space3"), "--model", str(tmp_path / "space")])


def test_app_command_serves_the_models_page(tmp_path, monkeypatch):
    gradio = pytest.importorskip("gradio", reason="the demo page needs Gradio (the [app] extra)")
    model = Sam2UNetForImageSegmentation(tiny_sam2_unet_config())
    model.save_pretrained(tmp_path / "binary", include_backbone=True)
    SegmentationImageProcessor(size=64).save_pretrained(tmp_path / "binary")
    launched = []
    monkeypatch.setattr(gradio.Blocks, "launch", lambda page, **kwargs: launched.append((page, kwargs)))
    assert main(["app", "--model", str(tmp_path / "binary"), "--port", "7999", "--host", "0.0.0.0",
                 "--resolution", "native", "--max-side", "512"]) == 0
    (page, kwargs), = launched
    assert kwargs == {"server_name": "0.0.0.0", "server_port": 7999, "share": False}
    assert page.title == str(tmp_path / "binary") and "segment" in {fn.api_name for fn in page.fns.values()}


@pytest.mark.parametrize("options, message", [
    (["--port", "70000"], r"--port must be between 0 and 65535, got 70000"),
    (["--port", "-1"], r"--port must be between 0 and 65535, got -1"),
    (["--device", "bogus"], r"--device 'bogus' is not a device name"),
    (["--max-side", "0", "--resolution", "native"], r"--max-side must be >= 32"),
])
def test_cli_app_refuses_bad_options_before_loading_the_model(tmp_path, options, message):
    with pytest.raises(SystemExit, match="^app: " + message):
        main(["app", "--model", str(tmp_path), *options])  # no model there: the options are checked first


def test_cli_app_says_when_the_port_is_taken(monkeypatch):
    class Page:
        def launch(self, **kwargs):
            raise OSError(f"Cannot find empty port in range: {kwargs['server_port']}-{kwargs['server_port']}. You "
                          f"can specify a different port ...\nmore")

    monkeypatch.setattr(Demo, "from_pretrained", classmethod(lambda cls, *args, **kwargs: red_demo()))
    monkeypatch.setattr("dsunet_hf.app.build_app", lambda demo, title=None: Page())
    with pytest.raises(SystemExit, match=r"^app: cannot serve on 127.0.0.1:7860: Cannot find empty port in range: "
                                         r"7860-7860. You can specify a different port ...$"):
        main(["app", "--model", "org/model", "--port", "7860"])


def test_a_space_pins_the_revision_its_app_loads(tmp_path, offline_hub, monkeypatch):
    """Was: no --revision on `space`: the Space's app.py loaded main, so it changed whenever the model was pushed."""
    import runpy

    import dsunet_hf.app

    for size in (96, 64):  # two pushes, told apart by their processor's size
        Sam2UNetForImageSegmentation(tiny_sam2_unet_config()).save_pretrained(
            tmp_path / f"v{size}", include_backbone=True, image_processor=SegmentationImageProcessor(size=size))
    first = offline_hub.add("me/rev", tmp_path / "v96")
    offline_hub.add("me/rev", tmp_path / "v64")
    assert main(["space", str(tmp_path / "space"), "--model", "me/rev", "--revision", first,
                 "--push-to-hub", "me/rev-demo"]) == 0
    readme = (tmp_path / "space" / "README.md").read_text()
    assert f"dsunet-hf app --model me/rev --revision {first}" in readme and "- me/rev" in readme
    assert offline_hub.pushes[-1] == ("me/rev-demo", f"dsunet-hf demo of me/rev at {first}")

    class Page:
        def launch(self):
            pass

    loaded = []  # the Space's app.py run here, its page built from the model as build_app loads it

    def build_app(model, title=None, **load_kwargs):
        loaded.append(Demo.from_pretrained(model, **load_kwargs).processor.size["height"])
        return Page()

    monkeypatch.setattr(dsunet_hf.app, "build_app", build_app)
    runpy.run_path(str(tmp_path / "space" / "app.py"))
    assert loaded == [96]  # the pinned commit, not main's
    with pytest.raises(SystemExit, match=r"^space: --revision is empty$"):
        main(["space", str(tmp_path / "space2"), "--model", "me/rev", "--revision", " "])


def test_a_space_loads_the_hub_repo_where_a_local_folder_has_its_name(tmp_path, offline_hub, monkeypatch, capsys):
    """Was: a folder me/model in the working directory (a model saved under its repo's name) made `space --model
    me/model` say it is "not a Hub repo id", with or without --revision; and its onnx_export.json was read for the
    Hub repo's."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "me" / "model").mkdir(parents=True)
    (tmp_path / "me" / "model" / "onnx_export.json").write_text(json.dumps(  # the Hub's is PyTorch
        {"path": "model.onnx", "inputs": {}, "opset": 18, "export_seconds": 1.0, "external_data": False}))
    assert main(["space", "space", "--model", "me/model", "--revision", "v2"]) == 0
    assert "is the Hub repo, not the local folder of that name here" in capsys.readouterr().out
    app = (tmp_path / "space" / "app.py").read_text()
    assert "build_app('me/model', title='model segmentation', revision='v2', device=" in app
    with pytest.raises(SystemExit, match=r"^space: --revision is empty$"):
        main(["space", "space2", "--model", "me/model", "--revision", ""])
    with pytest.raises(SystemExit, match=r"--model ./me/model is not a Hub repo id"):  # a path, not an id
        main(["space", "space3", "--model", "./me/model"])
    # Online, a folder the Hub has no repo of (a training folder such as runs/cod) is refused as before.
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import RepositoryNotFoundError

    def not_found(self, repo_id, **kwargs):
        import httpx

        url = f"https://huggingface.co/api/models/{repo_id}"
        raise RepositoryNotFoundError("404", response=httpx.Response(404, request=httpx.Request("GET", url)))

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(HfApi, "model_info", not_found)
    # Said as such (was "--model me/model is not a Hub repo id (org/name)", which it is).
    with pytest.raises(SystemExit, match=r"--model me/model is a folder here, and the Hub has no model repo of that "
                                         r"name \(or it is private and you are not logged in\): push the model first"):
        main(["space", "space4", "--model", "me/model"])
    # Where the model is loaded here, the folder wins, and has no revisions: said so, with the way out.
    with pytest.raises(SystemExit, match=r"^app: --revision v2: me/model is both a folder here and a Hub repo id; "
                                         r"the folder is loaded, .* run from another directory or rename the folder$"):
        main(["app", "--model", "me/model", "--revision", "v2"])


def test_space_refuses_a_file_as_its_folder_and_a_bad_max_side(tmp_path, offline_hub):
    (tmp_path / "afile").write_text("")
    with pytest.raises(ValueError, match=rf"^{tmp_path}/afile is a file, not a folder"):
        write_space(tmp_path / "afile", "org/model")
    with pytest.raises(ValueError, match=r"max_side \(--max-side\) must be an integer >= 32"):
        write_space(tmp_path / "space", "org/model", resolution="native", max_side=0)
    with pytest.raises(SystemExit, match=rf"^space: FOLDER {tmp_path}/afile/space: {tmp_path}/afile is a file"):
        main(["space", str(tmp_path / "afile" / "space"), "--model", "org/model"])
    assert not (tmp_path / "space").exists()


def test_a_truncated_visual_prompt_model_is_named(tmp_path):
    from test_visual_prompt_head import tiny_model

    tiny_model().save_pretrained(tmp_path / "head", include_backbone=True)
    weights = tmp_path / "head" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:64])
    with pytest.raises(OSError, match=rf"^{weights}: not a readable safetensors file"):
        Demo.from_pretrained(str(tmp_path / "head"))
    with pytest.raises(SystemExit, match=rf"^app: cannot load {tmp_path}/head: {weights}: not a readable"):
        main(["app", "--model", str(tmp_path / "head")])


def test_uploads_of_any_mode_reach_the_page_as_predict_reads_them(served, tmp_path):
    """Gradio's default conversion to RGB is PIL's convert(), which clips a 16-bit picture to white: the page takes
    uploads as opened and reads them as `predict` reads files (16-bit scaled, EXIF orientation applied once)."""
    from gradio_client import handle_file

    from dsunet_hf.image_io import load_image

    received = []

    class Recording(Demo):
        def foreground(self, image, *args):
            received.append(image)
            return super().foreground(image, *args)

    client = served(Recording(RedChannelModel(), SegmentationImageProcessor(size=64)))
    Image.fromarray(np.tile(np.linspace(0, 65535, 64), (48, 1)).astype(np.uint16)).save(tmp_path / "gray16.png")
    turned = Image.new("RGB", (64, 48))
    turned.paste(RED, (0, 0, 16, 48))
    exif = turned.getexif()
    exif[0x0112] = 6  # shown turned a quarter
    turned.save(tmp_path / "turned.png", exif=exif)
    for name in ("gray16.png", "turned.png"):
        client.predict(handle_file(str(tmp_path / name)), 0.5, False, "#ffffff", api_name="/segment")
        expected = np.asarray(load_image(tmp_path / name)).astype(int)
        got = np.asarray(load_image(received[-1])).astype(int)
        assert got.shape == expected.shape and np.abs(got - expected).max() <= 1, name


def test_the_page_says_an_unreadable_image_and_reads_no_server_file_as_background(tmp_path):
    photo = Image.new("RGB", (60, 40), (40, 90, 60))
    Image.new("RGB", (600, 400), RED).save(tmp_path / "whole.jpg", quality=95)
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "whole.jpg").read_bytes()[:3000])  # the header, part of the rest
    with pytest.raises(ValueError, match=r"^the image cannot be read \(image file is truncated"):
        red_demo().foreground(Image.open(tmp_path / "cut.jpg"))  # as the page hands over an upload: not decoded yet
    # predict's --background may be an image file; a page (a public Space) is sent what anyone types.
    Image.new("RGB", (60, 40), (0, 0, 255)).save(tmp_path / "server.png")
    for background in (str(tmp_path / "server.png"), "../server.png"):
        with pytest.raises(ValueError, match=r"a colour here \(#RRGGBB, rgb\(R, G, B\) or a name such as white\), not a file"):
            red_demo().foreground(photo, 0.5, False, background)
        with pytest.raises(ValueError, match="a colour here"):
            red_demo().foreground_video(str(tmp_path / "clip.mp4"), background=background, output_dir=tmp_path / "v")
    with pytest.raises(ValueError, match=r"^background: not a colour \(300 characters\)$"):  # not stat's OSError
        red_demo().foreground(photo, 0.5, False, "x" * 300)
    composite = red_demo().foreground(photo, 0.5, False, "rgba(0, 177, 64, 1)")[2]  # what Gradio's picker sends
    assert np.asarray(composite)[0, 0].tolist() == [0, 177, 64]


def test_the_class_page_offers_the_schedules_the_model_runs():
    from test_dinov2_seg import tiny

    from dsunet_hf import Dinov2ForSemanticSegmentation

    gradio = pytest.importorskip("gradio", reason="the demo page needs Gradio (the [app] extra)")
    one_pass = Demo(Sam2UNetForImageSegmentation(tiny_sam2_unet_config(num_labels=3)).eval(),
                    SegmentationImageProcessor(size=64))
    assert one_pass.schedules == ("single",)
    radio, = [block for block in build_app(one_pass).blocks.values() if isinstance(block, gradio.Radio)]
    assert [choice for _, choice in radio.choices] == ["single"] and radio.value == "single" and not radio.visible
    for schedule in ("slide", "multiscale"):  # through the API: said, not an AttributeError deep in the semantic path
        with pytest.raises(ValueError, match=rf"^schedule '{schedule}': Sam2UNetForImageSegmentation runs single$"):
            one_pass.classes(Image.new("RGB", (40, 30)), schedule)
    head = Demo(Dinov2ForSemanticSegmentation(tiny()).eval(), SegmentationImageProcessor(size=56))
    assert head.schedules == ("single", "slide", "multiscale")
    radio, = [block for block in build_app(head).blocks.values() if isinstance(block, gradio.Radio)]
    assert len(radio.choices) == 3 and radio.value == "slide" and radio.visible


def test_a_space_for_an_onnx_repo_leaves_the_device_to_onnxruntime(tmp_path, monkeypatch, offline_hub):
    asked = []  # an export's repo, at the revision the Space loads
    monkeypatch.setattr("dsunet_hf.onnx_export.read_export_report",
                        lambda name, revision=None, hub=False: asked.append((revision, hub)) or object())
    write_space(tmp_path / "space", "me/birefnet-onnx", revision="v2")
    app = (tmp_path / "space" / "app.py").read_text()
    ast.parse(app)
    assert asked == [("v2", True)] and "revision='v2'" in app
    # device="cuda" on a GPU Space would be refused by the ONNX loader: the Space would not start.
    assert "device" not in app and "import torch" not in app and "build_app('me/birefnet-onnx', title=" in app
    assert Requirement((tmp_path / "space" / "requirements.txt").read_text().strip()).extras == {"app", "onnx"}


@pytest.mark.parametrize("direct_url, expected", [
    (None, "dsunet-hf[app]==VERSION"),  # from an index (PyPI): no direct_url.json (PEP 610)
    ({"url": "file:///home/me/dsunet-hf", "dir_info": {"editable": True}},
     "dsunet-hf[app] @ git+https://github.com/dsunet-hf/dsunet-hf"),  # a checkout the Space cannot reach
    ({"url": "https://github.com/me/fork.git", "vcs_info": {"vcs": "git", "commit_id": "abc123"}},
     "dsunet-hf[app] @ git+https://github.com/me/fork.git@abc123"),  # what pip installed from git
])
def test_a_spaces_requirement_installs_what_runs_here(monkeypatch, direct_url, expected):
    import importlib.metadata

    from dsunet_hf import __version__

    class Installed:
        def read_text(self, name):
            return None if direct_url is None or name != "direct_url.json" else json.dumps(direct_url)

    monkeypatch.setattr(importlib.metadata, "distribution", lambda name: Installed())
    line = default_requirement()
    assert line == expected.replace("VERSION", __version__)
    assert Requirement(line).name == "dsunet-hf" and Requirement(line).extras == {"app"}


def test_a_space_refuses_extras_in_an_egg_fragment(tmp_path, offline_hub):
    # pip 26 stops at such a line ("invalid-egg-fragment"): the Space would never build.
    with pytest.raises(ValueError, match=r"pip refuses extras in #egg=; write it as 'dsunet-hf\[app\] @ git\+https"):
        write_space(tmp_path / "space", "me/x", requirement="git+https://github.com/dsunet-hf/dsunet-hf#egg=dsunet-hf[app]")
    assert not (tmp_path / "space").exists()


def test_cli_app_loads_on_other_backbone_weights_only_on_request(tmp_path, monkeypatch):
    loads = []

    def from_pretrained(cls, name, **kwargs):
        loads.append(kwargs["verify_backbone_weights"])
        if kwargs["verify_backbone_weights"]:
            raise ValueError(f"{name}: the frozen backbone weights differ; verify_backbone_weights=False to load it")
        return red_demo()

    monkeypatch.setattr(Demo, "from_pretrained", classmethod(from_pretrained))
    monkeypatch.setattr("dsunet_hf.app.build_app", lambda demo, title=None: type("Page", (), {"launch": lambda page, **kwargs: None})())
    with pytest.raises(SystemExit, match=r"^app: cannot load org/model: org/model: .* --no-verify-backbone-weights "
                                         r"to load it$"):
        main(["app", "--model", "org/model"])
    assert main(["app", "--model", "org/model", "--no-verify-backbone-weights"]) == 0
    assert loads == [True, False]
    monkeypatch.undo()
    (tmp_path / "graph").mkdir()  # an ONNX graph holds all its weights: nothing to verify, the flag is refused
    (tmp_path / "graph" / "model.onnx").write_bytes(b"")
    with pytest.raises(SystemExit, match=r"^app: cannot load .*graph: .* an ONNX graph, .* leave out "
                                         r"--no-verify-backbone-weights$"):
        main(["app", "--model", str(tmp_path / "graph"), "--no-verify-backbone-weights"])


def test_the_reference_editor_reads_16_bit_uploads_as_predict_does(tmp_path):
    # The image editor converted its background with PIL's convert("RGBA"), which clips 16 bits to white.
    gradio = pytest.importorskip("gradio", reason="the demo page needs Gradio (the [app] extra)")
    from gradio.components.image_editor import EditorData
    from gradio.data_classes import FileData

    from dsunet_hf.app import _editor_value
    from dsunet_hf.image_io import load_image

    path = tmp_path / "gray16.png"
    Image.fromarray(np.tile(np.linspace(0, 65535, 64), (48, 1)).astype(np.uint16)).save(path)
    # A transparent upload: its stored colours, as predict and the target's box read it (Gradio put it on white).
    cutout = np.zeros((48, 64, 4), np.uint8)
    cutout[..., 0], cutout[24:, :, 3] = 200, 255
    Image.fromarray(cutout, "RGBA").save(tmp_path / "cutout.png")
    editors = [block for block in build_app(Demo(OneHotMatcher(tiny_config()).eval())).blocks.values()
               if isinstance(block, gradio.ImageEditor)]
    assert len(editors) == 3  # the reference and the two optional ones
    for editor in editors:
        for path in (tmp_path / "gray16.png", tmp_path / "cutout.png"):
            value = editor.preprocess(EditorData(background=FileData(path=str(path), orig_name=path.name), layers=[]))
            got = np.asarray(_editor_value(value)[0]).astype(int)
            assert np.abs(got - np.asarray(load_image(path)).astype(int)).max() <= 1, path.name


def test_a_failure_of_the_model_is_one_line_on_the_page_and_a_traceback_in_the_log(caplog):
    gradio = pytest.importorskip("gradio", reason="the demo page needs Gradio (the [app] extra)")
    import re

    import torch

    from dsunet_hf.app import _shown_as_errors

    def failing(error):
        def segment(*args):
            raise error
        return _shown_as_errors(gradio)(segment)

    class RuntimeException(Exception):  # as onnxruntime raises them (an ONNX repo's page): not RuntimeErrors
        __module__ = "onnxruntime.capi.onnxruntime_pybind11_state"

    for error, expected in [
            (RuntimeException("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory for requested "
                              "buffer of size 4294967296"), r"^out of memory \(RuntimeException: .*--max-side"),
            (RuntimeException("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT"),
             r"^the model failed \(RuntimeException: .*INVALID_ARGUMENT\); the server's log has details$"),
            (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore"),
             r"^out of memory \(OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\): .*--max-side"),
            (MemoryError(), r"^out of memory \(MemoryError\): try a smaller image .*another --device$"),
            (RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 1 GB"), r"^out of memory"),
            (RuntimeError("shapes cannot be multiplied\ndetails"),
             r"^the model failed \(RuntimeError: shapes cannot be multiplied\); the server's log has details$")]:
        caplog.clear()
        with pytest.raises(gradio.Error) as raised:
            failing(error)()
        assert re.search(expected, raised.value.message), raised.value.message
        assert "\n" not in raised.value.message and caplog.records[-1].exc_info[1] is error
    for bug in (TypeError("a bug"), NotImplementedError("a bug")):  # programming errors: not dressed as messages
        with pytest.raises(type(bug), match="a bug"):
            failing(bug)()


def test_a_space_card_names_the_python_and_the_models_license(tmp_path, offline_hub):
    import sys

    import yaml

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "README.md").write_text("---\nlicense: mit\ntags:\n- dsunet-hf\n---\n# a model\n")
    offline_hub.add("me/licensed", tmp_path / "model")
    for model, license in (("me/licensed", "mit"), ("me/unknown", None)):  # a card that cannot be read: none said
        write_space(tmp_path / model, model)
        meta = yaml.safe_load((tmp_path / model / "README.md").read_text().split("---")[1])
        assert meta.get("license") == license
        assert meta["python_version"] == f"{sys.version_info.major}.{sys.version_info.minor}"
        assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py" and meta["models"] == [model]


def test_a_video_of_a_format_not_read_here_is_named_not_called_an_unreadable_image(tmp_path):
    # Gradio's video box takes any file: a .ts upload reached predict as an image ("cannot read image ...").
    (tmp_path / "clip.flv").write_bytes(b"\x47" * 376)  # what it holds is not looked at
    with pytest.raises(ValueError, match=r"^clip\.flv: not a video format read here \(.*\.avi, .*\.mp4, .*\); convert "
                                         r"it first, e.g. ffmpeg -i clip\.flv clip\.mp4$"):
        red_demo().foreground_video(str(tmp_path / "clip.flv"), output_dir=tmp_path / "out")
    with pytest.raises(ValueError, match=r"^clip\.flv: not a video format read here"):
        Demo(OneHotMatcher(tiny_config()).eval()).prompt_video(Image.fromarray(colour_image(REFERENCE_BOXES)),
                                                                f"point:{P},{P}", str(tmp_path / "clip.flv"))


def test_the_license_look_up_gives_up_on_a_hub_that_never_answers(monkeypatch):
    # huggingface_hub's client has no timeout of its own: `space` hung on a network that holds connections.
    import socket
    import threading

    from huggingface_hub import constants

    from dsunet_hf.app import _model_license

    with socket.socket() as server:  # accepts connections, never answers
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", 0.2)
        found = []
        worker = threading.Thread(target=lambda: found.append(_model_license("me/never-answers")), daemon=True)
        worker.start()
        worker.join(timeout=10)
    assert found == [{}]


@pytest.mark.parametrize("handler", ["foreground_video", "classes_video", "prompt_video"])
def test_a_damaged_video_upload_is_named_on_the_page_without_the_servers_folder(tmp_path, caplog, handler):
    # predict's "not a readable video" named Gradio's copy of the upload: /tmp/gradio/<hash>/fake.mp4 on the page.
    gradio = pytest.importorskip("gradio", reason="the demo page needs Gradio (the [app] extra)")
    pytest.importorskip("av", reason="videos need PyAV (the [video] extra)")
    from dsunet_hf.app import _shown_as_errors

    upload = tmp_path / "gradio" / "0f3c9a" / "fake.mp4"  # where Gradio keeps an upload
    upload.parent.mkdir(parents=True)
    upload.write_bytes(b"not a video at all")
    if handler == "foreground_video":
        demo, args = red_demo(), (str(upload),)
    elif handler == "classes_video":
        model = Sam2UNetForImageSegmentation(tiny_sam2_unet_config(num_labels=3)).eval()
        demo, args = Demo(model, SegmentationImageProcessor(size=64)), (str(upload),)
        assert demo.kind == "classes"
    else:
        demo = Demo(OneHotMatcher(tiny_config()).eval())
        args = (Image.fromarray(colour_image(REFERENCE_BOXES)), f"point:{P},{P}", str(upload))
    with pytest.raises(gradio.Error) as shown:
        _shown_as_errors(gradio)(getattr(demo, handler))(*args)  # as the page calls it
    assert shown.value.message.startswith("fake.mp4: not a readable video ("), shown.value.message
    assert str(upload.parent) not in shown.value.message and "0f3c9a" not in shown.value.message
    assert str(upload) in caplog.text  # the server's log keeps the full path

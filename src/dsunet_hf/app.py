"""A Gradio demo for any model of this package: ``dsunet-hf app --model REPO`` here, or a Hugging Face Space.

The page fits the model: foreground models (SAM2-UNet, DSU-Net, BiRefNet, ONNX folders) show the mask, a transparent
cut-out and the object on a new background colour; multi-class models (DINOv2 heads) the classes with a legend;
visual-prompt models take a reference image on which the user paints the thing to find (or types a box, points or a
scribble), and find it in a target image. The handlers are plain functions of PIL images (:class:`Demo`), tested
without a browser; :func:`build_app` wires them into ``gradio.Blocks`` (the ``[app]`` extra).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

logger = logging.getLogger(__name__)

__all__ = ["Demo", "build_app", "default_requirement", "write_space"]

KINDS = ("foreground", "classes", "prompt")
SCHEDULES = ("single", "slide", "multiscale")  # those of DINOv2 heads (predict --schedule)


class Demo:
    """One loaded model and what its page computes. ``kind`` is ``"foreground"``, ``"classes"`` or ``"prompt"``.

    ``resolution="native"`` (foreground models that take any size: BiRefNet_dynamic / _HR, SAM2-UNet, dynamic-size
    ONNX folders) runs each image at its own size, at most ``max_side``, as ``predict --resolution native``."""

    def __init__(self, model, processor=None, resolution: str = "model", max_side: int = 2048):
        from .predict import check_resolution, input_size_function

        self.model, self.processor = model, processor
        self._video_outputs = None  # the last video's temporary folder: removed at the next one
        if processor is None:  # visual-prompt models take PIL images through their own ``segment``
            self.kind = "prompt"
        elif getattr(model, "predicts_class_maps", False):
            self.kind = "classes"
        else:
            self.kind = "foreground"
        if resolution != "model" and self.kind != "foreground":
            raise ValueError(f"resolution={resolution!r} is for foreground models; this is a {self.kind} model")
        if self.kind == "foreground":
            check_resolution(model, processor, resolution)
            self.input_size = input_size_function(processor, resolution, max_side)
        self.resolution, self.max_side = resolution, max_side

    @classmethod
    def from_pretrained(cls, name_or_path: str, device: str | None = None, dtype: torch.dtype | None = None,
                        resolution: str = "model", max_side: int = 2048, verify_backbone_weights: bool = True,
                        backbone_sources: dict | None = None, **kwargs) -> Demo:
        """An artifact folder, a Hub repo id or an ONNX export folder, loaded as ``dsunet-hf predict`` loads it
        (``verify_backbone_weights=False``: as ``--no-verify-backbone-weights``; ``backbone_sources``: as
        ``--backbone-source``, e.g. ``{"backbone_revision": "abc123"}``; both refused for ONNX graphs; ``kwargs``:
        ``revision``, ``variant``, as ``--revision``, ``--variant``)."""
        from .predict import load_model_and_processor
        from .prompt_predict import load_visual_prompt_model, visual_prompt_model_type

        if visual_prompt_model_type(name_or_path, revision=kwargs.get("revision")):
            model = load_visual_prompt_model(name_or_path, device=device, dtype=dtype,
                                             verify_backbone_weights=verify_backbone_weights,
                                             backbone_sources=backbone_sources, **kwargs)
            return cls(model, resolution=resolution, max_side=max_side)
        loaded = load_model_and_processor(name_or_path, device=device, dtype=dtype,
                                          verify_backbone_weights=verify_backbone_weights,
                                          backbone_sources=backbone_sources, **kwargs)
        return cls(*loaded, resolution=resolution, max_side=max_side)

    @torch.inference_mode()
    def foreground(self, image: Image.Image, threshold: float = 0.0, crop_refine: bool = False,
                   background: str = "#ffffff") -> tuple[Image.Image, Image.Image, Image.Image]:
        """(mask, RGBA cut-out, composite on ``background``) for one image; ``threshold`` 0 keeps the soft mask."""
        from .crop_refine import refined_predictions
        from .predict import OutputOptions, device_and_dtype, output_renderer, probabilities_and_outputs

        self._expect("foreground")
        backdrop = _backdrop(background)
        image = _rgb(image)
        size = self.input_size(image.height, image.width)
        probability = probabilities_and_outputs(self.model, self.processor, [image], size=size)[0][0].cpu().numpy()
        if crop_refine:
            probability = refined_predictions(self.model, self.processor, [image], [probability],
                                              input_size=self.input_size)[0]
        kinds = ("masks", "cutouts", "composites")  # the cut-out's colour estimate serves the composite too
        render = output_renderer(kinds, OutputOptions(threshold=threshold or None, backdrop=backdrop,
                                                      device=device_and_dtype(self.model)[0]))
        return tuple(Image.fromarray(render(kind, image, probability)) for kind in kinds)

    @torch.inference_mode()
    def classes(self, image: Image.Image, schedule: str | None = None) -> tuple[Image.Image, Image.Image]:
        """(overlay with a legend, palette PNG of class indices) for one image."""
        from .semantic import overlay_with_legend, palette_png, predict_classes

        self._expect("classes")
        self._check_schedule(schedule)
        image = _rgb(image)
        classes = predict_classes(self.model, image, schedule or None)
        return (overlay_with_legend(image, classes, self.model.config.id2label),
                palette_png(classes, self.model.config.num_labels))

    def classes_video(self, video: str, schedule: str | None = None, temporal_smoothing: float = 0.0,
                      output_dir: str | Path | None = None) -> tuple[str, str]:
        """(the frames in class colours with a legend (H.264 MP4, plays in browsers), the class-index video (FFV1
        MKV, lossless: the gray value is the class)) for a video file, through ``predict``'s video path;
        ``temporal_smoothing`` as ``predict --temporal-smoothing`` (class probabilities steadied where the picture
        is still)."""
        from .predict import predict_files

        self._expect("classes")
        self._check_schedule(schedule)
        _check_video(video)
        output_dir = self._video_output_dir(output_dir)
        report = predict_files(self.model, self.processor, [video], output_dir, overlay=True, progress=False,
                               overwrite=True, schedule=schedule or None, temporal_smoothing=temporal_smoothing)
        _raise_video_failure(report, video)
        stem = Path(video).stem
        return str(output_dir / "overlays" / f"{stem}.mp4"), str(output_dir / "masks" / f"{stem}.mkv")

    @torch.inference_mode()
    def prompt(self, reference: Any, prompt_text: str, target: Image.Image, *more_references: Any
               ) -> tuple[Image.Image, Image.Image]:
        """(panel of the references with their prompts and the target with what was found, mask) for one target.

        A reference is a PIL image or Gradio's image-editor value (``{"background", "layers", ...}``): what the user
        painted on it is its prompt; on the first one ``prompt_text`` (``box:x0,y0,x1,y1``, ``point:x,y``, ...) may
        stand instead. ``more_references`` (editor values, empty ones skipped) add examples: the concept is their
        average, as DINOv's authors advise (several examples find more than one).
        """
        from .prompt_predict import default_threshold, prompt_panel

        examples = self._examples(reference, prompt_text, more_references)
        target = _rgb(target)
        score = self.model.segment([e[0] for e in examples], [e[1] for e in examples], [target])[0]
        found = score > default_threshold(self.model)
        return prompt_panel(examples, target, found), Image.fromarray(found.astype(np.uint8) * 255)

    def _examples(self, reference: Any, prompt_text: str, more_references) -> list[tuple[Image.Image, np.ndarray]]:
        """(image, prompt mask) of the first reference (painted, or ``prompt_text``) and of the painted extra ones."""
        from .prompts import reference_mask

        self._expect("prompt")
        image, painted = _editor_value(reference)
        if prompt_text and prompt_text.strip():
            kind = prompt_text.strip().partition(":")[0].strip().lower()
            if kind not in ("box", "point", "points", "scribble"):  # a mask path: the server's files are not to read
                raise ValueError(f"prompt {prompt_text.strip()!r}: type box:x0,y0,x1,y1, point:x,y or "
                                 f"scribble:x,y;x,y here; paint a mask on the reference instead of naming a file")
            painted = reference_mask(prompt_text.strip(), (image.height, image.width))
        if painted is None or not painted.any():
            raise ValueError("paint over the thing to find on the reference, or type a prompt such as "
                             "box:x0,y0,x1,y1 or point:x,y")
        examples = [(image, painted)]
        for number, extra in enumerate(more_references, start=2):
            if extra is None or (isinstance(extra, dict) and extra.get("background") is None):
                continue
            extra_image, extra_painted = _editor_value(extra)
            if extra_painted is None or not extra_painted.any():
                raise ValueError(f"reference {number}: paint over the thing to find on it too (or remove it)")
            examples.append((extra_image, extra_painted))
        return examples

    @torch.inference_mode()
    def prompt_video(self, reference: Any, prompt_text: str, video: str, track: bool = True, *more_references: Any,
                     output_dir: str | Path | None = None) -> tuple[str, str]:
        """(the video with what was found tinted (H.264 MP4), the mask video (MP4)) for the concept prompted as in
        :meth:`prompt`, through ``predict --reference``'s video path (the ``[video]`` extra). ``track``: follow it
        through the frames (``predict --track``: each found mask joins the prompt), else every frame on its own."""
        from .prompt_predict import predict_with_prompts

        examples = self._examples(reference, prompt_text, more_references)
        _check_video(video)
        output_dir = self._video_output_dir(output_dir)
        report = predict_with_prompts(self.model, [e[0] for e in examples], [e[1] for e in examples], [video],
                                      output_dir, overlay=True, overwrite=True, progress=False, track=bool(track))
        _raise_video_failure(report, video)
        stem = Path(video).stem
        return str(output_dir / "overlays" / f"{stem}.mp4"), str(output_dir / "masks" / f"{stem}.mp4")

    def _video_output_dir(self, output_dir: str | Path | None) -> Path:
        """``output_dir``, or a temporary folder that replaces the previous call's (Gradio has copied the files it
        shows by then, and a long-running Space does not fill its disk)."""
        import tempfile

        if output_dir is None:
            if self._video_outputs is not None:
                self._video_outputs.cleanup()
            self._video_outputs = tempfile.TemporaryDirectory(prefix="dsunet-hf-app-")
            output_dir = self._video_outputs.name
        return Path(output_dir)

    def foreground_video(self, video: str, threshold: float = 0.0, crop_refine: bool = False,
                         background: str = "#ffffff", temporal_smoothing: float = 0.0,
                         output_dir: str | Path | None = None) -> tuple[str, str, str]:
        """(the video on ``background`` (H.264 MP4, plays in browsers), the mask video (MP4), the transparent
        cut-out video (ProRes 4444 MOV)) for a video file, through ``dsunet-hf predict``'s video path (the
        ``[video]`` extra); written under ``output_dir`` (by default a temporary folder, removed at the next call:
        Gradio has copied the files it shows by then, and a long-running Space does not fill its disk).
        ``temporal_smoothing``: as ``predict --temporal-smoothing`` (less flicker where the picture is still)."""
        from .predict import predict_files

        self._expect("foreground")
        backdrop = _backdrop(background)
        _check_video(video)
        output_dir = self._video_output_dir(output_dir)
        report = predict_files(self.model, self.processor, [video], output_dir, threshold=threshold or None,
                               cutout=True, background=backdrop, crop_refine=crop_refine,
                               progress=False, overwrite=True, resolution=self.resolution, max_side=self.max_side,
                               temporal_smoothing=temporal_smoothing)
        _raise_video_failure(report, video)
        stem = Path(video).stem
        return tuple(str(output_dir / kind / f"{stem}{suffix}")
                     for kind, suffix in (("composites", ".mp4"), ("masks", ".mp4"), ("cutouts", ".mov")))

    @property
    def schedules(self) -> tuple[str, ...]:
        """The inference schedules the model runs: DINOv2 heads (and their sliding-window ONNX graphs) all three,
        multi-class SAM2-UNets / DSU-Nets and their graphs one pass only (their default schedule)."""
        return ("single",) if getattr(self.model, "default_schedule", "single") == "single" else SCHEDULES

    def _check_schedule(self, schedule: str | None) -> None:
        if schedule and schedule not in self.schedules:
            raise ValueError(f"schedule {schedule!r}: {type(self.model).__name__} runs {' or '.join(self.schedules)}")

    def _expect(self, kind: str) -> None:
        if self.kind != kind:
            raise ValueError(f"{type(self.model).__name__} is a {self.kind} model, not a {kind} one")


def _rgb(image: Any) -> Image.Image:
    if image is None:
        raise ValueError("no image: upload one first")
    from .image_io import load_image

    try:
        return load_image(image)
    except OSError as error:  # the page hands over uploads undecoded (image_mode=None): a truncated or damaged file
        raise ValueError(f"the image cannot be read ({error})") from error


def _check_video(video: str | None) -> None:
    """A video upload of a format ``predict`` reads as a video: another (.flv, .wmv, .ogv, ...) would be read as an
    image and said to be an unreadable image."""
    from .video import VIDEO_SUFFIXES, is_video

    if not video:
        raise ValueError("no video: upload one first")
    if not is_video(video):
        raise ValueError(f"{Path(video).name}: not a video format read here ({', '.join(sorted(VIDEO_SUFFIXES))}); "
                         f"convert it first, e.g. ffmpeg -i {Path(video).name} {Path(video).stem}.mp4")


def _raise_video_failure(report, video: str) -> None:
    """The failure of ``predict`` on ``video`` (a damaged upload) as a ValueError naming the file by its name only: on
    the page ``video`` is Gradio's copy of the upload (/tmp/gradio/<hash>/clip.mp4), whose folder the page is not to
    show. The server's log keeps the message with the full path."""
    if not report.failed:
        return
    message = next(iter(report.failed.values()))
    logger.warning("video %s failed: %s", video, message)
    for folder in {Path(video).parent, Path(video).resolve().parent} - {Path(".")}:
        message = message.replace(f"{folder}{os.sep}", "")
    raise ValueError(message)


def _backdrop(colour: str | None):
    """The new background of a page: a colour only. ``predict``'s backgrounds may also be image files, but what a
    page (a public Space) is sent must not read the server's files."""
    from .predict import Backdrop

    text = str(colour or "#ffffff").strip()
    # No colour is over 64 characters long (and a name that long may fail to stat: an OSError, not a message).
    if any(separator in text for separator in "/\\") or (len(text) <= 64 and Path(text).is_file()):
        raise ValueError(f"background {text!r}: a colour here (#RRGGBB, rgb(R, G, B) or a name such as white), "
                         f"not a file")
    if len(text) > 64:
        raise ValueError(f"background: not a colour ({len(text)} characters)")
    return Backdrop(text)


def _editor_value(value: Any) -> tuple[Image.Image, np.ndarray | None]:
    """The reference image and the painted mask (any layer's opaque pixels) from an image-editor value."""
    if not isinstance(value, dict):
        return _rgb(value), None
    image = _rgb(value.get("background"))
    painted = None
    for layer in value.get("layers") or []:
        alpha = np.asarray(layer.convert("RGBA").resize(image.size, Image.Resampling.NEAREST))[..., 3] > 0
        painted = alpha if painted is None else painted | alpha
    return image, painted


def build_app(demo: Demo | str, title: str | None = None, **load_kwargs):
    """The Gradio page for ``demo`` (a :class:`Demo`, or a model to load with :meth:`Demo.from_pretrained`, which
    gets ``load_kwargs``: ``device``, ``dtype``, ``resolution``, ``max_side``, ``verify_backbone_weights``,
    ``backbone_sources``, ``revision``, ``variant``)."""
    try:
        import gradio as gr
    except ImportError as error:
        raise ImportError('the demo page needs Gradio: pip install "dsunet-hf[app]"') from error
    name = demo if isinstance(demo, str) else getattr(demo.model, "name_or_path", "") or type(demo.model).__name__
    demo = Demo.from_pretrained(demo, **load_kwargs) if isinstance(demo, str) else demo
    errors_shown = _shown_as_errors(gr)
    # Uploads reach the handlers as opened (image_mode=None), to be read as `predict` reads files: Gradio's own
    # conversion to RGB is PIL's convert(), which clips 16-bit pictures to white.
    with gr.Blocks(title=title or f"dsunet-hf: {name}") as page:
        gr.Markdown(f"# {title or name}\nSegmentation with [dsunet-hf]({REPOSITORY}).")
        if demo.kind == "foreground":
            with gr.Row():
                threshold = gr.Slider(0, 1, value=0, step=0.05, label="threshold (0: soft mask)")
                crop_refine = gr.Checkbox(label="crop refine (small objects in large images)")
                background = gr.ColorPicker(value="#ffffff", label="new background")
            with gr.Tab("image"), gr.Row():
                with gr.Column():
                    image = _uploads_checked(gr, gr.Image(type="pil", label="image", image_mode=None))
                    run = gr.Button("segment", variant="primary")
                with gr.Column():
                    outputs = [gr.Image(type="pil", label="mask", format="png"),
                               gr.Image(type="pil", label="cut-out", image_mode="RGBA", format="png"),
                               gr.Image(type="pil", label="on the new background", format="png")]
            run.click(errors_shown(demo.foreground), [image, threshold, crop_refine, background], outputs,
                      api_name="segment")
            if _has_pyav():  # the [video] extra
                with gr.Tab("video"), gr.Row():
                    video, smoothing, run_video = _video_inputs(gr, "less flicker where the picture is still")
                    with gr.Column():
                        video_outputs = [gr.Video(label="on the new background"), gr.File(label="mask video (MP4)"),
                                         gr.File(label="transparent video (ProRes 4444 MOV)")]
                run_video.click(errors_shown(demo.foreground_video),
                                [video, threshold, crop_refine, background, smoothing], video_outputs,
                                api_name="segment_video")
        elif demo.kind == "classes":
            with gr.Row():
                image = _uploads_checked(gr, gr.Image(type="pil", label="image", image_mode=None))
                with gr.Column():
                    outputs = [gr.Image(type="pil", label="classes", format="png"),
                               gr.Image(type="pil", label="class indices (palette PNG)", format="png")]
            schedule = gr.Radio(list(demo.schedules), value=getattr(demo.model, "default_schedule", "single"), label="inference schedule",
                                visible=len(demo.schedules) > 1)
            run = gr.Button("segment", variant="primary")
            run.click(errors_shown(demo.classes), [image, schedule], outputs, api_name="segment")
            if _has_pyav():  # the [video] extra
                with gr.Accordion("a video", open=False), gr.Row():
                    video, smoothing, run_video = _video_inputs(gr, "steadier labels where the picture is still")
                    with gr.Column():
                        video_outputs = [gr.Video(label="classes"), gr.File(label="class-index video (FFV1 MKV)")]
                run_video.click(errors_shown(demo.classes_video), [video, schedule, smoothing], video_outputs,
                                api_name="segment_video")
        else:
            brush = gr.Brush(colors=["#ff0050"])
            with gr.Row():
                reference = _as_opened(gr, gr.ImageEditor(type="pil", label="reference: paint over the thing to find",
                                                          brush=brush, image_mode=None))
                target = _uploads_checked(gr, gr.Image(type="pil", label="target", image_mode=None))
            prompt_text = gr.Textbox(label="or a prompt on the reference", placeholder="box:x0,y0,x1,y1 | point:x,y")
            with gr.Accordion("more references (optional: several examples find more)", open=False), gr.Row():
                more = [_as_opened(gr, gr.ImageEditor(type="pil", label=f"reference {number}", brush=brush,
                                                      image_mode=None)) for number in (2, 3)]
            run = gr.Button("find", variant="primary")
            outputs = [gr.Image(type="pil", label="references and what was found", format="png"),
                       gr.Image(type="pil", label="mask", format="png")]
            run.click(errors_shown(demo.prompt), [reference, prompt_text, target, *more], outputs, api_name="find")
            if _has_pyav():  # the [video] extra: the same prompt, found through a video
                with gr.Accordion("in a video", open=False), gr.Row():
                    with gr.Column():
                        video = gr.Video(label="video")
                        track = gr.Checkbox(value=True, label="track (each frame's find joins the prompt: follows "
                                                              "a thing whose look changes)")
                        run_video = gr.Button("find in every frame", variant="primary")
                    with gr.Column():
                        video_outputs = [gr.Video(label="what was found"), gr.File(label="mask video (MP4)")]
                run_video.click(errors_shown(demo.prompt_video), [reference, prompt_text, video, track, *more],
                                video_outputs, api_name="find_video")
    return page


def _video_inputs(gr, smoothing_effect: str):
    """The input column of a page's video section: the video, a temporal-smoothing slider, the button."""
    with gr.Column():
        video = gr.Video(label="video")
        smoothing = gr.Slider(0, 0.9, value=0, step=0.1, label=f"temporal smoothing ({smoothing_effect})")
        run = gr.Button("segment every frame", variant="primary")
    return video, smoothing, run


def _as_opened(gr, editor):
    """An image editor whose background reaches the handler as opened: with image_mode=None Gradio puts a transparent
    upload on white, where ``predict`` and the target's box drop the alpha and keep the stored colours. Uploads it
    cannot open are said on the page (:func:`_uploads_checked`)."""
    convert = getattr(editor, "convert_and_format_image", None)
    if convert is not None:
        editor.convert_and_format_image = lambda file, flatten_on_white=False: convert(file)
    return _uploads_checked(gr, editor)


def _uploads_checked(gr, component):
    """``component`` (an image input) with an upload that Pillow cannot open (a text file, a picture over Pillow's
    decompression-bomb limit) said on the page in one line: Gradio opens it before any handler runs, and its own
    failure is a generic "Error" (the page's message names no file of the server)."""
    preprocess = component.preprocess

    def checked(payload):
        try:
            return preprocess(payload)
        except Image.DecompressionBombError as error:
            raise gr.Error(f"{_upload_name(payload)}: too large to read, downscale it first ({error})") from error
        except (OSError, SyntaxError) as error:  # Pillow's UnidentifiedImageError is an OSError
            reason = ("not an image file" if isinstance(error, Image.UnidentifiedImageError)
                      else str(error) or type(error).__name__)  # e.g. "image file is truncated"
            raise gr.Error(f"{_upload_name(payload)}: the image cannot be read ({reason})") from error

    component.preprocess = checked
    return component


def _upload_name(payload) -> str:
    """The uploaded file's own name (an image editor's: its background's), not its copy on the server."""
    file = getattr(payload, "background", None) or payload
    return getattr(file, "orig_name", None) or "the upload"


def _has_pyav() -> bool:
    import importlib.util

    return importlib.util.find_spec("av") is not None


OUT_OF_MEMORY_REMEDY = ("try a smaller image or video, or start the page with a smaller --max-side (with "
                        "--resolution native), --dtype bfloat16 or another --device")


def _failure_message(error: BaseException) -> str | None:
    """The one line the page shows for a failure of the model (out of memory, a RuntimeError of torch or
    onnxruntime), or None for other errors (programming errors: Gradio's own "Error", traceback in the log)."""
    first_line = (str(error).strip().splitlines() or [""])[0]
    # onnxruntime's errors (an ONNX repo's page) are Exceptions of its own, not RuntimeErrors.
    model_error = (isinstance(error, RuntimeError) and not isinstance(error, (NotImplementedError, RecursionError))
                   ) or type(error).__module__.startswith("onnxruntime")
    if isinstance(error, (MemoryError, torch.OutOfMemoryError)) or (model_error and re.search(
            r"out of memory|not enough memory|failed to allocate memory", first_line, re.I)):
        return f"out of memory ({type(error).__name__}{': ' + first_line if first_line else ''}): {OUT_OF_MEMORY_REMEDY}"
    if model_error:
        return f"the model failed ({type(error).__name__}: {first_line or 'no message'}); the server's log has details"
    return None


def _shown_as_errors(gr):
    """Bad input (no image, an empty prompt) and failures of the model (out of memory, a RuntimeError) as a
    one-line message on the page instead of a generic failure; the traceback of the latter goes to the log."""
    import functools

    def wrap(handler):
        @functools.wraps(handler)
        def run(*args):
            try:
                return handler(*args)
            except (ValueError, ImportError) as error:  # bad input; a missing extra names itself
                raise gr.Error(str(error)) from error
            except Exception as error:  # what is not a failure of the model is raised again
                message = _failure_message(error)
                if message is None:  # NotImplementedError, RecursionError: a bug, Gradio's generic "Error"
                    raise
                logger.exception("%s failed", handler.__name__)
                raise gr.Error(message) from error
        return run
    return wrap


SPACE_APP = '''"""A dsunet-hf demo page, written by `dsunet-hf space`."""
{imports}
from dsunet_hf.app import build_app

build_app({model!r}, title={title!r}{options}).launch()
'''
# PyTorch models on the Space's GPU where it has one; ONNX graphs refuse a device (onnxruntime picks its own).
SPACE_DEVICE = ', device="cuda" if torch.cuda.is_available() else "cpu"'

REPOSITORY = "https://github.com/dsunet-hf/dsunet-hf"


SPACE_README = """---
{{ card_data }}
---

# {{ title }}

A demo of [{{ model }}](https://huggingface.co/{{ model }}){{ " at revision `%s`" % revision if revision else "" }} made
with `dsunet-hf space`. Run it locally: `pip install -r requirements.txt` (this Space's), then
`dsunet-hf app --model {{ model }}{{ " --revision %s" % revision if revision else "" }}`.
"""


def write_space(folder: str | Path, model: str, *, title: str | None = None, requirement: str | None = None,
                resolution: str = "model", max_side: int = 2048, revision: str | None = None) -> Path:
    """A Hugging Face Space (Gradio SDK) for ``model``: ``app.py``, ``requirements.txt`` and ``README.md`` with the
    Space's front matter. ``requirement`` is the line that installs this package there (default:
    :func:`default_requirement`, with the ``[app]`` extra, and ``[onnx]`` for an ONNX export's repo; extras of a
    URL are written ``dsunet-hf[app] @ git+https://...``). ``resolution="native"``: the page runs each image at its
    own size (see :class:`Demo`). ``revision`` (a branch, tag or commit of ``model``) pins the version the page
    loads (default: main, which changes with each push to the model's repo)."""
    from importlib.metadata import PackageNotFoundError, version

    from huggingface_hub import SpaceCard, SpaceCardData

    from .files import output_folder_problem, write_text_atomic
    from .onnx_export import read_export_report
    from .predict import check_max_side

    try:
        gradio_version = version("gradio")
    except PackageNotFoundError:  # not installed here: the Space picks its default
        gradio_version = None
    folder = Path(folder).expanduser()  # "~/spaces/x" was written to ./~/spaces/x
    title = title or f"{model.rstrip('/').split('/')[-1]} segmentation"
    if revision is not None and not str(revision).strip():
        raise ValueError("revision is empty")
    if resolution not in ("model", "native"):
        raise ValueError(f"resolution must be 'model' or 'native', got {resolution!r}")
    check_max_side(max_side)
    if requirement is not None and re.search(r"[#&]egg=[^&]*\[", requirement):
        # pip 26 refuses extras in an egg fragment: the Space's build would stop at requirements.txt.
        raise ValueError(f"requirement {requirement!r}: pip refuses extras in #egg=; write it as "
                         f"'dsunet-hf[app] @ git+https://...'")
    problem = output_folder_problem(folder)
    if problem:  # said before anything is written
        raise ValueError(problem)
    # An ONNX repo (at that revision) runs on onnxruntime, which picks its device. The Hub's repo: a local folder
    # of the same name is not what the Space loads.
    onnx = read_export_report(model, revision, hub=True) is not None
    options = f", revision={revision!r}" if revision else ""  # what the page loads: not main, which moves
    options += "" if onnx else SPACE_DEVICE
    options += f", resolution='native', max_side={int(max_side)}" if resolution == "native" else ""
    write_text_atomic(folder / "app.py", SPACE_APP.format(title=title, model=model, options=options,
                                                          imports="" if onnx else "\nimport torch\n"))
    requirement = requirement or default_requirement("app,onnx" if onnx else "app")
    write_text_atomic(folder / "requirements.txt", requirement.strip() + "\n")
    # python_version: the Python the page ran with here (the Hub's default, 3.10, may resolve other versions of
    # the dependencies); the license: the model's, as its card says (a Space card without one says none).
    data = SpaceCardData(title=title, sdk="gradio", sdk_version=gradio_version, app_file="app.py", models=[model],
                         python_version=f"{sys.version_info.major}.{sys.version_info.minor}",
                         tags=["dsunet-hf", "image-segmentation"], **_model_license(model, revision))
    card = SpaceCard.from_template(data, template_str=SPACE_README, title=title, model=model, revision=revision)
    write_text_atomic(folder / "README.md", str(card))
    return folder


def _model_license(model: str, revision: str | None = None) -> dict:
    """``license`` (and ``license_name`` / ``license_link`` for "other") of a Hub model's card (at ``revision``): from
    the local cache, else from the Hub (one request); empty when the card names none or cannot be read (offline, a
    private repo)."""
    from huggingface_hub import HfApi, ModelCard, constants, try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(model, "README.md", revision=revision)
        if isinstance(cached, str):
            data = ModelCard(Path(cached).read_text(encoding="utf-8")).data.to_dict()
        elif constants.HF_HUB_OFFLINE:
            return {}
        else:
            # huggingface_hub sets no timeout of its own: a network that holds the connection would hang `space`.
            data = (HfApi().model_info(model, revision=revision, expand=["cardData"],
                                       timeout=constants.HF_HUB_ETAG_TIMEOUT).card_data or {})
            data = data.to_dict() if hasattr(data, "to_dict") else dict(data)
    except Exception as error:  # optional metadata: a network, HTTP or card-format error leaves it out
        logger.info("the license of %s is not known (%s: %s)", model, type(error).__name__, error)
        return {}
    return {key: data[key] for key in ("license", "license_name", "license_link") if data.get(key)}


def default_requirement(extras: str = "app") -> str:
    """The ``requirements.txt`` line that installs this dsunet-hf on a Space: ``dsunet-hf[extras]==<version>``
    where it was installed from a package index (PyPI); from its git repository and commit where pip installed it
    from one; otherwise (a local folder or an editable checkout, which the Space cannot reach) the project's
    repository, ``dsunet-hf[extras] @ git+https://github.com/dsunet-hf/dsunet-hf`` (its default branch)."""
    import json
    from importlib.metadata import PackageNotFoundError, distribution

    from . import __version__

    try:
        direct = json.loads(distribution("dsunet-hf").read_text("direct_url.json") or "null")
    except (PackageNotFoundError, ValueError):  # not installed (a source tree on sys.path), an unreadable record
        direct = {}
    if direct is None:  # PEP 610: no direct_url.json for a distribution installed from an index
        return f"dsunet-hf[{extras}]=={__version__}"
    url, vcs = str(direct.get("url", "")), direct.get("vcs_info") or {}
    if vcs.get("vcs") == "git" and vcs.get("commit_id") and not url.startswith("file:"):
        return f"dsunet-hf[{extras}] @ git+{url}@{vcs['commit_id']}"
    return f"dsunet-hf[{extras}] @ git+{REPOSITORY}"

"""Batch prediction with visual prompts: reference image(s) + prompt(s) -> masks of that concept in target files.

``dsunet-hf predict --model M --reference ref.jpg --prompt box:10,20,110,90 targets/ --overlay``. Works with
both visual-prompt models (the trained head and the training-free matcher): they share ``reference_memory(images,
masks)`` (the references encoded once), ``segment_with_memory(memory, targets)``, ``encode_frames(images)`` (for
tracking) and ``prompt_threshold()``. References and prompts are checked first (nothing can be
predicted without them: a bad one is an error naming it); a target that cannot be read is reported and
skipped; every output is written atomically as soon as its batch is done, and existing outputs are kept
unless ``overwrite`` (a re-run resumes where a previous one stopped).
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter
from tqdm.auto import tqdm

from .files import expand_home, save_image_atomic, save_npy_atomic, write_json_atomic
from .image_io import ImageReadError, load_image
from .models.checked_config import check_finite_number
from .predict import (
    PredictionReport,
    check_batch_options,
    collect_images,
    input_list,
    is_finished,
    output_file,
    overlay_image,
    remove_leftover_temporaries,
)
from .prompts import as_prompt, check_mask_threshold, describe_prompt, reference_masks
from .video import import_av, is_video, predict_video_into_report, video_output_path

__all__ = ["PromptTracker", "ReferencePrompts", "check_track_memory", "default_threshold", "frame_order",
           "load_visual_prompt_model", "predict_with_prompts", "prompt_panel", "read_reference_prompts",
           "render_prompt", "visual_prompt_model_type"]

VISUAL_PROMPT_MODEL_TYPES = ("visual_prompt", "visual_prompt_matcher")


def visual_prompt_model_type(name_or_path: str, revision: str | None = None) -> str | None:
    """The model_type of a visual-prompt artifact (folder or Hub id, at ``revision``), None for anything else or an
    unreadable config (e.g. the official BiRefNet repos, remote code)."""
    from transformers import AutoConfig

    try:
        model_type = AutoConfig.from_pretrained(expand_home(name_or_path), revision=revision).model_type
    except (OSError, ValueError, TypeError, AttributeError):  # TypeError, AttributeError: a config.json of null, [...]
        return None
    return model_type if model_type in VISUAL_PROMPT_MODEL_TYPES else None


def load_visual_prompt_model(name_or_path: str, device=None, dtype=None, *, verify_backbone_weights: bool = True,
                             backbone_sources: dict | None = None, **kwargs):
    """A visual-prompt model (folder or Hub id) in eval mode on ``device`` (default CPU) in ``dtype`` (default fp32);
    a damaged weights file is an OSError naming it (as :func:`dsunet_hf.predict.load_model_and_processor` says).
    ``verify_backbone_weights=False`` loads it on DINOv2 weights other than those it was saved with;
    ``backbone_sources`` (``{"dino_backbone_repo_id": ..., "dino_backbone_revision": ...}``) from another source.
    ``kwargs`` (``revision``, ``variant``, ...) go to ``from_pretrained``."""
    import torch
    from transformers import AutoConfig, AutoModel

    from .predict import readable_weights

    name_or_path = expand_home(name_or_path)  # "~/models/x" (--model=~/..., which no shell expands)
    backbone_sources = backbone_sources or {}
    given = " and ".join(flag for flag, on in (("--no-verify-backbone-weights", not verify_backbone_weights),
                                               ("--backbone-source", bool(backbone_sources))) if on)
    if given:  # rather than ignored (self-contained) or transformers' TypeError (a field it has not)
        config = AutoConfig.from_pretrained(name_or_path, revision=kwargs.get("revision"))
        if getattr(config, "backbone_weights_included", False):
            raise ValueError(f"{name_or_path} is self-contained (it holds its backbone weights): none load from "
                             f"elsewhere; leave out {given}")
        fields = [f"dino_backbone_{key}" for key in ("repo_id", "revision")]
        for field in backbone_sources:
            if field not in fields:
                raise ValueError(f"a {config.model_type} model loads no backbone from {field} (--backbone-source); "
                                 f"its fields: {', '.join(fields)}")
    with readable_weights(name_or_path):
        model = AutoModel.from_pretrained(name_or_path, verify_backbone_weights=verify_backbone_weights,
                                          **{**kwargs, **backbone_sources})
    return model.to(device=device or "cpu", dtype=dtype or torch.float32).eval()


def render_prompt(image: Image.Image, mask: np.ndarray, color=(40, 220, 90)) -> Image.Image:
    """The reference with its prompt mask tinted and outlined (what the model was shown)."""
    tinted = overlay_image(image, mask.astype(np.float32), color=color, alpha=0.45)
    edge = Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.FIND_EDGES)
    outline = np.asarray(edge.filter(ImageFilter.MaxFilter(3))) > 0
    pixels = np.asarray(tinted).copy()
    pixels[outline] = color
    return Image.fromarray(pixels)


def prompt_panel(references: list[tuple[Image.Image, np.ndarray]], target: Image.Image, mask: np.ndarray,
                 height: int = 256, gap: int = 6) -> Image.Image:
    """References with their prompts (green), then the target with the predicted mask (red), side by side."""
    tiles = [render_prompt(image, prompt) for image, prompt in references]
    tiles.append(overlay_image(target, mask.astype(np.float32)))
    tiles = [tile.resize((max(1, round(tile.width * height / tile.height)), height), Image.Resampling.BILINEAR)
             for tile in tiles]
    panel = Image.new("RGB", (sum(tile.width for tile in tiles) + gap * (len(tiles) - 1), height), (255, 255, 255))
    left = 0
    for tile in tiles:
        panel.paste(tile, (left, 0))
        left += tile.width + gap
    return panel



def frame_order(path: Path) -> list:
    """Sort key of a frame file: numbers by value (``2.jpg`` before ``10.jpg``), the rest as text."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def _read_error(path: Path) -> str | None:
    """Why an image cannot be read, or None when it can."""
    try:
        load_image(path)
    except (ImageReadError, ValueError, OSError) as error:
        return str(error)
    return None


def default_threshold(model, segment_kwargs: dict | None = None) -> float:
    """The threshold on ``segment``'s maps: ``model.prompt_threshold()`` where the model has it (given the
    matcher's ``refine`` of ``segment_kwargs``: refined maps are SAM 2's logits, the others matching scores), else
    its ``config.score_threshold``, else 0.0 (logits)."""
    if callable(getattr(model, "prompt_threshold", None)):
        refine = {"refine": segment_kwargs["refine"]} if "refine" in (segment_kwargs or {}) else {}
        return float(model.prompt_threshold(**refine))
    return float(getattr(getattr(model, "config", None), "score_threshold", 0.0))


# A frame joins the memory with the patches its found mask covers at least half of: the mask's soft edge reaches
# into the neighbouring background patches, which would otherwise pull the concept towards the background.
FOUND_MASK_COVERAGE = 0.5


def memory_kwargs(segment_kwargs: dict) -> dict:
    """The ``segment`` arguments that ``reference_memory`` needs too: a replaced feature extractor (the matcher's
    ``feature_fn``) must encode the references as it encodes the targets."""
    return {key: segment_kwargs[key] for key in ("feature_fn",) if key in segment_kwargs}


def check_track_memory(memory_size) -> int:
    """The tracking memory's size as an int (a NumPy integer is one); a ValueError naming ``--track-memory`` for
    anything but a whole number of frames >= 1 (2.5 and "8" were bare TypeErrors, True a memory of one frame)."""
    if isinstance(memory_size, np.integer):
        memory_size = int(memory_size)
    if isinstance(memory_size, bool) or not isinstance(memory_size, int) or memory_size < 1:
        raise ValueError(f"the tracking memory (--track-memory) must hold a whole number of frames, at least one "
                         f"frame, got {memory_size!r}")
    return memory_size


class PromptTracker:
    """Follows a prompted concept through a video, frame by frame, as DINOv does on DAVIS (its section 5.4): the
    concept is the mean of a memory holding the user's references (always kept) and the ``memory_size`` most
    recent frames, each encoded with the mask found on it; every frame is segmented against that memory and then
    joins it. So an object whose look drifts (light, pose, scale) stays found where the first example alone
    would lose it. A frame where nothing is found does not join (an empty prompt would describe the
    background); the memory keeps the last frames that showed the object, so it can be found again after an
    occlusion.

    ``model`` needs ``encode_frames(images)``, ``reference_memory(images, masks)`` (one entry per image) and
    ``segment_with_memory(entries, targets)``, the last two taking ``encodings`` (both visual-prompt models have
    them). Call it with a batch of frames (PIL, in order) to get their 0/1 masks; one tracker per video. Each frame
    goes through the backbone once: its encoding is segmented, then joins the memory with the found mask."""

    def __init__(self, model, memory: list, threshold: float, memory_size: int = 8, **segment_kwargs):
        memory_size = check_track_memory(memory_size)
        for method in ("encode_frames", "reference_memory", "segment_with_memory"):
            if not callable(getattr(model, method, None)):
                raise ValueError(f"tracking needs a model with {method}() (the visual-prompt models have it); "
                                 f"{type(model).__name__} has not")
        self.model, self.threshold, self.segment_kwargs = model, threshold, segment_kwargs
        self.references = list(memory)
        self.recent: deque = deque(maxlen=memory_size)
        self.memory_kwargs = memory_kwargs(segment_kwargs)

    def step(self, frame: Image.Image, encoding: Any = None) -> np.ndarray:
        """The next frame's score map (the model's ``segment`` scale: > ``threshold`` is found); the found mask
        joins the memory. ``encoding``: the frame's ``model.encode_frames``, when several trackers share it."""
        if encoding is None:
            [encoding] = self.model.encode_frames([frame], **self.memory_kwargs)
        [score] = self.model.segment_with_memory(self.references + list(self.recent), [frame], batch_size=1,
                                                 encodings=[encoding], **self.segment_kwargs)
        mask = score > self.threshold
        if mask.any():
            self.recent.extend(self.model.reference_memory([frame], [mask], min_coverage=FOUND_MASK_COVERAGE,
                                                           encodings=[encoding], **self.memory_kwargs))
        return score

    def __call__(self, frames: list[Image.Image]) -> list[np.ndarray]:
        """0/1 masks of a batch of frames, in order (each frame's memory holds the one before it)."""
        return [(self.step(frame) > self.threshold).astype(np.float32) for frame in frames]


@dataclass(frozen=True)
class ReferencePrompts:
    """References and their prompts read and checked once (:func:`read_reference_prompts`): the images, the masks the
    prompts mark on them, and both as given (named in the report). :func:`predict_with_prompts` takes it in place of
    the references (``prompts`` None), so a caller that checks them first (the command line, before the model
    loads) does not read them twice. ``mask_threshold``: the one the mask prompts were read with (in the report)."""

    references: list
    prompts: list
    images: list[Image.Image]
    masks: list[np.ndarray]
    mask_threshold: float | None = None


def read_reference_prompts(references, prompts, mask_threshold: float | None = None) -> ReferencePrompts:
    """Read the reference images and rasterise each prompt on its reference (one of each may be given alone); a bad
    one is a ValueError (OSError: a file that cannot be read) naming it. ``mask_threshold``: mask prompts given as
    files or arrays are foreground where ``>=`` it (e.g. 0.5 for JPEG masks) instead of non-zero."""
    # An (H, W, C) mask alone reads as a stack of H masks, as an (N, H, W) one does: said, not only counted.
    stacked = len(getattr(prompts, "shape", ())) == 3
    references, prompts = input_list(references, 3), input_list(prompts, 2)
    if mask_threshold is not None:  # also without a mask prompt: recorded in the report
        mask_threshold = check_mask_threshold(mask_threshold)
    if not references or len(references) != len(prompts):
        raise ValueError(f"need one prompt per reference image, got {len(references)} reference(s) and "
                         f"{len(prompts)} prompt(s)" + ("; a 3-D mask array is a stack of (height, width) masks: "
                                                        "give an RGB(A) mask in a list" if stacked else ""))
    images = [load_image(reference) for reference in references]  # errors name the file
    for prompt in prompts:
        as_prompt(prompt, mask_threshold)  # malformed text: an error quoting it, before any image is rasterised
    masks = reference_masks(prompts, images, references, mask_threshold)  # errors name the prompt and the reference
    return ReferencePrompts(references, prompts, images, masks, mask_threshold)


def predict_with_prompts(model, references: list | ReferencePrompts, prompts: list | None, targets: list[str | Path],
                         output_dir: str | Path, *,
                         threshold: float | None = None, overlay: bool = False, overwrite: bool = False,
                         batch_size: int = 4, save_scores: bool = False, progress: bool = True,
                         track: bool = False, track_memory: int = 8, **segment_kwargs) -> PredictionReport:
    """Segment the concept the ``prompts`` mark on the ``references`` in every target file/folder.

    Writes ``masks/<name>.png`` (0/255 at each target's size), with ``overlay`` ``overlays/<name>.png`` (the
    references with their prompts beside the target's result), with ``save_scores`` ``scores/<name>.npy``
    (the float32 map ``segment`` returns: logits for the trained head, matching scores for the matcher), and
    ``prediction_report.json``. ``threshold`` defaults to the model's ``prompt_threshold()``. Extra keyword
    arguments go to ``model.segment`` (e.g. the head's ``mode``). One reference, prompt or target may be given
    alone (not in a list).

    Video targets (the ``[video]`` extra) give ``masks/<name>.mp4`` and, with ``overlay``, ``overlays/<name>.mp4``
    (the frames with the found regions tinted): the concept found in every frame, each frame on its own (see
    :mod:`dsunet_hf.video`), or with ``track`` followed through the video with a memory of the last
    ``track_memory`` frames (:class:`PromptTracker`). With ``track``, image targets are frame sequences too: the
    images of one folder, in name order (numbers by value, ``2.jpg`` before ``10.jpg``); a folder with a frame left
    to do runs again from its first frame (each frame's memory holds the ones before it), unless every frame left is
    unreadable (reported again).

    ``references`` may be a :class:`ReferencePrompts` (``prompts`` None): references and prompts read and checked
    already.
    """
    if isinstance(references, ReferencePrompts) != (prompts is None):
        raise ValueError("give the references and their prompts, or a ReferencePrompts with prompts=None")
    # On the scale of the model's maps (the head's logits, the matcher's scores): any finite number, not NaN,
    # which no score exceeds (every mask would be empty).
    if threshold is not None:
        try:
            threshold = check_finite_number("threshold (--threshold)", threshold)
        except ValueError as error:  # which scale: logits or matching scores
            raise ValueError(f"{error} (on the model's score scale, default "
                             f"{default_threshold(model, segment_kwargs)})") from None
    output_dir = Path(output_dir)
    batch_size = check_batch_options(output_dir, batch_size)
    given = references if prompts is None else read_reference_prompts(references, prompts)
    references, prompts, reference_images, masks = given.references, given.prompts, given.images, given.masks
    threshold = default_threshold(model, segment_kwargs) if threshold is None else threshold
    report = PredictionReport()
    pending, videos = [], []
    kinds = ["masks"] + ["overlays"] * overlay + ["scores"] * save_scores  # done when all are there
    video_kinds = ["masks"] + ["overlays"] * overlay
    target_files = collect_images(targets, exclude=output_dir)
    remove_leftover_temporaries(output_dir)  # what a killed run left (an hour old: not a concurrent run's)
    for path, name in target_files:
        if not overwrite and is_finished(output_dir, path, name, video_kinds if is_video(path) else kinds):
            report.skipped_existing.append(str(path))
        else:
            (videos if is_video(path) else pending).append((path, name))
    if videos:
        import_av()  # a missing [video] extra: one clear error before anything runs
        if save_scores:
            raise ValueError(f"{videos[0][0]}: --save-scores writes one .npy per image target; not for videos")
    sequences: dict[Path, list[tuple[Path, Path]]] = {}
    if track:
        PromptTracker(model, [], threshold, track_memory, **segment_kwargs)  # a bad memory size or model: said now
        # Frame sequences: a folder's images in name order. Each frame's memory holds the frames before it, so a
        # sequence with a frame left to do runs again from its first frame; not when every frame left is one that
        # cannot be read (it never gets a mask: the sequence would run again on every re-run).
        left: dict[Path, list[Path]] = {}
        for path, _ in pending:
            left.setdefault(path.parent, []).append(path)
        started = {Path(done).parent for done in report.skipped_existing}
        unfinished = set()
        for folder, paths in left.items():
            errors = {}
            for path in paths if folder in started else []:  # stops at the first readable frame
                errors[str(path)] = _read_error(path)
                if errors[str(path)] is None:
                    break
            if errors and all(errors.values()):
                report.failed.update(errors)
            else:
                unfinished.add(folder)
        for path, name in sorted(target_files, key=lambda item: frame_order(item[0])):
            if path.parent in unfinished and not is_video(path):
                sequences.setdefault(path.parent, []).append((path, name))
        report.skipped_existing = [p for p in report.skipped_existing if Path(p).parent not in unfinished]
        pending = []
    # The references are encoded once for every target (not again with each batch).
    memory = []
    if pending or videos or sequences:
        memory = model.reference_memory(reference_images, masks, **memory_kwargs(segment_kwargs))

    def write_outputs(path: Path, name: Path, image: Image.Image, score: np.ndarray) -> None:
        mask = score > threshold
        png = output_file(name, ".png")
        save_image_atomic(Image.fromarray(mask.astype(np.uint8) * 255), output_dir / "masks" / png)
        if save_scores:
            save_npy_atomic(score.astype(np.float32), output_dir / "scores" / output_file(name, ".npy"))
        if overlay:
            panel = prompt_panel(list(zip(reference_images, masks)), image, mask)
            save_image_atomic(panel, output_dir / "overlays" / png)
        report.written.append(str(path))

    total = len(pending) + sum(map(len, sequences.values()))
    bar = tqdm(total=total, desc="predict", unit="img", disable=not (progress and total))
    for start in range(0, len(pending), batch_size):
        loaded = []
        for path, name in pending[start : start + batch_size]:
            try:
                loaded.append((path, name, load_image(path)))
            except (ImageReadError, ValueError, OSError) as error:  # reported, the others go on
                report.failed[str(path)] = str(error)
                bar.update(1)
        if not loaded:
            continue
        scores = model.segment_with_memory(memory, [image for _, _, image in loaded], batch_size=batch_size,
                                           **segment_kwargs)
        for (path, name, image), score in zip(loaded, scores):
            write_outputs(path, name, image, score)
            bar.update(1)
    for frames in sequences.values():
        tracker = PromptTracker(model, memory, threshold, track_memory, **segment_kwargs)
        for path, name in frames:
            try:
                image = load_image(path)
            except (ImageReadError, ValueError, OSError) as error:  # reported; the sequence goes on without it
                report.failed[str(path)] = str(error)
            else:
                write_outputs(path, name, image, tracker.step(image))
            bar.update(1)
    bar.close()

    def found(images: list[Image.Image]) -> list[np.ndarray]:  # the concept in a batch of frames, 0/1 maps
        scores = model.segment_with_memory(memory, images, batch_size=batch_size, **segment_kwargs)
        return [(score > threshold).astype(np.float32) for score in scores]

    for path, name in videos:
        kinds = ["masks"] + ["overlays"] * overlay
        predict = PromptTracker(model, memory, threshold, track_memory, **segment_kwargs) if track else found
        predict_video_into_report(report, path, {kind: video_output_path(output_dir, kind, name) for kind in kinds},
                                  lambda images: images, predict, batch_size=batch_size)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(output_dir / "prediction_report.json", {
        **report.__dict__, "references": [str(r) for r in references],
        "prompts": [describe_prompt(p) for p in prompts], "threshold": threshold,
        "track_memory": track_memory if track else None,
        "mask_threshold": given.mask_threshold,  # the prompt texts do not say it: mask:m.jpg read with >= 0.5
    })
    return report


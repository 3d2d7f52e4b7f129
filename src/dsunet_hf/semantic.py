"""The multi-class path: label-map augmentation, mIoU evaluation and colour-palette predictions.

Training augmentation follows the DINOv2 head recipe (mmseg): keep-ratio resize to ``base_size`` x U(0.5, 2.0)
(short side), random ``crop_size`` crop with up to 10 retries until no class covers more than
``cat_max_ratio`` of the labelled pixels (image padded with 0 after normalisation, labels with the ignore
index), horizontal flip, photometric distortion (brightness, contrast, saturation, hue; each p=0.5).
Like the binary transform, every random choice is a function of (seed, epoch, sample_id). Images are resized as
mmcv does, with OpenCV: bilinear without antialiasing; label maps nearest-neighbour.

Inference follows mmseg's test pipeline: the image resized to short side ``crop_size`` (for ``multiscale``, one view
per test scale, each resized from the original image to short side int(crop_size x ratio)); each view's logits
resized to the original image's size before the softmax; probabilities averaged over the views.
"""

from __future__ import annotations

import logging
import random

import cv2  # installed with pysodmetrics (it depends on OpenCV): mmcv's resizes
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from .image_io import (
    ImageReadError,
    cell_path,
    decodable_cell,
    load_cell,
    load_image,
    load_label_map,
    pil_to_rgb,
)
from .models.dinov2_seg.modeling_dinov2_seg import rescaled_size
from .predict import device_and_dtype, output_file

logger = logging.getLogger(__name__)


def _rgb_image(image) -> Image.Image:
    """A PIL image in RGB (16-bit, 32-bit and float modes scaled to 8 bit: PIL's own convert clips them to white);
    a path, array or tensor read as :func:`dsunet_hf.image_io.load_image` reads it. A PIL image is not turned by
    its EXIF orientation (load_image turns it): the caller's image is taken as shown to us, as before."""
    return pil_to_rgb(image) if isinstance(image, Image.Image) else load_image(image)


def _normalise(image: Image.Image, processor) -> torch.Tensor:
    array = np.asarray(image, dtype=np.float32) / np.float32(255.0)
    array = (array - np.asarray(processor.image_mean, np.float32)) / np.asarray(processor.image_std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def photometric_distortion(image: Image.Image, rng: random.Random) -> Image.Image:
    """mmseg's PhotoMetricDistortion: brightness +-32, contrast (the pixels x[0.5, 1.5]), saturation (HSV's S
    x[0.5, 1.5]), hue +-18 degrees (OpenCV's 0-180 scale), each with p=0.5; contrast before or after the colour
    changes with p=0.5. (PIL's ImageEnhance blends with grey instead: not the same numbers.)"""
    def contrast(pixels: np.ndarray) -> np.ndarray:
        return np.clip(pixels * rng.uniform(0.5, 1.5), 0, 255) if rng.random() < 0.5 else pixels

    pixels = np.asarray(image, np.float32)
    if rng.random() < 0.5:
        pixels = np.clip(pixels + rng.uniform(-32, 32), 0, 255)
    contrast_first = rng.random() < 0.5
    if contrast_first:
        pixels = contrast(pixels)
    saturation = rng.uniform(0.5, 1.5) if rng.random() < 0.5 else None
    hue = round(rng.uniform(-18, 18) * 256 / 180) if rng.random() < 0.5 else None
    if saturation is not None or hue is not None:
        hsv = np.asarray(Image.fromarray(pixels.astype(np.uint8)).convert("HSV")).astype(np.float32)
        if saturation is not None:
            hsv[..., 1] = np.clip(hsv[..., 1] * saturation, 0, 255)
        if hue is not None:
            hsv[..., 0] = (hsv[..., 0] + hue) % 256
        pixels = np.asarray(Image.fromarray(hsv.astype(np.uint8), mode="HSV").convert("RGB"), np.float32)
    if not contrast_first:
        pixels = contrast(pixels)
    return Image.fromarray(pixels.astype(np.uint8))


def training_scale_range(config) -> tuple[float, float]:
    """The resize jitter of a multi-class model's training (short side = crop size x U[range]): the DINOv2
    multi-layer (ms) heads' recipe U[1.0, 3.0] (640 crops), else the linear heads' U[0.5, 2.0]."""
    return (1.0, 3.0) if getattr(config, "head_type", None) == "multilayer" else (0.5, 2.0)


def _short_side_resize(image: Image.Image, short_side: int, max_long_side: int | None = None) -> Image.Image:
    """mmcv's keep-ratio resize to ``short_side`` (each side int(side x s + 0.5)): OpenCV bilinear (INTER_LINEAR,
    no antialiasing) on the 8-bit pixels, as upstream. PIL's BILINEAR antialiases when it downscales: other pixels."""
    height, width = rescaled_size(image.height, image.width, short_side, max_long_side)
    if (width, height) == image.size:
        return image
    return Image.fromarray(cv2.resize(np.asarray(image), (width, height), interpolation=cv2.INTER_LINEAR))


def _resize_labels(labels: np.ndarray, width: int, height: int) -> np.ndarray:
    """A label map resized nearest-neighbour as mmcv does (OpenCV INTER_NEAREST), in the first type OpenCV takes
    that holds every value exactly (uint8, uint16, int16, else float32: integers up to 2^24), back in its own type."""
    low, high = (int(labels.min()), int(labels.max())) if labels.size else (0, 0)
    for dtype in (np.uint8, np.uint16, np.int16):
        if np.iinfo(dtype).min <= low and high <= np.iinfo(dtype).max:
            break
    else:
        if max(-low, high) > 2 ** 24:
            raise ValueError(f"label values {low}..{high}: at most 2^24 in magnitude can be resized")
        dtype = np.float32
    resized = cv2.resize(labels.astype(dtype), (width, height), interpolation=cv2.INTER_NEAREST)
    return resized.astype(labels.dtype)


class SemanticSegmentationTransform:
    """Rows (``image``, ``mask`` = class-index or palette label map, ``sample_id``) -> model inputs."""

    def __init__(self, processor, train: bool, crop_size: int, base_size: int | None = None,
                 scale_range: tuple[float, float] = (0.5, 2.0), ignore_index: int = 255,
                 reduce_zero_label: bool = False, seed: int = 0, cat_max_ratio: float = 0.75,
                 num_labels: int | None = None, max_long_side: int | None = None):
        self.processor = processor
        self.max_long_side = max_long_side  # the long side's cap at base size (scaled with the jitter in training)
        self.num_labels = num_labels  # when given, a label outside 0..num_labels-1 (and not ignored) is an error
        self.train = train
        self.crop_size = crop_size
        self.base_size = base_size or crop_size
        self.scale_range = scale_range
        self.ignore_index = ignore_index
        self.reduce_zero_label = reduce_zero_label
        self.seed = seed
        self.cat_max_ratio = cat_max_ratio
        self.epoch = 0

    def _crop_origin(self, labels: torch.Tensor, rng: random.Random) -> tuple[int, int]:
        """A random crop where no class dominates (up to 10 tries, the last one kept), as mmseg's RandomCrop."""
        for _ in range(10):
            top = rng.randint(0, labels.shape[0] - self.crop_size)
            left = rng.randint(0, labels.shape[1] - self.crop_size)
            crop = labels[top: top + self.crop_size, left: left + self.crop_size]
            counts = torch.bincount(crop[crop != self.ignore_index].flatten())
            counts = counts[counts > 0]
            if len(counts) > 1 and counts.max().item() / counts.sum().item() < self.cat_max_ratio:
                break
        return top, left

    @staticmethod
    def check_sizes(image: Image.Image, labels: np.ndarray, where: str) -> None:
        if labels.shape != (image.height, image.width):
            raise ValueError(f"{where}: label map is {labels.shape[1]}x{labels.shape[0]} but the image is "
                             f"{image.width}x{image.height}")

    def _example(self, image: Image.Image, labels: np.ndarray, sample_id: int, names: str = "") -> dict:
        self.check_sizes(image, labels, names or f"sample {sample_id}")
        if self.num_labels is not None:
            classes = labels[labels != self.ignore_index]
            if classes.size and (classes.min() < 0 or classes.max() >= self.num_labels):
                where = names or f"sample {sample_id}"
                bad = int(classes.max() if classes.max() >= self.num_labels else classes.min())
                # Reduced labels: name the file's own value (the hint to reduce would repeat what is set).
                found = (f"label {bad + 1} in the label map (class {bad} after --reduce-zero-label)"
                         if self.reduce_zero_label else f"class {bad} in the label map")
                raise ValueError(f"{where}: {found}, but the model has {self.num_labels} "
                                 f"classes (0..{self.num_labels - 1}; {self.ignore_index} is ignored): give the model "
                                 f"every class (id2label.json beside the data, or num_labels)"
                                 + (" or, if 0 means 'other' and the classes start at 1 (ADE20K), pass "
                                    "--reduce-zero-label" if bad == self.num_labels and not self.reduce_zero_label
                                    else ""))
        if not self.train:  # evaluation: resized image, labels kept at the original size
            resized = _short_side_resize(image, self.base_size, self.max_long_side)
            return {"pixel_values": _normalise(resized, self.processor), "labels": torch.from_numpy(labels),
                    "sample_id": sample_id}
        rng = random.Random(f"{self.seed}:{self.epoch}:{sample_id}")
        ratio = rng.uniform(*self.scale_range)  # mmseg: both sides of the scale times the ratio
        long_side = int(self.max_long_side * ratio) if self.max_long_side else None
        image = photometric_distortion(_short_side_resize(image, int(self.base_size * ratio), long_side), rng)
        pixels = _normalise(image, self.processor)
        labels = torch.from_numpy(_resize_labels(labels, image.width, image.height).astype(np.int64))
        pad_h, pad_w = max(self.crop_size - pixels.shape[1], 0), max(self.crop_size - pixels.shape[2], 0)
        pixels = F.pad(pixels, (0, pad_w, 0, pad_h))
        labels = F.pad(labels, (0, pad_w, 0, pad_h), value=self.ignore_index)
        top, left = self._crop_origin(labels, rng)
        pixels = pixels[:, top: top + self.crop_size, left: left + self.crop_size]
        labels = labels[top: top + self.crop_size, left: left + self.crop_size]
        if rng.random() < 0.5:
            pixels, labels = pixels.flip(-1), labels.flip(-1)
        return {"pixel_values": pixels.contiguous(), "labels": labels.contiguous(), "sample_id": sample_id}

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:

        out: dict[str, list] = {"pixel_values": [], "labels": [], "sample_id": []}
        for image_source, label_source, sample_id in zip(batch["image"], batch["mask"], batch["sample_id"]):
            labels = load_cell(load_label_map, label_source, "mask", sample_id, self.reduce_zero_label,
                               self.ignore_index)  # a bad cell: its sample, column and file
            image = load_cell(load_image, image_source, "image", sample_id)
            names = f"{_name(label_source)} / {_name(image_source)}"
            example = self._example(image, labels, int(sample_id), names)
            for key, value in example.items():
                out[key].append(value)
        return out


def check_not_binary_255(dataset, source: str, model_name: str, ignore_index: int = 255, samples: int = 8) -> None:
    """Refuse data whose first ``samples`` label maps hold nothing but 0 and ``ignore_index`` (one of them that
    value): 0/255 binary masks given to a multi-class model, which would ignore every foreground pixel and learn
    the background only. Unreadable cells are left to the run itself to report."""
    checked, with_ignored = 0, 0
    for index in range(min(samples, len(dataset))):
        try:
            values = np.unique(load_label_map(decodable_cell(dataset[index]["mask"])))
        except (ImageReadError, ValueError, OSError, TypeError):
            return
        if not set(values.tolist()) <= {0, ignore_index}:
            return
        checked += 1
        with_ignored += bool((values == ignore_index).any())
    if checked and with_ignored:
        raise ValueError(
            f"{source}: the masks of the first {checked} samples hold only 0 and {ignore_index}, and {ignore_index} is "
            f"the ignore index of {model_name} (a multi-class model): every foreground pixel would be ignored. For "
            "foreground / background, save the masks as class indices 0/1, or train a binary model (a SAM2-UNet or "
            "DSU-Net without num_labels); in class-index label maps, 255 marks unlabelled pixels only"
        )


def _name(source) -> str:
    return cell_path(source) or type(source).__name__


@torch.no_grad()
def evaluate_semantic(model, dataset, *, schedule: str | None = None, reduce_zero_label: bool = False,
                      max_samples: int | None = None, skipped: list[str] | None = None) -> dict:
    """Dataset-level mIoU / per-class IoU (with label names) / pixel accuracy, at each label's original size.
    ``schedule`` defaults to the model's (``slide`` for the DINOv2 heads, ``single`` for SAM2-UNet / DSU-Net). A sample whose
    image or label map cannot be read, or whose sizes differ, is skipped with a warning (``"<files>: <reason>"``
    appended to ``skipped``); a class outside the model's is an error (a setting, e.g. --reduce-zero-label)."""
    from .metrics import SemanticSegmentationMetrics

    config = model.config
    schedule = schedule or model.default_schedule
    ignore_index = config.semantic_loss_ignore_index
    # Labels are read reduced (if asked) so that one outside the classes is reported with its file, as in training.
    metrics = SemanticSegmentationMetrics(config.num_labels, ignore_index)
    transform = SemanticSegmentationTransform(None, train=False, crop_size=config.crop_size, ignore_index=ignore_index,
                                              reduce_zero_label=reduce_zero_label, num_labels=config.num_labels,
                                              max_long_side=getattr(config, "max_long_side", None))
    transform.processor = model.default_image_processor()
    was_training = model.training
    model.eval()
    count = len(dataset) if max_samples is None else min(max_samples, len(dataset))
    skipped_here = []
    try:
        for index in range(count):
            row = dataset[index]
            names = f"{_name(row['mask'])} / {_name(row['image'])}"
            try:
                labels = load_label_map(decodable_cell(row["mask"]), reduce_zero_label, ignore_index)
                image = load_image(decodable_cell(row["image"]))
                transform.check_sizes(image, labels, names)
            except (ImageReadError, ValueError, OSError) as error:
                logger.warning("skipping %s", error)
                skipped_here.append(str(error) if names in str(error) else f"{names}: {error}")
                continue
            example = transform._example(image, labels, index, names)
            # As upstream: the logits resized to the label map's (the original image's) size before the softmax.
            probabilities = _segment_image(model, image, schedule, labels.shape, example["pixel_values"][None])
            metrics.update(probabilities.argmax(1)[0].cpu().numpy(), labels)
    finally:
        model.train(was_training)
    if skipped is not None:
        skipped.extend(skipped_here)
    if len(skipped_here) == count:
        raise ValueError(f"no sample could be evaluated ({count} requested, all skipped; the first: "
                         f"{skipped_here[0] if skipped_here else 'none'})")
    result = metrics.compute()
    names = [str(config.id2label[i]) for i in range(config.num_labels)]
    # A name given to several classes (e.g. two "void") keeps each class's IoU, with its id: "void (0)", "void (2)".
    names = [f"{name} ({i})" if names.count(name) > 1 else name for i, name in enumerate(names)]
    result["per_class_iou"] = dict(zip(names, result["per_class_iou"]))
    return result


def palette(num_labels: int) -> np.ndarray:
    """The VOC colour map (bit-interleaved), extended to any number of classes: (K, 3) uint8."""
    colours = np.zeros((num_labels, 3), dtype=np.uint8)
    for label in range(num_labels):
        value, red, green, blue = label, 0, 0, 0
        for shift in range(7, -1, -1):
            red |= ((value >> 0) & 1) << shift
            green |= ((value >> 1) & 1) << shift
            blue |= ((value >> 2) & 1) << shift
            value >>= 3
        colours[label] = (red, green, blue)
    return colours


def palette_png(classes: np.ndarray, num_labels: int) -> Image.Image:
    """A palette ('P') PNG whose pixel values are the class indices (255, the ignore index, included: the
    full 256-entry VOC map keeps PIL from re-indexing a short palette on save)."""
    if num_labels > 256:
        raise ValueError(f"a palette PNG holds at most 256 classes, got {num_labels}")
    image = Image.fromarray(classes.astype(np.uint8), mode="P")
    image.putpalette(palette(256).flatten().tolist())
    return image


def overlay_with_legend(image: Image.Image, classes: np.ndarray, id2label: dict[int, str], alpha: float = 0.5,
                        keep_height: bool = False):
    """The image blended with the class colours, and a legend of the classes present. ``keep_height`` (video
    frames, which must all have one size): the canvas is the image's height and the legend lists what fits."""
    colours = palette(len(id2label))
    image = _rgb_image(image)
    blended = (np.asarray(image, np.float32) * (1 - alpha) + colours[classes] * alpha).astype(np.uint8)
    present = [int(c) for c in np.unique(classes)]
    height = image.height if keep_height else max(image.height, 18 * len(present) + 8)
    present = present[: max(0, (height - 8) // 18)]
    canvas = Image.new("RGB", (image.width + 160, height), (255, 255, 255))
    canvas.paste(Image.fromarray(blended), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for row, label in enumerate(present):
        y = 4 + 18 * row
        draw.rectangle([image.width + 6, y, image.width + 20, y + 14], fill=tuple(int(v) for v in colours[label]))
        draw.text((image.width + 26, y), str(id2label.get(label, label)), fill=(0, 0, 0))
    return canvas


@torch.no_grad()
def _segment_image(model, image: Image.Image, schedule: str, output_size=None,
                   pixels: torch.Tensor | None = None) -> torch.Tensor:
    """(1, K, *output_size*) fp32 class probabilities of ``image`` (default size: the working size, short side
    resized to the crop size). ``pixels``: the working-size input when the caller has it already.

    The DINOv2 heads (and their graphs) as upstream: logits resized to ``output_size`` before the softmax, and for
    ``multiscale`` one input per test scale, each resized from the original image to short side
    int(crop_size x ratio) (mmcv's MultiScaleFlipAug). A multi-class SAM2-UNet resizes its probabilities."""
    image = _rgb_image(image)
    device, dtype = device_and_dtype(model)
    crop = model.config.crop_size
    processor = model.default_image_processor()

    long_side = getattr(model.config, "max_long_side", None)  # mmseg's VOC linear heads: 2048

    def working_input(ratio: float) -> torch.Tensor:
        resized = _short_side_resize(image, int(crop * ratio), int(long_side * ratio) if long_side else None)
        return _normalise(resized, processor)[None].to(device=device, dtype=dtype)

    inputs = working_input(1.0) if pixels is None else pixels.to(device=device, dtype=dtype)
    if schedule == "multiscale" and hasattr(model.config, "test_scales"):  # else the model names its schedules
        inputs = [inputs if ratio == 1.0 else working_input(ratio) for ratio in model.config.test_scales]
    size = tuple(output_size) if output_size is not None else rescaled_size(image.height, image.width, crop, long_side)
    return model.segment(inputs, schedule, output_size=size).float()


def class_probabilities(model, image: Image.Image, schedule: str | None = None,
                        output_size: tuple[int, int] | None = None) -> torch.Tensor:
    """(1, K, h, w) class probabilities at ``output_size`` (height, width) — the image's own size gives
    upstream's — or by default at the working size (short side resized to the crop size), from ``model.segment``
    with the model's default schedule unless given. The DINOv2 heads resize their logits to that size before the
    softmax, as upstream."""
    return _segment_image(model, image, schedule or model.default_schedule, output_size)


# Upstream's probabilities at the original size take K x H x W floats per view (plus the running sum): beyond
# 2^28 elements (1 GiB in fp32: e.g. 150 classes on a 1.8-megapixel image) predictions keep them at the working
# size and resize the probabilities instead (the argmax can differ from upstream's at class borders).
MAX_PROBABILITY_ELEMENTS = 2 ** 28


def _prediction_size(model, image: Image.Image) -> tuple[int, int] | None:
    """The image's size for the probabilities (as upstream), or None (the working size) past the memory guard."""
    if model.config.num_labels * image.height * image.width > MAX_PROBABILITY_ELEMENTS:
        return None
    return image.height, image.width


def _classes_at(probabilities: torch.Tensor, image: Image.Image) -> np.ndarray:
    if tuple(probabilities.shape[-2:]) != (image.height, image.width):
        probabilities = F.interpolate(probabilities, size=(image.height, image.width), mode="bilinear",
                                      align_corners=False)
    return probabilities.argmax(1)[0].cpu().numpy()


def predict_classes(model, image: Image.Image, schedule: str | None = None) -> np.ndarray:
    """Class indices (H, W) at the image's size: the argmax of :func:`class_probabilities` at that size (past
    ``MAX_PROBABILITY_ELEMENTS``, at the working size, resized). ``image``: a PIL image of any mode (16-bit gray
    scaled to 8 bit, alpha dropped), or a path, array or tensor as the image processor takes them."""
    image = _rgb_image(image)
    return _classes_at(class_probabilities(model, image, schedule, _prediction_size(model, image)), image)


def smoothed_class_predictor(model, schedule: str | None, strength: float):
    """``predict(frames) -> class indices`` for one video's frames in order, each frame's class probabilities
    (as :func:`predict_classes` computes them: at the frame's size, or past the memory guard at the working size
    with the frame resized to it) passed through :class:`dsunet_hf.video.TemporalSmoothing` before the argmax: a
    pixel keeps its class where the picture stays still and two classes are close, instead of flipping from frame
    to frame. Holds one frame's probabilities between frames."""
    from .video import TemporalSmoothing

    smooth = TemporalSmoothing(strength)

    def predict(frames: list[Image.Image]) -> list[np.ndarray]:
        classes = []
        for frame in frames:
            frame = frame.convert("RGB")
            probabilities = class_probabilities(model, frame, schedule, _prediction_size(model, frame))
            height, width = probabilities.shape[-2:]
            pixels = np.asarray(frame)
            if (height, width) != pixels.shape[:2]:
                pixels = cv2.resize(pixels, (width, height), interpolation=cv2.INTER_LINEAR)
            steadied = smooth(pixels, probabilities[0].cpu().numpy())
            classes.append(_classes_at(torch.from_numpy(steadied)[None], frame))
        return classes

    return predict


def render_class_output(model, kind: str, frame: Image.Image, classes: np.ndarray) -> np.ndarray:
    """One output of a video frame's class map as uint8: ``classes`` (the indices as gray values, lossless in the
    video) or ``overlays`` (the frame in class colours with a legend, at the frame's height)."""
    if kind == "classes":
        if model.config.num_labels > 256:
            raise ValueError(f"class-index videos hold at most 256 classes, the model has {model.config.num_labels}")
        return classes.astype(np.uint8)
    if kind == "overlays":
        return np.asarray(overlay_with_legend(frame, classes, model.config.id2label, keep_height=True))
    raise ValueError(f"{kind!r}: multi-class models write class-index and overlay videos")


def write_class_outputs(model, image: Image.Image, classes: np.ndarray, output_dir, name, overlay: bool) -> None:
    from .files import save_image_atomic

    save_image_atomic(palette_png(classes, model.config.num_labels), output_dir / "masks" / output_file(name, ".png"))
    if overlay:
        legend = overlay_with_legend(image, classes, model.config.id2label)
        save_image_atomic(legend, output_dir / "overlays" / output_file(name, ".png"))

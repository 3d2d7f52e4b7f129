"""Image processor for binary segmentation models (SAM2-UNet style pre- and post-processing)."""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor

from .files import expand_home
from .image_io import load_image, load_mask
from .models.checked_config import check_misspelt_fields

__all__ = [
    "SegmentationImageProcessor",
    "IMAGENET_DEFAULT_MEAN",
    "IMAGENET_DEFAULT_STD",
    "POST_PROCESSING_ORDERS",
    "model_post_processing",
    "processor_for_model",
]

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
_DEFAULT_SIZE = 352

# How logits become maps at the original size, named after the upstream script each one reproduces:
#   "sam2_unet": logits resized bilinearly (align_corners=False), then sigmoid / softmax (SAM2-UNet's and DSU-Net's
#                test.py; transformers' convention). What a processor with no recorded order does.
#   "birefnet":  sigmoid / softmax first, then the probabilities resized bilinearly with align_corners=True
#                (BiRefNet's inference.py).
POST_PROCESSING_ORDERS = ("sam2_unet", "birefnet")
# The order of each model type whose upstream differs from "sam2_unet" (a processor saved before the order was
# recorded is given its model's order by processor_for_model).
_MODEL_POST_PROCESSING = {"birefnet": "birefnet"}
# How each upstream resizes its inputs, by post-processing order: SAM2-UNet and DSU-Net with torchvision's Resize on
# PIL images (PIL's filters, widened when they downscale: antialiased); BiRefNet's inference.py with cv2.resize
# (INTER_LINEAR samples the 2x2 nearest pixels whatever the scale: no antialiasing).
_UPSTREAM_ANTIALIAS = {"sam2_unet": True, "birefnet": False}
# OpenCV's counterparts of PIL's filters, for antialias=False.
_OPENCV_INTERPOLATION = {int(Image.Resampling.BILINEAR): "INTER_LINEAR", int(Image.Resampling.BICUBIC): "INTER_CUBIC"}


def _normalize_size(size: int | dict | Sequence[int] | None) -> dict[str, int]:
    if size is None:
        size = _DEFAULT_SIZE
    if isinstance(size, (int, np.integer)):
        return {"height": int(size), "width": int(size)}
    if isinstance(size, dict):
        if "height" not in size or "width" not in size:
            raise ValueError(f"size dict must have 'height' and 'width' keys, got {size}")
        return {"height": int(size["height"]), "width": int(size["width"])}
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return {"height": int(size[0]), "width": int(size[1])}
    raise ValueError(f"size must be an int, a (height, width) pair or a dict, got {size!r}")


# transformers' image processors' switches for steps this one always takes or never takes: (the value that says so,
# what it does). Another value is refused: it was saved and silently ignored (do_resize=False: still resized).
_FIXED_STEPS = {
    "do_resize": (True, "always resizes to size (pass size=(height, width), here or per call, for another size)"),
    "do_rescale": (True, "always scales pixels to [0, 1] (give images as read: uint8, uint16 or float in [0, 1])"),
    "do_convert_rgb": (True, "always reads images as RGB"),
    "do_center_crop": (False, "never crops (it resizes to size)"),
    "do_pad": (False, "never pads (it resizes to size)"),
}


def _target_sizes(target_sizes: Any, batch: int) -> list[tuple[int, int]]:
    """``target_sizes`` as one positive (height, width) per image of a batch of ``batch``."""
    sizes = target_sizes.tolist() if isinstance(target_sizes, (torch.Tensor, np.ndarray)) else list(target_sizes)
    if len(sizes) == 2 and all(isinstance(v, (int, np.integer)) for v in sizes):
        raise ValueError(f"target_sizes: one (height, width) per image, got the single pair {tuple(sizes)}; "
                         f"for one image pass [{tuple(sizes)}]")
    if len(sizes) != batch:
        raise ValueError(f"got {len(sizes)} target sizes for a batch of {batch}")
    pairs = []
    for i, size in enumerate(sizes):
        try:
            height, width = size
        except (TypeError, ValueError):  # 352, None, a triple
            height = width = None
        if not all(isinstance(v, (int, np.integer)) and v >= 1 for v in (height, width)):
            raise ValueError(f"target_sizes[{i}]: {size!r} is not a (height, width) of positive integers")
        pairs.append((int(height), int(width)))
    return pairs


def _as_list(items: Any) -> list:
    """A single image/mask or a batch of them -> list. 4-D arrays/tensors are batches."""
    if isinstance(items, (list, tuple)):
        return list(items)
    if isinstance(items, (np.ndarray, torch.Tensor)) and items.ndim == 4:
        return list(items)
    return [items]


def _describe(item: Any, kind: str, index: int) -> str:
    if isinstance(item, (str, os.PathLike)):
        return f"{kind} {os.fspath(item)}"
    return f"{kind} #{index}"


class SegmentationImageProcessor(BaseImageProcessor):
    """Pre- and post-processing for single-channel (foreground/background) segmentation models.

    Pre-processing reproduces the upstream SAM2-UNet data pipeline: RGB image resized to ``size``
    with PIL's bilinear filter, scaled to [0, 1] and normalised with ImageNet statistics; masks are
    converted to 8-bit gray and resized bicubically (kept soft, never re-binarised).

    Post-processing brings the maps to the original size in the order of the model's upstream
    (``post_processing``, saved in ``preprocessor_config.json``): ``"sam2_unet"`` upsamples the logits
    bilinearly and then applies the sigmoid (softmax for multi-class logits), as SAM2-UNet's and DSU-Net's
    ``test.py``; ``"birefnet"`` applies the sigmoid first and upsamples the probabilities bilinearly with
    ``align_corners=True``, as BiRefNet's ``inference.py``. ``post_process_probabilities`` gives the soft maps, with
    optional per-image min-max normalisation (as in SAM2-UNet's ``test.py``); ``post_process_semantic_segmentation``
    gives class-index maps, the transformers convention that ``pipeline("image-segmentation")`` relies on.

    Note: we subclass ``BaseImageProcessor`` (the backend-agnostic ``ImageProcessingMixin`` subclass
    that ``AutoImageProcessor.register`` requires) and not the transformers PIL or torchvision
    backends, and implement the pipeline ourselves, on purpose. We resize with PIL's antialiased bilinear ``Image.resize`` on
    the PIL image, exactly like torchvision's ``Resize`` on a PIL image in the upstream SAM2-UNet
    data pipeline; the transformers backends do not guarantee that (they may resize tensors or
    arrays with different filters/antialiasing), which would shift the model's inputs.

    ``antialias=False`` resizes with OpenCV's ``cv2.resize`` instead (``INTER_LINEAR`` for bilinear), which does not
    widen its filter when it downscales, as BiRefNet's ``inference.py`` (and its training) resize: on a 2400 px photo
    brought to 1024 px the two differ by 1-3 grey levels on average and up to ~70. ``None`` (the default) follows the
    upstream that ``post_processing`` names: no antialiasing for ``"birefnet"``, antialiasing otherwise.
    """

    model_input_names = ["pixel_values"]

    def __init__(
        self,
        size: int | dict[str, int] | None = None,
        resample: int = int(Image.Resampling.BILINEAR),
        do_normalize: bool = True,
        image_mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        image_std: Sequence[float] = IMAGENET_DEFAULT_STD,
        extra_sizes: dict[str, Any] | None = None,
        do_reduce_labels: bool = False,
        post_processing: str | None = None,
        antialias: bool | None = None,
        **kwargs,
    ) -> None:
        kwargs.pop("image_processor_type", None)  # written by to_dict(); not an attribute
        check_misspelt_fields(type(self), kwargs)  # sizes=352 was kept as an attribute and never read
        for name, (value, what) in _FIXED_STEPS.items():
            given = kwargs.pop(name, None)  # None: transformers' "the default"
            if given is not None and bool(given) != value:
                raise ValueError(f"{name}={given!r} is not supported: SegmentationImageProcessor {what}")
        super().__init__(**kwargs)
        self.size = _normalize_size(size)
        # Models with a second backbone input (DSU-Net's 518 px DINOv2 view) get one more plain resize
        # of the original image per entry, e.g. {"dino_pixel_values": 518}.
        self.extra_sizes = {name: _normalize_size(value) for name, value in (extra_sizes or {}).items()}
        self.resample = int(resample)
        self.do_normalize = bool(do_normalize)
        # Lists, not tuples, so that to_dict() equals its JSON round-trip.
        self.image_mean = [float(v) for v in image_mean]
        self.image_std = [float(v) for v in image_std]
        # Multi-class label maps where 0 is "other" and classes start at 1 (ADE20K): the name and meaning of
        # transformers' Segformer/BEiT processors' flag. Recorded with the model by training and conversion,
        # so that evaluation reads the labels the way the model was trained on them.
        self.do_reduce_labels = bool(do_reduce_labels)
        # The upstream order of post-processing (POST_PROCESSING_ORDERS), set by each model's
        # default_image_processor(). None: not recorded (a processor saved before it was), "sam2_unet" when used on
        # its own; processor_for_model gives it its model's order.
        if post_processing is not None and post_processing not in POST_PROCESSING_ORDERS:
            raise ValueError(f"post_processing must be one of {POST_PROCESSING_ORDERS} (or None), "
                             f"got {post_processing!r}")
        self.post_processing = post_processing
        # None: as the upstream of post_processing (see resize_antialiases); recorded so that a saved choice is kept.
        self.antialias = None if antialias is None else bool(antialias)
        if self.antialias is False and self.resample not in _OPENCV_INTERPOLATION:
            raise ValueError(f"antialias=False resizes with OpenCV, which has no counterpart of PIL resample "
                             f"{self.resample}; use bilinear (2) or bicubic (3)")
        if len(self.image_mean) != 3 or len(self.image_std) != 3:
            raise ValueError("image_mean and image_std must have 3 values (RGB)")

    @classmethod
    def from_dict(cls, image_processor_dict, **kwargs):
        """transformers' loading (AutoImageProcessor calls this), with an override that nearly names a field refused:
        transformers drops keywords it does not know (``from_pretrained(folder, sizes=32)`` kept the saved size)."""
        check_misspelt_fields(cls, kwargs)
        return super().from_dict(image_processor_dict, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """transformers' loading, with a ``~/...`` folder read from the home folder (as the models' own
        ``from_pretrained``): transformers takes it for an invalid repo id."""
        return super().from_pretrained(expand_home(pretrained_model_name_or_path), *args, **kwargs)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """transformers' saving, with a ``~/...`` folder written to the home folder (transformers wrote ``./~/...``)."""
        return super().save_pretrained(expand_home(save_directory), *args, **kwargs)

    # ------------------------------------------------------------------ pre-processing
    def resize_antialiases(self) -> bool:
        """Whether images are resized with PIL (antialiased) or with OpenCV (not): ``antialias``, or when that is
        None the way the upstream of ``post_processing`` resizes (BiRefNet's with OpenCV)."""
        if self.antialias is not None:
            return self.antialias
        return _UPSTREAM_ANTIALIAS.get(self.post_processing or "sam2_unet", True)

    def _resized_pixels(self, image: Image.Image, width: int, height: int) -> np.ndarray:
        """``image`` at (width, height) as a uint8 (H, W, 3) array, with PIL or OpenCV (see resize_antialiases)."""
        if image.size == (width, height):
            return np.asarray(image)
        if self.resize_antialiases() or self.resample not in _OPENCV_INTERPOLATION:
            return np.asarray(image.resize((width, height), resample=self.resample))
        import cv2  # a declared dependency; imported here so that importing the package stays fast

        interpolation = getattr(cv2, _OPENCV_INTERPOLATION[self.resample])
        return cv2.resize(np.asarray(image), (width, height), interpolation=interpolation)

    def _image_to_array(self, image: Image.Image, size: dict[str, int] | None = None) -> np.ndarray:
        h, w = (size or self.size)["height"], (size or self.size)["width"]
        arr = self._resized_pixels(image, w, h).astype(np.float32) / np.float32(255.0)
        if self.do_normalize:
            # float32 subtract-then-divide, the same arithmetic as torchvision's Normalize.
            arr = (arr - np.asarray(self.image_mean, np.float32)) / np.asarray(self.image_std, np.float32)
        return arr.transpose(2, 0, 1)

    def _mask_to_array(self, mask: np.ndarray, size: dict[str, int] | None = None) -> np.ndarray:
        h, w = (size or self.size)["height"], (size or self.size)["width"]
        # Resize the 8-bit "L" mask like upstream (binary_loader -> convert("L") -> bicubic Resize).
        im = Image.fromarray(np.round(mask * 255.0).astype(np.uint8))
        if im.size != (w, h):
            im = im.resize((w, h), resample=Image.Resampling.BICUBIC)
        return (np.asarray(im, dtype=np.float32) / np.float32(255.0))[None]

    def __call__(self, images: Any, masks: Any = None, return_tensors: str | None = "pt",
                 size: int | dict[str, int] | None = None) -> BatchFeature:
        """Prepare images (and optionally masks) for the model.

        Args:
            images: one image or a list of images (path, PIL image, numpy array or tensor; see
                :func:`dsunet_hf.image_io.load_image`).
            masks: optional mask or list of masks, one per image, same size as its image.
            return_tensors: ``"pt"`` for torch tensors, ``"np"`` or ``None`` for numpy arrays.
            size: resize to this size instead of ``self.size`` for this call (e.g. an image's own
                resolution for models that take any size, see ``predict_files(resolution="native")``).

        Returns:
            :class:`~transformers.BatchFeature` with ``pixel_values`` float32 (B, 3, H, W),
            ``original_sizes`` (list of ``(height, width)`` after EXIF orientation) and, with
            masks, ``labels`` float32 (B, 1, H, W) in [0, 1].
        """
        return self.preprocess(images, masks=masks, return_tensors=return_tensors, size=size)

    def preprocess(self, images: Any, masks: Any = None, return_tensors: str | None = "pt",
                   size: int | dict[str, int] | None = None) -> BatchFeature:
        """Same as calling the processor."""
        size = self.size if size is None else _normalize_size(size)
        if return_tensors not in ("pt", "np", None):
            raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}")
        image_list = _as_list(images)
        if not image_list:
            raise ValueError("no images given (an empty list)")
        mask_list = None if masks is None else _as_list(masks)
        if mask_list is not None and len(mask_list) != len(image_list):
            raise ValueError(f"got {len(image_list)} images but {len(mask_list)} masks")

        pixel_values, labels, original_sizes = [], [], []
        extra: dict[str, list] = {name: [] for name in self.extra_sizes}
        for i, item in enumerate(image_list):
            image = load_image(item)
            if not image.width or not image.height:  # would be resized to a uniform picture, then fail post-processing
                raise ValueError(f"{_describe(item, 'image', i)} is empty ({image.width}x{image.height} pixels)")
            original_sizes.append((image.height, image.width))
            pixel_values.append(self._image_to_array(image, size))
            for name, extra_size in self.extra_sizes.items():
                extra[name].append(self._image_to_array(image, extra_size))
            if mask_list is not None:
                mask = load_mask(mask_list[i])
                if mask.shape != (image.height, image.width):
                    raise ValueError(
                        f"{_describe(mask_list[i], 'mask', i)} has size {mask.shape[1]}x{mask.shape[0]} (WxH) "
                        f"but {_describe(item, 'image', i)} has size {image.width}x{image.height}"
                    )
                labels.append(self._mask_to_array(mask, size))

        data: dict[str, Any] = {"pixel_values": np.stack(pixel_values)}
        data.update({name: np.stack(arrays) for name, arrays in extra.items()})
        if mask_list is not None:
            data["labels"] = np.stack(labels)
        if return_tensors == "pt":
            data = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in data.items()}
        # Tensors are built here, not by BatchFeature, so original_sizes stays a list of tuples.
        data["original_sizes"] = original_sizes
        return BatchFeature(data=data)

    # ------------------------------------------------------------------ post-processing
    def post_process_semantic_segmentation(
        self,
        outputs: Any,
        target_sizes: Sequence[Sequence[int]] | torch.Tensor | None = None,
        threshold: float = 0.5,
        minmax_normalize: bool = False,
    ) -> list[torch.Tensor]:
        """Class-index maps, the transformers convention (so ``pipeline("image-segmentation")`` works).

        Args:
            outputs: a model output with a ``logits`` field (or its tuple, from ``return_dict=False``), or the
                logits: (B, 1, h, w) / (B, h, w) for a foreground/background model, (B, C, h, w) with C > 1 for a
                multi-class one.
            target_sizes: one ``(height, width)`` per image (e.g. ``original_sizes``); maps are upsampled in the
                order of ``post_processing``: the logits bilinearly (``align_corners=False``), then the sigmoid
                (``"sam2_unet"``, the default), or the sigmoid, then the probabilities bilinearly with
                ``align_corners=True`` (``"birefnet"``), as each upstream. ``None`` keeps their size.
            threshold: foreground/background models: label 1 where ``p >= threshold`` (inclusive, so that
                0.5 maps a logit of exactly 0 to foreground). Multi-class models take the arg-max.
            minmax_normalize: SAM2-UNet ``test.py``'s per-image min-max normalisation before thresholding.

        Returns:
            list of B int64 tensors (height, width) of class indices (``config.id2label``).
            :meth:`post_process_probabilities` gives the soft maps instead.
        """
        maps = self.post_process_probabilities(outputs, target_sizes, minmax_normalize=minmax_normalize)
        if maps and maps[0].ndim == 3:  # multi-class: (C, H, W) probabilities
            return [m.argmax(dim=0) for m in maps]
        return [(m >= threshold).long() for m in maps]

    def post_process_probabilities(
        self,
        outputs: Any,
        target_sizes: Sequence[Sequence[int]] | torch.Tensor | None = None,
        minmax_normalize: bool = False,
    ) -> list[torch.Tensor]:
        """Soft maps: the foreground probability (H, W) of a single-channel model (sigmoid), or the class
        probabilities (C, H, W) of a multi-class one (softmax); arguments as for
        :meth:`post_process_semantic_segmentation` (min-max normalisation applies to single-channel maps).
        """
        logits = getattr(outputs, "logits", outputs)
        if isinstance(logits, tuple) and logits and isinstance(logits[0], torch.Tensor) and logits[0].ndim in (0, 4):
            # A return_dict=False model's output: (loss, logits, ...) with labels, else (logits, ...). Not a tuple of
            # logits tensors only (one per image?), which was read as its first one's maps alone.
            if len(logits) > 1 and all(isinstance(item, torch.Tensor) and item.ndim == 4 for item in logits):
                raise ValueError(f"outputs: a tuple of {len(logits)} logits tensors; give one (B, C, h, w) tensor "
                                 f"(torch.cat them), or the model's output")
            logits = logits[1] if logits[0].ndim == 0 and len(logits) > 1 else logits[0]
        if not isinstance(logits, torch.Tensor):
            logits = torch.as_tensor(np.asarray(logits))
        if logits.ndim == 3:
            logits = logits[:, None]
        if logits.ndim != 4:
            raise ValueError(f"expected logits of shape (B, C, h, w), got {tuple(logits.shape)}")
        if minmax_normalize and logits.shape[1] != 1:
            raise ValueError("minmax_normalize applies to single-channel (foreground) logits only")
        batch = logits.shape[0]
        if target_sizes is not None:
            target_sizes = _target_sizes(target_sizes, batch)

        activation_first = self.post_processing == "birefnet"
        results = []
        for i in range(batch):
            x = logits[i : i + 1].detach().float()
            size = None if target_sizes is None else target_sizes[i]
            if size == tuple(x.shape[-2:]):
                size = None
            if size is not None and not activation_first:  # SAM2-UNet / DSU-Net test.py: resize the logits
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            x = x.softmax(dim=1) if x.shape[1] > 1 else x.sigmoid()
            if size is not None and activation_first:  # BiRefNet inference.py: resize the probabilities
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
            if x.shape[1] > 1:
                results.append(x[0])
                continue
            p = x[0, 0]
            if minmax_normalize:
                p = (p - p.min()) / (p.max() - p.min() + 1e-8)
            results.append(p)
        return results

    @staticmethod
    def to_pil_masks(probabilities: Sequence[torch.Tensor | np.ndarray] | torch.Tensor) -> list[Image.Image]:
        """Convert (h, w) probability maps or bool masks to 8-bit "L" PIL images (``floor(p * 255)``, as upstream
        writes its maps and :func:`dsunet_hf.metrics.to_uint8_map` scores them)."""
        if isinstance(probabilities, (torch.Tensor, np.ndarray)) and probabilities.ndim == 2:
            probabilities = [probabilities]
        out = []
        for p in probabilities:
            if isinstance(p, torch.Tensor):
                p = p.detach().cpu().float().numpy()
            p = np.clip(np.asarray(p, dtype=np.float32), 0.0, 1.0)
            out.append(Image.fromarray(np.floor(p * np.float32(255.0)).astype(np.uint8)))
        return out


def model_post_processing(model) -> str:
    """The post-processing order (:data:`POST_PROCESSING_ORDERS`) of ``model``'s upstream, by its config's
    ``model_type`` (ONNX exports carry their model's config): ``"birefnet"`` for BiRefNet, else ``"sam2_unet"``."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return _MODEL_POST_PROCESSING.get(model_type, "sam2_unet")


def processor_for_model(processor, model):
    """``processor`` as it post-processes ``model``'s outputs: itself when it records its post-processing order, or a
    copy with the model's (:func:`model_post_processing`) when it does not (a processor saved before the order was
    recorded, or built by hand). The copy also resizes as that upstream when its ``antialias`` is None."""
    if processor is None or getattr(processor, "post_processing", "") is not None:
        return processor
    order = model_post_processing(model)
    if order == "sam2_unet":  # what an unrecorded order does already: nothing to change (or to save)
        return processor
    resolved = copy.copy(processor)
    resolved.post_processing = order
    return resolved

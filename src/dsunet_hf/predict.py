"""Batch prediction: image files/folders -> mask PNGs (and optional overlays / RGBA cut-outs).

Bad files are reported and skipped; every output is written atomically as soon as its batch is done,
and existing outputs are kept (re-running resumes where a previous run stopped).
"""

from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .files import save_image_atomic, write_json_atomic
from .image_io import ImageReadError, load_image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


@dataclass
class PredictionReport:
    written: list[str] = field(default_factory=list)
    skipped_existing: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        return (
            f"{len(self.written)} written, {len(self.skipped_existing)} already present, "
            f"{len(self.failed)} failed"
        )


def collect_images(inputs: list[str | Path]) -> list[tuple[Path, Path]]:
    """Expand files, folders and glob patterns into (image path, output name without suffix) pairs.

    Files in a folder keep their path relative to it, so equal names in sub-folders do not collide.
    """
    pairs: list[tuple[Path, Path]] = []
    expanded: list[Path] = []
    for item in inputs:
        if not Path(item).exists() and any(c in str(item) for c in "*?["):
            matches = sorted(glob.glob(str(item), recursive=True))
            if not matches:
                raise FileNotFoundError(f"{item}: the pattern matches no file")
            expanded += [Path(m) for m in matches if Path(m).is_file()]
        else:
            expanded.append(Path(item))
    for item in expanded:
        if item.is_dir():
            files = sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            pairs += [(p, p.relative_to(item).with_suffix("")) for p in files]
        elif item.is_file():
            pairs.append((item, Path(item.stem)))
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
    names = [str(name) for _, name in pairs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"several inputs would write the same output name(s): {duplicates[:5]}")
    return pairs


def overlay_image(image: Image.Image, probability: np.ndarray, color=(255, 0, 80), alpha: float = 0.5):
    """The image with the foreground tinted, for a quick visual check."""
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    weight = (alpha * probability)[..., None]
    blended = base * (1 - weight) + np.asarray(color, dtype=np.float32) * weight
    return Image.fromarray(blended.round().clip(0, 255).astype(np.uint8))


def cutout_image(image: Image.Image, probability: np.ndarray) -> Image.Image:
    """RGBA with the probability as alpha: background removal."""
    rgba = image.convert("RGB").copy()
    rgba.putalpha(Image.fromarray((probability * 255).round().astype(np.uint8)))
    return rgba


def pixel_inputs(batch, device=None, dtype=None) -> dict[str, torch.Tensor]:
    """Every image input a model takes (``pixel_values`` and e.g. DSU-Net's ``dino_pixel_values``)."""
    return {k: v.to(device=device, dtype=dtype) for k, v in batch.items() if k.endswith("pixel_values")}


@torch.inference_mode()
def predict_probabilities(model, processor, images: list, minmax_normalize: bool = False) -> list[torch.Tensor]:
    """Foreground probabilities (H, W) at each image's original size, for a batch of PIL images."""
    parameter = next(model.parameters())
    inputs = processor(images)
    logits = model(**pixel_inputs(inputs, parameter.device, parameter.dtype)).logits
    return processor.post_process_semantic_segmentation(
        logits.float(), target_sizes=inputs["original_sizes"], minmax_normalize=minmax_normalize
    )


@torch.inference_mode()
def predict_files(
    model,
    processor,
    inputs: list[str | Path],
    output_dir: str | Path,
    *,
    batch_size: int = 4,
    threshold: float | None = None,
    minmax_normalize: bool = False,
    overlay: bool = False,
    cutout: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> PredictionReport:
    """Predict masks for image files/folders into ``output_dir`` (``masks/``, ``overlays/``, ``cutouts/``)."""
    output_dir = Path(output_dir)
    report = PredictionReport()
    pending = []
    for path, name in collect_images(inputs):
        mask_path = output_dir / "masks" / name.with_suffix(".png")
        if mask_path.exists() and not overwrite:
            report.skipped_existing.append(str(path))
        else:
            pending.append((path, name))
    bar = tqdm(total=len(pending), desc="predict", unit="img", disable=not progress)
    for start in range(0, len(pending), batch_size):
        images, names, paths = [], [], []
        for path, name in pending[start : start + batch_size]:
            try:
                images.append(load_image(path))
                names.append(name)
                paths.append(path)
            except (ImageReadError, ValueError, OSError) as error:
                report.failed[str(path)] = str(error)
                bar.update(1)
        if not images:
            continue
        if hasattr(model, "segment"):  # multi-class: palette PNGs of class indices, overlays with a legend
            from .semantic import predict_classes, write_class_outputs

            for image, name, path in zip(images, names, paths):
                write_class_outputs(model, image, predict_classes(model, image), output_dir, name, overlay)
                report.written.append(str(path))
                bar.update(1)
            continue
        probabilities = predict_probabilities(model, processor, images, minmax_normalize=minmax_normalize)
        for image, name, path, probability in zip(images, names, paths, probabilities):
            probability = probability.cpu().numpy()
            mask = probability >= threshold if threshold is not None else probability
            save_image_atomic(Image.fromarray((mask * 255).round().astype(np.uint8)), output_dir / "masks" / name.with_suffix(".png"))
            if overlay:
                save_image_atomic(overlay_image(image, probability), output_dir / "overlays" / name.with_suffix(".png"))
            if cutout:
                save_image_atomic(cutout_image(image, probability), output_dir / "cutouts" / name.with_suffix(".png"))
            report.written.append(str(path))
            bar.update(1)
    bar.close()
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(output_dir / "prediction_report.json", report.__dict__)
    return report


def load_model_and_processor(name_or_path: str, device: str | None = None, dtype: torch.dtype | None = None, **kwargs):
    """Any dsunet-hf artifact (local folder or Hub id) with its saved image processor (or the default)."""
    from transformers import AutoImageProcessor, AutoModelForImageSegmentation

    from .convert.birefnet import is_official_birefnet_source

    if is_official_birefnet_source(name_or_path, kwargs.get("revision")):
        # Official BiRefNet weights (Hub id such as ZhengPeng7/BiRefNet, folder or .pth/.safetensors file).
        from .models.birefnet import BiRefNetForImageSegmentation

        model = BiRefNetForImageSegmentation.from_official(name_or_path, **kwargs)
        return _to(model, device, dtype).eval(), model.default_image_processor()
    model = AutoModelForImageSegmentation.from_pretrained(name_or_path, **kwargs)
    model = _to(model, device, dtype)
    try:
        processor = AutoImageProcessor.from_pretrained(name_or_path)
    except (OSError, ValueError):
        processor = model.default_image_processor()
    return model.eval(), processor


def _to(model, device, dtype):
    if dtype is not None:
        model = model.to(dtype)
    return model.to(device) if device is not None else model


def contact_sheet(rows: list[tuple[Image.Image, np.ndarray | None, np.ndarray]], cell: int = 160) -> Image.Image:
    """One PNG a person can look at: per row the image, its ground truth (if any) and the predicted overlay."""
    columns = 3 if any(gt is not None for _, gt, _ in rows) else 2
    sheet = Image.new("RGB", (columns * cell, len(rows) * cell), (255, 255, 255))
    for row, (image, ground_truth, probability) in enumerate(rows):
        tiles = [image.convert("RGB")]
        if columns == 3:
            gt = ground_truth if ground_truth is not None else np.zeros_like(probability)
            tiles.append(Image.fromarray((np.asarray(gt, dtype=np.float32) * 255).round().astype(np.uint8)).convert("RGB"))
        tiles.append(overlay_image(image, probability))
        for column, tile in enumerate(tiles):
            tile = tile.copy()
            tile.thumbnail((cell - 4, cell - 4))
            sheet.paste(tile, (column * cell + 2, row * cell + 2))
    return sheet

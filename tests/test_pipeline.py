"""transformers' ``pipeline("image-segmentation")`` runs every dsunet-hf segmentation model: masks at the
original size, labelled with ``config.id2label``, equal to the image processor's class-index maps."""

from __future__ import annotations

import contextlib
import logging

import numpy as np
import pytest
import torch
from conftest import TINY_SIZE
from PIL import Image
from test_compile import _models
from transformers import pipeline

NAMES = ["sam2-unet", "dsunet", "birefnet", "dinov2-seg"]


@contextlib.contextmanager
def transformers_log():
    """What transformers logs meanwhile (its library logger does not propagate to pytest's capture)."""
    messages: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    library_logger = logging.getLogger("transformers")
    library_logger.addHandler(handler)
    try:
        yield messages
    finally:
        library_logger.removeHandler(handler)


def photos(sizes):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


def expected_label_map(model, processor, image) -> np.ndarray:
    inputs = processor(image)
    with torch.no_grad():
        outputs = model(**{k: v for k, v in inputs.items() if k.endswith("pixel_values")})
    return processor.post_process_semantic_segmentation(outputs, target_sizes=inputs["original_sizes"])[0].numpy()


def label_map_from(segments, id2label, shape) -> np.ndarray:
    """Rebuild the class-index map from the pipeline's one-mask-per-class answer."""
    label_ids = {name: index for index, name in id2label.items()}
    rebuilt = np.full(shape, -1)
    for segment in segments:
        mask = np.asarray(segment["mask"])
        assert segment["mask"].mode == "L" and mask.shape == shape and set(np.unique(mask)) <= {0, 255}
        assert (rebuilt[mask > 0] == -1).all(), "masks of two classes overlap"
        rebuilt[mask > 0] = label_ids[segment["label"]]
    return rebuilt


def centre_logits_on_zero(module, args, output) -> None:
    """Forward hook: half of each map becomes foreground (edits the output in place, returns nothing)."""
    output.logits.sub_(output.logits.flatten(1).median(dim=1).values[:, None, None, None])


@pytest.mark.parametrize("name", NAMES)
def test_pipeline_gives_one_mask_per_class_at_the_original_size(name):
    model, _ = _models()[name]()
    model.eval()
    if name != "dinov2-seg":  # a random tiny model may call everything foreground: centre each map on 0
        model.register_forward_hook(centre_logits_on_zero)
    processor = model.default_image_processor()
    with transformers_log() as messages:
        segmenter = pipeline("image-segmentation", model=model, image_processor=processor)
    assert not [m for m in messages if "not supported" in m], messages  # the pipeline's model check passes

    images = photos([(50, 70), (33, 47), (64, 64), (40, 52)])
    answers = segmenter(images, batch_size=3)  # the pipeline splits every output field of a batch by image
    for image, segments in zip(images, answers):
        shape = (image.height, image.width)
        rebuilt = label_map_from(segments, model.config.id2label, shape)
        assert (rebuilt >= 0).all(), "every pixel gets a class"
        assert len(segments) == len(model.config.id2label)  # every class is present in these maps
        np.testing.assert_array_equal(rebuilt, expected_label_map(model, processor, image))
    if name != "dinov2-seg":
        assert model.config.id2label == {0: "background", 1: "foreground"}


def test_pipeline_loads_a_pushed_artifact_by_repo_id(offline_hub, tmp_path):
    from conftest import tiny_sam2_unet_config
    from helpers import tiny_hiera, write_transformers_trunk_repo

    from dsunet_hf import Sam2UNetForImageSegmentation, SegmentationImageProcessor

    offline_hub.add("test-org/tiny-hiera", write_transformers_trunk_repo(tmp_path / "trunk", tiny_hiera()))
    model = Sam2UNetForImageSegmentation.from_pretrained_backbones(tiny_sam2_unet_config()).eval()
    processor = SegmentationImageProcessor(size=TINY_SIZE)
    image = photos([(45, 60)])[0]
    with torch.no_grad():  # some pixels on each side of the threshold
        model.head.bias.sub_(model(**processor(image)).logits.median())
    model.push_to_hub("me/sam2unet-pipeline", image_processor=processor)

    segments = pipeline("image-segmentation", model="me/sam2unet-pipeline")(image)
    rebuilt = label_map_from(segments, model.config.id2label, (45, 60))
    assert [segment["label"] for segment in segments] == ["background", "foreground"]
    np.testing.assert_array_equal(rebuilt, expected_label_map(model, processor, image))

"""Generated multi-class textured shapes (visual-prompt training and evaluation data)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dsunet_hf.data import load_segmentation_dataset
from dsunet_hf.image_io import load_label_map
from dsunet_hf.synthetic import TEXTURE_CLASS_NAMES, make_textured_shapes_dataset, make_textured_shapes_sample


def test_samples_are_deterministic_and_labelled_as_documented():
    image, labels = make_textured_shapes_sample(7, (96, 80))
    again, labels_again = make_textured_shapes_sample(7, (96, 80))
    assert np.array_equal(np.asarray(image), np.asarray(again)) and np.array_equal(labels, labels_again)
    assert image.size == (80, 96) and labels.shape == (96, 80) and labels.dtype == np.uint8
    for seed in range(20):
        _, labels = make_textured_shapes_sample(seed, 64, num_classes=8, classes_per_image=(2, 3), class_ids=[2, 5, 7])
        present = set(np.unique(labels)) - {0}
        assert 2 <= len(present) <= 3 and present <= {2, 5, 7}
        assert (labels == 0).mean() >= 0.2 and all((labels == c).mean() >= 0.02 for c in present)
    assert not np.array_equal(make_textured_shapes_sample(1, 64)[1], make_textured_shapes_sample(2, 64)[1])


def test_class_appearance_is_consistent_across_images():
    """Mean colour of class c in one image is nearest to class c's mean colour in the other images."""
    means: dict[int, list[np.ndarray]] = {}
    for seed in range(24):
        image, labels = make_textured_shapes_sample(seed, 96)
        pixels = np.asarray(image, np.float32)
        for c in set(np.unique(labels)) - {0}:
            means.setdefault(int(c), []).append(pixels[labels == c].mean(0))
    prototypes = {c: np.mean(v, 0) for c, v in means.items()}
    hits = total = 0
    for c, values in means.items():
        for value in values:
            nearest = min(prototypes, key=lambda k: np.linalg.norm(prototypes[k] - value))
            hits += nearest == c
            total += 1
    assert hits / total >= 0.9


def test_dataset_folder_loads_and_bad_arguments_raise(tmp_path):
    root = make_textured_shapes_dataset(tmp_path / "shapes", num_images=5, size=64, num_classes=10, seed=3)
    names = json.loads((root / "id2label.json").read_text())
    assert names["0"] == "background" and names["1"] == TEXTURE_CLASS_NAMES[0] and names["10"] == "class-10"
    dataset = load_segmentation_dataset(root)
    assert len(dataset) == 5
    labels = load_label_map(dataset[0]["mask"])
    assert np.array_equal(labels, make_textured_shapes_sample(np.random.default_rng([3, 0]), 64, 10)[1])
    for kwargs in ({"size": 16}, {"num_classes": 0}, {"class_ids": [9]}, {"classes_per_image": (3, 2)}):
        with pytest.raises(ValueError):
            make_textured_shapes_sample(0, **{"size": 64, **kwargs})

"""Generated multi-class textured shapes (visual-prompt training and evaluation data)."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from PIL import Image

from dsunet_hf.data import load_segmentation_dataset
from dsunet_hf.image_io import load_label_map
from dsunet_hf.synthetic import (
    TEXTURE_CLASS_NAMES,
    _class_appearance,
    make_textured_shapes_dataset,
    make_textured_shapes_sample,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (see conftest)


def _present(labels: np.ndarray) -> set[int]:
    return {int(c) for c in np.unique(labels)} - {0}


def test_samples_are_deterministic_and_labelled_as_documented():
    image, labels = make_textured_shapes_sample(7, (96, 80))
    again, labels_again = make_textured_shapes_sample(np.random.default_rng(7), (96, 80))
    assert np.array_equal(np.asarray(image), np.asarray(again)) and np.array_equal(labels, labels_again)
    assert image.mode == "RGB" and image.size == (80, 96) and labels.shape == (96, 80) and labels.dtype == np.uint8
    for seed in range(20):
        _, labels = make_textured_shapes_sample(seed, 64, num_classes=8, classes_per_image=(2, 3), class_ids=[2, 5, 7])
        present = _present(labels)
        assert 2 <= len(present) <= 3 and present <= {2, 5, 7}
        assert (labels == 0).mean() >= 0.2 and all((labels == c).mean() >= 0.02 for c in present)
    assert not np.array_equal(make_textured_shapes_sample(1, 64)[1], make_textured_shapes_sample(2, 64)[1])


@pytest.mark.parametrize("num_classes, classes_per_image", [(8, (2, 3)), (8, (1, 1)), (8, (4, 4)), (3, (2, 6)), (32, (1, 5))])
def test_class_counts_and_areas(num_classes, classes_per_image):
    low, high = min(classes_per_image[0], num_classes), min(classes_per_image[1], num_classes)
    counts = set()
    for seed in range(16):
        image, labels = make_textured_shapes_sample(seed, 48, num_classes, classes_per_image)
        present = _present(labels)
        counts.add(len(present))
        assert labels.max() <= num_classes and present <= set(range(1, num_classes + 1))
        assert (labels == 0).mean() >= 0.2 and all((labels == c).mean() >= 0.02 for c in present)
    assert counts <= set(range(low, high + 1)) and len(counts) >= min(high - low + 1, 2)  # k varies when it can


def test_class_ids_hold_classes_out_and_clip_the_count():
    seen = set()
    for seed in range(12):
        _, labels = make_textured_shapes_sample(seed, 48, num_classes=8, class_ids=[1, 2, 3, 4, 5, 6])
        seen |= _present(labels)
        assert _present(make_textured_shapes_sample(seed, 48, num_classes=8, class_ids=(4,))[1]) == {4}
    assert seen == {1, 2, 3, 4, 5, 6}  # all allowed ids are used, the held-out 7 and 8 never


def test_class_appearance_is_consistent_across_images():
    """Mean colour of class c in one image is nearest to class c's mean colour in the other images."""
    means: dict[int, list[np.ndarray]] = {}
    for seed in range(24):
        image, labels = make_textured_shapes_sample(seed, 96)
        pixels = np.asarray(image, np.float32)
        for c in _present(labels):
            means.setdefault(c, []).append(pixels[labels == c].mean(0))
    prototypes = {c: np.mean(v, 0) for c, v in means.items()}
    hits = total = 0
    for c, values in means.items():
        for value in values:
            nearest = min(prototypes, key=lambda k: np.linalg.norm(prototypes[k] - value))
            hits += nearest == c
            total += 1
    assert hits / total >= 0.9


def test_class_descriptor_matches_between_image_pairs():
    """Mean RGB of class c in image A is nearer to class c's in image B than to any other class's in B."""
    descriptors = []
    for i in range(24):
        image, labels = make_textured_shapes_sample(np.random.default_rng([5, i]), 80)
        pixels = np.asarray(image, np.float32)
        descriptors.append({c: pixels[labels == c].mean(0) for c in _present(labels)})
    hits = total = 0
    for a, b in itertools.permutations(descriptors, 2):
        for c, value in a.items():
            if c in b and len(b) > 1:
                others = min(np.linalg.norm(value - v) for k, v in b.items() if k != c)
                hits += np.linalg.norm(value - b[c]) < others
                total += 1
    assert total > 100 and hits / total >= 0.9
    for d in descriptors:  # pixels differ between images (per-image jitter), never an exact copy
        for c, value in d.items():
            assert sum(np.array_equal(value, e[c]) for e in descriptors if c in e) == 1


def test_appearances_up_to_32_classes_are_distinct():
    """Same texture kind -> clearly different colours or (modulo the texture's symmetry) angle."""
    symmetry = {"checker": 90.0, "dots": 90.0, "grid": 90.0, "rings": None, "grain": None}
    for a, b in itertools.combinations(range(1, 33), 2):
        kind_a, angle_a, _, first_a, second_a = _class_appearance(a)
        kind_b, angle_b, _, first_b, second_b = _class_appearance(b)
        if kind_a != kind_b:
            continue
        colour = max(np.linalg.norm(first_a - first_b), np.linalg.norm(second_a - second_b))
        period = symmetry.get(kind_a, 180.0)
        turn = 0.0 if period is None else abs((math.degrees(angle_a - angle_b) + period / 2) % period - period / 2)
        assert colour >= 60 or turn >= 20, (a, b, kind_a, colour, turn)


def test_dataset_folder_loads_and_bad_arguments_raise(tmp_path):
    root = make_textured_shapes_dataset(tmp_path / "shapes", num_images=5, size=64, num_classes=10, seed=3)
    names = json.loads((root / "id2label.json").read_text())
    assert names == {"0": "background", **{str(c): TEXTURE_CLASS_NAMES[c - 1] for c in range(1, 9)},
                     "9": "class-9", "10": "class-10"}
    assert sorted(p.name for p in (root / "images").iterdir()) == [f"{i:04d}.png" for i in range(5)]
    dataset = load_segmentation_dataset(root)
    assert len(dataset) == 5
    for i in range(5):
        labels = load_label_map(dataset[i]["mask"])
        expected_image, expected = make_textured_shapes_sample(np.random.default_rng([3, i]), 64, 10)
        assert np.array_equal(labels, expected) and labels.max() <= 10
        with Image.open(root / "masks" / f"{i:04d}.png") as mask, Image.open(root / "images" / f"{i:04d}.png") as image:
            assert mask.mode == "L" and image.mode == "RGB"
            assert np.array_equal(np.asarray(image), np.asarray(expected_image))
    masks = [np.asarray(Image.open(root / "masks" / f"{i:04d}.png")) for i in range(5)]
    assert all(not np.array_equal(x, y) for x, y in itertools.combinations(masks, 2))
    # Sample i depends on (seed, i) only: a shorter run writes the same first files.
    short = make_textured_shapes_dataset(tmp_path / "short", num_images=2, size=64, num_classes=10, seed=3)
    assert (short / "masks" / "0001.png").read_bytes() == (root / "masks" / "0001.png").read_bytes()
    other = make_textured_shapes_dataset(tmp_path / "other", num_images=1, size=64, num_classes=10, seed=4)
    assert (other / "masks" / "0000.png").read_bytes() != (root / "masks" / "0000.png").read_bytes()

    for kwargs in ({"size": 16}, {"size": (32, 31)}, {"num_classes": 0}, {"num_classes": -1}, {"class_ids": [9]},
                   {"class_ids": [0]}, {"class_ids": []}, {"class_ids": [2, 2]}, {"classes_per_image": (3, 2)},
                   {"classes_per_image": (0, 2)}):
        with pytest.raises(ValueError):
            make_textured_shapes_sample(0, **{"size": 64, **kwargs})
    with pytest.raises(ValueError):
        make_textured_shapes_dataset(tmp_path / "none", num_images=0)
    assert make_textured_shapes_sample(0, 32, num_classes=1)[1].max() == 1


@pytest.mark.parametrize("task", ["sam2-unet", "visual-prompt"])
def test_a_negative_demo_seed_is_refused_by_name(tmp_path, task):
    from dsunet_hf.cli import main as cli_main
    from dsunet_hf.synthetic import make_camouflage_dataset

    # Was: numpy's "expected non-negative integer", naming neither --seed nor its value.
    with pytest.raises(ValueError, match=r"^seed \(--seed\) must be an integer >= 0, got -1$"):
        make_camouflage_dataset(tmp_path / "data", num_pairs=1, seed=-1)
    with pytest.raises(SystemExit, match=r"^demo: seed \(--seed\) must be an integer >= 0, got -1"):
        cli_main(["demo", "--task", task, "--seed", "-1", "--max-steps", "1", "--output-dir", str(tmp_path / "demo")])
    assert not (tmp_path / "demo").exists() or not any((tmp_path / "demo").rglob("*.png"))  # refused before generating


def test_too_elongated_sizes_raise_instead_of_looping_forever():
    import threading

    from dsunet_hf.synthetic import make_camouflage_sample

    # Was: the redraw loop never met the area limits on a 16x300 image (shapes are sized by the shorter side) and
    # never returned. Run in a thread so that the old code fails here instead of hanging the suite.
    outcome = {}

    def call(make, size):
        try:
            make(0, size)
            outcome[size] = "returned"
        except ValueError as error:
            outcome[size] = str(error)

    for make, size in ((make_camouflage_sample, (16, 300)), (make_textured_shapes_sample, (32, 4000))):
        thread = threading.Thread(target=call, args=(make, size), daemon=True)
        thread.start()
        thread.join(timeout=20)
        assert size in outcome, f"{make.__name__}{size} did not return"
        assert outcome[size].startswith(f"size {size[0]}x{size[1]}: no ") and "too elongated" in outcome[size]
    # Ordinary shapes are unchanged (same draws): square and moderately elongated sizes still generate.
    assert make_camouflage_sample(0, (64, 512))[1].size == (512, 64)


def test_a_short_visual_prompt_demo_warms_up_for_less_than_its_run(tmp_path, monkeypatch):
    import dsunet_hf.training
    from dsunet_hf.demo import run_visual_prompt_demo

    # Was: 20 warm-up steps whatever --max-steps, so `demo --task visual-prompt --max-steps 3` warned to pass a
    # --warmup-steps that the demo does not take.
    seen = []

    def fake_train(args):
        seen.append(args)
        raise KeyboardInterrupt  # stop before training: only the arguments are checked

    monkeypatch.setattr(dsunet_hf.training, "train", fake_train)
    for max_steps, warmup in ((3, 0), (600, 20)):
        with pytest.raises(KeyboardInterrupt):
            run_visual_prompt_demo(tmp_path / str(max_steps), max_steps=max_steps, num_images=2, num_test_images=1,
                                   image_size=32)
        assert (seen[-1].max_steps, seen[-1].warmup_steps) == (max_steps, warmup)


@pytest.mark.parametrize("args, folder", [
    ([], "demo"), (["--task", "visual-prompt"], "demo-visual-prompt"), (["--task=visual-prompt"], "demo-visual-prompt"),
    (["--data", "visual-prompt"], "demo"),
])
def test_demo_sh_gives_each_task_its_own_output_folder(tmp_path, args, folder):
    import os
    import subprocess
    import sys
    from pathlib import Path

    # Was: always --output-dir outputs/demo, so `bash examples/demo.sh --task visual-prompt` started afresh there and
    # deleted the SAM2-UNet demo's trained model. `python` (but `-c`, the torch check on a stub torch in range) and
    # `dsunet-hf` are stubbed.
    repo = Path(__file__).resolve().parents[1]
    bin_dir, log, site = tmp_path / "bin", tmp_path / "calls.log", tmp_path / "site"
    bin_dir.mkdir()
    (site / "torch").mkdir(parents=True)
    (site / "torch" / "__init__.py").write_text("__version__ = '2.13.0'\n")
    (bin_dir / "python").write_text(f'#!/usr/bin/env bash\nif [ "$1" = "-c" ]; then exec "{sys.executable}" "$@"; fi\n')
    (bin_dir / "dsunet-hf").write_text(f'#!/usr/bin/env bash\necho "$*" >> "{log}"\n')
    for stub in bin_dir.iterdir():
        stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(site)}
    subprocess.run(["bash", str(repo / "examples" / "demo.sh"), *args], env=env, check=True, timeout=60, cwd=tmp_path)
    command = log.read_text().split()
    assert command[:2] == ["demo", "--output-dir"] and command[3:] == args
    assert Path(command[2]).resolve() == repo / "outputs" / folder

"""Does multi-class SAM2-UNet (or DSU-Net) training work? A tiny model trained for a few minutes on CPU on
generated textured-shape scenes (background + ``--num-classes`` texture classes), scored on scenes it never saw.

    python benchmarks/multiclass_learns.py --max-steps 400
    python benchmarks/multiclass_learns.py --model dsunet --max-steps 200

RANDOM backbones (no weights can be downloaded here; strategy ``full``): SAM2-UNet a 5-block Hiera; DSU-Net the
same Hiera plus a 2-layer DINOv2 (hidden 64) at 112 px (DSU-Net's steps are slower: its 200 steps took 13 min on
a shared 2-core CPU, SAM2-UNet's 400 under 2 min; ``--max-steps 4 --train-images 16`` is a 1-2 min smoke run).
Held-out mIoU of the model vs two trivial predictions: every pixel background, and each pixel the class most
frequent at that position in the training labels. Prints JSON; not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from dsunet_hf.data import load_segmentation_dataset
from dsunet_hf.demo import DEMO_HIERA
from dsunet_hf.image_io import load_label_map
from dsunet_hf.metrics import SemanticSegmentationMetrics
from dsunet_hf.predict import load_model_and_processor
from dsunet_hf.semantic import evaluate_semantic
from dsunet_hf.synthetic import make_textured_shapes_dataset
from dsunet_hf.training import TrainingArguments, train


def baseline_miou(labels: list[np.ndarray], predict, num_labels: int) -> float:
    metrics = SemanticSegmentationMetrics(num_labels)
    for label in labels:
        metrics.update(predict(label.shape), label)
    return metrics.compute()["mIoU"]


# The tiny random backbones (the Hiera the demo trains, for DSU-Net also a 2-layer DINOv2 on a 112 px view).
CONFIG_OVERRIDES = {
    "sam2-unet": {"hiera_config": DEMO_HIERA, "rfb_channels": 32},
    "dsunet": {"hiera_config": DEMO_HIERA, "decoder_channels": 32, "dino_preset": "small", "dino_image_size": 112,
               "dino_config": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                               "image_size": 112, "patch_size": 14}},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="sam2-unet", choices=sorted(CONFIG_OVERRIDES))
    parser.add_argument("--output-dir", default=None, help="default: outputs/multiclass_learns[_dsunet]")
    parser.add_argument("--num-classes", type=int, default=3)
    parser.add_argument("--train-images", type=int, default=160)
    parser.add_argument("--held-out-images", type=int, default=48)
    parser.add_argument("--max-steps", type=int, default=400)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    args = parser.parse_args()

    # A run starts afresh in its folder: each model has its own, so one run does not delete the other's.
    output = Path(args.output_dir or "outputs/multiclass_learns" + ("_dsunet" if args.model == "dsunet" else ""))
    size = (args.image_size, args.image_size)
    train_data = make_textured_shapes_dataset(output / "train", args.train_images, size, args.num_classes, seed=0)
    held_out_data = make_textured_shapes_dataset(output / "held_out", args.held_out_images, size, args.num_classes,
                                                 seed=1)
    start = time.time()
    summary = train(TrainingArguments(
        overwrite_output_dir=True,  # a re-run starts afresh
        model=args.model, train_data=str(train_data), output_dir=str(output / "run"), backbone="random",
        backbone_preset="tiny", config_overrides=json.dumps(CONFIG_OVERRIDES[args.model]),
        finetune_strategy="full", image_size=args.image_size, batch_size=args.batch_size,
        max_steps=args.max_steps, learning_rate=args.learning_rate, lr_schedule="cosine", validation_ratio=0.1,
        eval_steps=max(1, args.max_steps // 4), save_steps=args.max_steps, report_to="none", progress=False,
    ))
    train_seconds = time.time() - start
    model, _ = load_model_and_processor(summary["model_dir"])
    held_out = load_segmentation_dataset(str(held_out_data))
    scores = evaluate_semantic(model, held_out)

    num_labels = args.num_classes + 1
    train_labels = [load_label_map(row["mask"]) for row in load_segmentation_dataset(str(train_data))]
    held_out_labels = [load_label_map(row["mask"]) for row in held_out]
    counts = np.zeros((num_labels, *size), dtype=np.int64)
    for label in train_labels:
        counts[label, np.arange(size[0])[:, None], np.arange(size[1])[None, :]] += 1
    positional_mode = counts.argmax(0)
    print(json.dumps({
        "model": args.model, "num_labels": num_labels, "train_images": args.train_images,
        "held_out_images": args.held_out_images,
        "steps": summary["global_step"], "image_size": args.image_size, "train_seconds": round(train_seconds, 1),
        "held_out_mIoU": {
            "model": round(scores["mIoU"], 4),
            "all_background": round(baseline_miou(held_out_labels, lambda shape: np.zeros(shape, np.int64),
                                                  num_labels), 4),
            "positional_mode": round(baseline_miou(held_out_labels, lambda shape: positional_mode, num_labels), 4),
        },
        "model_per_class_iou": {k: round(v, 4) for k, v in scores["per_class_iou"].items()},
        "model_pixel_accuracy": round(scores["aAcc"], 4),
    }, indent=2))


if __name__ == "__main__":
    main()

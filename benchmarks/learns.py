"""Does training work? A tiny SAM2-UNet trained for a few minutes on CPU vs two trivial baselines.

    python benchmarks/learns.py --data ../shared/data/ECSSD --max-steps 600 --output-dir outputs/learns

Trains on the first ``--train-count`` pairs (sorted by name) from a RANDOM backbone (no weights can be
downloaded here; strategy ``full``), then scores images it did not train on against an all-background map
and a centred-Gaussian prior. Prints JSON; not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from dsunet_hf.data import find_image_mask_pairs, load_segmentation_dataset
from dsunet_hf.demo import DEMO_HIERA
from dsunet_hf.evaluate import evaluate_model
from dsunet_hf.image_io import load_mask
from dsunet_hf.metrics import SegmentationMetrics, to_uint8_map
from dsunet_hf.predict import load_model_and_processor
from dsunet_hf.training import TrainingArguments, train


def baseline_metrics(dataset, kind: str) -> dict:
    metrics = SegmentationMetrics()
    for item in dataset:
        ground_truth = to_uint8_map(load_mask(item["mask"]))
        height, width = ground_truth.shape
        if kind == "background":
            prediction = np.zeros_like(ground_truth)
        else:  # centred Gaussian, sigma a quarter of each side
            ys = (np.arange(height) - (height - 1) / 2) / (0.25 * height)
            xs = (np.arange(width) - (width - 1) / 2) / (0.25 * width)
            prediction = to_uint8_map(np.exp(-0.5 * (ys[:, None] ** 2 + xs[None, :] ** 2)))
        metrics.update(prediction, ground_truth)
    return metrics.compute()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True)
    parser.add_argument("--output-dir", default="outputs/learns")
    parser.add_argument("--train-count", type=int, default=150)
    parser.add_argument("--max-steps", type=int, default=600)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    args = parser.parse_args()

    output = Path(args.output_dir)
    pairs = find_image_mask_pairs(args.data).pairs  # sorted by name
    folders = {"train": pairs[: args.train_count], "held_out": pairs[args.train_count :]}
    for split, split_pairs in folders.items():  # symlinked split folders in the images/ + masks/ layout
        for kind, index in (("images", 0), ("masks", 1)):
            (output / split / kind).mkdir(parents=True, exist_ok=True)
            for pair in split_pairs:
                link = output / split / kind / Path(pair[index]).name
                if not link.exists():
                    link.symlink_to(Path(pair[index]).resolve())
    start = time.time()
    summary = train(TrainingArguments(
        overwrite_output_dir=True,  # a re-run starts afresh
        train_data=str(output / "train"), output_dir=str(output / "run"), backbone="random",
        backbone_preset="tiny", config_overrides=json.dumps({"hiera_config": DEMO_HIERA, "rfb_channels": 32}),
        finetune_strategy="full", image_size=args.image_size, batch_size=args.batch_size,
        max_steps=args.max_steps, learning_rate=args.learning_rate, lr_schedule="cosine", validation_ratio=0.1,
        eval_steps=max(1, args.max_steps // 4), save_steps=args.max_steps, report_to="none", progress=False,
    ))
    train_seconds = time.time() - start
    held_out = load_segmentation_dataset(str(output / "held_out"))
    model, processor = load_model_and_processor(summary["model_dir"])
    results = {
        "model": evaluate_model(model, processor, held_out, progress=False),
        "all_background": baseline_metrics(held_out, "background"),
        "centred_gaussian": baseline_metrics(held_out, "gaussian"),
    }
    print(json.dumps({
        "data": args.data, "train_pairs": len(folders["train"]), "held_out_pairs": len(held_out),
        "steps": summary["global_step"], "image_size": args.image_size, "train_seconds": round(train_seconds, 1),
        "S-measure": {name: round(r["S-measure"], 4) for name, r in results.items()},
        "MAE": {name: round(r["MAE"], 4) for name, r in results.items()},
        "full": results,
    }, indent=2))

if __name__ == "__main__":
    main()

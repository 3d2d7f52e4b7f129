"""Does the in-context head learn to pick the *prompted* class? A CPU run on generated textured shapes.

    python benchmarks/visual_prompt_learns.py --output-dir outputs/visual-prompt-learns --max-steps 1000
    python benchmarks/visual_prompt_learns.py --smoke   # the whole pipeline at a tiny size (under a minute; no findings)

Data (``dsunet_hf.synthetic.make_textured_shapes_dataset``): every image holds 2-3 textured shape classes on a
textured background; class appearance is fixed per class. Training never sees the last ``--held-out``
classes (default: 8 classes, 1..6 seen); evaluation uses new images of the seen classes and images where
the held-out classes appear next to two seen ones (queries on the held-out classes only).
The model is the in-context head on a tiny RANDOM-initialised, frozen DINOv2 (no weights can be downloaded
here), trained through the shared ``accelerate`` loop (``--model visual-prompt``): one prompt per target,
prompts drawn as masks, boxes, scribbles and points, references from the same or another image.

Each query prompts one class present in the target with a mask on another image of that class, so a
model that ignores the prompt can at best segment "the objects" or one of them. Baselines scored on the
same queries (they are given the target's true label map, which the model never sees):
- ``all objects``: every labelled pixel of the target (right segmentation, no class choice);
- ``random present class``: the exact mask of a class drawn at random among those in the target (chance
  level of picking the prompted class with perfect masks).
And the training-free matcher on the same random backbone. Prints and writes JSON; not part of the tests.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch

import dsunet_hf  # noqa: F401  (registers the Auto classes)
from dsunet_hf.data import load_segmentation_dataset
from dsunet_hf.image_io import load_label_map
from dsunet_hf.models.visual_prompt import (
    VisualPromptForSegmentation,
    VisualPromptMatcher,
    VisualPromptMatcherConfig,
    evaluate_visual_prompt,
    evaluation_episodes,
    index_classes,
)
from dsunet_hf.synthetic import make_textured_shapes_dataset
from dsunet_hf.training import TrainingArguments, train

DINO = {"hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 128, "patch_size": 8}


def oracle_baselines(dataset, classes, present_classes, seed: int) -> dict:
    """Per-class IoU (total I / total U, mean over classes) of the two label-aware baselines on the queries of
    ``classes``; the random guess is among all classes present in the target (``present_classes``)."""
    totals = {"all objects": {}, "random present class": {}}
    for target, value, _ in evaluation_episodes(classes, seed=seed):
        labels = load_label_map(dataset[target]["mask"])
        truth = labels == value
        rng = random.Random(f"{seed}:{target}:{value}")
        guesses = {"all objects": labels > 0, "random present class": labels == rng.choice(present_classes[target])}
        for name, guess in guesses.items():
            i, u = totals[name].get(value, (0.0, 0.0))
            totals[name][value] = (i + float((guess & truth).sum()), u + float((guess | truth).sum()))
    return {name: float(np.mean([i / u for i, u in per_class.values()])) for name, per_class in totals.items()}


# --smoke: small enough to check that the script runs end to end (its numbers say nothing about learning).
SMOKE = {"train_images": 16, "test_images": 4, "image_size": 64, "max_steps": 4, "batch_size": 4, "absent_queries": 2,
         "max_val_samples": 2}


def score(model, dataset, classes, names, seed, absent_queries: int = 100, **kwargs) -> dict:
    result = evaluate_visual_prompt(model, dataset, classes=classes, id2label=names, seed=seed,
                                    absent_queries=absent_queries, **kwargs)
    return {key: result[key] for key in ("mIoU", "query_mIoU", "absent_area", "per_class_iou")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="outputs/visual-prompt-learns")
    parser.add_argument("--train-images", type=int, default=240)
    parser.add_argument("--test-images", type=int, default=48)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--max-steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--num-classes", type=int, default=8, help="texture classes in all")
    parser.add_argument("--held-out", type=int, default=2, help="the last N classes never appear in training")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-val-samples", type=int, default=60, help="validation queries during training")
    parser.add_argument("--absent-queries", type=int, default=100, help="queries of a class absent from the target")
    smoke = ", ".join(f"--{name.replace('_', '-')} {value}" for name, value in SMOKE.items())
    parser.add_argument("--smoke", action="store_true",
                        help=f"tiny defaults for a quick end-to-end check ({smoke}); flags given still win")
    if parser.parse_known_args()[0].smoke:
        parser.set_defaults(**SMOKE)
    args = parser.parse_args()
    seen = list(range(1, args.num_classes - args.held_out + 1))
    unseen = list(range(args.num_classes - args.held_out + 1, args.num_classes + 1))
    out = Path(args.output_dir)
    size = (args.image_size, args.image_size)
    train_dir = make_textured_shapes_dataset(out / "train", args.train_images, size, args.num_classes,
                                             class_ids=seen, seed=args.seed)
    seen_dir = make_textured_shapes_dataset(out / "test-seen", args.test_images, size, args.num_classes,
                                            class_ids=seen, seed=args.seed + 1)
    # Held-out classes always present, next to seen ones (so the model must choose between them).
    unseen_dir = make_textured_shapes_dataset(out / "test-unseen", args.test_images, size, args.num_classes,
                                              class_ids=unseen + seen[:2], seed=args.seed + 2)
    names = json.loads((train_dir / "id2label.json").read_text())
    overrides = {"dino_preset": "small", "dino_config": {**DINO, "image_size": args.image_size},
                 "image_size": args.image_size, "hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 256,
                 "num_decoder_layers": 3, "num_queries": 16, "projection_dim": 64}
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    summary = train(TrainingArguments(
        overwrite_output_dir=True,  # a re-run starts afresh
        train_data=str(train_dir), model="visual-prompt", output_dir=str(out / "run"), backbone="random",
        config_overrides=json.dumps(overrides), max_steps=args.max_steps, batch_size=args.batch_size,
        # 20 warm-up steps (fewer for a short run, --smoke: the script has no --warmup-steps to follow a warning)
        learning_rate=args.learning_rate, warmup_steps=min(20, args.max_steps // 10), lr_schedule="cosine",
        eval_steps=max(1, args.max_steps // 4),
        max_val_samples=args.max_val_samples, report_to="none", progress=False, seed=args.seed, validation_ratio=0.1,
    ))
    train_seconds = time.perf_counter() - started
    model = VisualPromptForSegmentation.from_pretrained(out / "run" / "model")

    # The matcher on the same random backbone (its last block), for comparison.
    matcher = VisualPromptMatcher(VisualPromptMatcherConfig(dino_preset="small", dino_config=overrides["dino_config"],
                                                            image_size=args.image_size))
    matcher.backbone.load_state_dict(model.backbone.state_dict())

    report = {"command": "python benchmarks/visual_prompt_learns.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "smoke") + (" --smoke" if args.smoke else ""),
        "train_seconds": round(train_seconds, 1), "steps": summary["global_step"],
        "trainable_parameters": model.num_parameters_summary(), "torch": torch.__version__}
    for split, folder in (("seen classes", seen_dir), ("held-out classes", unseen_dir)):
        dataset = load_segmentation_dataset(folder)
        present_classes = index_classes(dataset)
        classes = present_classes
        if split == "held-out classes":  # queries on the held-out classes only
            classes = [tuple(c for c in present if c in unseen) for present in present_classes]
        common = (dataset, classes, names, args.seed, args.absent_queries)
        results = {f"head ({mode})": score(model, *common, mode=mode) for mode in ("prompt", "generic", "referring")}
        results["head (prompt), box prompts"] = score(model, *common, prompt_kind="box")
        results["head (prompt), point prompts"] = score(model, *common, prompt_kind="point")
        results["matcher (same random backbone)"] = score(matcher, *common)
        baselines = oracle_baselines(dataset, classes, present_classes, args.seed)
        results.update({k: {"mIoU": v} for k, v in baselines.items()})
        results["num_queries"] = len(evaluation_episodes(classes, seed=args.seed))
        report[split] = results
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

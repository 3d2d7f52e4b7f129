"""The README's main job: a short fine-tune on built-in (generated) or given data, then evaluation,
predictions, an overlay contact sheet and a saved artifact with its card."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

# A SAM2 Hiera small enough to fine-tune on a laptop CPU in a couple of minutes (used with a random init).
DEMO_HIERA = dict(
    hidden_size=32, num_attention_heads=1, blocks_per_stage=[1, 1, 2, 1], embed_dim_per_stage=[32, 64, 128, 256],
    num_attention_heads_per_stage=[1, 1, 2, 2], window_size_per_stage=[8, 4, 4, 4], global_attention_blocks=[3],
)


def run_demo(
    output_dir: str | Path = "outputs/demo",
    data: str | None = None,
    backbone: str | None = None,
    backbone_preset: str = "tiny",
    max_steps: int = 150,
    num_pairs: int = 96,
    image_size: int = 128,
    batch_size: int = 8,
    seed: int = 0,
) -> dict:
    from .data import dataset_name
    from .evaluate import format_table, write_report
    from .files import save_image_atomic
    from .image_io import load_image, load_mask
    from .predict import contact_sheet, load_model_and_processor, predict_files
    from .synthetic import check_seed, make_camouflage_dataset
    from .training import TrainingArguments, train

    check_seed(seed)  # before the data is generated or --data is split with it
    output_dir = Path(output_dir)
    if data is None:
        data = str(make_camouflage_dataset(output_dir / "synthetic-camouflage", num_pairs=num_pairs,
                                           size=(image_size, image_size), seed=seed))
        print(f"generated {num_pairs} camouflage-like image/mask pairs in {data} (pass --data PATH for real data)")
    if backbone is None:
        print("No --backbone given: the SAM 2 Hiera backbone is a small RANDOMLY INITIALISED one, trained from")
        print("scratch with everything else (no weights can be downloaded here). Pass --backbone facebook/sam2-hiera-tiny")
        print("(with --backbone-preset tiny) to fine-tune adapters on real SAM 2 weights where the network allows.")
        overrides = {"hiera_config": DEMO_HIERA, "rfb_channels": 32}
        strategy, backbone_arg = "full", "random"
    else:
        overrides, strategy, backbone_arg = {}, "adapter", backbone
    args = TrainingArguments(
        overwrite_output_dir=True,  # a re-run starts afresh
        train_data=str(data), model="sam2-unet", output_dir=str(output_dir / "train"), backbone=backbone_arg,
        backbone_preset=backbone_preset, config_overrides=json.dumps(overrides), finetune_strategy=strategy,
        image_size=image_size, max_steps=max_steps, batch_size=batch_size, eval_steps=max(1, max_steps // 3),
        save_steps=max(1, max_steps // 3), validation_ratio=0.2, seed=seed, logging_steps=10, report_to="none",
        lr_schedule="cosine",
    )
    summary = train(args)
    model_dir = Path(summary["model_dir"])
    model, processor = load_model_and_processor(str(model_dir))

    from .data import load_segmentation_dataset, train_validation_split

    _, validation = train_validation_split(load_segmentation_dataset(str(data), split="train"), 0.2, seed)
    from .evaluate import evaluate_model

    results = {dataset_name(str(data)) + " (validation)": evaluate_model(model, processor, validation, progress=False)}
    json_path, markdown_path = write_report(results, output_dir / "evaluation")
    print(format_table(results))

    images = [validation[i]["image"] for i in range(len(validation))]
    # The demo's own folder: a re-run (perhaps on other --data) starts afresh, as training does, rather than leaving
    # the earlier run's predictions beside this one's.
    shutil.rmtree(output_dir / "predictions", ignore_errors=True)
    report = predict_files(model, processor, images, output_dir / "predictions", overlay=True, overwrite=True,
                           progress=False)
    rows = []
    for item in [validation[i] for i in range(min(8, len(validation)))]:
        name = Path(item["image"]).stem
        probability = np.asarray(load_image(output_dir / "predictions" / "masks" / f"{name}.png").convert("L"),
                                 dtype=np.float32) / 255
        rows.append((load_image(item["image"]), load_mask(item["mask"]), probability))
    save_image_atomic(contact_sheet(rows), output_dir / "contact_sheet.png")
    print(f"model (with its card): {model_dir}")
    print(f"evaluation: {json_path}, {markdown_path}")
    print(f"predictions: {report.summary()} -> {output_dir / 'predictions'}")
    print(f"contact sheet (image | ground truth | prediction): {output_dir / 'contact_sheet.png'}")
    return {"model_dir": str(model_dir), "metrics": results, "contact_sheet": str(output_dir / "contact_sheet.png")}


# A DINOv2 small enough to run the visual-prompt demo on a CPU (random init: no weights can be downloaded).
DEMO_DINO = {"hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 128,
             "patch_size": 8}


def run_visual_prompt_demo(output_dir: str | Path = "outputs/demo-visual-prompt", max_steps: int = 600,
                           num_images: int = 160, num_test_images: int = 24, image_size: int = 128,
                           batch_size: int = 8, seed: int = 0) -> dict:
    """Visual prompting in miniature: generated textured-shape classes, a short training of the in-context head
    (``--model visual-prompt``), the per-class IoU evaluation, and prompt -> target overlay panels."""
    from .data import load_segmentation_dataset
    from .evaluate import VISUAL_PROMPT_PROTOCOL, format_table, write_report
    from .image_io import load_label_map
    from .models.visual_prompt import VisualPromptForSegmentation, evaluate_visual_prompt, index_classes
    from .prompt_predict import predict_with_prompts
    from .synthetic import check_seed, make_textured_shapes_dataset
    from .training import TrainingArguments, train

    check_seed(seed)
    output_dir = Path(output_dir)
    size = (image_size, image_size)
    train_dir = make_textured_shapes_dataset(output_dir / "shapes-train", num_images, size, seed=seed)
    test_dir = make_textured_shapes_dataset(output_dir / "shapes-test", num_test_images, size, seed=seed + 1)
    print(f"generated {num_images} training and {num_test_images} test images of 8 textured shape classes in {output_dir}")
    print("The DINOv2 backbone is a small RANDOMLY INITIALISED one (no weights can be downloaded here); the")
    print("in-context head learns on top of its frozen features.")
    overrides = {"dino_preset": "small", "dino_config": {**DEMO_DINO, "image_size": image_size}, "image_size": image_size,
                 "hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 256, "num_decoder_layers": 3,
                 "num_queries": 16, "projection_dim": 64}
    summary = train(TrainingArguments(
        overwrite_output_dir=True,  # a re-run starts afresh
        train_data=str(train_dir), model="visual-prompt", output_dir=str(output_dir / "train"), backbone="random",
        config_overrides=json.dumps(overrides), max_steps=max_steps, batch_size=batch_size, learning_rate=1e-3,
        # 20 warm-up steps, fewer for a short --max-steps: the demo has no --warmup-steps to follow the warning's advice.
        warmup_steps=min(20, max_steps // 10), lr_schedule="cosine", eval_steps=max(1, max_steps // 3), max_val_samples=40,
        validation_ratio=0.1, seed=seed, report_to="none",
    ))
    model = VisualPromptForSegmentation.from_pretrained(summary["model_dir"])
    test = load_segmentation_dataset(str(test_dir))
    names = json.loads((test_dir / "id2label.json").read_text())
    scores = evaluate_visual_prompt(model, test, id2label=names, seed=seed, absent_queries=40)
    per_class, counts = scores.pop("per_class_iou"), scores.pop("counts")
    results = {"textured shapes (test)": scores}
    json_path, markdown_path = write_report(results, output_dir / "evaluation",
                                            extra={"per_class_iou": per_class, "query_counts": counts},
                                            protocol=VISUAL_PROMPT_PROTOCOL)
    print(format_table(results))
    # Prompt the first test image's first class with a box around it, find it in the other test images.
    classes = index_classes(test)
    labels = load_label_map(test[0]["mask"]) == classes[0][0]
    rows, cols = np.nonzero(labels)
    box = f"box:{cols.min()},{rows.min()},{cols.max() + 1},{rows.max() + 1}"
    # Five images that contain the class and three that do not (the answer there is an empty mask).
    value = classes[0][0]
    with_class = [i for i in range(1, len(test)) if value in classes[i]][:5]
    without = [i for i in range(1, len(test)) if value not in classes[i]][:3]
    targets = [test[i]["image"] for i in with_class + without]
    shutil.rmtree(output_dir / "predictions", ignore_errors=True)  # a re-run starts afresh (see run_demo)
    report = predict_with_prompts(model, [test[0]["image"]], [box], targets, output_dir / "predictions", overlay=True,
                                  overwrite=True, progress=False)
    print(f"model (with its card): {summary['model_dir']}")
    print(f"evaluation: {json_path}, {markdown_path}")
    print(f"prompt {box} on {test[0]['image']} ({names[str(classes[0][0])]}): {report.summary()} -> "
          f"{output_dir / 'predictions'} (overlays/: reference with the prompt | target with the result)")
    return {"model_dir": summary["model_dir"], "metrics": results, "predictions": str(output_dir / "predictions")}

"""``dsunet-hf``: predict, convert, push, info, and a demo on the built-in sample data."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SAMPLE_DATA = Path(__file__).resolve().parents[2] / "examples" / "sample_data"


def _predict(args) -> int:
    import torch

    from .predict import load_model_and_processor, predict_files

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    model, processor = load_model_and_processor(args.model, device=args.device, dtype=dtype)
    report = predict_files(
        model, processor, args.inputs, args.output_dir, batch_size=args.batch_size, threshold=args.threshold,
        minmax_normalize=args.minmax_normalize, overlay=args.overlay, cutout=args.cutout, overwrite=args.overwrite,
    )
    print(f"{report.summary()} -> {args.output_dir}")
    for path, reason in report.failed.items():
        print(f"  skipped {path}: {reason}", file=sys.stderr)
    return 1 if report.failed and not report.written else 0


def _convert(args) -> int:
    if args.kind == "sam2-unet":
        from .convert.sam2_unet import convert_sam2_unet_checkpoint
        from .finetune import trainable_summary

        model = convert_sam2_unet_checkpoint(
            args.source, args.output, backbone_repo_id=args.backbone_repo_id,
            backbone_revision=args.backbone_revision, include_backbone=args.include_backbone,
        )
        print(f"converted {args.source} -> {args.output} ({trainable_summary(model)})")
    else:  # sam2-hiera: Meta's .pt -> a transformers Sam2HieraDetModel folder usable as backbone_repo_id
        from transformers import Sam2HieraDetModel

        from .backbones.hiera import hiera_config, infer_hiera_preset
        from .convert.sam2 import trunk_state_dict_from_sam2_checkpoint

        state_dict = trunk_state_dict_from_sam2_checkpoint(args.source)
        preset = infer_hiera_preset(state_dict, str(args.source))
        trunk = Sam2HieraDetModel(hiera_config(preset))
        trunk.load_state_dict(state_dict, strict=True)
        trunk.save_pretrained(args.output)
        print(f"converted {args.source} -> {args.output} (Hiera {preset}, {len(state_dict)} tensors)")
    return 0


def _push(args) -> int:
    from .hub import upload_folder_to_hub

    folder = Path(args.folder)
    for required in ("config.json", "model.safetensors"):
        if not (folder / required).is_file():
            raise SystemExit(f"{folder}: not a saved model folder (no {required}); run save_pretrained first")
    repo_id = upload_folder_to_hub(folder, args.repo_id, commit_message=args.commit_message, private=args.private)
    print(f"pushed {folder} -> https://huggingface.co/{repo_id}")
    return 0


def _info(args) -> int:
    import torch
    import transformers

    from . import __version__

    print(f"dsunet-hf {__version__} | torch {torch.__version__} | transformers {transformers.__version__}")
    if args.model:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(args.model)
        print(json.dumps(config.to_diff_dict(), indent=2, default=str))
    else:
        print("models: sam2_unet (Sam2UNetForImageSegmentation)")
    return 0


def _demo(args) -> int:
    """Build (or load) a model, save it as a trainable-only artifact plus a self-contained copy, reload it
    and predict the built-in sample images. Without --model, the model is a tiny SAM2-UNet with random
    weights: the run exercises the whole pipeline; its masks are not meaningful."""
    import torch

    from .finetune import trainable_summary
    from .predict import load_model_and_processor, predict_files

    output_dir = Path(args.output_dir)
    if args.model:
        model, processor = load_model_and_processor(args.model)
    else:
        from .models.sam2_unet import Sam2UNetConfig, Sam2UNetForImageSegmentation

        print("No --model given and no weights can be downloaded here: using a tiny SAM2-UNet with random")
        print("weights (the masks below are NOT meaningful; pass --model <your fine-tuned repo> for real ones).")
        torch.manual_seed(0)
        config = Sam2UNetConfig(
            backbone_preset="tiny",
            hiera_config=dict(blocks_per_stage=[1, 1, 2, 1], global_attention_blocks=[3]),
            rfb_channels=32,
            image_size=352,
        )
        model = Sam2UNetForImageSegmentation(config).eval()
        model.save_pretrained(output_dir / "model-adapters-only")
        model.save_pretrained(output_dir / "model", include_backbone=True)
        model.default_image_processor().save_pretrained(output_dir / "model")
        print(f"saved {output_dir / 'model'} (self-contained) and {output_dir / 'model-adapters-only'}")
        model, processor = load_model_and_processor(str(output_dir / "model"))
    print(trainable_summary(model))
    if not args.inputs and not SAMPLE_DATA.is_dir():
        raise SystemExit(f"{SAMPLE_DATA}: built-in samples not found (installed from a wheel?); pass image paths")
    inputs = args.inputs or [str(SAMPLE_DATA / "ECSSD" / "images"), str(SAMPLE_DATA / "Kvasir-SEG" / "images")]
    report = predict_files(model, processor, inputs, output_dir / "predictions", overlay=True, cutout=True,
                           overwrite=True)
    print(f"{report.summary()} -> {output_dir / 'predictions'} (masks/, overlays/, cutouts/)")
    return 0 if report.written else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dsunet-hf", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    predict = commands.add_parser("predict", help="predict masks for images or folders")
    predict.add_argument("--model", required=True, help="artifact folder or Hub repo id")
    predict.add_argument("inputs", nargs="+", help="image files and/or folders")
    predict.add_argument("--output-dir", default="predictions")
    predict.add_argument("--batch-size", type=int, default=4)
    predict.add_argument("--threshold", type=float, default=None, help="write binary masks (p >= threshold)")
    predict.add_argument("--minmax-normalize", action="store_true", help="upstream test.py's per-image min-max")
    predict.add_argument("--overlay", action="store_true", help="also write overlays/")
    predict.add_argument("--cutout", action="store_true", help="also write RGBA cut-outs/")
    predict.add_argument("--overwrite", action="store_true", help="recompute masks that already exist")
    predict.add_argument("--device", default=None)
    predict.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    predict.set_defaults(func=_predict)

    convert = commands.add_parser("convert", help="convert an original checkpoint")
    convert.add_argument("kind", choices=["sam2-unet", "sam2-hiera"])
    convert.add_argument("source", help="SAM2UNet-*.pth, or Meta's sam2*_hiera_*.pt")
    convert.add_argument("output", help="output folder")
    convert.add_argument("--backbone-repo-id", default=None, help="default: Meta's SAM 2.0 repo of the size")
    convert.add_argument("--backbone-revision", default=None)
    convert.add_argument("--include-backbone", action="store_true", help="write a self-contained copy")
    convert.set_defaults(func=_convert)

    push = commands.add_parser("push", help="upload a saved artifact folder to the Hub")
    push.add_argument("folder")
    push.add_argument("repo_id")
    push.add_argument("--private", action="store_true")
    push.add_argument("--commit-message", default="Upload fine-tuned model with dsunet-hf")
    push.set_defaults(func=_push)

    info = commands.add_parser("info", help="versions, or a saved model's config")
    info.add_argument("model", nargs="?")
    info.set_defaults(func=_info)

    demo = commands.add_parser("demo", help="end-to-end run on the built-in sample images")
    demo.add_argument("--model", default=None)
    demo.add_argument("--output-dir", default="outputs/demo")
    demo.add_argument("inputs", nargs="*", help="images/folders (default: examples/sample_data)")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import dsunet_hf  # noqa: F401  (registers the Auto classes)

    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

"""LoRA fine-tuned models at inference: unmerged (as trained) vs merged into the frozen weights (``merge_lora``,
what ``dsunet-hf predict`` / ``evaluate`` / ``export`` do). JSON on stdout.

    python benchmarks/lora_merge.py --model birefnet --preset BiRefNet_lite [--device cuda] [--dtype bfloat16]
    python benchmarks/lora_merge.py --model sam2-unet --preset large --batch-size 4

Random weights, LoRA B matrices drawn non-zero (as after fine-tuning), both copies in memory and timed
alternately (see inference.run_interleaved), at the model's native size; also the largest logit difference
between the two. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform

import torch
from inference import emit, native_inputs, prepare, run_interleaved


def build_lora(model_name: str, preset: str | None):
    from dsunet_hf.models import get_model_spec

    spec = get_model_spec(model_name)
    if model_name == "birefnet":
        config = spec.config_class.from_variant(preset or "BiRefNet", finetune_strategy="lora")
    elif model_name == "dsunet":
        config = spec.config_class(finetune_strategy="lora", **({"sam_preset": preset} if preset else {}))
    else:
        config = spec.config_class(finetune_strategy="lora", **({"backbone_preset": preset} if preset else {}))
    model = spec.model_class(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.02)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="birefnet", choices=["sam2-unet", "dsunet", "birefnet"])
    parser.add_argument("--preset", default=None, help="sam2-unet/dsunet: tiny..large; birefnet: variant")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    args.compile, args.channels_last = False, False  # what inference.prepare reads
    device = torch.device(args.device)
    torch.manual_seed(0)
    unmerged = build_lora(args.model, args.preset).to(device)
    merged = copy.deepcopy(unmerged)
    layers = merged.merge_lora()
    inputs = native_inputs(unmerged.config, args.batch_size, device)
    with torch.inference_mode():
        difference = float((unmerged(**inputs).logits - merged(**inputs).logits).abs().max())
    steps = {name: prepare(model, lambda m, x: m(**x).logits, inputs, args, device)
             for name, model in (("unmerged", unmerged), ("merged", merged))}
    report = {
        "benchmark": "lora_merge", "date": datetime.date.today().isoformat(), "model": args.model,
        "preset": args.preset, "batch_size": args.batch_size, "dtype": args.dtype,
        "input_shape": list(inputs["pixel_values"].shape), "lora_layers_merged": layers,
        "lora_rank": unmerged.config.lora_rank, "max_abs_logit_difference": difference,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
        "torch": torch.__version__, "platform": platform.platform(), "timing": "interleaved",
    }
    report.update(run_interleaved(steps, args.batch_size, args, device))
    report["merged_over_unmerged_throughput"] = round(
        report["merged"]["images_per_second"] / report["unmerged"]["images_per_second"], 3)
    emit(report)


if __name__ == "__main__":
    main()

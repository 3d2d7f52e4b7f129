"""Training speed and peak memory per fine-tuning strategy, with and without gradient checkpointing.

    python benchmarks/training.py --model sam2-unet --preset large --batch-size 2 \\
        [--strategies adapter frozen] [--checkpointing both] [--device cuda] [--dtype bfloat16] [--compile] \\
        [--reference /path/to/SAM2-UNet] [--reference-same-flags]
    python benchmarks/training.py --model dsunet --strategies adapter --checkpointing off \\
        --reference /path/to/SAM2DINO-Seg --reference-dinov2 /path/to/dinov2

Each (strategy, checkpointing) runs in a fresh process so that peak memory is its own (CPU: peak RSS; CUDA:
max_memory_allocated). One step = forward with labels, backward, AdamW step, at the model's native size,
random weights. ``--reference`` (sam2-unet, dsunet) times the authors' model doing the same step (adapters,
fusion and decoder train, structure loss on its three outputs, as their train.py) as published: fp32, eager
(``--reference-same-flags`` gives it ``--dtype``/``--compile`` too); each of our runs then carries its
steps/s and peak-memory ratios to it. JSON on stdout. Not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
from inference import environment

STRATEGIES = {"birefnet": ["lora", "frozen", "full"], "dinov2-seg": ["frozen"]}


def peak_memory(device: torch.device) -> dict:
    if device.type == "cuda":
        return {"peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 3)}
    return {"peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}


def timed_steps(step, device: torch.device, warmup: int, steps: int) -> list[float]:
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def one_configuration(args, strategy: str, checkpointing: bool, reference: bool) -> dict:
    from inference import native_inputs

    from dsunet_hf.modeling_utils import enable_activation_checkpointing
    from dsunet_hf.models import get_model_spec

    device = torch.device(args.device)
    torch.manual_seed(0)
    if reference:
        from upstream import build_reference

        from dsunet_hf.losses import structure_loss

        model, maps = build_reference(args.model, args.reference, args.preset, args.reference_dinov2)
        model = model.to(device).train()
        config = get_model_spec(args.model).config_class()  # the same native sizes as ours

        def loss_fn(batch, labels):
            return sum(structure_loss(out, labels) for out in maps(model, batch))
    else:
        spec = get_model_spec(args.model)
        fields = {"finetune_strategy": strategy}
        if args.model == "birefnet":
            config = spec.config_class.from_variant(args.preset or "BiRefNet", **fields)
        else:
            key = "sam_preset" if args.model == "dsunet" else "backbone_preset"
            config = spec.config_class(**fields, **({key: args.preset} if args.preset else {}))
        model = spec.model_class(config).to(device).train()
        if checkpointing:
            enable_activation_checkpointing(model)

        def loss_fn(batch, labels):
            return model(**batch, labels=labels).loss
    batch = native_inputs(config, args.batch_size, device)
    labels = (torch.rand(args.batch_size, 1, *batch["pixel_values"].shape[-2:], device=device) > 0.5).float()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    same_flags = not reference or args.reference_same_flags
    dtype = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype] if same_flags else None
    if args.compile and same_flags:  # compiled forward (loss included for ours); backward through AOTAutograd
        model = torch.compile(model)

    def step():
        precision = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
        with precision:
            loss = loss_fn(batch, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    times = timed_steps(step, device, args.warmup, args.steps)
    return {"strategy": "upstream (adapter)" if reference else strategy, "gradient_checkpointing": checkpointing,
            "trainable_params": sum(p.numel() for p in trainable),
            "step_seconds_median": round(statistics.median(times), 3),
            "steps_per_second": round(1 / statistics.median(times), 4), **peak_memory(device)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sam2-unet")
    parser.add_argument("--preset", default=None)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (the first steps compile)")
    parser.add_argument("--strategies", nargs="+", default=None)
    parser.add_argument("--checkpointing", default="both", choices=["off", "on", "both"])
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--reference", default=None, help="checkout of the authors' repository (sam2-unet, dsunet)")
    parser.add_argument("--reference-dinov2", default=None, help="checkout of facebookresearch/dinov2 (dsunet)")
    parser.add_argument("--reference-same-flags", action="store_true", help="apply --dtype/--compile to it too")
    parser.add_argument("--child", nargs=3, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reference and args.model not in ("sam2-unet", "dsunet"):
        parser.error("--reference trains the authors' SAM2-UNet or DSU-Net only")
    if args.reference and not args.child:  # before our runs: a wrong path must not cost their time
        from upstream import check_reference

        check_reference(args.model, args.reference, args.preset, args.reference_dinov2)
    if args.child:
        strategy, mode, who = args.child
        print(json.dumps(one_configuration(args, strategy, mode == "on", who == "reference")))
        return
    strategies = args.strategies or STRATEGIES.get(args.model, ["adapter", "lora", "frozen", "full"])
    modes = {"off": ["off"], "on": ["on"], "both": ["off", "on"]}[args.checkpointing]
    runs = [(s, m, "ours") for s in strategies for m in modes]
    if args.reference:
        runs.append(("adapter", "off", "reference"))
    results = []
    for strategy, mode, who in runs:
        command = [sys.executable, __file__, *sys.argv[1:], "--child", strategy, mode, who]
        output = subprocess.run(command, capture_output=True, text=True)
        if output.returncode:
            results.append({"strategy": "upstream (adapter)" if who == "reference" else strategy,
                            "gradient_checkpointing": mode == "on", "error": output.stderr.strip().splitlines()[-1:]})
            continue
        results.append(json.loads(output.stdout.strip().splitlines()[-1]))
    reference = next((r for r in results if r["strategy"].startswith("upstream") and "error" not in r), None)
    memory_key = "peak_memory_gib" if torch.device(args.device).type == "cuda" else "peak_rss_gib"
    for result in results:
        if reference and result is not reference and "error" not in result:
            result["steps_per_second_over_reference"] = round(
                result["steps_per_second"] / reference["steps_per_second"], 3)
            result["peak_memory_over_reference"] = round(result[memory_key] / reference[memory_key], 3)
    print(json.dumps({"benchmark": "training", "date": datetime.date.today().isoformat(), "model": args.model,
                      "preset": args.preset, "batch_size": args.batch_size, **environment(torch.device(args.device)),
                      "dtype": args.dtype, "compile": args.compile, "reference_same_flags": args.reference_same_flags,
                      "warmup_steps": args.warmup, "timed_steps": args.steps, "results": results}, indent=2))


if __name__ == "__main__":
    main()

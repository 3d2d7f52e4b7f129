"""Training speed and peak memory per fine-tuning strategy, with and without gradient checkpointing.

    python benchmarks/training.py --model sam2-unet --preset large --batch-size 2 \\
        [--strategies adapter frozen] [--checkpointing both] [--device cuda] [--dtype bfloat16] \\
        [--reference /path/to/SAM2-UNet]

Each (strategy, checkpointing) runs in a fresh process so that peak memory is its own (CPU: peak RSS; CUDA:
max_memory_allocated). One step = forward with labels, backward, AdamW step, at the model's native size,
random weights. ``--reference`` (sam2-unet) times the authors' model doing the same step (adapters and
decoder train, structure loss on its three outputs, as their train.py). JSON on stdout. Not a test.
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


def one_configuration(args, strategy: str, checkpointing: bool) -> dict:
    from inference import native_inputs

    from dsunet_hf.models import get_model_spec

    device = torch.device(args.device)
    torch.manual_seed(0)
    if args.reference:
        from upstream import build_upstream_sam2_unet

        from dsunet_hf.losses import structure_loss

        model = build_upstream_sam2_unet(args.reference).to(device).train()
        size = 352

        def loss_fn(batch, labels):
            return sum(structure_loss(out, labels) for out in model(batch["pixel_values"]))
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
            model.gradient_checkpointing_enable()
        size = None

        def loss_fn(batch, labels):
            return model(**batch, labels=labels).loss
    if size is None:
        batch = native_inputs(model, args.batch_size, device)
    else:
        batch = {"pixel_values": torch.randn(args.batch_size, 3, size, size, device=device)}
    labels = (torch.rand(args.batch_size, 1, *batch["pixel_values"].shape[-2:], device=device) > 0.5).float()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    dtype = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]

    def step():
        precision = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
        with precision:
            loss = loss_fn(batch, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    times = timed_steps(step, device, args.warmup, args.steps)
    return {"strategy": "upstream (adapter)" if args.reference else strategy, "gradient_checkpointing": checkpointing,
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
    parser.add_argument("--strategies", nargs="+", default=None)
    parser.add_argument("--checkpointing", default="both", choices=["off", "on", "both"])
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--reference", default=None, help="checkout of WZH0120/SAM2-UNet (sam2-unet only)")
    parser.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_configuration(args, args.child[0], args.child[1] == "on")))
        return
    strategies = args.strategies or STRATEGIES.get(args.model, ["adapter", "lora", "frozen", "full"])
    modes = {"off": ["off"], "on": ["on"], "both": ["off", "on"]}[args.checkpointing]
    runs = [(s, m) for s in strategies for m in modes]
    if args.reference:
        runs.append(("adapter", "off"))
    results = []
    for index, (strategy, mode) in enumerate(runs):
        reference = args.reference if args.reference and index == len(runs) - 1 else None
        command = [sys.executable, __file__, *sys.argv[1:], "--child", strategy, mode]
        if not reference:
            command = [c for i, c in enumerate(command) if c != "--reference" and (i == 0 or command[i - 1] != "--reference")]
        output = subprocess.run(command, capture_output=True, text=True)
        if output.returncode:
            results.append({"strategy": strategy, "gradient_checkpointing": mode == "on",
                            "error": output.stderr.strip().splitlines()[-1:]})
            continue
        results.append(json.loads(output.stdout.strip().splitlines()[-1]))
    print(json.dumps({"benchmark": "training", "date": datetime.date.today().isoformat(), "model": args.model,
                      "preset": args.preset, "batch_size": args.batch_size, "device": args.device,
                      "dtype": args.dtype, "results": results}, indent=2))


if __name__ == "__main__":
    main()

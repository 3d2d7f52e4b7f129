"""Peak CPU memory and time of one full-size training step (random weights), per batch size.

    python benchmarks/train_memory.py --model dsunet --batch-sizes 1 2 [--preset tiny] [--gradient-checkpointing]

Each batch size runs in a fresh process (peak RSS is per process). Prints JSON; not part of the tests.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def one_step(model_name: str, batch_size: int, checkpointing: bool, preset: str | None = None) -> dict:
    import torch

    from dsunet_hf.modeling_utils import enable_activation_checkpointing
    from dsunet_hf.models import get_model_spec

    spec = get_model_spec(model_name)
    if model_name == "birefnet":  # the preset is a variant (BiRefNet_lite, ...), as in benchmarks/training.py
        config = spec.config_class.from_variant(preset or "BiRefNet")
    else:
        key = "sam_preset" if model_name == "dsunet" else "backbone_preset"
        config = spec.config_class(**({key: preset} if preset else {}))
    model = spec.model_class(config).train()
    if checkpointing:
        enable_activation_checkpointing(model)
    size = model.config.image_size
    height, width = size if isinstance(size, (list, tuple)) else (size, size)  # BiRefNet: [height, width]
    inputs = {"pixel_values": torch.randn(batch_size, 3, height, width)}
    if hasattr(model.config, "dino_image_size"):
        dino = model.config.dino_image_size
        inputs["dino_pixel_values"] = torch.randn(batch_size, 3, dino, dino)
    labels = (torch.rand(batch_size, 1, height, width) > 0.5).float()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    start = time.time()
    model(**inputs, labels=labels).loss.backward()
    optimizer.step()
    return {"model": model_name, "preset": preset, "batch_size": batch_size, "gradient_checkpointing": checkpointing,
            "step_seconds": round(time.time() - start, 1),
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="dsunet")
    parser.add_argument("--preset", default=None, help="size preset (sam2-unet, dsunet: tiny..large; birefnet: "
                                                        "variant); default: the model's full size")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(one_step(args.model, args.child, args.gradient_checkpointing, args.preset)))
        return
    results = []
    for batch_size in args.batch_sizes:
        command = [sys.executable, __file__, "--model", args.model, "--child", str(batch_size)]
        if args.preset:
            command += ["--preset", args.preset]
        if args.gradient_checkpointing:
            command.append("--gradient-checkpointing")
        child = subprocess.run(command, capture_output=True, text=True)
        if child.returncode:  # the child's own last line (a bad --preset, ...), not a CalledProcessError traceback
            last = (child.stderr.strip().splitlines() or [f"exit status {child.returncode} (killed: out of memory?)"])[-1]
            sys.exit(f"train_memory.py: --model {args.model} batch size {batch_size}: {last}")
        results.append(json.loads(child.stdout.strip().splitlines()[-1]))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

"""Artifact size (trainable-only safetensors) and cold-start ``from_pretrained`` time with the frozen
backbone already on disk; JSON on stdout.

    python benchmarks/artifact.py --model sam2-unet --preset large --strategy adapter
    python benchmarks/artifact.py --model birefnet --preset BiRefNet_lite --strategy lora
    python benchmarks/artifact.py --model sam2-unet --preset large --device cuda --dtype bfloat16 --compile

Random weights. The backbone "cache" is a self-contained copy (``save_pretrained(include_backbone=True)``)
that the artifact's config points at, so loading reads it from local disk as it would from the Hub cache.
Load time (to ``--device`` in ``--dtype``) and time to the first prediction (load + one forward at
``--batch-size``, compile included with ``--compile``) are the medians of ``--loads`` fresh processes
(imports excluded). Not a test.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

LOAD = """
import sys, time
import torch
import dsunet_hf  # noqa: F401  (imports are not part of the load time)
from transformers import AutoModelForImageSegmentation
from inference import native_inputs
path, device, dtype, batch, compile_ = sys.argv[1:6]
device, dtype = torch.device(device), getattr(torch, dtype)
start = time.perf_counter()
model = AutoModelForImageSegmentation.from_pretrained(path, dtype=dtype).to(device).eval()
if device.type == "cuda":
    torch.cuda.synchronize(device)
loaded = time.perf_counter() - start
if compile_ == "1":
    model = torch.compile(model)
inputs = {k: v.to(dtype) for k, v in native_inputs(model.config, int(batch), device).items()}
with torch.inference_mode():
    model(**inputs)
if device.type == "cuda":
    torch.cuda.synchronize(device)
print(loaded, time.perf_counter() - start)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sam2-unet")
    parser.add_argument("--preset", default=None)
    parser.add_argument("--strategy", default=None)
    parser.add_argument("--loads", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    from inference import build, environment

    from dsunet_hf.finetune import parameter_counts

    model = build(args.model, args.preset)
    repo_field = {"birefnet": "base_repo_id", "dsunet": "sam_backbone_repo_id"}.get(args.model, "backbone_repo_id")
    with tempfile.TemporaryDirectory() as folder:
        backbone = Path(folder) / "backbone"
        model.save_pretrained(backbone, include_backbone=True)  # stands in for the cached backbone repo
        full_bytes = (backbone / "model.safetensors").stat().st_size
        strategy = args.strategy or model.config.finetune_strategy
        config = model.config.__class__(**{**model.config.to_dict(), "finetune_strategy": strategy,
                                           repo_field: str(backbone)})
        tuned = model.__class__(config)
        tuned.load_frozen_backbones()
        artifact = Path(folder) / "artifact"
        tuned.save_pretrained(artifact)
        size = (artifact / "model.safetensors").stat().st_size
        command = [sys.executable, "-c", LOAD, str(artifact), args.device, args.dtype, str(args.batch_size),
                   "1" if args.compile else "0"]
        runs = [subprocess.run(command, capture_output=True, text=True, check=True, cwd=Path(__file__).parent)
                .stdout.strip().splitlines()[-1].split() for _ in range(args.loads)]
    trainable, total = parameter_counts(tuned)
    print(json.dumps({
        "benchmark": "artifact", "date": datetime.date.today().isoformat(), "model": args.model,
        "preset": args.preset, "strategy": strategy, "trainable_params": trainable, "total_params": total,
        "artifact_mb": round(size / 1e6, 2), "full_fp32_model_mb": round(full_bytes / 1e6, 1),
        "artifact_percent_of_full": round(100 * size / full_bytes, 2),
        **environment(torch.device(args.device)), "dtype": args.dtype, "batch_size": args.batch_size,
        "compile": args.compile, "loads": args.loads,
        "cold_start_load_seconds_median": round(statistics.median(float(r[0]) for r in runs), 2),
        "first_prediction_seconds_median": round(statistics.median(float(r[1]) for r in runs), 2),
    }, indent=2))


if __name__ == "__main__":
    main()

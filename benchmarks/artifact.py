"""Artifact size (trainable-only safetensors) and cold-start ``from_pretrained`` time with the frozen
backbone already on disk; JSON on stdout.

    python benchmarks/artifact.py --model sam2-unet --preset large --strategy adapter
    python benchmarks/artifact.py --model birefnet --preset BiRefNet_lite --strategy lora

Random weights. The backbone "cache" is a self-contained copy (``save_pretrained(include_backbone=True)``)
that the artifact's config points at, so loading reads it from local disk as it would from the Hub cache.
Load time is the median of three fresh processes (imports excluded). Not a test.
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

LOAD = """
import sys, time
import dsunet_hf  # noqa: F401  (imports are not part of the load time)
from transformers import AutoModelForImageSegmentation
start = time.perf_counter()
AutoModelForImageSegmentation.from_pretrained(sys.argv[1])
print(time.perf_counter() - start)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sam2-unet")
    parser.add_argument("--preset", default=None)
    parser.add_argument("--strategy", default=None)
    parser.add_argument("--loads", type=int, default=3)
    args = parser.parse_args()
    from inference import build

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
        times = [float(subprocess.run([sys.executable, "-c", LOAD, str(artifact)], capture_output=True, text=True,
                                      check=True).stdout.strip().splitlines()[-1]) for _ in range(args.loads)]
    trainable, total = parameter_counts(tuned)
    print(json.dumps({
        "benchmark": "artifact", "date": datetime.date.today().isoformat(), "model": args.model,
        "preset": args.preset, "strategy": strategy, "trainable_params": trainable, "total_params": total,
        "artifact_mb": round(size / 1e6, 2), "full_fp32_model_mb": round(full_bytes / 1e6, 1),
        "artifact_percent_of_full": round(100 * size / full_bytes, 2),
        "cold_start_load_seconds_median": round(statistics.median(times), 2),
    }, indent=2))


if __name__ == "__main__":
    main()

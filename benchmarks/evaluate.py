"""`dsunet-hf evaluate` throughput: a model on a folder dataset with the metrics computed in this process and in
worker processes (``--metric-workers``), checked to give the same numbers; JSON on stdout.

    python benchmarks/evaluate.py --data ../shared/data/ECSSD --model sam2-unet --preset tiny --metric-workers 0 2
    python benchmarks/evaluate.py --data .gpu/ECSSD --model sam2-unet --preset large --device cuda --dtype bfloat16 \
        --batch-size 16 --metric-workers 0 8

Random weights (no downloads): the metrics' cost does not depend on the weights. Each setting runs once after a
warm-up pass over the first batch; the seconds cover reading, the model and the metrics (what a user waits for).
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time

import torch
from inference import build, emit

DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a folder dataset (images/ + masks/), e.g. ECSSD")
    parser.add_argument("--model", default="sam2-unet", help="sam2-unet | dsunet | birefnet")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES))
    parser.add_argument("--resolution", default="model", choices=["model", "native"])
    parser.add_argument("--metric-workers", type=int, nargs="+", default=[0, os.cpu_count() or 1])
    parser.add_argument("--dis-metrics", action="store_true", help="also BiRefNet's DIS metrics (slower)")
    args = parser.parse_args()

    from dsunet_hf.data import load_segmentation_dataset
    from dsunet_hf.evaluate import evaluate_model

    torch.manual_seed(0)
    device = torch.device(args.device)
    model = build(args.model, args.preset).to(device)
    processor = model.default_image_processor()
    dataset = load_segmentation_dataset(args.data)

    def run(workers: int, max_samples: int | None = None) -> dict:
        with torch.autocast(device.type, dtype=DTYPES[args.dtype], enabled=DTYPES[args.dtype] is not None):
            return evaluate_model(model, processor, dataset, batch_size=args.batch_size, progress=False,
                                  resolution=args.resolution, dis_metrics=args.dis_metrics,
                                  metric_workers=workers, max_samples=max_samples)

    run(0, max_samples=args.batch_size)  # warm-up: kernels, caches
    seconds, results = {}, {}
    for workers in args.metric_workers:
        start = time.perf_counter()
        results[workers] = run(workers)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds[workers] = time.perf_counter() - start
    first = next(iter(results.values()))
    emit({
        "benchmark": "evaluate", "date": datetime.date.today().isoformat(), "model": args.model,
        "preset": args.preset, "data": os.path.basename(os.path.normpath(args.data)), "samples": len(dataset),
        "batch_size": args.batch_size, "dtype": args.dtype, "resolution": args.resolution,
        "dis_metrics": args.dis_metrics, "torch": torch.__version__, "platform": platform.platform(),
        "device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else f"cpu ({os.cpu_count()} cores)"),
        "seconds_by_metric_workers": {str(w): round(s, 2) for w, s in seconds.items()},
        "images_per_second_by_metric_workers": {str(w): round(len(dataset) / s, 1) for w, s in seconds.items()},
        "same_metrics": all(result == first for result in results.values()),
    })


if __name__ == "__main__":
    main()

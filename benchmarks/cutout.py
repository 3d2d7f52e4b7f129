"""Cut-out colour estimation (blur-fusion, ``dsunet_hf.estimate_foreground``): latency per image size; JSON.

    python benchmarks/cutout.py [--sizes 1024x1024 3000x4000] [--device cuda] [--repeats 5]
    python benchmarks/cutout.py --reference /path/to/BiRefNet     # + the authors' CPU version (OpenCV)

Random image and alpha. ``--reference`` imports the authors' ``image_proc.py`` from the checkout at run time
(needs OpenCV; see upstream.py) and times their
``FB_blur_fusion_foreground_estimator_cpu_2`` on the same arrays, with the max difference to ours. Not part of
the test suite.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time

import torch
from inference import emit
from upstream import upstream_refine_foreground

from dsunet_hf import estimate_foreground


def timed(function, inputs: tuple, repeats: int) -> tuple[list[float], object]:
    result = function(*inputs)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function(*inputs)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["1024x1024", "3000x4000"], help="HEIGHTxWIDTH")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reference", default=None, help="checkout of ZhengPeng7/BiRefNet")
    args = parser.parse_args()

    theirs = upstream_refine_foreground(args.reference) if args.reference else None
    generator = torch.Generator().manual_seed(0)
    results = []
    for size in args.sizes:
        height, width = (int(side) for side in size.lower().split("x"))
        image = torch.rand(3, height, width, generator=generator)
        alpha = torch.rand(height, width, generator=generator)
        on_device = image.to(args.device), alpha.to(args.device)
        times, ours = timed(estimate_foreground, on_device, args.repeats)
        row = {"height": height, "width": width, "ours_ms_median": round(statistics.median(times) * 1e3, 1),
               "ours_ms_min": round(min(times) * 1e3, 1)}
        if theirs is not None:
            image_hwc, alpha_hw = image.permute(1, 2, 0).numpy().copy(), alpha.numpy()
            their_times, their_result = timed(theirs, (image_hwc, alpha_hw), args.repeats)
            row.update(reference_ms_median=round(statistics.median(their_times) * 1e3, 1),
                       max_abs_difference=float((ours.cpu().permute(1, 2, 0) - torch.from_numpy(their_result))
                                                .abs().max()),
                       ours_over_reference_median=round(statistics.median(their_times) / statistics.median(times), 3))
        results.append(row)
    device = (torch.cuda.get_device_name() if args.device.startswith("cuda")
              else f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)")
    emit({"benchmark": "cutout_foreground_estimation", "date": datetime.date.today().isoformat(),
          "device": device, "torch": torch.__version__, "platform": platform.platform(),
          "repeats": args.repeats, "results": results})


if __name__ == "__main__":
    main()

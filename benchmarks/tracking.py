"""Visual-prompt video tracking speed (``predict --track``, ``evaluate`` on DAVIS): frames per second of
:class:`dsunet_hf.prompt_predict.PromptTracker` with each frame encoded once (shared by segmenting the frame and
adding it to the memory, and by every tracked object), against the same tracking with the frame encoded for each
use; JSON on stdout.

    python benchmarks/tracking.py --model visual-prompt --preset small --objects 1 2
    python benchmarks/tracking.py --model visual-prompt-matcher --preset large --device cuda --dtype bfloat16

Random weights (no downloads) and random 640x360 frames; the threshold is set so that every frame joins the memory
(the memory fills as on a tracked object). ``--repeats`` rounds with the order flipped every round (medians).
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time

import numpy as np
import torch
from inference import emit, sync
from PIL import Image

from dsunet_hf.models.visual_prompt import (
    VisualPromptConfig,
    VisualPromptForSegmentation,
    VisualPromptMatcher,
    VisualPromptMatcherConfig,
)
from dsunet_hf.prompt_predict import FOUND_MASK_COVERAGE, PromptTracker

EVERY_FRAME_JOINS = -1e9


def build(name: str, preset: str):
    if name == "visual-prompt":
        return VisualPromptForSegmentation(VisualPromptConfig(dino_preset=preset))
    if name == "visual-prompt-matcher":
        return VisualPromptMatcher(VisualPromptMatcherConfig(dino_preset=preset))
    raise SystemExit(f"--model: visual-prompt or visual-prompt-matcher, not {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="visual-prompt")
    parser.add_argument("--preset", default="small", help="DINOv2 size: small, base, large, giant")
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--objects", type=int, nargs="+", default=[1, 2], help="objects tracked at once")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args()

    torch.manual_seed(0)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    model = build(args.model, args.preset).to(device=device, dtype=dtype).eval()
    rng = np.random.default_rng(0)
    frames = [Image.fromarray(rng.integers(0, 255, (360, 640, 3), dtype=np.uint8)) for _ in range(args.frames + 1)]
    mask = np.zeros((360, 640), bool)
    mask[100:200, 200:400] = True

    def shared(count: int) -> None:  # what PromptTracker and the DAVIS evaluation do
        memory = model.reference_memory(frames[:1], [mask])
        trackers = [PromptTracker(model, memory, EVERY_FRAME_JOINS) for _ in range(count)]
        for frame in frames[1:]:
            [encoding] = model.encode_frames([frame])
            for tracker in trackers:
                tracker.step(frame, encoding)

    def separate(count: int) -> None:  # every object segments the frame, then encodes it for its memory, itself
        memory = model.reference_memory(frames[:1], [mask])
        recents = [[] for _ in range(count)]
        for frame in frames[1:]:
            for recent in recents:
                [score] = model.segment_with_memory(memory + recent[-8:], [frame], batch_size=1)
                recent += model.reference_memory([frame], [score > EVERY_FRAME_JOINS], min_coverage=FOUND_MASK_COVERAGE)

    results = {}
    for count in args.objects:
        times = {"shared_encoding": [], "encoded_per_use": []}
        with torch.inference_mode():
            shared(count)  # warm-up
            for round_index in range(args.repeats):
                order = [("shared_encoding", shared), ("encoded_per_use", separate)]
                for name, run in order if round_index % 2 == 0 else order[::-1]:
                    sync(device)
                    start = time.perf_counter()
                    run(count)
                    sync(device)
                    times[name].append(time.perf_counter() - start)
        fps = {name: round(args.frames / statistics.median(values), 3) for name, values in times.items()}
        results[f"{count}_objects"] = {"frames_per_second": fps, "shared_over_per_use": round(
            fps["shared_encoding"] / fps["encoded_per_use"], 2)}

    emit({
        "benchmark": "tracking", "date": datetime.date.today().isoformat(), "model": args.model,
        "preset": args.preset, "image_size": model.config.image_size, "frames": args.frames,
        "frame_size": [360, 640], "device": args.device, "dtype": args.dtype, "torch": torch.__version__,
        "platform": platform.platform(), "repeats": args.repeats, "results": results,
    })


if __name__ == "__main__":
    main()

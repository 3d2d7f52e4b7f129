"""Video prediction throughput: the pipelined path of ``dsunet-hf predict clip.mp4`` against the same work done
in one thread, and against the model alone; JSON on stdout.

    python benchmarks/video.py --model sam2-unet --preset tiny --frames 48 --outputs masks overlays composites
    python benchmarks/video.py --model birefnet --preset BiRefNet_lite --device cuda --dtype bfloat16 --outputs cutouts

Random weights (no downloads) and a generated H.264 clip (a textured square moving over texture). Three runs
over the same frames, ``--repeats`` rounds with the order flipped every round (medians reported): ``model_only`` (the forward passes on already decoded and resized frames:
the ceiling), ``sequential`` (decode, resize, forward, draw and encode every output in turn, in one thread) and
``pipelined`` (``predict_files``: decoding in a background thread, each output drawn and encoded in its own
thread while the model runs the next batch). ``pipelined_over_sequential`` is what the overlap buys; how close
``pipelined`` comes to ``model_only`` says how busy the device stays. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from inference import build, emit, sync
from PIL import Image


def make_clip(path: Path, frames: int, width: int, height: int, seed: int = 0) -> Path:
    import av

    rng = np.random.default_rng(seed)
    texture = rng.integers(60, 200, (height, width + frames * 4, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(frames):
            frame = texture[:, index * 2: index * 2 + width].copy()
            top, left = height // 4, width // 8 + index * 4
            frame[top: top + height // 2, left: left + width // 3] = texture[:height // 2, :width // 3][:, ::-1]
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sam2-unet")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the three runs (medians reported)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--outputs", nargs="+", default=["masks", "overlays"],
                        choices=["masks", "overlays", "cutouts", "composites"])
    args = parser.parse_args()

    from dsunet_hf.predict import Backdrop, OutputOptions, predict_files, render_output
    from dsunet_hf.video import VideoWriter, frame_rate, read_video

    device = torch.device(args.device)
    model = build(args.model, args.preset).to(device)
    processor = model.default_image_processor()
    autocast_dtype = None if args.dtype == "float32" else getattr(torch, args.dtype)
    precision = (lambda: torch.autocast(device.type, dtype=autocast_dtype)) if autocast_dtype else contextlib.nullcontext
    options = OutputOptions(backdrop=Backdrop("white") if "composites" in args.outputs else None, device=device)
    kinds = ["masks", *[kind for kind in args.outputs if kind != "masks"]]

    def probabilities(inputs) -> list[np.ndarray]:
        pixels = {k: v.to(device) for k, v in inputs.items() if k.endswith("pixel_values")}
        with precision():
            logits = model(**pixels).logits
        return [p.cpu().numpy() for p in processor.post_process_probabilities(logits.float(), inputs["original_sizes"])]

    report = {"benchmark": "video", "date": datetime.date.today().isoformat(), "model": args.model,
              "preset": args.preset, "frames": args.frames, "frame_size": [args.height, args.width],
              "batch_size": args.batch_size, "dtype": args.dtype, "outputs": kinds, "device": str(device),
              "torch": torch.__version__, "platform": platform.platform(), "cpu_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as folder, torch.inference_mode():
        folder = Path(folder)
        clip = make_clip(folder / "clip.mp4", args.frames, args.width, args.height)
        frames = [frame for frame, _, _ in read_video(clip)]
        batches = [[Image.fromarray(f) for f in frames[i:i + args.batch_size]]
                   for i in range(0, len(frames), args.batch_size)]
        inputs = [processor(batch) for batch in batches]
        probabilities(inputs[0])  # warm-up (kernels, allocator)

        def model_only():
            for batch_inputs in inputs:
                with precision():
                    model(**{k: v.to(device) for k, v in batch_inputs.items() if k.endswith("pixel_values")})
            sync(device)

        def sequential():
            writers = {kind: VideoWriter(folder / f"sequential_{kind}", kind, frame_rate(clip)) for kind in kinds}
            decoded = read_video(clip)
            for batch in iter(lambda: [item for _, item in zip(range(args.batch_size), decoded)], []):
                images = [Image.fromarray(frame) for frame, _, _ in batch]
                for (_, pts, time_base), image, probability in zip(batch, images, probabilities(processor(images))):
                    for kind in kinds:
                        writers[kind].write(render_output(kind, image, probability, options), pts, time_base)
            for writer in writers.values():
                writer.close()

        def pipelined():
            result = predict_files(model, processor, [clip], folder / "pipelined", batch_size=args.batch_size,
                                   overlay="overlays" in kinds, cutout="cutouts" in kinds, overwrite=True,
                                   background=options.backdrop, autocast_dtype=autocast_dtype, progress=False)
            assert result.written == [str(clip)], result.failed

        runs = {"model_only": model_only, "sequential": sequential, "pipelined": pipelined}
        seconds = {name: [] for name in runs}
        for repeat in range(args.repeats):  # the order flips every round: drift on a shared machine evens out
            for name in (list(runs) if repeat % 2 == 0 else list(runs)[::-1]):
                sync(device)
                start = time.perf_counter()
                runs[name]()
                seconds[name].append(time.perf_counter() - start)

    def rate(seconds: float) -> float:
        return round(args.frames / seconds, 2)

    median = {name: statistics.median(values) for name, values in seconds.items()}
    report.update(
        repeats=args.repeats, seconds={name: [round(v, 3) for v in values] for name, values in seconds.items()},
        model_only_frames_per_second=rate(median["model_only"]), sequential_frames_per_second=rate(median["sequential"]),
        pipelined_frames_per_second=rate(median["pipelined"]),
        pipelined_over_sequential=round(median["sequential"] / median["pipelined"], 3),
        pipelined_share_of_model_only=round(median["model_only"] / median["pipelined"], 3),
    )
    emit(report)


if __name__ == "__main__":
    main()

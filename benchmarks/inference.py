"""Inference throughput, latency, peak memory and FLOP/s at a model's native size; JSON on stdout.

    python benchmarks/inference.py --model birefnet --preset BiRefNet_lite --batch-size 1 \\
        [--device cuda] [--dtype bfloat16] [--compile] [--channels-last] [--reference /path/to/BiRefNet]

Random weights (no downloads). ``--dtype bfloat16|float16`` runs under autocast with fp32 weights.
``--reference`` times the authors' implementation (a checkout, loaded at run time; see upstream.py) in
the same process and reports ours/theirs; the reference runs as published (fp32, eager) unless
``--reference-same-flags``. FLOPs come from ``torch.utils.flop_counter`` (matmul/conv/SDPA; the deformable
conv's sampling is not counted, so BiRefNet's FLOP/s are a lower bound). CPU memory is the process's peak
RSS (both models when ``--reference`` is given); CUDA memory is ``max_memory_allocated`` per model.
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import resource
import statistics
import time
from pathlib import Path

import torch

# Dense bf16 peak of the GPUs this is likely to run on (TFLOP/s, vendor figures).
BF16_PEAK_TFLOPS = {"H100 SXM": 989.4, "H100 PCIe": 756.0, "H100": 989.4, "H200": 989.4, "A100": 312.0}


def build(model_name: str, preset: str | None):
    from dsunet_hf.models import get_model_spec

    spec = get_model_spec(model_name)
    if model_name == "birefnet":
        config = spec.config_class.from_variant(preset or "BiRefNet", finetune_strategy="full")
    elif model_name == "dsunet":
        config = spec.config_class(**({"sam_preset": preset} if preset else {}))
    else:
        config = spec.config_class(**({"backbone_preset": preset} if preset else {}))
    return spec.model_class(config).eval()


def native_inputs(model, batch_size: int, device) -> dict[str, torch.Tensor]:
    config = model.config
    size = getattr(config, "image_size", None) or getattr(config, "crop_size", 518)
    height, width = size if isinstance(size, (list, tuple)) else (size, size)
    inputs = {"pixel_values": torch.randn(batch_size, 3, height, width, device=device)}
    if hasattr(config, "dino_image_size"):
        dino = config.dino_image_size
        inputs["dino_pixel_values"] = torch.randn(batch_size, 3, dino, dino, device=device)
    return inputs


def bf16_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in BF16_PEAK_TFLOPS.items() if key in name), None)


def count_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def measure(fn, device: torch.device, warmup: int, repeats: int) -> dict:
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    start = time.perf_counter()
    for _ in range(warmup):
        fn()
    sync()
    warmup_seconds = time.perf_counter() - start
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    times.sort()
    result = {"warmup_seconds": round(warmup_seconds, 3), "latency_ms_median": round(1000 * statistics.median(times), 2),
              "latency_ms_p90": round(1000 * times[min(len(times) - 1, int(0.9 * len(times)))], 2)}
    if device.type == "cuda":
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    else:
        result["peak_rss_gib_process"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)
    return result


def run(model, call, inputs, args, device) -> dict:
    """``call(model, inputs)`` timed under inference_mode (+ autocast / channels_last / compile as asked)."""
    dtype = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        inputs = {k: v.contiguous(memory_format=torch.channels_last) for k, v in inputs.items()}
    if args.compile:
        model = torch.compile(model)

    def step():
        precision = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
        with torch.inference_mode(), precision:
            return call(model, inputs)

    result = measure(step, device, args.warmup, args.repeats)
    flops = count_flops(step)
    batch = next(iter(inputs.values())).shape[0]
    seconds = result["latency_ms_median"] / 1000
    result.update({
        "images_per_second": round(batch / seconds, 3),
        "gflops_per_image": round(flops / batch / 1e9, 2),
        "achieved_tflops": round(flops / seconds / 1e12, 4),
    })
    peak = bf16_peak(device)
    if peak:
        result["fraction_of_bf16_peak"] = round(flops / seconds / 1e12 / peak, 4)
    return result


def reference_model(args):
    from upstream import build_upstream_birefnet, build_upstream_sam2_unet

    if args.model == "birefnet":
        from dsunet_hf.models.birefnet.configuration_birefnet import VARIANTS

        backbone = VARIANTS[args.preset or "BiRefNet"][0]["backbone"]
        return build_upstream_birefnet(args.reference, backbone), lambda m, x: m(x["pixel_values"])[-1]
    if args.model == "sam2-unet":
        if (args.preset or "large") != "large":
            raise SystemExit("the authors' SAM2-UNet exists for Hiera-L only: use --preset large")
        return build_upstream_sam2_unet(args.reference), lambda m, x: m(x["pixel_values"])[0]
    raise SystemExit(f"--reference is supported for birefnet and sam2-unet, not {args.model}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sam2-unet", help="sam2-unet | dsunet | birefnet | dinov2-seg")
    parser.add_argument("--preset", default=None, help="size preset (sam2-unet: tiny..large; birefnet: variant)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--reference", default=None, help="checkout of the authors' repository")
    parser.add_argument("--reference-same-flags", action="store_true", help="apply dtype/compile/... to it too")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build(args.model, args.preset).to(device)
    inputs = native_inputs(model, args.batch_size, device)
    flags = {k: getattr(args, k) for k in ("dtype", "compile", "channels_last")}
    report = {
        "benchmark": "inference", "date": datetime.date.today().isoformat(), "model": args.model,
        "preset": args.preset, "batch_size": args.batch_size, "input_shape": list(inputs["pixel_values"].shape),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
        "torch": torch.__version__, "platform": platform.platform(), "ours_flags": flags,
        "ours": run(model, lambda m, x: m(**x).logits, inputs, args, device),
    }
    if args.reference:
        del model
        reference, call = reference_model(args)
        same = args.reference_same_flags
        ref_args = args if same else argparse.Namespace(**{**vars(args), "dtype": "float32", "compile": False,
                                                            "channels_last": False})
        report["reference_flags"] = {k: getattr(ref_args, k) for k in ("dtype", "compile", "channels_last")}
        report["reference"] = run(reference.to(device), call, inputs, ref_args, device)
        report["ours_over_reference_throughput"] = round(
            report["ours"]["images_per_second"] / report["reference"]["images_per_second"], 3)
    text = json.dumps(report, indent=2)
    print(text)
    out = os.environ.get("BENCHMARK_OUTPUT")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")


if __name__ == "__main__":
    main()

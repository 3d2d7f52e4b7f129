"""Inference throughput, latency, peak memory and FLOP/s at a model's native size; JSON on stdout.

    python benchmarks/inference.py --model birefnet --preset BiRefNet_lite --batch-size 1 \\
        [--device cuda] [--dtype bfloat16] [--compile] [--channels-last] [--reference /path/to/BiRefNet]
    python benchmarks/inference.py --model dsunet --reference /path/to/SAM2DINO-Seg --reference-dinov2 /path/to/dinov2

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

# Dense (not 2:4 sparse) bf16 tensor-core peak of the GPUs this is likely to run on, TFLOP/s, NVIDIA's datasheets.
# First match in the device name wins: the H100 SXM reports itself as "NVIDIA H100 80GB HBM3", the PCIe card as
# "NVIDIA H100 PCIe", the NVL as "NVIDIA H100 NVL".
BF16_PEAK_TFLOPS = [
    ("H100 PCIe", "H100 PCIe", 756.0), ("H100 NVL", "H100 NVL", 835.0), ("H100", "H100 SXM", 989.4),
    ("H200 NVL", "H200 NVL", 835.0), ("H200", "H200 SXM", 989.4), ("A100", "A100", 312.0),
]


def build(model_name: str, preset: str | None, backbone: str | None = None):
    from dsunet_hf.models import get_model_spec

    spec = get_model_spec(model_name)
    if model_name == "birefnet":  # backbone: another encoder than the variant's (e.g. pvt_v2_b2)
        config = spec.config_class.from_variant(preset or "BiRefNet", finetune_strategy="full",
                                                **({"backbone": backbone} if backbone else {}))
    elif model_name == "dsunet":
        config = spec.config_class(**({"sam_preset": preset} if preset else {}))
    else:
        config = spec.config_class(**({"backbone_preset": preset} if preset else {}))
    return spec.model_class(config).eval()


def native_inputs(config, batch_size: int, device) -> dict[str, torch.Tensor]:
    size = getattr(config, "image_size", None) or getattr(config, "crop_size", 518)
    height, width = size if isinstance(size, (list, tuple)) else (size, size)
    inputs = {"pixel_values": torch.randn(batch_size, 3, height, width, device=device)}
    if hasattr(config, "dino_image_size"):
        dino = config.dino_image_size
        inputs["dino_pixel_values"] = torch.randn(batch_size, 3, dino, dino, device=device)
    return inputs


def bf16_peak(device: torch.device) -> tuple[str, float] | None:
    """(which GPU's figure, dense bf16 TFLOP/s) for ``device``; None on a CPU or an unlisted GPU."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next(((label, peak) for key, label, peak in BF16_PEAK_TFLOPS if key in name), None)


def environment(device: torch.device) -> dict:
    """What a result depends on besides its arguments: the device by name and the library versions."""
    import transformers

    return {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
            "torch": torch.__version__, "cuda": torch.version.cuda if device.type == "cuda" else None,
            "transformers": transformers.__version__, "platform": platform.platform()}


def _count_cpu_sdpa() -> None:
    """torch's flop counter knows the CUDA SDPA kernels but not the CPU one, so on a CPU every fused
    attention (Hiera, DINOv2, Swin, PVT-v2, SFF) would count 0 FLOPs; give it the same formula."""
    from torch.utils import flop_counter

    cpu_op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_op is not None and cpu_op not in flop_counter.flop_registry:
        flop_counter.register_flop_formula(cpu_op)(
            lambda query, key, value, *args, out_shape=None, **kwargs: flop_counter.sdpa_flop_count(query, key, value))


def count_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    _count_cpu_sdpa()
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def peak_memory(device: torch.device, key: str = "peak_rss_gib_process") -> dict:
    if device.type == "cuda":
        return {"peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 3)}
    return {key: round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}


def prepare(model, call, inputs, args, device):
    """``call(model, inputs)`` as a step under inference_mode (+ autocast / channels_last / compile as asked)."""
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

    return step


def warm_up(step, device: torch.device, warmup: int) -> float:
    return sum(timed(step, device) for _ in range(warmup))


def summarise(times: list[float], warmup_seconds: float, step, batch: int, device: torch.device) -> dict:
    """Median / p90 latency, throughput and FLOP/s (FLOPs counted on one more call)."""
    times = sorted(times)
    seconds = statistics.median(times)
    flops = count_flops(step)
    result = {"warmup_seconds": round(warmup_seconds, 3), "latency_ms_median": round(1000 * seconds, 2),
              "latency_ms_p90": round(1000 * times[min(len(times) - 1, int(0.9 * len(times)))], 2),
              "latency_ms_min": round(1000 * times[0], 2),  # the least disturbed call on a shared machine
              "images_per_second": round(batch / seconds, 3), "gflops_per_image": round(flops / batch / 1e9, 2),
              "achieved_tflops": round(flops / seconds / 1e12, 4)}
    peak = bf16_peak(device)
    if peak:
        result["fraction_of_bf16_peak"] = round(flops / seconds / 1e12 / peak[1], 4)
        result["bf16_peak_used"] = {"gpu": peak[0], "dense_bf16_tflops": peak[1]}
    return result


def run(step, batch: int, args, device) -> dict:
    """Warm-up, then ``--repeats`` timed calls; memory is this model's (CUDA) or the process's (CPU RSS)."""
    warmup_seconds = warm_up(step, device, args.warmup)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = [timed(step, device) for _ in range(args.repeats)]
    memory = peak_memory(device)  # before the FLOP count: that call runs eagerly, even for a compiled model
    return {**summarise(times, warmup_seconds, step, batch, device), **memory}


def run_interleaved(steps: dict, batch: int, args, device) -> dict:
    """Both models warmed up, then timed alternately (ours, theirs, theirs, ours, ...: the order flips each
    round, so neither always runs right after the other), so that drift in the machine's speed (shared CPUs,
    clocks) falls on both alike. CUDA memory: one more call each."""
    warmups = {name: warm_up(step, device, args.warmup) for name, step in steps.items()}
    times = {name: [] for name in steps}
    for round_index in range(args.repeats):
        order = list(steps.items())
        for name, step in order if round_index % 2 == 0 else order[::-1]:
            times[name].append(timed(step, device))
    results = {name: summarise(times[name], warmups[name], step, batch, device) for name, step in steps.items()}
    for name, step in steps.items():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            step()
        results[name].update(peak_memory(device, "peak_rss_gib_process_both_models"))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sam2-unet", help="sam2-unet | dsunet | birefnet | dinov2-seg")
    parser.add_argument("--preset", default=None, help="size preset (sam2-unet: tiny..large; birefnet: variant)")
    parser.add_argument("--backbone", default=None, help="birefnet: encoder other than the variant's, e.g. pvt_v2_b2")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--reference", default=None, help="checkout of the authors' repository")
    parser.add_argument("--reference-dinov2", default=None,
                        help="checkout of facebookresearch/dinov2 (the authors' DSU-Net loads DINOv2 via torch.hub)")
    parser.add_argument("--interleave", action="store_true",
                        help="with --reference: keep both models and time them alternately (robust to drift)")
    parser.add_argument("--reference-same-flags", action="store_true", help="apply dtype/compile/... to it too")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    if args.backbone and args.model != "birefnet":
        parser.error("--backbone applies to birefnet")
    if args.reference:  # before ours is measured: a wrong path must not cost that time
        from upstream import check_reference

        check_reference(args.model, args.reference, args.preset, args.reference_dinov2)
    model = build(args.model, args.preset, args.backbone).to(device)
    inputs = native_inputs(model.config, args.batch_size, device)
    flags = {k: getattr(args, k) for k in ("dtype", "compile", "channels_last")}
    report = {
        "benchmark": "inference", "date": datetime.date.today().isoformat(), "model": args.model,
        "preset": args.preset, "backbone": args.backbone, "batch_size": args.batch_size,
        "input_shape": list(inputs["pixel_values"].shape), **environment(device),
        "warmup_calls": args.warmup, "timed_calls": args.repeats, "ours_flags": flags,
    }
    batch = args.batch_size
    ours = prepare(model, lambda m, x: m(**x).logits, inputs, args, device)
    if not args.reference:
        report["ours"] = run(ours, batch, args, device)
    else:
        from upstream import build_reference

        if not args.interleave:  # one model in memory at a time
            report["ours"] = run(ours, batch, args, device)
            del model, ours
        reference, maps = build_reference(args.model, args.reference, args.preset, args.reference_dinov2,
                                          backbone=args.backbone)
        ref_args = args if args.reference_same_flags else argparse.Namespace(
            **{**vars(args), "dtype": "float32", "compile": False, "channels_last": False})
        report["reference_flags"] = {k: getattr(ref_args, k) for k in ("dtype", "compile", "channels_last")}
        theirs = prepare(reference.to(device), lambda m, x: maps(m, x)[-1], inputs, ref_args, device)
        if args.interleave:
            report.update(run_interleaved({"ours": ours, "reference": theirs}, batch, args, device))
        else:
            report["reference"] = run(theirs, batch, ref_args, device)
        report["timing"] = "interleaved" if args.interleave else "sequential"
        report["ours_over_reference_throughput"] = round(
            report["ours"]["images_per_second"] / report["reference"]["images_per_second"], 3)
        report["ours_over_reference_best_latency"] = round(
            report["reference"]["latency_ms_min"] / report["ours"]["latency_ms_min"], 3)
    emit(report)


def emit(report: dict) -> None:
    """Print the JSON report, and write it to $BENCHMARK_OUTPUT when set."""
    text = json.dumps(report, indent=2)
    print(text)
    out = os.environ.get("BENCHMARK_OUTPUT")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")


if __name__ == "__main__":
    main()

"""ONNX export at full size, and onnxruntime against PyTorch on the same inputs; JSON on stdout.

    python benchmarks/export_onnx.py --model sam2-unet --preset large [--batch-size 1] [--repeats 8]
    python benchmarks/export_onnx.py --model birefnet --preset BiRefNet_lite [--dynamic-size] [--dtype float16]
    python benchmarks/export_onnx.py --model sam2-unet --preset large --reference /path/to/SAM2-UNet

Random weights (no downloads). Exports with ``dsunet_hf.onnx_export.export_onnx`` (time, file size, the
onnxruntime check at batch 1 and 3), then times PyTorch fp32 eager (``torch.inference_mode``) and onnxruntime's
CPU provider in turn, the order rotating every round, at the model's native size (``--dynamic-size``: the graph
takes any height and width, timed at that size to compare with the fixed-size one; ``--dtype float16``: the
fp16 graph, its check on probabilities; onnxruntime's CPU provider has few fp16 kernels, so this measures the
file size and the agreement here, the speed-up only on a GPU provider); ``--reference`` adds the
authors' code as published (fp32, eager; see upstream.py) to the rotation. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from inference import build, emit, native_inputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sam2-unet", help="sam2-unet | dsunet | birefnet | dinov2-seg")
    parser.add_argument("--preset", default=None, help="size preset (sam2-unet: tiny..large; birefnet: variant)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--output-dir", default=None, help="keep the export here (default: a temporary folder)")
    parser.add_argument("--reference", default=None, help="checkout of the authors' repository")
    parser.add_argument("--dynamic-size", action="store_true", help="export with a dynamic height and width")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16"], help="the exported graph's")
    parser.add_argument("--reference-dinov2", default=None, help="dsunet: checkout of facebookresearch/dinov2")
    args = parser.parse_args()
    if args.reference:  # before the export: a wrong path or preset must not cost its minutes
        from upstream import check_reference

        check_reference(args.model, args.reference, args.preset, args.reference_dinov2)

    import onnxruntime

    from dsunet_hf.onnx_export import export_onnx

    torch.manual_seed(0)
    model = build(args.model, args.preset)
    processor = model.default_image_processor()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(args.output_dir or scratch)
        export = export_onnx(model, processor, folder, dynamic_size=args.dynamic_size, dtype=args.dtype)
        files = {p.name: round(p.stat().st_size / 1e6, 2) for p in folder.iterdir() if p.name.startswith("model.onnx")}
        session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])

        inputs = native_inputs(model.config, args.batch_size, "cpu")
        feeds = {name: tensor.numpy() for name, tensor in inputs.items()}

        def pytorch():
            with torch.inference_mode():
                model(**inputs)

        def ort():
            session.run(["logits"], feeds)

        runners = {"pytorch": pytorch, "onnxruntime": ort}
        if args.reference:
            from upstream import build_reference

            reference, maps = build_reference(args.model, args.reference, args.preset, args.reference_dinov2)
            reference.eval()

            def authors():
                with torch.inference_mode():
                    maps(reference, inputs)

            runners["reference"] = authors
        for _ in range(args.warmup):
            for run in runners.values():
                run()
        times = {name: [] for name in runners}
        for round_index in range(args.repeats):
            order = list(runners)[round_index % len(runners):] + list(runners)[:round_index % len(runners)]
            for name in order:
                start = time.perf_counter()
                runners[name]()
                times[name].append(time.perf_counter() - start)

    latency = {name: {"latency_ms_median": round(statistics.median(t) * 1e3, 1), "latency_ms_min": round(min(t) * 1e3, 1)}
               for name, t in times.items()}
    report = {
        "benchmark": "onnx", "date": datetime.date.today().isoformat(), "model": args.model, "preset": args.preset,
        "batch_size": args.batch_size, "inputs": {k: list(v.shape) for k, v in inputs.items()},
        "device": f"cpu ({os.cpu_count()} cores)", "torch": torch.__version__,
        "onnxruntime_version": onnxruntime.__version__, "platform": platform.platform(),
        "export_seconds": export.export_seconds, "opset": export.opset, "files_mb": files,
        "graph_dtype": export.dtype, "max_abs_difference_of": export.compared,
        "max_abs_difference_by_batch": export.max_abs_difference, "graph_inputs": export.inputs,
        "traced_size": export.traced_size,
        "timing": f"interleaved, {args.repeats} rounds", **latency,
        "onnxruntime_over_pytorch_median": round(
            latency["pytorch"]["latency_ms_median"] / latency["onnxruntime"]["latency_ms_median"], 3),
    }
    if args.reference:
        for name in ("pytorch", "onnxruntime"):
            report[f"{name}_over_reference_median"] = round(
                latency["reference"]["latency_ms_median"] / latency[name]["latency_ms_median"], 3)
    emit(report)

if __name__ == "__main__":
    main()

"""torch.compile graph breaks in a model's inference forward (``torch._dynamo.explain``); JSON on stdout.

    python benchmarks/graph_breaks.py --model sam2-unet --preset tiny
    python benchmarks/graph_breaks.py --model birefnet --preset BiRefNet_lite --size 512

A graph break splits the compiled forward into several graphs with Python in between (slower, and no
fusion across the break). Random weights, batch 2, dynamic batch size marked as with
``torch.compile(dynamic=True)``. Not a test.
"""

from __future__ import annotations

import argparse
import datetime
import json

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sam2-unet")
    parser.add_argument("--preset", default=None)
    parser.add_argument("--size", type=int, default=None, help="input side (default: the model's native size; Hiera models: a multiple of 32)")
    args = parser.parse_args()
    from inference import build, native_inputs

    torch.manual_seed(0)
    model = build(args.model, args.preset)
    inputs = native_inputs(model.config, 2, "cpu")
    if args.size:
        inputs["pixel_values"] = torch.randn(2, 3, args.size, args.size)
    for tensor in inputs.values():
        torch._dynamo.mark_dynamic(tensor, 0)
    torch._dynamo.reset()
    with torch.inference_mode():
        explanation = torch._dynamo.explain(model)(**inputs)
    reasons = [{"reason": str(b.reason).splitlines()[0][:300],
                "where": str(b.user_stack[-1]) if b.user_stack else None} for b in explanation.break_reasons]
    print(json.dumps({
        "benchmark": "graph_breaks", "date": datetime.date.today().isoformat(), "model": args.model,
        "preset": args.preset, "input_shape": list(inputs["pixel_values"].shape), "torch": torch.__version__,
        "graphs": explanation.graph_count, "graph_breaks": explanation.graph_break_count,
        "ops_traced": explanation.op_count, "break_reasons": reasons,
    }, indent=2))


if __name__ == "__main__":
    main()

"""torch.compile traces each model's inference forward as one graph (no graph breaks), with a dynamic batch.

A graph break splits the compiled forward into pieces with Python in between. Two were found and removed:
the deformable conv probing torchvision inside the trace (BiRefNet: 7 breaks) and transformers' hidden-state
capturing for DINOv2's intermediate blocks (DINOv2 heads, visual prompting: 5 breaks).
``benchmarks/graph_breaks.py`` reports the same for the full-size presets.
"""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_SIZE, tiny_sam2_unet_config

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (see conftest)


def _models():
    from test_birefnet import tiny_config as tiny_birefnet
    from test_dinov2_seg import tiny as tiny_dinov2_seg
    from test_dsunet import tiny_config as tiny_dsunet

    from dsunet_hf import (
        BiRefNetForImageSegmentation,
        Dinov2ForSemanticSegmentation,
        DSUNetForImageSegmentation,
        Sam2UNetForImageSegmentation,
    )

    return {
        "sam2-unet": lambda: (Sam2UNetForImageSegmentation(tiny_sam2_unet_config()), TINY_SIZE),
        "dsunet": lambda: (DSUNetForImageSegmentation(tiny_dsunet()), 128),
        "birefnet": lambda: (BiRefNetForImageSegmentation(tiny_birefnet()), 64),
        "dinov2-seg": lambda: (Dinov2ForSemanticSegmentation(tiny_dinov2_seg()), 28),
    }


@pytest.mark.parametrize("name", ["sam2-unet", "dsunet", "birefnet", "dinov2-seg"])
def test_inference_forward_compiles_without_graph_breaks(name):
    model, size = _models()[name]()
    pixel_values = torch.randn(2, 3, size, size)
    torch._dynamo.mark_dynamic(pixel_values, 0)
    torch._dynamo.reset()
    with torch.inference_mode():
        explanation = torch._dynamo.explain(model.eval())(pixel_values=pixel_values)
    reasons = [str(b.reason).splitlines()[0] for b in explanation.break_reasons]
    assert explanation.graph_break_count == 0, reasons
    assert explanation.graph_count == 1

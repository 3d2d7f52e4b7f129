"""Full SAM2-UNet (Hiera-L) parity against the authors' code, when a checkout of it is available.

Set ``SAM2UNET_UPSTREAM_DIR`` to a checkout of github.com/WZH0120/SAM2-UNet (its ``SAM2UNet.py`` is
imported from there at run time, never copied here) and install the ``[sam2]`` extra. The upstream model
is built with random weights, saved as the authors save checkpoints, converted, and compared.
Takes about a minute on 2 CPU cores.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

UPSTREAM = os.environ.get("SAM2UNET_UPSTREAM_DIR")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not UPSTREAM or not (Path(UPSTREAM) / "SAM2UNet.py").is_file(),
        reason="set SAM2UNET_UPSTREAM_DIR to a checkout of WZH0120/SAM2-UNet to run the full-model parity check",
    ),
]


def test_converted_upstream_model_matches_upstream_outputs(tmp_path):
    build_sam = pytest.importorskip("sam2.build_sam", reason="the [sam2] extra is not installed")
    sys.path.insert(0, UPSTREAM)
    try:
        import SAM2UNet as upstream
    finally:
        sys.path.remove(UPSTREAM)
    # The upstream builder defaults to CUDA; build on the CPU instead.
    upstream.build_sam2 = lambda config, checkpoint=None: build_sam.build_sam2(config, checkpoint, device="cpu")
    from dsunet_hf.convert.sam2_unet import convert_sam2_unet_checkpoint

    torch.manual_seed(0)
    reference = upstream.SAM2UNet()
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.02)
        for name, buffer in reference.named_buffers():
            if name.endswith("running_var"):
                buffer.uniform_(0.5, 1.5)
    reference.eval()
    assert sum(p.numel() for p in reference.parameters()) == 216_529_891  # with the unused up4
    torch.save(reference.state_dict(), tmp_path / "SAM2UNet-test.pth")

    ours = convert_sam2_unet_checkpoint(tmp_path / "SAM2UNet-test.pth", tmp_path / "converted")
    x = torch.randn(1, 3, 352, 352)
    with torch.no_grad():
        expected = reference(x)
        output = ours(x)
    for theirs, mine in zip(expected, (output.logits, *output.aux_logits)):
        assert (theirs - mine).abs().max().item() <= 1e-5
    artifact = (tmp_path / "converted" / "model.safetensors").stat().st_size
    assert artifact / (tmp_path / "SAM2UNet-test.pth").stat().st_size <= 0.03

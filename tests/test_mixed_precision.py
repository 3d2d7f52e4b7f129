"""bf16 autocast, the fast path for GPUs: every model trains and predicts under it (no dtype mismatch in
our blocks: WTConv's Haar filters, SFF, CGAFusion, the deformable conv, the heads), with a finite loss and
gradients, and predictions close to fp32. CPU autocast applies the same casting policy as CUDA's for the
ops these models use, so this catches on CI what would otherwise surface on the first GPU run."""

from __future__ import annotations

import pytest
import torch
from test_compile import _models

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (see conftest)

NAMES = ["sam2-unet", "dsunet", "birefnet", "dinov2-seg"]


def labels_for(name: str, size: int) -> torch.Tensor:
    if name == "dinov2-seg":
        return torch.randint(0, 3, (2, size, size))
    return (torch.rand(2, 1, size, size) > 0.5).float()


@pytest.mark.parametrize("name", NAMES)
def test_training_step_under_bf16_autocast(name):
    model, size = _models()[name]()
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(pixel_values=torch.randn(2, 3, size, size), labels=labels_for(name, size)).loss
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", NAMES)
def test_inference_under_bf16_autocast_is_close_to_fp32(name):
    model, size = _models()[name]()
    model.eval()
    pixel_values = torch.randn(2, 3, size, size)
    with torch.inference_mode():
        reference = model(pixel_values=pixel_values).logits.float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast = model(pixel_values=pixel_values).logits.float()
    assert fast.shape == reference.shape and torch.isfinite(fast).all()
    probability = torch.sigmoid if name != "dinov2-seg" else (lambda x: x.softmax(1))
    assert (probability(fast) - probability(reference)).abs().max() < 0.05


def test_structure_loss_of_half_precision_logits_is_computed_in_float32():
    from dsunet_hf.losses import structure_loss

    logits = (torch.randn(2, 1, 352, 352) * 3).bfloat16()
    target = (torch.rand(2, 1, 352, 352) > 0.5).float()
    loss = structure_loss(logits, target)
    # In bf16 the per-image sums over 352² pixels were off by ~4e-3 (2.0469 instead of 2.0511).
    assert loss.dtype == torch.float32
    assert torch.allclose(loss, structure_loss(logits.float(), target), atol=1e-6)

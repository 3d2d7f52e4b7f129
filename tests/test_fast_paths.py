"""Exact fast paths: no autograd graph through a backbone none of whose parameters trains."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_SIZE, tiny_sam2_unet_config

from dsunet_hf import Sam2UNetForImageSegmentation, modeling_utils

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (see conftest)


def gradients(model, inputs, labels) -> dict[str, torch.Tensor]:
    model.zero_grad()
    model(**inputs, labels=labels).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("strategy", ["frozen", "adapter"])
def test_frozen_backbone_runs_without_a_graph_and_gradients_are_unchanged(strategy, monkeypatch):
    model = Sam2UNetForImageSegmentation(tiny_sam2_unet_config(finetune_strategy=strategy)).train()
    inputs = {"pixel_values": torch.randn(2, 3, TINY_SIZE, TINY_SIZE)}
    labels = (torch.rand(2, 1, TINY_SIZE, TINY_SIZE) > 0.5).float()
    seen = []
    model.backbone.register_forward_hook(lambda module, args, output: seen.append(output[0].requires_grad))
    fast = gradients(model, inputs, labels)
    assert seen == [strategy == "adapter"]  # a graph only where the backbone has trainable adapters

    def always_with_graph(module, *args, method="forward", **kwargs):
        return getattr(module, method)(*args, **kwargs)

    monkeypatch.setattr("dsunet_hf.models.sam2_unet.modeling_sam2_unet.run_backbone", always_with_graph)
    slow = gradients(model, inputs, labels)
    assert fast.keys() == slow.keys() and all(torch.equal(fast[k], slow[k]) for k in fast)


def test_dsunet_dinov2_runs_without_a_graph_under_adapters():
    from test_dsunet import inputs, tiny_config

    from dsunet_hf import DSUNetForImageSegmentation

    model = DSUNetForImageSegmentation(tiny_config(finetune_strategy="adapter")).train()
    grads = {}

    def record(name):
        def hook(module, args, output):  # returns None: the output is left as it is
            grads[name] = (output[0] if isinstance(output, list) else output).requires_grad
        return hook

    model.backbone_dino.register_forward_hook(record("dino"))
    model.backbone_sam.register_forward_hook(record("sam"))
    sam, dino = inputs()
    model(sam, dino, labels=torch.rand(2, 1, *sam.shape[-2:])).loss.backward()
    assert grads == {"dino": False, "sam": True}


def test_run_backbone_keeps_the_graph_when_something_trains():
    layer = torch.nn.Linear(3, 3)
    assert modeling_utils.run_backbone(layer, torch.randn(1, 3)).requires_grad
    layer.requires_grad_(False)
    assert not modeling_utils.run_backbone(layer, torch.randn(1, 3)).requires_grad


def test_hiera_attention_without_dead_scores_equals_transformers():
    from conftest import TINY_HIERA
    from transformers import Sam2HieraDetConfig, Sam2HieraDetModel

    from dsunet_hf.backbones.hiera import HieraBackbone

    config = Sam2HieraDetConfig(**TINY_HIERA)
    ours = HieraBackbone(config).eval()
    stock = Sam2HieraDetModel(config).eval()
    stock.load_state_dict(ours.encoder.state_dict())
    pixels = torch.randn(2, 3, TINY_SIZE, TINY_SIZE)
    with torch.no_grad():
        expected = [h.permute(0, 3, 1, 2) for h in stock(pixels).intermediate_hidden_states]
        for mine, theirs in zip(ours(pixels), expected):
            assert torch.equal(mine, theirs)


@pytest.mark.parametrize("train", [False, True])
def test_sff_attention_takes_the_fused_kernel_not_the_math_fallback(train):
    """With a strided channel axis SDPA silently falls back to its math kernel (N x N scores in memory, ~4.7x
    slower at DSU-Net's 88x88); the block must hand it contiguous inputs."""
    from torch.profiler import ProfilerActivity, profile

    from dsunet_hf.modules.sff import SFF

    sff = SFF(16).train(train)
    small, big = torch.randn(2, 16, 6, 6, requires_grad=train), torch.randn(2, 16, 12, 12)
    with profile(activities=[ProfilerActivity.CPU]) as trace:
        out = sff(small, big)
        if train:
            out.sum().backward()
    names = {event.name for event in trace.events()}
    assert not any("attention_math" in name for name in names), sorted(n for n in names if "attention" in n)
    assert any("scaled_dot_product_flash_attention" in name for name in names)


def test_pvt_v2_attention_is_fused_and_equals_transformers_eager_attention():
    """transformers' PVT-v2 computes the attention eagerly (a (H/4*W/4) x (H/32*W/32) score matrix per head,
    1.3x slower than BiRefNet's code at 1024 px); ours fuses it with SDPA, as upstream does, same result."""
    from torch.profiler import ProfilerActivity, profile

    from dsunet_hf.backbones.pvt_v2 import PvtV2Backbone, pvt_v2_config

    torch.manual_seed(0)
    backbone = PvtV2Backbone(pvt_v2_config("pvt_v2_b0")).eval()
    pixels = torch.randn(2, 3, 128, 96)
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as trace:
        fused = backbone(pixels)
    names = {event.name for event in trace.events()}
    assert any("scaled_dot_product" in name for name in names) and "aten::softmax" not in names
    for layer in backbone.model.encoder.layers:
        for block in layer.blocks:
            del block.attention.forward  # back to transformers' eager PvtV2SelfAttention.forward
    with torch.no_grad():
        eager = backbone(pixels)
    assert all(torch.allclose(a, b, atol=1e-5, rtol=1e-5) for a, b in zip(fused, eager))
    # the probabilities, when asked for, still come from the eager path
    block = backbone.model.encoder.layers[0].blocks[0]
    tokens = torch.randn(1, 32 * 24, block.attention.hidden_size)
    assert len(PvtV2Backbone(backbone.config).model.encoder.layers[0].blocks[0].attention(
        tokens, 32, 24, output_attentions=True)) == 2


# Blocks recomputed in backward for each model's tiny config (test_compile's): the trainable backbones'
# layers only; a frozen backbone runs without a graph, so there is nothing to recompute (dinov2-seg).
CHECKPOINTED_BLOCKS = {"sam2-unet": {"Sam2MultiScaleBlock"}, "dsunet": {"Sam2MultiScaleBlock"},
                       "birefnet": {"SwinLayer"}, "dinov2-seg": set()}


@pytest.mark.parametrize("name", sorted(CHECKPOINTED_BLOCKS))
def test_activation_checkpointing_recomputes_the_backbone_blocks_with_the_same_gradients(name):
    from test_compile import _models

    model, size = _models()[name]()
    model.train()
    inputs = {"pixel_values": torch.randn(2, 3, size, size)}
    labels = (torch.randint(0, 3, (2, size, size)) if name == "dinov2-seg"
              else (torch.rand(2, 1, size, size) > 0.5).float())
    torch.manual_seed(0)  # the same drop-path draws in both runs
    reference = gradients(model, inputs, labels)
    modeling_utils.enable_activation_checkpointing(model)
    recomputed = []
    for module in model.modules():
        if getattr(module, "gradient_checkpointing", False):
            def counted(function, *args, _module=module, _checkpoint=module._gradient_checkpointing_func, **kwargs):
                if torch.is_grad_enabled():  # (transformers < 5.25 also calls it under no_grad: nothing to recompute)
                    recomputed.append(type(_module).__name__)
                return _checkpoint(function, *args, **kwargs)

            module._gradient_checkpointing_func = counted
    torch.manual_seed(0)
    checkpointed = gradients(model, inputs, labels)
    expected = CHECKPOINTED_BLOCKS[name]
    # At least these blocks (transformers' Swin also checkpoints each stage around its layers); none at all
    # when the backbone is frozen.
    assert expected <= set(recomputed) and bool(recomputed) == bool(expected), recomputed
    assert checkpointed.keys() == reference.keys()
    for key, grad in reference.items():
        torch.testing.assert_close(checkpointed[key], grad, rtol=1e-4, atol=1e-6, msg=key)

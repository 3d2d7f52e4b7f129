"""LoRA merged into the frozen weights for inference: the same outputs, no LoRA work left in the forward pass,
saving and training guarded, and the CLI loader and the ONNX export merge by themselves."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY_SIZE, tiny_sam2_unet_config
from PIL import Image
from test_birefnet import tiny_config as tiny_birefnet
from test_dsunet import tiny_config as tiny_dsunet

from dsunet_hf import BiRefNetForImageSegmentation, DSUNetForImageSegmentation, Sam2UNetForImageSegmentation
from dsunet_hf.finetune import lora_layers, lora_merged
from dsunet_hf.predict import load_model_and_processor

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (see conftest)

MODELS = {
    "sam2-unet": lambda: Sam2UNetForImageSegmentation(tiny_sam2_unet_config(finetune_strategy="lora")),
    "birefnet": lambda: BiRefNetForImageSegmentation(tiny_birefnet(finetune_strategy="lora")),
    "dsunet": lambda: DSUNetForImageSegmentation(tiny_dsunet(finetune_strategy="lora")),
}


def trained_lora(name: str):
    """A LoRA model whose B matrices are non-zero (as after fine-tuning), in eval mode."""
    model = MODELS[name]().eval()
    with torch.no_grad():
        for key, parameter in model.named_parameters():
            if "lora_B" in key:
                parameter.normal_(std=0.05)
    return model


def example_inputs(model) -> dict[str, torch.Tensor]:
    processor = model.default_image_processor()
    sizes = {"pixel_values": processor.size, **getattr(processor, "extra_sizes", {})}
    generator = torch.Generator().manual_seed(0)
    return {key: torch.randn(2, 3, size["height"], size["width"], generator=generator) for key, size in sizes.items()}


def count_lora_calls(model) -> list[int]:
    calls = [0]
    for key, module in model.named_modules():
        if key.endswith("lora_A.default"):
            module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("name", sorted(MODELS))
def test_merged_lora_gives_the_same_logits_without_running_lora(name):
    model = trained_lora(name)
    inputs = example_inputs(model)
    with torch.no_grad():
        expected = model(**inputs).logits
        for layer in lora_layers(model):
            layer.enable_adapters(False)
        without_lora = model(**inputs).logits
        for layer in lora_layers(model):
            layer.enable_adapters(True)
    assert (expected - without_lora).abs().max() > 1e-3  # LoRA changes the output: the merge has something to keep
    calls = count_lora_calls(model)
    with torch.no_grad():
        model(**inputs)
    assert calls[0] > 0  # unmerged: every adapted layer runs its LoRA branch
    layers = len(lora_layers(model))
    assert layers > 0 and model.merge_lora() == layers and model.lora_is_merged
    assert model.merge_lora() == 0  # already merged: nothing twice
    calls[0] = 0
    with torch.no_grad():
        merged = model(**inputs).logits
    assert calls[0] == 0
    torch.testing.assert_close(merged, expected, atol=1e-5, rtol=0)


def test_a_merged_model_saves_its_lora_unmerged_and_refuses_to_train(tmp_path):
    model = trained_lora("sam2-unet")
    model.save_pretrained(tmp_path / "before", include_backbone=True)
    model.merge_lora()
    model.save_pretrained(tmp_path / "after", include_backbone=False)  # trainable-only: LoRA tensors as they were
    from safetensors.torch import load_file

    after = load_file(tmp_path / "after" / "model.safetensors")
    before = load_file(tmp_path / "before" / "model.safetensors")
    assert any("lora_" in key for key in after)
    assert all(torch.equal(after[key], before[key]) for key in after)
    with pytest.raises(ValueError, match="apply LoRA twice"):
        model.save_pretrained(tmp_path / "full", include_backbone=True)
    with pytest.raises(RuntimeError, match="LoRA is merged"):
        model.train()
    model.eval()  # eval stays allowed


def test_cli_loader_merges_and_keeps_the_outputs(tmp_path):
    model = trained_lora("birefnet")
    inputs = example_inputs(model)
    with torch.no_grad():
        expected = model(**inputs).logits
    model.save_pretrained(tmp_path / "artifact", include_backbone=True)
    loaded, _ = load_model_and_processor(str(tmp_path / "artifact"))
    assert loaded.lora_is_merged and not loaded.training
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, expected, atol=1e-5, rtol=0)


def test_pipeline_loads_merged_with_model_kwargs(tmp_path):
    from transformers import pipeline

    model = trained_lora("sam2-unet")
    processor = model.default_image_processor()
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8))
    with torch.no_grad():  # some pixels on each side of the threshold
        model.head.bias.sub_(model(**processor(image)).logits.median())
        logits = model(**processor(image)).logits
    model.save_pretrained(tmp_path / "artifact", include_backbone=True)
    processor.save_pretrained(tmp_path / "artifact")
    expected = processor.post_process_probabilities(logits, target_sizes=[(40, 56)])[0]

    merged = pipeline("image-segmentation", model=str(tmp_path / "artifact"), model_kwargs={"merge_lora": True})
    plain = pipeline("image-segmentation", model=str(tmp_path / "artifact"))
    assert merged.model.lora_is_merged and not plain.model.lora_is_merged
    foreground = [s["mask"] for s in merged(image) if s["label"] == "foreground"][0]
    assert np.mean((np.asarray(foreground) > 0) != (expected.numpy() >= 0.5)) < 0.005  # float rounding at 0.5 only
    assert not plain.model.from_pretrained(str(tmp_path / "artifact")).lora_is_merged  # off by default: trainable


def test_temporary_merge_restores_the_weights_bit_for_bit():
    model = trained_lora("birefnet")
    before = {key: value.clone() for key, value in model.state_dict().items()}
    inputs = example_inputs(model)
    calls = count_lora_calls(model)
    with lora_merged(model) as merged, torch.no_grad():
        assert merged == len(lora_layers(model)) and model.lora_is_merged
        model(**inputs)
    assert calls[0] == 0 and not model.lora_is_merged
    after = model.state_dict()
    assert all(torch.equal(after[key], value) for key, value in before.items())
    model.train()  # unmerged again: trainable


def test_onnx_export_of_a_lora_model_has_merged_weights(tmp_path):
    onnx = pytest.importorskip("onnx", reason="the [onnx] extra (in [dev]) is not installed")
    pytest.importorskip("onnxruntime", reason="the [onnx] extra (in [dev]) is not installed")
    from dsunet_hf import SegmentationImageProcessor
    from dsunet_hf.onnx_export import export_onnx

    model = trained_lora("sam2-unet")
    before = {key: value.clone() for key, value in model.state_dict().items()}
    report = export_onnx(model, SegmentationImageProcessor(size=TINY_SIZE), tmp_path / "merged")
    assert max(report.max_abs_difference.values()) <= 1e-4  # onnxruntime vs the (unmerged) PyTorch model
    # Unmerged, each adapted layer adds two MatMuls by its A [in, rank] and B [rank, out] weights (40 here, measured
    # with onnx_export.lora_merged patched out; the exporter renames weights, so their shapes tell them): merged, none.
    graph = onnx.load(str(tmp_path / "merged" / "model.onnx")).graph
    shapes = {tensor.name: tuple(tensor.dims) for tensor in graph.initializer}
    rank = model.config.lora_rank
    matmuls = [node for node in graph.node if node.op_type == "MatMul"]
    assert len(lora_layers(model)) > 0 and len(matmuls) > 0
    assert not [node.name for node in matmuls if any(rank in shapes.get(name, ()) for name in node.input)]
    assert not model.lora_is_merged
    assert all(torch.equal(model.state_dict()[key], value) for key, value in before.items())


def test_cards_of_lora_models_show_the_merge_for_inference():
    card = str(trained_lora("birefnet").model_card())
    assert "model.merge_lora()" in card and 'model_kwargs={"merge_lora": True}' in card
    assert "merge_lora" not in str(Sam2UNetForImageSegmentation(tiny_sam2_unet_config()).model_card())  # adapters

"""SAM2-UNet: shapes, strategies, exact parameter counts, trainable-only artifacts, Hub round-trips."""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import TINY_HIERA, TINY_SIZE, tiny_sam2_unet_config
from helpers import tiny_hiera, write_transformers_trunk_repo
from safetensors import safe_open

from dsunet_hf import (
    BackboneNotAvailableError,
    CheckpointMismatchError,
    DSUNetForImageSegmentation,
    Sam2UNetConfig,
    Sam2UNetForImageSegmentation,
)
from dsunet_hf.finetune import parameter_counts

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (see conftest)


def batch(n=2, size=TINY_SIZE):
    pixel_values = torch.randn(n, 3, size, size)
    labels = (torch.rand(n, 1, size, size) > 0.5).float()
    return pixel_values, labels


@pytest.fixture
def tiny_backbone_repo(offline_hub, tmp_path):
    """The tiny trunk published as ``test-org/tiny-hiera`` in the offline Hub cache."""
    trunk = tiny_hiera()
    sha = offline_hub.add("test-org/tiny-hiera", write_transformers_trunk_repo(tmp_path / "trunk", trunk))
    return trunk, sha


def test_forward_shapes_and_loss():
    model = Sam2UNetForImageSegmentation(tiny_sam2_unet_config())
    pixel_values, labels = batch()
    output = model(pixel_values, labels=labels)
    assert output.logits.shape == (2, 1, TINY_SIZE, TINY_SIZE)
    assert [a.shape for a in output.aux_logits] == [(2, 1, TINY_SIZE, TINY_SIZE)] * 2
    assert output.loss.ndim == 0 and torch.isfinite(output.loss)
    # The loss is the 1:1:1 sum of the structure losses of the three outputs.
    from dsunet_hf.losses import structure_loss

    expected = sum(structure_loss(o, labels) for o in (output.logits, *output.aux_logits))
    torch.testing.assert_close(output.loss, expected)
    # Integer 0/1 masks give the same loss; 0/255 ones, as read from a file, are refused (the loss was 8x too big).
    torch.testing.assert_close(model(pixel_values, labels=labels.to(torch.uint8)).loss, output.loss)
    with pytest.raises(ValueError, match="labels hold values up to 255: binary models take 0/1 masks"):
        model(pixel_values, labels=labels.to(torch.uint8) * 255)
    assert model(pixel_values).loss is None


@pytest.mark.parametrize(
    "strategy, trains",
    [
        ("adapter", lambda n: not n.startswith("backbone.") or ".adapter." in n),
        ("lora", lambda n: not n.startswith("backbone.") or "lora_" in n),
        ("full", lambda n: True),
        ("frozen", lambda n: not n.startswith("backbone.")),
    ],
)
def test_gradients_reach_only_the_strategy_parameters(strategy, trains):
    model = Sam2UNetForImageSegmentation(tiny_sam2_unet_config(finetune_strategy=strategy)).train()
    pixel_values, labels = batch()
    model(pixel_values, labels=labels).loss.backward()
    names = [n for n, _ in model.named_parameters()]
    assert any(".adapter." in n for n in names) == (strategy in ("adapter", "full"))
    assert any("lora_" in n for n in names) == (strategy == "lora")
    for name, parameter in model.named_parameters():
        assert parameter.requires_grad == trains(name), name
        if trains(name):
            assert parameter.grad is not None, f"{name} got no gradient"
        else:
            assert parameter.grad is None, f"frozen {name} got a gradient"


def test_lora_starts_as_the_identity():
    """LoRA's B matrices start at zero: before training, the lora model's backbone equals the plain one."""
    torch.manual_seed(3)
    plain = Sam2UNetForImageSegmentation(tiny_sam2_unet_config(finetune_strategy="frozen")).eval()
    lora = Sam2UNetForImageSegmentation(tiny_sam2_unet_config(finetune_strategy="lora")).eval()
    lora.backbone.load_trunk_state_dict(plain.backbone.trunk_state_dict())
    x = torch.randn(1, 3, TINY_SIZE, TINY_SIZE)
    for a, b in zip(plain.backbone(x), lora.backbone(x)):
        torch.testing.assert_close(a, b)


def test_large_preset_counts_are_exact():
    with torch.device("meta"):
        model = Sam2UNetForImageSegmentation(Sam2UNetConfig())
    trainable, total = parameter_counts(model)
    assert (trainable, total) == (4_269_747, 216_419_043)
    assert sum(p.numel() for p in model.backbone.encoder.parameters() if not p.requires_grad) == 212_149_296
    adapters = sum(p.numel() for n, p in model.named_parameters() if ".adapter." in n)
    assert adapters == 1_714_416
    with torch.device("meta"):
        frozen = Sam2UNetForImageSegmentation(Sam2UNetConfig(finetune_strategy="frozen"))
    assert parameter_counts(frozen) == (2_555_331, 216_419_043 - 1_714_416)
    assert model.backbone.block_input_dims[:3] == [144, 144, 144] and model.backbone.block_input_dims[-3:] == [
        1152
    ] * 3
    saved = model.trainable_state_dict()
    saved_bytes = sum(t.numel() * 4 for t in saved.values())
    full_bytes = sum(t.numel() * 4 for t in model.state_dict().values())
    assert saved_bytes / full_bytes <= 0.03, (saved_bytes, full_bytes)
    # 3 x 64-channel BN buffers per conv: the decoder statistics travel with the weights.
    assert any(k.endswith("running_mean") for k in saved) and not any(k.startswith("backbone.") and ".adapter." not in k for k in saved)


# Trunk sizes counted on the official sam2 `Hiera` with the same settings.
@pytest.mark.parametrize("preset, trunk_params", [("tiny", 26_849_472), ("small", 33_947_328), ("base_plus", 68_675_712)])
def test_other_presets_build(preset, trunk_params):
    with torch.device("meta"):
        model = Sam2UNetForImageSegmentation(Sam2UNetConfig(backbone_preset=preset))
    assert sum(p.numel() for p in model.backbone.encoder.parameters() if not p.requires_grad) == trunk_params


def test_save_writes_only_trainable_tensors_and_reloads_bit_identically(tiny_backbone_repo, tmp_path):
    trunk, sha = tiny_backbone_repo
    model = Sam2UNetForImageSegmentation.from_pretrained_backbones(tiny_sam2_unet_config())
    assert model.config.backbone_revision == sha  # the exact backbone commit is pinned
    loaded = model.backbone.trunk_state_dict()
    assert loaded.keys() == trunk.state_dict().keys()
    assert all(torch.equal(loaded[k], v) for k, v in trunk.state_dict().items())
    with torch.no_grad():  # make the decoder non-trivial
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.01)
    model.eval()
    model.save_pretrained(tmp_path / "artifact")
    with safe_open(str(tmp_path / "artifact" / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert keys == set(model.trainable_state_dict())
    assert not any(k.startswith("backbone.") and ".adapter." not in k for k in keys)
    config = json.loads((tmp_path / "artifact" / "config.json").read_text())
    assert config["backbone_repo_id"] == "test-org/tiny-hiera" and config["backbone_revision"] == sha
    assert "SAM2-UNet" in (tmp_path / "artifact" / "README.md").read_text()

    reloaded = Sam2UNetForImageSegmentation.from_pretrained(tmp_path / "artifact")
    assert {n for n, p in reloaded.named_parameters() if p.requires_grad} == {
        n for n, p in model.named_parameters() if p.requires_grad
    }
    assert not reloaded.training
    x = torch.randn(2, 3, TINY_SIZE, TINY_SIZE)
    with torch.no_grad():
        assert torch.equal(model(x).logits, reloaded(x).logits)


def test_self_contained_copy_needs_no_backbone_repo(tmp_path, offline_hub):
    model = Sam2UNetForImageSegmentation(tiny_sam2_unet_config(backbone_repo_id="test-org/absent")).eval()
    model.save_pretrained(tmp_path / "full", include_backbone=True)
    reloaded = Sam2UNetForImageSegmentation.from_pretrained(tmp_path / "full")
    x = torch.randn(1, 3, TINY_SIZE, TINY_SIZE)
    with torch.no_grad():
        assert torch.equal(model(x).logits, reloaded(x).logits)


def test_missing_backbone_offline_names_the_repo_and_the_fixes(tmp_path, offline_hub):
    model = Sam2UNetForImageSegmentation(tiny_sam2_unet_config(backbone_repo_id="test-org/not-cached"))
    model.save_pretrained(tmp_path / "artifact")
    with pytest.raises(BackboneNotAvailableError) as error:
        Sam2UNetForImageSegmentation.from_pretrained(tmp_path / "artifact")
    message = str(error.value)
    assert "test-org/not-cached" in message and "HF_HUB_OFFLINE" in message
    assert "include_backbone=True" in message and "hf download test-org/not-cached" in message


def test_checkpoint_of_another_architecture_is_refused_with_key_names(tiny_backbone_repo, tmp_path):
    lora_model = Sam2UNetForImageSegmentation(tiny_sam2_unet_config(finetune_strategy="lora"))
    lora_model.save_pretrained(tmp_path / "lora")
    with pytest.raises(CheckpointMismatchError) as error:  # a LoRA artifact read as an adapter one
        Sam2UNetForImageSegmentation.from_pretrained(tmp_path / "lora", finetune_strategy="adapter")
    assert "adapter" in str(error.value) and "lora_" in str(error.value)

    wide = Sam2UNetForImageSegmentation(tiny_sam2_unet_config(rfb_channels=8))
    wide.save_pretrained(tmp_path / "narrow")
    with pytest.raises(CheckpointMismatchError, match="rfb1"):
        Sam2UNetForImageSegmentation.from_pretrained(tmp_path / "narrow", rfb_channels=16)


def test_lora_artifact_round_trips(tiny_backbone_repo, tmp_path):
    model = Sam2UNetForImageSegmentation.from_pretrained_backbones(tiny_sam2_unet_config(finetune_strategy="lora"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    model.eval().save_pretrained(tmp_path / "lora")
    with safe_open(str(tmp_path / "lora" / "model.safetensors"), "pt") as f:
        assert any("lora_A" in k for k in f.keys()) and not any("base_layer" in k for k in f.keys())
    reloaded = Sam2UNetForImageSegmentation.from_pretrained(tmp_path / "lora")
    x = torch.randn(1, 3, TINY_SIZE, TINY_SIZE)
    with torch.no_grad():
        assert torch.equal(model(x).logits, reloaded(x).logits)


def test_wrong_input_is_refused_clearly():
    model = Sam2UNetForImageSegmentation(tiny_sam2_unet_config())
    with pytest.raises(ValueError, match=r"\(batch, 3, height, width\).*\(1, 4, 64, 64\)"):
        model(torch.randn(1, 4, 64, 64))
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.randn(1, 3, 70, 64))
    with pytest.raises(ValueError, match=r"positive multiples of 32, got \(0, 64\)"):  # was a conv error deep inside
        model(torch.randn(1, 3, 0, 64))
    # A read_image-style uint8 tensor ran as 0..255 values (wrong logits, no word).
    with pytest.raises(ValueError, match=r"^pixel_values is torch.uint8: models take normalised float tensors"):
        model(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="labels"):
        model(torch.randn(1, 3, 64, 64), labels=torch.rand(1, 1, 32, 32))


def test_bad_config_values_are_refused():
    with pytest.raises(ValueError, match="fine-tuning strategy .qlora."):
        Sam2UNetConfig(finetune_strategy="qlora")
    with pytest.raises(ValueError, match="backbone_preset"):
        Sam2UNetConfig(backbone_preset="huge")
    # [] put LoRA on every default module (peft refuses an empty list); None still means the defaults.
    with pytest.raises(ValueError, match=r"lora_target_modules must be a non-empty list of module names, got \[\]"):
        Sam2UNetConfig(lora_target_modules=[])
    assert Sam2UNetConfig(lora_target_modules=None).lora_target_modules
    for size in (350, 0, -32):  # 0 and negative sizes passed the multiple-of-32 check
        with pytest.raises(ValueError, match=f"positive multiple of 32 .*got {size}"):
            Sam2UNetConfig(image_size=size)
    # Floats, strings, 0 and negative widths built a model that failed later with tensor-shape errors (or, for
    # adapter_dim=0, silently trained bias-only adapters); 64.0 was stored as a float size.
    for field, value in [("adapter_dim", 0), ("adapter_dim", 2.5), ("rfb_channels", 0), ("rfb_channels", "16"),
                         ("rfb_channels", -1)]:
        with pytest.raises(ValueError, match=rf"^{field} must be a positive integer, got {re.escape(repr(value))}$"):
            Sam2UNetConfig(**{field: value})
    for size in (64.0, "64"):
        with pytest.raises(ValueError, match="image_size must be a positive multiple of 32"):
            Sam2UNetConfig(image_size=size)
    # A negative weight trained that output away from the labels; a non-number failed inside the loss.
    for weights in ([-1, 1, 1], [1, "a", 1], [0, 0, 0], [1, 1], 5, [1, float("nan"), 1]):
        with pytest.raises(ValueError, match=r"loss_weights needs 3 non-negative numbers, not all 0 \(final, side1"):
            Sam2UNetConfig(loss_weights=weights)
    with pytest.raises(ValueError, match="semantic_loss_ignore_index must be an integer"):
        Sam2UNetConfig(semantic_loss_ignore_index=1.5)
    assert Sam2UNetConfig(loss_weights=[1, 0, 0.5]).loss_weights == [1.0, 0.0, 0.5]
    # LoRA settings: alpha 0 trained nothing (all LoRA gradients 0), a negative dropout passed, rank 0 / 2.5 failed in
    # peft or as a tensor-size TypeError; every config shares the check (finetune.set_finetune_fields).
    from dsunet_hf import BiRefNetConfig

    for field, value, message in [("lora_rank", 0, "positive integer"), ("lora_rank", 2.5, "positive integer"),
                                  ("lora_alpha", 0, "positive number"), ("lora_dropout", -0.5, r"probability in \[0, 1\)"),
                                  ("lora_dropout", 1, r"probability in \[0, 1\)"),
                                  ("lora_target_modules", "qkv", "non-empty list"),
                                  ("lora_target_modules", ["qkv", 3], "non-empty list")]:
        for config_class in (Sam2UNetConfig, BiRefNetConfig):
            with pytest.raises(ValueError, match=f"^{field} must be a {message}"):
                config_class(finetune_strategy="lora", **{field: value})
    assert Sam2UNetConfig(lora_alpha=0.5, lora_dropout=0.0).lora_alpha == 0.5



def test_from_pretrained_overrides_are_checked_like_the_file(tmp_path):
    """transformers set from_pretrained(..., field=value) overrides with setattr, past the config's checks: a DSU-Net
    with too large a fusion_reduction failed later with an IndexError, rfb_channels=0 with a ZeroDivisionError."""
    from transformers import AutoConfig, AutoModelForImageSegmentation

    from dsunet_hf import DSUNetConfig

    Sam2UNetConfig().save_pretrained(tmp_path / "sam2unet")
    DSUNetConfig().save_pretrained(tmp_path / "dsunet")
    with pytest.raises(ValueError, match="^rfb_channels must be a positive integer, got 0$"):
        AutoConfig.from_pretrained(tmp_path / "sam2unet", rfb_channels=0)
    with pytest.raises(ValueError, match="fusion_reduction"):
        DSUNetConfig.from_pretrained(tmp_path / "dsunet", fusion_reduction=5000)
    with pytest.raises(ValueError, match="fusion_reduction"):  # the model's from_pretrained passes them on too
        AutoModelForImageSegmentation.from_pretrained(tmp_path / "dsunet", fusion_reduction=5000)
    config, unused = Sam2UNetConfig.from_pretrained(tmp_path / "sam2unet", image_size=64, not_a_field=1,
                                                    return_unused_kwargs=True)
    assert config.image_size == 64 and unused == {"not_a_field": 1}


def test_training_on_one_image_whose_deepest_map_is_1x1_is_a_clear_error():
    """PyTorch's "Expected more than 1 value per channel when training" came from deep inside RFB4."""
    model = Sam2UNetForImageSegmentation(tiny_sam2_unet_config()).train()
    pixel_values, labels = batch(n=1, size=32)
    with pytest.raises(ValueError, match=r"cannot train on one 32x32 image: the deepest \(1/32\) map is 1x1.*batches "
                                         r"of 2 or more, or inputs of at least 64 px"):
        model(pixel_values, labels=labels)
    assert torch.isfinite(model(*batch(n=2, size=32)).loss)
    assert model.eval()(pixel_values).logits.shape == (1, 1, 32, 32)  # running statistics: fine in inference


def test_tiny_hiera_fixture_is_consistent():
    assert Sam2UNetForImageSegmentation(tiny_sam2_unet_config()).backbone.channels == TINY_HIERA["embed_dim_per_stage"]


def _model_classes():
    from dsunet_hf import (
        BiRefNetForImageSegmentation,
        Dinov2ForSemanticSegmentation,
        VisualPromptForSegmentation,
    )
    from dsunet_hf.models.visual_prompt.matcher import VisualPromptMatcher

    return [Sam2UNetForImageSegmentation, DSUNetForImageSegmentation, BiRefNetForImageSegmentation,
            Dinov2ForSemanticSegmentation, VisualPromptForSegmentation, VisualPromptMatcher]


@pytest.mark.parametrize("model_class", _model_classes(), ids=lambda cls: cls.__name__)
def test_trainer_divides_the_loss_by_gradient_accumulation(model_class):
    """transformers' Trainer takes a forward with **kwargs as one that normalises its loss by the
    num_items_in_batch it passes, and then does not divide it by gradient_accumulation_steps; these models
    ignore it: N accumulation steps gave N-times too large gradients. Trainer's own rule, without the
    slow Trainer import (its introspection in ``Trainer.__init__``)."""
    import inspect

    if hasattr(model_class, "accepts_loss_kwargs"):
        accepts = model_class.accepts_loss_kwargs
    else:
        accepts = any(p.kind == p.VAR_KEYWORD for p in inspect.signature(model_class.forward).parameters.values())
    assert accepts is False


def test_config_return_dict_false_gives_tuples():
    """As transformers' models: ``from_pretrained(repo, return_dict=False)`` (config.return_dict) gives tuples, the
    call's own ``return_dict`` wins (it was ignored: always a ModelOutput)."""
    model = Sam2UNetForImageSegmentation(tiny_sam2_unet_config(return_dict=False)).eval()
    pixel_values, labels = batch(1)
    with torch.no_grad():
        output = model(pixel_values, labels=labels)
        assert isinstance(output, tuple) and len(output) == 3  # loss, logits, aux_logits
        assert not isinstance(model(pixel_values, return_dict=True), tuple)
    # The package's own paths ask for a ModelOutput (they failed on such a model: "'tuple' has no attribute").
    from PIL import Image

    from dsunet_hf import SegmentationImageProcessor
    from dsunet_hf.onnx_export import _ImagesToLogits
    from dsunet_hf.predict import probabilities_and_outputs

    with torch.no_grad():
        assert _ImagesToLogits(model)(pixel_values).shape == (1, 1, *pixel_values.shape[-2:])
        image = Image.new("RGB", (50, 40))
        probabilities, _ = probabilities_and_outputs(model, SegmentationImageProcessor(size=TINY_SIZE), [image])
    assert probabilities[0].shape == (40, 50)
    classes = Sam2UNetForImageSegmentation(
        tiny_sam2_unet_config(return_dict=False, id2label={0: "a", 1: "b", 2: "c"})).eval()
    assert classes.segment(pixel_values).shape == (1, 3, *pixel_values.shape[-2:])

"""DSU-Net: counts, forward/loss, strategies, processor, artifacts through the offline Hub, converter."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import TINY_HIERA
from helpers import tiny_hiera, write_transformers_trunk_repo
from PIL import Image
from safetensors import safe_open
from transformers import AutoImageProcessor, AutoModelForImageSegmentation, Dinov2Config, Dinov2Model

from dsunet_hf import DSUNetConfig, DSUNetForImageSegmentation
from dsunet_hf.finetune import parameter_counts
from dsunet_hf.losses import structure_loss

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (see conftest)

TINY_DINO = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, image_size=56, patch_size=14)
DINO_SIZE = 56
# CGAFusion's reflect-padded 7x7 convs need the deepest (1/32) map to be at least 4x4.
TINY_SIZE = 128


def tiny_config(**overrides) -> DSUNetConfig:
    fields = dict(
        sam_preset="tiny", hiera_config=TINY_HIERA, dino_preset="small", dino_config=TINY_DINO,
        image_size=TINY_SIZE, dino_image_size=DINO_SIZE, decoder_channels=16, fusion_reduction=4,
        sam_backbone_repo_id="test-org/tiny-hiera", dino_backbone_repo_id="test-org/tiny-dinov2",
    )
    fields.update(overrides)
    return DSUNetConfig(**fields)


def inputs(n=2):
    return torch.randn(n, 3, TINY_SIZE, TINY_SIZE), torch.randn(n, 3, DINO_SIZE, DINO_SIZE)


def test_large_preset_counts_are_exact():
    with torch.device("meta"):
        model = DSUNetForImageSegmentation(DSUNetConfig())

    def part(prefix, trainable=True):
        return sum(p.numel() for n, p in model.named_parameters() if n.startswith(prefix) and p.requires_grad == trainable)

    assert parameter_counts(model)[0] == 7_225_830
    assert sum(p.numel() for n, p in model.named_parameters() if ".adapter." in n) == 1_714_416
    assert part("fusion4.") == 1_775_475 and part("dino2sam_down14.") == 1_234_176
    assert sum(part(f"rfb{i}.") for i in range(1, 5)) == 2_222_592
    assert sum(part(f"decoder{i}.") for i in range(1, 4)) == 278_976
    assert part("side1.") + part("side2.") + part("head.") == 195
    assert part("backbone_sam.", False) == 212_149_296 and part("backbone_dino.", False) == 304_368_640


def test_forward_and_weighted_deep_supervision_loss():
    model = DSUNetForImageSegmentation(tiny_config())
    sam, dino = inputs()
    labels = (torch.rand(2, 1, TINY_SIZE, TINY_SIZE) > 0.5).float()
    output = model(pixel_values=sam, dino_pixel_values=dino, labels=labels)
    assert output.logits.shape == (2, 1, TINY_SIZE, TINY_SIZE) and len(output.aux_logits) == 2
    side1, side2 = output.aux_logits
    expected = 0.25 * structure_loss(side1, labels) + 0.5 * structure_loss(side2, labels) + structure_loss(output.logits, labels)
    torch.testing.assert_close(output.loss, expected)
    with pytest.raises(ValueError, match="dino_pixel_values"):
        model(pixel_values=sam, dino_pixel_values=torch.randn(2, 3, 50, 50))
    # One DINO view for two images was broadcast by the fusion: both images got the first one's DINO features.
    with pytest.raises(ValueError, match=r"dino_pixel_values holds 1 images, pixel_values 2: they must be two views"):
        model(pixel_values=sam, dino_pixel_values=dino[:1])


def test_bad_config_values_are_refused_before_the_model_is_built():
    """A fusion_reduction above the deepest channels failed as an IndexError in a conv's init; 0 a ZeroDivisionError;
    floats, strings and 0 widths as tensor-shape errors; a negative loss weight was accepted."""
    deepest = TINY_HIERA["embed_dim_per_stage"][-1]
    with pytest.raises(ValueError, match=rf"^fusion_reduction \({deepest + 1}\) must be at most the deepest Hiera "
                                         rf"stage's {deepest} channels"):
        tiny_config(fusion_reduction=deepest + 1)
    assert tiny_config(fusion_reduction=deepest).fusion_reduction == deepest
    for field, value in [("fusion_reduction", 0), ("fusion_reduction", 2.0), ("adapter_dim", 0),
                         ("decoder_channels", "16"), ("wtconv_levels", 0), ("wtconv_kernel_size", -3),
                         ("dino_image_size", 56.0), ("image_size", "128")]:
        with pytest.raises(ValueError, match=rf"^{field} must be a positive integer, got {re.escape(repr(value))}$"):
            tiny_config(**{field: value})
    with pytest.raises(ValueError, match=r"loss_weights needs 3 non-negative numbers, not all 0 \(side 1/16"):
        tiny_config(loss_weights=[0.25, -0.5, 1.0])


@pytest.mark.parametrize("strategy", ["adapter", "lora", "full", "frozen"])
def test_gradients_reach_only_the_strategy_parameters(strategy):
    model = DSUNetForImageSegmentation(tiny_config(finetune_strategy=strategy)).train()
    sam, dino = inputs()
    model(sam, dino, labels=torch.rand(2, 1, TINY_SIZE, TINY_SIZE)).loss.backward()
    for name, parameter in model.named_parameters():
        frozen_backbone = name.startswith(("backbone_sam.", "backbone_dino."))
        trains = name != "backbone_dino.encoder.embeddings.mask_token" and (strategy == "full" or not frozen_backbone) or (
            (strategy == "adapter" and ".adapter." in name) or (strategy == "lora" and "lora_" in name))
        assert parameter.requires_grad == trains, name
        assert (parameter.grad is not None) == trains, name


def test_processor_makes_both_views(tmp_path):
    model = DSUNetForImageSegmentation(tiny_config()).eval()
    processor = model.default_image_processor()
    Image.new("RGB", (90, 60), (20, 140, 60)).save(tmp_path / "a.png")
    batch = processor(str(tmp_path / "a.png"))
    assert batch["pixel_values"].shape == (1, 3, TINY_SIZE, TINY_SIZE)
    assert batch["dino_pixel_values"].shape == (1, 3, DINO_SIZE, DINO_SIZE)
    with torch.no_grad():
        assert model(**batch).logits.shape == (1, 1, TINY_SIZE, TINY_SIZE)


@pytest.fixture
def backbone_repos(offline_hub, tmp_path):
    offline_hub.add("test-org/tiny-hiera", write_transformers_trunk_repo(tmp_path / "hiera", tiny_hiera()))
    torch.manual_seed(2)
    dino = Dinov2Model(Dinov2Config(**TINY_DINO)).eval()
    dino.save_pretrained(tmp_path / "dino")
    return offline_hub.add("test-org/tiny-dinov2", tmp_path / "dino"), dino


def test_push_and_pull_through_the_offline_hub(backbone_repos, offline_hub):
    dino_sha, dino = backbone_repos
    model = DSUNetForImageSegmentation.from_pretrained_backbones(tiny_config())
    assert model.config.dino_backbone_revision == dino_sha and model.config.sam_backbone_revision
    assert torch.equal(model.backbone_dino.encoder.embeddings.position_embeddings, dino.embeddings.position_embeddings)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.01)
    model.eval().push_to_hub("me/dsunet-tiny", metrics={"S-measure": 0.8}, dataset_names=["COD10K"])
    snapshot = next((offline_hub.repo_dir("me/dsunet-tiny") / "snapshots").iterdir())
    with safe_open(str(snapshot / "model.safetensors"), "pt") as f:
        assert set(f.keys()) == set(model.trainable_state_dict())
    card = (snapshot / "README.md").read_text()
    assert all(s in card for s in ("test-org/tiny-dinov2", "xu2025dsunet", "oquab2023dinov2", "COD10K"))
    pulled = AutoModelForImageSegmentation.from_pretrained("me/dsunet-tiny")
    processor = AutoImageProcessor.from_pretrained("me/dsunet-tiny")
    assert isinstance(pulled, DSUNetForImageSegmentation) and processor.extra_sizes
    sam, dino_view = inputs()
    with torch.no_grad():
        assert torch.equal(model(sam, dino_view).logits, pulled(sam, dino_view).logits)


def to_upstream(key: str, tensor: torch.Tensor, out: dict) -> None:
    """Our key -> the official DGSUNet layout (written from the reference's key tables)."""
    if key.startswith("backbone_sam.encoder."):
        rest = key[len("backbone_sam.encoder."):]
        rest = rest.replace(".adapter.down.", ".prompt_learn.0.").replace(".adapter.up.", ".prompt_learn.2.")
        for new, old in [("patch_embed.projection.", "patch_embed.proj."), ("layer_norm1.", "norm1."),
                         ("layer_norm2.", "norm2."), ("mlp.proj_in.", "mlp.layers.0."), ("mlp.proj_out.", "mlp.layers.1.")]:
            rest = rest.replace(new, old)
        out["backbone_sam.sam_encoder." + rest] = tensor
    elif key.startswith("backbone_dino.encoder."):
        rest = key[len("backbone_dino.encoder."):]
        prefix = "backbone_dino.dino_encoder."
        if match := re.match(r"encoder\.layer\.(\d+)\.attention\.([qkv])_proj\.(weight|bias)", rest):
            layer, which, kind = match.groups()
            name = f"{prefix}blocks.{layer}.attn.qkv.{kind}"
            parts = out.setdefault(name, {})
            parts[which] = tensor
            if len(parts) == 3:
                out[name] = torch.cat([parts["q"], parts["k"], parts["v"]])
            return
        for new, old in [("embeddings.cls_token", "cls_token"), ("embeddings.mask_token", "mask_token"),
                         ("embeddings.position_embeddings", "pos_embed"),
                         ("embeddings.patch_embeddings.projection.", "patch_embed.proj."), ("encoder.layer.", "blocks."),
                         ("attention.o_proj.", "attn.proj."), ("layer_scale1.lambda1", "ls1.gamma"),
                         ("layer_scale2.lambda1", "ls2.gamma"), ("layernorm.", "norm.")]:
            rest = rest.replace(new, old)
        out[prefix + rest] = tensor
    else:
        out[key] = tensor


def test_converter_loads_the_upstream_layout_exactly(tmp_path):
    from dsunet_hf.convert.dsunet import convert_dsunet_checkpoint

    model = DSUNetForImageSegmentation(tiny_config()).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    upstream: dict = {}
    for key, tensor in model.state_dict().items():
        to_upstream(key, tensor, upstream)
    assert "decoder1.attention.key_project.3.0.weight" in upstream and "fusion4.pa.pa2.weight" in upstream
    torch.save(upstream, tmp_path / "DGSUNet-50.pth")
    converted = convert_dsunet_checkpoint(tmp_path / "DGSUNet-50.pth", tmp_path / "out", config=tiny_config(),
                                          include_backbone=True)
    sam, dino = inputs()
    with torch.no_grad():
        assert torch.equal(model(sam, dino).logits, converted(sam, dino).logits)
    # The command: sizes read from the tensors (this tiny trunk is no published size: one clear line), options
    # that do not apply refused, another decoder width named by tensor.
    from dsunet_hf.cli import main as cli_main

    with pytest.raises(SystemExit, match=r"^convert dsunet: .*DGSUNet-50.pth: a Hiera trunk of width 16 with 5 "
                                         r"blocks matches no preset$"):
        cli_main(["convert", "dsunet", str(tmp_path / "DGSUNet-50.pth"), str(tmp_path / "cli")])
    with pytest.raises(SystemExit, match=r"^convert dsunet: --variant do\(es\) not apply to this kind$"):
        cli_main(["convert", "dsunet", str(tmp_path / "DGSUNet-50.pth"), str(tmp_path / "cli"), "--variant", "x"])
    with pytest.raises(ValueError, match=r"tensors of another size: .*\(the model's"):
        convert_dsunet_checkpoint(tmp_path / "DGSUNet-50.pth", tmp_path / "out3",
                                  config=tiny_config(decoder_channels=8))
    without_dino = {k: v for k, v in upstream.items() if not k.startswith("backbone_dino.")}
    torch.save(without_dino, tmp_path / "no-dino.pth")
    with pytest.raises(SystemExit, match=r"no-dino.pth: no DINOv2 tensors"):
        cli_main(["convert", "dsunet", str(tmp_path / "no-dino.pth"), str(tmp_path / "cli")])
    upstream["stray.weight"] = torch.zeros(1)
    torch.save(upstream, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="stray.weight"):
        convert_dsunet_checkpoint(tmp_path / "bad.pth", tmp_path / "out2", config=tiny_config())


@pytest.mark.parametrize("dino", [(1024, 24, "large"), (768, 12, "base")])
def test_converter_reads_the_backbone_sizes_from_the_tensors(dino):
    from dsunet_hf.convert.dsunet import infer_dsunet_presets

    width, depth, preset = dino
    shapes = {"backbone_sam.encoder.patch_embed.projection.weight": (144, 3, 7, 7),
              "backbone_dino.encoder.embeddings.patch_embeddings.projection.weight": (width, 3, 14, 14)}
    shapes.update({f"backbone_sam.encoder.blocks.{i}.mlp.weight": (1,) for i in range(48)})  # Hiera-L: 2+6+36+4
    shapes.update({f"backbone_dino.encoder.encoder.layer.{i}.norm1.weight": (1,) for i in range(depth)})
    tensors = {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}
    assert infer_dsunet_presets(tensors) == ("large", preset)


def test_config_return_dict_false_gives_tuples():
    """As transformers' models (and SAM2-UNet): config.return_dict=False gives tuples, the call's own return_dict wins."""
    model = DSUNetForImageSegmentation(tiny_config(return_dict=False)).eval()
    with torch.no_grad():
        output = model(*inputs(1))
        assert isinstance(output, tuple) and output[0].shape == (1, 1, TINY_SIZE, TINY_SIZE)
        assert not isinstance(model(*inputs(1), return_dict=True), tuple)


def test_a_whole_model_survives_torch_save_and_load():
    """Hiera's attention and DINOv2's position interpolation were patched in as bound methods, which pickle by name:
    torch.load of a torch.save'd model failed ("object has no attribute '_multiscale_attention_forward'")."""
    import io

    model = DSUNetForImageSegmentation(tiny_config()).eval()
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False).eval()
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        assert torch.equal(model(x).logits, loaded(x).logits)

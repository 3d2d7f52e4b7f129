"""Publishing: push -> pull through the offline Hub, Auto classes, the model card."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_SIZE, tiny_sam2_unet_config
from helpers import tiny_hiera, write_transformers_trunk_repo
from safetensors import safe_open
from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageSegmentation

from dsunet_hf import Sam2UNetConfig, Sam2UNetForImageSegmentation, SegmentationImageProcessor


@pytest.fixture
def trained_model(offline_hub, tmp_path):
    offline_hub.add("test-org/tiny-hiera", write_transformers_trunk_repo(tmp_path / "trunk", tiny_hiera()))
    model = Sam2UNetForImageSegmentation.from_pretrained_backbones(tiny_sam2_unet_config())
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.01)
    return model.eval()


def test_push_then_pull_gives_identical_outputs(trained_model, offline_hub):
    processor = SegmentationImageProcessor(size=TINY_SIZE)
    repo_id = trained_model.push_to_hub(
        "me/sam2unet-test", image_processor=processor, metrics={"S-measure": 0.9123, "MAE": 0.0312},
        dataset_names=["ECSSD"],
    )
    assert repo_id == "me/sam2unet-test" and offline_hub.pushes[-1][0] == repo_id

    snapshot = next((offline_hub.repo_dir(repo_id) / "snapshots").iterdir())
    assert {p.name for p in snapshot.iterdir()} == {
        "config.json", "model.safetensors", "preprocessor_config.json", "README.md"
    }
    with safe_open(str(snapshot / "model.safetensors"), "pt") as f:
        assert set(f.keys()) == set(trained_model.trainable_state_dict())

    card = (snapshot / "README.md").read_text()
    for expected in ("test-org/tiny-hiera", "S-measure", "0.9123", "ECSSD", "xiong2024sam2unet", "ravi2024sam2",
                     "license: apache-2.0", "adapter", "me/sam2unet-test",
                     'pipeline("image-segmentation", model="me/sam2unet-test")',
                     "dsunet-hf export onnx --model me/sam2unet-test onnx/"):
        assert expected in card, expected

    pulled = AutoModelForImageSegmentation.from_pretrained(repo_id)
    pulled_processor = AutoImageProcessor.from_pretrained(repo_id)
    assert isinstance(pulled, Sam2UNetForImageSegmentation)
    assert isinstance(pulled_processor, SegmentationImageProcessor) and pulled_processor.size == processor.size
    x = torch.randn(2, 3, TINY_SIZE, TINY_SIZE)
    with torch.no_grad():
        assert torch.equal(trained_model(x).logits, pulled(x).logits)


def test_auto_classes_load_a_saved_model(trained_model, tmp_path):
    trained_model.save_pretrained(tmp_path / "m")
    assert isinstance(AutoConfig.from_pretrained(tmp_path / "m"), Sam2UNetConfig)
    assert isinstance(AutoModel.from_pretrained(tmp_path / "m"), Sam2UNetForImageSegmentation)
    loaded = AutoModelForImageSegmentation.from_pretrained(tmp_path / "m")
    x = torch.randn(1, 3, TINY_SIZE, TINY_SIZE)
    with torch.no_grad():
        assert torch.equal(trained_model(x).logits, loaded(x).logits)


def test_processor_and_model_work_together(trained_model, tmp_path):
    from PIL import Image

    Image.new("RGB", (90, 70), (200, 30, 30)).save(tmp_path / "red.png")
    processor = SegmentationImageProcessor(size=TINY_SIZE)
    inputs = processor(str(tmp_path / "red.png"))
    with torch.no_grad():
        logits = trained_model(pixel_values=inputs["pixel_values"]).logits
    (labels,) = processor.post_process_semantic_segmentation(logits, target_sizes=inputs["original_sizes"])
    assert labels.shape == (70, 90) and labels.dtype == torch.int64 and set(labels.unique().tolist()) <= {0, 1}
    assert trained_model.config.id2label == {0: "background", 1: "foreground"}


def test_backbone_config_override_at_load_time(trained_model, tmp_path, offline_hub):
    """A user without Hub access points the saved artifact at a local backbone folder."""
    trained_model.save_pretrained(tmp_path / "m")
    local_trunk = write_transformers_trunk_repo(tmp_path / "local-trunk", tiny_hiera(seed=5))
    loaded = Sam2UNetForImageSegmentation.from_pretrained(tmp_path / "m", backbone_repo_id=str(local_trunk))
    assert torch.equal(loaded.backbone.encoder.pos_embed, tiny_hiera(seed=5).pos_embed)
